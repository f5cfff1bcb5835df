"""Retrieval metrics with pytrec_eval (trec_eval's own code), in BEIR's conventions.

Runs are BEIR's `{qid: {doc_id: score}}`, qrels `{qid: {doc_id: grade}}`. As in BEIR's
`EvaluateRetrieval.evaluate(ignore_identical_ids=True)`, a hit whose doc id equals its query id is
dropped before scoring (it matters for ArguAna and Quora, where queries are also documents). Means are
taken over every judged query; a query the run has no hit for counts as 0 (trec_eval `-c`).

References:
    Thakur et al., BEIR: A Heterogeneous Benchmark for Zero-shot Evaluation of Information Retrieval
    Models, NeurIPS 2021 Datasets and Benchmarks (beir `retrieval/evaluation.py`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import pytrec_eval

from hnr_assets.lib.runtime.errors import ConfigError

DEFAULT_METRICS = ("ndcg@10", "recall@100", "mrr@10", "map@100")

# metric name -> (pytrec_eval measure, output key prefix)
_TREC = {"ndcg": ("ndcg_cut", "ndcg_cut_"), "recall": ("recall", "recall_"), "map": ("map_cut", "map_cut_")}
_METRIC = re.compile(r"^(ndcg|recall|map|mrr)@(\d+)$")

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]


def _parse(metric: str) -> tuple[str, int]:
    m = _METRIC.match(metric)
    if not m:
        raise ConfigError(f"unknown metric {metric!r}: use ndcg@k, recall@k, map@k or mrr@k")
    return m.group(1), int(m.group(2))


def drop_identical_ids(run: Run) -> dict[str, dict[str, float]]:
    """A copy of `run` without hits whose doc id equals the query id."""
    return {qid: {d: s for d, s in hits.items() if d != qid} for qid, hits in run.items()}


def top_k(hits: Mapping[str, float], k: int) -> dict[str, float]:
    """The k best hits in trec_eval's order: score descending, ties by doc id descending."""
    ranked = sorted(hits.items(), key=lambda item: (item[1], item[0]), reverse=True)
    return dict(ranked[:k])


def evaluate_run(
    qrels: Qrels,
    run: Run,
    metrics: Iterable[str] = DEFAULT_METRICS,
    *,
    ignore_identical_ids: bool = True,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Score a run against qrels.

    Args:
        qrels: Judgements; only these queries are scored.
        run: Retrieved documents with scores (higher is better).
        metrics: Names like `ndcg@10`, `recall@100`, `map@100`, `mrr@10`.
        ignore_identical_ids: Drop hits whose doc id equals the query id (BEIR's rule).

    Returns:
        The mean of each metric over all judged queries, and the per-query values
        `{qid: {metric: value}}`.
    """
    metrics = list(metrics)
    parsed = {m: _parse(m) for m in metrics}
    run = drop_identical_ids(run) if ignore_identical_ids else {q: dict(h) for q, h in run.items()}
    qrels = {q: dict(j) for q, j in qrels.items()}
    per_query: dict[str, dict[str, float]] = {qid: dict.fromkeys(metrics, 0.0) for qid in qrels}

    trec_measures = {f"{_TREC[name][0]}.{k}" for name, k in parsed.values() if name in _TREC}
    if trec_measures:
        scored = pytrec_eval.RelevanceEvaluator(qrels, trec_measures).evaluate(run)
        for qid, values in scored.items():
            for metric, (name, k) in parsed.items():
                if name in _TREC:
                    per_query[qid][metric] = float(values[f"{_TREC[name][1]}{k}"])

    for metric, (name, k) in parsed.items():
        if name != "mrr":
            continue
        truncated = {qid: top_k(hits, k) for qid, hits in run.items()}
        scored = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(truncated)
        for qid, values in scored.items():
            per_query[qid][metric] = float(values["recip_rank"])

    n = len(per_query)
    means = {m: (sum(v[m] for v in per_query.values()) / n if n else 0.0) for m in metrics}
    return means, per_query
