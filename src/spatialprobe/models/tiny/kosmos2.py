"""A tiny random-initialized Kosmos-2 with its processor and a small tokenizer, built offline in code."""
from __future__ import annotations

from pathlib import Path

import torch

from .tokenizer import word_level_tokenizer

# XLM-R style ids (<s>=0, <pad>=1, </s>=2, <unk>=3); Kosmos2Processor adds its tag tokens (<image>, <grounding>,
# <phrase>, ...) and the <patch_index_*> tokens itself, and writes the 64 image placeholders as the ids right
# after <unk> (so the vocabulary must reach past <unk> + 64)
SPECIAL = ["<s>", "<pad>", "</s>", "<unk>"]
WORDS = ["An", "image", "of", "What", "colour", "shape", "is", "the", "a", "red", "green", "blue", "circle",
         "square", "triangle", "yes", "no", "Answer", "with", "one", "word", ".", "?", "Question", ":"]
PATCH_INDEX_TOKENS = 64  # the real processor adds 1024 (32x32 location bins); 8x8 keeps the vocabulary small
LATENT_QUERIES = 64
TINY_RESOLUTION = 56  # a 4x4 patch grid


def tiny_tokenizer():
    tokenizer, _ = word_level_tokenizer(SPECIAL, WORDS, unk="<unk>", bos_token="<s>", pad_token="<pad>",
                                        eos_token="</s>")
    return tokenizer


def tiny_config(vocab_size: int):
    from transformers import Kosmos2Config

    return Kosmos2Config(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": TINY_RESOLUTION, "patch_size": 14},
        text_config={"vocab_size": vocab_size, "embed_dim": 32, "layers": 2, "ffn_dim": 64, "attention_heads": 2,
                     "max_position_embeddings": 256, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
                     # at the default 0.02 the random projector's queries are ~1e-3 and vanish beside the
                     # text positions: the image would hardly reach the text layers of the tiny model
                     "init_std": 0.2},
        latent_query_num=LATENT_QUERIES,
    )


def save_tiny_kosmos2(path: Path, seed: int = 0) -> None:
    from transformers import CLIPImageProcessor, Kosmos2ForConditionalGeneration, Kosmos2Processor

    torch.manual_seed(seed)
    size = TINY_RESOLUTION
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                         image_mean=[0.48145466, 0.4578275, 0.40821073],
                                         image_std=[0.26862954, 0.26130258, 0.27577711])
    processor = Kosmos2Processor(image_processor, tiny_tokenizer(), num_patch_index_tokens=PATCH_INDEX_TOKENS)
    vocab_size = len(processor.tokenizer)
    if vocab_size < len(SPECIAL) + LATENT_QUERIES:
        raise RuntimeError("the tiny Kosmos-2 vocabulary must hold the 64 image placeholder ids after <unk>")
    Kosmos2ForConditionalGeneration(tiny_config(vocab_size)).save_pretrained(path)
    processor.save_pretrained(path)
