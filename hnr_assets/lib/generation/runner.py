"""LLM-written hard negatives for training pairs: prompts in, validated negatives out, resumable.

`generate_negatives` walks the pairs that no complete shard holds yet, a shard at a time: it asks the
engine for every pair of the shard at once (one batched call per attempt), parses and validates each
completion, retries pairs that still have fewer than 5 negatives with a new seed (at most
`max_attempts` attempts), and writes the shard atomically. Every completion is kept (`completions`),
every rejected or unused passage is recorded with its reason (`rejections`), and each pair's outcome
(`pairs`) marks it done, so a killed run continues where it stopped without losing or repeating a pair.

References: Sinha, "Don't Retrieve, Generate: Prompting LLMs for Synthetic Training Data in Dense
Retrieval", arXiv 2504.21015 (five negatives per (query, positive), no corpus access).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from hnr_assets.lib.generation.backends import (
    Engine,
    GenerationCounts,
    GenerationRequest,
    GenerationResult,
    Sampling,
    request_seed,
)
from hnr_assets.lib.generation.llm_output import PairValidator, ValidationRules, parse_completion
from hnr_assets.lib.generation.prompts import PromptTemplate
from hnr_assets.lib.generation.shards import ShardStore
from hnr_assets.lib.mining.negatives import NEGATIVES_PER_PAIR, NEGATIVES_SCHEMA
from hnr_assets.lib.runtime.errors import HnrError

if TYPE_CHECKING:
    from hnr_assets.lib.runtime.rates import RateProbe

REJECTIONS_SCHEMA = {
    "query_id": pl.String,
    "positive_id": pl.String,
    "attempt": pl.Int32,
    "completion": pl.Int32,
    "item": pl.Int32,
    "reason": pl.String,
    "detail": pl.String,
    "text": pl.String,
}
COMPLETIONS_SCHEMA = {
    "query_id": pl.String,
    "positive_id": pl.String,
    "attempt": pl.Int32,
    "completion": pl.Int32,
    "seed": pl.Int64,
    "form": pl.String,
    "candidates": pl.Int32,
    "accepted": pl.Int32,
    "tokens": pl.Int32,
    "finish_reason": pl.String,
    "text": pl.String,
}
PAIR_STATS_SCHEMA = {
    "query_id": pl.String,
    "positive_id": pl.String,
    "attempts": pl.Int32,
    "completions": pl.Int32,
    "negatives": pl.Int32,
    "completion_tokens": pl.Int32,
    "prompt_tokens": pl.Int32,
}
SHARD_STATS_SCHEMA = {
    "pairs": pl.Int32,
    "requests": pl.Int32,
    "completions": pl.Int32,
    "prompt_tokens": pl.Int64,
    "completion_tokens": pl.Int64,
    "generate_seconds": pl.Float64,
    "wall_seconds": pl.Float64,
    "finished_at": pl.String,
}
SHARD_TABLES = ("negatives", "rejections", "completions", "pairs", "stats")


@dataclass(frozen=True)
class GenerationPlan:
    """What to generate for one generator.

    Attributes:
        source: Negative-set name, `llm-<generator key>`.
        template: The prompt template.
        completions: Completions per pair and attempt.
        max_attempts: Attempts per pair (retries only for pairs with fewer than `wanted`).
        base_seed: The generator's seed.
        rules: Validation thresholds.
        pairs_per_shard: Pairs per shard.
        max_positive_words: Cut the positive in the prompt (None: whole).
        wanted: Negatives per pair (the contract's 5).
        retry_factor: Completions of a retry: None: `completions` again; x: ceil(x * negatives still
            missing), at most `completions`.
    """

    source: str
    template: PromptTemplate
    completions: int
    max_attempts: int
    base_seed: int
    rules: ValidationRules
    pairs_per_shard: int
    max_positive_words: int | None = None
    wanted: int = NEGATIVES_PER_PAIR
    retry_factor: float | None = None

    def completions_for(self, attempt: int, missing: int) -> int:
        """Completions to ask for a pair that lacks `missing` negatives at `attempt` (0-based)."""
        if attempt == 0 or self.retry_factor is None:
            return self.completions
        return max(1, min(self.completions, math.ceil(self.retry_factor * missing)))

    def signature_settings(self, model_id: str, backend: str, sampling: Sampling, extra: dict | None = None) -> dict:
        """Everything that changes the output, for the shard store's signature."""
        return {
            "source": self.source,
            "model": model_id,
            "backend": backend,
            "template": {"id": self.template.id, "sha256": self.template.sha256},
            "completions": self.completions,
            "max_attempts": self.max_attempts,
            "seed": self.base_seed,
            "rules": asdict(self.rules),
            "max_positive_words": self.max_positive_words,
            "wanted": self.wanted,
            "sampling": asdict(sampling),
            **({"retry_factor": self.retry_factor} if self.retry_factor is not None else {}),
            **(extra or {}),
        }


@dataclass
class RunReport(GenerationCounts):
    """What one call of `generate_negatives` did (this run only; totals come from the shards)."""

    pairs_total: int = 0
    pairs_skipped: int = 0
    pairs_generated: int = 0
    negatives: int = 0
    shards_written: int = 0
    generate_seconds: float = 0.0
    wall_seconds: float = 0.0
    reasons: Counter = field(default_factory=Counter)

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.generate_seconds if self.generate_seconds else 0.0

    @property
    def negatives_per_second(self) -> float | None:
        """Valid negatives kept per second of generation (None when nothing was generated)."""
        return self.negatives / self.generate_seconds if self.generate_seconds > 0 else None


def select_pairs(pairs: pl.DataFrame, max_pairs: int | None, seed: int) -> pl.DataFrame:
    """A seeded subset of at most `max_pairs` pairs, in the pairs' own order.

    Pairs are ranked by a hash of (seed, query_id, positive_id) and the first `max_pairs` kept, so the
    subset is the same for every generator and a larger `max_pairs` contains a smaller one.
    """
    if max_pairs is None or pairs.height <= max_pairs:
        return pairs

    def rank(qid: str, pid: str) -> str:
        return hashlib.blake2b(f"{seed}\x1f{qid}\x1f{pid}".encode(), digest_size=8).hexdigest()

    ranked = pairs.with_row_index("_order").with_columns(
        pl.struct("query_id", "positive_id")
        .map_elements(lambda s: rank(s["query_id"], s["positive_id"]), return_dtype=pl.String)
        .alias("_rank")
    )
    return ranked.sort("_rank").head(max_pairs).sort("_order").drop("_order", "_rank")


@dataclass
class _PairState:
    query_id: str
    positive_id: str
    query: str
    positive: str
    validator: PairValidator
    attempts: int = 0
    completions: int = 0
    completion_tokens: int = 0
    prompt_tokens: int = 0


def _requests_for(states: Sequence[_PairState], indices: Sequence[int], plan: GenerationPlan, attempt: int):
    requests = []
    for i in indices:
        s = states[i]
        messages = plan.template.messages(s.query, s.positive, plan.max_positive_words)
        seed = request_seed(plan.base_seed, s.query_id, s.positive_id, attempt)
        n = plan.completions_for(attempt, plan.wanted - len(s.validator.kept))
        requests.append(GenerationRequest(f"{i}:{attempt}", tuple(messages), n, seed))
    return requests


def _shard_tables(
    states: list[_PairState],
    plan: GenerationPlan,
    rejections: list[dict],
    completions: list[dict],
    stats: dict,
) -> dict[str, pl.DataFrame]:
    negatives = [
        {
            "query_id": s.query_id,
            "positive_id": s.positive_id,
            "query": s.query,
            "positive": s.positive,
            "negative_rank": rank,
            "negative_id": None,
            "negative": text,
            "score": None,
            "source": plan.source,
        }
        for s in states
        for rank, text in enumerate(s.validator.kept, start=1)
    ]
    pair_rows = [
        {
            "query_id": s.query_id,
            "positive_id": s.positive_id,
            "attempts": s.attempts,
            "completions": s.completions,
            "negatives": len(s.validator.kept),
            "completion_tokens": s.completion_tokens,
            "prompt_tokens": s.prompt_tokens,
        }
        for s in states
    ]
    return {
        "negatives": pl.DataFrame(negatives, schema=NEGATIVES_SCHEMA),
        "rejections": pl.DataFrame(rejections, schema=REJECTIONS_SCHEMA),
        "completions": pl.DataFrame(completions, schema=COMPLETIONS_SCHEMA),
        "pairs": pl.DataFrame(pair_rows, schema=PAIR_STATS_SCHEMA),
        "stats": pl.DataFrame([stats], schema=SHARD_STATS_SCHEMA),
    }


def _absorb(
    result: GenerationResult,
    request: GenerationRequest,
    state: _PairState,
    plan: GenerationPlan,
    attempt: int,
    rejections: list[dict],
    completions: list[dict],
    reasons: Counter,
) -> None:
    key = {"query_id": state.query_id, "positive_id": state.positive_id, "attempt": attempt}
    state.prompt_tokens += result.prompt_tokens
    for c_index, completion in enumerate(result.completions):
        state.completions += 1
        state.completion_tokens += completion.tokens
        parsed = parse_completion(completion.text, plan.template.output, truncated=completion.finish_reason == "length")
        accepted = 0
        if not parsed.passages:
            rejections.append(
                {**key, "completion": c_index, "item": 0, "reason": "no_passage", "detail": "", "text": completion.text}
            )
            reasons["no_passage"] += 1
        for item, passage in enumerate(parsed.passages, start=1):
            verdict = state.validator.check(passage)
            if verdict.reason is None:
                accepted += 1
                continue
            reasons[verdict.reason] += 1
            rejections.append(
                {
                    **key,
                    "completion": c_index,
                    "item": item,
                    "reason": verdict.reason,
                    "detail": verdict.detail,
                    "text": passage,
                }
            )
        completions.append(
            {
                **key,
                "completion": c_index,
                "seed": request.seed,
                "form": parsed.form,
                "candidates": len(parsed.passages),
                "accepted": accepted,
                "tokens": completion.tokens,
                "finish_reason": completion.finish_reason,
                "text": completion.text,
            }
        )


def generate_negatives(
    pairs: pl.DataFrame,
    engine: Engine,
    plan: GenerationPlan,
    store: ShardStore,
    *,
    log: Callable[[str], None] = lambda _msg: None,
    on_shard: Callable[[int], None] | None = None,
) -> RunReport:
    """Generate negatives for every pair the store does not hold yet.

    Args:
        pairs: Training pairs (`query_id`, `positive_id`, `query`, `positive`).
        engine: A loaded generator.
        plan: Prompt, retries, validation, sharding.
        store: The shard store (entered: locked).
        log: Where progress notes go.
        on_shard: Called with the number of pairs after each shard is written (progress).

    Returns:
        What this run did.

    Raises:
        HnrError: The engine returned results that do not match the requests.
    """
    started = time.perf_counter()
    report = RunReport(pairs_total=pairs.height)
    done = store.done_pairs()
    done_frame = pl.DataFrame(sorted(done), schema={"query_id": pl.String, "positive_id": pl.String}, orient="row")
    todo = pairs.join(done_frame, on=["query_id", "positive_id"], how="anti", maintain_order="left")
    report.pairs_skipped = pairs.height - todo.height
    if report.pairs_skipped:
        log(f"{plan.source}: {report.pairs_skipped} of {pairs.height} pairs already done in {store.folder}")
    rows = todo.select("query_id", "positive_id", "query", "positive").rows()
    for start in range(0, len(rows), plan.pairs_per_shard):
        shard_started = time.perf_counter()
        states = [
            _PairState(qid, pid, q, p, PairValidator(q, p, plan.rules, plan.wanted))
            for qid, pid, q, p in rows[start : start + plan.pairs_per_shard]
        ]
        rejections: list[dict] = []
        completions: list[dict] = []
        shard = {"requests": 0, "completions": 0, "prompt_tokens": 0, "completion_tokens": 0, "seconds": 0.0}
        for attempt in range(plan.max_attempts):
            active = [i for i, s in enumerate(states) if not s.validator.full]
            if not active:
                break
            requests = _requests_for(states, active, plan, attempt)
            t0 = time.perf_counter()
            results = engine.generate(requests)
            shard["seconds"] += time.perf_counter() - t0
            if [r.request_id for r in results] != [r.request_id for r in requests]:
                raise HnrError(f"engine {engine.name} returned results that do not match its requests")
            for index, request, result in zip(active, requests, results, strict=True):
                state = states[index]
                state.attempts += 1
                _absorb(result, request, state, plan, attempt, rejections, completions, report.reasons)
                shard["requests"] += 1
                shard["completions"] += len(result.completions)
                shard["prompt_tokens"] += result.prompt_tokens
                shard["completion_tokens"] += sum(c.tokens for c in result.completions)
        stats = {
            "pairs": len(states),
            "requests": shard["requests"],
            "completions": shard["completions"],
            "prompt_tokens": shard["prompt_tokens"],
            "completion_tokens": shard["completion_tokens"],
            "generate_seconds": shard["seconds"],
            "wall_seconds": time.perf_counter() - shard_started,
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        store.write(_shard_tables(states, plan, rejections, completions, stats))
        report.shards_written += 1
        report.pairs_generated += len(states)
        report.negatives += sum(len(s.validator.kept) for s in states)
        report.requests += shard["requests"]
        report.completions += shard["completions"]
        report.prompt_tokens += shard["prompt_tokens"]
        report.completion_tokens += shard["completion_tokens"]
        report.generate_seconds += shard["seconds"]
        if on_shard is not None:
            on_shard(len(states))
    report.wall_seconds = time.perf_counter() - started
    return report


def collect_outputs(store: ShardStore, pairs: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """The shard tables of `pairs`, in their order: the final outputs of a partition.

    `completions` comes without its raw text (which stays in the shards: at the study's scale it is
    gigabytes); `stats` covers every shard.

    Raises:
        HnrError: A pair of `pairs` is in no shard (generation did not finish).
    """
    keys = pairs.select("query_id", "positive_id").with_row_index("_order")
    out: dict[str, pl.DataFrame] = {}
    schemas = {
        "negatives": NEGATIVES_SCHEMA,
        "rejections": REJECTIONS_SCHEMA,
        "completions": {k: v for k, v in COMPLETIONS_SCHEMA.items() if k != "text"},
        "pairs": PAIR_STATS_SCHEMA,
    }
    for name, schema in schemas.items():
        frame = store.read(name, columns=list(schema))
        frame = pl.DataFrame(schema=schema) if frame is None else frame
        sort = ["_order"] + [c for c in ("attempt", "completion", "item", "negative_rank") if c in schema]
        out[name] = frame.join(keys, on=["query_id", "positive_id"], how="inner").sort(sort).drop("_order")
    missing = pairs.height - out["pairs"].height
    if missing:
        raise HnrError(f"{store.folder}: {missing} of {pairs.height} pairs have no shard yet; run generation again")
    stats = store.read("stats")
    out["stats"] = pl.DataFrame(schema=SHARD_STATS_SCHEMA) if stats is None else stats
    return out


def summarize(outputs: dict[str, pl.DataFrame], wanted: int = NEGATIVES_PER_PAIR) -> dict[str, Any]:
    """Yield, rejection reasons and throughput of a finished partition (all shards)."""
    pairs, rejections, completions, stats = (outputs[k] for k in ("pairs", "rejections", "completions", "stats"))
    n = pairs.height
    full = pairs.filter(pl.col("negatives") >= wanted).height
    reasons = dict(sorted(Counter(rejections["reason"].to_list()).items(), key=lambda kv: (-kv[1], kv[0])))
    forms = dict(sorted(Counter(completions["form"].to_list()).items(), key=lambda kv: (-kv[1], kv[0])))
    tokens = int(stats["completion_tokens"].sum() or 0)
    seconds = float(stats["generate_seconds"].sum() or 0.0)
    candidates = int(completions["candidates"].sum() or 0)
    accepted = int(completions["accepted"].sum() or 0)
    return {
        "pairs": n,
        "pairs_full": full,
        "pairs_partial": pairs.filter((pl.col("negatives") > 0) & (pl.col("negatives") < wanted)).height,
        "pairs_none": pairs.filter(pl.col("negatives") == 0).height,
        "yield": full / n if n else 0.0,
        "negatives": int(pairs["negatives"].sum() or 0),
        "completions": completions.height,
        "candidates": candidates,
        "accepted": accepted,
        "acceptance_rate": accepted / candidates if candidates else 0.0,
        "completions_length_capped": completions.filter(pl.col("finish_reason") == "length").height,
        "mean_attempts": float(pairs["attempts"].mean() or 0.0),
        "rejection_reasons": reasons,
        "parse_forms": forms,
        "completion_tokens": tokens,
        "prompt_tokens": int(stats["prompt_tokens"].sum() or 0),
        "generate_seconds": round(seconds, 2),
        "tokens_per_second": tokens / seconds if seconds else 0.0,
        "pairs_per_hour": 3600 * n / seconds if seconds else 0.0,
        "shards": stats.height,
    }


def write_outputs(outputs: dict[str, pl.DataFrame], folder: Path) -> dict[str, Path]:
    """Write the final Parquet files of a partition atomically, one file each."""
    from hnr_assets.lib.runtime.io import write_parquet

    names = {"negatives": "negatives", "rejections": "rejections", "pairs": "pair_stats"}
    return {key: write_parquet(outputs[key], Path(folder) / f"{name}.parquet") for key, name in names.items()}


# ------------------------------------------------------------------------------------------ rate probe

# The `local` profile's generator before issue 13 (`benchmarks/generation.py`, "transformers, before"):
# the transformers backend in fp32 on 2 torch threads, batch 36, a passage per completion (`single-v1`),
# 6 completions of <= 96 tokens, up to 3 attempts of 6 each, the study's sampling.
BEFORE_ISSUE_13 = {
    "prompt": "single-v1",
    "completions": 6,
    "max_attempts": 3,
    "batch_size": 36,
    "torch_threads": 2,
    "precision": "float32",
    "sampling": Sampling(temperature=0.6, top_p=0.95, top_k=20, max_tokens=96),
}


def probe_generation(
    report: RunReport | None,
    hnr_name: str,
    model_dir: Path | None,
    pairs: pl.DataFrame,
    plan: GenerationPlan,
    work_dir: Path,
    *,
    sample: int = 3,
    seed: int = 0,
    chat_template_kwargs: dict[str, Any] | None = None,
) -> RateProbe:
    """Valid negatives/s of this run's generation against the transformers settings `local` had before
    issue 13 (`BEFORE_ISSUE_13`), on a seeded sample of the partition's pairs.

    hnr's side is the run's own report (kept negatives / generation seconds); the baseline runs the
    whole loop (prompts, completions, parser, validator, retries) on `sample` pairs with the same
    validation rules and positive cut. No baseline runs for a served model (no local weights) or when the
    run generated nothing (every shard reused): the probe says why.

    Args:
        report: What `generate_negatives` did in this run (None: it did not run).
        hnr_name: hnr's backend, in words.
        model_dir: The generator's local transformers folder (None: served over HTTP).
        pairs: The partition's pairs.
        plan: The partition's plan (its rules and positive cut are kept; the rest is the baseline's).
        work_dir: Scratch folder for the baseline's shards.
        sample: Pairs the baseline generates for.
        seed: Seed of the sample.
        chat_template_kwargs: Passed to the chat template (the generator's own).
    """
    import dataclasses

    import torch

    from hnr_assets.lib.generation.engines import TransformersEngine
    from hnr_assets.lib.generation.prompts import load_prompt
    from hnr_assets.lib.runtime.rates import RateProbe

    before = BEFORE_ISSUE_13
    name = "transformers fp32, 2 threads, batch 36, 6 x <= 96 tokens, 3 attempts (local before issue 13)"
    probe = {"stage": "generation", "unit": "valid negatives/s", "hnr_name": hnr_name, "baseline_name": name}
    rate = report.negatives_per_second if report is not None else None
    if rate is None:
        reason = "every pair was reused from written shards: nothing was generated in this run"
        return RateProbe(**probe, hnr_rate=None, baseline_rate=None, sample=0, skipped=reason)
    if model_dir is None:
        reason = "served over HTTP: no local baseline applies"
        return RateProbe(**probe, hnr_rate=rate, baseline_rate=None, sample=0, skipped=reason)
    chosen = pairs.sample(min(sample, pairs.height), seed=seed)
    baseline_plan = dataclasses.replace(
        plan,
        template=load_prompt(before["prompt"]),
        completions=before["completions"],
        max_attempts=before["max_attempts"],
        retry_factor=None,
        pairs_per_shard=max(1, chosen.height),
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(before["torch_threads"])
    try:
        engine = TransformersEngine(
            Path(model_dir),
            before["sampling"],
            chat_template_kwargs or {},
            before["batch_size"],
            "cpu",
            before["precision"],
            log=lambda _m: None,
        )
        try:
            signature = baseline_plan.signature_settings("rate-probe", "transformers", before["sampling"])
            with ShardStore(Path(work_dir), signature, SHARD_TABLES) as store:
                baseline = generate_negatives(chosen, engine, baseline_plan, store)
        finally:
            engine.close()
    finally:
        torch.set_num_threads(threads)
    measured = baseline.negatives_per_second
    return RateProbe(
        **probe,
        hnr_rate=rate,
        baseline_rate=measured,
        sample=chosen.height,
        skipped="" if measured is not None else "the baseline measured no generation time",
    )
