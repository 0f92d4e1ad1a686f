"""The public keys that check tokens: one PEM file (``token_public_key``) or
a JWKS document (``token_jwks_url``), each key with the algorithms its type
allows and no other (docs/security.md, "Keys").

A JWKS is fetched in a thread (the event loop never waits on it), bounded in
time and size, and kept; it is fetched again when a token names a key that
is not in it, or when it is older than ``JWKS_MAX_AGE``, never more than once
per ``JWKS_REFETCH_INTERVAL``, so that tokens with made-up ``kid`` s cannot
make the hub hammer the document's server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_pem_public_key,
)

from ..exceptions import TidingsError
from .config import ConfigError

__all__ = [
    "JWKS",
    "JWKS_FETCH_TIMEOUT",
    "JWKS_MAX_AGE",
    "JWKS_REFETCH_INTERVAL",
    "MAX_JWKS_BYTES",
    "MAX_JWKS_KEYS",
    "MIN_RSA_BITS",
    "PUBLIC_ALGORITHMS",
    "SECRET_ALGORITHMS",
    "KeysUnavailable",
    "PublicKey",
    "algorithms",
    "load_public_key",
    "signing_key",
]

logger = logging.getLogger("tidings.hub.keys")

#: Seconds one fetch of the JWKS may take, connecting included.
JWKS_FETCH_TIMEOUT = 5.0
#: The largest JWKS read (a key set of dozens of RSA keys is ~20 KiB).
MAX_JWKS_BYTES = 256 << 10
#: Keys of a JWKS kept; those beyond are ignored.
MAX_JWKS_KEYS = 64
#: Seconds between two fetches that tokens cause (an unknown ``kid``, keys
#: too old), whatever the tokens.
JWKS_REFETCH_INTERVAL = 60.0
#: Seconds a fetched JWKS is trusted before a token makes the hub fetch it
#: again: how long a key removed from it stays usable.
JWKS_MAX_AGE = 600.0

#: The shortest RSA key taken (NIST SP 800-131A: shorter ones are broken
#: or soon will be).
MIN_RSA_BITS = 2048

#: The keys taken, as errors name them.
SUPPORTED = "an RSA key (2048 bits or more), an EC P-256 key or an Ed25519 key"

#: A public key as ``cryptography`` loads it.
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


class KeysUnavailable(TidingsError):
    """The JWKS could not be fetched and a token names a key not yet known:
    the client may try again later (503, or close 1013 at connect), as when
    a hook cannot answer."""


def algorithms(key: object) -> tuple[str, ...]:
    """The algorithms a token checked with ``key`` may be signed with:
    pinned by the key's type, never the token's say (none for a key of
    another type, or a private key)."""
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_BITS:
        # The same key with SHA-256, -384 or -512: all as strong.
        return ("RS256", "RS384", "RS512")
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1":
        return ("ES256",)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return ("EdDSA",)
    return ()


#: The algorithms of the ``secret``, and of all public keys.
SECRET_ALGORITHMS = ("HS256",)
PUBLIC_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "EdDSA")


def signing_key(key: str | bytes, algorithm: str | None = None) -> tuple[Any, str]:
    """What signs a token with ``key`` (a secret, or a PEM private key)
    and with which algorithm: ``algorithm`` if the key's type allows it,
    else the type's first (HS256 for a secret); ValueError if it does not
    allow it."""
    pem = key.encode() if isinstance(key, str) else key
    if not pem.lstrip().startswith(b"-----BEGIN"):
        signer: Any = key
        allowed: tuple[str, ...] = SECRET_ALGORITHMS
    else:
        try:
            signer = load_pem_private_key(pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ValueError("the key is not an unencrypted PEM private key") from None
        allowed = algorithms(signer.public_key())
        if not allowed:
            raise ValueError(f"the key is not {SUPPORTED}")
    if algorithm is None:
        return signer, allowed[0]
    if algorithm not in allowed:
        raise ValueError(f"this key signs with {', '.join(allowed)}, not {algorithm!r}")
    return signer, algorithm


def load_public_key(path: str) -> PublicKey:
    """The public key of the PEM file ``path``; raise :class:`ConfigError`
    if it cannot be read or is not a public key of a type :func:`algorithms`
    takes."""
    where = f"token_public_key {path!r}"
    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {where}: {exc.strerror}") from None
    try:
        key = load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(
            f"{where} is not a PEM public key (-----BEGIN PUBLIC KEY-----)"
        ) from None
    if not algorithms(key):
        raise ConfigError(
            f"{where} is not {SUPPORTED}: tokens are checked with RS256, ES256 or EdDSA"
        )
    assert isinstance(key, PublicKey)
    return key


@dataclass(frozen=True, slots=True)
class _Key:
    """A key of the JWKS and the algorithms it checks."""

    key: PublicKey
    algorithms: tuple[str, ...]


class JWKS:
    """The keys of the JWKS at ``url``, by ``kid``: fetched by :meth:`start`,
    then again as tokens need (see the module's docstring)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._keys: dict[str, _Key] = {}
        self._fetched_at = -math.inf  # when the keys were fetched
        self._tried_at = -math.inf  # when a token last caused a fetch
        self._error: str | None = "not fetched yet"
        self._fetching: asyncio.Future[None] | None = None

    async def start(self) -> None:
        """Fetch the keys. A JWKS that cannot be fetched is logged, not
        raised: the hub starts, and fetches it again when a token needs
        it (meanwhile such tokens get 503, not 401)."""
        await self._fetch()

    async def close(self) -> None:
        """Stop a fetch in progress (its thread ends by its own timeout)."""
        if self._fetching is not None:
            self._fetching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fetching

    async def key(self, kid: str) -> _Key:
        """The key ``kid``; raise :class:`KeyError` if the JWKS has none
        such, :class:`KeysUnavailable` if the JWKS could not be fetched to
        tell."""
        now = time.monotonic()
        needed = kid not in self._keys or now - self._fetched_at > JWKS_MAX_AGE
        if needed and (
            self._fetching is not None or now - self._tried_at >= JWKS_REFETCH_INTERVAL
        ):
            if self._fetching is None:
                self._tried_at = now
            # Shielded: a client that leaves does not end the fetch that
            # others wait for.
            await asyncio.shield(self._fetch())
        found = self._keys.get(kid)
        if found is not None:
            # Kept while the JWKS cannot be fetched: its last word.
            return found
        if self._error is not None:
            raise KeysUnavailable("the token keys are unavailable, try again later")
        raise KeyError(kid)

    def _fetch(self) -> asyncio.Future[None]:
        """The fetch in progress, begun if there is none: one for all who
        wait for it."""
        if self._fetching is None:
            self._fetching = asyncio.ensure_future(self._fetch_once())
            self._fetching.add_done_callback(self._fetched)
        return self._fetching

    def _fetched(self, _: object) -> None:
        self._fetching = None

    async def _fetch_once(self) -> None:
        """Fetch the JWKS and keep its keys; on failure, keep the keys
        there were and log why."""
        try:
            async with asyncio.timeout(JWKS_FETCH_TIMEOUT):
                keys = await asyncio.to_thread(_fetch_keys, self.url)
        except (OSError, TimeoutError, ValueError, HTTPException) as exc:
            self._error = str(exc) or type(exc).__name__
            logger.warning("cannot fetch the JWKS at %s: %s", self.url, self._error)
            return
        self._keys = keys
        self._fetched_at = time.monotonic()
        self._error = None


def _fetch_keys(url: str) -> dict[str, _Key]:
    """The usable keys of the JWKS at ``url``, by ``kid`` (in a thread: the
    HTTP request and the keys' parsing both take time). ValueError if
    there is none."""
    with urllib.request.urlopen(url, timeout=JWKS_FETCH_TIMEOUT) as answer:
        body = answer.read(MAX_JWKS_BYTES + 1)
    if len(body) > MAX_JWKS_BYTES:
        raise ValueError(f"the JWKS is larger than {MAX_JWKS_BYTES} bytes")
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise ValueError("the JWKS is not JSON") from None
    found = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(found, list):
        raise ValueError('the JWKS has no "keys" list')
    keys = {}
    for entry in found[:MAX_JWKS_KEYS]:
        if (key := _usable(entry)) is not None:
            keys[entry["kid"]] = key
    if not keys:
        raise ValueError(f"the JWKS has no signing key with a kid that is {SUPPORTED}")
    return keys


def _usable(entry: Any) -> _Key | None:
    """A JWK that signs tokens with an algorithm its type allows (and its
    ``alg`` names, if it has one), with a ``kid``; else None."""
    if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
        return None
    if entry.get("use", "sig") != "sig":
        return None
    try:
        key = jwt.PyJWK(entry).key
    except Exception:  # whatever a malformed JWK makes PyJWT raise
        # (NotImplementedError for "alg": "none", for one)
        return None
    allowed = algorithms(key)
    if "alg" in entry:
        allowed = tuple(alg for alg in allowed if alg == entry["alg"])
    return _Key(key, allowed) if allowed else None
