"""The resumable generation loop: shards, retries, kill -9 and resume, pair subsets.

The engine is the real HTTP backend against a real OpenAI-compatible server on 127.0.0.1, so these
tests need no model; the tiny random LM runs end to end in `defs/test_generation.py`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest

from hnr_assets.lib.generation.backends import GenerationRequest, GenerationResult, Sampling
from hnr_assets.lib.generation.engines import OpenAIEngine
from hnr_assets.lib.generation.llm_output import ValidationRules
from hnr_assets.lib.generation.prompts import load_prompt
from hnr_assets.lib.generation.runner import (
    SHARD_TABLES,
    GenerationPlan,
    collect_outputs,
    generate_negatives,
    select_pairs,
    summarize,
)
from hnr_assets.lib.generation.shards import ShardStore, ShardStoreError
from hnr_assets.lib.mining.negatives import NEGATIVES_SCHEMA, validate_negatives
from hnr_assets.lib.runtime.errors import HnrError
from hnr_assets_tests.openai_server import FakeOpenAIServer, query_of

REPO = Path(__file__).resolve().parents[3]
TOPICS = ["vaccine dose", "ocean warming", "gene variant", "statin therapy", "tumour biopsy", "dopamine neurons"]


def make_pairs(n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "query_id": [f"q{i}" for i in range(n)],
            "query": [f"what is known about {TOPICS[i % len(TOPICS)]} number {i}" for i in range(n)],
            "positive_id": [f"d{i}" for i in range(n)],
            "positive": [f"The trial measured {TOPICS[i % len(TOPICS)]} in {100 + i} patients." for i in range(n)],
        }
    )


def plan_for(template: str = "v1", completions: int = 1, attempts: int = 2, per_shard: int = 2) -> GenerationPlan:
    return GenerationPlan("llm-fake", load_prompt(template), completions, attempts, 7, ValidationRules(), per_shard)


def store_for(root: Path, plan: GenerationPlan) -> ShardStore:
    return ShardStore(root, plan.signature_settings("fake-model", "openai", Sampling()), SHARD_TABLES)


def test_generation_writes_shards_and_outputs_in_pair_order(tmp_path: Path) -> None:
    pairs = make_pairs(7)
    plan = plan_for(per_shard=3)
    with FakeOpenAIServer() as server, store_for(tmp_path, plan) as store:
        report = generate_negatives(pairs, OpenAIEngine(server.url, "fake-model", Sampling(), {}), plan, store)
        outputs = collect_outputs(store, pairs)
    assert (report.shards_written, report.pairs_generated, report.requests) == (3, 7, 7)
    negatives = outputs["negatives"]
    assert dict(negatives.schema) == NEGATIVES_SCHEMA
    assert negatives.height == 35 and not any(validate_negatives(negatives).values())
    assert negatives["query_id"].unique(maintain_order=True).to_list() == pairs["query_id"].to_list()
    assert negatives["source"].unique().to_list() == ["llm-fake"]
    assert negatives["negative_id"].null_count() == 35 and negatives["score"].null_count() == 35
    summary = summarize(outputs)
    assert (summary["yield"], summary["pairs_full"], summary["mean_attempts"]) == (1.0, 7, 1.0)
    assert summary["parse_forms"] == {"json": 7} and summary["completion_tokens"] == 7 * 60


class ShortEngine:
    """An engine that always answers with the same two passages: pairs can never reach 5."""

    name = "short"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        from hnr_assets.lib.generation.backends import Completion

        self.calls.append([r.request_id for r in requests])
        text = '["The history of the topic is long and it is told in many of the old books.", "tiny"]'
        return [GenerationResult(r.request_id, [Completion(text, 10, "stop")] * r.n, 5) for r in requests]


def test_retries_are_bounded_and_every_rejection_is_recorded(tmp_path: Path) -> None:
    pairs = make_pairs(3)
    plan = plan_for(attempts=3, per_shard=10)
    engine = ShortEngine()
    with store_for(tmp_path, plan) as store:
        generate_negatives(pairs, engine, plan, store)
        outputs = collect_outputs(store, pairs)
    # Three attempts for every pair (one batched call each), each with a new seed; then it stops.
    assert engine.calls == [[f"{i}:{a}" for i in range(3)] for a in range(3)]
    assert outputs["pairs"]["attempts"].to_list() == [3, 3, 3]
    assert outputs["pairs"]["negatives"].to_list() == [1, 1, 1]
    reasons = outputs["rejections"].group_by("reason").len().sort("reason").rows()
    assert reasons == [("duplicate", 6), ("too_short", 9)]
    assert outputs["completions"]["seed"].n_unique() == 9
    assert summarize(outputs)["yield"] == 0.0


def test_pair_subset_is_seeded_nested_and_in_pair_order() -> None:
    pairs = make_pairs(50)
    small, large = select_pairs(pairs, 10, seed=3), select_pairs(pairs, 20, seed=3)
    assert small.height == 10 and large.height == 20
    assert set(small["query_id"]) <= set(large["query_id"])
    assert small["query_id"].to_list() == sorted(small["query_id"].to_list(), key=lambda q: int(q[1:]))
    assert select_pairs(pairs, 10, seed=3).equals(small)
    assert not select_pairs(pairs, 10, seed=4).equals(small)
    assert select_pairs(pairs, None, seed=3).equals(pairs) and select_pairs(pairs, 80, seed=0).equals(pairs)


def test_store_lock_signature_and_unfinished_outputs(tmp_path: Path) -> None:
    plan = plan_for()
    with store_for(tmp_path, plan), pytest.raises(ShardStoreError, match="being written by another process"):
        store_for(tmp_path, plan).__enter__()
    other = store_for(tmp_path, plan_for(template="single-v1", completions=5))
    assert other.folder != store_for(tmp_path, plan).folder
    with other, pytest.raises(HnrError, match="3 of 3 pairs have no shard yet"):
        collect_outputs(other, make_pairs(3))
    with pytest.raises(ShardStoreError, match="inside `with store:`"):
        other.write({})


CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import polars as pl
    from hnr_assets.lib.generation.backends import Sampling
    from hnr_assets.lib.generation.runner import SHARD_TABLES, GenerationPlan, generate_negatives
    from hnr_assets.lib.generation.llm_output import ValidationRules
    from hnr_assets.lib.generation.prompts import load_prompt
    from hnr_assets.lib.generation.shards import ShardStore
    from hnr_assets.lib.generation.engines import OpenAIEngine

    url, pairs_path, root = sys.argv[1:4]
    plan = GenerationPlan("llm-fake", load_prompt("v1"), 1, 2, 7, ValidationRules(), 2)
    store = ShardStore(Path(root), plan.signature_settings("fake-model", "openai", Sampling()), SHARD_TABLES)
    with store:
        generate_negatives(pl.read_parquet(pairs_path), OpenAIEngine(url, "fake-model", Sampling(), {}), plan, store)
    """
)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_loses_and_repeats_no_pair(tmp_path: Path) -> None:
    pairs = make_pairs(24)
    pairs_path = tmp_path / "pairs.parquet"
    pairs.write_parquet(pairs_path)
    root = tmp_path / "shards"
    plan = plan_for()
    store = store_for(root, plan)
    with FakeOpenAIServer(delay_seconds=0.15) as server:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, server.url, str(pairs_path), str(root)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 120
        while len(store.shard_dirs()) < 3:
            assert child.poll() is None, child.stderr.read().decode()
            assert time.monotonic() < deadline, "no shard within 120 s"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stderr.close()
        assert child.returncode == -signal.SIGKILL
        with store:
            done_before = store.done_pairs()
        assert 3 * 2 <= len(done_before) < 24, "killed too late to test resuming"
        asked_before = len(server.requests)

        with store:  # the lock died with the child: the rerun takes it
            report = generate_negatives(pairs, OpenAIEngine(server.url, "fake-model", Sampling(), {}), plan, store)
            outputs = collect_outputs(store, pairs)
        asked_after = [query_of(body) for body in server.requests[asked_before:]]

    assert report.pairs_skipped == len(done_before) and report.pairs_generated == 24 - len(done_before)
    # Finished pairs were not asked for again; only the unfinished ones were.
    done_queries = set(pairs.filter(pl.col("query_id").is_in([q for q, _ in done_before]))["query"])
    assert not done_queries & set(asked_after)
    assert len(asked_after) == 24 - len(done_before)
    # Exact row counts, no pair twice, no leftover temporary folder.
    assert outputs["pairs"].height == 24 and outputs["pairs"]["query_id"].n_unique() == 24
    assert outputs["negatives"].height == 24 * 5
    assert (
        outputs["negatives"].select(pl.struct("query_id", "positive_id", "negative_rank").is_duplicated().sum()).item()
        == 0
    )
    assert not list(store.folder.glob(".shard-*"))
    assert [p.name for p in store.shard_dirs()] == [f"shard-{i:05d}" for i in range(len(store.shard_dirs()))]
