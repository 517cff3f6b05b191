"""How an executed run is presented: the verdict cell put first, the record in the notebook's
metadata, and the HTML report. Everything taken from the target is shown literally."""
from __future__ import annotations

import re
import threading
from pathlib import Path

from .archive import atomic_write
from .changes import describe as describe_changes
from .execution import ERROR_TAG
from .findings import rows_to_html
from .literal import html_text, markdown_block, shorten
from .secrets import Masker


def finish_notebook(nb, record: dict, files: dict[str, Path], masker: Masker) -> None:
    """Put the verdict first, the record in the metadata, and write the final ipynb and its HTML."""
    import nbformat

    # the run's record, beside the runbook's own declaration (metadata "opsbook")
    nb.metadata["opsbook_run"] = {k: v for k, v in record.items() if k not in ("notebook", "html", "json")}
    # The verdict says it once: no earlier verdict, and not papermill's own "An Exception was
    # encountered" heading (the verdict links to the failing cell's anchor instead).
    nb.cells = [c for c in nb.cells if "opsbook-verdict" not in c.get("metadata", {}).get("tags", [])
                and not _is_papermill_error_heading(c)]
    verdict = nbformat.v4.new_markdown_cell(verdict_markdown(record))
    verdict.metadata["tags"] = ["opsbook-verdict"]
    nb.cells.insert(0, verdict)
    text = _encodable(masker.json_text(nbformat.writes(nb)))
    atomic_write(files["ipynb"], text)
    # the masked notebook, as written (validated once already, by nbformat.writes)
    atomic_write(files["html"], masker.text(render_html(nbformat.v4.reads(text))))


def _encodable(json_text: str) -> str:
    """A lone surrogate (a Stripe field holding a JSON ``"\\ud800"``) cannot be written as UTF-8;
    in JSON text its escape means the same and can."""
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", json_text)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _is_papermill_error_heading(cell) -> bool:
    return (cell.get("cell_type") == "markdown" and ERROR_TAG in cell.get("metadata", {}).get("tags", [])
            and "An Exception was encountered" in "".join(cell.get("source", "")))


# Report mode: a reviewer reads the verdict, the narrative and the evidence; the code is one click
# away (no script: the checkbox and :has() do it). Wide outputs scroll instead of being clipped.
_REPORT_MODE = (
    "<style>"
    "body:not(:has(#opsbook-show-code:checked)) .jp-CodeCell .jp-Cell-inputWrapper{display:none}"
    "body:not(:has(#opsbook-show-code:checked)) .jp-CodeCell:not(:has(.jp-OutputArea-output)){display:none}"
    ".jp-OutputArea-output{overflow-x:auto}"
    ".opsbook-code-toggle{position:fixed;top:8px;right:12px;z-index:10;background:#fff;border:1px solid #ccc;"
    "border-radius:4px;padding:4px 8px;font:13px sans-serif}"
    "</style>"
    '<label class="opsbook-code-toggle"><input type="checkbox" id="opsbook-show-code"> show code</label>'
)
_BODY = re.compile(r"<body[^>]*>")


_html_export_imported = threading.Event()


def prepare_html_export() -> None:
    """Import nbconvert in the background (~0.3 s) while a kernel runs and this process waits."""
    if not _html_export_imported.is_set():
        threading.Thread(target=_import_html_export, name="opsbook-import-nbconvert", daemon=True).start()


def _import_html_export() -> None:
    try:
        warm_html_export()
    except Exception:  # the export proper will raise it, where it is reported
        pass
    finally:
        _html_export_imported.set()


def warm_html_export() -> None:
    """nbconvert's imports, templates and filters, loaded by rendering a notebook with the kinds of
    cell and output a runbook has (each compiles its own part of the templates)."""
    import nbformat

    v4 = nbformat.v4
    pixel = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
    code = v4.new_code_cell("x = 1", outputs=[
        v4.new_output("stream", name="stdout", text="x\n"),
        v4.new_output("display_data", data={"text/html": "<table><tr><td>x</td></tr></table>", "text/plain": "x"}),
        v4.new_output("display_data", data={"image/png": pixel, "text/plain": "<Figure>"}),
        v4.new_output("execute_result", data={"text/plain": "1"}, execution_count=1),
        v4.new_output("error", ename="E", evalue="e", traceback=["E: e"]),
    ])
    render_html(v4.new_notebook(cells=[v4.new_markdown_cell("# x\n\n*y* `z`"), code]))


# One exporter per process: a new HTMLExporter compiles its Jinja templates again (~0.15 s a
# report). Rendering is serialised on it (runs of `run --all` share it).
_exporter = None
_exporter_lock = threading.Lock()


def render_html(nb, *, report_mode: bool = True) -> str:
    global _exporter

    with _exporter_lock:
        if _exporter is None:
            from nbconvert import HTMLExporter

            _exporter = HTMLExporter(template_name="lab")
        body, _ = _exporter.from_notebook_node(nb)
    if report_mode:
        body = _BODY.sub(lambda m: m.group(0) + _REPORT_MODE, body, count=1)
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
    if status == "error" and record.get("notebook"):
        headline += ' <a href="#papermill-error-cell">Go to the failing cell.</a>'
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
    if "changes" in record:
        parts.append(f"<p>{html_text(describe_changes(record['changes']), limit=None)}{_changed_items(record['changes'])}</p>")
    if record.get("parameters"):
        shown = ", ".join(f"<code>{html_text(k)}</code> = <code>{html_text(repr(v), limit=120)}</code>"
                          for k, v in record["parameters"].items())
        parts.append(f"<p>Parameters: {shown}.</p>")
    return "".join(parts)


def _changed_items(changes: dict) -> str:
    """The items behind the counts: what is new, and what was resolved since the previous run."""
    if changes.get("previous_run") is None:
        return ""
    text = ""
    for label, key in (("New", "new"), ("Resolved", "resolved")):
        changed = [(check, c[key]) for check, c in changes.get("checks", {}).items() if c.get(key)]
        if changed:
            text += f" {label}: " + "; ".join(f"<code>{html_text(check)}</code>: {html_text(_items_preview(items, 3))}"
                                             for check, items in changed) + "."
    return text


def _items_preview(items: list, shown: int = 5) -> str:
    """The first few items a finding names (the JSON keeps them all)."""
    text = ", ".join(shorten(str(i), 80) for i in items[:shown])
    return text + (f" … and {len(items) - shown} more" if len(items) > shown else "")
