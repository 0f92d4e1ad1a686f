"""What the benchmark measures: scenarios, their parameters, and the targets."""

from __future__ import annotations

from dataclasses import dataclass, replace

#: WebSocket servers in report order; the first two are tidings. Node's
#: ``ws`` and Bun's own server come from npm (:mod:`.peers`).
WS_SERVERS = (
    "tidings-cb",
    "tidings-async",
    "websockets",
    "aiohttp",
    "picows",
    "node-ws",
    "bun",
)
TIDINGS = ("tidings-cb", "tidings-async")
PEERS = ("websockets", "aiohttp", "picows", "node-ws", "bun")

#: Hub servers (channels over WebSocket): the tidings hub, then its peers:
#: python-socketio, Bun's ``server.publish`` and Node's Socket.IO (npm).
HUB_SERVERS = ("tidings-hub", "socketio", "bun-hub", "node-socketio")
HUB_TIDINGS = ("tidings-hub",)
HUB_PEERS = ("socketio", "bun-hub", "node-socketio")

#: Hub servers with an HTTP endpoint that publishes (``POST /api/publish``).
API_SERVERS = ("tidings-hub", "bun-hub", "node-socketio")

#: Servers from npm, run by Bun or Node.js (:mod:`.peers`), whatever the
#: Python environment holds.
NPM_SERVERS = ("node-ws", "bun", "bun-hub", "node-socketio", "node-socketio-redis")

#: Hub nodes per hub in the "many nodes" scenarios.
NODES = 3

#: Hubs of several nodes on one Redis (started by the runner): the tidings
#: hub on its Redis broker, python-socketio with its AsyncRedisManager.
REDIS_SERVERS = ("tidings-hub-redis", "socketio-redis", "node-socketio-redis")
REDIS_TIDINGS = ("tidings-hub-redis",)

#: The "many nodes" scenarios: one tidings hub node on the memory broker,
#: then the hubs of :data:`NODES` nodes on Redis.
NODE_SERVERS = ("tidings-hub", *REDIS_SERVERS)

#: Every server, in report order.
SERVERS = WS_SERVERS + HUB_SERVERS + REDIS_SERVERS

#: What each server is run as: (``benchmarks.harness.servers`` name, processes,
#: whether on Redis); the load client speaks that name's protocol.
PROCESSES: dict[str, tuple[str, int, bool]] = {
    "tidings-hub-redis": ("tidings-hub", NODES, True),
    "socketio-redis": ("socketio", NODES, True),
    "node-socketio-redis": ("node-socketio", NODES, True),
}

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
    "tidings-hub-redis": ("tidings", "jwt", "redis"),
    "socketio-redis": ("socketio", "uvicorn", "redis"),
    **dict.fromkeys(NPM_SERVERS, ()),
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
    "tidings-hub-redis": f"tidings hub, {NODES} nodes on Redis",
    "socketio-redis": f"python-socketio, {NODES} nodes on Redis",
    "node-ws": "Node ws",
    "bun": "Bun",
    "bun-hub": "Bun server.publish",
    "node-socketio": "Node Socket.IO",
    "node-socketio-redis": f"Node Socket.IO, {NODES} nodes on Redis",
}

#: Column names where one node is set beside many (the "many nodes" rows).
NODE_LABELS = {
    "tidings-hub": "tidings hub, 1 node (memory broker)",
    **{name: LABELS[name] for name in REDIS_SERVERS},
}

#: The channel (tidings hub) or room (socket.io) of the hub scenarios.
HUB_CHANNEL = "bench:room"
HUB_ROOM = "bench"


@dataclass(frozen=True)
class Scenario:
    """One row of the report.

    ``kind`` is the load client's mode (``echo``, ``broadcast``,
    ``handshake``, ``client``, ``hub``, ``hub-latency``, ``hub-burst``,
    ``hub-api``), ``hub-nodes`` (mode ``hub`` against hubs of several
    nodes), ``hub-rate`` (mode ``hub-latency`` against one node, in the
    hub's section) or ``idle`` / ``hub-idle`` / ``hub-memory`` (memory,
    measured by the runner; ``hub-memory`` after one publication).
    ``depth`` is messages in flight per connection (echo, client),
    broadcasts or publications in flight (broadcast, hub, hub-nodes,
    hub-burst, hub-api, hub-memory), connections opened at once
    (handshake, idle, hub-idle). ``hub-latency`` and ``hub-rate`` publish
    at a fixed ``rate`` (publications per second) instead, whatever is in
    flight.
    ``hub-burst`` has the server publish ``burst`` publications, one at a
    time, at each trigger; ``hub-api`` posts them to ``/api/publish``.
    """

    key: str
    kind: str
    unit: str
    conns: int = 1
    size: int = 32
    depth: int = 1
    servers: tuple[str, ...] = WS_SERVERS
    lower_is_better: bool = False
    rate: int = 0
    #: Hub rows: how many subscribers publish, in turn (``--publishers``).
    publishers: int = 1
    #: Measurements of this row (0: the run's ``--repeat``).
    repeat: int = 0
    #: hub-burst, hub-api: publications per burst (``--burst``).
    burst: int = 0
    #: Hub rows: the clients offer permessage-deflate as browsers do
    #: (``--deflate``), and the servers agree and compress.
    deflate: bool = False

    @property
    def load(self) -> str:
        """How much is in flight, as every title states it."""
        by = f" from {self.publishers} publishers" if self.publishers > 1 else ""
        if self.kind in ("echo", "client"):
            return f"{self.depth} in flight per conn"
        if self.kind in ("broadcast", "hub", "hub-nodes"):
            return f"{self.depth} in flight{by}"
        if self.kind == "handshake":
            return f"{self.depth} at a time"
        if self.kind in LATENCY_KINDS:
            return f"{self.rate:,}/s{by}, open loop"
        if self.kind in BURST_KINDS:
            return f"{self.depth} in flight, bursts of {self.burst}"
        if self.kind == "hub-memory":
            return f"after {self.depth} publication, {self.depth} in flight"
        return ""

    @property
    def title(self) -> str:
        deflate = ", permessage-deflate as browsers offer it" if self.deflate else ""
        return self.plain_title + deflate

    @property
    def plain_title(self) -> str:
        conns = f"{self.conns:,} conn{'s' if self.conns != 1 else ''}"
        size = size_text(self.size)
        load = f", {self.load}" if self.load else ""
        if self.kind == "echo":
            return f"echo, {conns} x {size}{load}"
        if self.kind == "broadcast":
            return f"broadcast {size} to {self.conns:,} clients{load}"
        if self.kind == "handshake":
            return f"new connections (open + close){load}"
        if self.kind == "idle":
            return f"idle memory, {self.conns:,} conns"
        if self.kind == "client":
            return f"client echo, {conns} x {size}{load}"
        if self.kind == "hub":
            return f"hub: {size} publications to {self.conns:,} subscribers{load}"
        if self.kind == "hub-idle":
            return f"hub: idle memory, {self.conns:,} subscribed clients"
        if self.kind == "hub-memory":
            return f"hub: memory per subscribed client, {self.conns:,} clients{load}"
        if self.kind == "hub-nodes":
            return (
                f"many nodes: {size} publications to {self.conns:,} subscribers{load}"
            )
        if self.kind == "hub-latency":
            return (
                f"many nodes: latency, {size} publications to {self.conns:,} "
                f"subscribers{load}"
            )
        if self.kind == "hub-burst":
            return (
                f"hub: {size} publications to {self.conns:,} subscribers, "
                f"published in the server{load}"
            )
        if self.kind == "hub-api":
            return (
                f"hub: {size} publications to {self.conns:,} subscribers, "
                f"POST /api/publish{load}"
            )
        if self.kind == "hub-rate":
            return (
                f"hub: latency, {size} publications to {self.conns:,} subscribers{load}"
            )
        return self.key

    @property
    def who(self) -> str:
        """Who publishes, in the hub rows."""
        if self.publishers > 1:
            return f"{self.publishers} subscribers publish in turn, on different nodes"
        return "one subscriber publishes"

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
                f"one channel (socket.io: room); {self.who}, "
                f"{self.depth} publications in flight; deliveries (frames holding "
                "the payload) counted at the clients, the publisher's own included"
            )
        if self.kind == "hub-idle":
            return (
                "server RSS growth ÷ clients, each connected and subscribed to "
                "one channel (socket.io: joined to one room)"
            )
        if self.kind == "hub-memory":
            return (
                "server RSS growth ÷ clients, each connected, subscribed to one "
                "channel (socket.io: joined to one room) and having received "
                f"one {size_text(self.size)} publication from one of them, "
                "awaited at all"
                + (
                    f"; every client offers `{DEFLATE_OFFER}` (a browser's "
                    "offer), and the server agrees and compresses"
                    if self.deflate
                    else "; no compression offered"
                )
            )
        if self.kind == "hub-nodes":
            return (
                f"as the hub rows, {self.depth} publications in flight, against "
                f"one tidings hub node (memory broker) and against hubs of {NODES} "
                f"nodes on one Redis, the subscribers spread evenly over the nodes "
                "(connection i to node i mod "
                f"{NODES}); {self.who}"
            )
        if self.kind == "hub-burst":
            deflate = (
                f"; every client offers `{DEFLATE_OFFER}` (a browser's offer), "
                "the server agrees and compresses every publication, and the "
                "load client decompresses every message with zlib"
                if self.deflate
                else ""
            )
            return (
                "one channel (socket.io: room); a trigger from one subscriber "
                "(tidings: the rpc `burst`; socket.io: a `burst` event) makes "
                f"the server publish {self.burst} publications itself, one at "
                "a time, each awaited (tidings `await hub.publish(...)`, Bun "
                "`server.publish`, Node `io.to(room).emit`, python-socketio "
                "`await sio.emit`); the next trigger once every subscriber got "
                "every one; deliveries counted at the clients" + deflate
            )
        if self.kind == "hub-api":
            return (
                "one channel (socket.io: room); a back end posts each "
                "publication to /api/publish on one keep-alive connection, "
                "one at a time (each waiting for its response), in bursts of "
                f"{self.burst}, the next once every subscriber got every one; "
                "Bun and Node Socket.IO: an HTTP endpoint of the same server "
                "process that publishes (`server.publish`, `io.to(room).emit`) "
                "and then answers; deliveries counted at the clients"
            )
        if self.kind in LATENCY_KINDS:
            hubs = (
                "one node of each hub" if self.kind == "hub-rate" else "the same hubs"
            )
            return (
                f"{hubs}; {self.who}, {self.rate:,} publications/s in "
                "all, on a fixed schedule (open loop: not waiting for "
                "deliveries; a due one is skipped, and counted, only while a "
                "quarter second's worth are in flight), each carrying its "
                "sequence number and send time (wall clock, just before the "
                "write); latency: to when it reached each subscriber's socket, "
                "the publisher's own included (the kernel's receive timestamp, "
                "same clock, same machine); ms, p50 / p99 over every delivery "
                "of the publications sent in each measurement; a delivery "
                "missing when the drain ends counts as arriving then"
            )
        return ""


#: Kinds timed publication by publication: latency at a fixed rate.
LATENCY_KINDS = ("hub-latency", "hub-rate")

#: Kinds that publish in bursts, one publication in flight.
BURST_KINDS = ("hub-burst", "hub-api")

#: permessage-deflate as browsers offer it (the load client's ``--deflate``):
#: the server chooses whether to keep its compression context, and may ask
#: the client not to keep its own (RFC 7692).
DEFLATE_OFFER = "permessage-deflate; client_max_window_bits"

#: The hubs that agree to permessage-deflate in the deflate rows (servers'
#: ``--deflate``; the tidings hub always does, as ``tidings serve``).
DEFLATE_SERVERS = ("tidings-hub", "bun-hub", "node-socketio")


def size_text(size: int) -> str:
    for unit, factor in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


FULL: tuple[Scenario, ...] = (
    # One message in flight per connection first: how interactive clients
    # talk, and how the peers publish their own figures.
    Scenario("echo-100x32-k1", "echo", "msg/s", conns=100, size=32, depth=1),
    Scenario("echo-1x32-k1", "echo", "msg/s", conns=1, size=32, depth=1),
    Scenario("echo-1x1m-k1", "echo", "msg/s", conns=1, size=1 << 20, depth=1, repeat=5),
    Scenario("handshake-64", "handshake", "conns/s", depth=64),
    # Several in flight: what batching adds.
    Scenario("echo-100x32-k8", "echo", "msg/s", conns=100, size=32, depth=8),
    Scenario("echo-1x32-k64", "echo", "msg/s", conns=1, size=32, depth=64),
    Scenario("echo-1x1k-k64", "echo", "msg/s", conns=1, size=1024, depth=64),
    Scenario("echo-1x64k-k8", "echo", "msg/s", conns=1, size=64 * 1024, depth=8),
    Scenario("echo-1x1m-k2", "echo", "msg/s", conns=1, size=1 << 20, depth=2),
    Scenario(
        "broadcast-1k-k128",
        "broadcast",
        "deliveries/s",
        conns=1000,
        size=100,
        depth=128,
    ),
    Scenario(
        "broadcast-10k-k32",
        "broadcast",
        "deliveries/s",
        conns=10000,
        size=100,
        depth=32,
    ),
    Scenario(
        "idle-5k", "idle", "KiB/conn", conns=5000, depth=200, lower_is_better=True
    ),
    Scenario(
        "idle-20k", "idle", "KiB/conn", conns=20000, depth=200, lower_is_better=True
    ),
    Scenario("client-1x32-k64", "client", "msg/s", conns=1, size=32, depth=64),
    Scenario(
        "hub-1k-k128",
        "hub",
        "deliveries/s",
        conns=1000,
        size=100,
        depth=128,
        servers=HUB_SERVERS,
    ),
    Scenario(
        "hub-10k-k32",
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
    Scenario(
        "nodes-1k-k128",
        "hub-nodes",
        "deliveries/s",
        conns=1000,
        size=100,
        depth=128,
        servers=NODE_SERVERS,
    ),
    Scenario(
        "nodes-latency-1k",
        "hub-latency",
        "ms, p50 / p99",
        conns=1000,
        size=100,
        servers=NODE_SERVERS,
        lower_is_better=True,
        rate=1000,
    ),
    # Publications one at a time, each awaited, beside Bun and Node: from
    # inside the server, then from a back end by HTTP; the deliveries of a
    # burst are as many at 10,000 subscribers as at 1,000.
    *(
        Scenario(
            f"hub-{how}-{conns // 1000}k{'-1kib' if size > 100 else ''}-k1",
            f"hub-{how}",
            "deliveries/s",
            conns=conns,
            size=size,
            depth=1,
            burst=200_000 // conns,
            servers=HUB_SERVERS if how == "burst" else API_SERVERS,
        )
        for how in ("burst", "api")
        for conns in (1000, 10000)
        for size in (100, 1024)
    ),
    # permessage-deflate as browsers offer it, beside the same without.
    Scenario(
        "hub-burst-1k-deflate-k1",
        "hub-burst",
        "deliveries/s",
        conns=1000,
        size=100,
        depth=1,
        burst=200,
        servers=DEFLATE_SERVERS,
        deflate=True,
    ),
    *(
        Scenario(
            f"hub-mem-1k{'-deflate' if deflate else ''}-k1",
            "hub-memory",
            "KiB/conn",
            conns=1000,
            size=100,
            depth=1,
            servers=DEFLATE_SERVERS,
            lower_is_better=True,
            deflate=deflate,
        )
        for deflate in (False, True)
    ),
    # Publications one at a time, each awaited at every subscriber, on 3
    # nodes on one Redis.
    Scenario(
        "nodes-1k-k1",
        "hub-nodes",
        "deliveries/s",
        conns=1000,
        size=100,
        depth=1,
        servers=NODE_SERVERS,
    ),
    # Latency at a fixed rate, one node each: the tidings hub beside Bun
    # and Node's Socket.IO.
    *(
        Scenario(
            f"hub-rate-1k-{rate}",
            "hub-rate",
            "ms, p50 / p99",
            conns=1000,
            size=100,
            servers=("tidings-hub", "bun-hub", "node-socketio"),
            lower_is_better=True,
            rate=rate,
        )
        for rate in (100, 300, 500)
    ),
)

#: Kinds measured by the runner from the server's memory, not by a load.
MEMORY_KINDS = ("idle", "hub-idle", "hub-memory")


def smoke(scenarios: tuple[Scenario, ...] = FULL) -> tuple[Scenario, ...]:
    """The same rows, small enough to run in seconds."""
    small = {
        "broadcast-1k-k128": 50,
        "broadcast-10k-k32": 200,
        "idle-5k": 100,
        "idle-20k": 400,
        "hub-1k-k128": 50,
        "hub-10k-k32": 200,
        "hub-idle": 100,
        "nodes-1k-k128": 60,
        "nodes-1k-k1": 60,
        "nodes-latency-1k": 60,
    }
    out = []
    for s in scenarios:
        if s.kind in BURST_KINDS:
            out.append(replace(s, conns=s.conns // 50, burst=5))
        elif s.kind in ("hub-rate", "hub-memory"):
            out.append(replace(s, conns=60))
        elif s.kind == "hub-latency":
            out.append(replace(s, conns=small[s.key], rate=min(s.rate, 500)))
        elif s.key in small:
            out.append(replace(s, conns=small[s.key], depth=min(s.depth, 32)))
        elif s.kind == "handshake":
            out.append(replace(s, depth=8))
        else:
            out.append(s)
    return tuple(out)


@dataclass(frozen=True)
class Target:
    """``ours`` ÷ ``peer`` in ``scenario`` must be at least (or, for memory
    and latency, at most) ``bound``; without a ``peer``, ``ours``' own
    figure must. ``what`` and ``unit`` name that figure where the
    scenario's unit does not (latency: the p99, in ms).

    ``figure`` picks what is compared: the scenario's own figure
    (``values``), the p99 round trip of an echo row (``p99``, lower is
    better), or how steady ``ours`` was (``spread``: the farthest of its
    minimum and maximum from the median, as a fraction of the median).
    With ``against`` (another scenario's key), ``ours`` is held against
    its own figure in that scenario (say, with deflate against without)."""

    scenario: str
    ours: str
    peer: str | None
    bound: float
    what: str = ""
    unit: str | None = None
    figure: str = "values"
    against: str | None = None

    def lower_is_better(self, scenario: Scenario | None) -> bool:
        if self.figure != "values":
            return True
        return scenario is not None and scenario.lower_is_better

    def text(self, scenarios: dict[str, Scenario]) -> str:
        s = scenarios.get(self.scenario)
        title = s.title if s else self.scenario
        sign = "≤" if self.lower_is_better(s) else "≥"
        ours = LABELS[self.ours]
        if self.figure == "spread":
            reps = f" over {s.repeat} measurements" if s and s.repeat else ""
            return (
                f"{title}: {ours}, min and max within {self.bound:.0%} of the "
                f"median{reps}"
            )
        if self.against is not None:
            other = scenarios.get(self.against)
            return (
                f"{title}: {ours} {sign} {self.bound:g}x its own "
                f"{other.title if other else self.against}"
            )
        if self.figure == "p99":
            assert self.peer is not None
            return (
                f"{title}: {ours} p99 round trip {sign} {self.bound:g}x "
                f"{LABELS[self.peer]}'s"
            )
        if self.peer is None:
            unit = self.unit if self.unit is not None else s.unit if s else ""
            what = f" {self.what}" if self.what else ""
            return f"{title}: {ours}{what} {sign} {self.bound:g}" + (
                f" {unit}" if unit else ""
            )
        return f"{title}: {ours} {sign} {self.bound:g}x {LABELS[self.peer]}"


TARGETS: tuple[Target, ...] = (
    Target("echo-100x32-k1", "tidings-cb", "picows", 1.2),
    Target("echo-100x32-k1", "tidings-async", "aiohttp", 1.0),
    Target("echo-100x32-k1", "tidings-async", "websockets", 2.5),
    Target("echo-1x32-k1", "tidings-cb", "picows", 1.0),
    Target("echo-1x32-k1", "tidings-cb", "picows", 1.0, figure="p99"),
    Target("echo-1x1m-k1", "tidings-cb", "picows", 1.0),
    Target("echo-1x1m-k1", "tidings-cb", None, 0.15, figure="spread"),
    Target("handshake-64", "tidings-cb", "picows", 1.0),
    Target("echo-100x32-k8", "tidings-cb", "picows", 1.0),
    Target("echo-100x32-k8", "tidings-async", "websockets", 1.5),
    Target("echo-100x32-k8", "tidings-async", "aiohttp", 1.0),
    Target("echo-1x1m-k2", "tidings-cb", "picows", 1.0),
    Target("broadcast-1k-k128", "tidings-cb", "websockets", 3.0),
    Target("idle-20k", "tidings-cb", "websockets", 0.6),
    Target("idle-20k", "tidings-async", "websockets", 0.6),
    Target("hub-1k-k128", "tidings-hub", "socketio", 5.0),
    Target("hub-10k-k32", "tidings-hub", "socketio", 5.0),
    Target("hub-idle", "tidings-hub", None, 16.0),
    Target("nodes-1k-k128", "tidings-hub-redis", "socketio-redis", 5.0),
    Target("nodes-latency-1k", "tidings-hub-redis", None, 10.0, what="p99", unit="ms"),
    Target("nodes-1k-k128", "tidings-hub-redis", "node-socketio-redis", 5.0),
    # Issue 24: beside Bun's uWebSockets pub/sub and Node's Socket.IO.
    *(
        Target(s.key, "tidings-hub", peer, bound)
        for s in FULL
        if s.kind in BURST_KINDS
        for peer, bound in (("bun-hub", 1.0), ("node-socketio", 5.0))
    ),
    *(
        Target(s.key, "tidings-hub", "bun-hub", 1.5)
        for s in FULL
        if s.kind == "hub-rate"
    ),
    # A publication to deflate clients costs little more than a plain one,
    # and a client no more memory than Bun's, with deflate or without.
    Target(
        "hub-burst-1k-deflate-k1", "tidings-hub", None, 0.8, against="hub-burst-1k-k1"
    ),
    *(
        Target(s.key, "tidings-hub", "bun-hub", 1.0)
        for s in FULL
        if s.kind == "hub-memory"
    ),
    Target("nodes-1k-k1", "tidings-hub-redis", "node-socketio-redis", 5.0),
)
