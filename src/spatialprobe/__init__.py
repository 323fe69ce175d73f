"""spatialprobe: where does spatial information survive inside a vision-language model?

The public names load lazily, so that commands which need no model (`spatialprobe report`, `--help`)
never import torch.
"""
from __future__ import annotations

import importlib
from typing import Any

from .errors import SpatialProbeError

__version__ = "0.1.0"
__all__ = ["load_backbone", "metrics", "TokenFeatures", "SpatialProbeError", "__version__"]

#: public name -> (module, attribute or None for the module itself)
_LAZY = {"load_backbone": (".models", "load_backbone"), "metrics": (".metrics", None),
         "TokenFeatures": (".features", "TokenFeatures")}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'spatialprobe' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name, __name__)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value
