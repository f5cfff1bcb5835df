"""The CTranslate2 engine on a tiny random Llama model converted in the test run: real conversion (cached
by content and quantization), real sampling, seeds, the resumable loop and its validator, the backend.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from hnr_assets.lib.generation.backends import GenerationRequest, Sampling
from hnr_assets.lib.generation.ctranslate2_engine import (
    CONVERTED_MANIFEST,
    CTranslate2Engine,
    WorkerPlan,
    converted_model,
    cut_at_stop,
    resolve_compute_type,
    stop_token_ids,
)
from hnr_assets.lib.generation.generator_models import build_tiny_causal_lm
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
from hnr_assets.lib.runtime.errors import ConfigError
from hnr_assets.profiles.schema import GeneratorSpec
from hnr_assets.resources.generators import CTranslate2Backend
from hnr_assets_tests.lib.generation.test_generation import make_pairs

SAMPLING = Sampling(temperature=1.0, top_p=0.95, top_k=20, max_tokens=12)
MESSAGES = ({"role": "system", "content": "You write data."}, {"role": "user", "content": "Query: vaccine dose"})


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny") / "model"
    build_tiny_causal_lm(folder, seed=0)
    return folder


@pytest.fixture(scope="module")
def converted(tiny_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    cache = tmp_path_factory.mktemp("ct2-cache")
    folder, _ = converted_model(tiny_lm, cache, "int8")
    return folder, cache


def _requests(seeds=(1, 2, 3), n=(3, 1, 2)) -> list[GenerationRequest]:
    return [
        GenerationRequest(f"r{i}", (*MESSAGES[:1], {"role": "user", "content": f"Query: topic {i} " * (i + 1)}), k, s)
        for i, (s, k) in enumerate(zip(seeds, n, strict=True))
    ]


def test_conversion_is_cached_by_content_and_quantization(tiny_lm: Path, converted, tmp_path: Path) -> None:
    folder, cache = converted
    manifest = json.loads((folder / CONVERTED_MANIFEST).read_text())
    assert (folder / "model.bin").is_file() and (folder / "tokenizer.json").is_file()
    assert (folder / "chat_template.jinja").is_file() or "chat_template" in (
        folder / "tokenizer_config.json"
    ).read_text()
    assert folder.parent == cache and folder.name == f"{manifest['source']['fingerprint']}-int8"
    assert manifest["quantization"] == "int8" and manifest["convert_seconds"] >= 0
    mtime = (folder / "model.bin").stat().st_mtime_ns
    again, manifest_again = converted_model(tiny_lm, cache, "int8")
    assert again == folder and manifest_again == manifest and (folder / "model.bin").stat().st_mtime_ns == mtime
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary folder left behind

    other, _ = converted_model(tiny_lm, cache, "float32")  # another quantization: another folder
    assert other != folder and other.name.endswith("-float32")
    changed = tmp_path / "changed"  # other content (another seed): another folder
    build_tiny_causal_lm(changed, seed=1)
    assert converted_model(changed, cache, "int8")[0] != folder
    with pytest.raises(ConfigError, match="quantization 'int4'"):
        converted_model(tiny_lm, cache, "int4")


def test_conversion_of_a_broken_folder_leaves_nothing(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    with pytest.raises(Exception):
        converted_model(broken, tmp_path / "cache", "int8")
    assert not [p for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")]


def test_generation_is_batched_seeded_and_in_request_order(converted) -> None:
    folder, _ = converted
    engine = CTranslate2Engine(folder, SAMPLING, {}, batch_size=4, threads=WorkerPlan(2, 1))
    requests = _requests()
    results = engine.generate(requests)
    assert [r.request_id for r in results] == ["r0", "r1", "r2"]
    assert [len(r.completions) for r in results] == [3, 1, 2]
    for result in results:
        assert result.prompt_tokens > 0
        for c in result.completions:
            assert 1 <= c.tokens <= SAMPLING.max_tokens and c.finish_reason in ("stop", "length")
            assert (c.finish_reason == "length") == (c.tokens == SAMPLING.max_tokens) or c.finish_reason == "stop"
    texts = [[c.text for c in r.completions] for r in results]
    # The same requests give the same completions, whatever ran before and in which order they come.
    assert [[c.text for c in r.completions] for r in engine.generate(requests)] == texts
    again = CTranslate2Engine(folder, SAMPLING, {}, batch_size=4, threads=WorkerPlan(2, 1)).generate(requests)
    assert [[c.text for c in r.completions] for r in again] == texts
    # Other seeds give other completions; the hypotheses of one prompt differ from each other.
    other = engine.generate(_requests(seeds=(11, 12, 13)))
    assert [[c.text for c in r.completions] for r in other] != texts
    assert len(set(texts[0])) > 1
    assert engine.stats.requests == 9 and engine.stats.completions == 18 and engine.stats.completion_tokens > 0


def test_single_thread_workers_leave_torch_its_threads(converted) -> None:
    # Creating a CTranslate2 generator with intra_threads=1 sets the caller's OpenMP threads to 1, and
    # torch follows: the demo trained and encoded on one core after generating (2026-12-02).
    import torch

    folder, _ = converted
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        CTranslate2Engine(folder, SAMPLING, {}, batch_size=4, threads=WorkerPlan(2, 1)).generate(_requests())
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_every_call_hands_its_freed_heap_back(converted, monkeypatch: pytest.MonkeyPatch) -> None:
    # glibc kept each call's freed worker buffers: llm_negatives grew to 7.8 GiB in `make demo` of
    # 2026-12-02. The heap is trimmed once per call, after the call's workers are released.
    import gc
    import types
    import weakref

    import ctranslate2

    import hnr_assets.lib.generation.ctranslate2_engine as module

    alive: weakref.WeakSet = weakref.WeakSet()

    class TrackedGenerator:
        def __init__(self, *args, **kwargs) -> None:
            self._generator = ctranslate2.Generator(*args, **kwargs)
            alive.add(self)

        def __getattr__(self, name: str):
            return getattr(self._generator, name)

    workers_at_trim: list[int] = []

    def trim() -> bool:
        gc.collect()
        workers_at_trim.append(len(alive))
        return True

    folder, _ = converted
    monkeypatch.setattr(module, "release_free_memory", trim)
    engine = CTranslate2Engine(folder, SAMPLING, {}, batch_size=4, threads=WorkerPlan(2, 1))
    engine._ct2 = types.SimpleNamespace(Generator=TrackedGenerator, set_random_seed=ctranslate2.set_random_seed)
    first = engine.generate(_requests())
    engine.generate(_requests(seeds=(4, 5, 6)))
    assert workers_at_trim == [0, 0]
    assert all(c.tokens > 0 for r in first for c in r.completions)


def test_greedy_and_stop_strings(converted) -> None:
    folder, _ = converted
    greedy = Sampling(temperature=0.0, max_tokens=8)
    one = CTranslate2Engine(folder, greedy, {}, batch_size=8, threads=WorkerPlan(1, 1)).generate(_requests())
    two = CTranslate2Engine(folder, greedy, {}, batch_size=2, threads=WorkerPlan(2, 1)).generate(_requests())
    assert [[c.text for c in r.completions] for r in one] == [[c.text for c in r.completions] for r in two]
    assert len({c.text for c in one[0].completions}) == 1  # greedy: every hypothesis is the same

    engine = CTranslate2Engine(folder, SAMPLING, {}, batch_size=4, stop=("e",))
    ids = stop_token_ids(engine.tokenizer, ["e"])
    assert ids and all("e" in engine.tokenizer.decode([i]) for i in ids) and set(ids) <= set(engine.end_ids)
    for result in engine.generate(_requests()):
        assert all("e" not in c.text for c in result.completions)
    assert cut_at_stop("one.\n\nNote: x", ["\n\n"]) == ("one.", True) and cut_at_stop("a b", ["\n"]) == ("a b", False)


def test_compute_type_per_cpu() -> None:
    both = {"int8", "int8_float32", "int8_bfloat16", "float32"}
    assert resolve_compute_type("auto", both, True) == "int8_bfloat16"
    assert resolve_compute_type("auto", both, False) == "int8_float32"
    assert resolve_compute_type("auto", {"int8", "int8_float32", "float32"}, True) == "int8_float32"
    assert resolve_compute_type("auto", {"float32"}, False) == "float32"
    assert resolve_compute_type("float32", both, False) == "float32"
    with pytest.raises(ConfigError, match="not supported by CTranslate2 on this CPU"):
        resolve_compute_type("bfloat16", {"int8", "float32"}, False)


def test_resumable_loop_with_the_validator_and_retries_for_the_missing(converted, tmp_path: Path) -> None:
    """Gibberish from the tiny model: rejected with reasons, retried with fewer completions, resumed."""
    folder, _ = converted
    engine = CTranslate2Engine(folder, Sampling(1.0, 1.0, 0, 24), {}, batch_size=8)
    plan = GenerationPlan(
        "llm-tiny", load_prompt("single-v1"), 6, 3, 0, ValidationRules(), pairs_per_shard=3, retry_factor=0.5
    )
    signature = plan.signature_settings("tiny", "ctranslate2", SAMPLING)
    assert signature["retry_factor"] == 0.5
    assert "retry_factor" not in GenerationPlan("x", plan.template, 6, 3, 0, ValidationRules(), 3).signature_settings(
        "tiny", "ctranslate2", SAMPLING
    )
    pairs = make_pairs(7)
    with ShardStore(tmp_path, signature, SHARD_TABLES) as store:
        first = generate_negatives(pairs.head(4), engine, plan, store)
        report = generate_negatives(pairs, engine, plan, store)
        outputs = collect_outputs(store, pairs)
    assert (first.pairs_generated, report.pairs_skipped, report.pairs_generated) == (4, 4, 3)  # resumed
    completions = outputs["completions"]
    # Attempt 0: 6 completions; a retry: ceil(0.5 x missing), so at most 3 for a pair with none.
    per_attempt = completions.group_by("query_id", "attempt").len()
    assert set(per_attempt.filter(pl.col("attempt") == 0)["len"]) == {6}
    assert set(per_attempt.filter(pl.col("attempt") > 0)["len"]) <= {1, 2, 3}
    summary = summarize(outputs)
    assert summary["pairs"] == 7 and summary["pairs_full"] == 0  # gibberish never fills a pair
    assert set(summary["rejection_reasons"]) <= {"no_passage", "empty", "too_short", "not_prose", "repetitive"}
    assert completions["tokens"].max() <= 24 and outputs["pairs"]["attempts"].to_list() == [3] * 7


def test_backend_prepares_once_and_describes_what_changes_the_output(tiny_lm: Path, tmp_path: Path) -> None:
    backend = CTranslate2Backend(cache_dir=str(tmp_path / "cache")).with_options({"workers": 1})
    prepared = backend.prepare(tiny_lm, log=lambda _m: None)["ctranslate2"]
    assert Path(prepared["path"]).parent == tmp_path / "cache" and prepared["quantization"] == "int8"
    described = backend.describe()
    assert described["backend"] == "ctranslate2" and described["workers"] == 1
    assert described["compute_type"] in {"int8_float32", "int8_bfloat16", "int8", "float32"}
    spec = GeneratorSpec(key="g", model="tiny-random", backend="ctranslate2", prompt="v1", sampling={"max_tokens": 5})
    with backend.engine(spec, tiny_lm, log=lambda _m: None) as engine:
        (result,) = engine.generate([GenerationRequest("a", MESSAGES, 2, 0)])
    assert len(result.completions) == 2 and all(c.tokens <= 5 for c in result.completions)
    with pytest.raises(ConfigError, match="needs model weights"), backend.engine(spec, None):
        pass
    with pytest.raises(ConfigError, match="not settings of CTranslate2Backend"):
        backend.with_options({"inter_threads": 2})
