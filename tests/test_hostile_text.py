"""Text from the target is data, never markup.

Every renderer is fed strings that would run a script, open a link, typeset math, end a table
or recolour a terminal if they were taken as markup; the output is parsed as a browser would,
and the strings must come out as plain text: no element or attribute of theirs, no math that
MathJax would typeset (in nbconvert's HTML or in JupyterLab), no mathtext in a figure.
"""
from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import psycopg2
import pytest

from ops_lib import literal, report, runner, runtime
from ops_lib.archive import render_index
from ops_lib.findings import Action, ActionLog, Finding, Metrics, rows_to_html
from ops_lib.quota.plans import Plan, PlanBook
from ops_lib.secrets import Masker
from ops_lib.target import Target

LONG = "y" * 100_000

# (name, hostile text, how it must show: None = exactly as given). Payloads call probe_*()
# and use the <xss-probe> tag so that a live one can be told from the page's own scripts.
CASES = [
    ("script", "<script>probe_script()</script>", None),
    ("img_onerror", '<img src=x onerror="probe_img()">', None),
    ("probe_tag", "<xss-probe class='x'>inside</xss-probe>", None),
    ("end_of_table", "</td></tr></table><xss-probe>", None),
    ("attribute_quote", "\" onmouseover=\"probe_attr()\" x='", None),
    ("style", "<style>body{display:none}</style>", None),
    ("svg", "<svg onload=probe_svg()>", None),
    ("inline_math", "costs $x^2$ and $y$", None),
    ("display_math", "$$\\int_0^1 f$$", None),
    ("paren_math", "\\(x\\) and \\[y\\]", None),
    ("environment_math", "\\begin{equation}x\\end{equation}", None),
    ("lone_dollar", "price $5 or US$ 10", None),
    ("bold", "**bold** __strong__ _em_", None),
    ("javascript_link", "[click](javascript:probe_link())", None),
    ("autolink", "<javascript:probe_auto()> https://example.com", None),
    ("heading", "# heading\n## second", None),
    ("pipes", "|a|b|\n|---|---|", None),
    ("backticks", "`code` and ```fence```", None),
    ("blank_line", "line one\n\nline two\n\n<div>after</div>", None),
    ("comment", "<!-- hidden", None),
    ("cdata", "<![CDATA[x]]>", None),
    ("entities", "&amp; &lt;b&gt; &#36;", None),
    ("math_marker", "@@0@@ @@1@@", None),
    ("crlf", "a\r\nb\rc", "a\nb\nc"),
    ("nul", "a\x00b", "a\\x00b"),
    ("ansi", "\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
    ("rtl_override", "abc\u202edcba", "abc\\u202edcba"),
    ("line_separator", "a\u2028b", "a\\u2028b"),
    ("bell_and_del", "a\x07b\x7fc", "a\\x07b\\x7fc"),
    ("lone_surrogate", "a\ud800b", "a\\ud800b"),  # from a JSON "\ud800": not encodable as UTF-8
    ("emoji", "🔥 👩‍💻 ✅ 日本語", None),
    ("long", LONG, None),
]
IDS = [name for name, _, _ in CASES]


def shown(text: str, expected: str | None) -> str:
    return text if expected is None else expected


# --------------------------------------------------------------------------------------------
# Reading HTML as a browser would


_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
_MATH_SKIPPED = {"pre", "code", "textarea", "script", "style", "noscript"}  # MathJax's skipHtmlTags


class Page(HTMLParser):
    """The elements and text nodes of an HTML document, each text with its open elements."""

    def __init__(self, source: str):
        # character references arrive apart from raw text, so a raw "<" left in text (an
        # unterminated "<!--" at the end, say) can be told from an escaped one
        super().__init__(convert_charrefs=False)
        self.raw_markup_in_text: list[str] = []
        self.elements: list[tuple[str, dict]] = []
        self.texts: list[tuple[str, list[tuple[str, set]]]] = []
        self._open: list[tuple[str, set]] = []
        self.feed(source)
        self.close()

    def handle_starttag(self, tag, attrs):
        attributes = {k: v or "" for k, v in attrs}
        self.elements.append((tag, attributes))
        if tag == "br":
            self.texts.append(("\n", list(self._open)))
        if tag not in _VOID:
            self._open.append((tag, set(attributes.get("class", "").split())))

    def handle_startendtag(self, tag, attrs):
        self.elements.append((tag, {k: v or "" for k, v in attrs}))
        if tag == "br":
            self.texts.append(("\n", list(self._open)))

    def handle_endtag(self, tag):
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i][0] == tag:
                del self._open[i:]
                break

    def handle_data(self, data):
        if not _in(self._open, {"script", "style"}) and re.search(r"<[A-Za-z!/?]", data):
            self.raw_markup_in_text.append(data)
        self.texts.append((data, list(self._open)))

    def handle_entityref(self, name):
        self.texts.append((html.unescape(f"&{name};"), list(self._open)))

    def handle_charref(self, name):
        self.texts.append((html.unescape(f"&#{name};"), list(self._open)))

    def handle_comment(self, data):
        self.elements.append(("#comment", {"data": data}))

    def unknown_decl(self, data):
        self.elements.append(("#declaration", {"data": data}))

    def handle_pi(self, data):
        self.elements.append(("#processing-instruction", {"data": data}))

    @property
    def text(self) -> str:
        return "".join(text for text, open_elements in self.texts if not _in(open_elements, {"script", "style"}))


def _in(open_elements, tags) -> bool:
    return any(tag in tags for tag, _ in open_elements)


def _math_ignored(open_elements) -> bool:
    """MathJax 2 (nbconvert) skips tex2jax_ignore, MathJax 3+ (JupyterLab 4) mathjax_ignore."""
    if _in(open_elements, _MATH_SKIPPED):
        return True
    classes = set().union(*(c for _, c in open_elements)) if open_elements else set()
    return {"tex2jax_ignore", "mathjax_ignore"} <= classes


_MATH_START = re.compile(r"\$|\\\(|\\\[|\\begin")


def assert_inert(source: str, *, must_show: list[str] = (), mathjax: bool = True) -> Page:
    """No element, attribute or comment of the hostile texts; no typesettable math outside an
    ignored element (where the page is shown with MathJax); each of ``must_show`` present in the
    page's text."""
    page = Page(source)
    assert not page.raw_markup_in_text, f"unparsed markup in the page: {page.raw_markup_in_text[0][:80]!r}"
    for tag, attrs in page.elements:
        assert tag != "xss-probe", "a probe tag became an element"
        assert tag != "#comment" or "hidden" not in attrs["data"], "target text opened an HTML comment"
        assert tag != "#declaration", f"target text made a declaration: {attrs['data'][:80]!r}"
        for name, value in attrs.items():
            assert "probe_" not in value, f"<{tag} {name}=…> carries a payload"
            assert not value.strip().lower().startswith("javascript:"), f"<{tag} {name}> is a javascript: link"
            assert not name.startswith("on"), f"<{tag}> has an event handler {name}"
    for text, open_elements in page.texts:
        if _in(open_elements, {"script", "style"}):
            ours = "opsbook-show-code" in text  # report mode's own stylesheet hides code cells
            assert "probe_" not in text and ("display:none" not in text or ours), "target text ran as a script or style"
            continue
        if mathjax and _MATH_START.search(text):
            assert _math_ignored(open_elements), f"MathJax would typeset {text[:80]!r} in {open_elements}"
    for expected in must_show:
        assert expected in page.text, f"{expected[:80]!r} is not shown literally"
    return page


# --------------------------------------------------------------------------------------------
# Each renderer


@pytest.mark.parametrize(("text", "expected"), [(t, e) for _, t, e in CASES], ids=IDS)
def test_a_finding_shows_its_title_note_fix_and_evidence_literally(text, expected):
    finding = Finding("check_x", "warning", text, items=[text], rows=[{text[:200]: text, "count": 3}],
                      remediation=text, note=text)
    visible = shown(text, expected)
    assert_inert(finding._repr_html_(), must_show=[visible[:300]])
    assert "\x1b" not in finding._repr_mimebundle_()["text/plain"]


@pytest.mark.parametrize(("text", "expected"), [(t, e) for _, t, e in CASES], ids=IDS)
def test_tables_metrics_and_remediation_plans_show_target_text_literally(text, expected):
    visible = shown(text, expected)[:300]
    assert_inert(rows_to_html([{"name": text, "value": 1.5}]), must_show=[visible])
    assert_inert(Metrics({"largest_table": text})._repr_mimebundle_()["text/html"], must_show=[visible])
    plan = ActionLog([Action(action=text, target=text, reason=text)])
    assert_inert(plan._repr_mimebundle_()["text/html"], must_show=[visible])


@pytest.mark.parametrize(("text", "expected"), [(t, e) for _, t, e in CASES], ids=IDS)
def test_the_run_header_and_closing_verdict_show_target_text_literally(text, expected):
    visible = shown(text, expected)[:300]
    target = Target(database_url="postgresql://app:not-a-secret@db.internal:5432/app")
    ctx = runtime.RunContext(runbook=text, run_id=text, target=target)
    assert_inert(ctx._repr_html_(), must_show=[visible])
    verdict = runtime.Verdict([Finding("check_x", "critical", text)])
    assert_inert(verdict._repr_html_(), must_show=[visible])


@pytest.mark.parametrize(("text", "expected"), [(t, e) for _, t, e in CASES], ids=IDS)
def test_a_dataframe_table_shows_target_text_literally(text, expected):
    frame = runtime.table([{text[:60]: text, "calls": 3}])
    # pandas shows a newline as \n and cuts a cell at display.max_colwidth (50): "…" + 47 characters
    visible = shown(text, expected).replace("\n", "\\n")[:47]
    assert_inert(frame._repr_html_(), must_show=[visible])
    assert frame["calls"].tolist() == [3], "numbers stay numbers"


def test_a_run_shows_any_dataframe_without_math_and_starts_without_importing_pandas():
    script = """
import sys
from IPython.core.interactiveshell import InteractiveShell
from ops_lib import runtime
shell = InteractiveShell.instance()
runtime.start("slow_queries", run_id="r")
assert "pandas" not in sys.modules, "runtime.start imported pandas"
import pandas as pd
data, _ = shell.display_formatter.format(pd.DataFrame({"query": ["SELECT $1 WHERE a = $2"]}))
print(data["text/html"])
"""
    env = {**os.environ, "DATABASE_URL": "postgresql://app@127.0.0.1:1/app"}  # never connected to
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert_inert(done.stdout, must_show=["SELECT $1 WHERE a = $2"])


@pytest.mark.parametrize(("text", "expected"), [(t, e) for _, t, e in CASES], ids=IDS)
def test_a_table_longer_than_pandas_shows_is_an_excerpt_showing_target_text_literally(text, expected):
    import pandas as pd

    total = pd.get_option("display.max_rows") * 100
    rows = [{"n": n, "text": text if n in (0, total - 1) else "ok"} for n in range(total)]
    excerpt = runtime.table(rows)
    assert len(excerpt) == total and len(excerpt.frame) < 20, "only the rows shown are built"
    assert excerpt.frame["n"].tolist()[:2] == [0, 1] and excerpt.frame.index[-1] == total - 1
    visible = shown(text, expected).replace("\n", "\\n")[:20]
    html = excerpt._repr_html_()
    assert_inert(html, must_show=[visible, f"{total:,} rows × 2 columns"])
    assert "…" in repr(excerpt) and f"{total:,} rows" in repr(excerpt)


def test_an_empty_table_note_is_inert():
    assert_inert(runtime.table([], empty="No $1 rows <xss-probe>")._repr_html_(), must_show=["No $1 rows <xss-probe>"])


@pytest.mark.parametrize(("text", "expected"), [(t, e) for _, t, e in CASES], ids=IDS)
def test_the_plan_table_shows_plan_codes_and_notes_literally(text, expected):
    visible = shown(text, expected)[:300]
    book = PlanBook(plans={text: Plan(text, text, 1000, True, "database")}, prices={"price_1": text},
                    source=f"the target's plan table {text}", notes=[text])
    assert_inert(book._repr_html_(), must_show=[visible])


@pytest.mark.parametrize(("text", "expected"), [pytest.param(t, e) for _, t, e in CASES], ids=IDS)
def test_the_archive_index_shows_errors_and_check_names_literally(text, expected, tmp_path):
    runs = [{"run_id": "slow_queries-20260101T000000Z-abcdef", "runbook": "slow_queries", "status": "error",
             "severity": "ok", "started_at": "2026-01-01T00:00:00Z", "error": text, "html": "a.html"},
            {"run_id": "slow_queries-20260101T000001Z-abcdef", "runbook": "slow_queries", "status": "findings",
             "severity": "warning", "started_at": "2026-01-01T00:00:01Z", "findings": {text: "warning"}}]
    page = render_index(runs, tmp_path)
    # index.html loads no MathJax and no Markdown renderer: markup and control characters matter there
    visible = shown(text, expected)[:80]  # the index shortens what it quotes
    assert_inert(page, must_show=[visible], mathjax=False)
    assert not literal._UNSEEN.search(page), "a control character reached index.html"


# --------------------------------------------------------------------------------------------
# The verdict cell, written by report.finish_notebook and rendered by nbconvert


def _hostile_record(text: str) -> dict:
    return {
        "run_id": "slow_queries-20260101T000000Z-abcdef", "runbook": "slow_queries", "status": "error",
        "severity": "warning", "started_at": "2026-01-01T00:00:00Z", "duration_s": 1.0,
        "error": f"cell 7 raised ProgrammingError: {text}",
        "target": {"database": "postgresql://app:***@db:5432/app", "stripe": None, "demo": False},
        "findings": [{"check": "unused_indexes", "severity": "warning", "title": text, "count": 7,
                      "items": [text, f"public.{text}", 42, "a", "b", "c", "d"]}],
        "checks": [{"check": "unused_indexes", "severity": "warning", "count": 7},
                   {"check": "cache_hit_ratio", "severity": "ok", "count": 0}],
        "metrics": {}, "actions": [{"action": text, "applied": False}],
    }


def _finish(record: dict, tmp_path: Path) -> tuple[nbformat.NotebookNode, str]:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("## Statement statistics"), nbformat.v4.new_code_cell("1 + 1")]
    files = {"ipynb": tmp_path / "run.ipynb", "html": tmp_path / "run.html"}
    report.finish_notebook(nb, record, files, Masker())
    return nbformat.read(files["ipynb"], as_version=4), files["html"].read_text(encoding="utf-8")


@pytest.mark.parametrize(("text", "expected"), [(t, e) for _, t, e in CASES], ids=IDS)
def test_the_verdict_cell_shows_errors_titles_and_items_literally(text, expected, tmp_path):
    written, page = _finish(_hostile_record(text), tmp_path)
    visible = shown(text, expected)
    cell = written.cells[0]
    assert cell.cell_type == "markdown" and "opsbook-verdict" in cell.metadata["tags"]
    heading, blank, block, *rest = cell.source.split("\n")
    assert heading == "# Verdict: error" and blank == "" and rest == []
    # One raw-HTML block on one line: Markdown does not parse inside it, and JupyterLab's math
    # preprocessor (which reads the Markdown source) finds no $, \ or ` to start math or code.
    assert block.startswith('<div class="opsbook-verdict tex2jax_ignore mathjax_ignore">') and block.endswith("</div>")
    assert not set("$\\`") & set(block)
    assert_inert(block, must_show=[visible[:300]])
    # nbconvert's HTML (lab template, MathJax 2), the archived report
    assert_inert(page, must_show=[visible[:300]])


def test_a_verdict_without_findings_still_says_so(tmp_path):
    record = {**_hostile_record("x"), "status": "ok", "severity": "ok", "findings": [], "error": None}
    written, page = _finish(record, tmp_path)
    assert written.cells[0].source.startswith("# Verdict: ok")
    assert "no check found a problem" in Page(page).text


# --------------------------------------------------------------------------------------------
# Figures


def test_a_dollar_in_a_label_is_drawn_as_text_not_mathtext():
    from IPython.core.pylabtools import print_figure
    from matplotlib.text import Text

    from ops_lib.postgres import plots as pg_plots
    from ops_lib.quota import plots as quota_plots

    broken_math = r"$\frac{$ cost"  # mathtext that does not parse: a figure that parses it cannot draw
    top = pg_plots.plot_top_statements([
        {"queryid": 1, "query": f"SELECT $1 /* {broken_math} */", "total_ms": 40.0, "share_pct": 80.0},
        {"queryid": 2, "query": "SELECT \x1b[31m\u202e $x^2$", "total_ms": 10.0, "share_pct": 20.0},
    ], title=broken_math)
    usage = quota_plots.usage_against_limit([
        {"plan": "$x^2$", "usage_limit": 10, "used": 12, "organisation_id": broken_math},
        {"plan": "free", "usage_limit": None, "used": 1, "organisation_id": "o2"},
    ])
    for fig in (top, usage):
        assert fig._repr_png_().startswith(b"\x89PNG")
        assert print_figure(fig, "png", bbox_inches="tight").startswith(b"\x89PNG")  # IPython's inline display
        texts = [t for t in fig.findobj(Text) if "$" in t.get_text()]
        assert texts, "the hostile labels are in the figure"
        for t in texts:
            assert t._preprocess_math(t.get_text()) == (t.get_text(), False)
    labels = [t.get_text() for t in top.axes[0].get_yticklabels()]
    assert any("\\x1b[31m\\u202e" in label for label in labels), labels
    assert not any("\x1b" in label or "\u202e" in label for label in labels)


# --------------------------------------------------------------------------------------------
# End to end: a real target whose names and statements are hostile, run by the runner

TABLE = "<xss-probe>$x^2$|a|b|"
ESCAPES_TABLE = "\x1b[31m\u202e**b**`c`"
DROPPED_TABLE = '<img src=x onerror="probe_img()">'
INDEX = "\\(x\\) [l](javascript:probe_link())"
DUPLICATE = "<!-- $$ # h"
COMMENT = "<script>probe_script()</script> $y$ **b** |p|q| \\[z\\]"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _plant(url: str) -> None:
    """Hostile table and index names, and statements whose text reaches pg_stat_statements."""
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for name in (TABLE, ESCAPES_TABLE, DROPPED_TABLE):
                cur.execute(f"CREATE TABLE {_ident(name)} (id int, note text)")
            cur.execute(f"CREATE INDEX {_ident(INDEX)} ON {_ident(TABLE)} (note)")
            cur.execute(f"CREATE INDEX {_ident(DUPLICATE)} ON {_ident(TABLE)} (note, id)")
            cur.execute("SELECT pg_stat_statements_reset()")
            for _ in range(3):
                # pg_sleep puts them at the top by total time; the comment is kept in the text
                cur.execute(f"SELECT pg_sleep(0.05), count(*) /* {COMMENT}\n\n# h */ FROM {_ident(TABLE)}")
                cur.execute(f"SELECT pg_sleep(0.05), count(*) FROM {_ident(ESCAPES_TABLE)} WHERE note = '$x$'")
                cur.execute(f"SELECT pg_sleep(0.08), count(*) FROM {_ident(DROPPED_TABLE)}")
            # its statement stays in pg_stat_statements; EXPLAIN of it fails naming the table
            cur.execute(f"DROP TABLE {_ident(DROPPED_TABLE)}")
    finally:
        conn.close()


def test_a_runbook_over_a_hostile_target_archives_only_literal_text(database18, tmp_path):
    _plant(database18.url)
    result = runner.run(
        "slow_queries", overrides=[("min_calls", 1), ("min_mean_ms", 0.0)],
        env={"DATABASE_URL": database18.url, "OPSBOOK_OUTPUTS": str(tmp_path)}, outputs=tmp_path,
    )
    record = result.record
    assert record["status"] == "findings", record.get("error")
    found = {f["check"]: f for f in record["findings"]}
    assert {_ident(INDEX), _ident(DUPLICATE)} <= set(found["unused_indexes"]["items"])
    assert found["slow_queries"]["count"] >= 3

    nb = nbformat.read(tmp_path / record["notebook"], as_version=4)
    # the JSON keeps the data as it is; only what renders it neutralises it
    assert any(TABLE in json.dumps(o, ensure_ascii=False) for c in nb.cells if c.cell_type == "code"
               for o in c.outputs)
    verdict = nb.cells[0].source
    assert not set("$\\`") & set(verdict.split("\n", 2)[2])
    assert_inert(verdict, must_show=[_ident(INDEX)])

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    html_outputs = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert html_outputs
    for output in html_outputs:
        assert_inert(output)
    everything = "".join(html.unescape(o) for o in html_outputs)
    for literal_text in (TABLE, "\\x1b[31m\\u202e**b**`c`", _ident(DROPPED_TABLE), INDEX, DUPLICATE):
        assert literal_text in everything, literal_text
    # the server's error naming the dropped table, in the plans table (pandas cuts cells short)
    assert f'not explained: relation "{DROPPED_TABLE}" does not exist'[:40] in everything

    page = (tmp_path / record["html"]).read_text(encoding="utf-8")
    assert_inert(page, must_show=[TABLE, _ident(DROPPED_TABLE), INDEX, DUPLICATE, "<script>probe_script()</script> $y$"])
    assert_inert((tmp_path / "index.html").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------
# The helpers themselves


@pytest.mark.parametrize(("text", "expected"), [(t, e) for _, t, e in CASES], ids=IDS)
def test_terminal_safe_text_is_one_line_without_escape_sequences(text, expected):
    line = literal.terminal_safe(text, limit=500)
    assert "\n" not in line and "\r" not in line
    assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F or ch in "\u202e\u2028" for ch in line)
    assert line.startswith(shown(text, expected).replace("\n", "\\n")[:500])


def test_long_text_says_how_much_was_left_out():
    assert literal.html_text(LONG, limit=300) == "y" * 300 + "… (99,700 more characters)"
