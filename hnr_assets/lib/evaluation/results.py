"""The study's results table: every system on every dataset, the average, significance, reported figures.

Built from whatever score folders exist: a (system, dataset) cell without scores is shown as missing,
never filled in, and an average is only given for a system scored on every dataset.

Uncertainty: every cell carries a percentile bootstrap confidence interval of its mean over queries.
Significance: each system is compared with each reference system (by default the untrained base
encoder, `base-encoder`, and the recipe trained on BM25 negatives, `bm25`) per dataset on the per-query
values of the primary metric (`lib.evaluation.significance`); on each dataset, the comparisons with one reference
form one family, corrected with Holm's method by default.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from hnr_assets.lib.evaluation import significance
from hnr_assets.lib.evaluation.scores import METRICS, PRIMARY_METRIC, SCORE_FILES, read_metrics, read_per_query
from hnr_assets.lib.runtime.errors import DataValidationError
from hnr_assets.lib.runtime.report import md_table
from hnr_assets.lib.training.recipes import BASELINE_SYSTEMS

# Averages of nDCG@10 over the study's 10 BEIR datasets (DistilBERT trained on MS MARCO pairs), as
# reported in arXiv 2504.21015, keyed by our recipe key. "Best LLM" is Phi-4 (key `phi4-14b` in the
# `paper` profile). Shown beside our measured averages, never mixed with them.
STUDY_REPORTED_NDCG10 = {
    "bm25": 0.359,
    "ce": 0.366,
    "llm-phi4-14b": 0.314,
    "all-llms": 0.292,
    "all-llms+bm25": 0.343,
    "all-llms+ce": 0.307,
}
REPORTED_LABEL = "study reported avg (10 BEIR datasets, DistilBERT/MS MARCO)"


@dataclass
class Cell:
    """One (system, dataset) score folder as read back.

    Attributes:
        status: `ok`, `missing` (no folder) or `invalid` (a folder that breaks the contract).
        metrics: Means per metric (`ok` only).
        per_query: Per-query metrics (`ok` only).
        problem: Why it is invalid.
        ci: Bootstrap confidence interval of the primary metric's mean (`ok` only; set by `collect`).
    """

    status: str
    metrics: dict[str, Any] = field(default_factory=dict)
    per_query: pl.DataFrame | None = None
    problem: str = ""
    ci: tuple[float, float] = (math.nan, math.nan)


def read_cell(folder: Path) -> Cell:
    """Read one score folder; a missing or broken one is reported, not raised."""
    folder = Path(folder)
    if not folder.is_dir():
        return Cell("missing")
    absent = [name for name in SCORE_FILES if not (folder / name).is_file()]
    if absent:
        return Cell("invalid", problem=f"{folder}: missing {', '.join(absent)}")
    try:
        return Cell("ok", metrics=read_metrics(folder), per_query=read_per_query(folder))
    except DataValidationError as exc:
        return Cell("invalid", problem=str(exc))


@dataclass
class SignificanceSettings:
    """How systems are compared with the reference systems, and how cells get their intervals.

    Attributes:
        baselines: Systems every other system is compared with, each its own family of tests (the
            untrained `base-encoder`: does training help; the `bm25` recipe: the study's reference).
        test: Test whose p-value is shown in the table: `t-test` or `bootstrap` (both are stored).
        correction: `holm`, `bonferroni` or `none`, per dataset and reference over the compared systems.
        alpha: Significance level for the markers.
        bootstrap_samples: Resamples of the bootstrap test and of the confidence intervals.
        seed: Seed of the bootstraps.
        confidence: Coverage of each cell's bootstrap interval.
    """

    baselines: tuple[str, ...] = ("base-encoder", "bm25")
    test: str = "t-test"
    correction: str = "holm"
    alpha: float = 0.05
    bootstrap_samples: int = 10_000
    seed: int = 0
    confidence: float = 0.95

    def __post_init__(self) -> None:
        self.baselines = tuple(self.baselines)
        if not self.baselines:
            raise ValueError("significance needs at least one reference system in `baselines`")


@dataclass
class Results:
    """Everything the `results` asset writes.

    Attributes:
        systems: System keys, in display order.
        datasets: Dataset names, in display order.
        cells: `(system, dataset) -> Cell`.
        long: One row per scored (system, dataset): every metric and the query count.
        table: Wide table of the primary metric: one row per system, one column per dataset, its
            interval (`ci_low:<d>`, `ci_high:<d>`), the average, the count of scored datasets, the study's
            reported average, and per reference and dataset the difference and the adjusted p-value
            (`delta:<ref>:<d>`, `p:<ref>:<d>`).
        tests: One row per comparison with a reference: means, delta, raw and adjusted p-values.
        settings: The significance settings used.
    """

    systems: list[str]
    datasets: list[str]
    cells: dict[tuple[str, str], Cell]
    long: pl.DataFrame
    table: pl.DataFrame
    tests: pl.DataFrame
    settings: SignificanceSettings

    @property
    def missing(self) -> list[tuple[str, str, str]]:
        """`(system, dataset, why)` for every cell without usable scores."""
        return [(s, d, c.problem or c.status) for (s, d), c in self.cells.items() if c.status != "ok"]

    def value(self, system: str, dataset: str, metric: str = PRIMARY_METRIC) -> float | None:
        cell = self.cells[(system, dataset)]
        return float(cell.metrics[metric]) if cell.status == "ok" else None

    def average(self, system: str) -> float | None:
        row = self.table.filter(pl.col("system") == system)
        return row["average"][0] if row.height else None


def collect(
    systems: Sequence[str],
    datasets: Sequence[str],
    folder_of: Callable[[str, str], Path],
    settings: SignificanceSettings | None = None,
    reported: dict[str, float] | None = None,
) -> Results:
    """Read every score folder there is and build the tables.

    Args:
        systems: System keys in display order (baselines, then recipes).
        datasets: Dataset names in display order.
        folder_of: `(system, dataset) -> score folder`.
        settings: Significance settings.
        reported: Study-reported averages per system (default `STUDY_REPORTED_NDCG10`).
    """
    settings = settings or SignificanceSettings()
    reported = STUDY_REPORTED_NDCG10 if reported is None else reported
    cells = {(s, d): read_cell(folder_of(s, d)) for s in systems for d in datasets}
    for cell in cells.values():
        if cell.status == "ok" and cell.per_query is not None:
            cell.ci = significance.bootstrap_ci(
                cell.per_query[PRIMARY_METRIC].to_numpy(),
                settings.bootstrap_samples,
                settings.seed,
                settings.confidence,
            )

    long_rows = [
        {
            "system": s,
            "dataset": d,
            **{m: float(c.metrics[m]) for m in METRICS},
            "queries": int(c.per_query.height) if c.per_query is not None else 0,
        }
        for (s, d), c in cells.items()
        if c.status == "ok"
    ]
    long = pl.DataFrame(
        long_rows,
        schema={"system": pl.String, "dataset": pl.String, **dict.fromkeys(METRICS, pl.Float64), "queries": pl.Int64},
    )
    tests = _significance(systems, datasets, cells, settings)
    table = _wide(systems, datasets, cells, tests, settings, reported)
    return Results(list(systems), list(datasets), cells, long, table, tests, settings)


def _significance(
    systems: Sequence[str], datasets: Sequence[str], cells: dict[tuple[str, str], Cell], st: SignificanceSettings
) -> pl.DataFrame:
    rows = []
    for ref in st.baselines:
        for d in datasets:
            base = cells.get((ref, d))
            if base is None or base.status != "ok":
                continue
            family = []
            for s in systems:
                cell = cells[(s, d)]
                if s == ref or cell.status != "ok":
                    continue
                cmp = significance.compare(
                    cell.per_query, base.per_query, PRIMARY_METRIC, st.bootstrap_samples, st.seed
                )
                family.append({"baseline": ref, "system": s, "dataset": d, **cmp.__dict__})
            p_t_adj = significance.adjust([r["p_t"] for r in family], st.correction)
            p_b_adj = significance.adjust([r["p_bootstrap"] for r in family], st.correction)
            for row, pt, pb in zip(family, p_t_adj, p_b_adj, strict=True):
                row["p_t_adjusted"], row["p_bootstrap_adjusted"] = pt, pb
                shown = pt if st.test == "t-test" else pb
                row["significant"] = bool(not math.isnan(shown) and shown < st.alpha)
            rows += family
    schema = {
        "baseline": pl.String,
        "system": pl.String,
        "dataset": pl.String,
        "n": pl.Int64,
        "mean_system": pl.Float64,
        "mean_baseline": pl.Float64,
        "delta": pl.Float64,
        "p_t": pl.Float64,
        "p_bootstrap": pl.Float64,
        "p_t_adjusted": pl.Float64,
        "p_bootstrap_adjusted": pl.Float64,
        "significant": pl.Boolean,
    }
    frame = pl.DataFrame(rows, schema=schema) if rows else pl.DataFrame(schema=schema)
    return frame.with_columns(pl.lit(PRIMARY_METRIC).alias("metric"), pl.lit(st.correction).alias("correction"))


def _wide(
    systems: Sequence[str],
    datasets: Sequence[str],
    cells: dict[tuple[str, str], Cell],
    tests: pl.DataFrame,
    st: SignificanceSettings,
    reported: dict[str, float],
) -> pl.DataFrame:
    p_col = "p_t_adjusted" if st.test == "t-test" else "p_bootstrap_adjusted"
    found = {(r["baseline"], r["system"], r["dataset"]): r for r in tests.iter_rows(named=True)}
    rows = []
    for s in systems:
        values = {
            d: (float(cells[(s, d)].metrics[PRIMARY_METRIC]) if cells[(s, d)].status == "ok" else None)
            for d in datasets
        }
        intervals: dict[str, float | None] = {}
        for d in datasets:
            ok = cells[(s, d)].status == "ok"
            intervals[f"ci_low:{d}"] = cells[(s, d)].ci[0] if ok else None
            intervals[f"ci_high:{d}"] = cells[(s, d)].ci[1] if ok else None
        compared: dict[str, float | None] = {}
        for ref in st.baselines:
            for d in datasets:
                row = found.get((ref, s, d))
                compared[f"delta:{ref}:{d}"] = row["delta"] if row else None
                compared[f"p:{ref}:{d}"] = row[p_col] if row else None
        scored = [v for v in values.values() if v is not None]
        rows.append(
            {
                "system": s,
                "kind": "baseline" if s in BASELINE_SYSTEMS else "recipe",
                **values,
                "average": sum(scored) / len(scored) if len(scored) == len(datasets) and datasets else None,
                "datasets_scored": len(scored),
                "study_reported_average": reported.get(s),
                **intervals,
                **compared,
            }
        )
    schema = {
        "system": pl.String,
        "kind": pl.String,
        **dict.fromkeys(datasets, pl.Float64),
        "average": pl.Float64,
        "datasets_scored": pl.Int64,
        "study_reported_average": pl.Float64,
        **{f"{side}:{d}": pl.Float64 for d in datasets for side in ("ci_low", "ci_high")},
        **{f"{kind}:{ref}:{d}": pl.Float64 for ref in st.baselines for d in datasets for kind in ("delta", "p")},
    }
    return pl.DataFrame(rows, schema=schema).select(list(schema))


# ------------------------------------------------------------------------------------------ rendering


def _fmt(value: float | None, digits: int = 4) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _fmt_p(p: float | None) -> str:
    if p is None or math.isnan(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


# Markers of a significant difference, per reference system in `SignificanceSettings.baselines` order:
# (better than the reference, worse than the reference).
MARKERS = (("▲", "▼"), ("↑", "↓"), ("⁺", "⁻"), ("⊕", "⊖"))


def _markers(results: Results, system: str, dataset: str) -> str:
    st = results.settings
    row = results.table.filter(pl.col("system") == system).row(0, named=True)
    out = ""
    for (better, worse), ref in zip(MARKERS, st.baselines, strict=False):
        p, delta = row.get(f"p:{ref}:{dataset}"), row.get(f"delta:{ref}:{dataset}")
        if p is not None and delta is not None and not math.isnan(p) and p < st.alpha:
            out += better if delta > 0 else worse
    return out


def _ci_text(cell: Cell) -> str:
    low, high = cell.ci
    return "" if math.isnan(low) else f" [{low:.3f}, {high:.3f}]"


def markdown_table(results: Results) -> str:
    """The table as Markdown: nDCG@10 per dataset with its bootstrap interval and a marker per reference
    system the difference with is significant (see `significance_note`), the average, and the study's
    reported average in its own labelled column."""
    headers = ["system", *results.datasets, "average", REPORTED_LABEL]
    rows = []
    for r in results.table.iter_rows(named=True):
        cells = []
        for d in results.datasets:
            cell = results.cells[(r["system"], d)]
            if cell.status != "ok":
                cells.append(cell.status)
                continue
            cells.append(f"{_fmt(r[d])}{_ci_text(cell)} {_markers(results, r['system'], d)}".rstrip())
        average = (
            _fmt(r["average"])
            if r["average"] is not None
            else f"— ({r['datasets_scored']}/{len(results.datasets)} scored)"
        )
        rows.append([r["system"], *cells, average, _fmt(r["study_reported_average"], 3)])
    return md_table(rows, headers, max_chars=60)


def comparisons_markdown(results: Results) -> str:
    """Per dataset, every system's difference with each reference and its adjusted p-value."""
    st = results.settings
    headers = ["dataset", "system", *(f"Δ vs {ref} (p)" for ref in st.baselines)]
    rows = []
    for d in results.datasets:
        for r in results.table.iter_rows(named=True):
            if results.cells[(r["system"], d)].status != "ok":
                continue
            cols = []
            for ref in st.baselines:
                delta, p = r[f"delta:{ref}:{d}"], r[f"p:{ref}:{d}"]
                if r["system"] == ref:
                    cols.append("(reference)")
                elif delta is None:
                    cols.append("n/a")
                else:
                    mark = "†" if p is not None and not math.isnan(p) and p < st.alpha else ""
                    cols.append(f"{delta:+.4f} (p={_fmt_p(p)}){mark}")
            rows.append([d, r["system"], *cols])
    return md_table(rows, headers, max_chars=60)


def significance_note(results: Results) -> str:
    """One paragraph saying how the intervals, markers and p-values in the tables were computed."""
    st = results.settings
    test = "paired t-test" if st.test == "t-test" else f"paired bootstrap test ({st.bootstrap_samples} resamples)"
    corr = {
        "holm": "Holm-corrected per dataset and reference over the systems compared",
        "bonferroni": "Bonferroni-corrected per dataset and reference over the systems compared",
        "none": "not corrected for multiple comparisons",
    }[st.correction]
    legend = "; ".join(
        f"{better} / {worse} significantly better / worse than `{ref}`"
        for (better, worse), ref in zip(MARKERS, st.baselines, strict=False)
    )
    return (
        f"[low, high]: {st.confidence:.0%} percentile bootstrap interval of the mean over queries "
        f"({st.bootstrap_samples} resamples). {legend} (two-sided {test} over the judged queries of "
        f"{PRIMARY_METRIC}, {corr}, p < {st.alpha}); † in the comparisons table marks the same. Both tests, "
        "raw and adjusted, are in significance.csv. The reported column is the study's own average over its "
        "10 BEIR datasets (arXiv 2504.21015), not measured here and not comparable dataset for dataset."
    )


# The study's relative gap of LLM-written against corpus-mined negatives (average nDCG@10 over 10 BEIR
# datasets, arXiv 2504.21015): best LLM (Phi-4) and all LLMs, against BM25 and cross-encoder negatives.
STUDY_LLM_GAP = {
    ("llm-phi4-14b", "bm25"): 0.314 / 0.359 - 1,
    ("llm-phi4-14b", "ce"): 0.314 / 0.366 - 1,
    ("all-llms", "bm25"): 0.292 / 0.359 - 1,
    ("all-llms", "ce"): 0.292 / 0.366 - 1,
}
CORPUS_RECIPES = ("bm25", "ce")
BASE_SYSTEM = "base-encoder"


def direction_rows(results: Results) -> list[dict[str, Any]]:
    """The study's question for every recipe that uses LLM negatives, per dataset and on average.

    For each LLM recipe and scope (each dataset, then `average` when complete): its nDCG@10, its relative
    difference with each corpus-mined recipe (`bm25`, `ce`) — the study's measure (LLM 12–18 % behind) —
    and the share of that recipe's gain over the untrained base encoder that the LLM recipe reaches
    (`gain_share:<src>` = (LLM − base) / (src − base); only when the corpus recipe gained).
    """
    by_system = {r["system"]: r for r in results.table.iter_rows(named=True)}
    base = by_system.get(BASE_SYSTEM)
    out = []
    for system, row in by_system.items():
        if not (system.startswith("llm-") or system.startswith("all-llms")):
            continue
        for scope in [*results.datasets, "average"]:
            value = row.get(scope)
            if value is None:
                continue
            entry: dict[str, Any] = {"system": system, "scope": scope, "ndcg@10": value}
            for src in CORPUS_RECIPES:
                ref = by_system.get(src, {}).get(scope)
                entry[f"relative:{src}"] = value / ref - 1 if ref else None
                base_value = base.get(scope) if base else None
                gained = ref - base_value if ref is not None and base_value is not None else None
                entry[f"gain_share:{src}"] = (value - base_value) / gained if gained and gained > 0 else None
            out.append(entry)
    return out


def direction_markdown(results: Results) -> str:
    """`direction_rows` as Markdown, with the study's own gaps for comparison."""
    rows = [
        [
            r["system"],
            r["scope"],
            _fmt(r["ndcg@10"]),
            *(_pct(r[f"relative:{src}"]) for src in CORPUS_RECIPES),
            *(_pct(r[f"gain_share:{src}"], signed=False) for src in CORPUS_RECIPES),
        ]
        for r in direction_rows(results)
    ]
    if not rows:
        return "no recipe with LLM negatives is scored"
    headers = ["recipe", "scope", PRIMARY_METRIC, "vs bm25", "vs ce", "share of bm25's gain", "share of ce's gain"]
    study = ", ".join(f"{s} vs {src} {_pct(v)}" for (s, src), v in STUDY_LLM_GAP.items())
    return f"{md_table(rows, headers, max_chars=60)}\n\nThe study (10 BEIR datasets, DistilBERT/MS MARCO): {study}."


def _pct(value: float | None, *, signed: bool = True) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:+.1%}" if signed else f"{value:.0%}"


def missing_markdown(results: Results) -> str:
    """The cells without usable scores, or `none`."""
    missing = results.missing
    if not missing:
        return "none"
    return md_table([(s, d, why) for s, d, why in missing], ["system", "dataset", "status"], max_chars=200)


# ------------------------------------------------------------------------------------------ quality gates


def reference_problems(results: Results, references: Sequence[Any]) -> list[str]:
    """Measured values that miss a reference value by more than its tolerance (or are not measured).

    Args:
        references: Objects with `system`, `dataset`, `metric`, `value`, `tolerance`, `source`.
    """
    problems = []
    for ref in references:
        cell = results.cells.get((ref.system, ref.dataset))
        if cell is None:
            problems.append(f"{ref.system} on {ref.dataset}: not a partition of this profile")
            continue
        if cell.status != "ok":
            problems.append(f"{ref.system} on {ref.dataset}: not measured ({cell.status})")
            continue
        got = float(cell.metrics[ref.metric])
        if abs(got - ref.value) > ref.tolerance:
            problems.append(
                f"{ref.system} on {ref.dataset}: {ref.metric} {got:.4f} is more than {ref.tolerance} away from "
                f"{ref.value} ({ref.source})"
            )
    return problems


def beats_base_problems(
    results: Results,
    recipes: Sequence[str],
    *,
    dataset: str | None,
    min_recipes: int = 2,
    base: str = BASE_SYSTEM,
) -> list[str]:
    """Problems unless fine-tuning measurably helps: at least `min_recipes` recipes beat the base encoder
    significantly (the shown test, corrected, p < alpha).

    Args:
        results: The collected results (the base encoder must be one of the reference systems).
        recipes: Recipe keys to judge.
        dataset: The training domain's dataset, when it is evaluated: a recipe counts when it beats the base
            encoder there. None (the training pairs' dataset is not evaluated): a recipe counts when it beats
            the base encoder significantly on at least half of the datasets where both are scored.
        min_recipes: Recipes that must count (at most the number of recipes).
        base: The untrained base encoder's system key.

    Returns:
        One line per problem; each recipe's outcome is in `beats_base_outcomes`.
    """
    st = results.settings
    if base not in st.baselines:
        return [f"{base} is not a reference system of the significance tests ({', '.join(st.baselines)})"]
    outcomes = beats_base_outcomes(results, recipes, dataset=dataset, base=base)
    needed = min(min_recipes, len(recipes))
    winners = [r for r, (wins, judged) in outcomes.items() if judged and (wins if dataset else 2 * wins >= judged)]
    where = f"on {dataset}" if dataset else "on at least half of the datasets"
    if len(winners) >= needed:
        return []
    detail = ", ".join(f"{r}: {w}/{n}" for r, (w, n) in outcomes.items())
    return [
        f"{len(winners)} of {len(recipes)} recipes beat {base} {where} with {st.correction}-corrected p < {st.alpha} "
        f"(at least {needed} expected); significant wins per recipe: {detail or 'none scored'}"
    ]


def beats_base_outcomes(
    results: Results, recipes: Sequence[str], *, dataset: str | None, base: str = BASE_SYSTEM
) -> dict[str, tuple[int, int]]:
    """Per recipe: (datasets where it beats `base` significantly, datasets where both are scored), over
    `dataset` only when given."""
    tests = results.tests.filter((pl.col("baseline") == base) & pl.col("system").is_in(list(recipes)))
    if dataset is not None:
        tests = tests.filter(pl.col("dataset") == dataset)
    out = {}
    for recipe in recipes:
        mine = tests.filter(pl.col("system") == recipe)
        wins = mine.filter(pl.col("significant") & (pl.col("delta") > 0)).height
        out[recipe] = (wins, mine.height)
    return out
