"""The benchmark's load client: a lean raw-socket WebSocket client.

It runs as its own process, pinned to one core, and prints one JSON object
per line on stdout for the runner. It does no more work per message than it
must, so that it is not the bottleneck:

- every message it sends is the same frame, masked once at start-up, so
  ``k`` messages are ``frame * k``, one ``write``;
- every message the server sends back is the same frame too, so the incoming
  byte stream is that frame repeated: complete frames are counted from the
  byte count, and the bytes are still checked, with one ``memcmp`` per read,
  against the expected stream;
- several messages are kept in flight per connection (``--depth``), so that
  a read and a write carry many messages.

Modes: ``echo``, ``broadcast``, ``handshake``, ``idle`` (opens connections
and holds them, driven by commands on stdin), ``client`` (one library's
own client against a server, for the client-side comparison) and ``hub``
(subscribers of one channel of a hub, ``--protocol`` tidings-hub or
socketio, one of them publishing; ``idle`` with ``--protocol`` holds
subscribed clients, and ``publish`` on stdin has one of them publish once,
awaited at all) and ``hub-latency`` (the same subscribers, one of them
publishing at a fixed rate, each publication carrying its send time: the
latency to every subscriber); ``hub-burst`` (the same subscribers, one of
them asking the server for bursts of ``--burst`` publications that it
publishes itself, one at a time) and ``hub-api`` (the same bursts, posted
to ``/api/publish`` by a back end on one keep-alive connection). The
socket.io peers (python-socketio, Node's Socket.IO, and Bun, which speaks
socket.io's framing) get the very same client. ``--ports`` spreads the
connections over the nodes of a hub. ``--deflate`` offers permessage-deflate
as browsers do (``client_max_window_bits``), sends uncompressed, and
decompresses every compressed message with zlib (once per distinct message
where the server compresses each alone; and a read of only compressed
deliveries byte for byte the same as one already checked for another
connection is counted as that one was).
Every loop is bounded by ``--duration``/``--repeat`` and by ``--timeout``,
and every count by a fixed cap.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import contextlib
import functools
import hashlib
import importlib
import json
import math
import os
import resource
import socket
import string
import struct
import sys
import time
import zlib
from array import array
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

from ._proc import busy_fraction, core_times, servers_times
from .scenarios import DEFLATE_OFFER, HUB_CHANNEL, HUB_ROOM

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: Largest read the event loops hand to ``data_received`` (both use 256 KiB).
_CHUNK = 256 * 1024

#: Above this, ``k`` copies of a frame are written with ``writelines``.
_JOIN_LIMIT = 64 * 1024

#: Client frames are masked (RFC 6455 §5.3); one key per process.
_MASK = os.urandom(4)

#: Fixed safety cap on any count in this module.
_MAX_COUNT = 10**10


def emit(**fields: Any) -> None:
    """Report one event to the runner, as one JSON line on stdout."""
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


# -- frames --------------------------------------------------------------


def mask_bytes(data: bytes, mask: bytes) -> bytes:
    """XOR ``data`` with the repeated 4-byte ``mask``."""
    n = len(data)
    if n == 0:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    value = int.from_bytes(data, "little") ^ int.from_bytes(key, "little")
    return value.to_bytes(n, "little")


def build_frame(payload: bytes, opcode: int = 0x2, *, masked: bool = False) -> bytes:
    """One final frame carrying ``payload``; masked for a client's frames."""
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = bytes([0x80 | opcode, mask_bit | n])
    elif n < 1 << 16:
        head = bytes([0x80 | opcode, mask_bit | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, mask_bit | 127]) + n.to_bytes(8, "big")
    if not masked:
        return head + payload
    return head + _MASK + mask_bytes(payload, _MASK)


def close_frame(code: int = 1000) -> bytes:
    """A masked close frame with ``code`` (the client's)."""
    return build_frame(code.to_bytes(2, "big"), 0x8, masked=True)


def payload_of(size: int) -> bytes:
    """A payload of ``size`` bytes, not all alike (so masking is real work)."""
    pattern = bytes(range(33, 127))
    return (pattern * (size // len(pattern) + 1))[:size]


def text_payload(size: int) -> bytes:
    """``size`` letters and digits: a payload that JSON carries as it is, so
    that it can be found in the frames a hub delivers."""
    pattern = (string.ascii_letters + string.digits).encode()
    return (pattern * (size // len(pattern) + 1))[:size]


class Expected:
    """The bytes a server sends when every frame is ``frame``: that frame,
    repeated. Shared by the connections of a run."""

    __slots__ = ("frame_len", "pattern", "verify")

    def __init__(self, frame: bytes, verify: bool = True) -> None:
        self.frame_len = len(frame)
        self.verify = verify
        copies = max(2, -(-(_CHUNK + self.frame_len) // self.frame_len))
        self.pattern = frame * copies if verify else b""


class Stream:
    """One connection's position in the :class:`Expected` stream.

    :meth:`feed` returns how many frames the bytes complete; when verifying,
    it also compares them with the expected bytes and counts mismatches.
    """

    __slots__ = ("errors", "expected", "frame_len", "pattern", "pos", "verify")

    def __init__(self, expected: Expected) -> None:
        self.expected = expected
        self.frame_len = expected.frame_len
        self.verify = expected.verify
        self.pattern = expected.pattern
        self.pos = 0
        self.errors = 0

    def feed(self, data: bytes) -> int:
        n = len(data)
        pos = self.pos
        if self.verify:
            # startswith() compares in place: no copy, no allocation.
            if n <= _CHUNK:
                if not self.pattern.startswith(data, pos):
                    self.errors += 1
            else:
                length = self.frame_len
                view = memoryview(data)
                for off in range(0, n, _CHUNK):
                    if not self.pattern.startswith(
                        view[off : off + _CHUNK], (pos + off) % length
                    ):
                        self.errors += 1
        total = pos + n
        self.pos = total % self.frame_len
        return total // self.frame_len


def handshake_request(
    host: str, port: int, key: bytes, path: str = "/", *, deflate: bool = False
) -> bytes:
    offer = f"Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n" if deflate else ""
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key.decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        f"{offer}"
        "\r\n"
    ).encode()


def accept_value(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def agreed_deflate(head: bytes) -> bytes | None:
    """The permessage-deflate the server agreed to in its response ``head``
    (its parameters, as sent), or None."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-extensions":
            for ext in value.split(b","):
                if ext.split(b";")[0].strip().lower() == b"permessage-deflate":
                    return b";".join(p.strip() for p in ext.split(b";"))
    return None


def inflater(agreed: bytes) -> Any:
    """A raw-deflate decompressor for the server's messages, with the
    window the server said it uses (``server_max_window_bits``, else 15).
    Kept for the whole connection: right whether or not the server keeps
    its context between messages."""
    bits = 15
    for param in agreed.split(b";")[1:]:
        name, _, value = param.partition(b"=")
        if name.strip().lower() == b"server_max_window_bits" and value:
            bits = int(value.strip().strip(b'"'))
    return zlib.decompressobj(-bits)


class Handshake:
    """The opening request of one process (one key: servers don't mind);
    with ``deflate``, it offers permessage-deflate as browsers do
    (:data:`DEFLATE_OFFER`)."""

    def __init__(
        self, host: str, port: int, path: str = "/", *, deflate: bool = False
    ) -> None:
        key = base64.b64encode(os.urandom(16))
        self.deflate = deflate
        self.request = handshake_request(host, port, key, path, deflate=deflate)
        self.accept = accept_value(key)
        self.reported = False
        #: Messages already decompressed, by their compressed bytes: only
        #: where the server compresses each message alone, which its bytes
        #: then determine (:meth:`HubConn.on_data`). Shared by the
        #: connections of a run, so that a publication compressed once for
        #: every subscriber is decompressed once too; at most _MAX_MESSAGES.
        self.messages: dict[bytes, bytes] = {}
        #: Reads of compressed deliveries only, with how many each held:
        #: where each message is compressed alone, every subscriber of a
        #: burst reads the very same bytes, which then need parsing once.
        #: At most _MAX_MESSAGES.
        self.reads: dict[bytes, int] = {}

    def check(self, head: bytes) -> bool:
        return head.startswith(b"HTTP/1.1 101") and self.accept in head

    def negotiated(self, head: bytes) -> bytes | None:
        """The deflate agreed in ``head`` (None: none offered or agreed);
        the first answer is reported, as an ``extensions`` event."""
        agreed = agreed_deflate(head) if self.deflate else None
        if self.deflate and not self.reported:
            self.reported = True
            emit(
                event="extensions",
                offered=DEFLATE_OFFER,
                agreed=None if agreed is None else agreed.decode("latin-1"),
            )
        return agreed


# -- connections ---------------------------------------------------------


class Bench:
    """State shared by the connections of one run."""

    def __init__(self) -> None:
        self.count = 0
        self.sending = True
        self.errors = 0
        self.failed = 0

    def delivered(self, k: int) -> None:
        """``k`` more messages arrived."""
        self.count += k

    def error(self, text: str) -> None:
        """Count an unexpected frame or event; report the first few."""
        self.errors += 1
        if self.errors <= 3:
            emit(event="note", text=text)


class Conn(asyncio.Protocol):
    """A raw WebSocket client connection; subclasses handle the frames.

    :attr:`opened` is set once the handshake succeeded, or, where
    :attr:`ready_on_open` is false, once the subclass says the connection
    is ready (say, subscribed).
    """

    ready_on_open = True
    #: Which connection of the run this is (the node it went to: ``index``
    #: modulo the number of ports).
    index = 0

    def __init__(self, bench: Bench, hs: Handshake, stream: Stream | None) -> None:
        self.bench = bench
        self.hs = hs
        self.stream = stream
        self.head: bytes | None = b""
        #: The decompressor of the server's messages, once permessage-deflate
        #: is agreed (``--deflate``); this client sends uncompressed.
        self.inflate: Any = None
        #: Whether the server agreed to compress each message alone
        #: (``server_no_context_takeover``).
        self.alone = False
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[bool] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.hs.request)

    def data_received(self, data: bytes) -> None:
        if self.head is not None:
            head = self.head + data
            end = head.find(b"\r\n\r\n")
            if end < 0:
                self.head = head
                return
            self.head = None
            ok = self.hs.check(head[:end])
            if not self.opened.done() and (self.ready_on_open or not ok):
                self.opened.set_result(ok)
            if not ok:
                self.bench.failed += 1
                self.abort()
                return
            agreed = self.hs.negotiated(head[:end])
            if agreed is not None:
                self.inflate = inflater(agreed)
                self.alone = b"server_no_context_takeover" in agreed.lower()
            self.on_open()
            data = head[end + 4 :]
            if not data:
                return
        self.on_data(data)

    def on_open(self) -> None:
        pass

    def on_data(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.opened.done():
            self.opened.set_result(False)
        if not self.closed.done():
            self.closed.set_result(None)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class EchoConn(Conn):
    """Keeps ``depth`` messages in flight: sends one for each one back."""

    def __init__(
        self, bench: Bench, hs: Handshake, out: bytes, back: Expected, depth: int
    ) -> None:
        super().__init__(bench, hs, Stream(back))
        self.out = out
        self.depth = depth

    def on_open(self) -> None:
        self.send(self.depth)

    def send(self, k: int) -> None:
        transport = self.transport
        if transport is None:
            return
        if len(self.out) <= _JOIN_LIMIT:
            transport.write(self.out * k)
        else:
            transport.writelines([self.out] * k)

    def on_data(self, data: bytes) -> None:
        assert self.stream is not None
        k = self.stream.feed(data)
        if k:
            bench = self.bench
            bench.count += k
            if bench.sending:
                self.send(k)


class BroadcastBench(Bench):
    """Keeps ``depth`` broadcasts in flight, counting deliveries at clients.

    Broadcast number ``s`` is sent once broadcast ``s - depth`` has reached
    every client. A server may drop a delivery (to a slow client, say);
    then nothing moves for a while and a watchdog lets one more through,
    counted in ``stalls``. The publisher is one of the clients
    (:class:`BroadcastConn` or :class:`HubConn`), and receives its own;
    with ``others`` (``--publishers``), publications go round them all.
    """

    def __init__(self, clients: int, depth: int, lowat: int) -> None:
        super().__init__()
        self.clients = clients
        self.depth = depth
        self.lowat = lowat
        self.sent = 0
        self.credit = 0
        self.stalls = 0
        self.publisher: Publisher | None = None
        self.others: list[BroadcastConn | HubConn] = []
        self.turn = 0

    def delivered(self, k: int) -> None:
        self.count += k
        if self.count + self.credit >= (self.sent - self.depth + 1) * self.clients:
            self.pump()

    def pump(self) -> None:
        pub = self.publisher
        if pub is None or pub.transport is None:
            return
        n = 0
        while (
            self.sending
            and self.count + self.credit
            >= (self.sent + n - self.depth + 1) * self.clients
            and self.sent + n < _MAX_COUNT
        ):
            n += 1
        if n:
            self.sent += n
            if not self.others:
                pub.publish(n)
                return
            pubs = [pub, *self.others]
            for _ in range(n):
                pubs[self.turn % len(pubs)].publish(1)
                self.turn += 1

    def unstick(self) -> None:
        self.stalls += 1
        self.credit = (self.sent - self.depth + 1) * self.clients - self.count
        self.pump()


class BroadcastConn(Conn):
    def __init__(
        self, bench: BroadcastBench, hs: Handshake, out: bytes, back: Expected
    ) -> None:
        super().__init__(bench, hs, Stream(back))
        self.bcast = bench
        self.out = out

    def on_open(self) -> None:
        lowat = self.bcast.lowat
        if lowat > 1 and self.transport is not None and self.stream is not None:
            sock = self.transport.get_extra_info("socket")
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat * self.stream.frame_len
            )

    def publish(self, n: int) -> None:
        if self.transport is not None:
            self.transport.write(self.out * n)

    def on_data(self, data: bytes) -> None:
        assert self.stream is not None
        k = self.stream.feed(data)
        if k:
            self.bcast.delivered(k)


#: What RFC 7692 §7.2.2 has the receiver append to a compressed message.
_DEFLATE_TAIL = b"\x00\x00\xff\xff"

#: Most decompressed messages a run keeps (:attr:`Handshake.messages`).
_MAX_MESSAGES = 4096


class HubConn(Conn):
    """A client of a hub: subscribes to one channel, then counts deliveries.

    A hub's frames differ from one another (offsets, ids), so they are
    parsed: a data frame holding the payload is a delivery, counted; any
    other frame goes to :meth:`on_message`, where each protocol joins,
    answers pings and checks replies. :attr:`opened` is set once the server
    confirmed the subscription.

    After a delivery, the frames that follow with the very same header
    (opcode and length: offsets change length only at a new digit) are
    counted at once, in C: their headers are compared through strided
    slices, and the payload must occur once per frame among them; anything
    else is parsed frame by frame. So the client stays cheap per delivery.
    A compressed frame (permessage-deflate, ``--deflate``) is decompressed
    and looked at alone; where the server compresses each message alone
    (``server_no_context_takeover``), bytes already decompressed for
    another subscriber are looked up instead.
    """

    ready_on_open = False
    #: The WebSocket endpoint.
    path = "/"

    def __init__(self, bench: Bench, hs: Handshake, payload: bytes) -> None:
        super().__init__(bench, hs, None)
        self.payload = payload
        self.pending = b""
        self.joined = False
        #: Given ``(buffer, end, k)`` where ``buffer[:end]`` holds ``k``
        #: deliveries, instead of :meth:`Bench.delivered` (latency mode).
        self.timed: Callable[[bytes, int, int], None] | None = None

    def on_data(self, data: bytes) -> None:
        # Compressed frames are looked at one by one, in Python: without
        # this, the client, not the server, is what a deflate run measures.
        reads = self.hs.reads if self.alone and self.timed is None else None
        if reads is not None and not self.pending:
            found = reads.get(data, 0)
            if found:
                self.bench.delivered(found)
                return
        buf = self.pending + data if self.pending else data
        size = len(buf)
        marker = self.payload
        pos = found = compressed = frames = 0
        while size - pos >= 2:
            second = buf[pos + 1]
            if second & 0x80:
                self.bench.error("the server sent a masked frame")
                self.abort()
                return
            length = second & 0x7F
            start = pos + 2
            if length == 126:
                start = pos + 4
                if start > size:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
            elif length == 127:
                start = pos + 10
                if start > size:
                    break
                length = int.from_bytes(buf[pos + 2 : start], "big")
            end = start + length
            if end > size:
                break
            opcode = buf[pos] & 0x0F
            frames += 1
            if buf[pos] & 0x40 and self.inflate is not None:
                # Compressed (RSV1): looked at alone, no run counted at once.
                text = self.inflated(buf[start:end])
                if opcode < 3 and marker in text:
                    found += 1
                    compressed += 1
                else:
                    self.on_frame(opcode, text)
                pos = end
                continue
            if opcode < 3 and buf.find(marker, start, end) >= 0:
                found += 1
                frame = end - pos
                run = (size - end) // frame
                if run:
                    for i in range(start - pos):
                        column = buf[end + i : end + run * frame : frame]
                        run -= len(column.lstrip(buf[pos + i : pos + i + 1]))
                        if not run:
                            break
                    if run and buf.count(marker, end, end + run * frame) == run:
                        found += run
                        end += run * frame
            else:
                self.on_frame(opcode, buf[start:end])
            pos = end
        self.pending = buf[pos:] if pos < size else b""
        if reads is not None and buf is data and pos == size and compressed == frames:
            if len(reads) >= _MAX_MESSAGES:
                reads.clear()
            reads[data] = found
        if found:
            timed = self.timed
            if timed is None:
                self.bench.delivered(found)
            else:
                timed(buf, pos, found)

    def inflated(self, body: bytes) -> bytes:
        """The message a compressed frame's ``body`` holds. Compressed
        alone, a message is what its bytes say: the same bytes are
        decompressed once, for the first of their subscribers; else every
        message is, in order."""
        seen = self.hs.messages
        text = seen.get(body) if self.alone else None
        if text is None:
            text = cast(bytes, self.inflate.decompress(body + _DEFLATE_TAIL))
            if self.alone:
                if len(seen) >= _MAX_MESSAGES:
                    seen.clear()
                seen[body] = text
        return text

    def on_frame(self, opcode: int, payload: bytes) -> None:
        if opcode == 0x9:  # ping
            if self.transport is not None:
                self.transport.write(build_frame(payload, 0xA, masked=True))
        elif opcode == 0x8:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
            self.bench.error(f"the server closed a connection: {code} {payload[2:]!r}")
            self.join_done(False)
            self.abort()
        elif opcode == 0x1:
            self.on_message(payload)
        elif opcode != 0xA:
            self.bench.error(f"unexpected frame, opcode {opcode}: {payload[:80]!r}")

    def on_message(self, text: bytes) -> None:
        """A text frame that is not a delivery."""

    def connection_lost(self, exc: Exception | None) -> None:
        # A hub drops a client it finds too slow: say so, it skews the count.
        if self.joined and self.bench.sending:
            self.bench.error(f"a subscribed connection was lost: {exc!r}")
        super().connection_lost(exc)

    def abort(self) -> None:
        self.joined = False  # ours: not a loss
        super().abort()

    def send_text(self, text: bytes) -> None:
        if self.transport is not None:
            self.transport.write(build_frame(text, 0x1, masked=True))

    def join_done(self, ok: bool) -> None:
        self.joined = self.joined or ok
        if not self.opened.done():
            self.opened.set_result(ok)
            if not ok:
                self.abort()

    def publish(self, n: int) -> None:
        raise NotImplementedError

    def publish_payload(self, payload: bytes) -> None:
        """Publish ``payload`` (letters and digits) once."""
        raise NotImplementedError

    def trigger(self, count: int) -> None:
        """Ask the server to publish the payload ``count`` times itself,
        one at a time, each awaited (a burst)."""
        raise NotImplementedError


class TidingsHubConn(HubConn):
    """docs/protocol.md: ``connect``, then ``subscribe``, each waiting for
    its reply; publications are ``publish`` commands, each with its own id."""

    path = "/ws"

    def __init__(self, bench: Bench, hs: Handshake, payload: bytes) -> None:
        super().__init__(bench, hs, payload)
        self.next_id = 3
        channel = json.dumps(HUB_CHANNEL).encode()
        self.publish_head = b',"op":"publish","channel":' + channel + b',"data":"'
        self.publish_tail = self.publish_head + payload + b'"}'

    def on_open(self) -> None:
        self.send_text(b'{"id":1,"op":"connect"}')

    def on_message(self, text: bytes) -> None:
        try:
            reply = json.loads(text)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            self.bench.error(f"not a JSON object from the hub: {text[:80]!r}")
            return
        rid = reply.get("id")
        if "error" in reply:
            self.bench.error(f"hub error for command {rid}: {reply['error']}")
            if not self.joined:
                self.join_done(False)
        elif rid == 1 and not self.joined:
            channel = json.dumps(HUB_CHANNEL)
            self.send_text(f'{{"id":2,"op":"subscribe","channel":{channel}}}'.encode())
        elif rid == 2 and not self.joined:
            self.join_done(True)
        elif not (isinstance(rid, int) and rid >= 3 and "result" in reply):
            self.bench.error(f"unexpected message from the hub: {text[:80]!r}")

    def publish(self, n: int) -> None:
        transport = self.transport
        if transport is None:
            return
        frames = []
        tail = self.publish_tail
        for i in range(self.next_id, self.next_id + n):
            frames.append(build_frame(b'{"id":%d' % i + tail, 0x1, masked=True))
        self.next_id += n
        transport.write(b"".join(frames))

    def publish_payload(self, payload: bytes) -> None:
        if self.transport is not None:
            text = b'{"id":%d' % self.next_id + self.publish_head + payload + b'"}'
            self.next_id += 1
            self.transport.write(build_frame(text, 0x1, masked=True))

    def trigger(self, count: int) -> None:
        # The server's rpc hook (servers.py) publishes; its reply is the count.
        if self.transport is not None:
            head = b'{"id":%d,"op":"rpc","method":"burst",' % self.next_id
            self.next_id += 1
            data = b'"data":{"count":%d,"data":"' % count + self.payload + b'"}}'
            self.send_text(head + data)


class SocketIOConn(HubConn):
    """Socket.IO 5 over Engine.IO 4, WebSocket transport only: wait for the
    open packet (``0{...}``), connect (``40``), then ``join`` with an ack
    (``421["join", room]``, answered ``431[...]``). Engine.IO pings (``2``)
    are answered (``3``)."""

    path = "/socket.io/?EIO=4&transport=websocket"

    def __init__(self, bench: Bench, hs: Handshake, payload: bytes) -> None:
        super().__init__(bench, hs, payload)
        self.step = 0
        room = json.dumps(HUB_ROOM).encode()
        self.join_packet = b'421["join",' + room + b"]"
        self.publish_head = b'42["publish",' + room + b',"'
        self.burst_head = b'42["burst",' + room + b","
        self.out = build_frame(self.publish_head + payload + b'"]', 0x1, masked=True)

    def on_message(self, text: bytes) -> None:
        if text == b"2":
            self.send_text(b"3")
        elif self.step == 0 and text.startswith(b"0{"):
            self.step = 1
            self.send_text(b"40")
        elif self.step == 1 and text.startswith(b"40"):
            self.step = 2
            self.send_text(self.join_packet)
        elif self.step == 2 and text.startswith(b"431"):
            self.step = 3
            self.join_done(True)
        else:
            self.bench.error(f"unexpected packet from socket.io: {text[:80]!r}")
            if not self.joined:
                self.join_done(False)

    def publish(self, n: int) -> None:
        if self.transport is not None:
            self.transport.write(self.out * n)

    def publish_payload(self, payload: bytes) -> None:
        if self.transport is not None:
            text = self.publish_head + payload + b'"]'
            self.transport.write(build_frame(text, 0x1, masked=True))

    def trigger(self, count: int) -> None:
        self.send_text(self.burst_head + b'%d,"' % count + self.payload + b'"]')


#: The hub clients, by server name: Bun speaks socket.io's framing too.
HUB_CONNS: dict[str, type[HubConn]] = {
    "tidings-hub": TidingsHubConn,
    "socketio": SocketIOConn,
    "bun-hub": SocketIOConn,
    "node-socketio": SocketIOConn,
}


class Trigger:
    """Publishes from inside the server: each :meth:`publish` is one
    trigger, through a subscriber's connection, for a burst of ``burst``
    publications (:meth:`HubConn.trigger`)."""

    def __init__(self, conn: HubConn, burst: int) -> None:
        self.conn = conn
        self.burst = burst

    @property
    def transport(self) -> asyncio.Transport | None:
        return self.conn.transport

    def publish(self, n: int) -> None:
        for _ in range(n):
            self.conn.trigger(self.burst)


class ApiPublisher(asyncio.Protocol):
    """A back end: ``POST /api/publish`` on one keep-alive HTTP/1.1
    connection, one request at a time, each sent once the last one's
    response arrived; each :meth:`publish` is ``burst`` more. The body is
    the hub's (``{"channel": ..., "data": ...}``); a peer's endpoint reads
    it alike. A server that answers ``Connection: close`` gets a new
    connection for the next request (said once, in a note): a back end
    cannot keep the connection then."""

    def __init__(
        self, bench: BroadcastBench, host: str, port: int, payload: bytes, burst: int
    ) -> None:
        self.bench = bench
        self.host = host
        self.port = port
        self.burst = burst
        body = json.dumps({"channel": HUB_CHANNEL, "data": payload.decode()}).encode()
        self.request = (
            b"POST /api/publish HTTP/1.1\r\nHost: %s:%d\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (host.encode(), port, len(body))
        ) + body
        #: The connection; between two connections, the closed one, so that
        #: the publisher stays live (see :meth:`BroadcastBench.pump`).
        self.transport: asyncio.Transport | None = None
        self.queued = 0
        self.waiting = False
        self.closing = False
        self.connections = 0
        self.buffer = b""
        self.reconnect: asyncio.Task[Any] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.connections += 1
        self.waiting = self.closing = False
        self.buffer = b""
        self.send()
        self.bench.pump()

    def publish(self, n: int) -> None:
        self.queued += n * self.burst
        self.send()

    def send(self) -> None:
        if self.transport is not None and self.queued and not self.waiting:
            self.queued -= 1
            self.waiting = True
            self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data
        while (end := buf.find(b"\r\n\r\n")) >= 0:
            status, *lines = buf[:end].split(b"\r\n")
            headers = {}
            for line in lines:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip().lower()
            length = headers.get(b"content-length")
            if length is None or not length.isdigit():
                self.bench.error(f"a response without Content-Length: {status!r}")
                self.abort()
                return
            stop = end + 4 + int(length)
            if len(buf) < stop:
                break
            if status.split(b" ", 2)[1:2] != [b"200"]:
                self.bench.error(f"POST /api/publish: {status!r} {buf[end:stop]!r}")
            buf = buf[stop:]
            if headers.get(b"connection") == b"close":
                self.closing = True
                if self.connections == 1:
                    emit(
                        event="note",
                        text="the server closes the connection after each "
                        "response to POST /api/publish (Connection: close): "
                        "the back end opens a new one for each request",
                    )
                break
            self.waiting = False
            self.send()
        self.buffer = buf

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closing and self.bench.sending:
            loop = asyncio.get_running_loop()
            self.reconnect = loop.create_task(
                loop.create_connection(lambda: self, self.host, self.port)
            )
            self.reconnect.add_done_callback(self.reconnected)
            return
        self.transport = None
        if self.bench.sending:
            self.bench.error(f"the publishing HTTP connection was lost: {exc!r}")

    def reconnected(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.transport = None
            self.bench.error(f"no new connection to publish: {task.exception()!r}")

    def abort(self) -> None:
        self.closing = False
        if self.transport is not None:
            self.transport.abort()


#: What publishes in a fan-out: a client, or a burst's trigger or back end.
Publisher = BroadcastConn | HubConn | Trigger | ApiPublisher


class IdleConn(Conn):
    """Opens and then does nothing."""


class HandshakeConn(Conn):
    """Opens, sends a close frame, and waits for the server to close TCP."""

    def __init__(self, bench: Bench, hs: Handshake) -> None:
        super().__init__(bench, hs, None)
        self.ok = False

    def on_open(self) -> None:
        self.ok = True
        if self.transport is not None:
            self.transport.write(_CLOSE)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ok:
            self.bench.count += 1
        else:
            self.bench.failed += 1
        super().connection_lost(exc)


_CLOSE = close_frame(1000)


# -- measuring -----------------------------------------------------------


async def measure(
    bench: Bench,
    *,
    warmup: float,
    duration: float,
    repeat: int,
    server_pid: int | Sequence[int] | None,
    server_core: int | None = None,
    client_core: int | None = None,
    max_foreign: float = 1.0,
    extra: Callable[[], dict[str, Any]] | None = None,
    marks: list[tuple[int, int, bool]] | None = None,
) -> None:
    """Report ``repeat`` windows of ``duration`` seconds after ``warmup``.

    Each gives the count, the CPU time of this process and of the server
    (of all the server's processes, given several pids) per wall second,
    the server's system (kernel) share of it, and ``foreign``: the largest
    share of the server's or the client's core that other processes took
    (the machine may be shared). A window where that is above
    ``max_foreign`` is reported as ``discarded`` and measured again, at most
    ``repeat // 2`` times (once at least). ``marks`` gets each window's
    start and end (``time.time_ns``) and whether it was kept.
    """
    pids = [server_pid] if isinstance(server_pid, int) else list(server_pid or [])
    emit(event="started")
    await asyncio.sleep(warmup)
    rep = retries = 0
    while rep < repeat:
        c0, w0, m0 = bench.count, time.perf_counter(), time.time_ns()
        p0, s0, k0 = time.process_time(), servers_times(pids), core_times()
        await asyncio.sleep(duration)
        c1, w1, m1 = bench.count, time.perf_counter(), time.time_ns()
        p1, s1, k1 = time.process_time(), servers_times(pids), core_times()
        wall = w1 - w0
        client = (p1 - p0) / wall
        server = system = None
        if s0 is not None and s1 is not None:
            # Summed from the two differences, so that system <= server
            # holds in floating point too.
            user, system = s1[0] - s0[0], s1[1] - s0[1]
            server, system = (user + system) / wall, system / wall
        foreign = None
        busy_s = busy_fraction(k0, k1, server_core)
        busy_c = busy_fraction(k0, k1, client_core)
        if busy_s is not None and busy_c is not None and server is not None:
            foreign = max(0.0, busy_s - server, busy_c - client)
        fields: dict[str, Any] = {
            "event": "window",
            "rep": rep,
            "count": c1 - c0,
            "seconds": wall,
            "client_cpu": client,
            "server_cpu": server,
            "server_system": system,
            "foreign": foreign,
        }
        if extra is not None:
            fields.update(extra())
        if (
            foreign is not None
            and foreign > max_foreign
            and retries < max(1, repeat // 2)
        ):
            retries += 1
            fields["event"] = "discarded"
            emit(**fields)
            if marks is not None:
                marks.append((m0, m1, False))
            continue
        emit(**fields)
        if marks is not None:
            marks.append((m0, m1, True))
        rep += 1
    bench.sending = False


def sources(count: int) -> list[str]:
    """``count`` loopback source addresses: 127.0.0.1, 127.0.0.2, ..."""
    return [f"127.0.0.{i}" for i in range(1, max(1, count) + 1)]


async def open_many(
    factory: Callable[[], Conn],
    host: str,
    port: int | Sequence[int],
    count: int,
    *,
    src: Sequence[str],
    concurrency: int,
    timeout: float,
    start: int = 0,
) -> list[Conn]:
    """Open ``count`` connections, ``concurrency`` at a time; return those
    whose handshake succeeded. Given several ports (the nodes of a hub),
    connection ``i`` goes to ``port[i % len(port)]``."""
    ports = [port] if isinstance(port, int) else list(port)
    loop = asyncio.get_running_loop()
    opened: list[Conn] = []
    sem = asyncio.Semaphore(concurrency)
    failures = 0

    async def one(i: int) -> None:
        nonlocal failures
        async with sem:
            conn = factory()
            conn.index = i
            try:
                await asyncio.wait_for(
                    loop.create_connection(
                        lambda: conn,
                        host,
                        ports[i % len(ports)],
                        local_addr=(src[i % len(src)], 0),
                    ),
                    timeout,
                )
                ok = await asyncio.wait_for(conn.opened, timeout)
            except (OSError, TimeoutError) as exc:
                failures += 1
                if failures <= 3:
                    emit(event="note", text=f"connection {i} failed: {exc!r}")
                conn.abort()
                return
            if ok:
                opened.append(conn)
            else:
                failures += 1

    await asyncio.gather(*(one(start + i) for i in range(count)))
    return opened


async def open_clients(
    args: argparse.Namespace,
    factory: Callable[[], Conn],
    port: int | Sequence[int],
    concurrency: int,
) -> list[Conn]:
    """Open ``--conns`` clients (see :func:`open_many`), report how many
    opened, and stop when none did."""
    conns = await open_many(
        factory,
        args.host,
        port,
        args.conns,
        src=sources(args.sources),
        concurrency=concurrency,
        timeout=args.timeout,
    )
    emit(event="opened", conns=len(conns), failed=args.conns - len(conns))
    if not conns:
        raise SystemExit("no connection could be opened")
    return conns


# -- modes ---------------------------------------------------------------


async def run_echo(args: argparse.Namespace) -> None:
    bench = Bench()
    hs = Handshake(args.host, args.port)
    payload = payload_of(args.size)
    out = build_frame(payload, masked=True)
    back = Expected(build_frame(payload), verify=not args.no_verify)
    conns = await open_clients(
        args, lambda: EchoConn(bench, hs, out, back, args.depth), args.port, 100
    )

    def extra() -> dict[str, Any]:
        return {"errors": sum(c.stream.errors for c in conns if c.stream)}

    await measure(
        bench,
        warmup=args.warmup,
        duration=args.duration,
        repeat=args.repeat,
        server_pid=args.server_pid,
        server_core=args.server_core,
        client_core=args.cpu,
        max_foreign=args.max_foreign,
        extra=extra,
    )
    lost = sum(1 for c in conns if c.transport is None)
    emit(event="done", errors=extra()["errors"], lost=lost)
    for c in conns:
        c.abort()


async def run_broadcast(args: argparse.Namespace) -> None:
    bench = BroadcastBench(args.conns, args.depth, args.lowat)
    hs = Handshake(args.host, args.port, args.path or "/")
    payload = payload_of(args.size)  # printable ASCII: valid text too
    opcode = 0x1 if args.text else 0x2
    out = build_frame(payload, opcode, masked=True)
    back = Expected(build_frame(payload, opcode), verify=not args.no_verify)
    # The server registers a client after its handshake: give it a moment.
    await fan_out(args, bench, lambda: BroadcastConn(bench, hs, out, back), 0.5)


async def run_hub(args: argparse.Namespace) -> None:
    """Subscribers of one channel; one of them publishes (``--protocol``)."""
    cls = HUB_CONNS[args.protocol or "tidings-hub"]
    bench = BroadcastBench(args.conns, args.depth, args.lowat)
    hs = Handshake(args.host, args.port, args.path or cls.path, deflate=args.deflate)
    payload = text_payload(args.size)
    # Each client counts as opened once its subscription is confirmed.
    await fan_out(args, bench, lambda: cls(bench, hs, payload), 0.0)


async def run_hub_bursts(args: argparse.Namespace) -> None:
    """Subscribers of one channel, and bursts of ``--burst`` publications,
    one at a time: published by the server itself at a subscriber's
    trigger (``hub-burst``), or posted to ``/api/publish`` (``hub-api``);
    the next burst once the last reached every subscriber."""
    cls = HUB_CONNS[args.protocol or "tidings-hub"]
    bench = BroadcastBench(args.conns, args.depth, args.lowat)
    hs = Handshake(args.host, args.port, cls.path, deflate=args.deflate)
    payload = text_payload(args.size)
    backends: list[ApiPublisher] = []

    async def publisher(first: Conn) -> Publisher:
        assert isinstance(first, HubConn)
        if args.mode == "hub-burst":
            return Trigger(first, args.burst)
        port = node_ports(args)[0]
        loop = asyncio.get_running_loop()
        _, api = await asyncio.wait_for(
            loop.create_connection(
                lambda: ApiPublisher(bench, args.host, port, payload, args.burst),
                args.host,
                port,
            ),
            args.timeout,
        )
        backends.append(api)
        return api

    try:
        await fan_out(
            args,
            bench,
            lambda: cls(bench, hs, payload),
            0.0,
            publisher=publisher,
            per=args.burst,
        )
    finally:
        for api in backends:
            api.abort()


async def fan_out(
    args: argparse.Namespace,
    bench: BroadcastBench,
    factory: Callable[[], Conn],
    settle: float,
    *,
    publisher: Callable[[Conn], Awaitable[Publisher]] | None = None,
    per: int = 1,
) -> None:
    """Open the clients, then keep ``depth`` broadcasts (publications) in
    flight from the first one, counting deliveries at every client. With
    ``publisher``, what it makes of the first client publishes instead,
    each broadcast being ``per`` deliveries to each client (a burst)."""
    conns = await open_clients(args, factory, node_ports(args), 200)
    bench.clients = len(conns) * per
    await asyncio.sleep(settle)
    first, *others = publishers(conns, args)
    assert isinstance(first, BroadcastConn | HubConn)
    if publisher is not None:
        bench.publisher = await publisher(first)
    else:
        bench.publisher = first
        bench.others = [c for c in others if isinstance(c, BroadcastConn | HubConn)]
    last = -1

    async def watchdog() -> None:
        nonlocal last
        while bench.sending:
            await asyncio.sleep(0.2)
            if bench.count == last and bench.sending:
                bench.unstick()
            last = bench.count

    dog = asyncio.ensure_future(watchdog())
    bench.pump()

    def extra() -> dict[str, Any]:
        return {
            "stalls": bench.stalls,
            "errors": bench.errors + sum(c.stream.errors for c in conns if c.stream),
        }

    await measure(
        bench,
        warmup=args.warmup,
        duration=args.duration,
        repeat=args.repeat,
        server_pid=args.server_pid,
        server_core=args.server_core,
        client_core=args.cpu,
        max_foreign=args.max_foreign,
        extra=extra,
    )
    dog.cancel()
    # At most every client got every broadcast: more means a counting bug.
    emit(
        event="done",
        sent=bench.sent,
        delivered=bench.count,
        most=bench.sent * bench.clients,
        **extra(),
    )
    for c in conns:
        c.abort()


# -- latency -------------------------------------------------------------

#: A timed publication: its sequence number and send time (10 and 20
#: digits), then the marker that finds it in the frames.
_SEQ_DIGITS = 10
_TIME_DIGITS = 20

#: Latency histogram: 10 µs buckets up to 1 s; slower ones are kept as they are.
_BUCKET_NS = 10_000
_BUCKETS = 100_000

#: Fixed caps: read records kept (four numbers each), publications sent.
_MAX_RECORDS = 4 * 15_000_000
_MAX_PUBLICATIONS = 10_000_000

#: Kernel receive timestamps (``struct timespec``, CLOCK_REALTIME) on a
#: socket: ``SO_TIMESTAMPNS``, which Python does not name (Linux: 35).
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@qq")

#: Largest read of a subscriber's socket (below malloc's mmap threshold).
_READ = 64 * 1024


class LatencyBench(Bench):
    """Subscribers timing the publications of one of them, sent at a fixed
    rate whatever is in flight (open loop).

    Each publication's payload starts with its sequence number and its send
    time (``time.time_ns()``, taken just before the write), then a fixed
    marker. The subscribers' sockets are read here with ``recvmsg``, which
    also gives the kernel's receive timestamp (``SO_TIMESTAMPNS``): when the
    bytes reached the subscriber's socket, on the same clock (one machine,
    loopback). Each read that brings deliveries is recorded as (arrival,
    read time, first sequence number, last) for each run of consecutive
    sequence numbers in it: one record per read while they come in order.
    The first delivery's embedded send time is checked against the one sent.
    Latencies are worked out after the measurement, so that timing costs the
    client little meanwhile.

    A read that takes several segments gets the newest one's arrival: an
    arrival is never earlier than the truth. The read time adds the time
    this one process took to come round to the socket among all the others.
    """

    def __init__(self, clients: int, rate: float, marker: bytes, cap: int) -> None:
        super().__init__()
        self.clients = clients
        self.rate = rate
        self.marker = marker
        #: Most publications in flight (sent minus delivered ÷ clients): past
        #: it, a due publication is skipped rather than queued without bound.
        self.cap = cap
        self.sent_ns = array("q")  # by sequence number
        self.late_ns = array("q")  # how late after its schedule each was sent
        self.records = array("q")
        self.skipped = 0
        self.unrecorded = 0
        self.untimed = 0
        self.recording = True
        #: The kernel's receive timestamp of the read being handled (0: none).
        self.arrival = 0

    def received(self, buf: bytes, end: int, found: int) -> None:
        """``buf[:end]`` brought ``found`` deliveries: record them."""
        now = time.time_ns()
        arrival = self.arrival
        if not arrival:
            self.untimed += 1
            arrival = now
        self.count += found
        if not self.recording:
            return
        records = self.records
        if len(records) >= _MAX_RECORDS:
            self.unrecorded += found
            return
        marker = self.marker
        step = len(marker)
        i = buf.find(marker, 0, end)
        first = int(buf[i - 30 : i - 20])
        sent = self.sent_ns
        if first >= len(sent) or int(buf[i - 20 : i]) != sent[first]:
            self.error(f"a publication's send time is not the one sent: {first}")
            return
        # Each delivery's sequence number, in the order received (several
        # publishers, or a server that reorders, need not keep send order);
        # recorded as runs of consecutive ones.
        start = prev = first
        for _ in range(found - 1):
            i = buf.find(marker, i + step, end)
            if i < 0:
                break
            seq = int(buf[i - 30 : i - 20])
            if seq != prev + 1:
                records.extend((arrival, now, start, prev))
                start = seq
            prev = seq
        records.extend((arrival, now, start, prev))

    def in_flight(self) -> float:
        return len(self.sent_ns) - self.count / max(self.clients, 1)


def tap(conn: HubConn, bench: LatencyBench) -> socket.socket | None:
    """Read ``conn``'s socket here, with its kernel receive timestamps,
    instead of through its transport (which still writes)."""
    transport = conn.transport
    if transport is None:
        return None
    loop = asyncio.get_running_loop()
    fd = transport.get_extra_info("socket").fileno()
    transport.pause_reading()
    sock = socket.socket(fileno=os.dup(fd))
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    mine = sock.fileno()
    unpack = _TIMESPEC.unpack_from

    def readable() -> None:
        try:
            data, ancillary, _, _ = sock.recvmsg(_READ, 64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(mine)
            if conn.joined and bench.sending:
                bench.error("a subscribed connection was closed")
            return
        arrival = 0
        for level, kind, raw in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = unpack(raw)
                arrival = sec * 1_000_000_000 + nsec
        bench.arrival = arrival
        conn.on_data(data)

    loop.add_reader(mine, readable)
    return sock


def timed_payload(size: int) -> tuple[bytes, Callable[[int, int], bytes]]:
    """The marker, and the function that makes a publication's payload of
    ``size`` bytes from its sequence number and send time."""
    head = _SEQ_DIGITS + _TIME_DIGITS
    if size < head + 16:
        raise SystemExit(f"hub-latency: --size must be at least {head + 16}")
    marker = text_payload(size - head)

    def make(seq: int, sent: int) -> bytes:
        return b"%010d%020d" % (seq, sent) + marker

    return marker, make


async def publish_at_rate(
    bench: LatencyBench,
    pubs: Sequence[HubConn],
    make: Callable[[int, int], bytes],
) -> None:
    """Publish ``bench.rate`` per second on a fixed schedule (monotonic
    clock) until ``bench.sending`` ends (at most :data:`_MAX_PUBLICATIONS`),
    from ``pubs`` in turn. Several due at once (the loop was late) are sent
    at once; one due while more than ``bench.cap`` are in flight is skipped,
    and counted."""
    interval = 1e9 / bench.rate
    start = time.monotonic_ns()
    n = 0
    sent = bench.sent_ns
    while bench.sending and n < _MAX_PUBLICATIONS:
        now = time.monotonic_ns()
        due = start + int(n * interval)
        if due > now:
            await asyncio.sleep((due - now) / 1e9)
            continue
        while due <= now and n < _MAX_PUBLICATIONS:
            if bench.in_flight() >= bench.cap:
                bench.skipped += 1
            else:
                late = time.monotonic_ns() - due
                t = time.time_ns()
                pubs[len(sent) % len(pubs)].publish_payload(make(len(sent), t))
                sent.append(t)
                bench.late_ns.append(late)
            n += 1
            due = start + int(n * interval)
        if any(pub.transport is None for pub in pubs):
            bench.error("a publisher's connection was lost")
            return


class Histogram:
    """Latencies (ns) by 10 µs bucket below 1 s; slower ones as they are,
    each with how many had it."""

    __slots__ = ("counts", "slow")

    def __init__(self) -> None:
        self.counts = [0] * _BUCKETS
        self.slow: dict[int, int] = {}

    def add(self, latency: int, n: int = 1) -> None:
        bucket = latency // _BUCKET_NS
        if bucket < _BUCKETS:
            self.counts[max(bucket, 0)] += n
        else:
            self.slow[latency] = self.slow.get(latency, 0) + n

    def quantiles(self, qs: Sequence[float]) -> list[float]:
        """The ``qs`` quantiles in ms (below 1 s: a bucket's upper edge)."""
        total = sum(self.counts) + sum(self.slow.values())
        if not total:
            return []
        ranks = [max(1, math.ceil(q * total)) for q in qs]
        out: list[float] = []
        seen = 0
        k = 0
        for bucket, n in enumerate(self.counts):
            seen += n
            while k < len(ranks) and seen >= ranks[k]:
                out.append((bucket + 1) * _BUCKET_NS / 1e6)
                k += 1
            if k == len(ranks):
                return out
        for latency, n in sorted(self.slow.items()):
            seen += n
            while k < len(ranks) and seen >= ranks[k]:
                out.append(latency / 1e6)
                k += 1
        return out


#: The quantiles reported: p50, p99, p99.9 and the largest.
_QUANTILES = (0.50, 0.99, 0.999, 1.0)


def latencies(
    bench: LatencyBench, windows: Sequence[tuple[int, int]], drained: int
) -> list[dict[str, Any]]:
    """Per window: the latency figures of the publications sent in it
    (``windows`` and ``drained`` on ``time.time_ns``).

    A delivery that did not arrive by ``drained`` counts as arriving then,
    so that it is among the slowest: where more than 1 % are missing, the
    p99 is a lower bound (``bound``); more than half, the p50 too
    (``bound50``)."""
    sent = bench.sent_ns
    clients = bench.clients
    none = len(windows)
    which = bytearray([none]) * len(sent)
    ranges = []
    for w, (t0, t1) in enumerate(windows):
        a, b = bisect.bisect_left(sent, t0), bisect.bisect_left(sent, t1)
        which[a:b] = bytes([w]) * (b - a)
        ranges.append((a, b))
    arrived = [Histogram() for _ in windows]
    read = [Histogram() for _ in windows]
    got = array("l", bytes(8 * len(sent)))
    records = bench.records
    for r in range(0, len(records), 4):
        t, now, first, last = records[r : r + 4]
        for seq in range(first, min(last + 1, len(sent))):
            w = which[seq]
            if w == none:
                continue
            got[seq] += 1
            arrived[w].add(t - sent[seq])
            read[w].add(now - sent[seq])
    out = []
    for w, (a, b) in enumerate(ranges):
        expected = (b - a) * clients
        delivered = missing = extra = 0
        for seq in range(a, b):
            n = got[seq]
            delivered += n
            if n < clients:
                missing += clients - n
                arrived[w].add(drained - sent[seq], clients - n)
                read[w].add(drained - sent[seq], clients - n)
            elif n > clients:
                extra += n - clients
        figures: dict[str, Any] = {
            "publications": b - a,
            "expected": expected,
            "delivered": delivered,
            "missing": missing,
            "duplicates": extra,
            "bound": missing > 0.01 * expected,
            "bound50": missing > 0.5 * expected,
        }
        q = arrived[w].quantiles(_QUANTILES)
        if q:
            figures.update(p50=q[0], p99=q[1], p999=q[2], max=q[3])
            read_p50, read_p99 = read[w].quantiles(_QUANTILES[:2])
            figures.update(read_p50=read_p50, read_p99=read_p99)
        late = sorted(bench.late_ns[a:b])
        if late:
            figures["send_late_p99"] = (
                late[min(len(late) - 1, int(0.99 * len(late)))] / 1e6
            )
        out.append(figures)
    return out


async def run_hub_latency(args: argparse.Namespace) -> None:
    """Subscribers of one channel; one publishes ``--rate`` per second,
    timed to every subscriber (``--protocol``, ``--ports``)."""
    cls = HUB_CONNS[args.protocol or "tidings-hub"]
    marker, make = timed_payload(args.size)
    cap = args.max_in_flight or max(10, int(args.rate / 4))
    bench = LatencyBench(args.conns, args.rate, marker, cap)
    hs = Handshake(args.host, args.port, cls.path)
    conns = await open_clients(
        args, lambda: cls(bench, hs, marker), node_ports(args), 200
    )
    bench.clients = len(conns)
    taps = []
    for c in conns:
        assert isinstance(c, HubConn)
        c.timed = bench.received
        taps.append(tap(c, bench))
    pubs = [c for c in publishers(conns, args) if isinstance(c, HubConn)]
    # Two clocks: the schedule's (monotonic) and the timestamps' (the wall
    # clock, as the kernel's): how far they drift apart is reported.
    offset = time.time_ns() - time.monotonic_ns()
    task = asyncio.ensure_future(publish_at_rate(bench, pubs, make))
    marks: list[tuple[int, int, bool]] = []
    await measure(
        bench,
        warmup=args.warmup,
        duration=args.duration,
        repeat=args.repeat,
        server_pid=args.server_pid,
        server_core=args.server_core,
        client_core=args.cpu,
        max_foreign=args.max_foreign,
        extra=lambda: {"errors": bench.errors, "skipped": bench.skipped},
        marks=marks,
    )
    await asyncio.wait_for(task, args.timeout)
    # Drain: wait (at most --drain s) for what was sent to arrive everywhere.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.drain
    expected = len(bench.sent_ns) * bench.clients
    while bench.count < expected and loop.time() < deadline:
        await asyncio.sleep(0.01)
    drained = time.time_ns()
    drift = time.time_ns() - time.monotonic_ns() - offset
    bench.recording = False
    for sock in taps:
        if sock is not None:
            loop.remove_reader(sock.fileno())
            sock.close()
    for c in conns:
        c.abort()
    kept = [(t0, t1) for t0, t1, ok in marks if ok]
    t0 = time.process_time()
    for rep, figures in enumerate(latencies(bench, kept, drained)):
        emit(event="latency", rep=rep, **figures)
    emit(
        event="done",
        sent=len(bench.sent_ns),
        skipped=bench.skipped,
        delivered=bench.count,
        most=expected,
        errors=bench.errors,
        unrecorded=bench.unrecorded,
        untimed=bench.untimed,
        cap=cap,
        drain_complete=bench.count >= expected,
        clock_drift_ms=round(drift / 1e6, 3),
        reckoning_cpu=round(time.process_time() - t0, 2),
    )


def publishers(conns: Sequence[Conn], args: argparse.Namespace) -> list[Conn]:
    """``--publishers`` of the connections, each on another node while
    there are nodes without one (``conns`` is in order of opening)."""
    want = max(1, min(args.publishers, len(conns)))
    nodes = max(1, len(node_ports(args)))
    chosen: list[Conn] = []
    seen: set[int] = set()
    for c in conns:
        if len(chosen) == want:
            return chosen
        if c.index % nodes not in seen or len(seen) == nodes:
            seen.add(c.index % nodes)
            chosen.append(c)
    return chosen


def node_ports(args: argparse.Namespace) -> list[int]:
    """The ports of the hub's nodes: ``--ports``, else ``--port``."""
    return list(args.ports) if args.ports else [args.port]


async def run_handshake(args: argparse.Namespace) -> None:
    bench = Bench()
    hs = Handshake(args.host, args.port)
    loop = asyncio.get_running_loop()
    src = sources(args.sources)

    async def worker(i: int) -> None:
        n = 0
        while bench.sending and n < _MAX_COUNT:
            n += 1
            conn = HandshakeConn(bench, hs)
            try:
                await loop.create_connection(
                    lambda c=conn: c,  # type: ignore[misc]
                    args.host,
                    args.port,
                    local_addr=(src[(i + n) % len(src)], 0),
                )
            except OSError as exc:
                bench.failed += 1
                if bench.failed <= 3:
                    emit(event="note", text=f"connect failed: {exc!r}")
                await asyncio.sleep(0.05)
                continue
            timer = loop.call_later(args.timeout, conn.abort)
            await conn.closed
            timer.cancel()

    workers = [asyncio.ensure_future(worker(i)) for i in range(args.conns)]
    await measure(
        bench,
        warmup=args.warmup,
        duration=args.duration,
        repeat=args.repeat,
        server_pid=args.server_pid,
        server_core=args.server_core,
        client_core=args.cpu,
        max_foreign=args.max_foreign,
        extra=lambda: {"failed": bench.failed},
    )
    await asyncio.wait(workers, timeout=args.timeout)
    for w in workers:
        w.cancel()
    emit(event="done", failed=bench.failed)


async def run_idle(args: argparse.Namespace) -> None:
    """Open connections on ``open N`` commands read from stdin; ``quit`` or
    the end of stdin (or ``--timeout`` seconds without a command) ends."""
    bench = Bench()
    src = sources(args.sources)
    held: list[Conn] = []
    factory: Callable[[], Conn]
    if args.protocol is None:
        hs = Handshake(args.host, args.port)
        factory = functools.partial(IdleConn, bench, hs, None)
    else:
        # Each client subscribed (joined) before it counts as opened.
        cls = HUB_CONNS[args.protocol]
        hs = Handshake(args.host, args.port, cls.path, deflate=args.deflate)
        factory = functools.partial(cls, bench, hs, text_payload(args.size))
    # Warm the server up (lazy imports, allocator pools) before its baseline.
    warm = await open_many(
        factory,
        args.host,
        args.port,
        20,
        src=src,
        concurrency=20,
        timeout=args.timeout,
    )
    if args.protocol is not None:
        # And its publish path, compressors included.
        await publish_once(bench, warm, args.timeout)
    for c in warm:
        c.abort()
    await asyncio.sleep(0.3)
    emit(event="warm", fd_limit=resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", 0)
    )
    while True:
        try:
            line = await asyncio.wait_for(reader.readline(), args.timeout)
        except TimeoutError:
            break
        words = line.split()
        if not words or words[0] == b"quit":
            break
        if words[0] == b"open":
            want = int(words[1])
            t0 = time.perf_counter()
            new = await open_many(
                factory,
                args.host,
                args.port,
                want,
                src=src,
                concurrency=args.depth,
                timeout=args.timeout,
                start=len(held),
            )
            held.extend(new)
            alive = sum(1 for c in held if c.transport is not None)
            emit(
                event="opened",
                conns=len(held),
                alive=alive,
                failed=want - len(new),
                seconds=time.perf_counter() - t0,
            )
        elif words[0] == b"publish":
            await publish_once(bench, held, args.timeout)
    for c in held:
        c.abort()
    emit(event="done")


async def publish_once(bench: Bench, held: Sequence[Conn], timeout: float) -> None:
    """One publication from the first subscriber still open, awaited at
    every one of them (at most ``timeout`` s): it leaves in the server what
    a first delivery leaves (a compressor, buffers)."""
    alive = [c for c in held if c.transport is not None]
    before = bench.count
    if alive:
        first = alive[0]
        assert isinstance(first, HubConn)
        first.publish(1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while bench.count - before < len(alive) and loop.time() < deadline:
            await asyncio.sleep(0.01)
    emit(event="published", delivered=bench.count - before, expected=len(alive))


# -- library clients (the client-side comparison) ------------------------


async def run_client(args: argparse.Namespace) -> None:
    """Echo through one library's client: ``depth`` messages sent, then
    ``depth`` received, over one connection, until the windows end."""
    bench = Bench()
    uri = f"ws://{args.host}:{args.port}/"
    message = payload_of(args.size)
    depth = args.depth
    name = args.client
    if name == "raw":
        await run_echo(args)
        return
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def windows() -> None:
        try:
            await measure(
                bench,
                warmup=args.warmup,
                duration=args.duration,
                repeat=args.repeat,
                server_pid=args.server_pid,
                server_core=args.server_core,
                client_core=args.cpu,
                max_foreign=args.max_foreign,
            )
        finally:
            if not done.done():
                done.set_result(None)

    async def pingpong(
        send: Callable[[bytes], Awaitable[object]],
        recv: Callable[[], Awaitable[object]],
    ) -> None:
        task = asyncio.ensure_future(windows())
        while bench.sending and bench.count < _MAX_COUNT:
            for _ in range(depth):
                await send(message)
            for _ in range(depth):
                await recv()
            bench.count += depth
        await task

    if name == "tidings":
        tidings = importlib.import_module("tidings")
        async with tidings.connect(
            uri, compression=None, ping_interval=None, max_message_size=None
        ) as ws:
            emit(event="opened", conns=1, failed=0)
            await pingpong(ws.send, ws.recv)
    elif name == "tidings-cb":
        tidings = importlib.import_module("tidings")

        def on_message(ws: Any, _m: object) -> None:
            bench.count += 1
            if bench.sending:
                ws.send_nowait(message)

        async with tidings.connect(
            uri,
            compression=None,
            ping_interval=None,
            max_message_size=None,
            on_message=on_message,
        ) as ws:
            emit(event="opened", conns=1, failed=0)
            for _ in range(depth):
                ws.send_nowait(message)
            await windows()
    elif name == "websockets":
        client = importlib.import_module("websockets.asyncio.client")
        async with client.connect(
            uri, compression=None, ping_interval=None, max_size=None
        ) as ws:
            emit(event="opened", conns=1, failed=0)
            await pingpong(ws.send, ws.recv)
    elif name == "aiohttp":
        aiohttp = importlib.import_module("aiohttp")
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(uri, compress=0, max_msg_size=0, autoping=True) as ws,
        ):
            emit(event="opened", conns=1, failed=0)
            await pingpong(ws.send_bytes, ws.receive_bytes)
    elif name == "picows":
        picows = importlib.import_module("picows")
        binary = picows.WSMsgType.BINARY
        base: Any = picows.WSListener

        class Listener(base):  # type: ignore[misc]
            def on_ws_connected(self, transport: Any) -> None:
                for _ in range(depth):
                    transport.send(binary, message)

            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                if frame.msg_type is binary:
                    bench.count += 1
                    if bench.sending:
                        transport.send(binary, message)

        transport, _ = await picows.ws_connect(Listener, uri, max_frame_size=1 << 24)
        emit(event="opened", conns=1, failed=0)
        await windows()
        transport.disconnect()
    else:
        raise SystemExit(f"unknown client {name!r}")
    emit(event="done")


MODES: dict[str, Callable[[argparse.Namespace], Awaitable[None]]] = {
    "echo": run_echo,
    "broadcast": run_broadcast,
    "handshake": run_handshake,
    "idle": run_idle,
    "client": run_client,
    "hub": run_hub,
    "hub-latency": run_hub_latency,
    "hub-burst": run_hub_bursts,
    "hub-api": run_hub_bursts,
}


def pid_list(text: str) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]`` (process ids, ports)."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard limit; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def pin(cpu: int | None, nice: int = 0) -> None:
    """Run on core ``cpu`` only; change the scheduling priority by ``nice``
    (below 0 needs root: it takes CPU from everything else)."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})
    if nice:
        with contextlib.suppress(OSError):
            os.nice(nice)


def loop_runner(name: str) -> tuple[str, Callable[[Awaitable[None]], None]]:
    """``(loop name, run function)``: uvloop when asked for and installed."""
    if name in ("auto", "uvloop"):
        try:
            uvloop = importlib.import_module("uvloop")
        except ImportError:
            if name == "uvloop":
                raise
        else:
            return "uvloop", uvloop.run
    return "asyncio", asyncio.run  # type: ignore[return-value]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.harness.loadgen", description=__doc__.split("\n")[0]
    )
    p.add_argument("mode", choices=sorted(MODES))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--conns", type=int, default=1)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--depth", type=int, default=1, help="messages in flight")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--sources", type=int, default=1, help="127.0.0.x addresses")
    p.add_argument(
        "--server-pid",
        type=pid_list,
        help="the server's process, or comma-separated processes (a hub's "
        "nodes and its Redis), whose CPU time is measured",
    )
    p.add_argument(
        "--ports",
        type=pid_list,
        help="comma-separated ports of a hub's nodes: connection i goes to "
        "the (i mod n)-th (hub, hub-latency)",
    )
    p.add_argument(
        "--publishers",
        type=int,
        default=1,
        help="hub, hub-latency, broadcast: publish from this many of the "
        "clients in turn, on different nodes where there are several (1)",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=1000.0,
        help="hub-latency: publications per second",
    )
    p.add_argument(
        "--max-in-flight",
        type=int,
        help="hub-latency: skip a due publication while this many are in "
        "flight (default: a quarter second's worth)",
    )
    p.add_argument(
        "--drain",
        type=float,
        default=3.0,
        help="hub-latency: seconds to wait for deliveries after the last publication",
    )
    p.add_argument("--cpu", type=int, help="pin to this core")
    p.add_argument("--nice", type=int, default=0, help="priority change (os.nice)")
    p.add_argument("--server-core", type=int, help="the core the server runs on")
    p.add_argument(
        "--max-foreign",
        type=float,
        default=1.0,
        help="measure a window again when other processes took more than "
        "this share of either core",
    )
    p.add_argument("--loop", default="auto", choices=["auto", "uvloop", "asyncio"])
    p.add_argument("--client", default="raw")
    p.add_argument(
        "--protocol",
        choices=sorted(HUB_CONNS),
        help="hub: the server's protocol (default tidings-hub); idle: hold "
        "clients subscribed with it",
    )
    p.add_argument(
        "--burst",
        type=int,
        default=200,
        help="hub-burst, hub-api: publications per burst, one at a time (200)",
    )
    p.add_argument("--no-verify", action="store_true")
    p.add_argument(
        "--deflate",
        action="store_true",
        help="hub, hub-burst, hub-api, idle: offer permessage-deflate as "
        "browsers do, and decompress every compressed message",
    )
    p.add_argument(
        "--path",
        help="broadcast: the endpoint's path (/); hub: the WebSocket's path "
        "(the protocol's: /ws, /socket.io/...), as where a hub is mounted",
    )
    p.add_argument(
        "--text",
        action="store_true",
        help="broadcast: text messages instead of binary ones",
    )
    p.add_argument(
        "--lowat",
        type=int,
        default=1,
        help="broadcast: wake a client only once this many frames are queued",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    pin(args.cpu, args.nice)
    fd_limit = raise_fd_limit()
    loop_name, run = loop_runner(args.loop)
    emit(event="hello", loop=loop_name, fd_limit=fd_limit, pid=os.getpid())
    try:
        run(MODES[args.mode](args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        emit(event="error", text=f"{type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
