"""Brokers: where a hub keeps channel state (memory, and Redis later)."""
