"""UTF-8 validation of text messages (RFC 6455 §8.1), whole or incremental.

An invalid sequence fails the connection with 1007 at the frame where it
appears, not at the end of the message: CPython's incremental decoder rejects
a byte as soon as no valid continuation is possible.
"""

from __future__ import annotations

import codecs

from ..exceptions import ProtocolError
from . import speedups

__all__ = ["UTF8_ACCEPT", "UTF8_REJECT", "Utf8Decoder", "decode_utf8", "utf8_check"]

_IncrementalDecoder = codecs.getincrementaldecoder("utf-8")


def _invalid(exc: UnicodeDecodeError) -> ProtocolError:
    return ProtocolError(f"invalid UTF-8 in text data: {exc.reason}", code=1007)


def decode_utf8(data: bytes) -> str:
    """Decode a complete text payload; invalid UTF-8 raises 1007."""
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise _invalid(exc) from None


class Utf8Decoder:
    """Decodes a text message fragment by fragment."""

    __slots__ = ("_decoder",)

    def __init__(self) -> None:
        self._decoder = _IncrementalDecoder()

    def decode(self, data: bytes, final: bool) -> str:
        """Decode the next fragment; ``final`` marks the end of the message."""
        try:
            return self._decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            raise _invalid(exc) from None

    def copy(self) -> Utf8Decoder:
        """A decoder in the same state, to look ahead without changing this one."""
        clone = Utf8Decoder()
        clone._decoder.setstate(self._decoder.getstate())
        return clone


# -- validation without decoding ----------------------------------------------

#: :func:`utf8_check` states: valid so far and at a code point boundary, and
#: invalid. Every other state is valid so far but inside a code point.
UTF8_ACCEPT = 0
UTF8_REJECT = -1

# Bytes that leave CPython's decoder in each state of utf8_check. The last,
# the start of a surrogate, can never become valid, yet CPython fails only
# with the byte after it (docs/speedups.md).
_STATE_BYTES = (
    *(b"", b"\xc2", b"\xe1", b"\xf1", b"\xe0", b"\xed", b"\xf0", b"\xf4"),
    b"\xed\xa0",
)


def _state_of(pending: bytes) -> int:
    if not pending:
        return UTF8_ACCEPT
    lead = pending[0]
    if len(pending) == 1:
        special = {0xE0: 4, 0xED: 5, 0xF0: 6, 0xF4: 7}
        return special.get(lead, 1 if lead < 0xE0 else 2 if lead < 0xF0 else 3)
    if lead == 0xED and pending[1] >= 0xA0:
        return 8
    return (3 if lead < 0xF0 else 4) - len(pending)


def utf8_check(
    data: bytes | bytearray | memoryview, state: int = UTF8_ACCEPT, /
) -> int:
    """Validate UTF-8 without decoding it, fragment by fragment.

    Pass the state returned for the previous fragment (:data:`UTF8_ACCEPT`
    for the first). The result is :data:`UTF8_REJECT` from the fragment on
    which :class:`Utf8Decoder` would fail, :data:`UTF8_ACCEPT` at a code point
    boundary, and another value inside a code point: a message that ends there
    is invalid. This is the cheap way to check text that is not decoded.
    """
    if state == UTF8_REJECT:
        return UTF8_REJECT
    decoder = codecs.getincrementaldecoder("utf-8")()
    decoder.setstate((_STATE_BYTES[state], 0))
    try:
        decoder.decode(data, False)
    except UnicodeDecodeError:
        return UTF8_REJECT
    return _state_of(decoder.getstate()[0])


# -- compiled twins (docs/speedups.md) --------------------------------------
# The code above is the reference. When the C extension is in use, its twins
# replace it here; the reference stays reachable under these names for the
# tests that compare them.

_py_utf8_check = utf8_check
_PyIncrementalDecoder = _IncrementalDecoder

if speedups.ACTIVE:
    from . import _speedups

    utf8_check = _speedups.utf8_check
    # Same methods and results as codecs' decoder, without its Python layer.
    _IncrementalDecoder = _speedups.Utf8IncrementalDecoder  # type: ignore[assignment]
