"""`scores` and `results` on a real Dagster instance, a real MLflow store and tiny real encoders.

The upstream stages (mining's `bm25_scores`, training's `base_encoder` and `encoders`) are written here
to their contracts: a lexical run scored with `lib.evaluation.scores`, tiny random sentence-transformers folders,
and `training.json` files naming real MLflow runs.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from hnr_assets.cli import run_demo
from hnr_assets.definitions import build_defs
from hnr_assets.lib.data.beir import load_qrels
from hnr_assets.lib.evaluation.scores import score_run, write_scores
from hnr_assets.settings import Settings
from hnr_assets_tests.conftest import materialize, metadata
from hnr_assets_tests.encoder_fixtures import make_tiny_encoder, write_training_json

pytestmark = pytest.mark.slow

PROFILE = """\
name: evaltest
datasets:
  - name: tiny-a
  - name: tiny-b
training_pairs:
  dataset: {name: tiny-a}
generators:
  - {key: g, model: tiny-random, backend: transformers}
bm25: {backend: bm25s, scores_depth: %(bm25_depth)d}
evaluation:
  top_k: %(top_k)d
  max_length: 64
  batch_size: 8
  precision: fp32
  device: cpu
  cache_embeddings: true
  significance: {baselines: [base-encoder, bm25], test: t-test, correction: holm, alpha: 0.05, bootstrap_samples: 200, seed: 0}
  references:
    - {system: bm25-retrieval, dataset: tiny-a, value: 0.999, tolerance: 0.001, source: made up for the test}
"""
RECIPES = ["bm25", "ce", "llm-g", "llm-g+bm25", "llm-g+ce", "llm-g-filtered"]


def _settings(tmp_path: Path, mirror: Path, top_k: int = 1000, bm25_depth: int = 1000) -> Settings:
    profile = tmp_path / "evaltest.yaml"
    profile.write_text(PROFILE % {"top_k": top_k, "bm25_depth": bm25_depth})
    return Settings.from_env(
        {"HNR_PROFILE": str(profile), "HNR_DATA_DIR": str(tmp_path / "data"), "HNR_DATASETS_DIR": str(mirror)}
    )


def _lexical_run(dataset_dir: Path, hits: int) -> pl.DataFrame:
    """Term-overlap retrieval: a real, deterministic run in the shared layout."""
    corpus = pl.read_parquet(dataset_dir / "corpus.parquet")
    docs = [(d, set(f"{t} {x}".lower().split())) for d, t, x in corpus.select("doc_id", "title", "text").iter_rows()]
    rows = []
    for qid, text in pl.read_parquet(dataset_dir / "queries.parquet").select("query_id", "text").iter_rows():
        terms = set(text.lower().replace("?", "").split())
        ranked = sorted(((len(terms & words) + 1.0, d) for d, words in docs), key=lambda t: (-t[0], t[1]))[:hits]
        rows += [(qid, d, s, r) for r, (s, d) in enumerate(ranked, 1)]
    return pl.DataFrame(
        rows, schema={"query_id": pl.String, "doc_id": pl.String, "score": pl.Float32, "rank": pl.Int32}, orient="row"
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("models")
    return {seed: make_tiny_encoder(root / f"seed{seed}", seed=seed) for seed in (0, 1, 2)}


def _upstream(
    settings: Settings,
    defs: dg.Definitions,
    models: dict[int, Path],
    bm25_hits: int | None = None,
    recipes: list[str] = RECIPES,
) -> dict[str, str]:
    """Materialize `datasets` and `bm25_scores` (bm25s), or write a lexical run of `bm25_hits` hits per
    query to `bm25_scores` by hand; write base_encoder and encoders to the training stage's contract."""
    instance = dg.DagsterInstance.ephemeral()
    root = settings.data_dir / "evaltest"
    for name in ("tiny-a", "tiny-b"):
        for asset in ("datasets", "bm25_scores") if bm25_hits is None else ("datasets",):
            dg.materialize(
                defs.assets, selection=[asset], partition_key=name, resources=defs.resources, instance=instance
            )
        if bm25_hits is not None:
            run = _lexical_run(root / "datasets" / name, bm25_hits)
            per_query, means = score_run(run, load_qrels(root / "datasets" / name / "qrels.parquet"))
            write_scores(root / "bm25_scores" / name, run, per_query, {**means, "queries": per_query.height})
    shutil.copytree(models[0], root / "base_encoder" / "model")
    run_ids = {}
    mlflow = defs.resources["mlflow"]
    for i, recipe in enumerate(recipes):
        # two recipes share seed 1's weights: identical content, so they share cached embeddings
        shutil.copytree(models[1 + (i % 2)], root / "encoders" / recipe / "model")
        with mlflow.run(f"encoder:{recipe}", tags={"hnr/recipe": recipe}) as run:
            run.log_metrics({"validation/ndcg_at_10": 0.5})
        write_training_json(root / "encoders" / recipe, recipe, run.run_id)
        run_ids[recipe] = run.run_id
    return run_ids


def test_full_grid_results_mlflow_and_cache(tmp_path: Path, tiny_mirror: Path, models: dict[int, Path]) -> None:
    settings = _settings(tmp_path, tiny_mirror)
    defs = build_defs(settings)
    run_ids = _upstream(settings, defs, models)
    pdef = defs.resolve_assets_def("scores").partitions_def
    assert len(pdef.get_partition_keys()) == 8 * 2

    instance = dg.DagsterInstance.ephemeral()
    steps = run_demo(defs, instance, select=["scores", "results"])
    assert [s.status for s in steps] == ["materialized"] * 17

    root = settings.data_dir / "evaltest"
    # BM25 retrieval is the mining stage's run, re-scored with the same metric code
    ours = json.loads((root / "scores" / "bm25-retrieval" / "tiny-a" / "metrics.json").read_text())
    theirs = json.loads((root / "bm25_scores" / "tiny-a" / "metrics.json").read_text())
    assert ours["ndcg@10"] == pytest.approx(theirs["ndcg@10"], abs=1e-6)
    # dense runs: every judged query, 48 documents each (top_k > corpus), ranks 1..48
    run = pl.read_parquet(root / "scores" / "llm-g" / "tiny-b" / "run.parquet")
    assert run["query_id"].n_unique() == 8 and run.height == 8 * 48
    # identical model content (ce and llm-g+bm25 are copies of seed 2's model) -> one cache entry
    cache = sorted(p.name for p in (settings.data_dir / "cache" / "embeddings").iterdir())
    assert len(cache) == 3 * 2 * 2  # 3 distinct models × 2 datasets × (corpus, queries)

    results_dir = root / "results"
    table = pl.read_parquet(results_dir / "results.parquet")
    assert table["system"].to_list() == ["bm25-retrieval", "base-encoder", *RECIPES]
    assert table["average"].null_count() == 0
    assert sorted(p.name for p in results_dir.iterdir()) == [
        "averages.png",
        "direction.csv",
        "heatmap.png",
        "intervals.png",
        "results.csv",
        "results.md",
        "results.parquet",
        "scores_long.csv",
        "scores_long.parquet",
        "significance.csv",
        "significance.parquet",
    ]
    significance = pl.read_csv(results_dir / "significance.csv")
    # per reference (base-encoder, bm25) and dataset: every other system
    assert significance.height == 2 * 7 * 2
    assert significance.group_by("baseline", "dataset").len()["len"].to_list() == [7, 7, 7, 7]

    # checks of results: complete passes; the reference (made up: 0.999) fails as WARN; the
    # base-encoder gate agrees with the table
    result = materialize(defs, "results", None, instance)
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["complete"].passed
    assert not checks["reference_scores"].passed
    assert checks["reference_scores"].severity == dg.AssetCheckSeverity.WARN
    # the gate: at least 2 recipes significantly better than the base encoder on tiny-a (the training dataset)
    wins = significance.filter(
        (pl.col("baseline") == "base-encoder")
        & (pl.col("dataset") == "tiny-a")
        & pl.col("system").is_in(RECIPES)
        & pl.col("significant")
        & (pl.col("delta") > 0)
    )
    gate = checks["recipes_beat_base_encoder"]
    assert gate.passed == (wins.height >= 2)
    assert sum(gate.metadata[f"significant_wins/{r}"].value for r in RECIPES) == wins.height
    meta = metadata(result, "results")
    assert meta["cells_missing"] == 0
    assert "| bm25-retrieval |" in meta["table"] and "bootstrap interval" in meta["table"]
    assert "Δ vs base-encoder (p)" in meta["comparisons"] and "| llm-g | tiny-a |" in meta["llm_vs_corpus"]
    assert (results_dir / "results.md").read_text().startswith("Setting: ")
    assert meta["heatmap"].startswith("![nDCG@10 heatmap](data:image/png;base64,")

    # MLflow: the encoder's own run carries its scores; one run per baseline; a results run
    client = defs.resources["mlflow"].client()
    encoder_run = client.get_run(run_ids["llm-g"])
    llm_g = json.loads((root / "scores" / "llm-g" / "tiny-a" / "metrics.json").read_text())
    assert encoder_run.data.metrics["eval/tiny-a/ndcg_at_10"] == pytest.approx(llm_g["ndcg@10"])
    assert {"eval/tiny-b/recall_at_100", "validation/ndcg_at_10"} <= set(encoder_run.data.metrics)
    assert encoder_run.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(run_ids["llm-g"], "eval/tiny-a")] == [
        "eval/tiny-a/metrics.json",
        "eval/tiny-a/per_query.parquet",
    ]
    experiment = client.get_experiment_by_name("hnr-evaltest")
    baselines = client.search_runs([experiment.experiment_id], "tags.`hnr/role` = 'baseline-evaluation'")
    assert sorted(r.data.tags["hnr/system"] for r in baselines) == ["base-encoder", "bm25-retrieval"]
    assert all(r.info.status == "FINISHED" and "eval/tiny-b/ndcg_at_10" in r.data.metrics for r in baselines)
    results_runs = client.search_runs([experiment.experiment_id], "tags.`hnr/role` = 'results'")
    assert len(results_runs) == 2
    artifacts = {a.path for a in client.list_artifacts(results_runs[0].info.run_id, "results")}
    assert {"results/heatmap.png", "results/results.csv", "results/significance.parquet"} <= artifacts

    # re-scoring reads the cached corpus embeddings and gives the same run
    before = (root / "scores" / "llm-g" / "tiny-a" / "run.parquet").read_bytes()
    again = materialize(defs, "scores", "tiny-a|llm-g", instance)
    meta = metadata(again, "scores")
    assert meta["cache_hit"] is True and meta["query_cache_hit"] is True and meta["model_loaded"] is False
    assert pl.read_parquet(root / "scores" / "llm-g" / "tiny-a" / "run.parquet").equals(
        pl.read_parquet(io_bytes(before))
    )


def io_bytes(data: bytes):
    import io

    return io.BytesIO(data)


def test_results_with_some_scores_missing(tmp_path: Path, tiny_mirror: Path, models: dict[int, Path]) -> None:
    settings = _settings(tmp_path, tiny_mirror)
    defs = build_defs(settings)
    _upstream(settings, defs, models, recipes=["bm25"])
    instance = dg.DagsterInstance.ephemeral()
    for key in ("tiny-a|bm25-retrieval", "tiny-a|base-encoder", "tiny-a|bm25"):
        result = materialize(defs, "scores", key, instance)
        checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
        assert checks == {"contract": True, "metrics_in_range": True}
        meta = metadata(result, "scores")
        assert 0.0 <= meta["ndcg@10"] <= 1.0 and meta["queries"] == 8
    assert "| query_id | query | rank | doc_id | score | grade |" in meta["sample_hits"]

    result = materialize(defs, "results", None, instance)
    assert result.success
    meta = metadata(result, "results")
    assert meta["cells_scored"] == 3 and meta["cells_missing"] == 13
    assert "| llm-g | missing | missing |" in meta["table"].replace(" — (0/2 scored)", "")
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not checks["complete"].passed and checks["complete"].severity == dg.AssetCheckSeverity.WARN
    gate = checks["recipes_beat_base_encoder"].metadata["problems"].value
    assert "recipes beat base-encoder on tiny-a" in gate and "ce: 0/0" in gate
    table = pl.read_parquet(settings.data_dir / "evaltest" / "results" / "results.parquet")
    assert table.filter(pl.col("system") == "bm25")["average"][0] is None  # tiny-b not scored: no average
    assert math.isnan(table.filter(pl.col("system") == "bm25")["tiny-a"][0]) is False


def test_missing_encoder_is_a_clear_error(tmp_path: Path, tiny_mirror: Path, models: dict[int, Path]) -> None:
    settings = _settings(tmp_path, tiny_mirror)
    defs = build_defs(settings)
    _upstream(settings, defs, models, recipes=["bm25"])
    with pytest.raises(Exception, match=r"encoders/ce/training\.json is missing: materialize the `encoders` partition"):
        materialize(defs, "scores", "tiny-a|ce")


def test_blocking_contract_check_fails_on_a_bad_bm25_run(
    tmp_path: Path, tiny_mirror: Path, models: dict[int, Path]
) -> None:
    settings = _settings(tmp_path, tiny_mirror, top_k=5)
    defs = build_defs(settings)
    _upstream(settings, defs, models, bm25_hits=10, recipes=[])
    result = materialize(defs, "scores", "tiny-a|bm25-retrieval", raise_on_error=False)
    (check,) = [c for c in result.get_asset_check_evaluations() if c.check_name == "contract"]
    assert not check.passed
    assert "8 queries have more than 5 hits" in check.metadata["problems"].value


def test_definitions_include_the_evaluation_stage(test_settings: Settings) -> None:
    defs = build_defs(test_settings)
    graph = defs.resolve_asset_graph()
    scores = graph.get(dg.AssetKey("scores"))
    assert {k.to_user_string() for k in scores.parent_keys} == {"datasets", "bm25_scores", "base_encoder", "encoders"}
    keys = defs.resolve_assets_def("scores").partitions_def.get_partition_keys()
    assert len(keys) == (2 + 14) * 2 and "tiny-a|all-llms+ce" in keys
    assert {k.to_user_string() for k in graph.get(dg.AssetKey("results")).parent_keys} == {"scores"}
