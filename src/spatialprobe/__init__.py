"""spatialprobe: where does spatial information survive inside a vision-language model?"""
from . import metrics
from .backbones import load_backbone
from .errors import SpatialProbeError
from .features import TokenFeatures

__version__ = "0.1.0"
__all__ = ["load_backbone", "metrics", "TokenFeatures", "SpatialProbeError", "__version__"]
