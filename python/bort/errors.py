"""Exceptions raised by bort. Every one names the file, field or tensor at fault."""

from __future__ import annotations


class BortError(Exception):
    """Base class of bort's own errors."""


class ConfigError(BortError, ValueError):
    """An architecture or config.json that bort cannot use (bad sizes, unsupported family)."""


class WeightsError(BortError, ValueError):
    """A checkpoint whose tensors do not match the architecture (missing, extra, wrong shape)."""


class CheckpointError(BortError):
    """A training checkpoint that is missing, incomplete or unreadable."""


class DataError(BortError, ValueError):
    """A task dataset bort cannot use (missing columns, unseen labels, an empty split)."""
