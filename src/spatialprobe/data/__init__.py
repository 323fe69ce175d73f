"""Datasets: the synthetic_shapes and moving_shapes generators, a loader for any COCO-format folder, and
clip loaders (moving shapes, Something-Something v2, any folder of videos) behind `load_clips`."""
from .coco import CocoSplit, ImageRecord, dataset_hash, load_coco
from .shapes import generate_synthetic_shapes
from .clips import load_clips
from .video import ClipSplit, clips_hash

__all__ = ["ClipSplit", "CocoSplit", "ImageRecord", "clips_hash", "dataset_hash", "generate_synthetic_shapes",
           "load_clips", "load_coco"]
