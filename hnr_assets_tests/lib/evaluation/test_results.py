"""The results table from score folders: missing cells, averages, significance, reported column, plots."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from hnr_assets.lib.evaluation import plots, results
from hnr_assets.lib.evaluation.scores import METRICS, write_scores

SYSTEMS = ["bm25-retrieval", "base-encoder", "bm25", "ce", "all-llms"]
DATASETS = ["alpha", "beta"]
QIDS = [f"q{i}" for i in range(60)]


def _write_cell(root: Path, system: str, dataset: str, ndcg: np.ndarray) -> None:
    per_query = pl.DataFrame({"query_id": QIDS, **{m: ndcg for m in METRICS}})
    run = pl.DataFrame({"query_id": ["q0"], "doc_id": ["d"], "score": [1.0], "rank": [1]})
    write_scores(root / system / dataset, run, per_query, {m: float(ndcg.mean()) for m in METRICS})


@pytest.fixture
def score_root(tmp_path: Path) -> Path:
    """Every cell except (all-llms, beta); `ce` is clearly better than `bm25`, `all-llms` equal-ish."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.6, size=len(QIDS))
    levels = {"bm25-retrieval": 0.05, "base-encoder": -0.1, "bm25": 0.0, "ce": 0.15, "all-llms": 0.0}
    for s, shift in levels.items():
        for d in DATASETS:
            if (s, d) == ("all-llms", "beta"):
                continue
            noise = rng.normal(0, 0.01 if s != "all-llms" else 0.05, size=len(QIDS))
            _write_cell(tmp_path, s, d, np.clip(base + shift + noise, 0, 1))
    return tmp_path


def _collect(root: Path, **settings) -> results.Results:
    return results.collect(
        SYSTEMS, DATASETS, lambda s, d: root / s / d, results.SignificanceSettings(bootstrap_samples=500, **settings)
    )


def test_missing_cells_are_shown_not_invented(score_root: Path) -> None:
    res = _collect(score_root)
    assert res.missing == [("all-llms", "beta", "missing")]
    row = res.table.filter(pl.col("system") == "all-llms").row(0, named=True)
    assert row["beta"] is None and row["average"] is None and row["datasets_scored"] == 1
    md = results.markdown_table(res)
    assert "| all-llms |" in md and "missing" in md and "— (1/2 scored)" in md
    assert results.missing_markdown(res).count("\n") == 2  # header, rule, one row


def test_averages_and_reported_column(score_root: Path) -> None:
    res = _collect(score_root)
    ce = res.table.filter(pl.col("system") == "ce").row(0, named=True)
    assert ce["average"] == pytest.approx((ce["alpha"] + ce["beta"]) / 2)
    assert ce["study_reported_average"] == 0.366
    assert res.table.filter(pl.col("system") == "base-encoder")["study_reported_average"][0] is None
    assert results.REPORTED_LABEL in results.markdown_table(res)
    assert res.long.height == len(SYSTEMS) * len(DATASETS) - 1


def test_significance_against_both_references(score_root: Path) -> None:
    res = _collect(score_root)
    tests = res.tests
    assert set(tests["baseline"]) == {"base-encoder", "bm25"}
    vs_bm25 = tests.filter(pl.col("baseline") == "bm25")
    assert set(vs_bm25["system"]) == {"bm25-retrieval", "base-encoder", "ce", "all-llms"}  # not bm25 itself
    vs_base = tests.filter(pl.col("baseline") == "base-encoder")
    assert set(vs_base["system"]) == {"bm25-retrieval", "bm25", "ce", "all-llms"}
    ce = vs_bm25.filter((pl.col("system") == "ce") & (pl.col("dataset") == "alpha")).row(0, named=True)
    assert ce["significant"] and ce["delta"] > 0.1 and ce["p_t_adjusted"] < 0.001 and ce["n"] == len(QIDS)
    assert ce["p_t_adjusted"] >= ce["p_t"]  # Holm never lowers a p-value
    # bm25 is 0.1 above the base encoder: significantly better; each family is corrected on its own
    bm25 = vs_base.filter((pl.col("system") == "bm25") & (pl.col("dataset") == "alpha")).row(0, named=True)
    assert bm25["significant"] and bm25["delta"] == pytest.approx(0.1, abs=0.01)
    # all-llms is noisy around bm25: not significantly different from it
    llm = vs_bm25.filter((pl.col("system") == "all-llms") & (pl.col("dataset") == "alpha")).row(0, named=True)
    assert not llm["significant"]
    md = results.markdown_table(res)
    ce_row = next(line for line in md.splitlines() if line.startswith("| ce |"))
    assert "▲↑" in ce_row  # better than the base encoder and than bm25
    base_row = next(line for line in md.splitlines() if line.startswith("| base-encoder |"))
    assert "↓" in base_row and "▲" not in base_row  # worse than bm25, not compared with itself
    comparisons = results.comparisons_markdown(res)
    assert "(reference)" in comparisons and "Δ vs base-encoder (p)" in comparisons and "†" in comparisons
    assert "Holm-corrected" in results.significance_note(res)
    none = _collect(score_root, correction="none", test="bootstrap")
    row = none.tests.filter((pl.col("system") == "ce") & (pl.col("dataset") == "alpha")).row(0, named=True)
    assert row["p_bootstrap_adjusted"] == row["p_bootstrap"]


def test_each_cell_has_a_bootstrap_interval_around_its_mean(score_root: Path) -> None:
    res = _collect(score_root)
    for (_s, _d), cell in res.cells.items():
        if cell.status != "ok":
            assert np.isnan(cell.ci[0])
            continue
        low, high = cell.ci
        mean = float(cell.metrics["ndcg@10"])
        assert low < mean < high
        # the interval of a mean over 60 queries is about 4 standard errors wide
        se = float(cell.per_query["ndcg@10"].std()) / np.sqrt(len(QIDS))
        assert 2.5 * se < high - low < 5.5 * se
    row = res.table.filter(pl.col("system") == "ce").row(0, named=True)
    assert row["ci_low:alpha"] == res.cells[("ce", "alpha")].ci[0]
    assert "[" in results.markdown_table(res) and "95% percentile bootstrap" in results.significance_note(res)
    narrow = _collect(score_root, confidence=0.5).cells[("ce", "alpha")].ci
    assert narrow[1] - narrow[0] < res.cells[("ce", "alpha")].ci[1] - res.cells[("ce", "alpha")].ci[0]


def test_llm_against_corpus_mined_direction(score_root: Path) -> None:
    res = _collect(score_root)
    rows = {(r["system"], r["scope"]): r for r in results.direction_rows(res)}
    assert set(rows) == {("all-llms", "alpha")}  # beta is missing, so no average either
    alpha = rows[("all-llms", "alpha")]
    llm, bm25, ce, base = (res.value(s, "alpha") for s in ("all-llms", "bm25", "ce", "base-encoder"))
    assert alpha["relative:bm25"] == pytest.approx(llm / bm25 - 1)
    assert alpha["relative:ce"] == pytest.approx(llm / ce - 1)
    assert alpha["gain_share:bm25"] == pytest.approx((llm - base) / (bm25 - base))
    md = results.direction_markdown(res)
    assert "| all-llms | alpha |" in md and "The study" in md


def test_no_reference_scores_means_no_tests(score_root: Path) -> None:
    import shutil

    shutil.rmtree(score_root / "bm25")
    shutil.rmtree(score_root / "base-encoder")
    res = _collect(score_root)
    assert res.tests.height == 0
    assert "▲" not in results.markdown_table(res) and "↑" not in results.markdown_table(res)


def test_a_broken_folder_is_reported_as_invalid(score_root: Path) -> None:
    (score_root / "ce" / "alpha" / "metrics.json").write_text("{}")
    (score_root / "ce" / "beta" / "per_query.parquet").unlink()
    res = _collect(score_root)
    why = {(s, d): w for s, d, w in res.missing}
    assert "no numeric value for ndcg@10" in why[("ce", "alpha")]
    assert "missing per_query.parquet" in why[("ce", "beta")]
    assert res.cells[("ce", "alpha")].status == "invalid"


@dataclass
class Ref:
    system: str
    dataset: str
    value: float
    tolerance: float = 0.003
    metric: str = "ndcg@10"
    source: str = "paper"


def test_reference_and_base_encoder_gates(score_root: Path) -> None:
    res = _collect(score_root)
    measured = res.value("bm25-retrieval", "alpha")
    assert results.reference_problems(res, [Ref("bm25-retrieval", "alpha", measured + 0.002)]) == []
    (far,) = results.reference_problems(res, [Ref("bm25-retrieval", "alpha", measured + 0.01)])
    assert far.startswith("bm25-retrieval on alpha: ndcg@10 ") and "(paper)" in far
    assert results.reference_problems(res, [Ref("all-llms", "beta", 0.5)]) == [
        "all-llms on beta: not measured (missing)"
    ]
    # bm25 and ce beat the base encoder significantly on alpha; all-llms too (it is bm25 plus noise)
    assert results.beats_base_problems(res, ["bm25", "ce", "all-llms"], dataset="alpha") == []
    assert results.beats_base_outcomes(res, ["bm25", "ce"], dataset="alpha") == {"bm25": (1, 1), "ce": (1, 1)}
    assert results.beats_base_problems(res, ["bm25", "ce"], dataset=None) == []  # both datasets
    (few,) = results.beats_base_problems(res, ["bm25"], dataset="alpha", min_recipes=2, base="bm25-retrieval")
    assert few.startswith("bm25-retrieval is not a reference system")
    # with bm25-retrieval as the reference, bm25 (0.05 below it) does not beat it: a problem naming the count
    ref = _collect(score_root, baselines=("bm25-retrieval",))
    (problem,) = results.beats_base_problems(ref, ["bm25", "ce"], dataset="alpha", base="bm25-retrieval")
    assert problem.startswith("1 of 2 recipes beat bm25-retrieval on alpha") and "bm25: 0/1" in problem


def test_plots_are_png_files(score_root: Path, tmp_path: Path) -> None:
    import matplotlib.image

    res = _collect(score_root)
    heat = plots.heatmap(res, tmp_path / "out" / "heatmap.png")
    bars = plots.averages_bar(res, tmp_path / "out" / "averages.png")
    spans = plots.intervals(res, tmp_path / "out" / "intervals.png")
    for path in (heat, bars, spans):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.image.imread(path).shape[0] > 200
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["averages.png", "heatmap.png", "intervals.png"]
