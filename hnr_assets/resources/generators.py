"""Generator backends as resources: one interface (`GeneratorBackend.engine`), four real implementations.

Each backend is a typed `ConfigurableResource` holding the settings of one engine of
`lib.generation.engines` (CTranslate2's: `lib.generation.ctranslate2_engine`) and building it for a
generator of the profile:

- `VllmBackend`: vLLM offline inference (the `gpu` extra, imported only inside `engine`).
- `TransformersBackend`: transformers `generate`, batched and left-padded, CPU or GPU.
- `CTranslate2Backend`: CTranslate2 on CPU: the model converted once to int8, every request's
  completions sampled from one reading of its prompt, on single-thread workers.
- `OpenAIBackend`: an OpenAI-compatible `/chat/completions` endpoint. The API key comes from
  `HNR_GENERATOR_API_KEY` (read in `hnr_assets/settings.py`) and is never logged.

`GeneratorBackendsResource` (resource key `generator_backends`) holds one of each and picks the one a
generator's `backend` names; a generator's `engine_options` override the backend's settings.
`prepare` makes files a backend needs besides the weights, once, in the `generator_models` asset.
"""

from __future__ import annotations

import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import dagster as dg
from pydantic import Field

from hnr_assets.lib.generation.backends import Sampling
from hnr_assets.lib.generation.ctranslate2_engine import COMPUTE_TYPES, QUANTIZATIONS
from hnr_assets.lib.generation.engines import OpenAIEngine, TransformersEngine, VllmEngine
from hnr_assets.lib.runtime.errors import ConfigError
from hnr_assets.lib.runtime.remote_code import trust_remote_code

log = logging.getLogger(__name__)
LogFn = Callable[[str], None]


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
        return type(self)(**{**self.settings(), **options})

    def settings(self) -> dict[str, Any]:
        """The backend's settings by name (resolved values, so the API key too: never log this)."""
        return {name: getattr(self, name) for name in type(self).model_fields}

    def describe(self) -> dict[str, Any]:
        """Settings that change what is generated, for the generation signature (no secrets)."""
        return {"backend": type(self).__name__}

    def prepare(self, model_dir: Path, log: LogFn = log.info) -> dict[str, Any]:
        """Make what the engine needs besides the weights in `model_dir` (once); a note for `model.json`."""
        return {}


# ---------------------------------------------------------------------------------------------- transformers


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

    quantization: Literal[QUANTIZATIONS] = Field(
        default="int8", description="Weight type of the converted model (converted once per model and type)."
    )
    compute_type: Literal[COMPUTE_TYPES] = Field(
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
        from hnr_assets.lib.generation.ctranslate2_engine import converted_model

        folder, manifest = converted_model(model_dir, self._cache_root(model_dir), self.quantization, log)
        return {"ctranslate2": {"path": str(folder), **manifest}}

    @contextlib.contextmanager
    def engine(self, spec: Any, model_dir: Path | None, log: LogFn = log.info) -> Iterator[Any]:
        if model_dir is None:
            raise ConfigError(f"generator {spec.key!r}: the ctranslate2 backend needs model weights")
        from hnr_assets.lib.generation.ctranslate2_engine import CTranslate2Engine, WorkerPlan, converted_model

        trust_remote_code(model_dir, spec.trust_remote_code, f"generators[{spec.key}].trust_remote_code")
        folder, _ = converted_model(Path(model_dir), self._cache_root(Path(model_dir)), self.quantization, log)
        threads = WorkerPlan(self.workers, self.threads_per_worker)
        options = {"compute_type": self.compute_type, "threads": threads, "log": log}
        engine = CTranslate2Engine(folder, sampling_of(spec), spec.chat_template_kwargs, spec.batch_size, **options)
        try:
            yield engine
        finally:
            engine.close()

    def describe(self) -> dict[str, Any]:
        from hnr_assets.lib.generation.ctranslate2_engine import cpu_compute_type

        return {
            "backend": "ctranslate2",
            "quantization": self.quantization,
            "compute_type": cpu_compute_type(self.compute_type),
            # The workers' seeds and their shares of the requests depend on these.
            "workers": self.workers,
            "threads_per_worker": self.threads_per_worker,
        }


# ---------------------------------------------------------------------------------------------- vLLM


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
        kwargs = self.settings()
        if kwargs["max_model_len"] is None:
            del kwargs["max_model_len"]
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
        options = {k: v for k, v in self.settings().items() if k != "base_url"}
        engine = OpenAIEngine(
            self.endpoint_for(spec), spec.model, sampling_of(spec), spec.chat_template_kwargs, **options, log=log
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
