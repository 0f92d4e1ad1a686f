"""The benchmark's report: Markdown tables from ``results.json``.

Every figure is the median of the repeated measurements, with their range
as ``[min-max]``; every ratio compares medians from the same run.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .scenarios import (
    BURST_KINDS,
    HUB_PEERS,
    HUB_SERVERS,
    HUB_TIDINGS,
    LABELS,
    LATENCY_KINDS,
    MEMORY_KINDS,
    NODE_LABELS,
    NODE_SERVERS,
    NODES,
    PEERS,
    REDIS_SERVERS,
    TARGETS,
    TIDINGS,
    Scenario,
    Target,
)

#: Scenario kinds of the hub section (the rest: WebSocket servers, clients).
HUB_KINDS = ("hub", "hub-idle", "hub-memory", "hub-burst", "hub-api", "hub-rate")

#: Scenario kinds of the "many nodes on Redis" section.
NODE_KINDS = ("hub-nodes", "hub-latency")

#: A load client at or above this share of its core is taken as saturated.
SATURATED = 0.9

NOTES_START = "<!-- notes -->"
NOTES_END = "<!-- /notes -->"

Data = dict[str, Any]


def number(value: float) -> str:
    """A figure with three significant digits or so: 1.23M, 456k, 12.3k."""
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e5:
        return f"{value / 1e3:.0f}k"
    if value >= 1e4:
        return f"{value / 1e3:.1f}k"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def stats(values: Sequence[float]) -> tuple[float, float, float] | None:
    """(median, min, max), or None without values."""
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def cell(result: dict[str, Any] | None, key: str = "values") -> str:
    if result is None:
        return "—"
    if result.get("error"):
        return "failed"
    s = stats(result.get(key, []))
    if s is None:
        return "—"
    med, lo, hi = s
    if len(result.get(key, [])) == 1:
        return number(med)
    return f"{number(med)} [{number(lo)}-{number(hi)}]"


def ratio(
    ours: dict[str, Any] | None, peer: dict[str, Any] | None, key: str = "values"
) -> tuple[float, float, float] | None:
    """ours ÷ peer: of the medians, and the widest range the runs allow."""
    if not ours or not peer or ours.get("error") or peer.get("error"):
        return None
    a, b = stats(ours.get(key, [])), stats(peer.get(key, []))
    if a is None or b is None or b[0] <= 0 or b[1] <= 0:
        return None
    return a[0] / b[0], a[1] / b[2], a[2] / b[1]


def ratio_text(r: tuple[float, float, float] | None) -> str:
    if r is None:
        return "—"
    return f"{r[0]:.2f}x [{r[1]:.2f}-{r[2]:.2f}]"


def latency_cell(result: dict[str, Any] | None) -> str:
    """``p50 [range] / p99 [range]`` in ms; ``†`` marks a figure that is a
    lower bound (deliveries missing at the end of the drain)."""
    if result is None:
        return "—"
    if result.get("error"):
        return "failed"
    p99 = cell(result)
    if p99 == "—":
        return p99
    p50 = cell({"values": result.get("series", {}).get("p50", [])})
    info = result.get("info", {})
    p50 += " †" if info.get("p50_lower_bound") else ""
    p99 += " †" if info.get("p99_lower_bound") else ""
    return f"{p50} / {p99}"


def scenario_of(entry: dict[str, Any]) -> Scenario:
    return Scenario(
        entry["key"],
        entry["kind"],
        entry["unit"],
        conns=entry["conns"],
        size=entry["size"],
        depth=entry["depth"],
        lower_is_better=entry["lower_is_better"],
        rate=entry.get("rate", 0),
        publishers=entry.get("publishers", 1),
        repeat=entry.get("repeat", 0),
        burst=entry.get("burst", 0),
        deflate=entry.get("deflate", False),
    )


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def median_of(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


NODES_TEXT = (
    f"The tidings hub as {NODES} nodes on one Redis (its Redis broker: "
    "`tidings serve --broker redis://...`), and python-socketio as "
    f"{NODES} uvicorn processes sharing rooms through the same kind of Redis "
    "(`socketio.AsyncRedisManager`), and Node's Socket.IO as as many Node.js "
    "processes on `@socket.io/redis-adapter`, with one tidings hub node on its memory "
    "broker beside them; the subscribers spread evenly over the nodes, one of "
    "them publishing, the same load client for all. The nodes and Redis share "
    "the server core (see Setup). Latency: publications at a fixed rate, each "
    "carrying its send time, taken just before its publish is written; each "
    "delivery timed when it reached the subscriber's socket (the kernel's "
    "receive timestamp, SO_TIMESTAMPNS: one clock on one machine; a read of "
    "several segments takes the newest one's, so never early); ms, p50 / p99; "
    "† marks a figure that is only a lower bound: more of the deliveries than "
    "it leaves out (1 % for the p99, half for the p50) had not arrived at the "
    "end of the drain, and were counted as arriving then. A hub that cannot "
    "keep up with the rate is seen in the table below: publications/s sent "
    "falls short of the rate (a due publication is skipped while a quarter "
    "second's worth are in flight), and the latency is then that queue, not "
    "the hub's latency at that rate. For latency, the ratios are of the p99s: "
    "below 1x is quicker."
)

LATENCY_TEXT = (
    "Behind the latency figures (medians of the measurements): the arrival "
    "quantiles, the same deliveries timed when the load client read them (one "
    "process reading every subscriber's socket in turn: its own lag is in "
    "there), what the publisher managed to send on schedule, what arrived, "
    "and the CPU each side used."
)

# -- sections ------------------------------------------------------------


def server_entries(data: Data) -> list[dict[str, Any]]:
    """The WebSocket servers' scenarios."""
    return [
        e
        for e in data["scenarios"]
        if e["kind"] != "client"
        and e["kind"] not in HUB_KINDS
        and e["kind"] not in NODE_KINDS
    ]


def hub_entries(data: Data) -> list[dict[str, Any]]:
    return [e for e in data["scenarios"] if e["kind"] in HUB_KINDS]


def node_entries(data: Data) -> list[dict[str, Any]]:
    return [e for e in data["scenarios"] if e["kind"] in NODE_KINDS]


def ws_servers(data: Data) -> list[str]:
    """The WebSocket servers that ran (the report's main columns)."""
    hubs = (*HUB_SERVERS, *REDIS_SERVERS)
    return [s for s in data["meta"]["servers"] if s not in hubs]


def server_cell(data: Data, entry: dict[str, Any], name: str, key: str) -> str:
    """:func:`cell`, saying why a server has no figure."""
    meta = data["meta"]
    if name in meta.get("missing", ()):
        return str(meta.get("why_missing", {}).get(name, "not installed"))
    if name not in entry["results"]:
        return "not run"
    if entry["kind"] in LATENCY_KINDS:
        return latency_cell(entry["results"][name])
    return cell(entry["results"][name], key)


def verdict(r: tuple[float, float, float] | None, bound: float, lower: bool) -> str:
    if r is None:
        return "not measured"
    ok = r[0] <= bound if lower else r[0] >= bound
    return "met" if ok else "**not met**"


def absolute_row(t: Target, entry: dict[str, Any], text: str) -> list[str]:
    """The row of a target on ``ours``' own figure (no peer)."""
    res = entry["results"].get(t.ours)
    s = None if res is None or res.get("error") else stats(res.get("values", []))
    unit = t.unit if t.unit is not None else entry["unit"]
    value = "—" if s is None else f"{cell(res)} {unit}"
    lower = entry["lower_is_better"]
    if s is None:
        return [text, value, "not measured", "—", "—"]
    ok = s[0] <= t.bound if lower else s[0] >= t.bound
    return [text, value, "met" if ok else "**not met**", "—", "—"]


def series_of(result: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    """``result`` with its ``name`` series (say, the p99s) as its values."""
    if result is None or result.get("error"):
        return result
    return {"values": result.get("series", {}).get(name, [])}


def spread_row(t: Target, entry: dict[str, Any], text: str) -> list[str]:
    """The row of a steadiness target: ``ours``' farthest extreme from its
    median, as a fraction of the median."""
    res = entry["results"].get(t.ours)
    s = None if res is None or res.get("error") else stats(res.get("values", []))
    if s is None or s[0] <= 0:
        return [text, "—", "not measured", "—", "—"]
    med, lo, hi = s
    spread = max(med - lo, hi - med) / med
    value = f"{spread:.0%} ({cell(res)} {entry['unit']})"
    return [text, value, "met" if spread <= t.bound else "**not met**", "—", "—"]


def targets_table(data: Data) -> str:
    entries = {e["key"]: e for e in data["scenarios"]}
    scns = {k: scenario_of(e) for k, e in entries.items()}
    rows = []
    for t in TARGETS:
        entry = entries.get(t.scenario)
        if entry is None:
            continue
        if t.figure == "spread":
            rows.append(spread_row(t, entry, t.text(scns)))
            continue
        results = entry["results"]
        if t.against is not None:
            # ours against its own figure in another scenario of the run.
            other = entries.get(t.against, {}).get("results", {})
            ours_result, peer_result = results.get(t.ours), other.get(t.ours)
        elif t.peer is None:
            rows.append(absolute_row(t, entry, t.text(scns)))
            continue
        else:
            ours_result, peer_result = results.get(t.ours), results.get(t.peer)
        lower = t.lower_is_better(scns.get(t.scenario))
        ours, peer = ours_result, peer_result
        if t.figure == "p99":
            ours, peer = series_of(ours, "p99"), series_of(peer, "p99")
        r = ratio(ours, peer)
        row = [t.text(scns), ratio_text(r), verdict(r, t.bound, lower)]
        if lower:
            row += ["—", "—"]
        else:
            c = ratio(ours_result, peer_result, "per_cpu")
            row += [ratio_text(c), verdict(c, t.bound, lower)]
        rows.append(row)
    # 20,000 idle connections held by one process without errors.
    idle = entries.get("idle-20k")
    if idle is not None:
        for name in TIDINGS:
            res = idle["results"].get(name)
            if res is None:
                continue
            rows.append([*held_row(idle, name, res), "—", "—"])
    header = [
        "target",
        "ratio of medians [range], or median [range]",
        "verdict",
        "per server CPU-second",
        "verdict",
    ]
    return table(header, rows)


def held_row(idle: dict[str, Any], name: str, res: dict[str, Any]) -> list[str]:
    """The row of the "N idle connections, no errors" target."""
    want = idle["conns"]
    what = f"{want:,} idle connections, one {LABELS[name]} process, no errors"
    if res.get("error"):
        return [what, f"failed: {res['error']}", "**not met**"]
    info = res.get("info", {})
    held = info.get("conns")
    notes = res.get("notes", [])
    failures = [n for n in notes if "failed" in n]
    capped = [n for n in notes if n.startswith("held ")]
    if held is None:
        return [what, "—", "not measured"]
    if failures:
        return [what, f"{held:,} held; " + "; ".join(failures), "**not met**"]
    if held >= want:
        return [what, f"{held:,} held, no errors", "met"]
    if capped:
        limit = info.get("fd_limit")
        return [
            what,
            f"{held:,} held, no errors: the hard limit on open files here is "
            f"{limit:,}, descriptors included",
            "met up to the limit; 20,000 not measurable here",
        ]
    return [what, f"{held:,} held", "**not met**"]


def results_table(data: Data, key: str = "values") -> str:
    servers = ws_servers(data)
    rows = []
    for e in server_entries(data):
        if key == "per_cpu" and e["kind"] == "idle":
            continue
        unit = e["unit"]
        if key == "per_cpu":
            unit = unit.removesuffix("/s") + " per CPU-s"
        row = [e["title"], unit]
        row += [cell(e["results"].get(s), key) for s in servers]
        rows.append(row)
    return table(["scenario", "unit", *(LABELS[s] for s in servers)], rows)


def round_trip_table(data: Data) -> str | None:
    """p50 / p99 round trips of the echo rows at one message in flight, in ms."""
    servers = ws_servers(data)
    rows = []
    for e in server_entries(data):
        if e["kind"] != "echo" or e["depth"] != 1:
            continue
        row = [e["title"]]
        for name in servers:
            res = series_of(e["results"].get(name), "p50")
            p99 = series_of(e["results"].get(name), "p99")
            row.append("—" if res is None else f"{cell(res)} / {cell(p99)}")
        rows.append(row)
    if not rows:
        return None
    return table(["scenario", *(LABELS[s] for s in servers)], rows)


def split_cell(result: dict[str, Any] | None) -> str:
    """The server's user and system CPU microseconds per unit of ``values``
    (a message, a connection): medians over the measurements."""
    if not result or result.get("error"):
        return "—"
    values = result["values"]
    cpu = result.get("server_cpu", [])
    system = result.get("server_system", [])
    # A window without a reading of the server's CPU leaves the lists
    # unaligned: then no figure rather than a wrong one.
    if not values or not len(values) == len(cpu) == len(system):
        return "—"
    rows = zip(values, cpu, system, strict=True)
    windows = [(c - s, s, v) for v, c, s in rows if v > 0]
    if not windows:
        return "—"
    user_us = statistics.median(u / v * 1e6 for u, _, v in windows)
    system_us = statistics.median(s / v * 1e6 for _, s, v in windows)
    return f"{micros(user_us)} + {micros(system_us)}"


def micros(value: float) -> str:
    """µs to a tenth, below 1 to a hundredth: a hub's delivery to one
    subscriber can cost less than 0.1 µs."""
    return f"{value:.2f}" if value < 1 else f"{value:.1f}"


def split_table(data: Data) -> str | None:
    """User + system µs of server CPU per round trip at one message in
    flight, and per connection opened and closed."""
    servers = ws_servers(data)
    rows = []
    for e in server_entries(data):
        if (e["kind"], e["depth"]) == ("echo", 1) or e["kind"] == "handshake":
            rows.append(
                [e["title"], *(split_cell(e["results"].get(s)) for s in servers)]
            )
    if not rows:
        return None
    return table(["scenario", *(LABELS[s] for s in servers)], rows)


def hub_split_table(data: Data) -> str | None:
    """User + system µs of server CPU per delivery in the hub rows of one
    publication in flight, beside each hub's deliveries/s."""
    rows = []
    for e in hub_entries(data):
        if e["kind"] not in BURST_KINDS:
            continue
        row = [e["title"]]
        for name in HUB_SERVERS:
            res = e["results"].get(name)
            row.append("—" if res is None else split_cell(res))
        rows.append(row)
    if not rows:
        return None
    return table(["scenario", *(LABELS[s] for s in HUB_SERVERS)], rows)


def ratios_table(data: Data, key: str = "values") -> str:
    servers = data["meta"]["servers"]
    ours = [s for s in TIDINGS if s in servers]
    peers = [s for s in PEERS if s in servers]
    pairs = [(o, p) for o in ours for p in peers]
    if not pairs:
        return "(no peer ran: no ratios)"
    rows = []
    for e in server_entries(data):
        if key == "per_cpu" and e["kind"] == "idle":
            continue
        res = e["results"]
        rows.append(
            [e["title"]]
            + [ratio_text(ratio(res.get(o), res.get(p), key)) for o, p in pairs]
        )
    header = ["scenario"] + [f"{LABELS[o]} ÷ {p}" for o, p in pairs]
    return table(header, rows)


def hub_table(data: Data) -> str | None:
    """The hub scenarios: each hub server, and the tidings hub ÷ each peer,
    of the figures and of the figures per server CPU-second."""
    entries = hub_entries(data)
    if not entries:
        return None
    pairs = [(o, p) for o in HUB_TIDINGS for p in HUB_PEERS]
    rows = []
    for e in entries:
        res = e["results"]
        row = [e["title"], e["unit"]]
        row += [server_cell(data, e, name, "values") for name in HUB_SERVERS]
        row += [ratio_text(ratio(res.get(o), res.get(p))) for o, p in pairs]
        if e["kind"] in MEMORY_KINDS:
            row += ["—" for _ in pairs]
        else:
            row += [
                ratio_text(ratio(res.get(o), res.get(p), "per_cpu")) for o, p in pairs
            ]
        rows.append(row)
    header = ["scenario", "unit", *(LABELS[s] for s in HUB_SERVERS)]
    header += [f"{LABELS[o]} ÷ {LABELS[p]}" for o, p in pairs]
    header += [f"same, per server CPU-s: {LABELS[o]} ÷ {LABELS[p]}" for o, p in pairs]
    return table(header, rows)


def nodes_table(data: Data) -> str | None:
    """The "many nodes" scenarios: one tidings hub node, then the hubs of
    several nodes on Redis; tidings ÷ each peer on Redis (python-socketio,
    Node's Socket.IO), of the figures and per server CPU-second; and the
    tidings hub's many nodes ÷ its one. For latency the ratios are of the
    p99s (below 1x: quicker)."""
    entries = node_entries(data)
    if not entries:
        return None
    ours, one = "tidings-hub-redis", "tidings-hub"
    peers = [s for s in REDIS_SERVERS if s != ours]
    rows = []
    for e in entries:
        res = e["results"]
        row = [e["title"], e["unit"]]
        row += [server_cell(data, e, name, "values") for name in NODE_SERVERS]
        for peer in peers:
            row.append(ratio_text(ratio(res.get(ours), res.get(peer))))
            if e["kind"] == "hub-latency":
                row.append("—")
            else:
                row.append(ratio_text(ratio(res.get(ours), res.get(peer), "per_cpu")))
        row.append(ratio_text(ratio(res.get(ours), res.get(one))))
        rows.append(row)
    header = ["scenario", "unit", *(NODE_LABELS[s] for s in NODE_SERVERS)]
    for peer in peers:
        header += [f"{LABELS[ours]} ÷ {LABELS[peer]}", "same, per server CPU-s"]
    header.append(f"tidings hub: {NODES} nodes ÷ 1 node")
    return table(header, rows)


def latency_table(data: Data) -> str | None:
    """What stands behind each latency figure: the load held, what was
    missing, and where the CPU went."""
    rows = []
    for e in node_entries(data):
        if e["kind"] != "hub-latency":
            continue
        for name in NODE_SERVERS:
            res = e["results"].get(name)
            if res is None or res.get("error") or not res.get("values"):
                continue
            series = res.get("series", {})
            info = res.get("info", {})

            def med(key: str, series: dict[str, list[float]] = series) -> str:
                value = median_of(series.get(key, []))
                return "—" if value is None else number(value)

            missing = series.get("missing", [])
            rows.append(
                [
                    e["title"],
                    NODE_LABELS[name],
                    med("p50") + (" †" if info.get("p50_lower_bound") else ""),
                    number(statistics.median(res["values"]))
                    + (" †" if info.get("p99_lower_bound") else ""),
                    med("p999"),
                    med("max"),
                    f"{med('read_p50')} / {med('read_p99')}",
                    med("publications/s"),
                    med("deliveries/s"),
                    "—" if not missing else f"{max(missing):.1%}",
                    med("send_late_p99"),
                    pct(median_of(res.get("client_cpu", []))),
                    pct(median_of(res.get("server_cpu", []))),
                ]
            )
    if not rows:
        return None
    header = [
        "scenario",
        "server",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "read by the load client, p50 / p99 ms",
        "publications/s sent",
        "deliveries/s",
        "missing at drain end (max)",
        "publisher late p99 ms",
        "load client CPU",
        "server CPU",
    ]
    return table(header, rows)


def cpu_table(data: Data) -> tuple[str, list[str]]:
    """CPU shares per step, and the steps where the load client saturated."""
    rows = []
    saturated = []
    for e in data["scenarios"]:
        for name, res in e["results"].items():
            if res.get("error") or not res.get("client_cpu"):
                continue
            client = median_of(res["client_cpu"])
            server = median_of(res["server_cpu"])
            foreign = max(res["foreign"]) if res.get("foreign") else None
            flag = client is not None and client >= SATURATED
            if flag:
                saturated.append(f"{e['title']} against {LABELS[name]} ({client:.0%})")
            rows.append(
                [
                    e["title"],
                    LABELS[name],
                    pct(client) + (" ⚠ saturated" if flag else ""),
                    pct(server),
                    pct(foreign),
                ]
            )
    header = [
        "scenario",
        "server (client row: client)",
        "load client CPU",
        "server CPU",
        "other processes (max)",
    ]
    return table(header, rows), saturated


def client_table(data: Data) -> str | None:
    entries = [e for e in data["scenarios"] if e["kind"] == "client"]
    if not entries:
        return None
    rows = []
    for e in entries:
        res = e["results"]
        base = res.get("tidings-cb")
        for name in data["meta"]["clients"]:
            if name not in res:
                continue
            r = res[name]
            rows.append(
                [
                    e["title"],
                    LABELS[name],
                    cell(r),
                    pct(median_of(r.get("client_cpu", []))),
                    cell(r, "per_cpu"),
                    ratio_text(ratio(base, r)) if name != "tidings-cb" else "1.00x",
                    ratio_text(ratio(base, r, "per_cpu"))
                    if name != "tidings-cb"
                    else "1.00x",
                ]
            )
    return table(
        [
            "scenario",
            "client",
            "msg/s",
            "client CPU",
            "msg per client CPU-s",
            "tidings (callback) ÷ this",
            "same, per CPU-s",
        ],
        rows,
    )


def setup_section(data: Data) -> str:
    meta = data["meta"]
    m = meta["machine"]
    v = meta["versions"]
    lines = [
        f"- CPU: {m['cpu']}, {m['cores']} cores; memory {m['memory']}; {m['kernel']}",
        f"- Python: {m['python']}",
        "- versions: " + ", ".join(f"{k} {v[k]}" for k in sorted(v)),
    ]
    if meta.get("git"):
        lines.append(f"- tidings source: commit {meta['git']}")
    cores = {
        res["info"]["core"]
        for e in data["scenarios"]
        for res in e["results"].values()
        if "core" in res.get("info", {})
    }
    if cores:
        lines.append("- tidings protocol core: " + ", ".join(sorted(cores)))
    if meta["server_cpu"] is not None:
        lines.append(
            f"- each server runs alone in its own process pinned to core "
            f"{meta['server_cpu']}; the load client runs pinned to core "
            f"{meta['client_cpu']} (sched_setaffinity, as `taskset -c`)"
        )
    else:
        lines.append("- processes not pinned (fewer than two usable cores)")
    on_redis = {
        name
        for e in node_entries(data)
        for name, res in e["results"].items()
        if name in REDIS_SERVERS and not res.get("error")
    }
    if on_redis:
        redis = next(
            (
                res["info"]["redis"]
                for e in node_entries(data)
                for res in e["results"].values()
                if "redis" in res.get("info", {})
            ),
            "?",
        )
        where = (
            f"all {NODES} node processes and redis-server pinned to core "
            f"{meta['server_cpu']}, so that they share one core, and the load "
            f"client to core {meta['client_cpu']}; the single tidings hub node "
            f"of those rows alone on core {meta['server_cpu']}, as everywhere"
            if meta["server_cpu"] is not None
            else "nothing pinned"
        )
        lines.append(
            f"- many nodes on Redis: each hub is {NODES} server processes (one "
            f"node each, the clients spread evenly over them) and one redis-server "
            f"{redis}, started by the runner for the step on a free loopback "
            f'port (`--save "" --appendonly no`, default output buffer limits, '
            f"a temporary directory) and stopped after; {where}. The same "
            "placement for both hubs. Server CPU there is the sum over the nodes "
            "and Redis"
        )
    if meta.get("nice"):
        lines.append(f"- servers and load client ran at nice {meta['nice']:+d}")
    loops: dict[str, str] = {}
    bcast: dict[str, str] = {}
    hubs: dict[str, str] = {}
    client_loop = None
    for e in data["scenarios"]:
        for name, res in e["results"].items():
            info = res.get("info", {})
            if "loop" in info and e["kind"] != "client":
                loops.setdefault(name, info["loop"])
            if "broadcast" in info:
                bcast.setdefault(name, info["broadcast"])
            if "hub" in info:
                hubs.setdefault(name, info["hub"])
            client_loop = client_loop or info.get("client_loop")
    if loops:
        lines.append(
            "- event loop: "
            + ", ".join(
                f"{LABELS[k]} on {loops[k]}" for k in meta["servers"] if k in loops
            )
            + f"; load client on {client_loop or '?'}"
        )
    if server_entries(data):
        lines.append(
            "- every WebSocket server: compression off, keepalive pings off, 16 MiB "
            "message limit, listen backlog 1024"
        )
        lines.append(
            "- load client (the same for every server): `benchmarks.harness.loadgen`, "
            "raw sockets on uvloop; each message it sends is one frame masked once "
            "at start, written `k` at a time; replies are counted from the byte "
            "count and compared in place with the expected bytes; several messages "
            "in flight per connection (see Scenarios); connections spread over "
            "127.0.0.1-8 as source addresses"
        )
    if hubs:
        lines += [
            f"- hub server {LABELS[k]}: {hubs[k]}" for k in meta["servers"] if k in hubs
        ]
        lines.append(
            "- hub servers: no compression, keepalive pings every 900 s (after "
            "any run), listen backlog 1024; load client: the same raw client, "
            "each connection subscribed before the publisher starts (tidings: "
            "`connect`, then `subscribe`, each awaiting its reply; socket.io: "
            "open packet, `40`, then `join` with an ack); every frame is parsed, "
            "and a data frame holding the 100-byte payload counts as a delivery; "
            "publications are 100 letters and digits, a JSON string"
        )
    if bcast:
        lines.append(
            "- broadcast: "
            + "; ".join(
                f"{LABELS[k]}: {bcast[k]}" for k in meta["servers"] if k in bcast
            )
        )
    lines.append(
        f"- each figure: {meta['repeat']} measurements of {meta['duration']:g} s after "
        f"{meta['warmup']:g} s of warm-up, one server process per scenario; memory: "
        f"{meta.get('memory_repeat', meta['repeat'])} server process(es) per server"
    )
    return "\n".join(lines)


def scenario_list(data: Data) -> str:
    lines = []
    for e in data["scenarios"]:
        lines.append(f"- **{e['title']}** ({e['unit']}): {e['detail']}")
    return "\n".join(lines)


def notes_list(data: Data) -> str:
    """Each step's notes; those that many steps share are counted once."""
    by_text: dict[str, list[str]] = {}
    busy: list[str] = []
    for e in data["scenarios"]:
        for name, res in e["results"].items():
            where = f"{e['title']} · {LABELS[name]}"
            notes = ([f"error: {res['error']}"] if res.get("error") else []) + res.get(
                "notes", []
            )
            for note in notes:
                if note.startswith("other processes kept a core"):
                    busy.append(note.split()[-4])
                    continue
                by_text.setdefault(note, [])
                if where not in by_text[note]:
                    by_text[note].append(where)
    lines = []
    steps = sum(len(e["results"]) for e in data["scenarios"])
    if busy:
        lines.append(
            f"- {len(busy)} of {steps} steps started while other processes kept "
            f"a core busy (up to {max(busy, key=lambda b: int(b.rstrip('%')))}) "
            "after the wait allowed for them"
        )
    for note, wheres in by_text.items():
        if len(wheres) > 3:
            lines.append(f"- {note}: in {len(wheres)} of {steps} steps")
        else:
            lines += [f"- {where}: {note}" for where in wheres]
    return "\n".join(lines) or "- none"


def kept_notes(old: str) -> str:
    start, end = old.find(NOTES_START), old.find(NOTES_END)
    if start < 0 or end < start:
        return ""
    return old[start + len(NOTES_START) : end].strip("\n")


def render(
    data: Data, charts: Sequence[Path], base_dir: Path, notes_from: str = ""
) -> str:
    """The whole report; image links are relative to ``base_dir``."""
    meta = data["meta"]
    cpu, saturated = cpu_table(data)
    parts = [
        "# Performance",
        "",
        "<!-- Written by `python -m benchmarks --docs ...`: edit only between the "
        "notes markers, which a new run keeps. -->",
        "",
        f"Run {meta['started']}, {meta['seconds']:.0f} s"
        + (" — **smoke run: the figures mean nothing**" if meta["smoke"] else "")
        + ". The command:",
        "",
        "```sh",
        meta["command"],
        "```",
        "",
        "Figures are medians of the repeated measurements, with their range as "
        "[min-max]; ratios compare medians from this same run, with the widest "
        "range the measurements allow. Above 1x tidings is faster (for memory: "
        "below 1x it uses less; for latency: below 1x it is quicker). Each row "
        "names what was in flight: messages per connection, broadcasts or "
        "publications in flight, or the fixed rate of the latency rows.",
        "",
        NOTES_START,
        kept_notes(notes_from),
        NOTES_END,
        "",
        "## Targets",
        "",
        targets_table(data),
        "",
    ]
    if server_entries(data):
        parts += [
            "## Results",
            "",
            results_table(data),
            "",
            "## Ratios",
            "",
            ratios_table(data),
            "",
        ]
        trips = round_trip_table(data)
        if trips is not None:
            parts += [
                "## Round trips",
                "",
                "Round trips at one message in flight, as `tidings bench` "
                "timed them (from just before the write of a message to the "
                "callback that received its echo), in ms: p50 / p99 [min-max "
                "over the measurements].",
                "",
                trips,
                "",
            ]
        parts += [
            "## Per CPU-second",
            "",
            "The same measurements divided by the CPU time the server used: its "
            "efficiency. When other processes take CPU from the server, or the "
            "server is not saturated, this is steadier than the throughput; it "
            "says nothing of latency or of what one core can reach.",
            "",
            results_table(data, "per_cpu"),
            "",
            ratios_table(data, "per_cpu"),
            "",
        ]
    split = split_table(data)
    if split is not None:
        parts += [
            "## User space and kernel",
            "",
            "Server CPU per round trip (per connection opened and closed in "
            "the handshake row), in µs: user + system time, as `/proc` counts "
            "them, medians of the measurements. At one message in flight a "
            "server makes one read and one write system call per message "
            "(`strace -c`), so the system part is the kernel's work for any "
            "server: no code of a server's own can go below it, and it bounds "
            "the ratio between two servers whatever their own code costs.",
            "",
            split,
            "",
        ]
    hub = hub_table(data)
    if hub is not None:
        parts += [
            "## Hub",
            "",
            "The tidings hub (channels, history, recovery: `tidings serve`), "
            "python-socketio, Bun's `server.publish` (uWebSockets) and Node's "
            "Socket.IO, each as its own server process, driven by the same "
            "load client: subscribers of one channel (socket.io: one room), one of "
            "them publishing, or the server publishing at its trigger, or a back "
            "end through `POST /api/publish` (benchmarks/README.md says how each "
            "peer does it). Per server CPU-second: the figures divided by the "
            "CPU time the server used.",
            "",
            hub,
            "",
        ]
        split = hub_split_table(data)
        if split is not None:
            parts += [
                "Server CPU per delivery in the rows of one publication in "
                "flight, in µs: user + system time of the server's process, "
                "as `/proc/PID/stat` counts them over each measurement, "
                "divided by the deliveries counted at the clients; medians "
                "of the measurements. The system part is the kernel's: the "
                "writes, and the loopback TCP they start.",
                "",
                split,
                "",
            ]
    nodes = nodes_table(data)
    if nodes is not None:
        parts += ["## Many nodes on Redis", "", NODES_TEXT, "", nodes, ""]
        detail = latency_table(data)
        if detail is not None:
            parts += [LATENCY_TEXT, "", detail, ""]
    clients = client_table(data)
    if clients is not None:
        server = LABELS.get(meta.get("client_server", ""), meta.get("client_server"))
        parts += [
            "## Clients",
            "",
            f"Each library's client against the same server ({server}); here the "
            "client is what is measured, so it should saturate its core.",
            "",
            clients,
            "",
        ]
    parts += [
        "## Load client and CPU",
        "",
        "Where the load client saturates a core, a faster server cannot show its "
        "lead: those figures are a floor for the server, and the ratios against "
        "it are squeezed towards 1.",
        "",
    ]
    if saturated:
        parts += [
            f"The load client used {SATURATED:.0%} or more of its core in: "
            + "; ".join(saturated)
            + ".",
            "",
        ]
    else:
        parts += ["The load client never used 90 % or more of its core.", ""]
    parts += [cpu, ""]
    if charts:
        parts += ["## Charts", ""]
        for chart in charts:
            rel = os.path.relpath(chart, base_dir)
            parts += [f"![{chart.stem}]({rel})", ""]
    parts += [
        "## How to run",
        "",
        "```sh",
        "python -m benchmarks                  # everything",
        "python -m benchmarks --docs docs/performance.md   # and rewrite this page",
        "python -m benchmarks --smoke          # seconds, tidings only: it works",
        "python -m benchmarks --servers tidings-cb,picows --scenarios echo-100x32-k1",
        "python -m benchmarks --scenarios hub-1k-k128,hub-10k-k32,hub-idle  # the hub",
        "python -m benchmarks --scenarios nodes-1k-k128,nodes-latency-1k  # Redis",
        "```",
        "",
        "Run it from the repository root with the project's interpreter "
        "(`.venv/bin/python`); the harness is `benchmarks/harness`, never "
        "installed with tidings (`benchmarks/README.md`). "
        "The first full run creates `.bench/venv` (websockets, aiohttp, picows, "
        "python-socketio, uvicorn, redis-py, uvloop, matplotlib, and tidings "
        "itself, editable); tidings never "
        "depends on them. Results go to `benchmarks/` (`results.json`, "
        "`report.md`, the PNGs); the servers' and load clients' stderr to "
        "`.bench/logs/children.log`. A full run takes about half an hour on "
        "2 cores (the hub rows about 13 minutes of it, the many-node rows "
        "about 3). Bun and Node's ws and Socket.IO come from npm, pinned in "
        "`benchmarks/peers` and installed there by `npm ci` on first use: they "
        "need `node` and `npm`. "
        "The many-node rows need `redis-server` (on PATH, or "
        "`--redis-server PATH`): the runner starts one for each step. `--help` "
        "lists the options.",
        "",
        "## Scenarios",
        "",
        scenario_list(data),
        "",
        "## Setup",
        "",
        setup_section(data),
        "",
        "## Notes from the run",
        "",
        notes_list(data),
        "",
    ]
    return "\n".join(parts)


def summary(data: Data) -> str:
    """What the run prints at the end: the targets and the results."""
    parts = ["", "Targets", "", targets_table(data), ""]
    if server_entries(data):
        parts += ["Results (median [min-max])", "", results_table(data), ""]
    hub = hub_table(data)
    if hub is not None:
        parts += ["Hub (median [min-max])", "", hub, ""]
        split = hub_split_table(data)
        if split is not None:
            parts += ["Hub: server µs per delivery, user + system", "", split, ""]
    nodes = nodes_table(data)
    if nodes is not None:
        parts += ["Many nodes on Redis (median [min-max])", "", nodes, ""]
        detail = latency_table(data)
        if detail is not None:
            parts += [detail, ""]
    return "\n".join(parts)
