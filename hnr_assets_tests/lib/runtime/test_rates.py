"""The rate-probe record: its ratio, its flat keys, the refusal of made-up numbers, the table."""

from __future__ import annotations

import math
import time

import pytest

from hnr_assets.lib.runtime.rates import (
    RateProbe,
    per_second,
    probe_metadata,
    probe_table,
    read_probes,
    split_for_mlflow,
    timed,
)


def _probe(**changes) -> RateProbe:
    values = {
        "stage": "encoding",
        "unit": "passages/s",
        "hnr_name": "hnr encode (bf16)",
        "hnr_rate": 40.0,
        "baseline_name": "sentence-transformers encode (fp32)",
        "baseline_rate": 16.0,
        "sample": 64,
    }
    return RateProbe(**{**values, **changes})


def test_ratio_and_flat_keys() -> None:
    probe = _probe()
    assert probe.ratio == 2.5
    assert probe_metadata(probe) == {
        "rate/encoding/unit": "passages/s",
        "rate/encoding/hnr_name": "hnr encode (bf16)",
        "rate/encoding/baseline_name": "sentence-transformers encode (fp32)",
        "rate/encoding/sample": 64,
        "rate/encoding/hnr": 40.0,
        "rate/encoding/baseline": 16.0,
        "rate/encoding/ratio": 2.5,
    }
    metrics, params = split_for_mlflow(probe_metadata(probe))
    assert metrics == {"rate/encoding/hnr": 40.0, "rate/encoding/baseline": 16.0, "rate/encoding/ratio": 2.5}
    assert params["rate/encoding/sample"] == "64" and params["rate/encoding/unit"] == "passages/s"


def test_a_baseline_that_cannot_run_records_why_and_no_number() -> None:
    probe = _probe(baseline_rate=None, skipped="beir is not importable")
    flat = probe_metadata(probe)
    assert probe.ratio is None
    assert "rate/encoding/baseline" not in flat and "rate/encoding/ratio" not in flat
    assert flat["rate/encoding/skipped"] == "beir is not importable"
    with pytest.raises(ValueError, match="needs its reason"):
        _probe(baseline_rate=None)
    with pytest.raises(ValueError, match="not a finite rate"):
        _probe(hnr_rate=math.inf)
    with pytest.raises(ValueError, match="not a finite rate"):
        _probe(baseline_rate=-1.0)
    assert _probe(baseline_rate=0.0).ratio is None  # measured, and nothing came out: no ratio


def test_timing_helpers() -> None:
    out, seconds = timed(lambda: time.sleep(0.01) or "done")
    assert out == "done" and seconds >= 0.01
    assert per_second(10, 2.0) == 5.0 and per_second(10, 0.0) is None


def test_read_back_and_the_table() -> None:
    class Value:  # a Dagster metadata value
        def __init__(self, value):
            self.value = value

    stored = {**{k: Value(v) for k, v in probe_metadata(_probe()).items()}, "seconds": 3.0}
    stored.update(probe_metadata(_probe(stage="search", unit="queries/s", baseline_rate=None, skipped="no beir")))
    found = read_probes(stored)
    assert set(found) == {"encoding", "search"}
    assert found["encoding"]["ratio"] == 2.5 and found["search"]["skipped"] == "no beir"
    table = probe_table(
        [("scores encoding", "scifact|bm25", found["encoding"]), ("scores search", None, found["search"])]
    )
    lines = table.splitlines()
    assert lines[0] == "| stage | partition | hnr rate | baseline | baseline rate | ratio |"
    assert lines[2] == (
        "| scores encoding | scifact\\|bm25 | 40.00 passages/s | sentence-transformers encode (fp32) | 16.00 | 2.50x |"
    )
    assert lines[3].endswith("| - | no beir |") and "| - |" in lines[3]
