"""The Redis broker: every ``tidings serve --broker redis://...`` node on one
Redis acts as one hub (docs/scaling.md).

How each part of the broker maps onto Redis, for channel ``C`` and the key
prefix ``P`` (``tidings:`` by default):

- ``P{C}:meta``, a hash: ``offset`` (the latest), ``epoch``, and ``tag``,
  the latest publication's mark (Redis' clock when it was made). The epoch
  is made once, with the hash; it is lost with the hash (Redis restarted
  without persistence, or the channel idle longer than its expiry), and
  then a new one is made, so a client can never mistake a new history for
  the old one.
- ``P{C}:stream``, a stream: the kept publications (data, who, tag), entry
  ID ``OFFSET-0``, trimmed to ``history_size`` and expiring
  ``history_ttl`` after the last publication.
- Publishing is one Lua script, so one atomic round trip: ``HINCRBY`` the
  offset, ``XADD`` the publication, ``PUBLISH`` it on the pub/sub channel
  ``Pch:C``. Offsets are gap-free across all nodes, and every node receives
  a channel's publications in offset order.
- A Redis that comes back from an older state (an RDB snapshot, an AOF
  whose last second never reached the disk, a replica that was behind)
  would hand out offsets again in the same epoch, and clients would take
  the new publications for ones they had. So each node remembers the
  newest position it saw of each channel (its offset and tag), and every
  publish and history script checks it: a channel whose offset went back,
  or whose publication at that offset has another tag, gets a new epoch at
  once, announced to every node as a ``position`` push, and its clients
  are told that recovery failed. A node that reconnects checks its
  channels before it resubscribes them.
- Each node holds one pub/sub connection, subscribed to ``Pcontrol`` and to
  ``Pch:C`` for each channel it has subscribers on (one subscription per
  node, however many clients).
- ``P{C}:presence`` (a hash: client -> who) beside ``P{C}:presence-exp`` (a
  sorted set: client -> expiry, in Redis' own clock): entries outlive
  their last refresh by ``presence_ttl``. ``P{C}:presence-users`` (a hash:
  user -> how many entries are that user's), kept by the same scripts that
  make, remove and expire entries, counts users without listing anyone:
  ``presence_stats`` is ``HLEN`` of the two hashes.
- ``P{C}:idempotency:K``, a string kept ``idempotency_window``: the offset,
  epoch and tag of the publication made with idempotency key ``K``. The
  publish script reads it first, and a publish that finds it in the
  channel's current epoch publishes nothing and answers that position; one
  kept from an older epoch (Redis came back from an older state) is
  ignored, and the publish is made anew.
- ``Pnodes``, a sorted set: node -> heartbeat expiry.

The braces are Redis Cluster hash tags: every key of a channel lives in one
slot (brokers/cluster.py: the same broker on a Redis Cluster, with sharded
pub/sub).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import random
import secrets
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from .base import (
    Broker,
    BrokerUnavailable,
    ChannelOptions,
    ClientInfo,
    HistoryResult,
    NodeEvents,
    OutcomeUnknown,
    PresenceStats,
    Publication,
    Push,
)

__all__ = ["RedisBroker", "SentinelURL", "parse_sentinel_url"]

logger = logging.getLogger("tidings.hub.redis")

_T = TypeVar("_T")

#: Seconds a channel's offset and epoch outlive its last publication (at
#: least its history TTL): a channel quiet for longer starts a new epoch.
META_TTL = 86400

#: Seconds between pings on the pub/sub connection; one silent for three
#: intervals is counted as lost.
PING_INTERVAL = 5.0

#: Connections for commands (the pub/sub connection is apart); a call that
#: finds them all busy waits for one, within its timeout.
MAX_CONNECTIONS = 32

#: Reconnect delays: from the first to the longest, doubling, with jitter.
BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 5.0

#: Channels whose newest position a node remembers, to notice a Redis that
#: comes back from an older state; beyond, the least recently seen are
#: forgotten (about 200 bytes each).
KNOWN_CHANNELS = 100_000

# Fields of a pub/sub message: kind, offset, epoch, tag, data, who.
# Publication data is JSON, which never holds a raw 0x1F, so only the last
# field (the user id, which may) needs no escaping.
_SEP = b"\x1f"
_WHO = b"\x1e"

# The channel's epoch (KEYS[1]: meta, KEYS[2]: stream). ARGV[1] is a new
# epoch, ARGV[2] the meta expiry, ARGV[3] the pub/sub channel, and ARGV[4],
# ARGV[5], ARGV[6] the epoch, offset and tag at which this node last saw the
# channel. When Redis is behind what the node saw (an offset lower, or
# another publication at it), it lost acknowledged writes: the channel gets
# a new epoch, which every node hears of, rather than offsets handed out
# twice. A new epoch starts a new history.
_EPOCH = """
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'offset', 'tag')
local epoch = meta[1]
if epoch and epoch == ARGV[4] then
  local seen = tonumber(ARGV[5])
  local now = tonumber(meta[2] or '0')
  local lost = now < seen
  if not lost and ARGV[6] ~= '' then
    local tag = meta[3]
    if now > seen then
      tag = false
      local entry = redis.call('XRANGE', KEYS[2], seen .. '-0', seen .. '-0')
      if #entry > 0 then
        local fields = entry[1][2]
        for i = 1, #fields, 2 do
          if fields[i] == 't' then tag = fields[i + 1] end
        end
      end
    end
    lost = tag and tag ~= ARGV[6]
  end
  if lost then epoch = false end
end
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch)
  redis.call('HDEL', KEYS[1], 'tag')
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  if meta[1] then
    redis.call('PUBLISH', ARGV[3], 'e\\31' .. (meta[2] or '0') .. '\\31' .. epoch
               .. '\\31\\31\\31')
  end
end
"""

# KEYS: meta, stream, and the idempotency key's when the publish has one.
# ARGV: those of _EPOCH, then data, who, history_size, history_ttl, and how
# long the idempotency key is kept (ms). The tag marks this publication
# apart from any other that a Redis restored from an older state might give
# the same offset. A key kept from another epoch (Redis lost writes since)
# answers nothing: its position is gone, and the publish is made anew.
_PUBLISH = (
    _EPOCH
    + """
if KEYS[3] then
  local made = redis.call('GET', KEYS[3])
  if made then
    local offset, made_in, tag = string.match(made, '^(%d+)\\31([^\\31]*)\\31(.*)$')
    if made_in == epoch then return {tonumber(offset), epoch, tag} end
  end
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local time = redis.call('TIME')
local tag = time[1] .. '.' .. time[2]
redis.call('HSET', KEYS[1], 'tag', tag)
redis.call('EXPIRE', KEYS[1], ARGV[2])
if tonumber(ARGV[9]) > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[9], offset .. '-0',
             'd', ARGV[7], 'w', ARGV[8], 't', tag)
  redis.call('EXPIRE', KEYS[2], ARGV[10])
end
redis.call('PUBLISH', ARGV[3], 'p\\31' .. offset .. '\\31' .. epoch .. '\\31' .. tag
           .. '\\31' .. ARGV[7] .. '\\31' .. ARGV[8])
if KEYS[3] then
  redis.call('SET', KEYS[3], offset .. '\\31' .. epoch .. '\\31' .. tag, 'PX', ARGV[11])
end
return {offset, epoch, tag}
"""
)

# KEYS: meta, stream. ARGV: those of _EPOCH, then since (-1: none), limit
# (-1: none). Returns epoch, offset, complete, entries, newest_first, tag.
_HISTORY = (
    _EPOCH
    + """
local offset = tonumber(redis.call('HGET', KEYS[1], 'offset') or '0')
local tag = redis.call('HGET', KEYS[1], 'tag') or ''
local since = tonumber(ARGV[7])
local limit = tonumber(ARGV[8])
if since < 0 then
  if limit == 0 then return {epoch, offset, 1, {}, 0, tag} end
  if limit < 0 then
    return {epoch, offset, 1, redis.call('XRANGE', KEYS[2], '-', '+'), 0, tag}
  end
  return {epoch, offset, 1,
          redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', limit), 1, tag}
end
if since > offset then return {epoch, offset, 0, {}, 0, tag} end
if since == offset then return {epoch, offset, 1, {}, 0, tag} end
local first = (since + 1) .. '-0'
local entries
if limit < 0 then
  entries = redis.call('XRANGE', KEYS[2], first, '+')
else
  entries = redis.call('XRANGE', KEYS[2], first, '+', 'COUNT', math.max(limit, 1))
end
if #entries == 0 or entries[1][1] ~= first then
  return {epoch, offset, 0, {}, 0, tag}
end
if limit == 0 then entries = {} end
return {epoch, offset, 1, entries, 0, tag}
"""
)

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Extend a key's expiry to ttl ms, never shortening it.
_EXTEND = """
local function extend(key, ttl)
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
"""

# The presence scripts' keys: presence, presence-exp, presence-users. Every
# entry made or dropped moves its user's count in presence-users, in the
# same script: the counts never drift from the entries. The user is the
# last field of who (_who), after the second 0x1E.
_PRESENCE_USERS = """
local function user_of(who)
  local first = string.find(who, '\\30', 1, true)
  return string.sub(who, string.find(who, '\\30', first + 1, true) + 1)
end
local function forget(client)
  redis.call('ZREM', KEYS[2], client)
  local who = redis.call('HGET', KEYS[1], client)
  if not who then return false end
  redis.call('HDEL', KEYS[1], client)
  local user = user_of(who)
  if redis.call('HINCRBY', KEYS[3], user, -1) <= 0 then
    redis.call('HDEL', KEYS[3], user)
  end
  return who
end
"""

# Drops the expired entries (their node stopped refreshing them).
_EXPIRE_PRESENCE = (
    _NOW_MS
    + _PRESENCE_USERS
    + """
for _, client in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  forget(client)
end
"""
)

# ARGV: ttl ms, pub/sub channel, then (client, who) pairs; a non-empty
# pub/sub channel announces the first pair's join.
_ADD_PRESENCE = (
    _NOW_MS
    + _EXTEND
    + _PRESENCE_USERS
    + """
local ttl = tonumber(ARGV[1])
for i = 3, #ARGV, 2 do
  if redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    redis.call('HINCRBY', KEYS[3], user_of(ARGV[i + 1]), 1)
  end
  redis.call('ZADD', KEYS[2], now + ttl, ARGV[i])
end
extend(KEYS[1], ttl)
extend(KEYS[2], ttl)
-- The counts live exactly as long as the entries they count.
redis.call('PEXPIRE', KEYS[3], redis.call('PTTL', KEYS[1]))
if ARGV[2] ~= '' then
  redis.call('PUBLISH', ARGV[2], 'j\\31\\31\\31\\31\\31' .. ARGV[4])
end
"""
)

# ARGV: client, pub/sub channel.
_REMOVE_PRESENCE = (
    _PRESENCE_USERS
    + """
local who = forget(ARGV[1])
if who then
  redis.call('PUBLISH', ARGV[2], 'l\\31\\31\\31\\31\\31' .. who)
end
"""
)

# Returns the unexpired entries.
_PRESENCE = (
    _EXPIRE_PRESENCE
    + """
return redis.call('HVALS', KEYS[1])
"""
)

# Returns how many entries and users there are, listing nobody.
_PRESENCE_STATS = (
    _EXPIRE_PRESENCE
    + """
return {redis.call('HLEN', KEYS[1]), redis.call('HLEN', KEYS[3])}
"""
)

# KEYS: nodes. ARGV: node, ttl ms.
_HEARTBEAT = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
"""
)

# KEYS: nodes.
_NODES = (
    _NOW_MS
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
"""
)


class RedisBroker(Broker):
    """A node's broker on Redis (redis-py's asyncio client; hiredis is used
    when installed: ``pip install tidings[redis]``).

    While Redis is unreachable, calls raise :class:`BrokerUnavailable` and
    the node reconnects with backoff; once back, it resubscribes its
    channels and sends each of them a ``position`` push, so that clients
    that missed publications recover them (or learn that they are lost).
    At most ``max_pending`` calls wait for Redis at once; more are refused
    at once, so a slow Redis cannot grow a node's memory without bound.

    ``url`` is a redis-py URL (``redis://``, ``rediss://``, ``unix://``) or
    a Sentinel one (:func:`parse_sentinel_url`): then every connection asks
    the sentinels where the master is, so the node follows a failover.
    ``password`` is used when the URL has none.
    """

    #: The pub/sub commands: one Redis delivers every channel to every
    #: subscriber (a cluster, only its shard's: brokers/cluster.py).
    _publish_command = "PUBLISH"
    _subscribe_command = "SUBSCRIBE"
    _unsubscribe_command = "UNSUBSCRIBE"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "tidings:",
        timeout: float = 5.0,
        max_pending: int = 1000,
        password: str | None = None,
    ) -> None:
        try:
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError:
            raise BrokerUnavailable(
                "the Redis broker needs redis-py: pip install 'tidings[redis]'"
            ) from None
        self._url = url
        self._prefix = prefix
        self._timeout = timeout
        self._max_pending = max_pending
        self._pending = 0
        # One retry at once: the first command on a pooled connection that
        # Redis closed (it restarted) fails, the second connects afresh.
        self._redis = self._client(url, password, timeout, Retry(NoBackoff(), 1))
        self._scripts = {
            name: self._redis.register_script(
                source.replace("'PUBLISH'", f"'{self._publish_command}'")
            )
            for name, source in (
                ("publish", _PUBLISH),  # sent by _send_publications
                ("history", _HISTORY),
                ("add_presence", _ADD_PRESENCE),
                ("remove_presence", _REMOVE_PRESENCE),
                ("presence", _PRESENCE),
                ("presence_stats", _PRESENCE_STATS),
                ("heartbeat", _HEARTBEAT),
                ("nodes", _NODES),
            )
        }
        self._node = ""
        self._events: NodeEvents | None = None
        self._control = (prefix + "control").encode()
        #: Channels this node wants delivered.
        self._wanted: set[str] = set()
        #: Pub/sub names waiting for their SUBSCRIBE to be confirmed.
        self._confirming: dict[bytes, list[asyncio.Future[None]]] = {}
        self._conn: Any = None  # the pub/sub connection while it is up
        self._error = "not started"
        self._reader: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._resyncing: asyncio.Task[None] | None = None
        #: Publications waiting for the next round trip, in order, per
        #: route (see _route), and the task sending each route's.
        self._outboxes: dict[str, list[tuple[list[Any], asyncio.Future[Any]]]] = {}
        self._senders: dict[str, asyncio.Task[None]] = {}
        #: Per channel, the newest position this node saw: epoch, offset,
        #: and the tag of the publication there (b"" when unknown), least
        #: recently seen first.
        self._known: dict[str, tuple[bytes, int, bytes]] = {}

    # -- lifecycle ---------------------------------------------------------

    async def start(self, node: str, events: NodeEvents) -> None:
        self._node = node
        self._events = events
        self._reader = asyncio.create_task(self._run())
        # Serve at once when Redis is there; otherwise start anyway, unhealthy,
        # and keep trying (a node may well start before its Redis).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timeout):
                await self._connected.wait()
        if not self.status()["ok"]:
            logger.warning("redis at %s is unreachable: %s", self._where(), self._error)

    def _client(
        self, url: str, password: str | None, timeout: float, retry: Any
    ) -> Any:
        """The client for commands, made from the broker's URL (``password``
        where the URL has none)."""
        from redis import asyncio as redis

        return redis.Redis(connection_pool=_pool(url, password, timeout), retry=retry)

    async def close(self) -> None:
        await self._stop(self._reader, self._resyncing, *self._senders.values())
        self._reader = self._resyncing = None
        self._senders.clear()
        self._events = None
        # Each step bounded: a Redis that stopped answering (or a client
        # stuck in a reconnect) must not keep the node from closing.
        with contextlib.suppress(BrokerUnavailable, TimeoutError):
            async with asyncio.timeout(self._timeout):
                await self._call(self._redis.zrem(self._key("nodes"), self._node))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timeout):
                await self._redis.aclose()
        pool = getattr(self._redis, "connection_pool", None)  # none on a cluster
        sentinels = getattr(pool, "sentinel_manager", None)
        if sentinels is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._timeout):
                    await sentinels.aclose()

    async def _stop(self, *tasks: asyncio.Task[None] | None) -> None:
        """Cancel ``tasks`` and wait for them, each at most the timeout (a
        task inside redis-py may take a while to notice)."""
        for task in tasks:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    async with asyncio.timeout(self._timeout):
                        await task

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "kind": "redis",
            "ok": self._conn is not None,
            "server": self._where(),
        }
        if self._url.startswith(SENTINEL_SCHEMES):
            where = parse_sentinel_url(self._url)
            status["master"] = where.master
            status["sentinels"] = [f"{host}:{port}" for host, port in where.sentinels]
            # Where the sentinels last said the master is (None: no master).
            pool: Any = self._redis.connection_pool
            address = pool.master_address
            status["master_at"] = address and f"{address[0]}:{address[1]}"
        if self._conn is None:
            status["error"] = self._error
        return status

    def _where(self) -> str:
        # Never the password: host, port and database only; with Sentinel,
        # the master's name and the sentinels.
        if self._url.startswith(SENTINEL_SCHEMES):
            where = parse_sentinel_url(self._url)
            sentinels = ",".join(f"{host}:{port}" for host, port in where.sentinels)
            return f"master {where.master}/{where.db} via sentinels {sentinels}"
        parts = urlsplit(self._url)
        return f"{parts.hostname or parts.path}:{parts.port or 6379}{parts.path}"

    # -- channel state -------------------------------------------------------

    async def publish(
        self,
        channel: str,
        data: bytes,
        options: ChannelOptions,
        info: ClientInfo | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> tuple[int, str]:
        keys = self._channel_keys(channel)
        window = options.idempotency_window
        if idempotency_key is not None and window > 0:
            keys.append(self._key(f"{{{channel}}}:idempotency:{idempotency_key}"))
        command = [
            len(keys),
            *keys,
            *self._epoch_args(channel, options),
            data,
            _who(info),
            options.history_size,
            max(1, math.ceil(options.history_ttl)),
            max(1, math.ceil(window * 1000)),
        ]
        offset, epoch, tag = await self._call(
            self._queue_publish(self._route(keys[0]), command)
        )
        self._learn(channel, epoch, int(offset), tag)
        return int(offset), epoch.decode()

    def _route(self, key: str) -> str:
        """The route of commands on ``key``: publications of one route go
        in order, one round trip at a time. Raises
        :class:`BrokerUnavailable` while the route's Redis is unreachable."""
        self._up()
        return ""

    async def _queue_publish(self, route: str, command: list[Any]) -> Any:
        """Publish in the next round trip: publications made while one is
        on its way go together in the next, in the order they were made,
        so that a burst reaches every node as a burst.

        Raises :class:`BrokerUnavailable` when the publication was never
        sent, :class:`OutcomeUnknown` when it was and no answer came."""
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        entry = (command, done)
        self._outboxes.setdefault(route, []).append(entry)
        if route not in self._senders:
            self._senders[route] = asyncio.create_task(self._send_publications(route))
        try:
            async with asyncio.timeout(self._timeout):
                return await done
        except TimeoutError:
            waiting = self._outboxes.get(route, [])
            if entry in waiting:
                waiting.remove(entry)  # never sent: it will not be made
                raise BrokerUnavailable(
                    f"redis did not take the publication within {self._timeout:g} s"
                ) from None
            raise OutcomeUnknown(
                f"redis did not answer within {self._timeout:g} s: the "
                "publication may have been made"
            ) from None

    async def _send_publications(self, route: str) -> None:
        try:
            while batch := self._outboxes.pop(route, []):
                commands = [command for command, _ in batch]
                try:
                    results = await self._run_scripts("publish", commands)
                except _failures() as exc:
                    # Sent, perhaps: Redis may have made them before the
                    # connection broke, or may make them once it resumes.
                    unknown = OutcomeUnknown(f"redis failed: {exc}")
                    results = [unknown] * len(batch)
                for (_, done), result in zip(batch, results, strict=True):
                    if done.done():
                        continue  # its caller gave up waiting
                    if isinstance(result, Exception):
                        done.set_exception(result)
                    else:
                        done.set_result(result)
        finally:
            del self._senders[route]

    async def _run_scripts(self, name: str, commands: list[list[Any]]) -> list[Any]:
        """Run script ``name`` once for each of ``commands`` (its key count,
        keys and arguments), in order, in one round trip (two if Redis lost
        the script: it restarted)."""
        from redis.exceptions import NoScriptError

        script = self._scripts[name]
        sha = script.sha
        results: list[Any] = [None] * len(commands)
        todo = list(range(len(commands)))
        for attempt in range(2):
            if attempt:
                await self._redis.script_load(script.script)
            pipe = self._redis.pipeline(transaction=False)
            for i in todo:
                pipe.evalsha(sha, *commands[i])
            answers = await pipe.execute(raise_on_error=False)
            for i, answer in zip(todo, answers, strict=True):
                results[i] = answer
            # A NoScriptError means that command did not run: run it again.
            todo = [i for i in todo if isinstance(results[i], NoScriptError)]
            if not todo:
                break
        return results

    async def history(
        self,
        channel: str,
        options: ChannelOptions,
        *,
        since: int | None = None,
        limit: int | None = None,
    ) -> HistoryResult:
        epoch, offset, complete, entries, newest_first, tag = await self._script(
            "history",
            self._channel_keys(channel),
            [
                *self._epoch_args(channel, options),
                -1 if since is None else since,
                -1 if limit is None else limit,
            ],
        )
        self._learn(channel, epoch, int(offset), tag)
        publications = [_entry(id, fields) for id, fields in entries]
        if newest_first:
            publications.reverse()
        return HistoryResult(epoch.decode(), int(offset), publications, bool(complete))

    # -- delivery --------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        conn = self._pubsub_for(channel)
        name = self._pubsub_name(channel)
        confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirming.setdefault(name, []).append(confirmed)
        self._wanted.add(channel)
        try:
            await self._call(conn.send_command(self._subscribe_command, name))
            async with asyncio.timeout(self._timeout):
                await confirmed
        except BaseException as exc:
            self._wanted.discard(channel)
            waiting = self._confirming.get(name, [])
            if confirmed in waiting:
                waiting.remove(confirmed)
            if isinstance(exc, TimeoutError):
                raise BrokerUnavailable(
                    "redis did not confirm a subscription"
                ) from None
            raise

    async def unsubscribe(self, channel: str) -> None:
        self._wanted.discard(channel)
        # Not waited for: whatever still comes for the channel is dropped
        # here, and a resubscribe's confirmation comes after this one's.
        with contextlib.suppress(BrokerUnavailable):
            conn = self._pubsub_for(channel)
            await self._call(
                conn.send_command(self._unsubscribe_command, self._pubsub_name(channel))
            )

    async def control(self, message: dict[str, Any]) -> None:
        payload = json.dumps(message, separators=(",", ":"))
        await self._call(
            self._redis.execute_command(self._publish_command, self._control, payload)
        )

    async def heartbeat(self, ttl: float) -> None:
        await self._script(
            "heartbeat", [self._key("nodes")], [self._node, math.ceil(ttl * 1000)]
        )

    async def nodes(self) -> set[str]:
        nodes = await self._script("nodes", [self._key("nodes")], [])
        return {node.decode() for node in nodes}

    # -- presence ----------------------------------------------------------------

    async def add_presence(self, channel: str, info: ClientInfo, ttl: float) -> None:
        await self._script(
            "add_presence",
            self._presence_keys(channel),
            [
                math.ceil(ttl * 1000),
                self._pubsub_name(channel),
                info.client,
                _who(info),
            ],
        )

    async def refresh_presence(
        self, channel: str, infos: Sequence[ClientInfo], ttl: float
    ) -> None:
        pairs: list[Any] = []
        for info in infos:
            pairs += [info.client, _who(info)]
        await self._script(
            "add_presence",
            self._presence_keys(channel),
            [math.ceil(ttl * 1000), "", *pairs],
        )

    async def remove_presence(self, channel: str, info: ClientInfo) -> None:
        await self._script(
            "remove_presence",
            self._presence_keys(channel),
            [info.client, self._pubsub_name(channel)],
        )

    async def presence(self, channel: str) -> list[ClientInfo]:
        values = await self._script("presence", self._presence_keys(channel), [])
        return [info for value in values if (info := _info(value)) is not None]

    async def presence_stats(self, channel: str) -> PresenceStats:
        clients, users = await self._script(
            "presence_stats", self._presence_keys(channel), []
        )
        return PresenceStats(int(clients), int(users))

    # -- calls -------------------------------------------------------------------

    def _key(self, name: str) -> str:
        return self._prefix + name

    def _channel_keys(self, channel: str) -> list[str]:
        return [self._key(f"{{{channel}}}:meta"), self._key(f"{{{channel}}}:stream")]

    def _epoch_args(self, channel: str, options: ChannelOptions) -> list[Any]:
        """The arguments of the scripts' epoch check (_EPOCH)."""
        epoch, offset, tag = self._known.get(channel, (b"", 0, b""))
        return [
            secrets.token_hex(4),
            max(META_TTL, math.ceil(options.history_ttl)),
            self._pubsub_name(channel),
            epoch,
            offset,
            tag,
        ]

    def _learn(self, channel: str, epoch: bytes, offset: int, tag: bytes) -> None:
        """Remember where ``channel`` stands, as far as this node has seen:
        the newest position of the newest epoch."""
        known = self._known.pop(channel, None)
        if known is not None and known[0] == epoch and known[1] >= offset:
            self._known[channel] = known
        else:
            self._known[channel] = (epoch, offset, tag)
            if len(self._known) > KNOWN_CHANNELS:
                del self._known[next(iter(self._known))]

    def _presence_keys(self, channel: str) -> list[str]:
        return [
            self._key(f"{{{channel}}}:presence"),
            self._key(f"{{{channel}}}:presence-exp"),
            self._key(f"{{{channel}}}:presence-users"),
        ]

    def _pubsub_name(self, channel: str) -> bytes:
        return f"{self._prefix}ch:{channel}".encode()

    def _channel_of(self, name: bytes) -> str:
        """The channel of a pub/sub name (_pubsub_name)."""
        return name[len(self._prefix) + 3 :].decode()

    def _up(self) -> Any:
        if self._conn is None:
            raise BrokerUnavailable(f"redis is unreachable: {self._error}")
        return self._conn

    def _pubsub_for(self, channel: str) -> Any:
        """The pub/sub connection that delivers ``channel`` (raises
        :class:`BrokerUnavailable` while there is none)."""
        return self._up()

    async def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return await self._call(self._scripts[name](keys=keys, args=args))

    async def _call(self, call: Awaitable[_T]) -> _T:
        """Await a Redis call; its failures become BrokerUnavailable, and
        beyond ``max_pending`` calls in flight it is refused at once. A
        READONLY answer means this Redis is a replica now (a master demoted
        in a failover): the node counts it as lost and reconnects."""
        from redis.exceptions import ReadOnlyError

        if self._pending >= self._max_pending:
            if asyncio.iscoroutine(call):
                call.close()
            raise BrokerUnavailable("too many calls are waiting for redis")
        self._pending += 1
        try:
            return await call
        except TimeoutError:
            raise BrokerUnavailable(
                f"redis did not answer within {self._timeout:g} s"
            ) from None
        except _failures() as exc:
            if isinstance(exc, ReadOnlyError) and self._conn is not None:
                self._error = f"redis is a replica now: {exc}"
                await self._conn.disconnect(nowait=True)
            raise BrokerUnavailable(f"redis failed: {exc}") from None
        finally:
            self._pending -= 1

    # -- the pub/sub connection ------------------------------------------------

    async def _run(self) -> None:
        """Hold the pub/sub connection: read from it, ping it, and reconnect
        with backoff when it is lost."""
        from redis.exceptions import RedisError

        delay = BACKOFF_INITIAL
        resync = False  # after the first time up, every connection resyncs
        while True:
            conn = self._redis.connection_pool.make_connection()
            try:
                await conn.connect()
                if resync:
                    await self._check_channels(self._wanted)
                names = [self._control] + [self._pubsub_name(c) for c in self._wanted]
                await conn.send_command("SUBSCRIBE", *names)
                await self._listen(
                    conn, len(names), functools.partial(self._on_up, conn, resync)
                )
            except (RedisError, OSError) as exc:
                self._error = str(exc) or type(exc).__name__
            finally:
                was_up = self._conn is conn
                self._conn = None
                self._connected.clear()
                lost = BrokerUnavailable(f"lost redis: {self._error}")
                for waiting in self._confirming.values():
                    for future in waiting:
                        if not future.done():
                            future.set_exception(lost)
                self._confirming.clear()
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)
            if was_up:
                logger.warning("lost redis at %s: %s", self._where(), self._error)
                resync = True
                delay = BACKOFF_INITIAL
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, BACKOFF_MAX)

    def _on_up(self, conn: Any, resync: bool) -> None:
        """The pub/sub connection is subscribed to everything the node
        wants: the node is up."""
        self._conn = conn
        self._error = ""
        self._connected.set()
        if resync:
            logger.warning("redis at %s is back", self._where())
            self._resyncing = asyncio.create_task(self._resync(self._wanted))

    async def _listen(
        self, conn: Any, expected: int, on_up: Callable[[], None]
    ) -> None:
        """Read the pub/sub connection until it fails. The first
        ``expected`` confirmations are those of (re)subscribing; once they
        are in, ``on_up`` is called."""
        loop = asyncio.get_running_loop()
        seen = loop.time()
        pinger = asyncio.create_task(self._ping(conn, lambda: seen))
        if expected == 0:
            on_up()
        try:
            while True:
                message = await conn.read_response(timeout=math.inf, push_request=True)
                seen = loop.time()
                kind = message[0]
                if kind in (b"message", b"smessage"):
                    try:
                        self._received(message[1], message[2])
                    except Exception:
                        logger.exception("cannot deliver %.200r", message[2])
                elif kind in (b"subscribe", b"ssubscribe"):
                    if expected > 0:
                        expected -= 1
                        if expected == 0:
                            on_up()
                    for future in self._confirming.pop(message[1], ()):
                        if not future.done():
                            future.set_result(None)
                elif kind == b"sunsubscribe":
                    self._unsubscribed(message[1])
        finally:
            pinger.cancel()

    def _unsubscribed(self, name: bytes) -> None:
        """Redis ended the sharded subscription ``name``: the node asked,
        or (on a cluster) its slot moved to another master."""

    async def _ping(self, conn: Any, last_seen: Callable[[], float]) -> None:
        """Ping the pub/sub connection; drop it when it stays silent, so
        that a Redis gone without closing the socket is noticed."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(PING_INTERVAL)
            if loop.time() - last_seen() > 3 * PING_INTERVAL:
                self._error = "no answer to pings"
                await conn.disconnect(nowait=True)
                return
            with contextlib.suppress(Exception):
                await conn.send_command("PING")

    async def _check_channels(self, wanted: Iterable[str]) -> None:
        """Before resubscribing after an outage: have Redis check every
        channel this node delivers against what the node saw (_EPOCH), so
        that a Redis restored from an older state gives them new epochs
        before any of its publications reach the node. Raises the first
        error Redis answered (one still loading, or a cluster not yet
        whole): the connection is then made again later."""
        channels = [c for c in wanted if c in self._known]
        if channels:
            results = await self._run_scripts(
                "history",
                [
                    [
                        2,
                        *self._channel_keys(c),
                        *self._epoch_args(c, ChannelOptions()),
                        -1,
                        0,
                    ]
                    for c in channels
                ],
            )
            for result in results:
                if isinstance(result, Exception):
                    raise result

    async def _resync(self, wanted: Iterable[str]) -> None:
        """After Redis was unreachable: have the node make its heartbeat and
        presence entries again (Redis may have restarted empty), and tell
        each channel's subscribers where it is, so that those who missed
        publications recover."""
        if self._events is not None:
            self._events.on_reconnected()
        for channel in list(wanted):
            try:
                position = await self.history(channel, ChannelOptions(), limit=0)
            except BrokerUnavailable:
                return  # lost again: the next reconnect resyncs
            events = self._events
            if events is not None and channel in self._wanted:
                events.on_push(
                    Push(channel, "position", position.epoch, position.offset)
                )

    def _received(self, name: bytes, payload: bytes) -> None:
        events = self._events
        if events is None:
            return
        if name == self._control:
            try:
                message = json.loads(payload)
            except ValueError:
                logger.warning("invalid control message %.200r", payload)
                return
            events.on_control(message)
            return
        channel = self._channel_of(name)
        if channel not in self._wanted:
            return  # unsubscribed meanwhile
        kind, offset, epoch, tag, data, who = payload.split(_SEP, 5)
        if kind == b"p":
            self._learn(channel, epoch, int(offset), tag)
            events.on_push(
                Push(channel, "pub", epoch.decode(), int(offset), data, _info(who))
            )
        elif kind == b"e":  # a new epoch, after Redis lost writes
            self._learn(channel, epoch, int(offset), b"")
            events.on_push(Push(channel, "position", epoch.decode(), int(offset)))
        else:
            info = _info(who)
            events.on_push(
                Push(channel, "join" if kind == b"j" else "leave", info=info)
            )


def _failures() -> tuple[type[Exception], ...]:
    """What redis-py raises when Redis failed a call (imported late: redis-py
    is an optional dependency)."""
    from redis.exceptions import RedisClusterException, RedisError

    return (RedisError, RedisClusterException, OSError)


def _who(info: ClientInfo | None) -> bytes:
    """Client, info (JSON, which never holds a raw 0x1E) and user, the
    user last as it may hold anything."""
    if info is None:
        return b""
    extra = b"" if info.info is None else json.dumps(info.info).encode()
    return info.client.encode() + _WHO + extra + _WHO + info.user.encode()


def _info(who: bytes) -> ClientInfo | None:
    if not who:
        return None
    client, _, rest = who.partition(_WHO)
    extra, _, user = rest.partition(_WHO)
    return ClientInfo(
        client.decode(), user.decode(), json.loads(extra) if extra else None
    )


def _entry(id: bytes, fields: list[bytes]) -> Publication:
    values = dict(zip(fields[::2], fields[1::2], strict=True))
    return Publication(int(id.partition(b"-")[0]), values[b"d"], _info(values[b"w"]))


SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")

#: The options a Sentinel URL's query may set: TLS files, for rediss+sentinel.
SENTINEL_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


@dataclass(frozen=True, slots=True)
class SentinelURL:
    """What a ``redis+sentinel://`` URL names."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    tls: bool = False
    username: str | None = None
    password: str | None = None
    options: tuple[tuple[str, str], ...] = ()


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse ``redis+sentinel://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER[/DB]``
    (``rediss+sentinel://``: TLS to the sentinels and the Redis servers,
    with ``?ssl_ca_certs=FILE`` and the like). The password is the Redis
    servers'; the sentinels are asked without one. Raises ValueError
    saying what is wrong."""
    scheme, _, rest = url.partition("://")
    if f"{scheme.lower()}://" not in SENTINEL_SCHEMES:
        raise ValueError(
            f"a Sentinel URL starts with redis+sentinel:// or rediss+sentinel://, "
            f"got {scheme!r}"  # not the URL: it may hold a password
        )
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    sentinels = []
    for host in hosts.split(","):
        parts = urlsplit(f"//{host}")
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or not port:
            raise ValueError(
                f"each sentinel must be HOST:PORT (port 1-65535), got {host!r}"
            )
        sentinels.append((parts.hostname, port))
    master, _, db = (unquote(part) for part in path.partition("/"))
    if not master or "/" in db or not (db.isdigit() or db == ""):
        raise ValueError(
            "a Sentinel URL's path is /MASTER_NAME or /MASTER_NAME/DB, "
            f"got {'/' + path!r}"
        )
    tls = scheme.lower() == "rediss+sentinel"
    options = tuple(parse_qsl(query, keep_blank_values=True))
    if query and not (
        tls and options and all(k in SENTINEL_OPTIONS for k, _ in options)
    ):
        raise ValueError(
            f"a Sentinel URL's options are {', '.join(SENTINEL_OPTIONS)}, "
            f"with rediss+sentinel:// only; got {query!r}"
        )
    return SentinelURL(
        tuple(sentinels),
        master,
        int(db or 0),
        tls=tls,
        username=unquote(username) if at and username else None,
        password=unquote(password) if at and password else None,
        options=options,
    )


def _pool(url: str, password: str | None, timeout: float) -> Any:
    """The pool of connections to Redis that ``url`` names; with Sentinel,
    each connection is made to the master the sentinels name at the time,
    and one to a master since demoted (it answers READONLY) is dropped."""
    from redis.asyncio import BlockingConnectionPool
    from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

    options: dict[str, Any] = {
        "max_connections": MAX_CONNECTIONS,
        "timeout": timeout,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
    }
    if not url.startswith(SENTINEL_SCHEMES):
        if password is not None and urlsplit(url).password is None:
            options["password"] = password
        return BlockingConnectionPool.from_url(url, **options)

    class SentinelPool(SentinelConnectionPool, BlockingConnectionPool):
        """Sentinel's pool, waiting (within the timeout) for a free
        connection like the plain one rather than failing at once."""

    where = parse_sentinel_url(url)
    tls: dict[str, Any] = dict(where.options)
    if where.tls:
        tls["ssl"] = True
    sentinels = Sentinel(
        where.sentinels,
        sentinel_kwargs={
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            **tls,
        },
    )
    return SentinelPool(  # type: ignore[no-untyped-call]
        where.master,
        sentinels,
        db=where.db,
        username=where.username,
        password=where.password if where.password is not None else password,
        **tls,
        **options,
    )
