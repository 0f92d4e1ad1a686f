"""Fuzz target: the hub's command parser and what it lets through. Any
text is a command or a CommandError (400); a publication's data is then
portable JSON or refused (tidings.hub.wire)."""

from __future__ import annotations

import json

from common import instrumented, main

with instrumented("tidings"):
    from tidings.hub.wire import CommandError, encode_data, parse_command


def target(data: bytes) -> None:
    # What a text frame can hold: valid UTF-8 (JSON escapes may still spell
    # lone surrogates, which the parser lets through).
    text = data.decode("utf-8", errors="replace")
    try:
        command = parse_command(text)
    except CommandError as exc:
        assert exc.code == 400, exc
        return
    try:
        encoded = encode_data(command.data)
    except CommandError as exc:
        assert exc.code == 400, exc
        return
    assert json.loads(encoded.decode("utf-8", errors="strict")) == command.data


if __name__ == "__main__":
    main(target)
