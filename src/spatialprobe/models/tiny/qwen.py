"""A tiny random-initialized Qwen2.5-VL with a processor and a small tokenizer, built offline in code; and the
save step every Qwen2-VL-style checkpoint shares (GLM-4.1V's processor is one too)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from .tokenizer import word_level_tokenizer

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
           "<|image_pad|>", "<|video_pad|>"]
WORDS = ["user", "assistant", "system", "Describe", "the", "image", ".", "What", "colour", "shape", "is", "a",
         "red", "green", "blue", "circle", "square", "triangle", "yes", "no", "\n", "[UNK]"]


def tiny_tokenizer():
    return word_level_tokenizer(SPECIAL, WORDS, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def tiny_config(vocab: dict[str, int]):
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        vision_config={"depth": 4, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
                       "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3,
                       # 56-px windows hold 2x2 merged tokens: a 224-px image has 16 windows to reorder
                       "window_size": 56, "fullatt_block_indexes": [1, 3]},
        text_config={"vocab_size": len(vocab), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]},
                     "bos_token_id": vocab["<|endoftext|>"], "eos_token_id": vocab["<|im_end|>"],
                     "pad_token_id": vocab["<|endoftext|>"]},
        image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"], vision_end_token_id=vocab["<|vision_end|>"],
    )


def save_qwen2_vl_style(path: Path, seed: int, make_tokenizer: Callable, make_config: Callable, model_class,
                        processor_class, image_processor_class, video_processor_class) -> None:
    """A random-initialized model of `make_config(vocab)` with a Qwen2-VL-style processor: 14-px patches merged
    2x2, an image a 2-frame still, 56^2 to 448^2 pixels."""
    torch.manual_seed(seed)
    tokenizer, vocab = make_tokenizer()
    model_class(make_config(vocab)).save_pretrained(path)
    image_processor = image_processor_class(patch_size=14, merge_size=2, temporal_patch_size=2,
                                            size={"shortest_edge": 56 * 56, "longest_edge": 448 * 448})
    video_processor = video_processor_class(patch_size=14, merge_size=2, temporal_patch_size=2)
    processor_class(image_processor=image_processor, tokenizer=tokenizer,
                    video_processor=video_processor).save_pretrained(path)


def save_tiny_qwen2_5_vl(path: Path, seed: int = 0) -> None:
    from transformers import (Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, Qwen2VLImageProcessor,
                              Qwen2VLVideoProcessor)

    save_qwen2_vl_style(path, seed, tiny_tokenizer, tiny_config, Qwen2_5_VLForConditionalGeneration,
                        Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor)
