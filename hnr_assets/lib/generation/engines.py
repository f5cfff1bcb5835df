"""The generation engines: a loaded model (or a server) with `generate(requests) -> results`.

- `TransformersEngine`: transformers `generate`, batched and left-padded, CPU or GPU. Batches are
  sorted by prompt length; one seed per batch (transformers has no per-row generator).
- `VllmEngine`: vLLM offline inference (`LLM.generate` over a whole shard of prompts, per-request
  seeds, tensor parallelism). vLLM is in the `gpu` extra and imported only when the engine is built.
- `OpenAIEngine`: an OpenAI-compatible `/chat/completions` endpoint (`vllm serve`, llama.cpp's
  server, SGLang, a hosted API): bounded concurrency, connect/read timeouts, retries with exponential
  backoff and jitter on timeouts, connection errors, 408/409/429/5xx and malformed answers. The API key
  is never logged.

`CTranslate2Engine` (CPU, the `local` profile's) lives with its model conversion in
`lib.generation.ctranslate2_engine`. The request and result types and the pure mappings (sampling per
engine, chat payloads) are in `lib.generation.backends`; the Dagster resources that build these engines
from a profile's generator are in `hnr_assets/resources/generators.py`.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hnr_assets.lib.generation.backends import (
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
from hnr_assets.lib.runtime.errors import SourceNotFoundError
from hnr_assets.lib.runtime.precision import resolve_device, resolve_precision, torch_dtype

log = logging.getLogger(__name__)
LogFn = Callable[[str], None]
_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


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
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = f"transformers:{Path(model_dir).name}"
        self.sampling, self.chat_template_kwargs, self.batch_size = sampling, dict(chat_template_kwargs), batch_size
        self.device = resolve_device(device)
        weights_dtype, self.autocast = self._precision(precision)
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

    def _precision(self, precision: str):
        """(weights dtype, CPU autocast dtype or None) for a `precision` setting of the backend.

        `auto` follows `lib.runtime.precision`: bf16 (else fp16) weights on a GPU; on a CPU fp32 weights,
        with bf16 autocast only where the CPU has native bf16 (emulated bf16 is ~10x slower).
        """
        names = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
        if precision != "auto":
            return torch_dtype(names[precision]), None
        resolved = resolve_precision("auto", self.device)
        if self.device.startswith("cuda"):
            return torch_dtype(resolved), None
        return torch_dtype("fp32"), (torch_dtype("bf16") if resolved == "bf16" else None)

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


def served_models(endpoint: str, api_key: str = "", connect_timeout_seconds: float = 10.0) -> list[str]:
    """The model names an OpenAI-compatible server serves (`GET <endpoint>/models`).

    Raises:
        SourceNotFoundError: The server cannot be asked, or answers without a model list.
    """
    import requests

    url = endpoint.rstrip("/") + "/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = requests.get(url, headers=headers, timeout=(connect_timeout_seconds, 30))
        response.raise_for_status()
        return [m.get("id") for m in response.json().get("data", [])]
    except (requests.RequestException, ValueError, AttributeError) as exc:
        raise SourceNotFoundError(f"{url}: cannot list the served models ({type(exc).__name__}: {exc})") from None
