"""Tiny random-initialized plain ViT towers (CLIP, SigLIP, DINOv2) with their image processors, built offline in
code: 56-px images at patch 14, a 4x4 patch grid."""
from __future__ import annotations

from pathlib import Path

import torch

TINY_TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  patch_size=14, image_size=56)


def save_tiny_tower(path: Path, seed: int, model_class, config, processor) -> None:
    """A tiny random-initialized tower and its processor, saved as a hub checkpoint would be."""
    torch.manual_seed(seed)
    model_class(config).save_pretrained(path)
    processor.save_pretrained(path)


def save_tiny_clip(path: Path, seed: int = 0) -> None:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    processor = CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    save_tiny_tower(path, seed, CLIPVisionModel, CLIPVisionConfig(**TINY_TOWER, projection_dim=16), processor)


def save_tiny_siglip(path: Path, seed: int = 0) -> None:
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    processor = SiglipImageProcessor(size={"height": 56, "width": 56})
    save_tiny_tower(path, seed, SiglipVisionModel, SiglipVisionConfig(**TINY_TOWER), processor)


def save_tiny_dinov2(path: Path, seed: int = 0) -> None:
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    processor = BitImageProcessor(do_resize=False, do_center_crop=False,
                                  image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    tower = {k: v for k, v in TINY_TOWER.items() if k != "intermediate_size"}  # DINOv2 sets it by mlp_ratio
    save_tiny_tower(path, seed, Dinov2Model, Dinov2Config(**tower, mlp_ratio=2), processor)
