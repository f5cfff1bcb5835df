"""The tiny random models of the `test` profile (`tiny-random`), built in a second: real architectures,
random weights, so every stage runs end to end without a download and its scores mean nothing.

One place says what "tiny" is (2 layers, hidden size 32) for the three kinds hnr needs: a BERT encoder
(`lib.training.encoder_models.build_tiny_bert`), a BERT cross-encoder with one logit
(`lib.mining.cross_encoder.build_tiny_cross_encoder`) and a Llama-architecture causal LM
(`lib.generation.generator_models.build_tiny_causal_lm`); those save the model with the tokenizer and
the files their stage expects.
"""

from __future__ import annotations

import string
from typing import Any

HIDDEN_SIZE = 32
LAYERS = 2
INTERMEDIATE_SIZE = 64


def tiny_vocab() -> dict[str, int]:
    """A character-level WordPiece vocabulary: every lower-case ASCII text tokenizes without [UNK]."""
    chars = string.ascii_lowercase + string.digits
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *string.punctuation, *(f"##{c}" for c in chars)]
    return {token: i for i, token in enumerate(tokens)}


def tiny_bert(
    vocab_size: int, *, seed: int, max_positions: int, num_labels: int | None = None, isolated_rng: bool = True
) -> Any:
    """A random 2-layer BERT (hidden size 32, 2 heads): `BertModel`, or with `num_labels` a classifier.

    Args:
        vocab_size: Size of the tokenizer's vocabulary.
        seed: Seed of the weights.
        max_positions: Position embeddings.
        num_labels: Outputs of a sequence-classification head (1 for a cross-encoder); None: no head.
        isolated_rng: Seed a forked RNG, leaving torch's global one as it was (else seed the global one).
    """
    import contextlib

    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    extra = {} if num_labels is None else {"num_labels": num_labels}
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN_SIZE,
        num_hidden_layers=LAYERS,
        num_attention_heads=2,
        intermediate_size=INTERMEDIATE_SIZE,
        max_position_embeddings=max_positions,
        **extra,
    )
    with torch.random.fork_rng() if isolated_rng else contextlib.nullcontext():
        torch.manual_seed(seed)
        return BertModel(config) if num_labels is None else BertForSequenceClassification(config)


def tiny_llama(tokenizer: Any, *, seed: int) -> Any:
    """A random 2-layer Llama-architecture causal LM (hidden size 32, 4 heads, 2 key-value heads) for `tokenizer`.

    Seeds torch's global RNG with `seed`; the embeddings are tied.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)
