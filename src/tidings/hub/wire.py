"""The hub's wire protocol: JSON commands in, JSON replies and pushes out.

docs/protocol.md is the contract; this module parses commands strictly and
encodes replies and pushes compactly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .brokers.base import ClientInfo, HistoryResult, Publication

__all__ = [
    "OPS",
    "Command",
    "CommandError",
    "Raw",
    "announced_position",
    "channel_problem",
    "channel_users",
    "encode_data",
    "encode_error",
    "encode_position",
    "encode_pub",
    "encode_push",
    "encode_reply",
    "parse_command",
    "parse_idempotency_key",
    "parse_since",
    "pub_position",
    "reply_position",
]

OPS = frozenset(
    {
        "connect",
        "subscribe",
        "unsubscribe",
        "publish",
        "presence",
        "presence_stats",
        "history",
        "ping",
        "refresh",
        "rpc",
        "sub_refresh",
    }
)
_CHANNEL_OPS = frozenset(
    {
        "subscribe",
        "unsubscribe",
        "publish",
        "presence",
        "presence_stats",
        "history",
        "sub_refresh",
    }
)
#: A namespace's name, which its channels' names begin with.
NAMESPACE_RE = re.compile(r"[A-Za-z0-9_\-.]{1,64}")
_NAME_CHARS = r"[A-Za-z0-9_\-.@/=:]"
#: ``namespace:rest``, and for a private user channel ``#`` and the user
#: ids it is for, separated by commas (``chat:dm#alice,bob``): ``#`` and
#: ``,`` are allowed there only, so that the users a name stands for are
#: never ambiguous. No id is empty.
_REST_RE = re.compile(rf"{_NAME_CHARS}*(?:#{_NAME_CHARS}+(?:,{_NAME_CHARS}+)*)?")
MAX_CHANNEL_LENGTH = 255
_MAX_ID = 2**53  # what a JavaScript number holds exactly
MAX_METHOD_LENGTH = 255
#: Positions one connect command may carry.
MAX_SUBS = 1024
#: The longest idempotency key of a publish, in characters.
MAX_IDEMPOTENCY_KEY = 64


class CommandError(Exception):
    """A command the hub refuses; ``code`` follows docs/protocol.md."""

    def __init__(self, code: int, message: str, id: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.id = id


@dataclass(frozen=True, slots=True)
class Command:
    """One parsed client command."""

    id: int
    op: str
    channel: str = ""
    data: Any = None
    #: connect's and refresh's connection token; subscribe's and
    #: sub_refresh's channel token.
    token: str | None = None
    since: tuple[int, str] | None = None
    limit: int | None = None
    #: The rpc command's method.
    method: str = ""
    #: A connect command's positions of the channels the hub subscribed the
    #: client to (``subscribe`` pushes), to recover them from.
    subs: dict[str, tuple[int, str]] = field(default_factory=dict)
    #: A publish's idempotency key: its repeats publish nothing.
    idempotency_key: str | None = None


def parse_command(text: str) -> Command:
    """Parse and validate one command; raise :class:`CommandError` (400)."""
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError):
        raise CommandError(400, "invalid JSON") from None
    if not isinstance(raw, dict):
        raise CommandError(400, "a command must be a JSON object")
    id = raw.get("id")
    if not isinstance(id, int) or isinstance(id, bool) or not 0 <= id < _MAX_ID:
        raise CommandError(400, "a command needs an integer id")
    op = raw.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise CommandError(
            400, f"unknown op {op!r}" if isinstance(op, str) else "missing op", id
        )
    channel = ""
    if op in _CHANNEL_OPS:
        channel = raw.get("channel")  # type: ignore[assignment]
        problem = channel_problem(channel)
        if problem is not None:
            raise CommandError(400, problem, id)
    token = raw.get("token")
    if token is not None and not isinstance(token, str):
        raise CommandError(400, "token must be a string", id)
    if op in ("refresh", "sub_refresh") and token is None:
        raise CommandError(400, f"{op} needs a token", id)
    since = parse_since(raw["since"], id) if raw.get("since") is not None else None
    limit = raw.get("limit")
    if limit is not None and (
        not isinstance(limit, int) or isinstance(limit, bool) or limit < 0
    ):
        raise CommandError(400, "limit must be a non-negative integer", id)
    if op == "publish" and "data" not in raw:
        raise CommandError(400, "publish needs data", id)
    method = raw.get("method", "") if op == "rpc" else ""
    if op == "rpc" and (
        not isinstance(method, str) or not 0 < len(method) <= MAX_METHOD_LENGTH
    ):
        raise CommandError(
            400, f"rpc needs a method: a string of 1-{MAX_METHOD_LENGTH}", id
        )
    subs = _subs(raw.get("subs"), id) if op == "connect" else {}
    key = raw.get("idempotency_key") if op == "publish" else None
    key = parse_idempotency_key(key, id)
    return Command(
        id, op, channel, raw.get("data"), token, since, limit, method, subs, key
    )


def _subs(value: Any, id: int) -> dict[str, tuple[int, str]]:
    """A connect command's ``subs``: ``{channel: {"offset", "epoch"}}``."""
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_SUBS:
        raise CommandError(
            400, f"subs must be an object of at most {MAX_SUBS} positions", id
        )
    return {
        channel: parse_since(since, id)
        for channel, since in value.items()
        if valid_channel(channel)
    }


def valid_channel(channel: str) -> bool:
    """True for names like ``chat:lobby`` (docs/protocol.md, Channels)."""
    return channel_problem(channel) is None


def channel_problem(channel: object) -> str | None:
    """Why ``channel`` is not a valid channel name, or None if it is."""
    if not isinstance(channel, str) or not channel:
        return "a channel must be a non-empty string"
    if len(channel) > MAX_CHANNEL_LENGTH:
        return f"a channel name has at most {MAX_CHANNEL_LENGTH} characters"
    namespace, colon, rest = channel.partition(":")
    if not colon or NAMESPACE_RE.fullmatch(namespace) is None:
        return (
            f"invalid channel {channel[:100]!r}: a channel is NAMESPACE:NAME, and a "
            "namespace has 1-64 letters, digits, '_', '-' or '.'"
        )
    if _REST_RE.fullmatch(rest) is None:
        return (
            f"invalid channel {channel[:100]!r}: after its namespace, a name has "
            "letters, digits and ': _ - . @ / =', then for a private user channel "
            "'#' and user ids separated by ','"
        )
    return None


def channel_users(channel: str) -> frozenset[str] | None:
    """The users a private user channel (a valid name with ``#``, such as
    ``chat:dm#alice,bob``) is for; None for any other channel."""
    _, private, users = channel.partition("#")
    return frozenset(users.split(",")) if private else None


def parse_since(value: Any, id: int | None = None) -> tuple[int, str]:
    """Validate a ``since`` object: ``{"offset": int, "epoch": str}``."""
    if isinstance(value, dict):
        offset, epoch = value.get("offset"), value.get("epoch")
        if (
            isinstance(offset, int)
            and not isinstance(offset, bool)
            and offset >= 0
            and isinstance(epoch, str)
        ):
            return offset, epoch
    raise CommandError(400, 'since must be {"offset": int, "epoch": str}', id)


def parse_idempotency_key(value: Any, id: int | None = None) -> str | None:
    """Validate a publish's ``idempotency_key`` (None when absent): a string
    of 1 to 64 printable characters (no control characters, and no lone
    surrogates, which UTF-8 cannot carry to Redis)."""
    if value is None:
        return None
    if (
        isinstance(value, str)
        and 0 < len(value) <= MAX_IDEMPOTENCY_KEY
        and value.isprintable()
    ):
        return value
    raise CommandError(
        400,
        f"idempotency_key must be a string of 1-{MAX_IDEMPOTENCY_KEY} printable "
        "characters",
        id,
    )


class Raw(str):
    """Text that is already JSON, spliced into a reply as it is."""

    __slots__ = ()


# json.dumps() with options builds an encoder per call: these are built once.
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_ENCODE_DATA = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


def dumps(value: Any) -> str:
    """Compact JSON; a :class:`Raw` value is taken as it is."""
    if isinstance(value, Raw):
        return value
    return _ENCODE(value)


def encode_data(value: Any) -> bytes:
    """A publication's data as it crosses the broker: JSON, UTF-8, encoded
    once where it enters the hub. Raises :class:`CommandError` (400) for
    what JSON cannot carry to every client: ``NaN``, ``Infinity`` and lone
    surrogates (which Python's parser lets through)."""
    try:
        return _ENCODE_DATA(value).encode()
    except (ValueError, RecursionError):
        raise CommandError(
            400, "data must be JSON without NaN, Infinity or lone surrogates"
        ) from None


def encode_reply(id: int, result: Any) -> str:
    """A successful reply."""
    return f'{{"id":{id},"result":{dumps(result)}}}'


def encode_error(id: int | None, code: int, message: str) -> str:
    """An error reply; without ``id`` when the command's id was unreadable."""
    error = {"error": {"code": code, "message": message}}
    return dumps(error if id is None else {"id": id, **error})


def encode_push(channel: str, kind: str, body: Any) -> str:
    """A push other than a publication: ``kind`` is ``join``, ``leave``,
    ``position``, ``unsubscribe`` or ``subscribe`` (whose body may be
    :class:`Raw`)."""
    return f'{{"channel":{dumps(channel)},"{kind}":{dumps(body)}}}'


def encode_pub(
    channel: str, epoch: str, offset: int, data: bytes, info: ClientInfo | None
) -> str:
    """A publication's push, with its position in the channel."""
    body = _publication(offset, data, info, f',"epoch":{dumps(epoch)}')
    return f'{{"channel":{dumps(channel)},"pub":{body}}}'


def encode_position(
    position: HistoryResult,
    publications: Iterable[Publication] | None = None,
    **flags: bool,
) -> Raw:
    """A subscribe or history result: the channel's position, ``flags``
    such as ``recovered``, and ``publications`` when given."""
    text = dumps({"epoch": position.epoch, "offset": position.offset, **flags})
    if publications is None:
        return Raw(text)
    items = ",".join(_publication(p.offset, p.data, p.info) for p in publications)
    return Raw(f'{text[:-1]},"publications":[{items}]}}')


_PUB_HEAD = re.compile(
    r'\{"channel":"([^"\\]*)","pub":\{"offset":(\d+),"epoch":("(?:[^"\\]|\\.)*")'
)
_SUBSCRIBE_HEAD = re.compile(
    r'\{"channel":"([^"\\]*)","subscribe":\{"epoch":("(?:[^"\\]|\\.)*"),"offset":(\d+)'
)
_REPLY_HEAD = re.compile(
    r'\{"id":(\d+),"result":\{"epoch":("(?:[^"\\]|\\.)*"),"offset":(\d+)'
)


def pub_position(text: str) -> tuple[str, int, str] | None:
    """The channel, offset and epoch of a push :func:`encode_pub` made, or
    None for any other text."""
    match = _PUB_HEAD.match(text)
    if match is None:
        return None
    return match[1], int(match[2]), json.loads(match[3])


def announced_position(text: str) -> tuple[str, int, str] | None:
    """The channel, offset and epoch of a ``subscribe`` push (a
    server-side subscription's), or None for any other text."""
    match = _SUBSCRIBE_HEAD.match(text)
    if match is None:
        return None
    return match[1], int(match[3]), json.loads(match[2])


def reply_position(text: str) -> tuple[int, int, str] | None:
    """The command id, offset and epoch of a reply carrying a channel's
    position (:func:`encode_reply` of :func:`encode_position`), or None."""
    match = _REPLY_HEAD.match(text)
    if match is None:
        return None
    return int(match[1]), int(match[3]), json.loads(match[2])


def _publication(
    offset: int, data: bytes, info: ClientInfo | None, extra: str = ""
) -> str:
    who = "" if info is None else f',"info":{dumps(info.to_json())}'
    return f'{{"offset":{offset}{extra},"data":{data.decode()}{who}}}'
