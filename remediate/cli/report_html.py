"""The HTML report: one self-contained file (inline CSS, inline SVG charts, no script, no fetch).

A Content-Security-Policy of `default-src 'none'` is part of the page, so a browser refuses (and says so in
its console) anything that would reach the network. Every value from the ledger is HTML-escaped.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from html import escape
from typing import Any

from remediate.guest.contract import undo_note

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
OUTCOME_COLOURS = {
    "remediated": "#2e7d32",
    "healthy": "#66bb6a",
    "planned": "#42a5f5",
    "unverified": "#ffa726",
    "skipped": "#9e9e9e",
    "failed": "#c62828",
}
STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1b1b1b;max-width:1180px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}.muted{color:#666}.card{border:1px solid #ddd;border-radius:6px;padding:12px 16px;
margin:12px 0}table{border-collapse:collapse;width:100%;margin:6px 0}th,td{text-align:left;padding:4px 8px;
border-bottom:1px solid #eee;vertical-align:top}th{background:#f6f6f6}td.num{text-align:right}
.tag{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px}
.charts{display:flex;gap:24px;flex-wrap:wrap}code{font-size:12px;word-break:break-all}
"""


def render(data: dict[str, Any]) -> str:
    """`data`: generatedAt, scope, forecast {expired, weeks[{weekStart, expiring}]} or None, byStatus,
    requests [audit records as JSON, camelCase]."""
    requests: list[dict[str, Any]] = data["requests"]
    outcomes = Counter(r.get("outcome") or r.get("state") or "unknown" for r in requests)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>RDP remediation report, {escape(data['generatedAt'][:10])}</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>RDP remediation report</h1>",
        f'<p class="muted">Generated {escape(data["generatedAt"])} UTC &middot; {escape(data["scope"])}</p>',
        _overview(data, outcomes),
        _request_table(requests),
        *(_evidence(r) for r in requests),
        "</body></html>",
    ]
    return "\n".join(parts)


def _overview(data: dict[str, Any], outcomes: Counter[str]) -> str:
    charts = []
    forecast = data.get("forecast")
    if forecast:
        labels = ["expired", *(w["weekStart"][5:] for w in forecast["weeks"])]
        values = [forecast["expired"], *(w["expiring"] for w in forecast["weeks"])]
        charts.append(
            "<div><h3>Listener certificates expiring, by week</h3>"
            + bar_chart(labels, values, ["#c62828", *["#ef6c00"] * len(forecast["weeks"])])
            + "</div>"
        )
    if outcomes:
        labels = sorted(outcomes, key=lambda name: -outcomes[name])
        colours = [OUTCOME_COLOURS.get(name, "#607d8b") for name in labels]
        charts.append("<div><h3>Outcomes</h3>" + bar_chart(labels, [outcomes[n] for n in labels], colours) + "</div>")
    fleet = ""
    if data.get("byStatus"):
        rows = "".join(
            f'<tr><td>{escape(status)}</td><td class="num">{count}</td></tr>'
            for status, count in data["byStatus"].items()
        )
        fleet = (
            '<h3>Fleet by probe status (latest sweep)</h3><table style="width:auto"><tr><th>status</th>'
            f"<th>VMs</th></tr>{rows}</table>"
        )
    if not charts and not fleet:
        return "<h2>Overview</h2><p>Nothing recorded in this range.</p>"
    return f'<h2>Overview</h2><div class="charts">{"".join(charts)}</div>{fleet}'


def bar_chart(labels: Sequence[str], values: Sequence[int], colours: Sequence[str]) -> str:
    """A vertical bar chart as inline SVG, with the value above each bar and the label below."""
    width, height, bar, gap, top, bottom = 40 + 56 * len(values), 190, 40, 16, 20, 40
    peak = max([*values, 1])
    bars = []
    for index, (label, value, colour) in enumerate(zip(labels, values, colours, strict=True)):
        x = 20 + index * (bar + gap)
        h = round((height - top - bottom) * value / peak)
        y = height - bottom - h
        bars.append(
            f'<rect x="{x}" y="{y}" width="{bar}" height="{h}" fill="{colour}"><title>{escape(label)}: {value}</title>'
            f'</rect><text x="{x + bar / 2}" y="{y - 4}" text-anchor="middle" font-size="12">{value}</text>'
            f'<text x="{x + bar / 2}" y="{height - bottom + 16}" text-anchor="middle" font-size="11">'
            f"{escape(label)}</text>"
        )
    axis = f'<line x1="12" y1="{height - bottom}" x2="{width - 8}" y2="{height - bottom}" stroke="#999"/>'
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">{axis}{"".join(bars)}</svg>'
    )


def _tag(outcome: str) -> str:
    colour = OUTCOME_COLOURS.get(outcome, "#607d8b")
    return f'<span class="tag" style="background:{colour}">{escape(outcome)}</span>'


def _request_table(requests: list[dict[str, Any]]) -> str:
    if not requests:
        return "<h2>Requests</h2><p>No remediation request in this range.</p>"
    rows = "".join(
        f'<tr><td>{escape(_when(r["acceptedAt"]))}</td><td><a href="#r-{escape(r["requestId"])}">'
        f"{escape(_vm_name(r['vm']))}</a></td><td>{escape(r['trigger'])}</td>"
        f"<td>{_tag(r.get('outcome') or r['state'])}</td><td>{escape(r.get('failedStep') or '')}</td>"
        f"<td>{escape(r.get('outcomeReason') or '')}</td></tr>"
        for r in requests
    )
    return (
        f"<h2>Requests ({len(requests)})</h2><table><tr><th>accepted (UTC)</th><th>VM</th><th>trigger</th>"
        f"<th>outcome</th><th>failed step</th><th>reason</th></tr>{rows}</table>"
    )


def _evidence(record: dict[str, Any]) -> str:
    steps: list[dict[str, Any]] = record.get("steps", [])
    by_name = {s["name"]: s for s in steps}
    before = by_name.get("probe", {}).get("detail", "not probed")
    after = next(
        (s["detail"] for s in reversed(steps) if s["name"].startswith("verify") and "guest" not in s["name"]), ""
    )
    findings = _findings(by_name.get("diagnose"))
    rows = "".join(
        f'<tr><td>{escape(s["name"])}</td><td>{escape(s["status"])}</td><td class="num">{_duration(s)}</td>'
        f"<td>{escape(s.get('detail') or '')}</td></tr>"
        for s in steps
    )
    undo = [u for s in steps if (u := undo_for(s))]
    undo_html = (
        "<ul>" + "".join(f"<li><b>{escape(name)}</b>: {escape(text)}</li>" for name, text in undo) + "</ul>"
        if undo
        else '<p class="muted">No change to undo.</p>'
    )
    return (
        f'<div class="card" id="r-{escape(record["requestId"])}"><h3>{escape(_vm_name(record["vm"]))} &middot; '
        f'{_tag(record.get("outcome") or record["state"])} <span class="muted">request '
        f"{escape(record['requestId'])}</span></h3>"
        f"<p><code>{escape(record['vm'])}</code><br>{escape(record['trigger'])}: {escape(record['reason'])}</p>"
        f"<table><tr><th>probe before</th><td>{escape(before)}</td></tr>"
        f"<tr><th>probe after</th><td>{escape(after or 'not probed again (nothing was changed)')}</td></tr>"
        f"<tr><th>findings</th><td>{escape(findings)}</td></tr></table>"
        f"<table><tr><th>step</th><th>status</th><th>seconds</th><th>summary</th></tr>{rows}</table>"
        f"<h3>Undo</h3>{undo_html}</div>"
    )


def _findings(diagnose: dict[str, Any] | None) -> str:
    if not diagnose or not diagnose.get("summary"):
        return "no in-guest diagnosis"
    found = diagnose["summary"].get("findings", {})
    recommended = found.get("recommended") or []
    cert = found.get("listener_certificate") or {}
    parts = [f"needs {', '.join(recommended)}" if recommended else "nothing to repair"]
    if cert:
        parts.append(
            f"listener certificate {cert.get('thumbprint', '?')} until {cert.get('not_after', '?')}"
            f"{' (expired)' if cert.get('expired') else ''}"
        )
    return "; ".join(parts)


# What a step's summary names that its undo needs (the script's own note says what to do with it).
_UNDO_VALUES = (
    ("listener certificate before", ("thumbprint",)),
    ("removed", ("removed",)),
    ("re-pinned to", ("pinned",)),
    ("listener now", ("listener",)),
    ("key set aside as", ("set_aside",)),
    ("saved ACL and owner in", ("log_path",)),
    ("backup", ("backup_path",)),
)


def undo_for(step: dict[str, Any]) -> tuple[str, str] | None:
    """How to undo what a step changed: the script's own Undo note (its `.NOTES`), with the paths and thumbprints
    its summary recorded (operations.md, "Roll back a repair")."""
    summary = step.get("summary") or {}
    name = step["name"]
    if name.startswith("reboot") and step.get("status") == "ok":
        return name, "a restart: nothing to undo"
    if not summary.get("changed"):
        return None
    try:
        note = undo_note(str(summary.get("script", name)))
    except ValueError:  # not one of the product's scripts
        note = None
    found = summary.get("findings") or {}
    values = [
        f"{label} {value}" for label, path in _UNDO_VALUES if isinstance(value := _dig(found, path), str) and value
    ]
    text = note or "see docs/guest-scripts.md for this script's rollback"
    return name, text + (f" ({'; '.join(values)})" if values else "")


def _dig(found: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = found
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _duration(step: dict[str, Any]) -> str:
    if step.get("finishedAt") is None or step.get("startedAt") is None:
        return ""
    return f"{float(step['finishedAt']) - float(step['startedAt']):.1f}"


def _when(text: str) -> str:
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return text


def _vm_name(vm: str) -> str:
    return vm.rsplit("/", 1)[-1]
