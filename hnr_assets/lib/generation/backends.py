"""The pure parts of the generator backends: request and result types, sampling mapped to each
backend's parameters, chat templates, the OpenAI wire format, and retry delays.

The engines themselves (vLLM, transformers, an OpenAI-compatible HTTP endpoint) live in
`lib.generation.engines` (built by the resources of `hnr_assets/resources/generators.py`); everything
here is importable without torch, vLLM or a network.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from hnr_assets.lib.runtime.errors import HnrError


class GenerationBackendError(HnrError):
    """A generator backend failed (model load, server unreachable, malformed answers after retries)."""


class MalformedResponseError(GenerationBackendError):
    """An OpenAI-compatible server answered with something that is not a chat completion."""


@dataclass(frozen=True)
class Sampling:
    """Sampling settings, backend-neutral (the profile's `SamplingSettings`)."""

    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 20
    max_tokens: int = 1024


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt for which `n` completions are wanted.

    Attributes:
        request_id: Unique within one `generate` call (e.g. `<pair index>:<attempt>`).
        messages: Chat messages (`role`, `content`).
        n: Completions wanted.
        seed: Seed of this request (used per request where the backend allows it).
    """

    request_id: str
    messages: tuple[Mapping[str, str], ...]
    n: int
    seed: int


@dataclass(frozen=True)
class Completion:
    """One completion.

    Attributes:
        text: Generated text (special tokens removed).
        tokens: Generated tokens, the end-of-sequence token included when there was one.
        finish_reason: `stop` (end of sequence or stop string) or `length` (hit `max_tokens`).
    """

    text: str
    tokens: int
    finish_reason: str


@dataclass
class GenerationResult:
    """The completions of one request, in order."""

    request_id: str
    completions: list[Completion]
    prompt_tokens: int = 0


@dataclass
class GenerationCounts:
    """Requests, completions and tokens: counted by an engine, summed over a run (`runner.RunReport`)."""

    requests: int = 0
    completions: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class EngineStats(GenerationCounts):
    """What an engine did, for throughput reporting."""

    retries: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Engine(Protocol):
    """A loaded generator: turns requests into completions. Implementations batch internally."""

    name: str

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Completions for every request, in the order of `requests`."""
        ...


def request_seed(base_seed: int, query_id: str, positive_id: str, attempt: int) -> int:
    """A 31-bit seed that depends only on the generator's seed, the pair and the attempt.

    The same pair gets the same seed whatever batch or shard it lands in (where the backend honours
    per-request seeds: vLLM and most OpenAI-compatible servers), and a retry gets a new one.
    """
    key = f"{base_seed}\x1f{query_id}\x1f{positive_id}\x1f{attempt}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") % (2**31 - 1)


# ------------------------------------------------------------------------------------------ sampling maps


def hf_generate_kwargs(sampling: Sampling) -> dict[str, Any]:
    """`model.generate` keyword arguments (transformers) for `sampling`."""
    if sampling.temperature == 0:
        return {"do_sample": False, "max_new_tokens": sampling.max_tokens}
    return {
        "do_sample": True,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,  # 0 disables top-k in transformers
        "max_new_tokens": sampling.max_tokens,
    }


def vllm_sampling_kwargs(sampling: Sampling, n: int, seed: int) -> dict[str, Any]:
    """`vllm.SamplingParams(**kwargs)` for one request (top-k 0 is vLLM's -1: off)."""
    return {
        "n": n,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k if sampling.top_k > 0 else -1,
        "max_tokens": sampling.max_tokens,
        "seed": seed,
    }


def render_chat(tokenizer: Any, messages: Sequence[Mapping[str, str]], chat_template_kwargs: Mapping[str, Any]) -> str:
    """The prompt string of a chat, through the tokenizer's chat template, ready for generation.

    `chat_template_kwargs` reach the template (e.g. `enable_thinking=False` for Qwen3). A template
    that refuses a system role gets the system text prepended to the first user message.
    """
    kwargs = dict(chat_template_kwargs)
    try:
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True, **kwargs)
    except Exception as exc:
        if not messages or messages[0]["role"] != "system" or "system" not in str(exc).lower():
            raise
        merged = [
            {"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]},
            *messages[2:],
        ]
        return tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True, **kwargs)


# ------------------------------------------------------------------------------------------ OpenAI wire format


def openai_chat_payload(
    model: str,
    request: GenerationRequest,
    sampling: Sampling,
    *,
    n: int | None = None,
    seed: int | None = None,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    extra_sampling: bool = True,
) -> dict[str, Any]:
    """The JSON body of `POST <endpoint>/chat/completions`.

    Args:
        model: Served model name.
        request: The request (messages, n, seed).
        sampling: Sampling settings.
        n: Completions in this call (default: the request's).
        seed: Seed of this call (default: the request's).
        chat_template_kwargs: Sent as `chat_template_kwargs` (vLLM, llama.cpp and SGLang read it).
        extra_sampling: Send `top_k` and `chat_template_kwargs`, which the OpenAI API itself does not
            define (vLLM and llama.cpp servers accept them); off for strict servers.
    """
    body: dict[str, Any] = {
        "model": model,
        "messages": [dict(m) for m in request.messages],
        "n": request.n if n is None else n,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
        "seed": request.seed if seed is None else seed,
    }
    if extra_sampling:
        if sampling.top_k > 0:
            body["top_k"] = sampling.top_k
        if chat_template_kwargs:
            body["chat_template_kwargs"] = dict(chat_template_kwargs)
    return body


def parse_chat_response(raw: bytes | str, expected: int) -> tuple[list[Completion], int]:
    """Completions and prompt tokens of a chat completion response body.

    Args:
        raw: Response body.
        expected: Completions asked for (`n`).

    Returns:
        `expected` completions in `index` order, and the prompt token count (0 when not reported).

    Raises:
        MalformedResponseError: Not JSON, no `choices`, a choice without text, or fewer choices than asked.
    """
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        head = (raw[:80] if isinstance(raw, str) else raw[:80].decode("utf-8", "replace")).replace("\n", " ")
        raise MalformedResponseError(f"response is not JSON ({exc.msg}): {head!r}") from None
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices:
        raise MalformedResponseError(f"response has no choices: keys {sorted(data) if isinstance(data, dict) else []}")
    completions: list[tuple[int, Completion]] = []
    for position, choice in enumerate(choices):
        message = choice.get("message") if isinstance(choice, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if content is None and isinstance(message, dict) and message.get("reasoning_content"):
            content = ""  # a reasoning model that spent its budget thinking: an empty answer, not a protocol error
        if not isinstance(content, str):
            raise MalformedResponseError(f"choice {position} has no message content")
        finish = choice.get("finish_reason") or "stop"
        completions.append(
            (int(choice.get("index", position)), Completion(content, 0, "length" if finish == "length" else "stop"))
        )
    if len(completions) < expected:
        raise MalformedResponseError(f"asked for {expected} choices, got {len(completions)}")
    completions.sort(key=lambda item: item[0])
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    total_completion = int(usage.get("completion_tokens") or 0)
    out = [c for _, c in completions[:expected]]
    if total_completion and out:  # per-choice counts are not reported; spread the total evenly
        share, rest = divmod(total_completion, len(out))
        out = [Completion(c.text, share + (i < rest), c.finish_reason) for i, c in enumerate(out)]
    return out, int(usage.get("prompt_tokens") or 0)


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry `attempt` (1-based): exponential with full jitter, at most `cap`.

    References: "Exponential Backoff And Jitter", AWS Architecture Blog (2015), full jitter.
    """
    ceiling = min(cap, base * 2 ** (attempt - 1))
    return (rng or random).uniform(0, ceiling) if ceiling > 0 else 0.0
