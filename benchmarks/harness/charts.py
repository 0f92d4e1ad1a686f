"""Bar charts of ``results.json`` (matplotlib, Agg backend).

``python -m benchmarks.harness.charts RESULTS.json OUT_DIR`` writes
``throughput.png``, ``per-cpu.png``, ``memory.png``, ``clients.png``,
``hub.png`` and ``nodes.png`` (those with data) and prints their paths.
Each bar is a median; its whisker spans min-max (latency: the p99).
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .report import HUB_KINDS, number, stats
from .scenarios import (
    HUB_SERVERS,
    LABELS,
    LATENCY_KINDS,
    NODE_LABELS,
    NODE_SERVERS,
)

COLORS = {
    "tidings-cb": "#1f6fb4",
    "tidings-async": "#6aaee0",
    "tidings": "#6aaee0",
    "raw": "#888888",
    "websockets": "#e08a2c",
    "aiohttp": "#5a9e4b",
    "picows": "#b0413e",
    "tidings-hub": "#1f6fb4",
    "socketio": "#7a5195",
    "tidings-hub-redis": "#6aaee0",
    "socketio-redis": "#b48ec8",
    "node-ws": "#3c8d2f",
    "bun": "#f4a261",
    "bun-hub": "#f4a261",
    "node-socketio": "#3c8d2f",
    "node-socketio-redis": "#8fd17f",
}


def draw(
    plt: Any,
    entries: Sequence[dict[str, Any]],
    names: Sequence[str],
    path: Path,
    title: str,
    *,
    compact: Any,
    key: str = "values",
    labels: dict[str, str] | None = None,
) -> Path | None:
    entries = [e for e in entries if e["results"]]
    if not entries:
        return None
    cols = min(3, len(entries))
    rows = math.ceil(len(entries) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.6 * cols, 3.3 * rows), squeeze=False
    )
    for ax in axes.flat[len(entries) :]:
        ax.set_visible(False)
    for ax, e in zip(axes.flat, entries, strict=False):
        shown = [n for n in names if n in e["results"]]
        meds, los, his = [], [], []
        for n in shown:
            s = stats(e["results"][n].get(key, [])) or (0.0, 0.0, 0.0)
            meds.append(s[0])
            los.append(s[0] - s[1])
            his.append(s[2] - s[0])
        xs = range(len(shown))
        ax.bar(
            xs,
            meds,
            yerr=[los, his],
            capsize=3,
            color=[COLORS.get(n, "#999999") for n in shown],
        )
        for x, m, hi in zip(xs, meds, his, strict=True):
            if m > 0:
                ax.annotate(
                    number(m),
                    (x, m + hi),
                    textcoords="offset points",
                    xytext=(0, 3),
                    ha="center",
                    fontsize=7,
                )
        ax.set_xticks(list(xs))
        tick_names = labels or LABELS
        ax.set_xticklabels(
            [tick_names[n].replace(" (", "\n(").replace(", ", ",\n") for n in shown],
            fontsize=7,
        )
        better = "lower is better" if e["lower_is_better"] else "higher is better"
        unit = "ms, p99" if e["kind"] in LATENCY_KINDS else e["unit"]
        if key == "per_cpu":
            unit = unit.removesuffix("/s") + " per CPU-second of the server"
        ax.set_title(f"{e['title']}\n{unit}, {better}", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.yaxis.set_major_formatter(compact)
        ax.margins(y=0.15)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print(
            "usage: python -m benchmarks.harness.charts RESULTS.json OUT_DIR",
            file=sys.stderr,
        )
        return 2
    data = json.loads(Path(args[0]).read_text())
    out = Path(args[1])
    out.mkdir(parents=True, exist_ok=True)
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")
    ticker = importlib.import_module("matplotlib.ticker")
    compact = ticker.FuncFormatter(lambda value, _pos: number(value) if value else "0")
    meta = data["meta"]
    servers, clients = meta["servers"], meta["clients"]
    scn = data["scenarios"]
    when = meta["started"] + (" (smoke run)" if meta["smoke"] else "")
    made = [
        draw(
            plt,
            [e for e in scn if e["kind"] in ("echo", "broadcast", "handshake")],
            servers,
            out / "throughput.png",
            f"tidings benchmark: throughput\n{when}",
            compact=compact,
        ),
        draw(
            plt,
            [e for e in scn if e["kind"] in ("echo", "broadcast", "handshake")],
            servers,
            out / "per-cpu.png",
            f"tidings benchmark: work per CPU-second of the server\n{when}",
            compact=compact,
            key="per_cpu",
        ),
        draw(
            plt,
            [e for e in scn if e["kind"] == "idle"],
            servers,
            out / "memory.png",
            f"tidings benchmark: idle memory per connection\n{when}",
            compact=compact,
        ),
        draw(
            plt,
            [e for e in scn if e["kind"] == "client"],
            clients,
            out / "clients.png",
            "tidings benchmark: clients against "
            f"{LABELS.get(meta['client_server'], '?')}\n{when}",
            compact=compact,
        ),
        draw(
            plt,
            [e for e in scn if e["kind"] in HUB_KINDS],
            [s for s in HUB_SERVERS if s in servers],
            out / "hub.png",
            f"tidings benchmark: hub against python-socketio\n{when}",
            compact=compact,
        ),
        draw(
            plt,
            [e for e in scn if e["kind"] in ("hub-nodes", "hub-latency")],
            [s for s in NODE_SERVERS if s in servers],
            out / "nodes.png",
            f"tidings benchmark: many nodes on Redis\n{when}",
            compact=compact,
            labels=NODE_LABELS,
        ),
    ]
    for path in made:
        if path is not None:
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
