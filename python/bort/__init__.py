"""bort: optimal sub-architecture extraction for BERT-family encoders.

The top level is torch-free: it holds the architecture description and the errors. Training
code lives in `bort.model`, `bort.checkpoint` (torch); serving in `bort.runtime` (no torch).

Example:
    >>> import bort
    >>> bort.Arch.uniform(4, 8, 768, 1024).describe()
    '⟨D=4, A=8, H=768, I=1024⟩'
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .arch import Arch, Layer, ParamCount
from .errors import BortError, CheckpointError, ConfigError, DataError, WeightsError

try:
    __version__ = version("bort")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["Arch", "BortError", "CheckpointError", "ConfigError", "DataError", "Layer",
           "ParamCount", "WeightsError", "__version__"]
