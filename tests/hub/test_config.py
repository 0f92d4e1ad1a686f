"""The hub's configuration: defaults, TOML, TIDINGS_* variables, flags, and
errors that name the key (tidings.hub.config)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tidings.hub.config import (
    ConfigError,
    HubConfig,
    NamespaceConfig,
    ProxyConfig,
    load_config,
)

SECRET = "a test secret that is 32+ bytes long"


def test_the_defaults_are_the_development_setup() -> None:
    config = load_config()
    assert config == HubConfig()
    assert (config.host, config.port, config.demo) == ("127.0.0.1", 8000, True)
    assert config.secret is None and config.api_key is None
    assert set(config.namespaces) == {"chat", "ticker", "report"}
    assert config.namespace("chat:lobby") is config.namespaces["chat"]
    assert config.namespace("nowhere:x") is None
    assert config.namespace("chat") is None


def test_a_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text(
        f"""
host = "0.0.0.0"
port = 9000
secret = "{SECRET}"
api_key = "k"
demo = false
rate_limit = 5
max_outbound = 4096

[namespaces.news]
allow_anonymous = true
history_size = 10
history_ttl = 60

[namespaces.rooms]
allow_publish = true
presence = true
join_leave = true
max_subscribers = 3
"""
    )
    config = load_config(path)
    assert (config.host, config.port, config.secret) == ("0.0.0.0", 9000, SECRET)
    assert config.api_key == "k" and config.demo is False
    assert config.rate_limit == 5 and config.max_outbound == 4096
    assert config.namespaces == {
        "news": NamespaceConfig(allow_anonymous=True, history_size=10, history_ttl=60),
        "rooms": NamespaceConfig(
            allow_publish=True, presence=True, join_leave=True, max_subscribers=3
        ),
    }


def test_tidings_variables() -> None:
    config = load_config(
        env={
            "TIDINGS_PORT": "9001",
            "TIDINGS_SECRET": SECRET,
            "TIDINGS_DEMO": "off",
            "TIDINGS_RATE_LIMIT": "2.5",
            "TIDINGS_MAX_CONNECTIONS": "10",
            "TIDINGS_NAMESPACES": "ignored: not settable from the environment",
            "TIDINGS_UNKNOWN": "ignored",
            "PORT": "1",
        }
    )
    assert config.port == 9001 and config.secret == SECRET and config.demo is False
    assert config.rate_limit == 2.5 and config.max_connections == 10
    assert config.namespaces == {}  # not from the environment; no demo, none
    for value in ("1", "true", "YES", "on"):
        assert load_config(env={"TIDINGS_DEMO": value}).demo is True


def test_token_keys_from_the_file_and_the_variables(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text('token_public_key = "/etc/tidings/key.pem"\ntoken_issuer = "i"\n')
    config = load_config(path)
    assert (config.token_public_key, config.token_issuer) == (
        "/etc/tidings/key.pem",
        "i",
    )
    config = load_config(
        env={
            "TIDINGS_TOKEN_JWKS_URL": "https://idp.example/.well-known/jwks.json",
            "TIDINGS_TOKEN_AUDIENCE": "tidings",
        }
    )
    assert config.token_jwks_url == "https://idp.example/.well-known/jwks.json"
    assert config.token_audience == "tidings" and config.secret is None


def test_flags_win_over_variables_which_win_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text('port = 1\nhost = "::1"\napi_key = "file"\n')
    env = {"TIDINGS_PORT": "2", "TIDINGS_API_KEY": "env"}
    config = load_config(path, env, {"port": 3, "api_key": None})
    assert (config.port, config.api_key, config.host) == (3, "env", "::1")
    assert load_config(path, env).port == 2
    assert load_config(path).port == 1


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        (
            "[namespaces.chat]\nhistory_size = -1\nhistory_ttl = 1",
            "namespaces.chat.history_size",
        ),
        ('[namespaces.chat]\nhistory_size = "10"', "namespaces.chat.history_size"),
        ("[namespaces.chat]\nhistory_size = 1.5", "namespaces.chat.history_size"),
        ("[namespaces.chat]\nhistory_size = 10", "namespaces.chat.history_ttl"),
        ("[namespaces.chat]\nhistory_ttl = -1", "namespaces.chat.history_ttl"),
        ("[namespaces.chat]\npresence = 1", "namespaces.chat.presence"),
        ("[namespaces.chat]\nmax_subscribers = -1", "namespaces.chat.max_subscribers"),
        ("[namespaces.chat]\ncolour = 1", "namespaces.chat.colour"),
        ("[namespaces]\nchat = 1", "namespaces.chat"),
        ('[namespaces."a b"]', "'a b'"),
        ("namespaces = 1", "namespaces"),
        ('port = "80"', "port"),
        ("port = 70000", "port"),
        ("port = true", "port"),
        ("rate_limit = 0", "rate_limit"),
        ("rate_limit = nan", "rate_limit"),
        ("ping_timeout = -1", "ping_timeout"),
        ("max_outbound = 0", "max_outbound"),
        ("idempotency_window = -1", "idempotency_window"),
        ('secret = "short"', "secret"),
        ('token_jwks_url = "file:///etc/keys.json"', "token_jwks_url"),
        ('token_jwks_url = "https://a/j"\ntoken_public_key = "k.pem"', "not both"),
        ('token_issuer = ""', "token_issuer"),
        ("token_audience = 1", "token_audience"),
        ('tls_cert = "c.pem"', "tls_cert and tls_key"),
        ("demo = 1", "demo"),
        ("hots = 1", "'hots'"),
        ('workers = -1\nbroker = "redis://r"', "workers"),
        ("workers = 2", "workers needs a shared broker"),
        ("workers = 0", "workers needs a shared broker"),
        ("metrics_port = 70000", "metrics_port"),
        ("shutdown_timeout = 0", "shutdown_timeout"),
    ],
)
def test_an_invalid_file_names_the_key(tmp_path: Path, toml: str, key: str) -> None:
    path = tmp_path / "hub.toml"
    path.write_text(toml + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert key in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"TIDINGS_PORT": "eighty"}, "TIDINGS_PORT"),
        ({"TIDINGS_PORT": "-1"}, "port"),
        ({"TIDINGS_RATE_LIMIT": "fast"}, "TIDINGS_RATE_LIMIT"),
        ({"TIDINGS_DEMO": "maybe"}, "TIDINGS_DEMO"),
        ({"TIDINGS_SECRET": "short"}, "secret"),
        ({"TIDINGS_API_KEY": ""}, "api_key"),
        ({"TIDINGS_API_KEY": "  "}, "api_key"),
    ],
)
def test_an_invalid_variable_names_it(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config(env=env)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [({"port": "x"}, "port"), ({"nope": 1}, "'nope'"), ({"host": 5}, "host")],
)
def test_invalid_flag_values_name_the_key(overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config(overrides=overrides)


def test_the_idempotency_window_from_the_file_a_variable_or_the_flag(
    tmp_path: Path,
) -> None:
    assert load_config().idempotency_window == 300
    path = tmp_path / "hub.toml"
    path.write_text("idempotency_window = 0\n")  # off
    assert load_config(path).idempotency_window == 0
    env = {"TIDINGS_IDEMPOTENCY_WINDOW": "60"}
    assert load_config(path, env).idempotency_window == 60
    assert load_config(path, env, {"idempotency_window": 2.5}).idempotency_window == 2.5


def test_workers_from_the_file_a_variable_or_the_flag(tmp_path: Path) -> None:
    assert (load_config().workers, load_config().metrics_port) == (1, None)
    path = tmp_path / "hub.toml"
    path.write_text('workers = 4\nbroker = "redis://127.0.0.1:6379/0"\n')
    assert load_config(path).workers == 4
    env = {"TIDINGS_WORKERS": "0", "TIDINGS_METRICS_PORT": "9100"}
    assert (load_config(path, env).workers, load_config(path, env).metrics_port) == (
        0,
        9100,
    )
    assert load_config(path, env, {"workers": 1}).workers == 1
    # One worker is today's single process: the memory broker is fine.
    assert load_config(overrides={"workers": 1}).broker == "memory"


def test_an_unreadable_or_invalid_file_says_which(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("port = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_the_demo_namespaces_come_only_with_the_demo() -> None:
    assert set(HubConfig().namespaces) == {"chat", "ticker", "report"}
    assert HubConfig(demo=False).namespaces == {}
    assert load_config(None, {"TIDINGS_DEMO": "false"}).namespaces == {}
    own = {"news": NamespaceConfig(allow_anonymous=True)}
    assert HubConfig(demo=False, namespaces=own).namespaces == own
    assert HubConfig(namespaces=own).namespaces == own


def test_connections_and_subscriptions_are_capped_by_default() -> None:
    config = HubConfig()
    assert config.max_connections == 10_000 and config.max_subscriptions == 128
    assert load_config(None, {"TIDINGS_MAX_SUBSCRIPTIONS": "5"}).max_subscriptions == 5
    with pytest.raises(ConfigError, match="max_subscriptions must be >= 1"):
        load_config(None, {}, {"max_subscriptions": 0})


def test_allowed_origins_from_the_file_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text('allowed_origins = ["https://a.example", "https://b.example"]\n')
    assert load_config(path).allowed_origins == (
        "https://a.example",
        "https://b.example",
    )
    env = {"TIDINGS_ALLOWED_ORIGINS": "https://a.example, https://c.example"}
    assert load_config(None, env).allowed_origins == (
        "https://a.example",
        "https://c.example",
    )
    path.write_text("allowed_origins = [1]\n")
    with pytest.raises(ConfigError, match="allowed_origins must be a list of strings"):
        load_config(path)


def test_the_proxy_table_and_its_variables(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text(
        """
[proxy]
connect = "http://127.0.0.1:9000/tidings/connect"
subscribe = "https://app.example/tidings/subscribe"
timeout = 2.5
headers = ["Cookie"]

[namespaces.chat]
subscribe_proxy = true
"""
    )
    config = load_config(
        path,
        env={
            "TIDINGS_PROXY_RPC": "http://127.0.0.1:9000/tidings/rpc",
            "TIDINGS_PROXY_MAX_IN_FLIGHT": "16",
        },
    )
    assert config.proxy == ProxyConfig(
        connect="http://127.0.0.1:9000/tidings/connect",
        subscribe="https://app.example/tidings/subscribe",
        rpc="http://127.0.0.1:9000/tidings/rpc",
        timeout=2.5,
        headers=("Cookie",),
        max_in_flight=16,
    )
    assert config.proxy.enabled and not HubConfig().proxy.enabled
    assert config.namespaces["chat"].subscribe_proxy


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[proxy]\nconnect = "ftp://x/connect"', "proxy.connect"),
        ("[proxy]\ntimeout = 0", "proxy.timeout"),
        ("[proxy]\nmax_in_flight = 0", "proxy.max_in_flight"),
        ('[proxy]\nwebhook = "http://x"', "proxy.webhook"),
        ("proxy = 3", "proxy"),
    ],
)
def test_an_invalid_proxy_setting_names_it(tmp_path: Path, toml: str, key: str) -> None:
    path = tmp_path / "hub.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(path)
