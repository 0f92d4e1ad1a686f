"""Brokers: where a hub keeps what its nodes share (in memory, or on Redis)."""
