"""A tiny random-initialized DETR on a transformers ResNet backbone (no timm), with its image processor, built
offline in code."""
from __future__ import annotations

from pathlib import Path

import torch


def save_tiny_detr(path: Path, seed: int = 0) -> None:
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor, ResNetConfig

    torch.manual_seed(seed)
    # narrower random models give near-parallel features, which the encoder's post-LayerNorm turns into noise
    resnet = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                          layer_type="basic", out_features=["stage1", "stage2", "stage3", "stage4"])
    config = DetrConfig(use_timm_backbone=False, backbone_config=resnet, d_model=64, encoder_layers=2,
                        decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                        encoder_ffn_dim=128, decoder_ffn_dim=128, num_queries=8, num_labels=3)
    DetrForObjectDetection(config).save_pretrained(path)
    DetrImageProcessor(size={"shortest_edge": 128, "longest_edge": 213}).save_pretrained(path)
