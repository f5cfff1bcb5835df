"""Pure parts of the backends: sampling maps, chat templates (Qwen3's thinking switch), the OpenAI wire
format, vLLM prompts, retries, and the resource that picks a backend per generator.

vLLM itself cannot be installed here (its wheel pins a CUDA torch); everything up to the `vllm.LLM`
call is tested with a real tokenizer.
"""

from __future__ import annotations

import json
import random
import sys

import pytest

from hnr_assets.lib.generation.backends import (
    GenerationBackendError,
    GenerationRequest,
    MalformedResponseError,
    Sampling,
    backoff_delay,
    hf_generate_kwargs,
    openai_chat_payload,
    parse_chat_response,
    render_chat,
    request_seed,
    vllm_sampling_kwargs,
)
from hnr_assets.lib.generation.engines import VllmEngine, vllm_prompts
from hnr_assets.lib.generation.generator_models import build_tiny_tokenizer
from hnr_assets.lib.runtime.errors import ConfigError
from hnr_assets.profiles.schema import GeneratorSpec
from hnr_assets.resources.generators import (
    CTranslate2Backend,
    GeneratorBackendsResource,
    OpenAIBackend,
    TransformersBackend,
    VllmBackend,
)

STUDY = Sampling(temperature=0.6, top_p=0.95, top_k=20, max_tokens=1024)
# The part of Qwen3's chat template that reads `enable_thinking` (an empty think block turns it off).
QWEN3_LIKE = (
    "{{ '<|im_start|>' }}{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant:' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}"
    "{% endif %}"
)
NO_SYSTEM = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
)
MESSAGES = ({"role": "system", "content": "You write data."}, {"role": "user", "content": "Query: q"})


@pytest.fixture(scope="module")
def qwen_tokenizer():
    return build_tiny_tokenizer(QWEN3_LIKE)


def test_sampling_maps() -> None:
    assert hf_generate_kwargs(STUDY) == {
        "do_sample": True,
        "temperature": 0.6,
        "top_p": 0.95,
        "top_k": 20,
        "max_new_tokens": 1024,
    }
    assert hf_generate_kwargs(Sampling(temperature=0.0, max_tokens=7)) == {"do_sample": False, "max_new_tokens": 7}
    assert vllm_sampling_kwargs(STUDY, n=5, seed=11) == {
        "n": 5,
        "temperature": 0.6,
        "top_p": 0.95,
        "top_k": 20,
        "max_tokens": 1024,
        "seed": 11,
    }
    assert vllm_sampling_kwargs(Sampling(top_k=0), 1, 0)["top_k"] == -1


def test_chat_template_kwargs_switch_qwen3_thinking_off(qwen_tokenizer) -> None:
    off = render_chat(qwen_tokenizer, MESSAGES, {"enable_thinking": False})
    on = render_chat(qwen_tokenizer, MESSAGES, {})
    assert off.endswith("assistant:<think>\n\n</think>\n\n") and on.endswith("assistant:")
    assert "system: You write data.\nuser: Query: q\n" in off


def test_template_without_system_role_gets_it_merged() -> None:
    tokenizer = build_tiny_tokenizer(NO_SYSTEM)
    assert render_chat(tokenizer, MESSAGES, {}) == "user: You write data.\n\nQuery: q\n"


def test_vllm_prompts_are_token_ids_without_a_second_bos(qwen_tokenizer) -> None:
    requests = [GenerationRequest("a", MESSAGES, 2, 1), GenerationRequest("b", MESSAGES[1:], 1, 2)]
    prompts = vllm_prompts(qwen_tokenizer, requests, {"enable_thinking": False})
    first = prompts[0]["prompt_token_ids"]
    assert first.count(qwen_tokenizer.convert_tokens_to_ids("<|im_start|>")) == 1  # the template's, not a second
    assert qwen_tokenizer.decode(first) == render_chat(qwen_tokenizer, MESSAGES, {"enable_thinking": False})
    assert len(prompts) == 2 and len(prompts[1]["prompt_token_ids"]) < len(first)


def test_vllm_backend_kwargs_and_missing_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = VllmBackend().with_options({"tensor_parallel_size": 2, "max_model_len": 8192})
    assert backend.llm_kwargs() == {
        "tensor_parallel_size": 2,
        "gpu_memory_utilization": 0.9,
        "dtype": "auto",
        "enforce_eager": False,
        "seed": 0,
        "max_model_len": 8192,
    }
    monkeypatch.setitem(sys.modules, "vllm", None)  # what a CPU-only host has: no vllm
    with pytest.raises(GenerationBackendError, match=r"pip install -e '\.\[gpu\]'"):
        VllmEngine("/models/x", STUDY, {}, backend.llm_kwargs())


def test_openai_payload() -> None:
    request = GenerationRequest("r", MESSAGES, 3, 42)
    body = openai_chat_payload("m", request, STUDY, chat_template_kwargs={"enable_thinking": False})
    assert body == {
        "model": "m",
        "messages": [dict(m) for m in MESSAGES],
        "n": 3,
        "temperature": 0.6,
        "top_p": 0.95,
        "max_tokens": 1024,
        "seed": 42,
        "top_k": 20,
        "chat_template_kwargs": {"enable_thinking": False},
    }
    strict = openai_chat_payload("m", request, STUDY, n=1, seed=43, extra_sampling=False)
    assert (strict["n"], strict["seed"]) == (1, 43) and "top_k" not in strict


def _response(choices: list, usage: dict | None = None) -> bytes:
    return json.dumps({"choices": choices, **({"usage": usage} if usage else {})}).encode()


def test_parse_chat_response() -> None:
    raw = _response(
        [
            {"index": 1, "message": {"content": "second"}, "finish_reason": "length"},
            {"index": 0, "message": {"content": "first"}, "finish_reason": "stop"},
        ],
        {"prompt_tokens": 30, "completion_tokens": 7},
    )
    completions, prompt_tokens = parse_chat_response(raw, 2)
    assert [(c.text, c.tokens, c.finish_reason) for c in completions] == [("first", 4, "stop"), ("second", 3, "length")]
    assert prompt_tokens == 30
    reasoning_only = _response([{"message": {"content": None, "reasoning_content": "hmm"}}])
    assert parse_chat_response(reasoning_only, 1)[0][0].text == ""


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"<html>502 Bad Gateway</html>", "response is not JSON"),
        (b'{"error": "x"}', "response has no choices"),
        (_response([{"message": {}}]), "choice 0 has no message content"),
        (_response([{"message": {"content": "a"}}]), "asked for 2 choices, got 1"),
    ],
)
def test_malformed_responses(raw: bytes, message: str) -> None:
    with pytest.raises(MalformedResponseError, match=message):
        parse_chat_response(raw, 2 if b'"a"' in raw else 1)


def test_backoff_is_bounded_and_jittered() -> None:
    rng = random.Random(0)
    delays = [backoff_delay(a, 1.0, 5.0, rng) for a in range(1, 12)]
    assert all(0 <= d <= min(5.0, 2 ** (a - 1)) for a, d in zip(range(1, 12), delays, strict=True))
    assert len(set(delays)) == len(delays)
    assert backoff_delay(3, 0.0, 5.0) == 0.0


def test_request_seed_depends_on_pair_and_attempt_only() -> None:
    seed = request_seed(0, "q1", "d1", 0)
    assert seed == request_seed(0, "q1", "d1", 0) and 0 <= seed < 2**31
    assert (
        len({seed, request_seed(0, "q1", "d1", 1), request_seed(1, "q1", "d1", 0), request_seed(0, "q2", "d1", 0)}) == 4
    )


def _spec(**kw) -> GeneratorSpec:
    return GeneratorSpec(**{"key": "g", "model": "m", "backend": "transformers", **kw})


def test_resource_picks_the_backend_and_applies_engine_options() -> None:
    resource = GeneratorBackendsResource(
        transformers=TransformersBackend(),
        vllm=VllmBackend(),
        openai=OpenAIBackend(api_key="k"),
        ctranslate2=CTranslate2Backend(),
    )
    assert isinstance(resource.for_spec(_spec()), TransformersBackend)
    assert (
        resource.for_spec(_spec(backend="vllm", engine_options={"tensor_parallel_size": 4})).tensor_parallel_size == 4
    )
    picked = resource.for_spec(
        _spec(backend="openai", endpoint="http://127.0.0.1:1/v1", engine_options={"concurrency": 2})
    )
    assert (picked.concurrency, picked.api_key) == (2, "k")
    with pytest.raises(ConfigError, match=r"generator 'g': engine_options \['tensor_parallel'\] are not settings of"):
        resource.for_spec(_spec(engine_options={"tensor_parallel": 2}))
    # The endpoint: the generator's own, else the backend's base URL (OPENAI_BASE_URL), else an error.
    served = _spec(backend="openai")
    assert OpenAIBackend(base_url="http://vllm:8000/v1").endpoint_for(served) == "http://vllm:8000/v1"
    assert OpenAIBackend(base_url="http://x/v1").endpoint_for(_spec(backend="openai", endpoint="http://y/v1/")) == (
        "http://y/v1"
    )
    with pytest.raises(ConfigError, match="needs an endpoint: set `endpoint` in the profile or the OPENAI_BASE_URL"):
        OpenAIBackend().endpoint_for(served)
