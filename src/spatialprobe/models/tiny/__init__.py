"""Tiny random-initialized checkpoints of the real architectures, built from configs written in code.

One module per family, or per group of families sharing one builder (`vit`: CLIP, SigLIP, DINOv2; `owlvit`:
OWL-ViT, OWLv2; `qwen`: the Qwen2-VL-style save step GLM-4.1V shares); the adapters' `save_tiny` call them;
`spatialprobe.testing.save_tiny(family, folder)` is the public entry point.
"""
