"""The hub's configuration: defaults, a TOML file, ``TIDINGS_*`` variables
and command-line flags, in that order of precedence."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..exceptions import TidingsError
from .brokers.cluster import CLUSTER_SCHEMES, parse_cluster_url
from .brokers.redis import SENTINEL_SCHEMES, parse_sentinel_url
from .wire import NAMESPACE_RE

__all__ = ["ConfigError", "HubConfig", "NamespaceConfig", "ProxyConfig", "load_config"]


class ConfigError(TidingsError):
    """Invalid configuration; the message names the key and what is allowed."""


@dataclass(frozen=True, slots=True)
class NamespaceConfig:
    """Options of the channels ``name:...``; see docs/protocol.md."""

    allow_anonymous: bool = False
    allow_publish: bool = False
    history_size: int = 0
    history_ttl: float = 0.0
    presence: bool = False
    join_leave: bool = False
    max_subscribers: int | None = None
    #: The application's subscribe (publish) hook decides every subscribe
    #: (publish) here, in place of tokens' claims and ``allow_anonymous``
    #: (``allow_publish``): docs/integrate.md.
    subscribe_proxy: bool = False
    publish_proxy: bool = False


def _demo_namespaces() -> dict[str, NamespaceConfig]:
    # The development default: the demo pages work with nothing configured.
    return {
        "chat": NamespaceConfig(
            allow_anonymous=True,
            allow_publish=True,
            history_size=100,
            history_ttl=3600,
            presence=True,
            join_leave=True,
        ),
        "ticker": NamespaceConfig(
            allow_anonymous=True, history_size=50, history_ttl=600
        ),
        "report": NamespaceConfig(
            allow_anonymous=True, history_size=60, history_ttl=600
        ),
    }


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """The application's endpoints that the hub asks before it acts (the
    ``[proxy]`` table; docs/integrate.md). A hook with no URL is not asked."""

    #: Clients that connect without a token.
    connect: str | None = None
    #: A proxied connection, before its ``expire_at``.
    refresh: str | None = None
    #: Subscribes in namespaces with ``subscribe_proxy``.
    subscribe: str | None = None
    #: Publishes in namespaces with ``publish_proxy``.
    publish: str | None = None
    #: The ``rpc`` command.
    rpc: str | None = None
    #: Seconds a call may take, waiting for its turn included (then 503).
    timeout: float = 1.0
    #: The client's request headers passed on to the application.
    headers: tuple[str, ...] = (
        "Cookie",
        "Authorization",
        "User-Agent",
        "Origin",
        "X-Forwarded-For",
    )
    #: Calls to the application in flight at once, per node.
    max_in_flight: int = 256
    #: Sent as ``X-Tidings-Secret`` with every call, so that the application
    #: knows the call is the hub's.
    secret: str | None = None

    @property
    def enabled(self) -> bool:
        """Whether any hook has an endpoint."""
        return any(getattr(self, hook) for hook in HOOKS)


#: The hooks of :class:`ProxyConfig`, in the order a client meets them.
HOOKS = ("connect", "refresh", "subscribe", "publish", "rpc")


@dataclass(frozen=True, slots=True)
class HubConfig:
    """Everything ``tidings serve`` can be told. The defaults are the
    development setup: loopback, the memory broker, the demo namespaces."""

    host: str = "127.0.0.1"
    port: int = 8000
    tls_cert: str | None = None
    tls_key: str | None = None
    #: HS256 secret for connection tokens. Without it, nor a public key
    #: below, no token is valid: only anonymous clients connect (and those
    #: a connect hook lets in).
    secret: str | None = None
    #: A PEM file of the public key (RSA, EC P-256 or Ed25519) that checks
    #: RS256, ES256 or EdDSA tokens; or a JWKS document's URL, fetched and
    #: kept (hub/keys.py). One or the other, beside the secret or not.
    token_public_key: str | None = None
    token_jwks_url: str | None = None
    #: When set, a token must carry this ``iss`` (``aud``) claim.
    token_issuer: str | None = None
    token_audience: str | None = None
    #: Key for the HTTP API; without one, the API answers loopback only.
    api_key: str | None = None
    #: Without any, the demo's namespaces when ``demo`` is on, and none
    #: (nothing to subscribe to) when it is off.
    namespaces: dict[str, NamespaceConfig] = field(default_factory=dict)
    #: Largest command or publication a client may send, in bytes.
    max_message_size: int = 65536
    #: Bytes queued for one client before it is dropped as too slow (4005).
    max_outbound: int = 1 << 20
    #: Commands per second per connection, and the burst allowed above it.
    rate_limit: float = 100.0
    rate_burst: int = 200
    #: Connections to this node at once (503 beyond); None for no limit.
    max_connections: int | None = 10_000
    #: Channels one connection may be subscribed to at once (error 429).
    max_subscriptions: int = 128
    #: The memory broker's budgets: channels kept (beyond, the least
    #: recently published one not in use is forgotten), and bytes of kept
    #: publications (beyond, the least recently published channels lose
    #: their history). With Redis, Redis's ``maxmemory`` is the budget.
    max_channels: int = 100_000
    max_history_bytes: int = 256 << 20
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    #: ``memory`` (one process), or a Redis URL (``redis://HOST:PORT/DB``,
    #: ``rediss://`` with TLS, ``unix:///PATH``, or Sentinel's
    #: ``redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER[/DB]``) that makes
    #: every node on it one hub, or a Redis Cluster's
    #: (``redis+cluster://HOST:PORT[,HOST:PORT...]``, ``rediss+cluster://``).
    broker: str = "memory"
    #: The Redis password when the broker URL holds none (so that it need
    #: not be on a command line): ``TIDINGS_BROKER_PASSWORD``.
    broker_password: str | None = None
    #: Origins (``https://app.example``) whose pages may open the hub's
    #: WebSocket, beside the hub's own and this machine's.
    allowed_origins: tuple[str, ...] = ()
    #: Seconds a node's presence entries outlive its last refresh: how long
    #: the clients of a node that died stay listed.
    presence_ttl: float = 30.0
    #: Seconds a publish's ``idempotency_key`` is remembered: a publish with
    #: the same key on the same channel within it answers the first one's
    #: position and publishes nothing. 0 turns it off (keys are ignored).
    idempotency_window: float = 300.0
    #: Seconds between comment lines on an idle Server-Sent Events stream,
    #: which keep proxies from closing it and show when its client is gone.
    sse_heartbeat: float = 15.0
    #: The longest a long-poll is held, in seconds; a request may ask for
    #: less (``timeout=``).
    poll_timeout: float = 30.0
    #: Processes serving the port (docs/scaling.md, Workers): 1 is this
    #: process alone; 0 is one per core. More than one need a shared broker.
    workers: int = 1
    #: When set, also answer ``/metrics`` and ``/healthz`` on this port; with
    #: workers, worker ``i`` on ``metrics_port + i``. 0 picks free ports.
    metrics_port: int | None = None
    #: Seconds the workers' parent waits for them to stop after SIGTERM or
    #: SIGINT before it kills them.
    shutdown_timeout: float = 30.0
    #: Serve the demo pages and run the simulated ticker and the report feed.
    demo: bool = True
    #: Where the application is asked (docs/integrate.md).
    proxy: ProxyConfig = field(default_factory=ProxyConfig)

    def __post_init__(self) -> None:
        if not self.namespaces and self.demo:
            # The development default: the demo pages work with nothing set.
            object.__setattr__(self, "namespaces", _demo_namespaces())

    def namespace(self, channel: str) -> NamespaceConfig | None:
        """The options of ``channel``'s namespace, or None if unknown."""
        name, sep, _ = channel.partition(":")
        return self.namespaces.get(name) if sep else None


_ENV_PREFIX = "TIDINGS_"

#: RFC 7518 §3.2: an HS256 key must be at least as long as the hash.
MIN_SECRET_BYTES = 32


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> HubConfig:
    """Build a :class:`HubConfig` from a TOML file, ``TIDINGS_*`` variables
    (e.g. ``TIDINGS_PORT``, ``TIDINGS_SECRET``) and flag values, later ones
    winning. Raises :class:`ConfigError` naming the offending key."""
    values: dict[str, Any] = {}
    if path is not None:
        values.update(_read_toml(Path(path)))
    for name, raw in (env or {}).items():
        if name.startswith(_ENV_PREFIX):
            key = name[len(_ENV_PREFIX) :].lower()
            hook = key.removeprefix("proxy_")
            if key in _FIELDS and key not in _TABLES:
                values[key] = _parse_env(key, raw, _FIELDS[key].type)
            elif key.startswith("proxy_") and hook in _PROXY_FIELDS:
                proxy = values.setdefault("proxy", {})
                if isinstance(proxy, dict):
                    proxy[hook] = _parse_env(key, raw, _PROXY_FIELDS[hook].type)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return _build(values)


_FIELDS = {f.name: f for f in dataclasses.fields(HubConfig)}
_NS_FIELDS = {f.name: f for f in dataclasses.fields(NamespaceConfig)}
_PROXY_FIELDS = {f.name: f for f in dataclasses.fields(ProxyConfig)}
#: Settings that are tables of their own in the TOML file.
_TABLES = ("namespaces", "proxy")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return data


def _parse_env(key: str, raw: str, kind: Any) -> Any:
    if "tuple" in str(kind):
        return [item.strip() for item in raw.split(",") if item.strip()]
    if "bool" in str(kind):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"TIDINGS_{key.upper()} must be true or false, got {raw!r}")
    if "int" in str(kind) or "float" in str(kind):
        try:
            return float(raw) if "float" in str(kind) else int(raw)
        except ValueError:
            raise ConfigError(
                f"TIDINGS_{key.upper()} must be a number, got {raw!r}"
            ) from None
    return raw


def _build(values: dict[str, Any]) -> HubConfig:
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        known = ", ".join(sorted(_FIELDS))
        raise ConfigError(f"unknown setting {unknown[0]!r}; known settings: {known}")
    if "namespaces" in values:
        values["namespaces"] = _namespaces(values["namespaces"])
    if "proxy" in values:
        values["proxy"] = _proxy(values["proxy"])
    for key, value in values.items():
        if key not in _TABLES:
            _check_type(key, value, _FIELDS[key].type)
            if isinstance(value, list):
                values[key] = tuple(value)
    config = HubConfig(**values)
    _check_ranges(config)
    return config


def _proxy(raw: Any) -> ProxyConfig:
    if isinstance(raw, ProxyConfig):
        return raw
    if not isinstance(raw, dict):
        raise ConfigError("proxy must be a table")
    for key, value in raw.items():
        if key not in _PROXY_FIELDS:
            raise ConfigError(
                f"unknown option proxy.{key}; known options: "
                + ", ".join(sorted(_PROXY_FIELDS))
            )
        _check_type(f"proxy.{key}", value, _PROXY_FIELDS[key].type)
    options: dict[str, Any] = {
        key: tuple(value) if isinstance(value, list) else value
        for key, value in raw.items()
    }
    proxy = ProxyConfig(**options)
    for hook in HOOKS:
        url = getattr(proxy, hook)
        if url is not None and not url.startswith(("http://", "https://")):
            raise ConfigError(
                f"proxy.{hook} must be an http:// or https:// URL, got {url!r}"
            )
    if proxy.timeout <= 0:
        raise ConfigError(f"proxy.timeout must be > 0, got {proxy.timeout}")
    if proxy.max_in_flight < 1:
        raise ConfigError(
            f"proxy.max_in_flight must be >= 1, got {proxy.max_in_flight}"
        )
    return proxy


def _namespaces(raw: Any) -> dict[str, NamespaceConfig]:
    if not isinstance(raw, dict):
        raise ConfigError("namespaces must be a table of namespace tables")
    out = {}
    for name, options in raw.items():
        if not NAMESPACE_RE.fullmatch(name):
            raise ConfigError(
                f"namespace name {name!r} must be 1-64 letters, digits, '_', '-' or '.'"
            )
        if not isinstance(options, dict):
            raise ConfigError(f"namespaces.{name} must be a table")
        for key, value in options.items():
            if key not in _NS_FIELDS:
                raise ConfigError(
                    f"unknown option namespaces.{name}.{key}; known options: "
                    + ", ".join(sorted(_NS_FIELDS))
                )
            _check_type(f"namespaces.{name}.{key}", value, _NS_FIELDS[key].type)
        namespace = NamespaceConfig(**options)
        where = f"namespaces.{name}"
        _non_negative(f"{where}.history_size", namespace.history_size)
        _non_negative(f"{where}.history_ttl", namespace.history_ttl)
        if namespace.history_size > 0 and namespace.history_ttl <= 0:
            raise ConfigError(
                f"{where}.history_ttl must be > 0 when history_size is set, so "
                "that idle channels are forgotten"
            )
        if namespace.max_subscribers is not None:
            _non_negative(f"{where}.max_subscribers", namespace.max_subscribers)
        out[name] = namespace
    return out


def _check_type(key: str, value: Any, kind: Any) -> None:
    spec = str(kind)
    if "tuple" in spec:
        ok = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
        allowed = "a list of strings"
    elif "bool" in spec:
        ok = isinstance(value, bool)
        allowed = "true or false"
    elif "float" in spec:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok = ok and math.isfinite(value)
        allowed = "a number"
    elif "int" in spec:
        ok = isinstance(value, int) and not isinstance(value, bool)
        allowed = "an integer"
    else:
        ok = isinstance(value, str)
        allowed = "a string"
    if value is None and "None" in spec:
        return
    if not ok:
        raise ConfigError(f"{key} must be {allowed}, got {value!r}")


def _non_negative(key: str, value: float) -> None:
    if value < 0:
        raise ConfigError(f"{key} must be >= 0, got {value}")


def _check_ranges(config: HubConfig) -> None:
    if not 0 <= config.port <= 65535:
        raise ConfigError(f"port must be 0-65535, got {config.port}")
    if config.secret is not None and len(config.secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"secret must be at least {MIN_SECRET_BYTES} bytes (RFC 7518 §3.2)"
        )
    if config.token_public_key is not None and config.token_jwks_url is not None:
        raise ConfigError("give token_public_key or token_jwks_url, not both")
    url = config.token_jwks_url
    if url is not None and not url.startswith(("http://", "https://")):
        raise ConfigError(
            f"token_jwks_url must be an http:// or https:// URL, got {url!r}"
        )
    for key in ("token_public_key", "token_issuer", "token_audience"):
        if getattr(config, key) == "":
            raise ConfigError(f"{key} must not be empty")
    if config.api_key is not None and not config.api_key.strip():
        # api_key_matches would accept a bare "Authorization: apikey".
        raise ConfigError("api_key must not be empty")
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("tls_cert and tls_key must be given together")
    for key in (
        "max_message_size",
        "max_outbound",
        "rate_burst",
        "max_subscriptions",
        "max_channels",
        "max_history_bytes",
    ):
        if getattr(config, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {getattr(config, key)}")
    if config.broker.startswith(SENTINEL_SCHEMES + CLUSTER_SCHEMES):
        parse = (
            parse_sentinel_url
            if config.broker.startswith(SENTINEL_SCHEMES)
            else parse_cluster_url
        )
        try:
            parse(config.broker)
        except ValueError as exc:
            raise ConfigError(f"broker: {exc}") from None
    elif config.broker != "memory" and not config.broker.startswith(
        ("redis://", "rediss://", "unix://")
    ):
        raise ConfigError(
            f"broker must be memory or a redis://, rediss://, unix://, "
            f"redis+sentinel://, rediss+sentinel://, redis+cluster:// or "
            f"rediss+cluster:// URL, got {config.broker!r}"
        )
    _check_workers(config)
    for key in (
        "rate_limit",
        "ping_interval",
        "ping_timeout",
        "presence_ttl",
        "sse_heartbeat",
        "poll_timeout",
        "shutdown_timeout",
    ):
        if getattr(config, key) <= 0:
            raise ConfigError(f"{key} must be > 0, got {getattr(config, key)}")
    _non_negative("idempotency_window", config.idempotency_window)


def _check_workers(config: HubConfig) -> None:
    _non_negative("workers", config.workers)
    if config.workers != 1 and config.broker == "memory":
        # Each worker would be a hub of its own: a client would see only the
        # publications made on the worker it happened to reach.
        raise ConfigError(
            "workers needs a shared broker: with the memory broker each worker "
            "would be a separate hub that sees only its own clients' "
            "publications; set broker to a Redis URL (--broker "
            "redis://HOST:PORT/DB, docs/scaling.md) or run one worker"
        )
    if config.metrics_port is not None and not 0 <= config.metrics_port <= 65535:
        raise ConfigError(f"metrics_port must be 0-65535, got {config.metrics_port}")
