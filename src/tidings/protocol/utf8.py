"""UTF-8 validation of text messages (RFC 6455 §8.1), whole or incremental.

An invalid sequence fails the connection with 1007 at the frame where it
appears, not at the end of the message: CPython's incremental decoder rejects
a byte as soon as no valid continuation is possible.
"""

from __future__ import annotations

import codecs

from ..exceptions import ProtocolError

__all__ = ["Utf8Decoder", "decode_utf8"]

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
