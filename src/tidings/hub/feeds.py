"""The demo's own publishers: a simulated stock ticker and the live report
of the hub's metrics. Both publish through the in-process API, as a back end
would through the HTTP API."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING, Any

from .brokers.base import BrokerUnavailable

if TYPE_CHECKING:
    from .app import Hub

logger = logging.getLogger("tidings.hub")

__all__ = ["SYMBOLS", "run_report", "run_ticker"]

SYMBOLS = {"AAPL": 231.4, "MSFT": 428.1, "NVDA": 138.9, "TSLA": 251.6, "AMZN": 197.3}


async def run_ticker(hub: Hub, interval: float = 0.5) -> None:
    """Publish a random walk of prices to ``ticker:SYMBOL`` and
    ``ticker:all``, forever."""
    rng = random.Random()
    prices = dict(SYMBOLS)
    while True:
        symbol = rng.choice(list(prices))
        old = prices[symbol]
        new = round(max(1.0, old * (1 + rng.gauss(0, 0.002))), 2)
        prices[symbol] = new
        quote = {
            "symbol": symbol,
            "price": new,
            "change": round(new - old, 2),
            "time": time.time(),
        }
        await _publish(hub, f"ticker:{symbol}", quote)
        await _publish(hub, "ticker:all", quote)
        await asyncio.sleep(interval)


async def run_report(hub: Hub, interval: float = 1.0) -> None:
    """Publish the hub's own figures to ``report:hub`` every ``interval``."""
    metrics = hub.metrics
    last = time.monotonic()
    last_publications, last_deliveries = metrics.publications, metrics.deliveries
    while True:
        await asyncio.sleep(interval)
        now = time.monotonic()
        elapsed = now - last
        report = {
            "time": time.time(),
            "connections": hub.connection_count(),
            "channels": len(hub.channels()),
            "publications_per_s": round(
                (metrics.publications - last_publications) / elapsed, 1
            ),
            "deliveries_per_s": round(
                (metrics.deliveries - last_deliveries) / elapsed, 1
            ),
            "dropped_slow": metrics.dropped_slow,
        }
        last, last_publications, last_deliveries = (
            now,
            metrics.publications,
            metrics.deliveries,
        )
        await _publish(hub, "report:hub", report)


async def _publish(hub: Hub, channel: str, data: Any) -> None:
    """Publish, or skip this one while the broker is away: a feed goes on
    through an outage, as its subscribers do."""
    try:
        await hub.publish(channel, data)
    except BrokerUnavailable as exc:
        logger.debug("%s: publication skipped: %s", channel, exc)
