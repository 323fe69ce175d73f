"""A tiny random-initialized Florence-2 (DaViT + BART) with its processor and a small tokenizer, built offline."""
from __future__ import annotations

from pathlib import Path

import torch

from .tokenizer import word_level_tokenizer

# BART's special tokens keep their usual ids (<s>=0, <pad>=1, </s>=2, <unk>=3); Florence2Processor needs
# the tokenizer's `image_token`. The <loc_*> tokens only matter to the detection post-processor: left out.
SPECIAL = ["<s>", "<pad>", "</s>", "<unk>", "<image>"]
WORDS = ["What", "does", "the", "image", "describe", "?", "What", "colour", "shape", "is", "a", "red", "green",
         "blue", "circle", "square", "triangle", "yes", "no", "Answer", "with", "one", "word", "."]
TINY_RESOLUTION = 256  # DaViT grids 64, 32, 16, 8: the language encoder sees 1 + 8x8 image tokens


def tiny_tokenizer():
    return word_level_tokenizer(SPECIAL, WORDS, unk="<unk>", bos_token="<s>", pad_token="<pad>", eos_token="</s>",
                                extra_special_tokens={"image_token": "<image>"})


def tiny_config(vocab: dict[str, int]):
    from transformers import BartConfig, Florence2Config, Florence2VisionConfig

    vision = Florence2VisionConfig(depths=[1, 1, 2, 1], embed_dim=[16, 16, 32, 32], num_heads=[1, 1, 2, 2],
                                   num_groups=[1, 1, 2, 2], window_size=4, drop_path_rate=0.0, mlp_ratio=2.0,
                                   projection_dim=32, max_position_embeddings=16)
    text = BartConfig(vocab_size=len(vocab), d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                      decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128,
                      bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2,
                      forced_bos_token_id=None, forced_eos_token_id=None)
    return Florence2Config(vision_config=vision, text_config=text, image_token_id=vocab["<image>"])


def save_tiny_florence2(path: Path, seed: int = 0) -> None:
    from transformers import CLIPImageProcessor, Florence2ForConditionalGeneration, Florence2Processor

    torch.manual_seed(seed)
    tokenizer, vocab = tiny_tokenizer()
    Florence2ForConditionalGeneration(tiny_config(vocab)).save_pretrained(path)
    side = TINY_RESOLUTION // 32
    size = {"height": TINY_RESOLUTION, "width": TINY_RESOLUTION}
    # like the hub checkpoints: a whole-image bicubic resize to a square, ImageNet mean/std, no crop
    image_processor = CLIPImageProcessor(size=size, crop_size=size, do_center_crop=False, resample=3,
                                         image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                                         image_seq_length=1 + side * side)
    Florence2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
