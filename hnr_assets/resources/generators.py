"""Generator backends: one interface (`GeneratorBackend.engine`), four real implementations.

- `VllmBackend`: vLLM offline inference (`LLM.generate` over a whole shard of prompts, per-request
  seeds, tensor parallelism). vLLM is in the `gpu` extra and imported only inside `engine`.
- `TransformersBackend`: transformers `generate`, batched and left-padded, CPU or GPU. Batches are
  sorted by prompt length; one seed per batch (transformers has no per-row generator).
- `CTranslate2Backend`: CTranslate2 on CPU (`lib.ctranslate2_engine`): the model converted once to
  int8, every request's completions sampled from one reading of its prompt, on single-thread workers.
- `OpenAIBackend`: an OpenAI-compatible `/chat/completions` endpoint (`vllm serve`, llama.cpp's
  server, SGLang, a hosted API): bounded concurrency, connect/read timeouts, retries with exponential
  backoff and jitter on timeouts, connection errors, 408/409/429/5xx and malformed answers. The API key
  comes from `HNR_GENERATOR_API_KEY` (read in `hnr_assets/settings.py`) and is never logged.

`GeneratorBackendsResource` (resource key `generator_backends`) holds one of each and picks the one a
generator's `backend` names; a generator's `engine_options` override the backend's settings.
`prepare` makes files a backend needs besides the weights, once, in the `generator_models` asset.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import dagster as dg
from pydantic import Field

from hnr_assets.lib.backends import (
    Completion,
    EngineStats,
    GenerationBackendError,
    GenerationRequest,
    GenerationResult,
    MalformedResponseError,
    Sampling,
    backoff_delay,
    hf_generate_kwargs,
    openai_chat_payload,
    parse_chat_response,
    render_chat,
    vllm_sampling_kwargs,
)
from hnr_assets.lib.errors import ConfigError
from hnr_assets.lib.remote_code import trust_remote_code

log = logging.getLogger(__name__)
LogFn = Callable[[str], None]
_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


def sampling_of(spec: Any) -> Sampling:
    """The backend-neutral sampling of a `GeneratorSpec`."""
    s = spec.sampling
    return Sampling(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, max_tokens=s.max_tokens)


class GeneratorBackend(dg.ConfigurableResource, ABC):
    """A way to run a generator. `engine` loads it and yields an object with `generate(requests)`."""

    @abstractmethod
    def engine(self, spec: Any, model_dir: Path | None, log: LogFn = log.info) -> contextlib.AbstractContextManager:
        """Load the generator `spec` (weights in `model_dir`; None for a served model) for the `with` block."""

    def with_options(self, options: Mapping[str, Any]) -> GeneratorBackend:
        """A copy with a generator's `engine_options` applied (unknown names are an error)."""
        if not options:
            return self
        fields = set(type(self).model_fields)
        unknown = sorted(set(options) - fields)
        if unknown:
            raise ConfigError(
                f"engine_options {unknown} are not settings of {type(self).__name__}; known: {sorted(fields)}"
            )
        config = {name: getattr(self, name) for name in fields}
        return type(self)(**{**config, **options})

    def describe(self) -> dict[str, Any]:
        """Settings that change what is generated, for the generation signature (no secrets)."""
        return {"backend": type(self).__name__}

    def prepare(self, model_dir: Path, log: LogFn = log.info) -> dict[str, Any]:
        """Make what the engine needs besides the weights in `model_dir` (once); a note for `model.json`."""
        return {}


# ---------------------------------------------------------------------------------------------- transformers


class TransformersEngine:
    """A causal LM loaded with transformers; batched, left-padded generation.

    Args:
        model_dir: A transformers folder with a chat template.
        sampling: Sampling settings.
        chat_template_kwargs: Passed to the chat template.
        batch_size: Sequences (prompts × completions) per forward pass.
        device: `cpu`, `cuda`, `cuda:1`, or `auto`.
        precision: `auto` (bf16 on a GPU that has it; fp32 on CPU unless it has native bf16),
            `float32`, `bfloat16`, `float16`.
        log: Progress notes.
    """

    def __init__(
        self,
        model_dir: Path,
        sampling: Sampling,
        chat_template_kwargs: Mapping[str, Any],
        batch_size: int,
        device: str = "auto",
        precision: str = "auto",
        log: LogFn = log.info,
        trust_remote_code: bool = False,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = f"transformers:{Path(model_dir).name}"
        self.sampling, self.chat_template_kwargs, self.batch_size = sampling, dict(chat_template_kwargs), batch_size
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        weights_dtype, self.autocast = self._precision(torch, precision)
        started = time.perf_counter()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = (
            AutoModelForCausalLM.from_pretrained(model_dir, dtype=weights_dtype, trust_remote_code=trust_remote_code)
            .to(self.device)
            .eval()
        )
        eos = self.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in eos:
            eos.append(self.tokenizer.eos_token_id)
        self.eos_ids = eos
        self.stats = EngineStats()
        log(
            f"{self.name}: loaded on {self.device} ({weights_dtype}, autocast {self.autocast}) "
            f"in {time.perf_counter() - started:.1f} s"
        )

    def _precision(self, torch, precision: str):
        names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if precision != "auto":
            return names[precision], None
        if self.device.startswith("cuda"):
            return (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16), None
        # On a CPU without native bf16 (AVX-512 BF16 / AMX), bf16 autocast is emulated and ~10x slower.
        native_bf16 = torch.cpu._is_avx512_bf16_supported() or getattr(torch.cpu, "_is_amx_tile_supported", bool)()
        return torch.float32, (torch.bfloat16 if native_bf16 else None)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        import torch

        started = time.perf_counter()
        prompts = [render_chat(self.tokenizer, r.messages, self.chat_template_kwargs) for r in requests]
        encoded = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        results: dict[int, GenerationResult] = {}
        kwargs = hf_generate_kwargs(self.sampling)
        # Group by n, sort by prompt length (less padding), cut into batches of <= batch_size sequences.
        order = sorted(range(len(requests)), key=lambda i: (requests[i].n, len(encoded[i])))
        batches: list[list[int]] = []
        for i in order:
            per = max(1, self.batch_size // requests[i].n)
            if batches and requests[batches[-1][0]].n == requests[i].n and len(batches[-1]) < per:
                batches[-1].append(i)
            else:
                batches.append([i])
        for batch in batches:
            n = requests[batch[0]].n
            torch.manual_seed(requests[batch[0]].seed)
            enc = self.tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, return_tensors="pt").to(self.device)
            autocast = (
                torch.autocast("cpu", dtype=self.autocast) if self.autocast is not None else contextlib.nullcontext()
            )
            with torch.inference_mode(), autocast:
                out = self.model.generate(
                    **enc,
                    **kwargs,
                    num_return_sequences=n,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=self.eos_ids,
                )
            new = out[:, enc["input_ids"].shape[1] :].tolist()
            for j, i in enumerate(batch):
                completions = [self._completion(row) for row in new[j * n : (j + 1) * n]]
                results[i] = GenerationResult(requests[i].request_id, completions, len(encoded[i]))
                self.stats.completion_tokens += sum(c.tokens for c in completions)
            self.stats.prompt_tokens += sum(len(encoded[i]) * n for i in batch)
        self.stats.requests += len(requests)
        self.stats.completions += sum(r.n for r in requests)
        self.stats.seconds += time.perf_counter() - started
        return [results[i] for i in range(len(requests))]

    def _completion(self, ids: list[int]) -> Completion:
        stop = next((k for k, t in enumerate(ids) if t in self.eos_ids), None)
        used = ids[: stop + 1] if stop is not None else ids
        text = self.tokenizer.decode(used, skip_special_tokens=True)
        return Completion(text, len(used), "stop" if stop is not None else "length")

    def close(self) -> None:
        del self.model
        gc.collect()


class TransformersBackend(GeneratorBackend):
    """transformers `generate`, batched and left-padded, on CPU or GPU."""

    device: str = Field(default="auto", description="`auto`, `cpu`, `cuda`, `cuda:N`.")
    precision: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="`auto`: bf16/fp16 on GPU; fp32 on CPU, with bf16 autocast only where the CPU has native bf16.",
    )
    torch_threads: int = Field(default=0, ge=0, description="torch intra-op threads on CPU (0: torch's default).")

    @contextlib.contextmanager
    def engine(self, spec: Any, model_dir: Path | None, log: LogFn = log.info) -> Iterator[TransformersEngine]:
        if model_dir is None:
            raise ConfigError(f"generator {spec.key!r}: the transformers backend needs model weights")
        import torch

        threads = torch.get_num_threads()
        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        try:
            engine = TransformersEngine(
                model_dir,
                sampling_of(spec),
                spec.chat_template_kwargs,
                spec.batch_size,
                device=self.device,
                precision=self.precision,
                log=log,
                trust_remote_code=trust_remote_code(
                    model_dir, spec.trust_remote_code, f"generators[{spec.key}].trust_remote_code"
                ),
            )
            try:
                yield engine
            finally:
                engine.close()
        finally:
            torch.set_num_threads(threads)

    def describe(self) -> dict[str, Any]:
        return {"backend": "transformers", "precision": self.precision}


# ---------------------------------------------------------------------------------------------- CTranslate2


class CTranslate2Backend(GeneratorBackend):
    """CTranslate2 on CPU: the weights converted once (`quantization`), sampled on `workers` generators."""

    quantization: Literal["int8", "int8_float32", "int8_bfloat16", "int16", "float32", "bfloat16"] = Field(
        default="int8", description="Weight type of the converted model (converted once per model and type)."
    )
    compute_type: Literal["auto", "int8", "int8_float32", "int8_bfloat16", "int16", "float32", "bfloat16"] = Field(
        default="auto",
        description="`auto`: int8 with bf16 activations where CTranslate2 offers it on a CPU with native bf16, "
        "else int8 with fp32 activations.",
    )
    workers: int = Field(
        default=2, ge=1, le=64, description="Generators running at once (one model replica and thread pool each)."
    )
    threads_per_worker: int = Field(
        default=1, ge=1, le=64, description="Threads of each worker (1: nothing spins when the CPU is shared)."
    )
    cache_dir: str = Field(
        default="", description="Where converted models live (empty: a `ctranslate2` folder beside the weights)."
    )

    def _cache_root(self, model_dir: Path) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(model_dir).parent / "ctranslate2"

    def prepare(self, model_dir: Path, log: LogFn = log.info) -> dict[str, Any]:
        from hnr_assets.lib.ctranslate2_engine import converted_model

        folder, manifest = converted_model(model_dir, self._cache_root(model_dir), self.quantization, log)
        return {"ctranslate2": {"path": str(folder), **manifest}}

    @contextlib.contextmanager
    def engine(self, spec: Any, model_dir: Path | None, log: LogFn = log.info) -> Iterator[Any]:
        if model_dir is None:
            raise ConfigError(f"generator {spec.key!r}: the ctranslate2 backend needs model weights")
        from hnr_assets.lib.ctranslate2_engine import CTranslate2Engine, WorkerPlan, converted_model

        trust_remote_code(model_dir, spec.trust_remote_code, f"generators[{spec.key}].trust_remote_code")
        folder, _ = converted_model(Path(model_dir), self._cache_root(Path(model_dir)), self.quantization, log)
        engine = CTranslate2Engine(
            folder,
            sampling_of(spec),
            spec.chat_template_kwargs,
            spec.batch_size,
            compute_type=self.compute_type,
            threads=WorkerPlan(self.workers, self.threads_per_worker),
            log=log,
        )
        try:
            yield engine
        finally:
            engine.close()

    def describe(self) -> dict[str, Any]:
        import ctranslate2

        from hnr_assets.lib.ctranslate2_engine import cpu_flags, resolve_compute_type

        supported = set(ctranslate2.get_supported_compute_types("cpu"))
        return {
            "backend": "ctranslate2",
            "quantization": self.quantization,
            "compute_type": resolve_compute_type(self.compute_type, supported, cpu_flags()),
            # The workers' seeds and their shares of the requests depend on these.
            "workers": self.workers,
            "threads_per_worker": self.threads_per_worker,
        }


# ---------------------------------------------------------------------------------------------- vLLM


def vllm_prompts(tokenizer: Any, requests: Sequence[GenerationRequest], chat_template_kwargs: Mapping[str, Any]):
    """vLLM token prompts (`{"prompt_token_ids": [...]}`) for chat requests.

    The chat template already writes the special tokens (e.g. Llama 3's `<|begin_of_text|>`), so the
    text is tokenized without adding them again, which `LLM.generate` on a plain string would do.
    """
    return [
        {
            "prompt_token_ids": tokenizer(
                render_chat(tokenizer, r.messages, chat_template_kwargs), add_special_tokens=False
            )["input_ids"]
        }
        for r in requests
    ]


class VllmEngine:
    """vLLM offline inference over a list of requests (one `LLM.generate` call per `generate`).

    Args:
        model_dir: Model folder (or hub id).
        sampling: Sampling settings; each request's seed is used per request.
        chat_template_kwargs: Passed to the chat template.
        llm_kwargs: `vllm.LLM(**llm_kwargs)`: tensor_parallel_size, gpu_memory_utilization, max_model_len, ...
        log: Progress notes.
    """

    def __init__(
        self,
        model_dir: Path | str,
        sampling: Sampling,
        chat_template_kwargs: Mapping[str, Any],
        llm_kwargs: Mapping[str, Any],
        log: LogFn = log.info,
    ) -> None:
        try:
            from vllm import LLM, SamplingParams
        except ImportError:
            raise GenerationBackendError(
                "the vllm backend needs vLLM on a GPU machine: pip install -e '.[gpu]' "
                "(it is not installable on CPU-only hosts)"
            ) from None
        started = time.perf_counter()
        self.name = f"vllm:{Path(str(model_dir)).name}"
        self._sampling_params = SamplingParams
        self.sampling, self.chat_template_kwargs = sampling, dict(chat_template_kwargs)
        self.llm = LLM(model=str(model_dir), **llm_kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.stats = EngineStats()
        log(f"{self.name}: vLLM engine ready in {time.perf_counter() - started:.1f} s ({dict(llm_kwargs)})")

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        started = time.perf_counter()
        prompts = vllm_prompts(self.tokenizer, requests, self.chat_template_kwargs)
        params = [self._sampling_params(**vllm_sampling_kwargs(self.sampling, r.n, r.seed)) for r in requests]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        results = []
        for request, prompt, output in zip(requests, prompts, outputs, strict=True):
            completions = [
                Completion(o.text, len(o.token_ids), "length" if o.finish_reason == "length" else "stop")
                for o in sorted(output.outputs, key=lambda o: o.index)
            ]
            results.append(GenerationResult(request.request_id, completions, len(prompt["prompt_token_ids"])))
            self.stats.completion_tokens += sum(c.tokens for c in completions)
        self.stats.requests += len(requests)
        self.stats.seconds += time.perf_counter() - started
        return results

    def close(self) -> None:
        del self.llm
        gc.collect()
        with contextlib.suppress(ImportError):
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()


class VllmBackend(GeneratorBackend):
    """vLLM offline inference (the `gpu` extra); the study's way of running its four generators."""

    tensor_parallel_size: int = Field(default=1, ge=1, description="GPUs per model (tensor parallelism).")
    gpu_memory_utilization: float = Field(default=0.90, gt=0.0, le=1.0, description="Share of GPU memory for vLLM.")
    max_model_len: int | None = Field(default=None, gt=0, description="Context length cap (None: the model's).")
    dtype: str = Field(default="auto", description="Weights dtype (`auto`, `bfloat16`, `float16`).")
    enforce_eager: bool = Field(default=False, description="Disable CUDA graphs (slower; less memory).")
    seed: int = Field(default=0, description="Engine seed (requests carry their own seeds).")

    def llm_kwargs(self) -> dict[str, Any]:
        """`vllm.LLM` keyword arguments from these settings."""
        kwargs: dict[str, Any] = {
            "tensor_parallel_size": self.tensor_parallel_size,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "dtype": self.dtype,
            "enforce_eager": self.enforce_eager,
            "seed": self.seed,
        }
        if self.max_model_len is not None:
            kwargs["max_model_len"] = self.max_model_len
        return kwargs

    @contextlib.contextmanager
    def engine(self, spec: Any, model_dir: Path | None, log: LogFn = log.info) -> Iterator[VllmEngine]:
        allowed = spec.trust_remote_code
        if model_dir is not None:
            trust_remote_code(model_dir, allowed, f"generators[{spec.key}].trust_remote_code")
        engine = VllmEngine(
            model_dir or spec.model,
            sampling_of(spec),
            spec.chat_template_kwargs,
            {**self.llm_kwargs(), "trust_remote_code": allowed},
            log,
        )
        try:
            yield engine
        finally:
            engine.close()

    def describe(self) -> dict[str, Any]:
        return {"backend": "vllm", "dtype": self.dtype, "max_model_len": self.max_model_len}


# ---------------------------------------------------------------------------------------------- OpenAI-compatible


class OpenAIEngine:
    """Chat completions from an OpenAI-compatible server, `concurrency` requests in flight.

    Args:
        endpoint: Base URL, e.g. `http://127.0.0.1:8000/v1` (`/chat/completions` is appended).
        model: Served model name.
        sampling: Sampling settings.
        chat_template_kwargs: Sent as `chat_template_kwargs` when `extra_sampling`.
        api_key: Bearer token ("" for none). Never logged or put in an error message.
        concurrency: Requests in flight.
        timeout_seconds: Read timeout per HTTP request.
        connect_timeout_seconds: Connect timeout per HTTP request.
        max_retries: Retries per request after the first try.
        backoff_seconds: Base of the exponential backoff.
        backoff_cap_seconds: Longest wait between two tries.
        one_completion_per_request: Send `n` requests with `n=1` (servers without `n` support, e.g. llama.cpp).
        extra_sampling: Send `top_k` and `chat_template_kwargs` (vLLM/llama.cpp extensions).
        log: Progress notes.
    """

    def __init__(
        self,
        endpoint: str,
        model: str,
        sampling: Sampling,
        chat_template_kwargs: Mapping[str, Any],
        *,
        api_key: str = "",
        concurrency: int = 8,
        timeout_seconds: float = 120.0,
        connect_timeout_seconds: float = 10.0,
        max_retries: int = 4,
        backoff_seconds: float = 1.0,
        backoff_cap_seconds: float = 30.0,
        one_completion_per_request: bool = False,
        extra_sampling: bool = True,
        log: LogFn = log.info,
    ) -> None:
        self.url = endpoint.rstrip("/") + "/chat/completions"
        self.name = f"openai:{model}@{endpoint}"
        self.model, self.sampling, self.chat_template_kwargs = model, sampling, dict(chat_template_kwargs)
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self.concurrency, self.max_retries = concurrency, max_retries
        self.timeout = (connect_timeout_seconds, timeout_seconds)
        self.backoff_seconds, self.backoff_cap_seconds = backoff_seconds, backoff_cap_seconds
        self.one_completion_per_request, self.extra_sampling = one_completion_per_request, extra_sampling
        self.log = log
        self._local = threading.local()
        self._lock = threading.Lock()
        self.stats = EngineStats()

    def __repr__(self) -> str:  # no headers, so no key
        return f"OpenAIEngine({self.url!r}, model={self.model!r})"

    def _session(self):
        import requests

        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(requests) or 1))) as pool:
            results = list(pool.map(self._one, requests))
        with self._lock:
            self.stats.requests += len(requests)
            self.stats.seconds += time.perf_counter() - started
        return results

    def _one(self, request: GenerationRequest) -> GenerationResult:
        if self.one_completion_per_request and request.n > 1:
            calls = [(1, request.seed + i) for i in range(request.n)]
        else:
            calls = [(request.n, request.seed)]
        completions: list[Completion] = []
        prompt_tokens = 0
        for n, seed in calls:
            payload = openai_chat_payload(
                self.model,
                request,
                self.sampling,
                n=n,
                seed=seed,
                chat_template_kwargs=self.chat_template_kwargs,
                extra_sampling=self.extra_sampling,
            )
            got, prompt = self._post(payload, n)
            completions.extend(got)
            prompt_tokens = prompt_tokens or prompt
        with self._lock:
            self.stats.completions += len(completions)
            self.stats.completion_tokens += sum(c.tokens for c in completions)
            self.stats.prompt_tokens += prompt_tokens
        return GenerationResult(request.request_id, completions, prompt_tokens)

    def _post(self, payload: dict[str, Any], expected: int) -> tuple[list[Completion], int]:
        import requests

        body = json.dumps(payload)
        problem = ""
        for attempt in range(1, self.max_retries + 2):
            retry_after = 0.0
            try:
                response = self._session().post(self.url, data=body, headers=self._headers, timeout=self.timeout)
            except requests.Timeout:
                problem = f"no answer within {self.timeout[1]:g} s"
            except requests.ConnectionError as exc:
                problem = f"connection failed ({type(exc).__name__})"
            else:
                if response.status_code == 200:
                    try:
                        return parse_chat_response(response.content, expected)
                    except MalformedResponseError as exc:
                        problem = f"malformed answer: {exc}"
                elif response.status_code in _RETRY_STATUS:
                    problem = f"HTTP {response.status_code}"
                    with contextlib.suppress(ValueError):
                        retry_after = float(response.headers.get("Retry-After", 0))
                else:
                    raise GenerationBackendError(
                        f"{self.url}: HTTP {response.status_code} (not retried): {response.text[:300]!r}"
                    )
            if attempt > self.max_retries:
                break
            delay = min(
                self.backoff_cap_seconds,
                max(retry_after, backoff_delay(attempt, self.backoff_seconds, self.backoff_cap_seconds)),
            )
            with self._lock:
                self.stats.retries += 1
            self.log(f"{self.url}: {problem}; retry {attempt}/{self.max_retries} in {delay:.1f} s")
            time.sleep(delay)
        raise GenerationBackendError(f"{self.url}: {problem} after {self.max_retries + 1} tries")

    def close(self) -> None:
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()


class OpenAIBackend(GeneratorBackend):
    """An OpenAI-compatible chat completions server: a generator's `endpoint`, else `base_url`."""

    api_key: str = Field(
        default="", description="Bearer token; from HNR_GENERATOR_API_KEY or OPENAI_API_KEY, never logged."
    )
    base_url: str = Field(default="", description="Endpoint for generators without one (OPENAI_BASE_URL).")
    concurrency: int = Field(default=8, ge=1, le=256, description="Requests in flight.")
    timeout_seconds: float = Field(default=120.0, gt=0, description="Read timeout per HTTP request.")
    connect_timeout_seconds: float = Field(default=10.0, gt=0, description="Connect timeout per HTTP request.")
    max_retries: int = Field(default=4, ge=0, le=20, description="Retries per request after the first try.")
    backoff_seconds: float = Field(default=1.0, ge=0, description="Base of the exponential backoff.")
    backoff_cap_seconds: float = Field(default=30.0, ge=0, description="Longest wait between two tries.")
    one_completion_per_request: bool = Field(
        default=False, description="Send n requests with n=1 (for servers that ignore `n`, e.g. llama.cpp)."
    )
    extra_sampling: bool = Field(
        default=True, description="Send top_k and chat_template_kwargs (vLLM/llama.cpp extensions to the API)."
    )

    def endpoint_for(self, spec: Any) -> str:
        """The generator's endpoint, else the backend's `base_url`.

        Raises:
            ConfigError: Neither is set.
        """
        endpoint = spec.endpoint or self.base_url
        if not endpoint:
            raise ConfigError(
                f"generator {spec.key!r}: backend 'openai' needs an endpoint: set `endpoint` in the profile "
                "or the OPENAI_BASE_URL environment variable"
            )
        return endpoint.rstrip("/")

    @contextlib.contextmanager
    def engine(self, spec: Any, model_dir: Path | None, log: LogFn = log.info) -> Iterator[OpenAIEngine]:
        engine = OpenAIEngine(
            self.endpoint_for(spec),
            spec.model,
            sampling_of(spec),
            spec.chat_template_kwargs,
            api_key=self.api_key,
            concurrency=self.concurrency,
            timeout_seconds=self.timeout_seconds,
            connect_timeout_seconds=self.connect_timeout_seconds,
            max_retries=self.max_retries,
            backoff_seconds=self.backoff_seconds,
            backoff_cap_seconds=self.backoff_cap_seconds,
            one_completion_per_request=self.one_completion_per_request,
            extra_sampling=self.extra_sampling,
            log=log,
        )
        try:
            yield engine
        finally:
            engine.close()

    def describe(self) -> dict[str, Any]:
        return {"backend": "openai", "extra_sampling": self.extra_sampling}


# ---------------------------------------------------------------------------------------------- the resource


class GeneratorBackendsResource(dg.ConfigurableResource):
    """The four backends; `for_spec` picks the one a generator names and applies its `engine_options`."""

    transformers: TransformersBackend
    vllm: VllmBackend
    openai: OpenAIBackend
    ctranslate2: CTranslate2Backend

    def for_spec(self, spec: Any) -> GeneratorBackend:
        backend = {
            "transformers": self.transformers,
            "vllm": self.vllm,
            "openai": self.openai,
            "ctranslate2": self.ctranslate2,
        }[spec.backend]
        try:
            return backend.with_options(spec.engine_options)
        except ConfigError as exc:
            raise ConfigError(f"generator {spec.key!r}: {exc}") from None
