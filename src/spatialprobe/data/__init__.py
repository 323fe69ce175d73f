"""Datasets: the synthetic_shapes generator and a loader for any COCO-format folder."""
from .coco import CocoSplit, ImageRecord, dataset_hash, load_coco
from .shapes import generate_synthetic_shapes

__all__ = ["CocoSplit", "ImageRecord", "dataset_hash", "generate_synthetic_shapes", "load_coco"]
