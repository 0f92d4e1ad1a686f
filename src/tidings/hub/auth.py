"""Connection and channel tokens (JWTs: HS256 with the secret; RS256, ES256
or EdDSA with public keys), channel permissions and the API key."""

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
from .keys import (
    JWKS,
    PUBLIC_ALGORITHMS,
    SECRET_ALGORITHMS,
    algorithms,
    load_public_key,
    signing_key,
)
from .wire import MAX_SUBS, channel_users, valid_channel

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
    ``info`` claim too large or a malformed ``subs`` claim, which its
    signer needs to hear of."""


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
    #: The ``subs`` claim: channels the hub subscribes the client to at
    #: connect (server-side subscriptions), with no other check.
    subs: tuple[str, ...] = ()


def mint_token(
    key: str | bytes,
    user: str,
    *,
    channels: Sequence[str] | None = None,
    publish: Sequence[str] | None = None,
    subs: Sequence[str] | None = None,
    ttl: float = 3600,
    info: Any = None,
    algorithm: str | None = None,
    kid: str | None = None,
    issuer: str | None = None,
    audience: str | None = None,
) -> str:
    """Sign a token for ``user`` valid ``ttl`` seconds (for development and
    for back ends that hand tokens to their users). ``info`` (any JSON, at
    most ``MAX_INFO_BYTES`` encoded; ValueError beyond) is what presence,
    joins, leaves and the user's publications show of the client; ``subs``
    are channels the hub subscribes the client to at connect.

    ``key`` is the hub's ``secret`` (HS256), or a PEM private key: RSA
    (RS256, or ``algorithm`` RS384 or RS512), EC P-256 (ES256) or Ed25519
    (EdDSA); ``kid`` names it in a JWKS. ``issuer`` and ``audience`` are
    the ``iss`` and ``aud`` claims. ValueError for a key that cannot sign
    with ``algorithm``."""
    claims: dict[str, object] = {"sub": user}
    for name, value in (("channels", channels), ("publish", publish), ("subs", subs)):
        if value is not None:
            claims[name] = list(value)
    return _sign(
        claims,
        key,
        ttl=ttl,
        info=info,
        algorithm=algorithm,
        kid=kid,
        issuer=issuer,
        audience=audience,
    )


def mint_channel_token(
    key: str | bytes,
    user: str,
    channel: str,
    *,
    ttl: float = 3600,
    info: Any = None,
    algorithm: str | None = None,
    kid: str | None = None,
    issuer: str | None = None,
    audience: str | None = None,
) -> str:
    """Sign a channel token: ``user`` may subscribe to ``channel`` (exactly
    that name) for ``ttl`` seconds, whatever its connection's token says,
    showing ``info`` on that channel. The key and the other arguments are
    :func:`mint_token`'s."""
    claims: dict[str, object] = {"sub": user, "channel": channel}
    return _sign(
        claims,
        key,
        ttl=ttl,
        info=info,
        algorithm=algorithm,
        kid=kid,
        issuer=issuer,
        audience=audience,
    )


def _sign(
    claims: dict[str, object],
    key: str | bytes,
    *,
    ttl: float,
    info: Any,
    algorithm: str | None,
    kid: str | None,
    issuer: str | None,
    audience: str | None,
) -> str:
    """``claims`` with ``exp`` and the optional ones, signed with ``key``."""
    check_info(info)
    signer, algorithm = signing_key(key, algorithm)
    claims["exp"] = int(time.time() + ttl)
    for name, value in (("info", info), ("iss", issuer), ("aud", audience)):
        if value is not None:
            claims[name] = value
    headers = None if kid is None else {"kid": kid}
    return jwt.encode(claims, signer, algorithm=algorithm, headers=headers)


@dataclass(frozen=True, slots=True)
class ChannelGrant:
    """What a channel token allows: ``user`` may subscribe to ``channel``
    until ``expires`` (Unix time), showing ``info`` there."""

    user: str
    channel: str
    expires: float
    info: Any = field(default=None, compare=False)


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
    if secret is None:
        raise AuthError("invalid token")
    return _identity(_verified(_bounded(token), secret, SECRET_ALGORITHMS))


class Tokens:
    """The hub's token checks, against the keys its config names: what a
    connection token says of its client, and the claims of any token the
    hub was given (a channel token's, say).

    The token's ``alg`` picks the key: HS256 the ``secret``; RS256 (RS384,
    RS512), ES256 and EdDSA the ``token_public_key`` or the JWKS key its
    ``kid`` names. The key then allows only the algorithms of its type
    (hub/keys.py), so that no token is checked as its signer did not mean:
    not ``none``, not HS256 with a public key for its secret, not RS256
    against the secret. Without any key, no token is valid."""

    def __init__(self, config: HubConfig) -> None:
        self._secret = config.secret
        self._public_key = None
        if config.token_public_key is not None:
            self._public_key = load_public_key(config.token_public_key)
        url = config.token_jwks_url
        self._jwks = None if url is None else JWKS(url)
        self._issuer = config.token_issuer
        self._audience = config.token_audience

    async def start(self) -> None:
        """Fetch the JWKS, if there is one; one that cannot be fetched is
        logged, and fetched again when a token needs it."""
        if self._jwks is not None:
            await self._jwks.start()

    async def close(self) -> None:
        """Stop a fetch of the JWKS in progress."""
        if self._jwks is not None:
            await self._jwks.close()

    async def claims(self, token: object) -> dict[str, Any]:
        """The claims of ``token``, its signature and ``exp`` checked and
        ``sub`` and ``exp`` present (and ``iss`` and ``aud``, if the hub
        names them); raise :class:`AuthError`, or
        :class:`~tidings.hub.keys.KeysUnavailable` when the JWKS that
        would tell cannot be fetched."""
        token = _bounded(token)
        key, allowed = await self._key(token)
        return _verified(token, key, allowed, self._issuer, self._audience)

    async def identity(self, token: object) -> Identity:
        """Who a connection token says its client is, and what it may do;
        raise :class:`AuthError` (or KeysUnavailable, as :meth:`claims`)."""
        return _identity(await self.claims(token))

    async def _key(self, token: str) -> tuple[Any, tuple[str, ...]]:
        """The key that checks ``token`` and the algorithms it allows."""
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError):
            raise AuthError("invalid token") from None
        alg = header.get("alg")
        if alg in SECRET_ALGORITHMS and self._secret is not None:
            return self._secret, SECRET_ALGORITHMS
        if alg in PUBLIC_ALGORITHMS:
            if self._public_key is not None:
                return self._public_key, algorithms(self._public_key)
            kid = header.get("kid")
            if self._jwks is not None and isinstance(kid, str):
                try:
                    found = await self._jwks.key(kid)
                except KeyError:
                    raise AuthError("invalid token") from None
                return found.key, found.algorithms
        raise AuthError("invalid token")


def _bounded(token: object) -> str:
    """``token``, if a string no longer than a token may be."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        raise AuthError("invalid token")
    return token


def _verified(
    token: str,
    key: Any,
    allowed: tuple[str, ...],
    issuer: str | None = None,
    audience: str | None = None,
) -> dict[str, Any]:
    """The claims of ``token`` checked with ``key``, signed with one of the
    ``allowed`` algorithms, from ``issuer`` to ``audience`` if named."""
    required = ["sub", "exp"]
    required += ["iss"] if issuer is not None else []
    required += ["aud"] if audience is not None else []
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=list(allowed),
            options={"require": required},
            issuer=issuer,
            audience=audience,
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
        _subs(claims.get("subs")),
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


def _subs(value: object) -> tuple[str, ...]:
    """The ``subs`` claim's channels: at most ``MAX_SUBS`` valid names, as
    many as connect carries positions for. Its signer hears what is wrong."""
    if value is None:
        return ()
    if (
        isinstance(value, list)
        and len(value) <= MAX_SUBS
        and all(isinstance(c, str) and valid_channel(c) for c in value)
    ):
        return tuple(dict.fromkeys(value))
    raise AuthError(
        f"invalid token: subs must be a list of at most {MAX_SUBS} channel names"
    )


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
