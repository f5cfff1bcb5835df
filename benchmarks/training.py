"""Training throughput: the `encoders` asset against a bare sentence-transformers script, same data, same run.

Both variants train the same base encoder on the same training rows with identical settings
(MultipleNegativesRankingLoss, batch 16, no-duplicates sampler, evaluation every N steps on the same
validation queries and corpus, early stopping, best checkpoint kept), in the same process, alternately.
The asset adds Dagster, the MLflow run (parameters, a metric row per log event, the logged and
registered model), the atomic output folder and the checks; the bare script is what a researcher would
write by hand with sentence-transformers alone (its stock InformationRetrievalEvaluator).

Numbers: examples/s of the training loop (rows trained / wall time of `trainer.train()`, evaluations and
checkpoints included) and the end-to-end wall time (model load to saved model; for the asset, the whole
materialization). Overhead = 1 - asset / bare examples/s; the target is within 5%. Memory (Linux): the
peak resident memory of each run (`VmHWM`, reset before it through /proc/self/clear_refs after handing
freed heap back with glibc's `malloc_trim`), what is still resident after it, and after `malloc_trim`.

Data: the `local` profile's training pairs (SciFact train, from `HNR_DATASETS_DIR` or ../shared/datasets),
each with 5 negatives drawn at random from the training corpus (throughput does not depend on how the
negatives were mined).

    .venv/bin/python benchmarks/training.py                   # the local profile's settings (12 steps)
    .venv/bin/python benchmarks/training.py --steps 6 --eval-steps 3 --repeats 2 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hnr_assets.lib.mining.negatives import NEGATIVES_SCHEMA  # noqa: E402
from hnr_assets.lib.runtime.memory import release_free_memory, reset_peak, status_mib  # noqa: E402
from hnr_assets.settings import Settings  # noqa: E402


def write_profile(folder: Path, args: argparse.Namespace) -> Path:
    """The local profile's training settings, with the benchmark's overrides, and no generators."""
    local = yaml.safe_load((ROOT / "hnr_assets" / "profiles" / "local.yaml").read_text())
    trainer = local["training"]["trainer"]
    trainer.update({"max_steps": args.steps, "eval_steps": args.eval_steps, "early_stopping_patience": 1000})
    if args.max_seq_length:
        trainer["max_seq_length"] = args.max_seq_length
    if args.corpus_size:
        trainer["validation_corpus_size"] = args.corpus_size
    profile = {
        "name": "bench",
        "datasets": [{"name": "scifact"}],
        "training_pairs": {"dataset": {"name": "scifact"}, "split": "train", "max_pairs": args.pairs},
        "generators": [],
        "training": local["training"],
    }
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(profile), encoding="utf-8")
    return path


def write_random_negatives(profile_root: Path, seed: int = 0) -> None:
    """`bm25` and `ce` negative sets of 5 random corpus documents per pair (the shared contract)."""
    rng = random.Random(seed)
    pairs = pl.read_parquet(profile_root / "training_pairs" / "pairs.parquet")
    corpus = pl.read_parquet(profile_root / "training_pairs" / "corpus.parquet")
    docs = [(d, f"{t} {x}".strip()) for d, t, x in corpus.iter_rows() if x.strip()]
    for source, folder in (("bm25", "bm25_negatives"), ("ce", "ce_negatives")):
        rows = []
        for pair in pairs.iter_rows(named=True):
            picks = [d for d in rng.sample(docs, 6) if d[0] != pair["positive_id"]][:5]
            rows += [
                {
                    **{k: pair[k] for k in ("query_id", "positive_id", "query", "positive")},
                    "negative_rank": rank,
                    "negative_id": doc_id,
                    "negative": text,
                    "score": None,
                    "source": source,
                }
                for rank, (doc_id, text) in enumerate(picks, 1)
            ]
        (profile_root / folder).mkdir(parents=True, exist_ok=True)
        pl.DataFrame(rows, schema=NEGATIVES_SCHEMA).write_parquet(profile_root / folder / "negatives.parquet")


def measured(run, *args) -> dict:
    """`run(*args)` (returns a dict), with its peak, resident-after and resident-after-trim memory added."""
    release_free_memory()
    reset = reset_peak()
    out = run(*args)
    after = status_mib("VmRSS")
    release_free_memory()
    return {
        **out,
        "peak_mib": status_mib("VmHWM") if reset else None,
        "after_mib": after,
        "trimmed_mib": status_mib("VmRSS"),
    }


def run_asset(defs, recipe: str) -> dict:
    import dagster as dg

    started = time.perf_counter()
    result = dg.materialize(
        defs.assets,
        selection=["encoders"],
        partition_key=recipe,
        resources=defs.resources,
        instance=dg.DagsterInstance.ephemeral(),
    )
    wall = time.perf_counter() - started
    assert result.success
    training = json.loads((Path(defs.resources["storage"].asset_dir("encoders", recipe)) / "training.json").read_text())
    return {
        "steps": training["steps"],
        "train_seconds": training["train_seconds"],
        "train_cpu_seconds": training["train_cpu_seconds"],
        "examples": training["steps"] * training["settings"]["batch_size"],
        "wall": wall,
    }


def run_bare(base_dir: Path, train: pl.DataFrame, validation, trainer_settings, out: Path) -> dict:
    """A hand-written sentence-transformers script with the same settings (no hnr training code)."""
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import EarlyStoppingCallback

    s = trainer_settings
    started = time.perf_counter()
    model = SentenceTransformer(str(base_dir), device="cpu")
    model.max_seq_length = s.max_seq_length
    evaluator = InformationRetrievalEvaluator(
        queries=validation.queries,
        corpus=validation.corpus,
        relevant_docs={q: set(d) for q, d in validation.qrels.items()},
        name="validation",
        mrr_at_k=[10],
        ndcg_at_k=[10],
        accuracy_at_k=[1],
        precision_recall_at_k=[100],
        map_at_k=[100],
        batch_size=s.eval_batch_size,
        write_csv=False,
    )
    evaluator(model)  # the base score, as the asset computes it before training
    columns = ["query", "positive", *(f"negative_{i}" for i in range(1, 6))]
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=s.batch_size,
        learning_rate=s.learning_rate,
        warmup_steps=s.warmup_ratio,
        weight_decay=s.weight_decay,
        max_steps=s.max_steps,
        eval_strategy="steps",
        eval_steps=s.eval_steps,
        save_strategy="steps",
        save_steps=s.eval_steps,
        save_total_limit=1,
        save_only_model=True,
        load_best_model_at_end=True,
        metric_for_best_model="eval_validation_cosine_ndcg@10",
        logging_steps=s.logging_steps,
        logging_first_step=True,
        seed=s.seed,
        data_seed=s.seed,
        use_cpu=True,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        report_to="none",
        disable_tqdm=True,
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_polars(train.select(columns)),
        loss=MultipleNegativesRankingLoss(model, scale=s.scale),
        evaluator=evaluator,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=s.early_stopping_patience)],
    )
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.train()
    train_seconds, train_cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    model.save(str(out / "model"))
    steps = trainer.state.global_step
    return {
        "steps": steps,
        "train_seconds": train_seconds,
        "train_cpu_seconds": train_cpu_seconds,
        "examples": steps * s.batch_size,
        "wall": time.perf_counter() - started,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12, help="training steps (local profile: 12)")
    parser.add_argument("--eval-steps", type=int, default=3, help="evaluate every N steps (local profile: 3)")
    parser.add_argument("--max-seq-length", type=int, default=0, help="override the profile's (128)")
    parser.add_argument("--corpus-size", type=int, default=0, help="override validation_corpus_size (200)")
    parser.add_argument("--pairs", type=int, default=None, help="use a seeded sample of this many pairs")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each variant, alternating")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()

    import dagster as dg
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from hnr_assets.definitions import build_defs
    from hnr_assets.lib.training.encoder_training import validation_data
    from hnr_assets.profiles import load_profile

    shared = ROOT.parent / "shared" / "datasets"
    mirror = os.environ.get("HNR_DATASETS_DIR") or str(shared)
    with tempfile.TemporaryDirectory(prefix="hnr-bench-training-") as tmp:
        tmp_path = Path(tmp)
        settings = Settings.from_env(
            {
                "HNR_PROFILE": str(write_profile(tmp_path, args)),
                "HNR_DATA_DIR": str(tmp_path / "data"),
                "HNR_DATASETS_DIR": mirror,
            }
        )
        profile = load_profile(settings.profile_path)
        defs = build_defs(settings)
        for asset in ("training_pairs", "base_encoder"):
            assert dg.materialize(
                defs.assets, selection=[asset], resources=defs.resources, instance=dg.DagsterInstance.ephemeral()
            ).success
        profile_root = settings.data_dir / profile.name
        write_random_negatives(profile_root)
        assert dg.materialize(
            defs.assets,
            selection=["training_sets"],
            partition_key="bm25",
            resources=defs.resources,
            instance=dg.DagsterInstance.ephemeral(),
        ).success
        rows = pl.read_parquet(profile_root / "training_sets" / "bm25" / "training_set.parquet")
        split = pl.read_parquet(profile_root / "training_sets" / "bm25" / "split.parquet")
        s = profile.training.trainer
        pairs_dir = profile_root / "training_pairs"
        validation = validation_data(
            pl.read_parquet(pairs_dir / "queries.parquet"),
            pl.read_parquet(pairs_dir / "qrels.parquet"),
            pl.read_parquet(pairs_dir / "corpus.parquet"),
            split.filter(pl.col("split") == "validation")["query_id"].to_list(),
            max_queries=s.validation_queries,
            corpus_size=s.validation_corpus_size,
            seed=s.seed,
        )
        train = rows.filter(pl.col("split") == "train")
        results: dict[str, list[dict]] = {"bare sentence-transformers": [], "encoders asset": []}
        for rep in range(args.repeats):
            bare_out = tmp_path / f"bare-{rep}"
            results["bare sentence-transformers"].append(
                measured(run_bare, profile_root / "base_encoder" / "model", train, validation, s, bare_out)
            )
            results["encoders asset"].append(measured(run_asset, defs, "bm25"))

    def median(runs: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    def rates(runs: list[dict]) -> tuple[float, float]:
        return (
            statistics.median(r["examples"] / r["train_seconds"] for r in runs),
            statistics.median(r["examples"] / r["train_cpu_seconds"] for r in runs),
        )

    bare = results["bare sentence-transformers"]
    bare_eps, bare_cpu = rates(bare)
    print(
        f"training throughput, {len(train)} training rows, {len(validation.queries)} validation queries x "
        f"{len(validation.corpus)} documents; {args.steps} steps, eval every {args.eval_steps}, batch {s.batch_size}, "
        f"max_seq_length {s.max_seq_length}, torch threads {torch.get_num_threads()}, {args.repeats} run(s) each "
        "(medians)"
    )
    header = f"{'variant':<28}{'steps':>6}{'examples/s':>12}{'ratio':>8}{'examples/CPU-s':>16}{'ratio':>8}"
    print(header + f"{'end-to-end s':>14}{'ratio':>8}{'peak MiB':>10}{'ratio':>8}{'after MiB':>11}{'trimmed':>9}")

    def mib(runs: list[dict], key: str) -> float | None:
        values = [r[key] for r in runs if r[key] is not None]
        return statistics.median(values) if values else None

    def cell(value: float | None, width: int, fmt: str = ".0f") -> str:
        return f"{value:>{width}{fmt}}" if value is not None else f"{'n/a':>{width}}"

    bare_peak = mib(bare, "peak_mib")
    for name, runs in results.items():
        eps, cpu = rates(runs)
        wall = median(runs, "wall")
        peak = mib(runs, "peak_mib")
        print(
            f"{name:<28}{runs[0]['steps']:>6}{eps:>12.2f}{eps / bare_eps:>8.3f}{cpu:>16.2f}{cpu / bare_cpu:>8.3f}"
            f"{wall:>14.1f}{wall / median(bare, 'wall'):>8.3f}{cell(peak, 10)}"
            f"{cell(peak / bare_peak if peak and bare_peak else None, 8, '.3f')}"
            f"{cell(mib(runs, 'after_mib'), 11)}{cell(mib(runs, 'trimmed_mib'), 9)}"
        )
    asset_eps, asset_cpu = rates(results["encoders asset"])
    print(
        f"platform overhead: {1 - asset_eps / bare_eps:+.1%} examples/s, {1 - asset_cpu / bare_cpu:+.1%} examples "
        "per CPU-second (target: within 5%)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
