"""The hub's counters, and their Prometheus text form."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["Metrics"]


@dataclass(slots=True)
class Metrics:
    """Counters since start; gauges are read from the hub when rendered."""

    publications: int = 0
    deliveries: int = 0
    dropped_slow: int = 0
    commands: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    #: Calls to the application's hooks, by (hook, outcome).
    hook_calls: Counter[tuple[str, str]] = field(default_factory=Counter)

    def render(
        self, *, connections: int, subscriptions: int, channels: int, broker_up: bool
    ) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        lines = [
            "# HELP tidings_broker_up 1 while the broker delivers publications.",
            "# TYPE tidings_broker_up gauge",
            f"tidings_broker_up {int(broker_up)}",
            "# HELP tidings_connections Open client connections.",
            "# TYPE tidings_connections gauge",
            f"tidings_connections {connections}",
            "# HELP tidings_subscriptions Channel subscriptions on this node.",
            "# TYPE tidings_subscriptions gauge",
            f"tidings_subscriptions {subscriptions}",
            "# HELP tidings_channels Channels with subscribers on this node.",
            "# TYPE tidings_channels gauge",
            f"tidings_channels {channels}",
            "# HELP tidings_publications_total Publications made through this node.",
            "# TYPE tidings_publications_total counter",
            f"tidings_publications_total {self.publications}",
            "# HELP tidings_deliveries_total Pushes written to clients.",
            "# TYPE tidings_deliveries_total counter",
            f"tidings_deliveries_total {self.deliveries}",
            "# HELP tidings_dropped_slow_total Clients dropped for reading too slowly.",
            "# TYPE tidings_dropped_slow_total counter",
            f"tidings_dropped_slow_total {self.dropped_slow}",
            "# HELP tidings_commands_total Client commands handled.",
            "# TYPE tidings_commands_total counter",
            f"tidings_commands_total {self.commands}",
            "# HELP tidings_errors_total Errors answered, by kind.",
            "# TYPE tidings_errors_total counter",
        ]
        lines += [
            f'tidings_errors_total{{kind="{kind}"}} {count}'
            for kind, count in sorted(self.errors.items())
        ]
        lines += [
            "# HELP tidings_hook_calls_total Calls to the application's hooks.",
            "# TYPE tidings_hook_calls_total counter",
        ]
        lines += [
            f'tidings_hook_calls_total{{hook="{hook}",outcome="{outcome}"}} {count}'
            for (hook, outcome), count in sorted(self.hook_calls.items())
        ]
        return "\n".join(lines) + "\n"
