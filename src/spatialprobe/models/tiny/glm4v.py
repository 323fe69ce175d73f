"""A tiny random-initialized GLM-4.1V (`Glm4vForConditionalGeneration`) with its processor and a small
tokenizer, built offline in code."""
from __future__ import annotations

from pathlib import Path

from .qwen import save_qwen2_vl_style
from .tokenizer import word_level_tokenizer

SPECIAL = ["<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|begin_of_image|>",
           "<|end_of_image|>", "<|image|>", "<|begin_of_video|>", "<|end_of_video|>", "<|video|>"]
WORDS = ["Describe", "the", "image", ".", "What", "colour", "shape", "is", "a", "?", "red", "green", "blue", "circle",
         "square", "triangle", "yes", "no", "[UNK]"]


def tiny_tokenizer():
    return word_level_tokenizer(SPECIAL, WORDS, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def tiny_config(vocab: dict[str, int]):
    from transformers import Glm4vConfig

    return Glm4vConfig(
        # image_size 112 gives an 8x8 learned position table: a 224-px input (16x16 patches) exercises the
        # bicubic interpolation of the position embedding the real model does
        vision_config={"depth": 3, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
                       "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "image_size": 112},
        # like GLM-4.1V: partial rotary (half the head dim) split over t/h/w by mrope_section
        text_config={"vocab_size": len(vocab), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1],
                                         "partial_rotary_factor": 0.5},
                     "bos_token_id": vocab["<|endoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
                     "pad_token_id": vocab["<|endoftext|>"]},
        image_token_id=vocab["<|image|>"], video_token_id=vocab["<|video|>"],
        image_start_token_id=vocab["<|begin_of_image|>"], image_end_token_id=vocab["<|end_of_image|>"],
        video_start_token_id=vocab["<|begin_of_video|>"], video_end_token_id=vocab["<|end_of_video|>"],
    )


def save_tiny_glm4v(path: Path, seed: int = 0) -> None:
    from transformers import Glm4vForConditionalGeneration, Glm4vImageProcessor, Glm4vProcessor, Glm4vVideoProcessor

    save_qwen2_vl_style(path, seed, tiny_tokenizer, tiny_config, Glm4vForConditionalGeneration, Glm4vProcessor,
                        Glm4vImageProcessor, Glm4vVideoProcessor)
