"""The status document (relay/status.py) as an HTML page and as a terminal table.

The page is one self-contained document: inline CSS, no script, no external resource (it works
offline and behind a strict CSP), refreshed by ``<meta http-equiv="refresh">``. Every value is
HTML-escaped on the way in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

REFRESH_SECONDS = 5

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d232a;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .2em}h2{font-size:1.05em;margin:1.4em 0 .4em}
table{border-collapse:collapse;background:#fff;min-width:50%}
th,td{border:1px solid #d8dde3;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#eef1f4;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#16794c;font-weight:600}.bad{color:#b42318;font-weight:600}
.warn{color:#b54708;font-weight:600}
.meta{color:#555}.err{font-family:ui-monospace,monospace;font-size:.9em;max-width:40em}
.bar{display:inline-block;width:10em;height:.8em;background:#e4e7eb;vertical-align:middle}
.bar i{display:block;height:100%;background:#3b82f6}.bar i.hi{background:#b42318}
"""


def render_html(doc: dict[str, Any]) -> str:
    ready = doc["ready"]
    reload = doc["config"]["last_reload"]
    reload_text = (
        "none since start"
        if not reload
        else f"{reload['result']} at {reload['at']}"
        + (f": {reload['error']}" if reload.get("error") else "")
    )
    spool = doc["spool"]
    pct = float(spool["used_percent"])
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>statsig-relay {_e(doc['version'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>statsig-relay {_e(doc['version'])} "
        + (
            '<span class="ok" id="ready">ready</span>'
            if ready
            else '<span class="bad" id="ready">not ready</span>'
        )
        + "</h1>",
        f'<p class="meta">up {_e(_duration(doc["uptime_s"]))} (since {_e(doc["started_at"])});'
        f" config {_e(doc['config']['path'] or '(inline)')}; last reload: {_e(reload_text)};"
        f" last-minute figures over {_e(_duration(doc['window_s']))};"
        f" refreshes every {REFRESH_SECONDS} s</p>",
    ]
    if doc["problems"]:
        parts.append(
            '<ul class="bad" id="problems">'
            + "".join(f"<li>{_e(p)}</li>" for p in doc["problems"])
            + "</ul>"
        )
    sections = (("Sources", "sources"), ("Routes", "routes"), ("Targets", "targets"))
    for (title, ident), (header, rows) in zip(sections, tables(doc), strict=True):
        classes = {10: _state_class, 11: lambda _: "err"} if ident == "targets" else None
        parts.append(f"<h2>{title}</h2>")
        parts.append(_table(ident, header, rows, classes))
    parts.append("<h2>Spool</h2>")
    parts.append(
        f'<p id="spool">{_e(spool["backend"])}: {_e(_size(spool["bytes"]))} of '
        f"{_e(_size(spool['limit_bytes']))} ({pct:g} %) "
        f'<span class="bar"><i class="{"hi" if pct >= 80 else ""}" '
        f'style="width:{min(pct, 100):.0f}%"></i></span></p>'
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def render_text(doc: dict[str, Any]) -> str:
    """The same figures as a terminal table, for ``statsig-relay status``."""
    reload = doc["config"]["last_reload"]
    spool = doc["spool"]
    lines = [
        f"statsig-relay {doc['version']}  {'READY' if doc['ready'] else 'NOT READY'}  "
        f"up {_duration(doc['uptime_s'])}  config {doc['config']['path'] or '(inline)'}  "
        f"last reload: {'none' if not reload else reload['result'] + ' at ' + reload['at']}",
        *(f"  problem: {p}" for p in doc["problems"]),
        "",
    ]
    for header, rows in tables(doc):
        if header[0] == "target":  # the terminal is narrow: no type, a short last error
            header = [header[0], *header[2:]]
            rows = [[r[0], *r[2:-1], str(r[-1])[:60]] for r in rows]
        lines += _text_table([h.upper() for h in header], rows)
        lines.append("")
    lines += [
        f"spool ({spool['backend']}): {_size(spool['bytes'])} of {_size(spool['limit_bytes'])}"
        f" ({spool['used_percent']:g} %)",
    ]
    return "\n".join(lines)


Table = tuple[list[str], list[list[Any]]]


def tables(doc: dict[str, Any]) -> tuple[Table, Table, Table]:
    """Sources, routes and targets as (header, rows), for both renderings."""
    sources = [
        [
            name,
            s["kind"],
            s["requests_last_minute"],
            s["events_last_minute"],
            s["events_total"],
            s["rejected_last_minute"],
            _reasons(s["rejected"])
            + (
                f"; requests refused: {_reasons(s['refused_requests'])}"
                if s["refused_requests"]
                else ""
            ),
        ]
        for name, s in doc["sources"].items()
    ]
    routes = [
        [
            name,
            f"{', '.join(r['from'])} → {r['to']}",
            r["routed_last_minute"],
            r["routed"],
            r["filtered"],
            _reasons(r["dropped"]),
        ]
        for name, r in doc["routes"].items()
    ]
    targets = [
        [
            name,
            t["type"],
            t["queued"],
            _duration(t["oldest_age_s"]),
            t["delivered_per_s"],
            t["delivered_total"],
            t["retrying_last_minute"],
            _duration(t["backoff_s"]),
            t["dlq"],
            _reasons(t["dead_lettered"]),
            _state(t),
            t["last_error"],
        ]
        for name, t in doc["targets"].items()
    ]
    return (
        (
            [
                "source",
                "kind",
                "requests/min",
                "events/min",
                "events",
                "rejected/min",
                "rejected by reason",
            ],
            sources,
        ),
        (["route", "from → to", "routed/min", "routed", "filtered", "dropped by reason"], routes),
        (
            [
                "target",
                "type",
                "queued",
                "oldest",
                "delivered/s",
                "delivered",
                "retried/min",
                "backoff",
                "DLQ",
                "dead-lettered by reason",
                "state",
                "last error",
            ],
            targets,
        ),
    )


# -- helpers -----------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _table(
    ident: str,
    header: Sequence[str],
    rows: Iterable[Sequence[Any]],
    classes: dict[int, Any] | None = None,
) -> str:
    classes = classes or {}
    out = [f'<table id="{ident}"><thead><tr>']
    out += [f"<th>{_e(h)}</th>" for h in header]
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>")
        for i, cell in enumerate(row):
            cls = classes[i](cell) if i in classes else ("n" if _numeric(cell) else "")
            out.append(f'<td class="{cls}">{_e(cell)}</td>' if cls else f"<td>{_e(cell)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _text_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    table = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]


def _state(target: dict[str, Any]) -> str:
    state = target["state"]
    if state == "ok":
        return "ok"
    held = f" ({target['held']} held)" if target.get("held") else ""
    return f"{state} since {target['state_since']}{held}: {target['state_reason']}"


def _state_class(cell: Any) -> str:
    if cell == "ok":
        return "ok"
    return "warn" if str(cell).startswith("degraded") else "bad"


def _numeric(cell: Any) -> bool:
    return isinstance(cell, int | float) and not isinstance(cell, bool)


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in counts.items()) or "-"


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds <= 0:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
