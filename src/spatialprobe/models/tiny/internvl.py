"""A tiny random-initialized InternVL (-hf layout) with its processor and a small tokenizer, built offline."""
from __future__ import annotations

from pathlib import Path

import torch

from .tokenizer import word_level_tokenizer

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
WORDS = ["user", "assistant", "system", "Describe", "the", "image", ".", "What", "colour", "shape", "is", "a",
         "red", "green", "blue", "circle", "square", "triangle", "yes", "no", "\n", "[UNK]"]
TILE = 112  # 8x8 patches of 14 px per tile, 4x4 tokens after the 2x2 pixel shuffle
TOKENS_PER_TILE = (TILE // 14 // 2) ** 2


def tiny_tokenizer():
    return word_level_tokenizer(
        SPECIAL, WORDS, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        # InternVLProcessor reads these named tokens (and their ids) from the tokenizer, as in the -hf checkpoints
        start_image_token="<img>", end_image_token="</img>", context_image_token="<IMG_CONTEXT>", video_token="<video>")


def tiny_config(vocab: dict[str, int]):
    from transformers import InternVLConfig

    return InternVLConfig(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": TILE, "patch_size": 14},
        text_config={"model_type": "qwen2", "vocab_size": len(vocab), "hidden_size": 64, "intermediate_size": 128,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "max_position_embeddings": 4096, "bos_token_id": vocab["<|endoftext|>"],
                     "eos_token_id": vocab["<|im_end|>"], "pad_token_id": vocab["<|endoftext|>"]},
        image_token_id=vocab["<IMG_CONTEXT>"], image_seq_length=TOKENS_PER_TILE, downsample_ratio=0.5,
    )


def save_tiny_internvl(path: Path, seed: int = 0) -> None:
    from transformers import (GotOcr2ImageProcessor, InternVLForConditionalGeneration, InternVLProcessor,
                              InternVLVideoProcessor)

    torch.manual_seed(seed)
    tokenizer, vocab = tiny_tokenizer()
    model = InternVLForConditionalGeneration(tiny_config(vocab))
    # the real checkpoints have trained (non-zero) position embeddings; zeros would make every tile alike
    with torch.no_grad():
        model.model.vision_tower.embeddings.position_embeddings.normal_(0, 0.02)
    model.save_pretrained(path)
    size = {"height": TILE, "width": TILE}
    imagenet = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
    image_processor = GotOcr2ImageProcessor(size=size, crop_to_patches=True, min_patches=1, max_patches=12, **imagenet)
    # frames are normalized as image tiles are (InternVL's video chat reads each frame as an image tile)
    InternVLProcessor(image_processor=image_processor, tokenizer=tokenizer, image_seq_length=TOKENS_PER_TILE,
                      video_processor=InternVLVideoProcessor(size=size, **imagenet)).save_pretrained(path)
