"""Tiny sentence-transformers encoders built in the test run (random 2-layer BERT, real tokenizer).

The vocabulary is the tiny datasets' words (`fixtures.TOPICS`, `fixtures.FILLER`) plus BERT's special
tokens, so texts tokenize to real ids; the weights are random (seeded), so rankings are arbitrary but
deterministic, and two seeds give two different encoders.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from hnr_assets_tests.fixtures import FILLER, TOPICS

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_vocab() -> list[str]:
    words = {w for vocab in TOPICS.values() for w in vocab.split()} | set(FILLER) | set(TOPICS)
    words |= {"what", "is", "known", "about", "report", "?", ".", *map(str, range(10))}
    return SPECIAL + sorted(words)


def make_tiny_encoder(folder: Path, seed: int = 0, hidden: int = 32) -> Path:
    """Save a random 2-layer BERT with mean pooling and normalisation as a sentence-transformers folder."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = Path(folder)
    raw = folder.parent / f".{folder.name}-raw"
    raw.mkdir(parents=True, exist_ok=True)
    vocab_file = raw / "vocab.txt"
    vocab_file.write_text("\n".join(tiny_vocab()) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tiny_vocab()),
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(raw)
    tokenizer.save_pretrained(raw)
    transformer = Transformer(str(raw), max_seq_length=64)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu").save(str(folder))
    shutil.rmtree(raw)
    return folder


def write_training_json(encoder_dir: Path, recipe: str, run_id: str) -> Path:
    """The training developer's `encoders/<recipe>/training.json` contract, for tests."""
    path = Path(encoder_dir) / "training.json"
    path.write_text(
        json.dumps(
            {
                "recipe": recipe,
                "mlflow_run_id": run_id,
                "registered_model": f"hnr-test-encoder-{recipe}",
                "model_version": "1",
                "best_step": 10,
                "best_validation_score": 0.5,
                "base_model": "tiny-random",
            }
        ),
        encoding="utf-8",
    )
    return path
