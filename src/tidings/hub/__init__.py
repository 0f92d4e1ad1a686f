"""The tidings hub: channels, presence, history with gap-free recovery, token
auth and an HTTP API, over WebSocket. See docs/protocol.md and docs/hub.md."""

from .app import Hub
from .auth import mint_channel_token, mint_token
from .brokers.base import Broker
from .brokers.memory import MemoryBroker
from .client import (
    Client,
    History,
    HubError,
    Publication,
    RecoveryFailed,
    Subscription,
)
from .config import ConfigError, HubConfig, NamespaceConfig, ProxyConfig, load_config
from .mount import HubApp
from .operations import APIError, InProcessAPI, Published

__all__ = [
    "APIError",
    "Broker",
    "Client",
    "ConfigError",
    "History",
    "Hub",
    "HubApp",
    "HubConfig",
    "HubError",
    "InProcessAPI",
    "MemoryBroker",
    "NamespaceConfig",
    "ProxyConfig",
    "Publication",
    "Published",
    "RecoveryFailed",
    "Subscription",
    "load_config",
    "mint_channel_token",
    "mint_token",
]
