"""The Redis Cluster broker: every ``tidings serve --broker
redis+cluster://HOST:PORT[,HOST:PORT...]`` node on one Redis Cluster acts as
one hub (docs/scaling.md).

It is the Redis broker (brokers/redis.py: the same keys, scripts and
recovery), spread over the cluster's shards:

- Every key of channel ``C`` is under the hash tag ``{C}`` (``P{C}:meta``,
  ``P{C}:stream``, ``P{C}:presence``...), so one channel lives in one slot,
  on one shard, and each script stays one atomic call on one master.
- Publications, joins, leaves and new epochs go by sharded pub/sub: the
  scripts ``SPUBLISH`` on ``P{C}:ch``, which hashes to the channel's slot,
  so the shard that makes a publication delivers it, and the other shards
  never see it (classic ``PUBLISH`` would reach every node of the cluster).
- A node holds one pub/sub connection per master. On each, it
  ``SSUBSCRIBE``s only the channels of that master's slots that its
  clients are subscribed to: a shard no client of the node needs sends it
  nothing. The connection also tells the node when the master is lost.
- Control messages go on the shard channel ``Pcontrol``, on the master of
  its slot; the node list (``Pnodes``) is on the master of its own.
- A master lost: calls on its channels raise :class:`BrokerUnavailable`
  (503) at once, while the other shards carry on. The node asks the
  cluster for its slot map again, with backoff, until a replica has taken
  over; then it checks those channels against what it saw (the replica may
  be behind: writes the old master acknowledged and never replicated are
  lost, and the channel gets a new epoch), subscribes them there, and sends
  each a ``position`` push, so that its clients recover what they missed
  or are told they cannot.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from typing import Any
from urllib.parse import unquote

from .base import BrokerUnavailable
from .redis import BACKOFF_INITIAL, BACKOFF_MAX, MAX_CONNECTIONS, RedisBroker, _failures

__all__ = ["CLUSTER_SCHEMES", "ClusterBroker", "parse_cluster_url"]

logger = logging.getLogger("tidings.hub.redis")

#: How a cluster's URL starts.
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The nodes and client options of
    ``redis+cluster://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]``
    (``rediss+cluster://`` with TLS). Raises ValueError saying what is
    wrong."""
    if not url.startswith(CLUSTER_SCHEMES):
        raise ValueError(f"a cluster URL starts with redis+cluster://, got {url!r}")
    scheme, _, rest = url.partition("://")
    if "?" in rest or "#" in rest:
        raise ValueError("a cluster URL takes no options (?...)")
    netloc, _, path = rest.partition("/")
    if path not in ("", "0"):
        raise ValueError(f"a Redis Cluster has database 0 only, got /{path}")
    userinfo, at, hosts = netloc.rpartition("@")
    options: dict[str, Any] = {"ssl": scheme == "rediss+cluster"}
    if at:
        user, _, password = userinfo.partition(":")
        options["username"] = unquote(user) or None
        options["password"] = unquote(password) or None
    nodes = []
    for item in hosts.split(","):
        host, colon, port = item.rpartition(":")
        if not (colon and host and port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(
                f"{item!r} is not HOST:PORT: give the cluster's nodes as "
                "redis+cluster://HOST:PORT[,HOST:PORT...]"
            )
        nodes.append((host.removeprefix("[").removesuffix("]"), int(port)))
    return nodes, options


class _Shard:
    """A master, as one node sees it: the pub/sub connection to it."""

    __slots__ = ("conn", "error", "node", "resyncing", "task")

    def __init__(self, node: Any) -> None:
        self.node = node  # redis-py's ClusterNode
        self.conn: Any = None  # the pub/sub connection while it is up
        self.error = "connecting"
        self.task: asyncio.Task[None] | None = None
        self.resyncing: asyncio.Task[None] | None = None


class ClusterBroker(RedisBroker):
    """A node's broker on a Redis Cluster (7.0 or later: sharded pub/sub),
    on redis-py's asyncio ``RedisCluster``. The options are the Redis
    broker's. While a master is unreachable, calls on its channels raise
    :class:`BrokerUnavailable`; those of the other masters go on."""

    _publish_command = "SPUBLISH"
    _subscribe_command = "SSUBSCRIBE"
    _unsubscribe_command = "SUNSUBSCRIBE"

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        #: Per master (host:port), the pub/sub connection to it.
        self._shards: dict[str, _Shard] = {}
        #: Set when the slot map may be out of date (a master was lost).
        self._stale = asyncio.Event()
        #: Set when a slot with channels the node wants moved to another
        #: master: every connection subscribes again, by the new map.
        self._moved = False
        self._mapped = False

    def _client(
        self, url: str, password: str | None, timeout: float, retry: Any
    ) -> Any:
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        nodes, options = parse_cluster_url(url)
        if options.get("password") is None and password is not None:
            options["password"] = password
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in nodes],
            max_connections=MAX_CONNECTIONS,
            retry=retry,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            **options,
        )

    async def close(self) -> None:
        for shard in self._shards.values():
            await self._stop(shard.task, shard.resyncing)
        self._shards.clear()
        await super().close()

    def status(self) -> dict[str, Any]:
        # Up while any master is: a load balancer keeps the nodes that serve
        # the other shards while one fails over.
        shards = {
            name: "ok" if shard.conn is not None else shard.error
            for name, shard in sorted(self._shards.items())
        }
        status: dict[str, Any] = {
            "kind": "redis-cluster",
            "ok": "ok" in shards.values(),
            "server": self._where(),
            "shards": shards,
        }
        lost = [name for name, state in shards.items() if state != "ok"]
        if lost or not shards:
            status["error"] = (
                f"masters unreachable: {', '.join(lost)}" if lost else self._error
            )
        return status

    def _where(self) -> str:
        # Never the password: the nodes given.
        nodes, _ = parse_cluster_url(self._url)
        return ",".join(f"{host}:{port}" for host, port in nodes)

    # -- routing ---------------------------------------------------------------

    def _shard_of(self, key: str | bytes) -> _Shard:
        """The master that holds ``key``'s slot; raises
        :class:`BrokerUnavailable` while the node has no connection to it."""
        try:
            node = self._redis.get_node_from_key(key)
        except _failures() as exc:
            raise BrokerUnavailable(f"redis cluster: no slot map: {exc}") from None
        shard = self._shards.get(node.name)
        if shard is None:  # a master that the map has just learned of
            self._stale.set()
            raise BrokerUnavailable(f"redis cluster: not yet connected to {node.name}")
        if shard.conn is None:
            raise BrokerUnavailable(
                f"redis cluster: the master holding {key!r} ({node.name}) "
                f"is unreachable: {shard.error}"
            )
        return shard

    def _route(self, key: str) -> str:
        return self._shard_of(key).node.name  # type: ignore[no-any-return]

    def _pubsub_for(self, channel: str) -> Any:
        return self._shard_of(self._pubsub_name(channel)).conn

    def _pubsub_name(self, channel: str) -> bytes:
        # The channel's hash tag: its master delivers it.
        return f"{self._prefix}{{{channel}}}:ch".encode()

    def _channel_of(self, name: bytes) -> str:
        return name[len(self._prefix) + 1 : -4].decode()

    async def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        self._shard_of(keys[0])  # fails at once while its master is lost
        return await super()._script(name, keys, args)

    def _owner(self, key: str | bytes) -> str | None:
        """The name of the master holding ``key``'s slot, if known."""
        with contextlib.suppress(*_failures()):
            return self._redis.get_node_from_key(key).name  # type: ignore[no-any-return]
        return None

    # -- the slot map and the pub/sub connections ------------------------------

    async def _run(self) -> None:
        """Keep the slot map: read it at start and whenever a master was
        lost, with backoff until every master is reachable, and hold one
        pub/sub connection per master it names."""
        delay = BACKOFF_INITIAL
        self._stale.set()
        while True:
            await self._stale.wait()
            self._stale.clear()
            try:
                async with asyncio.timeout(self._timeout):
                    if self._mapped:
                        await self._redis.nodes_manager.initialize()
                    else:
                        await self._redis.initialize()
                        self._mapped = True
            except _failures() as exc:  # TimeoutError is an OSError
                self._error = str(exc) or type(exc).__name__
                self._stale.set()
            else:
                self._follow_map()
                if self._moved:
                    self._moved = False
                    for shard in self._shards.values():
                        if shard.conn is not None:
                            await shard.conn.disconnect(nowait=True)
            if self._stale.is_set() or any(
                s.conn is None for s in self._shards.values()
            ):
                # Until every master answers: a replica may be taking over.
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, BACKOFF_MAX)
                self._stale.set()
            else:
                delay = BACKOFF_INITIAL

    def _follow_map(self) -> None:
        """One pub/sub connection per master of the slot map: new masters
        get one, and those no longer masters lose theirs (their channels
        are now on the masters that took over, which subscribe them)."""
        masters = {node.name: node for node in self._redis.get_primaries()}
        for name in list(self._shards):
            if name not in masters:
                shard = self._shards.pop(name)
                for task in (shard.task, shard.resyncing):
                    if task is not None:
                        task.cancel()
        for name, node in masters.items():
            if name not in self._shards:
                shard = self._shards[name] = _Shard(node)
                shard.task = asyncio.create_task(self._run_shard(shard))

    async def _run_shard(self, shard: _Shard) -> None:
        """Hold the pub/sub connection to one master: subscribe the
        channels of its slots that the node wants, read, and reconnect
        with backoff when it is lost."""
        delay = BACKOFF_INITIAL
        name = shard.node.name
        while True:
            conn = shard.node.connection_class(**shard.node.connection_kwargs)
            channels = {
                c for c in self._wanted if self._owner(self._pubsub_name(c)) == name
            }
            try:
                await conn.connect()
                # Channels that were delivered before, by this master or by
                # one it took over from: checked first (it may be behind
                # what the node saw), then told where they are once
                # subscribed (_resync).
                await self._check_channels(channels)
                names = [self._pubsub_name(c) for c in channels]
                if self._owner(self._control) == name:
                    names.append(self._control)
                for each in names:  # one command per name: they are in many slots
                    await conn.send_command("SSUBSCRIBE", each)
                await self._listen(
                    conn,
                    len(names),
                    functools.partial(self._shard_up, shard, conn, channels),
                )
            except _failures() as exc:
                shard.error = str(exc) or type(exc).__name__
            finally:
                was_up = shard.conn is conn
                shard.conn = None
                lost = BrokerUnavailable(f"lost redis at {name}: {shard.error}")
                for each, waiting in list(self._confirming.items()):
                    if self._owner(each) == name:
                        del self._confirming[each]
                        for future in waiting:
                            if not future.done():
                                future.set_exception(lost)
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)
            if was_up:
                logger.warning("lost redis at %s: %s", name, shard.error)
                delay = BACKOFF_INITIAL
            self._stale.set()  # a replica may take over: the map may change
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, BACKOFF_MAX)

    def _unsubscribed(self, name: bytes) -> None:
        if name == self._control or self._channel_of(name) in self._wanted:
            # Not asked for: the slot moved (resharding). Its channels are
            # subscribed again on the master that holds them now, and
            # resynced, as after a loss.
            self._moved = True
            self._stale.set()

    def _shard_up(self, shard: _Shard, conn: Any, channels: set[str]) -> None:
        shard.conn = conn
        shard.error = ""
        if all(s.conn is not None for s in self._shards.values()):
            self._connected.set()
        if channels:
            logger.warning(
                "redis at %s delivers %d channels again", shard.node.name, len(channels)
            )
            shard.resyncing = asyncio.create_task(self._resync(channels))
