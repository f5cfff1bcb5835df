"""CTranslate2 on CPU: a transformers folder converted once, sampled in batches on single-thread workers.

The fast CPU generator of the `local` profile (issue 13). Three parts:

- `converted_model`: the CTranslate2 copy of a transformers folder (`TransformersConverter`, weights
  quantized once), cached under a key of the source folder's content and the quantization, written to a
  temporary sibling and renamed into place, under a lock so that two partitions convert it once.
- `resolve_compute_type`: the int8 flavour for this CPU (`auto`): int8 with bf16 activations where
  CTranslate2 offers it and the CPU computes bf16 natively, else int8 with fp32 activations.
- `CTranslate2Engine`: `generate(requests)` as the other engines do (`lib.generation.backends.Engine`).
  Every request's `n` completions are `num_hypotheses` of one prompt, so the prompt is read once for all
  of them (on SmolLM2-135M the prompt costs more than the completions when it is repeated). Requests are
  sorted by prompt length and dealt out to `workers` CTranslate2 generators with `threads_per_worker`
  threads each, all running at once.

Threads. Two single-thread workers were the fastest setting on a 2-core CPU, and they do not collapse
when another process holds a core, as multi-thread OpenMP pools that spin do (issue 13's probe).

Seeds. CTranslate2 samples with one random generator per worker thread, seeded from a process-wide seed
the first time the thread samples. Each `generate` call therefore starts fresh workers, seeds each from
the call's request seeds and its worker number, and gives each a fixed share of the batches: the same
requests give the same completions, whatever ran before (a resumed run equals an uninterrupted one).
Loading the model for a call takes about 0.2 s. At the end of a call the freed heap is handed back to
the OS (`release_free_memory`): glibc kept it otherwise, and the process grew with every call.

Caller's threads. Creating a CTranslate2 generator sets the calling thread's OpenMP thread count to its
`intra_threads`, and torch's intra-op pool follows it: after one single-thread worker, every later torch
step of the process (the demo trains and encodes in the same process) ran on one thread, at half speed
on 2 cores (`make demo` of 2026-12-02: 17 s a training step instead of ~9). `_restoring_torch_threads`
puts torch's count back after the workers are created.

References: Klein et al., "The OpenNMT Neural Machine Translation Toolkit: 2020 Edition" (CTranslate2).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hnr_assets.lib.generation.backends import (
    Completion,
    EngineStats,
    GenerationRequest,
    GenerationResult,
    Sampling,
    render_chat,
)
from hnr_assets.lib.generation.generator_models import folder_lock
from hnr_assets.lib.retrieval.dense import model_fingerprint
from hnr_assets.lib.runtime.errors import ConfigError
from hnr_assets.lib.runtime.io import atomic_dir
from hnr_assets.lib.runtime.memory import release_free_memory
from hnr_assets.lib.runtime.precision import cpu_has_native_bf16

LogFn = Callable[[str], None]


@contextlib.contextmanager
def _restoring_torch_threads() -> Iterator[None]:
    """Give torch back its intra-op thread count, which creating a CTranslate2 generator overwrites."""
    torch = sys.modules.get("torch")  # CTranslate2 needs no torch; where none is loaded, nothing to restore
    threads = torch.get_num_threads() if torch is not None else None
    try:
        yield
    finally:
        if torch is not None and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


CONVERTED_MANIFEST = "hnr-ct2.json"
QUANTIZATIONS = ("int8", "int8_float32", "int8_bfloat16", "int16", "float32", "bfloat16")
COMPUTE_TYPES = ("auto", *QUANTIZATIONS)
# Tokenizer and chat-template files copied next to the converted weights (those the source folder has).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)


def resolve_compute_type(requested: str, supported: set[str], native_bf16: bool) -> str:
    """The CTranslate2 compute type to load a model with.

    Args:
        requested: `auto` or a compute type.
        supported: `ctranslate2.get_supported_compute_types("cpu")`.
        native_bf16: Whether the CPU computes bf16 natively (`lib.runtime.precision.cpu_has_native_bf16`).

    Returns:
        For `auto`: `int8_bfloat16` where CTranslate2 offers it and the CPU has native bf16, else
        `int8_float32`, else `int8`, else `float32`. Otherwise `requested` itself.

    Raises:
        ConfigError: `requested` is not a compute type this CTranslate2 build runs on this CPU.
    """
    if requested != "auto":
        if requested not in supported:
            raise ConfigError(
                f"compute_type {requested!r} is not supported by CTranslate2 on this CPU; "
                f"supported: {sorted(supported)}"
            )
        return requested
    order = (["int8_bfloat16"] if native_bf16 else []) + ["int8_float32", "int8", "float32"]
    return next((c for c in order if c in supported), "float32")


def cpu_compute_type(requested: str = "auto") -> str:
    """`resolve_compute_type` for the installed CTranslate2 on this CPU (`lib.runtime.precision` decides bf16)."""
    import ctranslate2

    return resolve_compute_type(requested, set(ctranslate2.get_supported_compute_types("cpu")), cpu_has_native_bf16())


# ---------------------------------------------------------------------------------------------- conversion


def converted_model(
    model_dir: Path, cache_root: Path, quantization: str = "int8", log: LogFn = lambda _m: None
) -> tuple[Path, dict[str, Any]]:
    """The CTranslate2 copy of a transformers folder, converted on first use and cached.

    Args:
        model_dir: A transformers causal-LM folder (safetensors, config, tokenizer with a chat template).
        cache_root: Where converted models live; each in `<source content hash>-<quantization>/`.
        quantization: Weight type of the converted model (`int8` for the CPU engines).
        log: Progress notes.

    Returns:
        The converted folder (CTranslate2 weights plus the tokenizer files) and its manifest.

    Raises:
        ConfigError: Unknown quantization, or a folder CTranslate2 cannot convert.
    """
    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"quantization {quantization!r} is not one of {list(QUANTIZATIONS)}")
    source = model_fingerprint(model_dir)
    folder = Path(cache_root) / f"{source}-{quantization}"
    with folder_lock(folder):
        manifest = read_converted_manifest(folder)
        if manifest is not None:
            return folder, manifest
        return folder, _convert(Path(model_dir), folder, quantization, source, log)


def read_converted_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a finished conversion, or None (absent or incomplete)."""
    path = Path(folder) / CONVERTED_MANIFEST
    if not path.is_file() or not (Path(folder) / "model.bin").is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _convert(model_dir: Path, target: Path, quantization: str, source: str, log: LogFn) -> dict[str, Any]:
    import ctranslate2
    from ctranslate2.converters import TransformersConverter

    started = time.perf_counter()
    log(f"converting {model_dir} to CTranslate2 ({quantization}) in {target}; once per model and quantization")
    copy = [name for name in TOKENIZER_FILES if (model_dir / name).is_file()]
    with atomic_dir(target) as tmp:
        try:
            TransformersConverter(str(model_dir), copy_files=copy, low_cpu_mem_usage=True).convert(
                str(tmp), quantization=quantization, force=True
            )
        except (ValueError, NotImplementedError, KeyError) as exc:
            raise ConfigError(f"{model_dir}: CTranslate2 cannot convert this model ({exc})") from None
        manifest = {
            "source": {"path": str(model_dir), "fingerprint": source},
            "quantization": quantization,
            "ctranslate2": ctranslate2.__version__,
            "convert_seconds": round(time.perf_counter() - started, 1),
            "bytes": (tmp / "model.bin").stat().st_size,
        }
        (tmp / CONVERTED_MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    log(f"converted in {manifest['convert_seconds']} s ({manifest['bytes'] / 2**20:.0f} MiB)")
    return manifest


# ---------------------------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class WorkerPlan:
    """Threads of a `CTranslate2Engine`.

    Attributes:
        workers: Generators running at once (CTranslate2 `inter_threads`, one model replica each).
        threads_per_worker: Threads of each (`intra_threads`).
    """

    workers: int = 2
    threads_per_worker: int = 1


def call_seed(requests: Sequence[GenerationRequest], worker: int) -> int:
    """A 31-bit seed for one worker of one `generate` call, from every request's id and seed."""
    digest = hashlib.blake2b(digest_size=8)
    for r in requests:
        digest.update(f"{r.request_id}\x1f{r.seed}\x1e".encode())
    digest.update(f"worker={worker}".encode())
    return int.from_bytes(digest.digest(), "big") % (2**31 - 1)


def stop_token_ids(tokenizer: Any, stop: Sequence[str]) -> list[int]:
    """Ids of every vocabulary token whose text contains one of the `stop` strings."""
    if not stop:
        return []
    vocab = tokenizer.get_vocab()
    ids = sorted(vocab.values())
    texts = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False)
    return [i for i, text in zip(ids, texts, strict=True) if any(s in text for s in stop)]


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the first stop string, and whether one was found."""
    cuts = [text.find(s) for s in stop if s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


class CTranslate2Engine:
    """A CTranslate2 model: batched sampling on `workers` single- or multi-thread generators.

    Args:
        model_dir: A converted folder (`converted_model`): CTranslate2 weights and the tokenizer files.
        sampling: Sampling settings (`top_k` 0: the full distribution).
        chat_template_kwargs: Passed to the chat template.
        batch_size: Sequences (prompts x completions) per forward pass of one worker.
        compute_type: `auto` (`resolve_compute_type`) or a CTranslate2 compute type.
        threads: Workers and their threads.
        stop: Strings that end a completion (besides the end-of-sequence token): every token containing
            one ends it, and the text is cut at the first one.
        log: Where the loading note goes.
    """

    def __init__(
        self,
        model_dir: Path | str,
        sampling: Sampling,
        chat_template_kwargs: Mapping[str, Any],
        batch_size: int,
        *,
        compute_type: str = "auto",
        threads: WorkerPlan = WorkerPlan(),
        stop: Sequence[str] = (),
        log: LogFn = lambda _m: None,
    ) -> None:
        import ctranslate2
        from transformers import AutoTokenizer

        started = time.perf_counter()
        self._ct2 = ctranslate2
        self.model_dir = Path(model_dir)
        self.name = f"ctranslate2:{self.model_dir.name}"
        self.sampling, self.chat_template_kwargs = sampling, dict(chat_template_kwargs)
        self.batch_size, self.threads, self.stop = batch_size, threads, tuple(stop)
        self.compute_type = cpu_compute_type(compute_type)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        eos = []
        config = self.model_dir / "generation_config.json"
        if config.is_file():
            value = json.loads(config.read_text(encoding="utf-8")).get("eos_token_id")
            eos = [value] if isinstance(value, int) else list(value or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in eos:
            eos.append(self.tokenizer.eos_token_id)
        self.eos_ids = eos
        self.end_ids = sorted(set(eos) | set(stop_token_ids(self.tokenizer, self.stop)))
        self.stats = EngineStats()
        log(
            f"{self.name}: {self.compute_type}, {threads.workers} worker(s) x {threads.threads_per_worker} thread(s), "
            f"{len(self.end_ids)} end tokens, ready in {time.perf_counter() - started:.1f} s"
        )

    def _workers(self, requests: Sequence[GenerationRequest]) -> list[Any]:
        """Fresh generators, each seeded for this call (see the module notes)."""
        ct2, workers = self._ct2, []
        warmup = [[self.tokenizer.eos_token]]
        with _restoring_torch_threads():
            for w in range(self.threads.workers):
                ct2.set_random_seed(call_seed(requests, w))
                generator = ct2.Generator(
                    str(self.model_dir),
                    device="cpu",
                    compute_type=self.compute_type,
                    inter_threads=1,
                    intra_threads=self.threads.threads_per_worker,
                    # Unbounded: with the default queue of a few batches, queueing one worker's share
                    # blocks until that worker has nearly finished it, so the next worker starts late
                    # (measured in `make demo`: 1.05 of 2 cores busy, the main thread waiting in
                    # JobQueue::put).
                    max_queued_batches=-1,
                )
                # The worker's random generator is seeded when it first samples: make that happen now.
                generator.generate_batch(warmup, max_length=1, sampling_topk=2, include_prompt_in_result=False)
                workers.append(generator)
        return workers

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Completions for every request, in the order of `requests`."""
        started = time.perf_counter()
        prompts = [render_chat(self.tokenizer, r.messages, self.chat_template_kwargs) for r in requests]
        encoded = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        tokens = [self.tokenizer.convert_ids_to_tokens(ids) for ids in encoded]  # CTranslate2 takes token strings
        s = self.sampling
        options = {
            "max_length": s.max_tokens,
            "sampling_topk": s.top_k if s.temperature > 0 else 1,
            "sampling_topp": s.top_p if s.temperature > 0 else 1.0,
            "sampling_temperature": s.temperature if s.temperature > 0 else 1.0,
            "end_token": self.end_ids,
            "return_end_token": True,
            "include_prompt_in_result": False,
        }
        workers = self._workers(requests)
        pending = self._submit(workers, requests, encoded, tokens, options)
        results: dict[int, GenerationResult] = {}
        for share, futures, repeat in pending:
            for i, future in zip(share, futures, strict=True):
                completions = [self._completion(ids) for ids in future.result().sequences_ids] * repeat
                results[i] = GenerationResult(requests[i].request_id, completions, len(encoded[i]))
        del workers, pending
        # The call's workers and their buffers are gone, but glibc keeps the freed heap: without this,
        # `make demo`'s llm_negatives grew by ~0.3 GiB a call to 7.8 GiB (a probe of 6 calls: 1.3 ->
        # 2.2 GiB; trimming after each call held it at 0.35-0.38 GiB).
        release_free_memory()
        self.stats.requests += len(requests)
        self.stats.completions += sum(len(r.completions) for r in results.values())
        self.stats.prompt_tokens += sum(len(encoded[i]) for i in results)
        self.stats.completion_tokens += sum(c.tokens for r in results.values() for c in r.completions)
        self.stats.seconds += time.perf_counter() - started
        return [results[i] for i in range(len(requests))]

    def _submit(
        self,
        workers: list[Any],
        requests: Sequence[GenerationRequest],
        encoded: list[list[int]],
        tokens: list[list[str]],
        options: dict[str, Any],
    ) -> list[tuple[list[int], list[Any], int]]:
        """Queue every request on a worker: (request indices, their futures, times each answer repeats)."""
        # Deal the length-sorted requests of each `n` out to the workers in turn: every worker gets a
        # fixed, similar share, and each sorts its own into batches of similar length.
        order = sorted(range(len(requests)), key=lambda i: (requests[i].n, len(encoded[i]), i))
        pending = []
        for n in sorted({r.n for r in requests}):
            same_n = [i for i in order if requests[i].n == n]
            # Greedy search has one answer per prompt: it is computed once and repeated `n` times.
            hypotheses = n if self.sampling.temperature > 0 else 1
            for w, generator in enumerate(workers):
                share = same_n[w :: len(workers)]
                if share:
                    futures = generator.generate_batch(
                        [tokens[i] for i in share],
                        max_batch_size=max(1, self.batch_size // hypotheses),
                        num_hypotheses=hypotheses,
                        asynchronous=True,
                        **options,
                    )
                    pending.append((share, futures, n // hypotheses))
        return pending

    def _completion(self, ids: list[int]) -> Completion:
        ended = bool(ids) and ids[-1] in self.end_ids
        # A stop token may carry text before the stop string (".\n\n"): decode it, then cut.
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        if self.stop:
            text, _ = cut_at_stop(text, self.stop)
        return Completion(text, len(ids), "stop" if ended else "length")

    def close(self) -> None:
        """Nothing is held between calls (the workers of a call are freed at its end)."""
