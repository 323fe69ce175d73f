"""A small word-level tokenizer built offline in code, for the tiny checkpoints of language-model families."""
from __future__ import annotations


def word_level_tokenizer(special: list[str], words: list[str], unk: str = "[UNK]", **named_tokens):
    """(tokenizer, vocab): ids follow `special + words` (repeats dropped); the special tokens are never split; `named_tokens`
    (eos_token=..., pad_token=..., or a processor's own names such as start_image_token=...) go to the tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(dict.fromkeys(special + words))}  # a repeated word keeps its first id
    backend = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.add_special_tokens(special)
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token=unk, **named_tokens), vocab
