"""How an executed run is presented: the verdict cell put first, the record in the notebook's
metadata, and the HTML report. Everything taken from the target is shown literally."""
from __future__ import annotations

import re
from pathlib import Path

from .archive import atomic_write
from .findings import rows_to_html
from .literal import html_text, markdown_block, shorten
from .secrets import Masker


def finish_notebook(nb, record: dict, files: dict[str, Path], masker: Masker) -> None:
    """Put the verdict first, the record in the metadata, and write the final ipynb and its HTML."""
    import nbformat

    nb.metadata["opsbook"] = {k: v for k, v in record.items() if k not in ("notebook", "html", "json")}
    nb.cells = [c for c in nb.cells if "opsbook-verdict" not in c.get("metadata", {}).get("tags", [])]
    verdict = nbformat.v4.new_markdown_cell(verdict_markdown(record))
    verdict.metadata["tags"] = ["opsbook-verdict"]
    nb.cells.insert(0, verdict)
    text = _encodable(masker.json_text(nbformat.writes(nb)))
    atomic_write(files["ipynb"], text)
    atomic_write(files["html"], masker.text(render_html(nbformat.reads(text, as_version=4))))


def _encodable(json_text: str) -> str:
    """A lone surrogate (a Stripe field holding a JSON ``"\\ud800"``) cannot be written as UTF-8;
    in JSON text its escape means the same and can."""
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", json_text)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def render_html(nb) -> str:
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab")
    body, _ = exporter.from_notebook_node(nb)
    return body


def verdict_markdown(record: dict) -> str:
    """The verdict cell's Markdown: our heading, then one raw-HTML block for everything else.

    The record carries target text (the error line, finding titles and items, the database
    URL). Inside an HTML block Markdown is not parsed, and ``html_text`` has escaped the markup
    and the math delimiters, so that text shows literally in JupyterLab and in nbconvert's HTML.
    """
    status, severity = record["status"], record["severity"]
    label = status if status == "error" else severity
    return f"# Verdict: {html_text(label)}\n\n" + markdown_block(verdict_html(record), classes="opsbook-verdict")


def verdict_html(record: dict) -> str:
    status, severity = record["status"], record["severity"]
    findings = record.get("findings", [])
    headline = {
        "ok": "<b>OK</b> — no check found a problem.",
        "findings": f"<b>{html_text(severity.upper())}</b> — {len(findings)} check(s) found problems.",
        "error": f"<b>ERROR</b> — the run failed: <code>{html_text(record.get('error', ''), limit=2000)}</code>",
    }.get(status, html_text(status))
    target = record.get("target", {})
    parts = [
        f"<p>{headline}</p>",
        f"<p>Run <code>{html_text(record['run_id'])}</code> · started {html_text(record['started_at'])} · "
        f"{record.get('duration_s', 0):.1f} s · database <code>{html_text(target.get('database') or 'none')}</code> · "
        f"stripe <code>{html_text(target.get('stripe') or 'not used')}</code></p>",
    ]
    if findings:
        parts.append(rows_to_html([
            {"severity": f["severity"], "check": f["check"], "count": f.get("count", ""),
             "finding": f.get("title", ""), "items": _items_preview(f.get("items") or [])}
            for f in findings
        ]))
    applied = [a for a in record.get("actions", []) if a.get("applied")]
    planned = [a for a in record.get("actions", []) if not a.get("applied")]
    if applied:
        parts.append(f"<p><b>Applied {len(applied)} remediation action(s)</b> — see the audit log and the remediation section.</p>")
    elif planned:
        parts.append(f"<p>{len(planned)} remediation action(s) planned (dry run): nothing was changed.</p>")
    ok = [c["check"] for c in record.get("checks", []) if c["severity"] == "ok"]
    if ok:
        parts.append(f"<p>Passed: {', '.join(f'<code>{html_text(c)}</code>' for c in ok)}.</p>")
    return "".join(parts)


def _items_preview(items: list, shown: int = 5) -> str:
    """The first few items a finding names (the JSON keeps them all)."""
    text = ", ".join(shorten(str(i), 80) for i in items[:shown])
    return text + (f" … and {len(items) - shown} more" if len(items) > shown else "")
