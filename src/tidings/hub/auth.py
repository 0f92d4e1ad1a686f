"""Connection and channel tokens (JWT, HS256), channel permissions and the
API key."""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import jwt

from ..exceptions import TidingsError
from .config import HubConfig, NamespaceConfig
from .hooks import MAX_INFO_BYTES, check_info
from .wire import channel_users

__all__ = [
    "MAX_TOKEN_LENGTH",
    "AuthError",
    "ChannelGrant",
    "Identity",
    "TokenMismatch",
    "Tokens",
    "api_key_matches",
    "can_publish",
    "can_subscribe",
    "channel_grant",
    "decode_token",
    "hook_decides",
    "mint_channel_token",
    "mint_token",
    "not_named",
    "seconds_left",
]


#: The longest token decoded: room for an ``info`` claim of
#: ``MAX_INFO_BYTES`` of UTF-8, which JWT's JSON may escape to three times
#: as many (``\u00e9`` for the two bytes of "é") before base64 adds a
#: third (16 KiB), and for the other claims.
MAX_TOKEN_LENGTH = 24576


class AuthError(TidingsError):
    """A token was refused. The message is safe to show the client: it says
    "invalid token" or "token expired" and nothing about why, except for an
    ``info`` claim too large, which its signer needs to hear of."""


class TokenMismatch(TidingsError):
    """A valid channel token presented for another channel or by another
    user (or by anyone a private user channel does not name): 403."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a token says the client is, and what it may do."""

    user: str
    channels: tuple[str, ...] | None = None
    publish: tuple[str, ...] | None = None
    #: When the token expires (its ``exp``, Unix time).
    expires: float | None = None
    #: The ``info`` claim: any JSON that presence, joins, leaves and the
    #: client's publications carry (hub/hooks.py's ``check_info``).
    info: Any = field(default=None, compare=False)


def mint_token(
    secret: str,
    user: str,
    *,
    channels: Sequence[str] | None = None,
    publish: Sequence[str] | None = None,
    ttl: float = 3600,
    info: Any = None,
) -> str:
    """Sign a token for ``user`` valid ``ttl`` seconds (for development and
    for back ends that hand tokens to their users). ``info`` (any JSON, at
    most ``MAX_INFO_BYTES`` encoded; ValueError beyond) is what presence,
    joins, leaves and the user's publications show of the client."""
    check_info(info)
    claims: dict[str, object] = {"sub": user, "exp": int(time.time() + ttl)}
    if channels is not None:
        claims["channels"] = list(channels)
    if publish is not None:
        claims["publish"] = list(publish)
    if info is not None:
        claims["info"] = info
    return jwt.encode(claims, secret, algorithm="HS256")


@dataclass(frozen=True, slots=True)
class ChannelGrant:
    """What a channel token allows: ``user`` may subscribe to ``channel``
    until ``expires`` (Unix time), showing ``info`` there."""

    user: str
    channel: str
    expires: float
    info: Any = field(default=None, compare=False)


def mint_channel_token(
    secret: str, user: str, channel: str, *, ttl: float = 3600, info: Any = None
) -> str:
    """Sign a channel token: ``user`` may subscribe to ``channel`` (exactly
    that name) for ``ttl`` seconds, whatever its connection's token says,
    showing ``info`` (as in :func:`mint_token`) on that channel."""
    check_info(info)
    claims: dict[str, object] = {
        "sub": user,
        "channel": channel,
        "exp": int(time.time() + ttl),
    }
    if info is not None:
        claims["info"] = info
    return jwt.encode(claims, secret, algorithm="HS256")


def seconds_left(expires: float) -> float:
    """Seconds until ``expires`` (Unix time), 0 once past: a reply's
    ``ttl``, in whole seconds, is its ``int``."""
    return max(0.0, expires - time.time())


def channel_grant(claims: dict[str, Any], user: str, channel: str) -> ChannelGrant:
    """What the verified ``claims`` of a channel token allow the connection
    of ``user`` on ``channel``. Raise :class:`AuthError` for claims that no
    channel token has (no ``channel``, an ``info`` too large) and
    :class:`TokenMismatch` for a token of another channel or user. A
    private user channel stays for the users it names: a token cannot let
    anyone else in (an anonymous connection, user "", never matches)."""
    if not isinstance(claims.get("channel"), str):
        raise AuthError("invalid token: a channel token needs a channel claim")
    info = _info(claims)
    if claims["channel"] != channel:
        raise TokenMismatch(f"the channel token is for another channel than {channel}")
    if claims.get("sub") != user or not user:
        raise TokenMismatch("the channel token is for another user")
    if not_named(Identity(user), channel):
        raise TokenMismatch(f"not allowed to subscribe to {channel}")
    return ChannelGrant(user, channel, float(claims["exp"]), info)


def decode_token(token: object, secret: str | None) -> Identity:
    """Verify an HS256 ``token`` and return its identity; raise
    :class:`AuthError`."""
    return _identity(_verified(token, secret))


class Tokens:
    """The hub's token checks, against the keys its config names: what a
    connection token says of its client, and the claims of any token the
    hub was given (a channel token's, say)."""

    def __init__(self, config: HubConfig) -> None:
        self._secret = config.secret

    async def claims(self, token: object) -> dict[str, Any]:
        """The claims of ``token``, its signature and ``exp`` checked and
        ``sub`` and ``exp`` present; raise :class:`AuthError`."""
        return _verified(token, self._secret)

    async def identity(self, token: object) -> Identity:
        """Who a connection token says its client is, and what it may do;
        raise :class:`AuthError`."""
        return _identity(await self.claims(token))


def _verified(token: object, secret: str | None) -> dict[str, Any]:
    """The claims of an HS256 token signed with ``secret``."""
    if secret is None or not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        raise AuthError("invalid token")
    try:
        claims: dict[str, Any] = jwt.decode(
            token, secret, algorithms=["HS256"], options={"require": ["sub", "exp"]}
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired") from None
    except (jwt.PyJWTError, ValueError):  # ValueError: lone surrogates
        raise AuthError("invalid token") from None
    return claims


def _identity(claims: dict[str, Any]) -> Identity:
    """A connection token's identity, from its verified claims."""
    user = claims.get("sub")
    if not isinstance(user, str) or not user or not _encodable(user):
        raise AuthError("invalid token")
    if "channel" in claims:
        # Else it would connect with no channels or publish claim: every
        # namespace's defaults, which its signer never meant to grant.
        raise AuthError("invalid token: a channel token is not a connection token")
    return Identity(
        user,
        _patterns(claims.get("channels")),
        _patterns(claims.get("publish")),
        float(claims["exp"]),
        _info(claims),
    )


def _info(claims: dict[str, Any]) -> Any:
    """A token's ``info`` claim, checked as ``check_info`` does."""
    info = claims.get("info")
    try:
        check_info(info)
    except ValueError:
        raise AuthError(
            f"invalid token: its info must be JSON of at most {MAX_INFO_BYTES} bytes"
        ) from None
    return info


def _encodable(text: str) -> bool:
    """False for text with lone surrogates, which JSON's parser lets
    through and no client could be sent."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _patterns(value: object) -> tuple[str, ...] | None:
    """A claim's glob patterns, None when absent."""
    if value is None:
        return None
    if isinstance(value, list) and all(isinstance(p, str) for p in value):
        return tuple(value)
    raise AuthError("invalid token")


@lru_cache(maxsize=4096)
def _pattern(glob: str) -> re.Pattern[str]:
    """A token's channel pattern: ``*``, ``?`` and ``[...]`` stay within
    one segment of the name (between ``:`` and ``/``), so that
    ``chat:room1*`` grants ``chat:room12`` but not ``chat:room1/private``;
    ``**`` crosses them."""
    parts = []
    for token in re.split(r"(\*\*|\*|\?|\[!?[^]]+\])", glob):
        if token == "**":
            parts.append(".*")
        elif token == "*":
            parts.append("[^:/]*")
        elif token == "?":
            parts.append("[^:/]")
        elif token.startswith("[!"):
            parts.append(f"[^:/{_in_class(token[2:-1])}]")
        elif token.startswith("["):
            parts.append(f"(?![:/])[{_in_class(token[1:-1])}]")
        else:
            parts.append(re.escape(token))
    return re.compile("".join(parts))


def _in_class(chars: str) -> str:
    """A glob class's characters and ranges (``a-z``), inside a regex
    class."""
    return chars.replace("\\", "\\\\").replace("^", "\\^").replace("[", "\\[")


def can_subscribe(
    identity: Identity | None, namespace: NamespaceConfig, channel: str
) -> bool:
    """May this client subscribe to ``channel`` (and read its presence and
    history)? A private user channel (``chat:dm#alice,bob``) only for the
    users it names, whatever the claims and the namespace say."""
    if channel_users(channel) is not None:
        return not not_named(identity, channel)
    if identity is not None and identity.channels is not None:
        return any(_pattern(p).fullmatch(channel) for p in identity.channels)
    return namespace.allow_anonymous


def can_publish(
    identity: Identity | None, namespace: NamespaceConfig, channel: str
) -> bool:
    """May this client publish to ``channel``? Never to a private user
    channel that does not name it (the HTTP API may)."""
    if not_named(identity, channel):
        return False
    if identity is not None and identity.publish is not None:
        return any(_pattern(p).fullmatch(channel) for p in identity.publish)
    # The user "" is anonymous, whoever let it in (a connect hook may).
    known = identity is not None and identity.user != ""
    return namespace.allow_publish and (known or namespace.allow_anonymous)


def hook_decides(namespace: NamespaceConfig, channel: str) -> bool:
    """Whether the application's subscribe hook decides who subscribes to
    ``channel`` (and reads it): in a ``subscribe_proxy`` namespace, except
    a private user channel, whose name decides without asking."""
    return namespace.subscribe_proxy and channel_users(channel) is None


def not_named(identity: Identity | None, channel: str) -> bool:
    """Whether ``channel`` is a private user channel that does not name this
    client (an anonymous one is named by none)."""
    users = channel_users(channel)
    if users is None:
        return False
    return identity is None or identity.user == "" or identity.user not in users


def api_key_matches(header: str | None, api_key: str) -> bool:
    """Check an ``Authorization: apikey KEY`` header in constant time."""
    scheme, _, given = (header or "").partition(" ")
    expected = api_key.encode()
    return (
        scheme.lower() == "apikey"
        and bool(expected)  # an empty key would match a bare "apikey"
        and hmac.compare_digest(given.strip().encode(), expected)
    )
