"""The pack's ``summary.pdf``: HTML rendered by WeasyPrint, with its charts drawn here as inline SVG.

Charts: changes per week by outcome; lead time from request to approval to execution; approval
latency. Every value comes from the rows :class:`~audit_app.evidence.offline.Evidence` computed.
"""

from __future__ import annotations

from datetime import timedelta
from html import escape

from audit_app.evidence.offline import EXCEPTION, PASS, Evidence, parse_time

OUTCOME_COLOURS = {"APPLIED": "#2e7d32", "FAILED": "#c62828", "ROLLED_BACK": "#ef6c00", "ROLLBACK_FAILED": "#6a1b9a"}
RESULT_COLOURS = {PASS: "#2e7d32", EXCEPTION: "#c62828"}
WIDTH, HEIGHT, MARGIN = 640, 200, 36


def _weeks(evidence: Evidence) -> list[tuple[str, dict[str, int]]]:
    start = evidence.start - timedelta(days=evidence.start.weekday())
    weeks: list[tuple[str, dict[str, int]]] = []
    week = start
    while week < evidence.end:
        weeks.append((week.strftime("%Y-%m-%d"), {}))
        week += timedelta(days=7)
    for row in evidence.executions:
        index = (parse_time(row["executed_at"]) - start).days // 7
        if 0 <= index < len(weeks):
            counts = weeks[index][1]
            counts[row["result"]] = counts.get(row["result"], 0) + 1
    return weeks


def weekly_chart(evidence: Evidence) -> str:
    """Stacked bars: executions per week by outcome."""
    weeks = _weeks(evidence)
    peak = max([sum(counts.values()) for _, counts in weeks] + [1])
    step = (WIDTH - 2 * MARGIN) / max(len(weeks), 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT + 40}" role="img" aria-label="Changes per week by outcome">']
    parts.append(f'<line x1="{MARGIN}" y1="{HEIGHT}" x2="{WIDTH - MARGIN}" y2="{HEIGHT}" stroke="#444"/>')
    parts.append(f'<text x="4" y="{MARGIN}" font-size="9">{peak}</text><text x="4" y="{HEIGHT}" font-size="9">0</text>')
    for index, (label, counts) in enumerate(weeks):
        x, base = MARGIN + index * step, HEIGHT
        for outcome, colour in OUTCOME_COLOURS.items():
            height = (HEIGHT - MARGIN) * counts.get(outcome, 0) / peak
            if height:
                parts.append(f'<rect x="{x + 2:.1f}" y="{base - height:.1f}" width="{max(step - 4, 1):.1f}" height="{height:.1f}" fill="{colour}"/>')
                base -= height
        if index % max(1, len(weeks) // 7) == 0:
            parts.append(f'<text x="{x:.1f}" y="{HEIGHT + 12}" font-size="8">{label}</text>')
    for index, (outcome, colour) in enumerate(OUTCOME_COLOURS.items()):
        x = MARGIN + index * 140
        parts.append(
            f'<rect x="{x}" y="{HEIGHT + 22}" width="10" height="10" fill="{colour}"/><text x="{x + 14}" y="{HEIGHT + 31}" font-size="9">{outcome}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _hours(later: str | None, earlier: str | None) -> float | None:
    if not later or not earlier:
        return None
    return max(0.0, (parse_time(later) - parse_time(earlier)).total_seconds() / 3600)


def lead_times(evidence: Evidence) -> list[tuple[str, float, float]]:
    """(change id, hours from request to approval, hours from approval to execution) of each
    execution with an approved request."""
    found = []
    for row in evidence.executions:
        approval, execution = _hours(row["approved_at"], row["requested_at"]), _hours(row["executed_at"], row["approved_at"])
        if approval is not None and execution is not None:
            found.append((row["change_id"], approval, execution))
    return found


def lead_time_chart(evidence: Evidence) -> str:
    """Horizontal stacked bars: request to approval (blue), approval to execution (grey); 40 at most."""
    rows = lead_times(evidence)[-40:]
    if not rows:
        return "<p>No execution in scope had an approved request.</p>"
    peak = max(a + e for _, a, e in rows) or 1
    bar = 10
    height = len(rows) * (bar + 3) + 30
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" role="img" aria-label="Lead time from request to approval to execution">'
    ]
    scale = (WIDTH - 200) / peak
    for index, (change_id, approval, execution) in enumerate(rows):
        y = index * (bar + 3)
        parts.append(f'<text x="0" y="{y + 9}" font-size="8">{escape(change_id[:30])}</text>')
        parts.append(f'<rect x="150" y="{y}" width="{approval * scale:.1f}" height="{bar}" fill="#1565c0"/>')
        parts.append(f'<rect x="{150 + approval * scale:.1f}" y="{y}" width="{execution * scale:.1f}" height="{bar}" fill="#9e9e9e"/>')
    parts.append(f'<text x="150" y="{height - 6}" font-size="9">0 h</text><text x="{WIDTH - 60}" y="{height - 6}" font-size="9">{peak:.1f} h</text>')
    parts.append("</svg>")
    return "".join(parts)


def latency_chart(evidence: Evidence) -> str:
    """A histogram of approval latency (request to final approval) in hour buckets."""
    latencies = [approval for _, approval, _ in lead_times(evidence)]
    if not latencies:
        return "<p>No approval in scope.</p>"
    edges = [1, 4, 8, 24, 72, 168]
    labels = ["<1h", "1-4h", "4-8h", "8-24h", "1-3d", "3-7d", ">7d"]
    counts = [0] * len(labels)
    for value in latencies:
        counts[next((i for i, edge in enumerate(edges) if value < edge), len(edges))] += 1
    peak = max(counts) or 1
    step = (WIDTH - 2 * MARGIN) / len(labels)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT + 20}" role="img" aria-label="Approval latency">']
    for index, (label, count) in enumerate(zip(labels, counts, strict=True)):
        height = (HEIGHT - MARGIN) * count / peak
        x = MARGIN + index * step
        parts.append(f'<rect x="{x + 4:.1f}" y="{HEIGHT - height:.1f}" width="{step - 8:.1f}" height="{height:.1f}" fill="#1565c0"/>')
        parts.append(f'<text x="{x + 6:.1f}" y="{HEIGHT + 12}" font-size="9">{label} ({count})</text>')
    parts.append("</svg>")
    return "".join(parts)


def summary_html(evidence: Evidence, controls: list[dict], scope: dict) -> str:
    parameters = evidence.parameters
    rows = []
    for control in controls:
        colour = RESULT_COLOURS.get(control["result"], "#555")
        exceptions = "".join(f"<li>#{item['seq'] or '-'}: {escape(item['reason'])}</li>" for item in control["exceptions"][:50])
        more = f"<li>... and {len(control['exceptions']) - 50} more (controls.json)</li>" if len(control["exceptions"]) > 50 else ""
        rows.append(
            f'<tr><td>{escape(control["title"])}</td><td style="color:{colour};font-weight:bold">{control["result"]}</td>'
            f"<td>{control['checked']}</td><td><ul>{exceptions}{more}</ul></td></tr>"
        )
    targets = ", ".join(parameters.get("targets") or []) or "all target systems"
    members = ", ".join(parameters.get("members") or []) or "all members"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Evidence pack</title>
<style>
body {{ font-family: "DejaVu Sans", sans-serif; font-size: 10pt; }}
table {{ border-collapse: collapse; width: 100%; }} td, th {{ border: 1px solid #bbb; padding: 3px; vertical-align: top; text-align: left; }}
h1 {{ font-size: 16pt; }} h2 {{ font-size: 12pt; margin-top: 18px; }} ul {{ margin: 0; padding-left: 14px; }}
</style></head><body>
<h1>Flamingock evidence pack</h1>
<h2>Scope</h2>
<table>
<tr><th>Period</th><td>{escape(parameters["from"])} to {escape(parameters["to"])} (end exclusive; judged up to {escape(parameters["end"])})</td></tr>
<tr><th>Environment</th><td>{escape(parameters["environment"])} (protected: {escape(", ".join(parameters.get("protected_environments") or []))})</td></tr>
<tr><th>Target systems</th><td>{escape(targets)}</td></tr><tr><th>Members</th><td>{escape(members)}</td></tr>
<tr><th>Requested by</th><td>{escape(str(scope.get("requested_by", "")))}</td></tr>
<tr><th>Executions in scope</th><td>{len(evidence.executions)}</td></tr>
<tr><th>Drift findings in scope</th><td>{len(evidence.findings)}</td></tr>
</table>
<h2>Controls</h2>
<table><tr><th>Control</th><th>Result</th><th>Checked</th><th>Exceptions (audit sequence number: reason)</th></tr>{"".join(rows)}</table>
<h2>Changes per week by outcome</h2>{weekly_chart(evidence)}
<h2>Lead time: request to approval (blue) to execution (grey)</h2>{lead_time_chart(evidence)}
<h2>Approval latency</h2>{latency_chart(evidence)}
<h2>How to check this pack</h2>
<p>controls.json names the audit entries each result rests on; audit.jsonl holds them, linked to the signed
checkpoints around the period. <code>flamingock audit verify-pack PACK --public-key HEX --offline</code>
recomputes every hash and every result with the public key alone (docs/compliance.md).</p>
</body></html>"""


def summary_pdf(evidence: Evidence, controls: list[dict], scope: dict) -> bytes:
    # Imported here, by the worker that makes a pack: WeasyPrint loads Pango and its fonts (about
    # half a second), which no other process that imports the services should pay for.
    import weasyprint

    return weasyprint.HTML(string=summary_html(evidence, controls, scope)).write_pdf()
