"""Fine-tuning a dense retriever on a training set (sentence-transformers trainer), validated by retrieval.

The recipe follows the study: MultipleNegativesRankingLoss over (query, positive, n hard negatives) rows
with the other rows of the batch as in-batch negatives, a batch sampler that never puts the same text
twice in a batch (a query of a combined recipe appears once per source), evaluation on held-out queries
every `eval_steps` steps, early stopping after `early_stopping_patience` evaluations without improvement,
and the best checkpoint kept.

Validation ranks passages, not a loss: each validation query's positives are ranked among a fixed
sample of the training corpus, scored with nDCG@10 by `lib.evaluation.metrics.evaluate_run` (pytrec_eval, the
code the final BEIR evaluation uses). The loss on the recipe's own validation rows would depend on the
recipe's negatives (LLM-written ones can be easy to separate, so that loss keeps falling while
retrieval gets worse) and could not be compared across recipes or with the base encoder; the
retrieval score can, and it is what early stopping should protect.

References:
    Henderson et al., Efficient Natural Language Response Suggestion for Smart Reply, arXiv 1705.00652
    (2017) (sentence-transformers `losses/MultipleNegativesRankingLoss.py`); Aarush Sinha, Don't
    Retrieve, Generate, arXiv 2504.21015 (2025).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from hnr_assets.lib.data.pairs import passage_expr
from hnr_assets.lib.evaluation.metrics import evaluate_run
from hnr_assets.lib.runtime.errors import ConfigError
from hnr_assets.lib.runtime.precision import autocast, resolve_device, resolve_precision
from hnr_assets.lib.runtime.progress import Progress
from hnr_assets.lib.runtime.remote_code import trust_remote_code as check_remote_code

if TYPE_CHECKING:
    from hnr_assets.lib.runtime.rates import RateProbe

VALIDATION = "validation"
METRICS = ("ndcg@10", "recall@100", "mrr@10")
PRIMARY = "ndcg@10"
PRIMARY_KEY = f"{VALIDATION}_{PRIMARY}"  # the evaluator's primary metric, as the trainer reports it
TOP_K = 100

MetricsSink = Callable[[int, Mapping[str, float]], None]


@dataclass(frozen=True)
class TrainerOptions:
    """How one encoder is fine-tuned; the defaults are the study's (the profile's `training.trainer`).

    Attributes:
        batch_size: Rows per batch; the other rows are in-batch negatives.
        learning_rate: Peak learning rate (AdamW, linear decay).
        warmup_ratio: Share of the steps spent warming up.
        weight_decay: AdamW weight decay.
        epochs: Passes over the training rows (unless `max_steps`).
        max_steps: Stop after this many steps (overrides `epochs`).
        eval_steps: Evaluate on the validation queries every this many steps.
        early_stopping_patience: Stop after this many evaluations without improvement.
        max_seq_length: Max tokens per text while training and validating.
        scale: MultipleNegativesRankingLoss scale (1 / temperature).
        precision: `auto`, `fp32`, `bf16` or `fp16` (see `resolve_precision`).
        seed: Seed of initialisation, batch order and dropout.
        logging_steps: Log loss and learning rate every this many steps.
        validation_queries: Evaluate on a seeded sample of at most this many validation queries.
        validation_corpus_size: Rank the validation positives among a seeded sample of this many
            training-corpus documents (None: the whole training corpus).
        eval_batch_size: Texts per batch when encoding for validation.
    """

    batch_size: int = 16
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    epochs: float = 1.0
    max_steps: int | None = None
    eval_steps: int = 1000
    early_stopping_patience: int = 3
    max_seq_length: int = 256
    scale: float = 20.0
    precision: str = "auto"
    seed: int = 0
    logging_steps: int = 10
    validation_queries: int | None = None
    validation_corpus_size: int | None = None
    eval_batch_size: int = 64


# ------------------------------------------------------------------------------------------ validation


@dataclass
class ValidationData:
    """Validation queries, the corpus their positives are ranked in, and the judgements (BEIR shapes)."""

    queries: dict[str, str]
    corpus: dict[str, str]
    qrels: dict[str, dict[str, int]]

    def describe(self) -> dict[str, int]:
        return {
            "validation_queries": len(self.queries),
            "validation_corpus": len(self.corpus),
            "validation_judgements": sum(len(j) for j in self.qrels.values()),
        }


def validation_data(
    queries: pl.DataFrame,
    qrels: pl.DataFrame,
    corpus: pl.DataFrame,
    validation_ids: list[str],
    *,
    max_queries: int | None,
    corpus_size: int | None,
    seed: int,
) -> ValidationData:
    """Build the retrieval task every evaluation runs (the same for every recipe of a profile).

    Args:
        queries: Training queries (`query_id`, `text`).
        qrels: Training judgements (`query_id`, `doc_id`, `grade`); grade > 0 is relevant.
        corpus: Training corpus (`doc_id`, `title`, `text`).
        validation_ids: The validation queries of the split.
        max_queries: Keep a seeded sample of at most this many of them.
        corpus_size: Documents to rank: every positive of the kept queries plus a seeded sample of the
            other non-empty documents, up to this many in all; None: the whole corpus.
        seed: Seed of both samples.

    Returns:
        Queries, corpus (passage = title + " " + text) and judgements of the kept queries.

    Raises:
        ConfigError: No validation query has a judged positive in the corpus.
    """
    ids = sorted(set(validation_ids))
    relevant = qrels.filter(pl.col("query_id").is_in(ids) & (pl.col("grade") > 0))
    passages = corpus.select("doc_id", passage_expr().alias("passage")).filter(pl.col("passage") != "")
    relevant = relevant.join(passages.select("doc_id"), on="doc_id", how="semi")
    judged = sorted(set(relevant["query_id"].to_list()))
    if not judged:
        raise ConfigError(f"none of the {len(ids)} validation queries has a judged positive in the training corpus")
    if max_queries is not None and len(judged) > max_queries:
        judged = sorted(pl.Series(judged).sample(n=max_queries, seed=seed).to_list())
    relevant = relevant.filter(pl.col("query_id").is_in(judged))
    positive_ids = set(relevant["doc_id"].to_list())
    if corpus_size is not None and passages.height > corpus_size:
        others = passages.filter(~pl.col("doc_id").is_in(sorted(positive_ids)))
        n_others = max(corpus_size - len(positive_ids), 0)
        sample = others.sample(n=min(n_others, others.height), seed=seed)
        passages = pl.concat([passages.filter(pl.col("doc_id").is_in(sorted(positive_ids))), sample])
    texts = dict(queries.filter(pl.col("query_id").is_in(judged)).select("query_id", "text").iter_rows())
    qrels_out: dict[str, dict[str, int]] = {}
    for qid, doc_id, grade in relevant.select("query_id", "doc_id", "grade").iter_rows():
        qrels_out.setdefault(qid, {})[doc_id] = int(grade)
    return ValidationData(
        queries={q: texts[q] for q in judged if q in texts},
        corpus=dict(passages.sort("doc_id").iter_rows()),
        qrels=qrels_out,
    )


def _base_evaluator():
    from sentence_transformers.base.evaluation.evaluator import BaseEvaluator

    return BaseEvaluator


def make_evaluator(data: ValidationData, *, batch_size: int, device: str, precision: str):
    """A sentence-transformers evaluator that ranks `data.corpus` for `data.queries` (see module doc)."""
    base_cls = _base_evaluator()

    class RetrievalEvaluator(base_cls):
        """nDCG@10 (primary), Recall@100 and MRR@10 of the validation queries, with pytrec_eval."""

        def __init__(self) -> None:
            super().__init__()
            self.name = VALIDATION
            self.primary_metric = PRIMARY
            self.query_ids = list(data.queries)
            self.doc_ids = list(data.corpus)

        def __call__(self, model, output_path=None, epoch: int = -1, steps: int = -1, *args, **kwargs):
            import torch

            with autocast(device, precision), torch.inference_mode():
                queries = model.encode(
                    [data.queries[q] for q in self.query_ids],
                    batch_size=batch_size,
                    convert_to_tensor=True,
                    normalize_embeddings=True,
                )
                docs = model.encode(
                    [data.corpus[d] for d in self.doc_ids],
                    batch_size=batch_size,
                    convert_to_tensor=True,
                    normalize_embeddings=True,
                )
                scores = (queries.float() @ docs.float().T).cpu()
            k = min(TOP_K, len(self.doc_ids))
            values, indices = torch.topk(scores, k=k, dim=1)
            run = {
                qid: {self.doc_ids[j]: float(s) for s, j in zip(values[i].tolist(), indices[i].tolist(), strict=True)}
                for i, qid in enumerate(self.query_ids)
            }
            means, _ = evaluate_run(data.qrels, run, METRICS, ignore_identical_ids=True)
            metrics = self.prefix_name_to_metrics(dict(means), self.name)
            self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
            return metrics

    return RetrievalEvaluator()


# ------------------------------------------------------------------------------------------ training


@dataclass
class TrainingOutcome:
    """What one fine-tuning run did.

    Attributes:
        base_score: Validation nDCG@10 of the base encoder (before any step).
        best_score: Best validation nDCG@10 during training (the kept checkpoint's).
        best_step: Step of the kept checkpoint.
        global_step: Steps trained before stopping.
        planned_steps: Steps the schedule allowed.
        stopped_early: Early stopping ended the run before `planned_steps`.
        evaluations: (step, validation nDCG@10) of every evaluation, the base one at step 0 first.
        train_seconds: Wall time of the training loop (evaluations and checkpoints included).
        train_cpu_seconds: CPU time of this process over the same span (all its threads).
        train_examples: Rows trained on (steps x batch size).
        precision: `fp32`, `bf16` or `fp16`.
        device: `cpu` or `cuda`.
        history: The trainer's log history (one dict per log event).
    """

    base_score: float
    best_score: float
    best_step: int
    global_step: int
    planned_steps: int
    stopped_early: bool
    evaluations: list[tuple[int, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    train_cpu_seconds: float = 0.0
    train_examples: int = 0
    precision: str = "fp32"
    device: str = "cpu"
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def examples_per_second(self) -> float:
        return self.train_examples / self.train_seconds if self.train_seconds > 0 else 0.0

    def final_metrics(self) -> dict[str, float]:
        """The outcome as MLflow metrics (`final.<name>`, unrounded), logged at the last step."""
        values = {
            "base_validation_score": self.base_score,
            "best_validation_score": self.best_score,
            "best_step": self.best_step,
            "steps": self.global_step,
            "train_seconds": self.train_seconds,
            "examples_per_second": self.examples_per_second,
        }
        return {f"final.{k}": float(v) for k, v in values.items()}

    def record(self) -> dict[str, Any]:
        """The outcome as `training.json` keeps it (times rounded); the asset's metadata reads it from here."""
        return {
            "best_step": self.best_step,
            "best_validation_score": self.best_score,
            "base_validation_score": self.base_score,
            "steps": self.global_step,
            "planned_steps": self.planned_steps,
            "stopped_early": self.stopped_early,
            "evaluations": self.evaluations,
            "train_seconds": round(self.train_seconds, 2),
            "train_cpu_seconds": round(self.train_cpu_seconds, 2),
            "examples_per_second": round(self.examples_per_second, 3),
            "precision": self.precision,
            "device": self.device,
        }


def metric_name(key: str) -> str:
    """A trainer log key as an MLflow metric name: `eval_validation_ndcg@10` -> `validation_ndcg_at_10`."""
    return key.removeprefix("eval_").replace("@", "_at_")


def planned_steps(n_rows: int, settings: TrainerOptions) -> int:
    """Optimizer steps the schedule allows: `max_steps`, else epochs x batches per epoch."""
    if n_rows < 1:
        raise ConfigError("no training rows")
    if settings.max_steps is not None:
        return settings.max_steps
    return max(1, math.ceil(settings.epochs * math.ceil(n_rows / settings.batch_size)))


def trainer_columns(per_row: int) -> list[str]:
    """Columns fed to the loss, in order: anchor, positive, negatives."""
    return ["query", "positive", *(f"negative_{i}" for i in range(1, per_row + 1))]


def build_trainer(
    model,
    train_rows: pl.DataFrame,
    evaluator,
    settings: TrainerOptions,
    *,
    per_row: int,
    work_dir: Path,
    precision: str,
    device: str,
    callbacks: list | None = None,
):
    """The sentence-transformers trainer with the study's settings (see the module doc).

    Args:
        model: The `SentenceTransformer` to fine-tune (its max_seq_length is the training one).
        train_rows: Training rows (`trainer_columns`).
        evaluator: Validation evaluator (`make_evaluator`).
        settings: Hyperparameters.
        per_row: Negatives per row.
        work_dir: Checkpoints go to `work_dir/checkpoints`.
        precision: `fp32`, `bf16` or `fp16` (mixed precision: autocast, fp32 weights).
        device: `cpu` or `cuda`.
        callbacks: Extra `transformers.TrainerCallback`s.

    Returns:
        A `SentenceTransformerTrainer`, not yet trained.
    """
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import EarlyStoppingCallback, PrinterCallback

    dataset = Dataset.from_polars(train_rows.select(trainer_columns(per_row)))
    total = planned_steps(dataset.num_rows, settings)
    eval_steps = min(settings.eval_steps, total)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(work_dir / "checkpoints"),
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        warmup_steps=settings.warmup_ratio,
        weight_decay=settings.weight_decay,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps or -1,
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=eval_steps,
        save_total_limit=1,
        save_only_model=True,
        load_best_model_at_end=True,
        metric_for_best_model=f"eval_{PRIMARY_KEY}",
        greater_is_better=True,
        logging_steps=settings.logging_steps,
        logging_first_step=True,
        seed=settings.seed,
        data_seed=settings.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        dataloader_num_workers=0,
        report_to="none",
        disable_tqdm=True,
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        loss=MultipleNegativesRankingLoss(model, scale=settings.scale),
        evaluator=evaluator,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=settings.early_stopping_patience), *(callbacks or [])],
    )
    trainer.remove_callback(PrinterCallback)  # logs go to `callbacks` (MLflow, progress), not to stdout
    return trainer


def _forwarding_callback(sink: MetricsSink):
    from transformers import TrainerCallback

    skip = {"epoch", "total_flos", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second"}

    class ForwardLogs(TrainerCallback):
        """Hands every logged number (loss, learning rate, grad norm, validation metrics) to `sink`."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            numbers = {
                metric_name(k): float(v)
                for k, v in (logs or {}).items()
                if k not in skip and not k.startswith("train_") and isinstance(v, int | float)
            }
            if numbers:
                sink(int(state.global_step), numbers)

    return ForwardLogs()


def _progress_callback(progress: Progress):
    from transformers import TrainerCallback

    class StepProgress(TrainerCallback):
        """Counts optimizer steps into `progress` (percentage, time per step, time left)."""

        def on_step_end(self, args, state, control, **kwargs):
            progress.update(1)

    return StepProgress()


def train_encoder(
    base_model_dir: Path,
    train_rows: pl.DataFrame,
    validation: ValidationData,
    settings: TrainerOptions,
    *,
    per_row: int,
    work_dir: Path,
    output_dir: Path,
    save_max_seq_length: int,
    on_metrics: MetricsSink | None = None,
    log: Callable[[str], None] | None = None,
    device: str | None = None,
    progress_every_seconds: float = 30.0,
    trust_remote_code: bool = False,
) -> TrainingOutcome:
    """Fine-tune the base encoder on `train_rows`; save the best checkpoint to `output_dir`.

    Args:
        base_model_dir: The base encoder (sentence-transformers folder).
        train_rows: Training rows of one recipe (`trainer_columns`).
        validation: The retrieval task of `make_evaluator`.
        settings: Hyperparameters.
        per_row: Negatives per row.
        work_dir: Scratch folder for checkpoints (the caller deletes it).
        output_dir: Where the best model is saved (a sentence-transformers folder).
        save_max_seq_length: max_seq_length written into the saved model (the inference length).
        on_metrics: Receives (step, metrics) for the base evaluation (step 0) and every log.
        log: Progress messages, including a `Progress` line (percentage of the planned steps, time per
            step, time left) at most every `progress_every_seconds`.
        device: `cpu` or `cuda`; picked when None.
        progress_every_seconds: Minimum time between two step-progress messages.
        trust_remote_code: Run Python code the base encoder ships (refused otherwise).

    Returns:
        The outcome (scores, steps, speed).
    """
    allowed = check_remote_code(base_model_dir, trust_remote_code, "training.base_encoder.trust_remote_code")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    device = device or resolve_device()
    precision = resolve_precision(settings.precision, device)
    say = log or (lambda _msg: None)
    sink = on_metrics or (lambda _step, _metrics: None)

    model = SentenceTransformer(str(base_model_dir), device=device, local_files_only=True, trust_remote_code=allowed)
    model.max_seq_length = settings.max_seq_length
    evaluator = make_evaluator(validation, batch_size=settings.eval_batch_size, device=device, precision=precision)
    started = time.perf_counter()
    base_score = float(evaluator(model)[PRIMARY_KEY])
    say(
        f"base encoder: validation {PRIMARY} {base_score:.4f} over {len(validation.queries)} queries and "
        f"{len(validation.corpus)} documents ({time.perf_counter() - started:.1f} s, {precision} on {device})"
    )
    sink(0, {metric_name(PRIMARY_KEY): base_score})

    evaluations: list[tuple[int, float]] = [(0, base_score)]

    def collect(step: int, metrics: Mapping[str, float]) -> None:
        key = metric_name(PRIMARY_KEY)
        if key in metrics:
            evaluations.append((step, metrics[key]))
            say(f"step {step}: validation {PRIMARY} {metrics[key]:.4f}")
        sink(step, metrics)

    total = planned_steps(train_rows.height, settings)
    progress = Progress("training", total, say, unit="steps", every_seconds=progress_every_seconds)
    trainer = build_trainer(
        model,
        train_rows,
        evaluator,
        settings,
        per_row=per_row,
        work_dir=work_dir,
        precision=precision,
        device=device,
        callbacks=[_forwarding_callback(collect), _progress_callback(progress)],
    )
    say(f"training {train_rows.height} rows for up to {total} steps (batch {settings.batch_size}, {precision})")
    started, started_cpu = time.perf_counter(), time.process_time()
    trainer.train()
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
    state = trainer.state
    trained = trainer.model
    trained.max_seq_length = save_max_seq_length
    trained.save(str(output_dir))
    trained_evals = [(s, v) for s, v in evaluations if s > 0]
    best_step, best_score = max(trained_evals, key=lambda e: (e[1], -e[0])) if trained_evals else (0, base_score)
    return TrainingOutcome(
        base_score=base_score,
        best_score=float(state.best_metric) if state.best_metric is not None else best_score,
        best_step=int(state.best_global_step or best_step),
        global_step=int(state.global_step),
        planned_steps=total,
        stopped_early=int(state.global_step) < total,
        evaluations=evaluations,
        train_seconds=seconds,
        train_cpu_seconds=cpu_seconds,
        train_examples=int(state.global_step) * settings.batch_size,
        precision=precision,
        device=device,
        history=[dict(entry) for entry in state.log_history],
    )


# ------------------------------------------------------------------------------------------ rate probe


def probe_training(
    base_model_dir: Path,
    train_rows: pl.DataFrame,
    per_row: int,
    settings: TrainerOptions,
    hnr_rate: float | None,
    hnr_name: str,
    work_dir: Path,
    steps: int = 2,
) -> RateProbe:
    """Examples/s of the `encoders` asset's training against a bare sentence-transformers fp32 fine-tune.

    The baseline is what a researcher would write by hand: `SentenceTransformer(base, device="cpu")`,
    `SentenceTransformerTrainer` with `MultipleNegativesRankingLoss` and default arguments (fp32, default
    sampler, no evaluation, no checkpoints), the asset's batch size, max sequence length and scale, for
    `steps` steps on the first training rows. hnr's rate is the asset's own (rows trained / seconds of
    `trainer.train()`, its validation passes included), so the ratio is conservative for hnr.

    Args:
        base_model_dir: The base encoder folder (the model both start from).
        train_rows: The recipe's training rows.
        per_row: Hard negatives per row.
        settings: The asset's trainer options.
        hnr_rate: The asset's examples/s (None when it did not train).
        hnr_name: hnr's training, in words (precision, device).
        work_dir: Scratch folder for the baseline's trainer.
        steps: Baseline steps.
    """
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from hnr_assets.lib.runtime.rates import RateProbe, per_second, timed

    rows = train_rows.head(settings.batch_size * steps).select(trainer_columns(per_row))
    name = "sentence-transformers trainer fp32, MNRL, default arguments"
    probe = {"stage": "training", "unit": "examples/s", "hnr_name": hnr_name, "baseline_name": name}
    if hnr_rate is None:
        return RateProbe(**probe, hnr_rate=None, baseline_rate=None, sample=0, skipped="the asset trained no step")
    model = SentenceTransformer(str(base_model_dir), device="cpu", local_files_only=True)
    model.max_seq_length = settings.max_seq_length
    args = SentenceTransformerTrainingArguments(
        output_dir=str(Path(work_dir) / "bare"),
        per_device_train_batch_size=settings.batch_size,
        max_steps=steps,
        save_strategy="no",
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        seed=settings.seed,
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_polars(rows),
        loss=MultipleNegativesRankingLoss(model, scale=settings.scale),
    )
    _, seconds = timed(trainer.train)
    done = trainer.state.global_step * settings.batch_size
    return RateProbe(
        **probe,
        hnr_rate=hnr_rate,
        baseline_rate=per_second(done, seconds),
        sample=rows.height,
        skipped="" if seconds > 0 else "the baseline measured no time",
    )
