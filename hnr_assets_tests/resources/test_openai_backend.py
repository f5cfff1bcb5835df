"""The OpenAI-compatible HTTP backend against a real server on 127.0.0.1 (started in the test)."""

from __future__ import annotations

import logging
import time

import pytest

from hnr_assets.lib.generation.backends import GenerationBackendError, GenerationRequest, Sampling
from hnr_assets.lib.generation.engines import OpenAIEngine
from hnr_assets_tests.openai_server import FakeOpenAIServer

SECRET = "sk-test-very-secret-0123456789"
MESSAGES = ({"role": "system", "content": "s"}, {"role": "user", "content": "Query: what is known about vaccines?"})


def _engine(server: FakeOpenAIServer, logs: list[str], **kw) -> OpenAIEngine:
    options = {"api_key": SECRET, "concurrency": 4, "timeout_seconds": 5.0, "max_retries": 3, "backoff_seconds": 0.01}
    return OpenAIEngine(
        server.url,
        "fake-model",
        Sampling(0.6, 0.95, 20, 256),
        {"enable_thinking": False},
        log=logs.append,
        **{**options, **kw},
    )


def _requests(k: int, n: int = 1) -> list[GenerationRequest]:
    return [GenerationRequest(f"r{i}", MESSAGES, n, 100 + i) for i in range(k)]


def test_normal_answers_in_request_order_with_bounded_concurrency() -> None:
    logs: list[str] = []
    with FakeOpenAIServer(delay_seconds=0.05) as server:
        results = _engine(server, logs, concurrency=3).generate(_requests(12, n=2))
    assert [r.request_id for r in results] == [f"r{i}" for i in range(12)]
    assert all(len(r.completions) == 2 for r in results)
    assert results[0].completions[0].tokens == 60 and results[0].prompt_tokens == 50
    assert 1 < server.max_in_flight <= 3
    body = server.requests[0]
    assert (body["model"], body["n"], body["temperature"], body["top_p"], body["top_k"], body["max_tokens"]) == (
        "fake-model",
        2,
        0.6,
        0.95,
        20,
        256,
    )
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert sorted(b["seed"] for b in server.requests) == list(range(100, 112))
    assert body["_headers"]["Authorization"] == f"Bearer {SECRET}"
    assert not logs


def test_500_then_success_is_retried(caplog: pytest.LogCaptureFixture) -> None:
    logs: list[str] = []
    with FakeOpenAIServer() as server:
        server.script.extend(["500", "429", "ok"])
        engine = _engine(server, logs, concurrency=1)
        results = engine.generate(_requests(1))
    assert len(results[0].completions) == 1
    assert len(server.requests) == 3 and engine.stats.retries == 2
    assert ["HTTP 500" in logs[0], "HTTP 429" in logs[1]] == [True, True]
    assert all(SECRET not in line for line in logs + caplog.messages)


def test_slow_answer_times_out_then_retries() -> None:
    logs: list[str] = []
    with FakeOpenAIServer(slow_seconds=1.5) as server:
        server.script.extend(["slow", "ok"])
        started = time.perf_counter()
        results = _engine(server, logs, concurrency=1, timeout_seconds=0.3).generate(_requests(1))
    assert len(results[0].completions) == 1
    assert "no answer within 0.3 s" in logs[0]
    assert time.perf_counter() - started < 1.4  # did not wait for the slow answer


def test_malformed_json_is_retried_then_reported() -> None:
    logs: list[str] = []
    with FakeOpenAIServer() as server:
        server.script.extend(["malformed", "no_choices", "ok"])
        assert _engine(server, logs, concurrency=1).generate(_requests(1))[0].completions
        assert "malformed answer: response is not JSON" in logs[0]
        assert "response has no choices" in logs[1]

        server.default = "malformed"
        with pytest.raises(GenerationBackendError) as err:
            _engine(server, logs, concurrency=1, max_retries=2).generate(_requests(1))
    message = str(err.value)
    assert message.startswith(f"{server.url}/chat/completions: malformed answer") and "after 3 tries" in message
    assert SECRET not in message and all(SECRET not in line for line in logs)


def test_persistent_500_fails_after_bounded_retries() -> None:
    logs: list[str] = []
    with FakeOpenAIServer() as server:
        server.default = "500"
        with pytest.raises(GenerationBackendError, match=r"HTTP 500 after 3 tries"):
            _engine(server, logs, concurrency=1, max_retries=2).generate(_requests(1))
    assert len(server.requests) == 3


def test_client_errors_are_not_retried() -> None:
    logs: list[str] = []
    with FakeOpenAIServer() as server:
        server.script.append("401")
        with pytest.raises(GenerationBackendError, match=r"HTTP 401 \(not retried\)") as err:
            _engine(server, logs).generate(_requests(1))
    assert len(server.requests) == 1 and SECRET not in str(err.value)


def test_unreachable_server_is_an_error_naming_the_url() -> None:
    with FakeOpenAIServer() as server:
        url = server.url
    logs: list[str] = []
    engine = OpenAIEngine(url, "m", Sampling(), {}, max_retries=1, backoff_seconds=0.01, log=logs.append)
    with pytest.raises(GenerationBackendError, match=r"connection failed .* after 2 tries"):
        engine.generate(_requests(1))


def test_one_completion_per_request_and_strict_servers() -> None:
    logs: list[str] = []
    with FakeOpenAIServer() as server:
        engine = _engine(server, logs, one_completion_per_request=True, extra_sampling=False)
        results = engine.generate(_requests(1, n=3))
    assert len(results[0].completions) == 3
    assert [b["n"] for b in server.requests] == [1, 1, 1]
    assert sorted(b["seed"] for b in server.requests) == [100, 101, 102]
    assert all("top_k" not in b and "chat_template_kwargs" not in b for b in server.requests)


def test_key_is_not_in_the_engine_repr() -> None:
    engine = OpenAIEngine("http://127.0.0.1:9/v1", "m", Sampling(), {}, api_key=SECRET)
    assert SECRET not in repr(engine)
    logging.getLogger(__name__).info("engine %r", engine)
