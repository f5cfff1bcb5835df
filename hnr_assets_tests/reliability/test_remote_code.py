"""Model folders that ship Python code: refused by every loader unless the profile allows that model.

Each tiny model (generator, cross-encoder, base encoder) gets an `auto_map` entry pointing at a module
of its own folder that writes a marker file when imported. Loading it through hnr without the profile's
`trust_remote_code: true` is a clear error naming that key, and the module never runs (no marker). With
the flag, the same folder loads its own class (in a child process, with the transformers module cache
in a temporary folder, not in HOME).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hnr_assets.lib.generation.generator_models import build_tiny_causal_lm
from hnr_assets.lib.mining.cross_encoder import build_tiny_cross_encoder, load_cross_encoder
from hnr_assets.lib.retrieval.dense import EncodeOptions, load_encoder
from hnr_assets.lib.runtime.errors import ConfigError
from hnr_assets.lib.runtime.remote_code import own_code
from hnr_assets.lib.training.encoder_models import build_tiny_bert, load_sentence_encoder
from hnr_assets.lib.training.encoder_training import train_encoder
from hnr_assets.profiles import load_profile
from hnr_assets.resources.generators import TransformersBackend
from hnr_assets.settings import BUILTIN_PROFILES_DIR
from hnr_assets_tests.reliability.harness import REPO


def _plant_code(folder: Path, auto_class: str, base: str, marker: Path) -> Path:
    """Add `marker_code.py` (writes `marker` on import) and an `auto_map` entry to the folder's config."""
    module = f"""
        import pathlib
        pathlib.Path({str(marker)!r}).write_text("the model's own code ran")
        from transformers import {base}


        class Marked{base}({base}):
            pass
    """
    (folder / "marker_code.py").write_text(textwrap.dedent(module), encoding="utf-8")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["auto_map"] = {auto_class: f"marker_code.Marked{base}"}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def _generator_spec(allowed: bool):
    spec = load_profile(BUILTIN_PROFILES_DIR / "test.yaml").generators[0]
    return spec.model_copy(update={"trust_remote_code": allowed})


def test_own_code_is_found(tmp_path: Path) -> None:
    folder = build_tiny_bert(tmp_path / "bert")
    assert own_code(folder) == []
    _plant_code(folder, "AutoModel", "BertModel", tmp_path / "marker")
    assert own_code(folder) == ["config.json auto_map: AutoModel -> marker_code.MarkedBertModel"]
    (folder / "modules.json").write_text(json.dumps([{"idx": 0, "type": "evil.Module", "path": ""}]))
    assert "modules.json module evil.Module" in own_code(folder)


def test_every_loader_refuses_a_folder_with_its_own_code(tmp_path: Path) -> None:
    marker = tmp_path / "marker"

    generator = tmp_path / "lm"
    build_tiny_causal_lm(generator)
    _plant_code(generator, "AutoModelForCausalLM", "LlamaForCausalLM", marker)
    spec = _generator_spec(False)
    with (
        pytest.raises(ConfigError, match=rf"`generators\[{spec.key}\]\.trust_remote_code: true`"),
        TransformersBackend().engine(spec, generator),
    ):
        pass

    cross = tmp_path / "ce"
    build_tiny_cross_encoder(cross)
    _plant_code(cross, "AutoModelForSequenceClassification", "BertForSequenceClassification", marker)
    with pytest.raises(ConfigError, match=r"`cross_encoder\.trust_remote_code: true`"):
        load_cross_encoder(cross)

    bert = _plant_code(build_tiny_bert(tmp_path / "bert"), "AutoModel", "BertModel", marker)
    setting = r"`training\.base_encoder\.trust_remote_code: true`"
    with pytest.raises(ConfigError, match=setting):
        load_sentence_encoder(bert, pooling="mean", max_seq_length=32)
    with pytest.raises(ConfigError, match=setting):
        load_encoder(bert, EncodeOptions(max_length=32, device="cpu"))
    with pytest.raises(ConfigError, match=setting):
        train_encoder(bert, None, None, None, per_row=1, work_dir=tmp_path, output_dir=tmp_path, save_max_seq_length=32)

    assert not marker.exists()  # no loader imported the planted module


CHILD = r"""
import sys
from pathlib import Path

from hnr_assets.resources.generators import TransformersBackend
from hnr_assets_tests.reliability.test_remote_code import _generator_spec

with TransformersBackend(device="cpu").engine(_generator_spec(True), Path(sys.argv[1])) as engine:
    print(type(engine.model).__name__)
"""


@pytest.mark.slow
def test_the_profile_flag_lets_that_model_run_its_code(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    generator = tmp_path / "lm"
    build_tiny_causal_lm(generator)
    _plant_code(generator, "AutoModelForCausalLM", "LlamaForCausalLM", marker)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path / "home"),
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
    }
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(generator)], env=env, capture_output=True, text=True, timeout=300
    )
    assert child.returncode == 0, child.stderr[-3000:]
    assert child.stdout.strip().splitlines()[-1] == "MarkedLlamaForCausalLM"
    assert marker.read_text() == "the model's own code ran"
    assert not (tmp_path / "home").exists() or not any((tmp_path / "home").rglob("*.py"))
