"""A small, real OpenAI-compatible HTTP server for tests and benchmarks (127.0.0.1, a free port).

It serves `GET /v1/models` and `POST /v1/chat/completions`. By default it answers each request with
`n` choices, each a JSON array of five distinct, prose-like passages derived from the query in the
last user message and the request's seed (valid hard negatives for the validator). A test scripts
failures per call: `server.script = ["slow", "500", "malformed", "ok", ...]` is consumed one entry per
request; when empty, `server.default` applies. It records every request (body and headers) and the
highest number of requests it handled at once.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SENTENCES = [
    "Researchers have long debated {topic}, and several cohort studies describe the methods used to measure it.",
    "A review of {topic} summarises the history of the field without reporting any new trial results.",
    "Early laboratory work on {topic} focused on animal models, which may not transfer to patients.",
    "The guidelines on {topic} were revised twice, mostly to clarify how the outcomes should be recorded.",
    "Funding for projects on {topic} rose during the last decade, according to a survey of national agencies.",
    "Critics of the research on {topic} point to small samples and to the lack of a control group.",
    "Several textbooks introduce {topic} in a chapter on basic mechanisms rather than on clinical evidence.",
    "A conference on {topic} gathered experts who agreed that the open questions need larger trials.",
]


def passages_for(query: str, seed: int, count: int = 5) -> list[str]:
    """`count` distinct, plausible negatives for `query` (deterministic in query and seed)."""
    words = re.findall(r"[A-Za-z]+", query.lower())
    topic = " ".join(words[-4:]) or "the topic"
    out = []
    for i in range(count):
        a = SENTENCES[(seed + i) % len(SENTENCES)]
        b = SENTENCES[(seed + i + 3) % len(SENTENCES)]
        out.append(f"{a.format(topic=topic)} {b.format(topic=topic)} This is note {seed % 97}-{i}.")
    return out


def last_user_text(body: dict[str, Any]) -> str:
    users = [m.get("content", "") for m in body.get("messages", []) if m.get("role") == "user"]
    return users[-1] if users else ""


def query_of(body: dict[str, Any]) -> str:
    """The query in a hnr prompt (`Query: ...` or `searched for: "..."`), else the whole user text."""
    text = last_user_text(body)
    match = re.search(r"Query: (.*)", text) or re.search(r'searched for: "(.*)"', text)
    return match.group(1).strip() if match else text


class FakeOpenAIServer:
    """A threaded OpenAI-compatible server. Use as a context manager; `url` is the `/v1` base URL.

    Attributes:
        script: Behaviours for the next requests, consumed in order: `ok`, `slow` (sleeps `slow_seconds`
            before answering), `500`, `429`, `401`, `malformed` (200 with a non-JSON body), `no_choices`.
        default: Behaviour when the script is empty.
        delay_seconds: Sleep before every answer (to make runs last, e.g. for kill tests).
        requests: Every request body received (with `_headers` added).
        max_in_flight: The most requests handled at the same time.
    """

    def __init__(self, model: str = "fake-model", delay_seconds: float = 0.0, slow_seconds: float = 2.0) -> None:
        self.model = model
        self.delay_seconds = delay_seconds
        self.slow_seconds = slow_seconds
        self.script: deque[str] = deque()
        self.default = "ok"
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def _behaviour(self) -> str:
        with self._lock:
            return self.script.popleft() if self.script else self.default

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        n = int(body.get("n", 1))
        seed = int(body.get("seed", 0) or 0)
        query = query_of(body)
        single = "Write one" in last_user_text(body) or "Write a different short paragraph" in last_user_text(body)
        choices = []
        for i in range(n):
            if single:
                content = passages_for(query, seed + i, 1)[0]
            else:
                content = "```json\n" + json.dumps(passages_for(query, seed + i), indent=1) + "\n```"
            choices.append({"index": i, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"})
        return {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "model": body.get("model", self.model),
            "choices": choices,
            "usage": {"prompt_tokens": 50, "completion_tokens": 60 * n, "total_tokens": 50 + 60 * n},
        }

    def __enter__(self) -> FakeOpenAIServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                return

            def _send(self, status: int, payload: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    data = {"object": "list", "data": [{"id": server.model, "object": "model"}]}
                    self._send(200, json.dumps(data).encode())
                else:
                    self._send(404, b'{"error": "not found"}')

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, b'{"error": "not found"}')
                    return
                body = json.loads(raw)
                body["_headers"] = dict(self.headers)
                with server._lock:
                    server.requests.append(body)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    behaviour = server._behaviour()
                    if server.delay_seconds:
                        time.sleep(server.delay_seconds)
                    if behaviour == "slow":
                        time.sleep(server.slow_seconds)
                    if behaviour in ("500", "429", "401"):
                        self._send(int(behaviour), json.dumps({"error": {"message": f"scripted {behaviour}"}}).encode())
                    elif behaviour == "malformed":
                        self._send(200, b'{"choices": [ {"message": ')
                    elif behaviour == "no_choices":
                        self._send(200, b'{"id": "x", "choices": []}')
                    else:
                        self._send(200, json.dumps(server.answer(body)).encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout); nothing to answer
                finally:
                    with server._lock:
                        server.in_flight -= 1

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
