"""Shared test settings."""

from hypothesis import settings

# Tests check behaviour, never speed: a slow or busy machine must not fail them.
settings.register_profile("tidings", deadline=None)
settings.load_profile("tidings")
