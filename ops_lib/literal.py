"""Text from the target is data, never markup.

Statement texts, table and role names, stored error texts, Stripe fields and exception messages
pass through these helpers before anything renders them, so that nothing in them can change how
a page, a notebook cell, a figure or a terminal shows it:

* ``visible``: control characters (NUL, ANSI escapes, bidi overrides such as U+202E, line
  separators, lone surrogates) become escapes like ``\\x1b`` that a reader can see;
* ``html_text`` / ``html_attr``: that text as HTML — escaped, newlines as ``<br>``, and with
  ``$``, ``\\`` and backticks as character references, so that neither Markdown nor a math
  preprocessor working on the source (JupyterLab's) sees a delimiter;
* ``inert``: a container that MathJax leaves alone — ``tex2jax_ignore`` for MathJax 2 (nbconvert's
  HTML), ``mathjax_ignore`` for MathJax 3+ (JupyterLab 4); every HTML renderer puts its output in one;
* ``markdown_block``: HTML for a Markdown cell, as one raw-HTML block that Markdown leaves as is;
* ``one_line`` / ``terminal_safe``: the same text on one line, for figure labels and the CLI.
"""
from __future__ import annotations

import html
import re
from typing import Any

#: Classes that stop MathJax typesetting inside an element: MathJax 2 (nbconvert's lab template)
#: ignores ``tex2jax_ignore``; MathJax 3 and 4 (JupyterLab 4) ignore ``mathjax_ignore``.
NO_MATH = "tex2jax_ignore mathjax_ignore"

#: Longest text shown in a table cell or a title; the full value stays in the run's JSON.
CELL_CHARS = 300

# C0 and C1 controls (but tab and newline), DEL, bidi embeddings/overrides/isolates and marks,
# line and paragraph separators, lone surrogates: each would reorder, hide, colour or cut the text
# around it, or make the file unwritable (surrogates cannot be encoded as UTF-8).
_UNSEEN = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_NEWLINES = re.compile(r"\r\n|\r")
# Characters some renderer reads as syntax even in escaped HTML: `$` and `\` start math for
# MathJax and for JupyterLab's math preprocessor (which runs on the Markdown source); a backtick
# starts a code span for that preprocessor and for Markdown.
_MATH_AND_CODE = str.maketrans({"$": "&#36;", "\\": "&#92;", "`": "&#96;"})


def _escape_code(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def shorten(text: str, limit: int | None) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if limit is None or len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit:,} more characters)"


def visible(value: Any, *, limit: int | None = None) -> str:
    """``value`` as text with every control or direction character shown as an escape (``\\x00``,
    ``\\x1b``, ``\\u202e``); newlines stay (CR LF and CR become LF)."""
    text = "" if value is None else str(value)
    text = shorten(text, limit)
    return _UNSEEN.sub(lambda m: _escape_code(m.group()), _NEWLINES.sub("\n", text))


def one_line(value: Any, *, limit: int | None = None) -> str:
    """``visible`` on a single line: newlines shown as ``\\n``."""
    return visible(value, limit=limit).replace("\n", "\\n")


def terminal_safe(value: Any, *, limit: int | None = None) -> str:
    """Target text for a terminal line: no escape sequence can recolour, move the cursor or
    split the line (what the CLI prints from a run: titles, errors, items)."""
    return one_line(value, limit=limit)


def html_text(value: Any, *, limit: int | None = CELL_CHARS) -> str:
    """Target text as HTML text content, shown literally wherever the HTML is rendered."""
    escaped = html.escape(visible(value, limit=limit), quote=False).translate(_MATH_AND_CODE)
    return escaped.replace("\n", "<br>")


def html_attr(value: Any, *, limit: int | None = CELL_CHARS) -> str:
    """Target text for a quoted attribute value (one line)."""
    return html.escape(one_line(value, limit=limit), quote=True).translate(_MATH_AND_CODE)


def inert(inner_html: str, *, tag: str = "div", classes: str = "", attrs: str = "") -> str:
    """``inner_html`` in an element that MathJax skips (in JupyterLab and in nbconvert's HTML).

    ``attrs``: further attributes, as HTML, their values built with ``html_attr``.
    """
    cls = f"{classes} {NO_MATH}".strip()
    return f'<{tag} class="{cls}"{" " + attrs if attrs else ""}>{inner_html}</{tag}>'


def markdown_block(inner_html: str, *, classes: str = "") -> str:
    """HTML for a Markdown cell: one raw-HTML block (CommonMark type 6, ``<div`` at the start of
    a line, ended only by a blank line), so Markdown and math syntax inside it stay literal.

    ``inner_html`` must be built with ``html_text`` for every piece of target text; it is put on a
    single line, as a newline followed by a blank line would end the block early.
    """
    block = inert(inner_html.replace("\r", " ").replace("\n", " "), classes=classes)
    return block.translate(_MATH_AND_CODE)
