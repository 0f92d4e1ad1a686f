"""What the benchmark measures: scenarios, their parameters, and the targets."""

from __future__ import annotations

from dataclasses import dataclass, replace

#: WebSocket servers in report order; the first two are tidings.
WS_SERVERS = ("tidings-cb", "tidings-async", "websockets", "aiohttp", "picows")
TIDINGS = ("tidings-cb", "tidings-async")
PEERS = ("websockets", "aiohttp", "picows")

#: Hub servers (channels over WebSocket): the tidings hub, then its peers.
HUB_SERVERS = ("tidings-hub", "socketio")
HUB_TIDINGS = ("tidings-hub",)
HUB_PEERS = ("socketio",)

#: Every server, in report order.
SERVERS = WS_SERVERS + HUB_SERVERS

#: Clients compared in the client-side scenario, in report order.
CLIENTS = ("raw", "tidings-cb", "tidings", "websockets", "aiohttp", "picows")

#: What each server or client needs importable, beyond the standard library.
NEEDS: dict[str, tuple[str, ...]] = {
    "tidings-cb": ("tidings",),
    "tidings-async": ("tidings",),
    "tidings-hub": ("tidings", "jwt"),
    "tidings": ("tidings",),
    "raw": ("asyncio",),
    "websockets": ("websockets",),
    "aiohttp": ("aiohttp",),
    "picows": ("picows",),
    "socketio": ("socketio", "uvicorn"),
}

LABELS = {
    "tidings-cb": "tidings (callback)",
    "tidings-async": "tidings (async)",
    "tidings": "tidings (async)",
    "raw": "raw (bench client)",
    "websockets": "websockets",
    "aiohttp": "aiohttp",
    "picows": "picows",
    "tidings-hub": "tidings hub",
    "socketio": "python-socketio",
}

#: The channel (tidings hub) or room (socket.io) of the hub scenarios.
HUB_CHANNEL = "bench:room"
HUB_ROOM = "bench"


@dataclass(frozen=True)
class Scenario:
    """One row of the report.

    ``kind`` is the load client's mode (``echo``, ``broadcast``,
    ``handshake``, ``client``, ``hub``) or ``idle`` / ``hub-idle`` (memory,
    measured by the runner). ``depth`` is messages in flight per connection
    (echo), broadcasts or publications in flight (broadcast, hub),
    connections opened at once (handshake, idle, hub-idle).
    """

    key: str
    kind: str
    unit: str
    conns: int = 1
    size: int = 32
    depth: int = 1
    servers: tuple[str, ...] = WS_SERVERS
    lower_is_better: bool = False

    @property
    def title(self) -> str:
        conns = f"{self.conns:,} conn{'s' if self.conns != 1 else ''}"
        if self.kind == "echo":
            return f"echo, {conns} x {size_text(self.size)}"
        if self.kind == "broadcast":
            return f"broadcast {size_text(self.size)} to {self.conns:,} clients"
        if self.kind == "handshake":
            return "new connections (open + close)"
        if self.kind == "idle":
            return f"idle memory, {self.conns:,} conns"
        if self.kind == "client":
            return f"client echo, {conns} x {size_text(self.size)}"
        if self.kind == "hub":
            return (
                f"hub: {size_text(self.size)} publications to "
                f"{self.conns:,} subscribers"
            )
        if self.kind == "hub-idle":
            return f"hub: idle memory, {self.conns:,} subscribed clients"
        return self.key

    @property
    def detail(self) -> str:
        """How the load is applied, for the report."""
        if self.kind in ("echo", "client"):
            return f"{self.depth} in flight per connection"
        if self.kind == "broadcast":
            return f"{self.depth} broadcasts in flight, deliveries counted at clients"
        if self.kind == "handshake":
            return f"{self.depth} at a time; each: TCP, HTTP upgrade, close frames"
        if self.kind == "idle":
            return "server RSS growth ÷ connections, handshakes done"
        if self.kind == "hub":
            return (
                f"one channel (socket.io: room); one subscriber publishes, "
                f"{self.depth} publications in flight; deliveries (frames holding "
                "the payload) counted at the clients, the publisher's own included"
            )
        if self.kind == "hub-idle":
            return (
                "server RSS growth ÷ clients, each connected and subscribed to "
                "one channel (socket.io: joined to one room)"
            )
        return ""


def size_text(size: int) -> str:
    for unit, factor in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


FULL: tuple[Scenario, ...] = (
    Scenario("echo-1x32", "echo", "msg/s", conns=1, size=32, depth=64),
    Scenario("echo-1x1k", "echo", "msg/s", conns=1, size=1024, depth=64),
    Scenario("echo-1x64k", "echo", "msg/s", conns=1, size=64 * 1024, depth=8),
    Scenario("echo-1x1m", "echo", "msg/s", conns=1, size=1 << 20, depth=2),
    Scenario("echo-100x32", "echo", "msg/s", conns=100, size=32, depth=8),
    Scenario(
        "broadcast-1k", "broadcast", "deliveries/s", conns=1000, size=100, depth=128
    ),
    Scenario(
        "broadcast-10k", "broadcast", "deliveries/s", conns=10000, size=100, depth=32
    ),
    Scenario("handshake", "handshake", "conns/s", depth=64),
    Scenario(
        "idle-5k", "idle", "KiB/conn", conns=5000, depth=200, lower_is_better=True
    ),
    Scenario(
        "idle-20k", "idle", "KiB/conn", conns=20000, depth=200, lower_is_better=True
    ),
    Scenario("client-1x32", "client", "msg/s", conns=1, size=32, depth=64),
    Scenario(
        "hub-1k",
        "hub",
        "deliveries/s",
        conns=1000,
        size=100,
        depth=128,
        servers=HUB_SERVERS,
    ),
    Scenario(
        "hub-10k",
        "hub",
        "deliveries/s",
        conns=10000,
        size=100,
        depth=32,
        servers=HUB_SERVERS,
    ),
    Scenario(
        "hub-idle",
        "hub-idle",
        "KiB/conn",
        conns=5000,
        depth=200,
        servers=HUB_SERVERS,
        lower_is_better=True,
    ),
)

#: Kinds measured by the runner from the server's memory, not by a load.
MEMORY_KINDS = ("idle", "hub-idle")


def smoke(scenarios: tuple[Scenario, ...] = FULL) -> tuple[Scenario, ...]:
    """The same rows, small enough to run in seconds."""
    small = {
        "broadcast-1k": 50,
        "broadcast-10k": 200,
        "idle-5k": 100,
        "idle-20k": 400,
        "hub-1k": 50,
        "hub-10k": 200,
        "hub-idle": 100,
    }
    out = []
    for s in scenarios:
        if s.key in small:
            out.append(replace(s, conns=small[s.key], depth=min(s.depth, 32)))
        elif s.kind == "handshake":
            out.append(replace(s, depth=8))
        else:
            out.append(s)
    return tuple(out)


@dataclass(frozen=True)
class Target:
    """``ours`` ÷ ``peer`` in ``scenario`` must be at least (or, for memory,
    at most) ``bound``; without a ``peer``, ``ours``' own figure must."""

    scenario: str
    ours: str
    peer: str | None
    bound: float

    def text(self, scenarios: dict[str, Scenario]) -> str:
        s = scenarios.get(self.scenario)
        title = s.title if s else self.scenario
        sign = "≤" if s is not None and s.lower_is_better else "≥"
        if self.peer is None:
            unit = f" {s.unit}" if s is not None else ""
            return f"{title}: {LABELS[self.ours]} {sign} {self.bound:g}{unit}"
        return (
            f"{title}: {LABELS[self.ours]} {sign} {self.bound:g}x {LABELS[self.peer]}"
        )


TARGETS: tuple[Target, ...] = (
    Target("echo-100x32", "tidings-cb", "picows", 1.0),
    Target("echo-100x32", "tidings-async", "websockets", 1.5),
    Target("echo-100x32", "tidings-async", "aiohttp", 1.0),
    Target("echo-1x1m", "tidings-cb", "picows", 1.0),
    Target("broadcast-1k", "tidings-cb", "websockets", 3.0),
    Target("idle-20k", "tidings-cb", "websockets", 0.6),
    Target("idle-20k", "tidings-async", "websockets", 0.6),
    Target("hub-1k", "tidings-hub", "socketio", 5.0),
    Target("hub-10k", "tidings-hub", "socketio", 5.0),
    Target("hub-idle", "tidings-hub", None, 16.0),
)
