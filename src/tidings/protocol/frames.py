"""WebSocket frames (RFC 6455 §5): parsing, serializing and masking.

The functions here are the hot paths of the protocol. They are kept small and
free of state so that compiled twins can replace them one for one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import IntEnum

from ..exceptions import PayloadTooBig, ProtocolError
from . import speedups
from .utf8 import decode_utf8

__all__ = [
    "CLOSE_CODES_RECEIVABLE",
    "Frame",
    "FrameParser",
    "Opcode",
    "apply_mask",
    "parse_close",
    "serialize_close",
    "serialize_frame",
]


class Opcode(IntEnum):
    """Frame opcodes defined by RFC 6455 §5.2; every other value is reserved."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


DATA_OPCODES = frozenset({Opcode.CONTINUATION, Opcode.TEXT, Opcode.BINARY})
CONTROL_OPCODES = frozenset({Opcode.CLOSE, Opcode.PING, Opcode.PONG})
_KNOWN_OPCODES = {int(op): op for op in Opcode}

#: RFC 6455 §5.5: control frames carry at most 125 bytes of payload.
MAX_CONTROL_PAYLOAD = 125

RSV1 = 0x40
RSV2 = 0x20
RSV3 = 0x10


@dataclass(slots=True)
class Frame:
    """One frame, unmasked. ``rsv1`` marks a compressed message (RFC 7692)."""

    opcode: Opcode
    payload: bytes
    fin: bool = True
    rsv1: bool = False


def apply_mask(data: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``mask`` repeated (RFC 6455 §5.3).

    Masking and unmasking are the same operation. Python's big integers do
    the XOR for the whole buffer in one C loop.
    """
    n = len(data)
    if n == 0:
        return b""
    key = mask * (n >> 2) + mask[: n & 3]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(
        n, "little"
    )


def serialize_header(
    opcode: int,
    length: int,
    *,
    fin: bool = True,
    rsv1: bool = False,
    mask: bytes | None = None,
) -> bytes:
    """Return a frame header with the minimal length encoding (RFC 6455 §5.2)."""
    b0 = opcode | (0x80 if fin else 0) | (RSV1 if rsv1 else 0)
    mask_bit = 0x80 if mask is not None else 0
    if length < 126:
        header = bytes((b0, mask_bit | length))
    elif length < 1 << 16:
        header = bytes((b0, mask_bit | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((b0, mask_bit | 127)) + length.to_bytes(8, "big")
    return header + mask if mask is not None else header


def build_frame(
    opcode: int, payload: Buffer, fin: bool, rsv1: bool, mask: bytes | None
) -> bytes:
    """Return one frame as one ``bytes``: the header, then the payload,
    masked with the 4-byte ``mask`` unless it is None. The connections'
    hot path, where a header and a join cost more than the frame."""
    header = serialize_header(opcode, len(payload), fin=fin, rsv1=rsv1, mask=mask)
    return header + (bytes(payload) if mask is None else apply_mask(payload, mask))


# Masking keys, drawn from os.urandom 256 at a time rather than one system
# call per frame. Every key is as unpredictable as urandom's output, as RFC
# 6455 §10.3 asks; list.pop() hands each out once, even between threads; a
# forked child drops the parent's unused keys, which the parent still holds.
_KEYS_PER_DRAW = 256
_mask_keys: list[bytes] = []
os.register_at_fork(after_in_child=_mask_keys.clear)


def mask_key() -> bytes:
    """A fresh 4-byte masking key for a client frame (RFC 6455 §5.3)."""
    try:
        return _mask_keys.pop()
    except IndexError:
        block = os.urandom(4 * _KEYS_PER_DRAW)
        _mask_keys.extend([block[i : i + 4] for i in range(4, len(block), 4)])
        return block[:4]


def serialize_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv1: bool = False,
    mask: bool = False,
) -> bytes:
    """Return one complete frame; with ``mask`` a fresh random key is used."""
    return build_frame(opcode, payload, fin, rsv1, mask_key() if mask else None)


def payload_buffer(size: int) -> tuple[bytearray, memoryview]:
    """A buffer to receive ``size`` bytes of a payload into, and a writable
    view of it."""
    buf = bytearray(size)
    return buf, memoryview(buf)


def grow_payload(
    data: bytes | bytearray, filled: int, size: int
) -> tuple[bytearray, memoryview]:
    """A buffer of ``size`` bytes that starts with the first ``filled`` bytes
    of ``data`` (from :func:`payload_buffer` or this function), and a
    writable view of it; ``data`` is not used again."""
    if not 0 <= filled <= min(len(data), size):
        raise ValueError("filled must be within both buffers")
    buf = bytearray(size)
    buf[:filled] = memoryview(data)[:filled]
    return buf, memoryview(buf)


def finish_payload(data: bytes | bytearray, mask: bytes | None) -> bytes:
    """The payload from :func:`payload_buffer`, unmasked with ``mask``."""
    return bytes(data) if mask is None else apply_mask(data, mask)


#: A frame as :meth:`FrameParser.next_raw` returns it.
RawFrame = tuple[Opcode, bytes, bool, bool]

Buffer = bytes | bytearray | memoryview

# A frame this large that is still arriving is received straight into a
# buffer for its payload (FrameParser.get_buffer); smaller ones are read with
# others.
RECEIVE_INTO = 64 * 1024

# That buffer follows the bytes that arrive, not the size the header
# announced, or a 14-byte header would pin max_message_size per connection
# (and a bytearray is zeroed: real memory). Its sizes are the payload's size
# divided by powers of _GROWTH, rounded up. It starts at the largest of them
# that is no more than RECEIVE_INTO or _GROWTH times what already came,
# whichever is more, and each time it fills it is replaced by the next one,
# _GROWTH times larger. So it never holds more than _GROWTH times the bytes
# received (or RECEIVE_INTO), and as its last size is the payload's, the
# copies made in growing add up to at most a third of it (1/4 + 1/16 + ...):
# a 1 MiB payload is copied once at 64 KiB and once at 256 KiB, or less
# when its first read brought more. Sizes that did not lead to the
# payload's (4 times the first read, say) would copy almost all of it again
# for its last few bytes: 1 MiB echoes ran a third slower that way, mostly
# in page faults.
_GROWTH = 4


def _capacity(size: int, filled: int) -> int:
    """How large the buffer of a ``size``-byte payload is made once
    ``filled`` bytes (fewer than ``size``) have arrived."""
    most = max(RECEIVE_INTO, _GROWTH * filled)
    capacity = size
    while capacity > most:
        capacity = -(-capacity // _GROWTH)  # then more than filled
    return capacity


class FrameParser:
    """Cuts frames out of a byte stream and enforces the framing rules.

    ``expect_mask`` is true on a server (clients must mask, §5.1) and false on
    a client (servers must not). ``rsv_allowed`` holds the RSV bits that a
    negotiated extension gives meaning to. Before each :meth:`next_frame` the
    caller may set ``max_payload``: a data frame announcing a longer payload
    fails with :class:`PayloadTooBig` before any of it is buffered.
    """

    __slots__ = (
        "_buf",
        "_filled",
        "_head",
        "_payload",
        "_pos",
        "_ready",
        "_size",
        "_view",
        "expect_mask",
        "incomplete",
        "max_payload",
        "rsv_allowed",
    )

    def __init__(self, *, expect_mask: bool) -> None:
        # Bytes not parsed yet are _buf[_pos:]. Between calls _buf is ours,
        # or empty: an idle connection holds no buffer.
        self._buf: Buffer = b""
        self._pos = 0
        # A large payload still arriving is received through _view straight
        # into _payload, which is then handed out (get_buffer): _filled
        # bytes so far out of _size, in a buffer that grows as they come
        # (see _GROWTH); its frame's (opcode, fin, rsv1, mask) in _head.
        self._payload: bytes | bytearray | None = None
        self._view: memoryview | None = None
        self._filled = 0
        self._size = 0
        self._head: tuple[Opcode, bool, bool, bytes | None] | None = None
        # Such a frame once whole, for the next next_raw() to return.
        self._ready: RawFrame | None = None
        self.expect_mask = expect_mask
        #: After :meth:`next_raw` returned None: whether part of a frame is
        #: held (see :meth:`partial_header`).
        self.incomplete = False
        self.rsv_allowed = 0
        self.max_payload: int | None = None

    def feed(self, data: Buffer) -> None:
        """Add received bytes. The parser may read ``data`` itself, without
        a copy, until :meth:`next_raw` next returns None."""
        if self._view is not None:
            data = memoryview(data)
            while True:
                view = self._view
                filled = self._filled
                n = min(len(data), len(view) - filled)
                view[filled : filled + n] = data[:n]
                data = data[n:]
                self.buffer_updated(n)  # grows the buffer when it is full
                if self._view is None:
                    break  # the payload is whole
                if not data:
                    return
            self._buf = data
        elif self._pos == len(self._buf):
            self._buf = data
        else:
            self._buf = b"".join((memoryview(self._buf)[self._pos :], data))
        self._pos = 0

    def get_buffer(self) -> memoryview | None:
        """Room for more of a large payload still arriving (a frame of
        :data:`RECEIVE_INTO` bytes or more), for an
        ``asyncio.BufferedProtocol`` to receive straight into, then call
        :meth:`buffer_updated`; None when there is none: then :meth:`feed`
        what you read. The room never reaches past the payload's end, and
        may be less than the rest of it: the buffer grows as it fills. The
        view is valid until the next call to another method."""
        view = self._view
        return None if view is None else view[self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were written at the start of :meth:`get_buffer`."""
        assert self._view is not None, "get_buffer() gave no buffer"
        self._filled += nbytes
        if self._filled == len(self._view):
            if self._filled == self._size:
                self._finish()
            else:
                assert self._payload is not None
                self._payload, self._view = grow_payload(
                    self._payload, self._filled, _capacity(self._size, self._filled)
                )

    def _finish(self) -> None:
        assert self._head is not None and self._payload is not None
        opcode, fin, rsv1, mask = self._head
        self._ready = opcode, finish_payload(self._payload, mask), fin, rsv1
        self._payload = self._view = self._head = None

    def _keep(self, size: int | None) -> None:
        """When no whole frame is left: keep the rest of the bytes fed in a
        buffer of our own, as the caller may reuse theirs. ``size`` is the
        length of the frame they begin, once its header is known and valid;
        a large one is received into a buffer for its payload from now on,
        sized for the bytes that came (see _GROWTH)."""
        self.incomplete = True
        if self._view is not None:
            return
        buf = self._buf
        pos = self._pos
        left = len(buf) - pos
        if size is not None and size >= RECEIVE_INTO:
            length = buf[pos + 1] & 0x7F
            header = 10 if length == 127 else 4 if length == 126 else 2
            if self.expect_mask:
                header += 4
            if left >= header:
                b0 = buf[pos]
                mask = bytes(buf[pos + header - 4 : pos + header])
                self._head = (
                    _KNOWN_OPCODES[b0 & 0x0F],
                    bool(b0 & 0x80),
                    bool(b0 & RSV1),
                    mask if self.expect_mask else None,
                )
                filled = left - header
                self._size = size - header  # more than filled: it is incomplete
                self._payload, view = payload_buffer(_capacity(self._size, filled))
                view[:filled] = memoryview(buf)[pos + header :]
                self._filled = filled
                self._view = view
                self._buf = b""
                self._pos = 0
                return
        if left:
            if pos == 0 and type(buf) is bytes:
                return
            self._buf = bytes(memoryview(buf)[pos:])
        else:
            self._buf = b""
            self.incomplete = False
        self._pos = 0

    def next_frame(self) -> Frame | None:
        """Return the next complete frame, or None until more bytes arrive.

        Raises :class:`ProtocolError` as soon as a header breaks a rule,
        before its payload has arrived.
        """
        raw = self.next_raw()
        return None if raw is None else Frame(*raw)

    def next_raw(self) -> RawFrame | None:
        """:meth:`next_frame` as a plain tuple ``(opcode, payload, fin,
        rsv1)``: the connection's hot path, where building a :class:`Frame`
        would cost more than parsing it."""
        ready = self._ready
        if ready is not None:
            self._ready = None
            return ready
        buf = self._buf
        pos = self._pos
        available = len(buf) - pos
        if available < 2:
            self._keep(None)
            return None
        b0 = buf[pos]
        b1 = buf[pos + 1]
        opcode = self._check_first_byte(b0, b1)
        if bool(b1 & 0x80) != self.expect_mask:
            if self.expect_mask:
                raise ProtocolError("client frame is not masked (RFC 6455 §5.1)")
            raise ProtocolError("server frame is masked (RFC 6455 §5.1)")
        length = b1 & 0x7F
        header_size = 2
        if length == 126:
            if available < 4:
                self._keep(None)
                return None
            length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
            header_size = 4
        elif length == 127:
            if available < 10:
                self._keep(None)
                return None
            length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
            if length >> 63:
                raise ProtocolError(
                    "64-bit payload length has its most significant bit set "
                    "(RFC 6455 §5.2)"
                )
            header_size = 10
        if opcode in CONTROL_OPCODES:
            if length > MAX_CONTROL_PAYLOAD:
                raise ProtocolError(
                    f"control frame payload is {length} bytes; "
                    "at most 125 are allowed (RFC 6455 §5.5)"
                )
        elif self.max_payload is not None and length > self.max_payload:
            raise PayloadTooBig(
                f"frame of {length} bytes exceeds the remaining message size "
                f"limit of {self.max_payload} bytes"
            )
        start = pos + header_size + (4 if self.expect_mask else 0)
        end = start + length
        if len(buf) < end:
            self._keep(end - pos)
            return None
        if self.expect_mask:
            payload = apply_mask(
                memoryview(buf)[start:end], bytes(buf[start - 4 : start])
            )
        else:
            payload = bytes(buf[start:end])
        self._pos = end
        return opcode, payload, bool(b0 & 0x80), bool(b0 & RSV1)

    def _partial_start(self) -> int | None:
        """Where the payload of the frame still arriving starts in the
        buffer, or None while its header is incomplete."""
        buf = self._buf
        pos = self._pos
        available = len(buf) - pos
        if available < 2:
            return None
        length = buf[pos + 1] & 0x7F
        header_size = 10 if length == 127 else 4 if length == 126 else 2
        if self.expect_mask:
            header_size += 4
        if available < header_size:
            return None
        return pos + header_size

    def partial_header(self) -> tuple[Opcode, bool] | None:
        """After :meth:`next_raw` returned None: the opcode and RSV1 of the
        frame still arriving, or None while its header is incomplete.

        With :meth:`partial_payload` this lets the connection check the
        UTF-8 of a long text frame as it arrives (RFC 6455 §8.1: fail fast).
        """
        head = self._head
        if head is not None:
            return head[0], head[2]
        # Nothing left over is the common case: it costs no call.
        if len(self._buf) == self._pos or self._partial_start() is None:
            return None
        b0 = self._buf[self._pos]
        return _KNOWN_OPCODES[b0 & 0x0F], bool(b0 & RSV1)

    def partial_payload(self, offset: int) -> bytes:
        """The unmasked payload of the frame still arriving, from ``offset``
        on; call only when :meth:`partial_header` is not None. Nothing is
        consumed."""
        head = self._head
        if head is not None:
            assert self._view is not None
            data = bytes(self._view[offset : self._filled])
            mask = head[3]
            if mask is None:
                return data
        else:
            payload_start = self._partial_start()
            assert payload_start is not None
            buf = self._buf
            data = bytes(buf[payload_start + offset :])
            if not self.expect_mask:
                return data
            mask = bytes(buf[payload_start - 4 : payload_start])
        shift = offset & 3
        return apply_mask(data, mask[shift:] + mask[:shift])

    def _check_first_byte(self, b0: int, b1: int) -> Opcode:
        opcode = _KNOWN_OPCODES.get(b0 & 0x0F)
        if opcode is None:
            raise ProtocolError(f"reserved opcode {b0 & 0x0F:#x} (RFC 6455 §5.2)")
        rsv = b0 & 0x70 & ~self.rsv_allowed
        if rsv:
            raise ProtocolError(
                f"RSV bits {rsv >> 4:#05b} set without a negotiated extension "
                "(RFC 6455 §5.2)"
            )
        if opcode in CONTROL_OPCODES:
            if not b0 & 0x80:
                raise ProtocolError("fragmented control frame (RFC 6455 §5.5)")
            if b0 & RSV1:
                raise ProtocolError(
                    "RSV1 set on a control frame; control frames are never "
                    "compressed (RFC 7692 §6.1)"
                )
        return opcode


# RFC 6455 §7.4.1 and the IANA registry: codes a peer may put in a close frame.
# 1004, 1005, 1006 and 1015 are reserved and must never appear on the wire.
CLOSE_CODES_RECEIVABLE = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
)


def is_valid_close_code(code: int) -> bool:
    """True for codes that may appear in a close frame (RFC 6455 §7.4)."""
    return code in CLOSE_CODES_RECEIVABLE or 3000 <= code <= 4999


def parse_close(payload: bytes) -> tuple[int, str]:
    """Return the code and reason of a close frame's payload (RFC 6455 §5.5.1).

    An empty payload means "no status code" and gives 1005.
    """
    if not payload:
        return 1005, ""
    if len(payload) == 1:
        raise ProtocolError("close frame payload of 1 byte (RFC 6455 §5.5.1)")
    code = int.from_bytes(payload[:2], "big")
    if not is_valid_close_code(code):
        raise ProtocolError(f"invalid close code {code} (RFC 6455 §7.4)")
    return code, decode_utf8(payload[2:])


def serialize_close(code: int, reason: str = "") -> bytes:
    """Return a close frame's payload; 1005 means an empty payload."""
    if code == 1005:
        if reason:
            raise ValueError("a close reason needs a close code")
        return b""
    if not is_valid_close_code(code):
        raise ValueError(
            f"close code {code} may not be sent: use 1000-1003, 1007-1014 or 3000-4999"
        )
    data = code.to_bytes(2, "big") + reason.encode()
    if len(data) > MAX_CONTROL_PAYLOAD:
        raise ValueError("close reason is longer than 123 bytes of UTF-8")
    return data


def parse_messages(
    buf: Buffer, expect_mask: bool, max_payload: int | None
) -> list[str | bytes] | None:
    """The messages in ``buf`` when it holds nothing but whole, final,
    uncompressed text and binary frames, masked as ``expect_mask`` says,
    each within ``max_payload``, text valid UTF-8: ``str`` for text and
    ``bytes`` for binary. For anything else (a control frame, a fragment,
    RSV bits, an incomplete frame, a protocol error) None: the caller then
    parses ``buf`` frame by frame as usual. Never raises for what a peer
    sends. The connections' fast path for the usual read."""
    parser = FrameParser(expect_mask=expect_mask)
    parser.max_payload = max_payload
    parser.feed(buf)
    messages: list[str | bytes] = []
    try:
        while (frame := _py_next_raw(parser)) is not None:
            opcode, payload, fin, rsv1 = frame
            if not fin or rsv1 or opcode not in (Opcode.TEXT, Opcode.BINARY):
                return None
            messages.append(decode_utf8(payload) if opcode is Opcode.TEXT else payload)
    except ProtocolError:
        return None
    return None if parser.incomplete else messages


# -- compiled twins (docs/speedups.md) --------------------------------------
# The code above is the reference. When the C extension is in use, its twins
# replace apply_mask, build_frame, parse_messages, payload_buffer,
# grow_payload, finish_payload and FrameParser.next_raw here, for every caller; the
# reference stays reachable under these names for the tests that compare them.

_py_apply_mask = apply_mask
_py_build_frame = build_frame
_py_parse_messages = parse_messages
_py_next_raw = FrameParser.next_raw
_py_payload_buffer = payload_buffer
_py_grow_payload = grow_payload
_py_finish_payload = finish_payload


def _c_next_raw(self: FrameParser) -> RawFrame | None:
    """:meth:`FrameParser.next_raw`, parsing and unmasking in C."""
    ready = self._ready
    if ready is not None:
        self._ready = None
        return ready
    result = _speedups.parse_frame(
        self._buf, self._pos, self.expect_mask, self.rsv_allowed, self.max_payload
    )
    if not isinstance(result, tuple):
        if result is None and self._pos == len(self._buf) and self._view is None:
            # Nothing left over, as at the end of most reads: _keep's result
            # without its call.
            self._buf = b""
            self._pos = 0
            self.incomplete = False
        else:
            self._keep(result)
        return None
    opcode, payload, fin, rsv1, self._pos = result
    return _KNOWN_OPCODES[opcode], payload, fin, rsv1


if speedups.ACTIVE:
    from . import _speedups

    apply_mask = _speedups.apply_mask
    build_frame = _speedups.build_frame  # type: ignore[assignment]
    parse_messages = _speedups.parse_messages  # type: ignore[assignment]
    payload_buffer = _speedups.payload_buffer  # type: ignore[assignment]
    grow_payload = _speedups.grow_payload  # type: ignore[assignment]
    finish_payload = _speedups.finish_payload  # type: ignore[assignment]
    FrameParser.next_raw = _c_next_raw  # type: ignore[method-assign]
