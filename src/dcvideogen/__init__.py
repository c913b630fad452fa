"""dcvideogen: DC-VideoGen (arXiv 2509.25182) in PyTorch.

The model classes are imported on first use (module `__getattr__`), so that `import dcvideogen` and the
`dcvg` command line start without loading torch and diffusers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the submodule that defines it, imported on first access.
_LAZY = {
    "AutoencoderDCV": ".models",
    "DCAEVConfig": ".models",
    "TemporalMode": ".models",
    "get_preset": ".models",
}

__all__ = ["AutoencoderDCV", "DCAEVConfig", "TemporalMode", "__version__", "get_preset"]

if TYPE_CHECKING:
    from .models import AutoencoderDCV, DCAEVConfig, TemporalMode, get_preset


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
