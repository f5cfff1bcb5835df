"""The whole pipeline once, with hostile-but-valid inputs and secrets in the environment, under audit.

The session's `seeded` run (conftest) materializes every asset kind of a profile whose names are valid
but odd (`Audit_x-1`, datasets `v1.0+beta=2` and `set_B-x.y`, generator `g.1+x=y`, so recipes such as
`llm-g.1+x=y+bm25`) over datasets whose ids look like paths (`../t0/d0-1 ü|[0]`, `/abs/q0-1?&`) and
whose titles hold markup and an escape sequence. The generator is the `openai` backend against the
fake server, authenticated with `HNR_GENERATOR_API_KEY`; `OPENAI_API_KEY`, `HF_TOKEN` and
`HUGGING_FACE_HUB_TOKEN` are set too. The child runs under `strace -ff` on a persistent Dagster
instance (event log and captured logs on disk), with HOME and TMPDIR in a sandbox.

Then:
- every file the process (and its threads and children) created, wrote, renamed, linked or removed
  is under the data root or the run's temporary folder; nothing under HOME, nothing in the mirror;
- no token appears anywhere: files under the data root (Dagster event log and compute logs, MLflow
  store and artifacts, Parquet cells read back, JSON), the temporary folder, stdout and stderr;
- the fake server did receive the generator key (so the search would see a leak of a used secret).
"""

from __future__ import annotations

import codecs
import gzip
import json
import os
import re
import zipfile
from pathlib import Path

import polars as pl
import pytest

from hnr_assets_tests.reliability.conftest import Seeded
from hnr_assets_tests.reliability.harness import DATASETS, GENERATOR, RECIPE

# ------------------------------------------------------------------------------------------ strace


_LINE = re.compile(r"^(?P<call>\w+)\((?P<args>.*)\)\s+=\s+(?P<ret>-?\d+)(?:<(?P<retpath>[^>]*)>)?")
_PATH_ARG = re.compile(r'(?:(?:AT_FDCWD|\d+)<(?P<dir>[^>]*)>,\s*)?"(?P<path>(?:[^"\\]|\\.)*)"')


def _unescape(text: str) -> str:
    return codecs.escape_decode(text.encode("latin-1", "backslashreplace"))[0].decode("utf-8", "surrogateescape")


def written_paths(trace_dir: Path, cwd: Path) -> set[str]:
    """Absolute paths that succeeded in a modifying system call, from `strace -ff -y` files."""
    found: set[str] = set()
    for trace in trace_dir.iterdir():
        for line in trace.read_text(encoding="latin-1").splitlines():
            match = _LINE.match(line)
            if not match or int(match["ret"]) < 0:
                continue
            call, args = match["call"], match["args"]
            if call in ("open", "openat", "creat"):
                if call != "creat" and not re.search(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC", args):
                    continue
                if match["retpath"]:
                    found.add(_unescape(match["retpath"]))
                    continue
            paths = list(_PATH_ARG.finditer(args))
            if call in ("symlink", "symlinkat"):
                paths = paths[1:]  # the first argument is the link's content, not a path
            for arg in paths:
                path = _unescape(arg["path"])
                base = _unescape(arg["dir"]) if arg["dir"] else str(cwd)
                found.add(os.path.normpath(path if path.startswith("/") else os.path.join(base, path)))
    return found


# ------------------------------------------------------------------------------------------ secrets


def _texts_of(path: Path) -> list[bytes]:
    """The bytes to search in a file: its raw bytes, plus decoded content where the raw form hides it."""
    raw = path.read_bytes()
    out = [raw]
    if path.suffix == ".parquet":
        frame = pl.read_parquet(path)
        out.append("\n".join(map(repr, frame.iter_rows())).encode("utf-8", "surrogatepass"))
        out.append(repr(frame.columns).encode())
    elif path.suffix == ".gz":
        out.append(gzip.decompress(raw))
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            out.extend(zf.read(name) for name in zf.namelist())
    return out


def leaks(roots: list[Path], tokens: dict[str, str]) -> list[str]:
    found = []
    for root in roots:
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for path in files:
            for blob in _texts_of(path):
                for name, token in tokens.items():
                    if token.encode() in blob:
                        found.append(f"{name} in {path}")
    return sorted(set(found))


# ------------------------------------------------------------------------------------------ tests


@pytest.mark.slow
def test_nothing_is_written_outside_the_data_root(seeded: Seeded) -> None:
    data_dir, sandbox = str(seeded.data_dir), str(seeded.sandbox)
    written = written_paths(seeded.traces, seeded.cwd)
    assert any(p.startswith(data_dir + "/") for p in written)  # the trace did see the writes
    allowed = (data_dir + "/", sandbox + "/", "/dev/null", "/dev/shm/", "/dev/tty", "/dev/pts/")
    outside = sorted(p for p in written if not p.startswith(allowed) and p not in (data_dir, sandbox))
    assert outside == []
    assert sorted(p for p in written if p.startswith(str(seeded.sandbox / "home"))) == []  # no cache in HOME
    assert not any(p.startswith(str(seeded.mirror)) for p in written)  # the datasets are only read


@pytest.mark.slow
def test_hostile_names_and_ids_went_through_every_stage(seeded: Seeded) -> None:
    root = seeded.root
    assert sorted(p.name for p in (root / "datasets").iterdir()) == sorted(DATASETS)
    corpus = pl.read_parquet(root / "datasets" / DATASETS[0] / "corpus.parquet")
    assert corpus["doc_id"].str.starts_with("../t0/").all()
    negatives = pl.read_parquet(root / "llm_negatives" / GENERATOR / "negatives.parquet")
    assert negatives["query_id"].str.starts_with("/abs/").all() and negatives.height == 24 * 5
    training = json.loads((root / "encoders" / RECIPE / "training.json").read_text(encoding="utf-8"))
    assert training["recipe"] == RECIPE and training["model_version"] == "1"
    assert (root / "scores" / RECIPE / DATASETS[0] / "metrics.json").is_file()
    assert (root / "results" / "results.md").is_file()


@pytest.mark.slow
def test_no_token_appears_in_any_output(seeded: Seeded) -> None:
    tokens = seeded.tokens
    auth = [r["_headers"].get("Authorization") for r in seeded.requests]
    assert auth and set(auth) == {f"Bearer {tokens['HNR_GENERATOR_API_KEY']}"}  # the key was used
    dagster_files = list((seeded.data_dir / "dagster").rglob("*"))
    assert any(p.suffix == ".db" for p in dagster_files)  # the event log is searched
    assert any(p.name.endswith((".err", ".out")) for p in dagster_files)  # and the captured logs
    assert leaks([seeded.data_dir, seeded.sandbox, *seeded.outputs], tokens) == []
