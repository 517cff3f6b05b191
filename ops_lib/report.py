"""How an executed run is presented: the verdict cell put first, the record in the notebook's
metadata, and the HTML report. Everything taken from the target is shown literally."""
from __future__ import annotations

from pathlib import Path

from .archive import atomic_write
from .secrets import Masker


def finish_notebook(nb, record: dict, files: dict[str, Path], masker: Masker) -> None:
    """Put the verdict first, the record in the metadata, and write the final ipynb and its HTML."""
    import nbformat

    nb.metadata["opsbook"] = {k: v for k, v in record.items() if k not in ("notebook", "html", "json")}
    nb.cells = [c for c in nb.cells if "opsbook-verdict" not in c.get("metadata", {}).get("tags", [])]
    verdict = nbformat.v4.new_markdown_cell(verdict_markdown(record))
    verdict.metadata["tags"] = ["opsbook-verdict"]
    nb.cells.insert(0, verdict)
    text = masker.json_text(nbformat.writes(nb))
    atomic_write(files["ipynb"], text)
    atomic_write(files["html"], masker.text(render_html(nbformat.reads(text, as_version=4))))


def render_html(nb) -> str:
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab")
    body, _ = exporter.from_notebook_node(nb)
    return body


def verdict_markdown(record: dict) -> str:
    status, severity = record["status"], record["severity"]
    headline = {
        "ok": "**OK** — no check found a problem.",
        "findings": f"**{severity.upper()}** — {len(record.get('findings', []))} check(s) found problems.",
        "error": f"**ERROR** — the run failed: {record.get('error', '')}",
    }.get(status, status)
    target = record.get("target", {})
    lines = [
        f"# Verdict: {status if status == 'error' else severity}",
        "",
        headline,
        "",
        f"Run `{record['run_id']}` · started {record['started_at']} · {record.get('duration_s', 0):.1f} s · "
        f"database `{target.get('database')}` · stripe `{target.get('stripe') or 'not used'}`",
        "",
    ]
    if record.get("findings"):
        lines += ["| severity | check | count | finding |", "|---|---|---|---|"]
        for f in record["findings"]:
            title = str(f.get("title", "")).replace("|", "\\|")
            lines.append(f"| {f['severity']} | `{f['check']}` | {f.get('count', '')} | {title} |")
        lines.append("")
    applied = [a for a in record.get("actions", []) if a.get("applied")]
    planned = [a for a in record.get("actions", []) if not a.get("applied")]
    if applied:
        lines.append(f"**Applied {len(applied)} remediation action(s)** — see the audit log and the remediation section.")
    elif planned:
        lines.append(f"{len(planned)} remediation action(s) planned (dry run): nothing was changed.")
    ok = [c["check"] for c in record.get("checks", []) if c["severity"] == "ok"]
    if ok:
        lines.append(f"Passed: {', '.join(f'`{c}`' for c in ok)}.")
    return "\n".join(lines)
