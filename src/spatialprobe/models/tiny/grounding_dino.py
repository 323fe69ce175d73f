"""A tiny random-initialized Grounding DINO (Swin + BERT) with its processor and a BERT tokenizer built offline."""
from __future__ import annotations

from pathlib import Path

import torch

# Grounding DINO finds phrase boundaries by BERT's own ids ([CLS] 101, [SEP] 102, "." 1012, "?" 1029, see
# SPECIAL_TOKENS in modeling_grounding_dino.py), so the tiny vocabulary keeps BERT's ids for them
BERT_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, ".": 1012, "?": 1029}
WORDS = ["object", "a", "the", "cat", "dog", "red", "green", "blue", "circle", "square", "triangle", "shape"]
VOCAB_SIZE = 1040


def tiny_bert_vocab() -> dict[str, int]:
    free = (i for i in range(VOCAB_SIZE) if i not in BERT_IDS.values())
    vocab = dict(BERT_IDS)
    vocab.update({word: next(free) for word in WORDS})
    vocab.update({f"[unused{i}]": i for i in free})
    return vocab


def tiny_config():
    from transformers import BertConfig, GroundingDinoConfig, SwinConfig

    # 4-px patches, 7-px windows as in Swin-T; stage maps at strides 4, 8, 16, 32, of which 8, 16, 32 are read
    swin = SwinConfig(image_size=128, patch_size=4, embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4],
                      window_size=7, out_indices=[2, 3, 4])
    bert = BertConfig(vocab_size=VOCAB_SIZE, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64)
    # d_model is a multiple of 32 (GroupNorm(32, d_model) in the input projections); 2 decoder layers because
    # the box heads of layers 1.. are tied to layer 0 and transformers refuses a tie with nothing to tie
    return GroundingDinoConfig(backbone_config=swin, text_config=bert, d_model=64, encoder_layers=2, decoder_layers=2,
                               encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                               decoder_ffn_dim=128, num_queries=8, num_feature_levels=4, max_text_len=32)


def save_tiny_grounding_dino(path: Path, seed: int = 0) -> None:
    from transformers import (BertTokenizer, GroundingDinoForObjectDetection, GroundingDinoImageProcessor,
                              GroundingDinoProcessor)

    torch.manual_seed(seed)
    GroundingDinoForObjectDetection(tiny_config()).save_pretrained(path)
    tokenizer = BertTokenizer(vocab=tiny_bert_vocab())
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 128, "longest_edge": 213})
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
