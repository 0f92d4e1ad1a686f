"""permessage-deflate (RFC 7692): negotiation and per-message compression.

Sans-I/O: this module turns extension parameters into agreed parameters and
bytes into bytes; the connection decides when to call it and sets RSV1.

Defaults, chosen for memory per connection (a hub holds many connections):

* Window: a server left at ``None`` compresses with a 4 KiB window
  (``server_max_window_bits=12``, announced in its response, which RFC 7692
  §7.1.2.1 allows unasked) and, when the client offers
  ``client_max_window_bits`` (browsers do), limits the client to 12 bits too.
  A client left at ``None`` asks for nothing: servers that cannot limit
  their window must decline such an offer (§7.1.2.1), and some answer
  without the parameter, which would fail the connection.
* ``mem_level=5`` (zlib default 8) shrinks the compressor's hash tables.
  Window and memory level cost the compression ratio a few percent on small
  JSON messages (see the websockets benchmark below).
* ``compress_level=6``: zlib's default; it costs CPU, not memory.
* ``min_size=32``: a smaller message can save at most 31 bytes, little
  against the ~70 bytes of TCP/IP, TLS and WebSocket headers its packet pays
  anyway, for a deflate call and sync flush each; and a connection that only
  sends small messages never allocates a compressor.
* Context takeover stays on: reusing the previous messages' window is what
  makes small repetitive messages compress well.

Memory per connection, measured with tracemalloc on zlib 1.2.13, 64-bit
(theory: ``2**(wbits + 2) + 2**(memLevel + 9)`` to compress and ``2**wbits``
plus ~7 KiB of state to decompress; 256 bytes become 512 here, see
``_zlib_wbits``):

=======================================  ==========  ============  =======
connection                               compressor  decompressor  total
=======================================  ==========  ============  =======
zlib defaults (15 bits, memLevel 8)      262 KiB     39 KiB        301 KiB
our server, the client allows 12 bits    38 KiB      11 KiB        49 KiB
our server, the client can't be limited  38 KiB      39 KiB        77 KiB
=======================================  ==========  ============  =======

Both objects are created on first use and dropped after each message when
no context takeover applies, so an idle connection without context takeover
holds neither, and a connection that only receives holds no compressor.
"""

# For comparison, the websockets library (12+): the client offers
# ``client_max_window_bits`` without a value and compresses with memLevel 5;
# the server uses server_max_window_bits=12, limits the client to 12 bits
# only when the client offered the parameter (require_client_max_window_bits
# defaults to False), memLevel 5 and zlib's level 6, which its docs measure
# at 70 KiB per connection against 322 KiB for zlib's defaults.

from __future__ import annotations

import functools
import re
import zlib
from dataclasses import dataclass
from typing import NoReturn

from tidings.exceptions import InvalidHandshake, PayloadTooBig, ProtocolError

__all__ = [
    "EXTENSION_NAME",
    "DeflateConfig",
    "DeflateParams",
    "ExtensionParams",
    "PerMessageDeflate",
    "client_accept",
    "client_offer",
    "max_compressed_size",
    "server_accept",
]

#: Parsed parameters of one extension offer or response, in header order.
ExtensionParams = list[tuple[str, str | None]]

EXTENSION_NAME = "permessage-deflate"

_SERVER_NO_CONTEXT = "server_no_context_takeover"
_CLIENT_NO_CONTEXT = "client_no_context_takeover"
_SERVER_BITS = "server_max_window_bits"
_CLIENT_BITS = "client_max_window_bits"
_NAMES = (_SERVER_NO_CONTEXT, _CLIENT_NO_CONTEXT, _SERVER_BITS, _CLIENT_BITS)

# RFC 7692 §7.1.2: "a decimal integer value without leading zeroes between 8
# to 15, inclusive".
_WINDOW_BITS = re.compile(r"[89]|1[0-5]")
_MAX_BITS = 15
_LEAN_BITS = 12  # what a server left at None uses, see the module docstring

# The empty stored block a sync flush ends with (RFC 7692 §7.2.1, §7.2.2).
_TAIL = b"\x00\x00\xff\xff"

# What one compressed frame may hold beyond deflate's expansion of its data:
# see max_compressed_size.
_FRAME_SLACK = 256


def max_compressed_size(size: int) -> int:
    """The longest compressed frame accepted when the message may still
    grow by ``size`` bytes once inflated.

    ``max_message_size`` counts bytes after decompression, but a frame is
    bounded from its header, before it is buffered or inflated; the exact
    limit is checked again while inflating (:meth:`PerMessageDeflate.decompress`).
    So this is how large deflate can make ``size`` bytes of data that do
    not compress. Deflate expands such data in two ways (RFC 1951):

    * a stored block costs 5 bytes (3 header bits padded to a byte, then
      LEN and NLEN), and zlib ends a block when its symbol buffer of
      ``2**(memLevel + 6)`` entries fills: at memLevel 1, every 127 bytes,
      4% more;
    * from memLevel 2 on, with a window no larger than the hash table
      (``wbits <= memLevel + 7``: websockets' memLevel 5 with a 12-bit
      window, zlib's default memLevel 8 with less than 15 bits), a block's
      input may have slid out of the window before the block ends, so it
      cannot be stored, and a fixed-Huffman block spends 9 bits on each
      byte 144..255 plus 10 bits per block of at least 255 bytes: 13.7%
      more.

    These are zlib's own worst cases, the larger of the two bounds its
    ``deflateBound`` returns when it does not know the settings (zlib
    1.2.12+, ``deflate.c``); zlib is what browsers, Node's ``ws``,
    websockets, Java and .NET compress with. Measured with zlib 1.2.13 over
    every level, memLevel and window on random data, the worst was 5.6%.

    Each frame may also hold ``_FRAME_SLACK`` bytes more: the short block
    and the empty stored block (00 00 ff ff, kept on frames that do not end
    the message, §7.2.1) of a sync flush, a block header whose data the
    next frame carries (§6.1 lets an encoder cut its output anywhere), and
    a few empty blocks that some encoders add. A deflate stream may hold
    any number of empty blocks, so no bound admits every conforming
    encoder; one that pads its frames with more is refused, with 1009.

    The price: a peer may make a connection buffer up to about 14% + 256
    bytes more than the message limit before its message is refused.
    """
    fixed = size + (size >> 3) + (size >> 8) + (size >> 9) + 4
    stored = size + (size >> 5) + (size >> 7) + (size >> 11) + 7
    return max(fixed, stored) + _FRAME_SLACK


@dataclass(frozen=True, slots=True)
class DeflateConfig:
    """What this endpoint wants and accepts; the same class serves both sides.

    Window bits are 8..15. ``None`` is the lean default: a client asks
    nothing (and offers ``client_max_window_bits`` without a value); a
    server compresses with 12 bits and limits the client to 12 bits when the
    client allows it. A number is firm: a client asks the server for it, and
    a server declines offers that don't let it limit the client's window.
    """

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int | None = None
    client_max_window_bits: int | None = None
    compress_level: int = 6
    mem_level: int = 5
    min_size: int = 32

    def __post_init__(self) -> None:
        for name in (_SERVER_BITS, _CLIENT_BITS):
            bits = getattr(self, name)
            if bits is not None and not 8 <= bits <= _MAX_BITS:
                raise ValueError(f"{name} must be 8..15 or None, got {bits}")
        if not -1 <= self.compress_level <= 9:
            raise ValueError(f"compress_level must be -1..9, got {self.compress_level}")
        if not 1 <= self.mem_level <= 9:
            raise ValueError(f"mem_level must be 1..9, got {self.mem_level}")
        if self.min_size < 0:
            raise ValueError(f"min_size must be >= 0, got {self.min_size}")


@dataclass(frozen=True, slots=True)
class DeflateParams:
    """The parameters agreed for one connection."""

    server_no_context_takeover: bool
    client_no_context_takeover: bool
    server_max_window_bits: int  # 8..15
    client_max_window_bits: int  # 8..15


_DEFAULT_CONFIG = DeflateConfig()


def _parse(params: ExtensionParams, *, offer: bool) -> dict[str, int | None]:
    """Map each parameter to its window bits, or None when it has no value.

    Raises ValueError for what RFC 7692 §7 makes a server decline and a
    client fail: an unknown parameter, a duplicate, an invalid value.
    """
    found: dict[str, int | None] = {}
    for name, value in params:
        if name not in _NAMES:
            raise ValueError(f"unknown parameter {name!r}")
        if name in found:
            raise ValueError(f"duplicate parameter {name}")
        if name in (_SERVER_NO_CONTEXT, _CLIENT_NO_CONTEXT):
            if value is not None:
                raise ValueError(f"{name} takes no value, got {value!r} (§7.1.1)")
            found[name] = None
        elif value is None:
            # Only an offer's client_max_window_bits may go without a value.
            if not (offer and name == _CLIENT_BITS):
                raise ValueError(f"{name} needs a value (§7.1.2)")
            found[name] = None
        elif _WINDOW_BITS.fullmatch(value):
            found[name] = int(value)
        else:
            raise ValueError(
                f"{name}={value!r} is not 8..15 without leading zeros (§7.1.2)"
            )
    return found


def client_offer(config: DeflateConfig) -> ExtensionParams:
    """Parameters of the client's permessage-deflate offer."""
    params: ExtensionParams = []
    if config.server_no_context_takeover:
        params.append((_SERVER_NO_CONTEXT, None))
    if config.client_no_context_takeover:
        params.append((_CLIENT_NO_CONTEXT, None))
    if config.server_max_window_bits is not None:
        params.append((_SERVER_BITS, str(config.server_max_window_bits)))
    # Always offered so that the server may limit our window (§7.1.2.2).
    bits = config.client_max_window_bits
    params.append((_CLIENT_BITS, None if bits is None else str(bits)))
    return params


def client_accept(config: DeflateConfig, params: ExtensionParams) -> DeflateParams:
    """Check the server's response to ``client_offer(config)`` (RFC 7692 §7).

    Raises InvalidHandshake, naming the parameter, when the client must fail
    the connection.
    """

    def fail(reason: str) -> NoReturn:
        raise InvalidHandshake(f"permessage-deflate response: {reason}")

    try:
        found = _parse(params, offer=False)
    except ValueError as exc:
        fail(str(exc))
    if config.server_no_context_takeover and _SERVER_NO_CONTEXT not in found:
        fail(f"{_SERVER_NO_CONTEXT} missing though we asked for it (§7.1.1.1)")
    server_bits = found.get(_SERVER_BITS)
    asked = config.server_max_window_bits
    if asked is not None and (server_bits is None or server_bits > asked):
        fail(f"{_SERVER_BITS} must be at most the {asked} we asked for (§7.1.2.1)")
    client_bits = found.get(_CLIENT_BITS)
    offered = config.client_max_window_bits or _MAX_BITS
    if client_bits is not None and client_bits > offered:
        fail(
            f"{_CLIENT_BITS}={client_bits} exceeds the {offered} we offered (§7.1.2.2)"
        )
    return DeflateParams(
        server_no_context_takeover=_SERVER_NO_CONTEXT in found,
        # We keep the promise our hint made even if the server ignored it.
        client_no_context_takeover=(
            _CLIENT_NO_CONTEXT in found or config.client_no_context_takeover
        ),
        server_max_window_bits=server_bits or _MAX_BITS,
        client_max_window_bits=client_bits or offered,
    )


def server_accept(
    config: DeflateConfig, offers: list[ExtensionParams]
) -> tuple[DeflateParams, ExtensionParams] | None:
    """Accept the first acceptable offer, in the client's order (RFC 7692 §5).

    Returns the agreed parameters and the response's parameters, or None
    when every offer must be declined.
    """
    for offer in offers:
        accepted = _accept_offer(config, offer)
        if accepted is not None:
            return accepted
    return None


def _accept_offer(
    config: DeflateConfig, offer: ExtensionParams
) -> tuple[DeflateParams, ExtensionParams] | None:
    try:
        found = _parse(offer, offer=True)
    except ValueError:
        return None  # §7: decline, another offer may do
    response: ExtensionParams = []

    # §7.1.1.1: we can always stop taking over our context, and must say so
    # when asked. §7.1.1.2: echoing the client's hint lets us drop the
    # decompressor between messages.
    server_no_context = config.server_no_context_takeover or _SERVER_NO_CONTEXT in found
    client_no_context = config.client_no_context_takeover or _CLIENT_NO_CONTEXT in found
    if server_no_context:
        response.append((_SERVER_NO_CONTEXT, None))
    if client_no_context:
        response.append((_CLIENT_NO_CONTEXT, None))

    # §7.1.2.1: our window is ours to shrink; if asked, answer with at most
    # the client's value.
    asked = found.get(_SERVER_BITS)
    server_bits = min(config.server_max_window_bits or _LEAN_BITS, asked or _MAX_BITS)
    if asked is not None or server_bits < _MAX_BITS:
        response.append((_SERVER_BITS, str(server_bits)))

    # §7.1.2.2: only an offer with client_max_window_bits lets us limit the
    # client's window, to at most its value.
    client_bits = _MAX_BITS
    if _CLIENT_BITS in found:
        limit = config.client_max_window_bits or _LEAN_BITS
        client_bits = min(limit, found[_CLIENT_BITS] or _MAX_BITS)
        if client_bits < _MAX_BITS:
            response.append((_CLIENT_BITS, str(client_bits)))
    elif (config.client_max_window_bits or _MAX_BITS) < _MAX_BITS:
        return None  # we insist on a limit this offer won't let us set

    params = DeflateParams(
        server_no_context_takeover=server_no_context,
        client_no_context_takeover=client_no_context,
        server_max_window_bits=server_bits,
        client_max_window_bits=client_bits,
    )
    return _AGREED.setdefault(params, params), response


#: The parameters a server agreed to, each kept once rather than once per
#: connection: at most 256 combinations exist.
_AGREED: dict[DeflateParams, DeflateParams] = {}


def _zlib_wbits(bits: int) -> int:
    """zlib's wbits for raw deflate with a 2**bits window, 8 meaning 9.

    zlib refuses to compress raw deflate with an 8-bit window. Using 9 is
    safe: zlib's deflate never emits a distance beyond the window size minus
    262 bytes (MIN_LOOKAHEAD), so 250 < 256 bytes, within what the peer
    agreed. Decompressing with 9 costs 256 bytes and accepts peers that clamp
    8 to 9 the same way.
    """
    return -max(bits, 9)


@functools.lru_cache(maxsize=64)
def _send_key(
    params: DeflateParams, config: DeflateConfig
) -> tuple[DeflateParams, DeflateConfig]:
    # One tuple for every connection alike, not one per connection.
    return params, config


class PerMessageDeflate:
    """Compression state of one connection; ``is_client`` says which side we are.

    After compress or decompress raises, fail the connection: the state is lost.
    """

    __slots__ = (
        "_compressor",
        "_decompressor",
        "_recv_reset",
        "_recv_wbits",
        "_send_reset",
        "_send_wbits",
        "config",
        "is_client",
        "params",
        "send_key",
    )

    def __init__(
        self,
        params: DeflateParams,
        *,
        is_client: bool,
        config: DeflateConfig = _DEFAULT_CONFIG,
    ) -> None:
        self.params = params
        self.is_client = is_client
        self.config = config
        client = (params.client_max_window_bits, params.client_no_context_takeover)
        server = (params.server_max_window_bits, params.server_no_context_takeover)
        ours, theirs = (client, server) if is_client else (server, client)
        self._send_wbits = _zlib_wbits(ours[0])
        self._recv_wbits = _zlib_wbits(theirs[0])
        self._send_reset = ours[1]  # our no_context_takeover
        self._recv_reset = theirs[1]  # the peer's
        #: Where each message this side sends is compressed alone, its bytes
        #: depend on nothing else: connections with the same key may share
        #: them (a broadcast compresses once). None with context takeover.
        self.send_key = _send_key(params, config) if self._send_reset else None
        # Created on first use: a connection that only receives never pays
        # for a compressor, and without context takeover neither outlives
        # its message.
        self._compressor: zlib._Compress | None = None
        self._decompressor: zlib._Decompress | None = None

    def compress(self, data: bytes, fin: bool = True) -> bytes:
        """Compress one frame of a message (RFC 7692 §7.2.1).

        The caller sets RSV1 on the message's first frame only.
        """
        compressor = self._compressor
        if compressor is None:
            compressor = self._compressor = zlib.compressobj(
                self.config.compress_level,
                zlib.DEFLATED,
                self._send_wbits,
                self.config.mem_level,
            )
        # A sync flush per frame lets the peer decompress each frame as it
        # arrives; it ends with the empty stored block 00 00 ff ff.
        out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        if not fin:
            return out
        if self._send_reset:
            self._compressor = None
        return out[: -len(_TAIL)]  # the peer appends it back (§7.2.2)

    def decompress(self, data: bytes, fin: bool, max_size: int | None) -> bytes:
        """Decompress one frame of a compressed message (RFC 7692 §7.2.2).

        ``max_size`` is how many bytes the message may still grow by; beyond
        it, PayloadTooBig is raised having inflated at most ``max_size + 1``
        bytes, however compressible the input. Invalid data raises
        ProtocolError with close code 1002.
        """
        decompressor = self._decompressor
        if decompressor is None:
            decompressor = self._decompressor = zlib.decompressobj(self._recv_wbits)
        if fin:
            data = data + _TAIL  # not +=, which would extend a caller's bytearray
        # Output stops at max_length (0: no limit): more than max_size bytes
        # proves the limit broken; fewer means all the input was consumed.
        max_length = 0 if max_size is None else max(max_size, 0) + 1
        try:
            out = decompressor.decompress(data, max_length)
        except zlib.error as exc:
            # RFC 7692 names no close code; the data breaks the negotiated
            # extension, a protocol error like websockets' (Node's ws uses 1007).
            self._decompressor = None
            raise ProtocolError(
                f"invalid permessage-deflate data: {exc}", 1002
            ) from None
        if max_size is not None and len(out) > max_size:
            self._decompressor = None
            raise PayloadTooBig(
                f"message too big: this frame inflates past the {max_size} bytes "
                "left under the limit"
            )
        # A peer may end a message with a final block (BFINAL, §7.2.3.4); the
        # stream is then over, and any bytes after it are ignored.
        if fin and (self._recv_reset or decompressor.eof):
            self._decompressor = None
        return out
