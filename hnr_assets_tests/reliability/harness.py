"""Real processes for the reliability tests: a profile, a seeded data root, children that are killed.

`rel_profile` writes the `test` profile with its generators replaced by one OpenAI-compatible generator
served by `FakeOpenAIServer` (valid negatives, so every downstream asset has real rows). `Child` runs
`dg.materialize` in a fresh Python process over a data root; a *pause point* installed in that process
stops it at a chosen moment (inside a write, after a step) and writes a marker file, so the parent
kills it with SIGKILL at a known place instead of after a guessed sleep.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import yaml

from hnr_assets.lib.runtime.io import frame_fingerprint
from hnr_assets.settings import BUILTIN_PROFILES_DIR, Settings

REPO = Path(__file__).resolve().parents[2]
# Valid but odd names: every stage must carry them (path components, partition keys, MLflow names).
PROFILE = "Audit_x-1"
DATASETS = ("v1.0+beta=2", "set_B-x.y")
GENERATOR = "g.1+x=y"
RECIPE = f"llm-{GENERATOR}+bm25"

# Pause points, installed in the child before anything runs. Each stops the process for good after
# writing `marker` (JSON: what it paused in), so that the parent can kill it there (except `barrier`).
#   write_parquet: the n-th `DataFrame.write_parquet` whose path contains `match` writes half of the
#                  file's bytes, then pauses (a write cut off by the kill);
#   np_save:       the same for `numpy.save`;
#   after:         pauses right after `module:attribute` returns (the attribute is replaced on its module);
#   barrier:       waits before `module:attribute` until `parties` processes are there, then all go on.
PAUSE_PRELUDE = r"""
import io, json, os, sys, time, importlib
from pathlib import Path

_spec = json.loads(os.environ.get("HNR_TEST_PAUSE") or "null")


def _pause(where):
    Path(_spec["marker"]).write_text(json.dumps({"where": str(where), "pid": os.getpid()}))
    time.sleep(3600)


def _owner_of(target):
    # `module:attr.sub` -> (the object holding the last attribute, its name)
    module_name, attr = target.split(":")
    obj, parts = importlib.import_module(module_name), attr.split(".")
    for part in parts[:-1]:
        obj = getattr(obj, part)
    return obj, parts[-1]


def _install(spec):
    kind = spec["kind"]
    if kind in ("write_parquet", "np_save"):
        if kind == "write_parquet":
            import polars as pl
            owner, name = pl.DataFrame, "write_parquet"
        else:
            import numpy as np
            owner, name = np, "save"
        original = getattr(owner, name)
        seen = [0]

        def cut(*args, **kwargs):
            target = args[1] if kind == "write_parquet" else args[0]
            if spec["match"] in str(target):
                seen[0] += 1
                if seen[0] == spec.get("nth", 1):
                    buffer = io.BytesIO()
                    if kind == "write_parquet":
                        original(args[0], buffer, *args[2:], **kwargs)
                    else:
                        original(buffer, *args[1:], **kwargs)
                    data = buffer.getvalue()
                    with open(target, "wb") as fh:
                        fh.write(data[: len(data) // 2])
                        fh.flush()
                        os.fsync(fh.fileno())
                    _pause(target)
            return original(*args, **kwargs)

        setattr(owner, name, cut)
    elif kind == "barrier":
        # Wait before `module:attribute` runs until `parties` processes have reached it: they then
        # go on at the same moment (a race provoked on purpose).
        obj, name = _owner_of(spec["target"])
        original = getattr(obj, name)
        folder = Path(spec["dir"])
        folder.mkdir(parents=True, exist_ok=True)

        def gathered(*args, **kwargs):
            (folder / str(os.getpid())).touch()
            deadline = time.monotonic() + 120
            while len(list(folder.iterdir())) < spec["parties"] and time.monotonic() < deadline:
                time.sleep(0.002)
            return original(*args, **kwargs)

        setattr(obj, name, gathered)
    elif kind == "after":
        obj, name = _owner_of(spec["target"])
        original = getattr(obj, name)

        def wrapped(*args, **kwargs):
            result = original(*args, **kwargs)
            _pause(spec["target"])
            return result

        setattr(obj, name, wrapped)
    elif kind != "none":
        raise SystemExit(f"unknown pause kind {kind!r}")


if _spec:
    _install(_spec)
"""

MATERIALIZE = r"""
import dagster as dg

from hnr_assets.definitions import build_defs

defs = build_defs()
instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
for asset, partition in json.loads(sys.argv[1]):
    result = dg.materialize(
        defs.assets, selection=[asset], partition_key=partition, resources=defs.resources, instance=instance,
        raise_on_error=False,
    )
    if not result.success:
        sys.exit(3)
"""


def rel_profile(folder: Path, endpoint: str, **changes: object) -> Path:
    """The `test` profile renamed `PROFILE`, over `DATASETS`, with one OpenAI-compatible generator `GENERATOR`
    served at `endpoint`; `changes` replace whole sections."""
    data = yaml.safe_load((BUILTIN_PROFILES_DIR / "test.yaml").read_text(encoding="utf-8"))
    data["name"] = PROFILE
    data["datasets"] = [{"name": name} for name in DATASETS]
    data["training_pairs"]["dataset"] = {"name": DATASETS[0]}
    data["generators"] = [
        {
            "key": GENERATOR,
            "model": "fake-model",
            "backend": "openai",
            "endpoint": endpoint,
            "prompt": "v1",
            "completions": 1,
            "max_attempts": 2,
            "pairs_per_shard": 6,
            "sampling": {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "max_tokens": 256},
            "seed": 0,
        }
    ]
    data.update(changes)
    path = Path(folder) / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def hostile_copy(source: Path, target: Path, tag: str) -> Path:
    """A BEIR folder whose ids look like paths and whose titles hold markup and an escape sequence.

    The relevance structure is `source`'s (each id mapped one to one), so the pipeline behaves the same.
    """
    doc = lambda d: f"../{tag}/{d} ü|[0]"  # noqa: E731
    query = lambda q: f"/abs/{q}?&"  # noqa: E731
    (target / "qrels").mkdir(parents=True)
    with (target / "corpus.jsonl").open("w", encoding="utf-8") as out:
        for line in (source / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
            obj = json.loads(line)
            obj["_id"] = doc(obj["_id"])
            obj["title"] = f"{obj['title']} <script>x()</script> {{{{7*7}}}} | a | \x1b[31m"
            out.write(json.dumps(obj) + "\n")
    with (target / "queries.jsonl").open("w", encoding="utf-8") as out:
        for line in (source / "queries.jsonl").read_text(encoding="utf-8").splitlines():
            obj = json.loads(line)
            obj["_id"] = query(obj["_id"])
            out.write(json.dumps(obj) + "\n")
    for split in ("train", "test"):
        rows = (source / "qrels" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
        lines = [rows[0]] + ["\t".join((query(q), doc(d), g)) for q, d, g in (r.split("\t") for r in rows[1:])]
        (target / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


def child_env(profile: Path, data_dir: Path, mirror: Path, **extra: str) -> dict[str, str]:
    """A clean environment for a child: the profile, the data root and the mirror, one thread."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "HNR_PROFILE": str(profile),
        "HNR_DATA_DIR": str(data_dir),
        "HNR_DATASETS_DIR": str(mirror),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.update(extra)
    return env


def settings_of(env: Mapping[str, str]) -> Settings:
    return Settings.from_env(env)


@dataclass
class Killed:
    """What a killed child left: where it paused, its stderr, and the data root's files at that moment."""

    where: str
    returncode: int
    stderr: str
    files: dict[str, str] = field(default_factory=dict)


ZYGOTE = r"""
import json, os, sys, traceback

os.environ.update(json.loads(sys.argv[1]))
import dagster, numpy, polars, torch, transformers, sentence_transformers  # the expensive imports, once
import hnr_assets.definitions, hnr_assets.lib.mining.cross_encoder, hnr_assets.lib.retrieval.dense, hnr_assets.lib.training.encoder_training

torch.set_num_threads(1)
protocol = os.fdopen(os.dup(1), "w")
for line in sys.stdin:
    job = json.loads(line)
    if job["cmd"] == "wait":
        _, status = os.waitpid(job["pid"], 0)
        protocol.write(json.dumps({"status": status}) + "\n")
        protocol.flush()
        continue
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            sys.stdin.close()
            log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.environ.clear()
            os.environ.update(job["env"])
            sys.argv = ["child", json.dumps(job["steps"])]
            exec(compile(job["code"], "<child>", "exec"), {"__name__": "__main__"})
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    protocol.write(json.dumps({"pid": pid}) + "\n")
    protocol.flush()
"""


class Zygote:
    """A Python process that imports torch, transformers, Dagster and hnr once, then forks a child per job.

    Each child is a real process running `dg.materialize` (it can be killed with SIGKILL like any other),
    without paying 10-20 s of imports on a loaded 2-core machine; it starts with the job's environment.
    """

    def __init__(self, env: Mapping[str, str], log: Path) -> None:
        self._stderr = Path(log).open("wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE, json.dumps(dict(env))],
            cwd=REPO,
            env={**os.environ, **env},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )

    def _ask(self, job: dict) -> dict:
        assert self.proc.poll() is None, f"the zygote died (rc={self.proc.returncode})"
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the zygote died (rc={self.proc.poll()})"
        return json.loads(line)

    def spawn(self, env: Mapping[str, str], steps: Iterable[tuple[str, str | None]], code: str, log: Path) -> int:
        """Fork a child that runs `code` with `steps` as argv[1]; returns its pid."""
        job = {"cmd": "spawn", "env": dict(env), "steps": list(steps), "code": code, "log": str(log)}
        return int(self._ask(job)["pid"])

    def wait(self, pid: int) -> int:
        """Wait for a child; returns its exit code, or -N when signal N ended it (as `Popen.returncode`)."""
        status = int(self._ask({"cmd": "wait", "pid": pid})["status"])
        return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._stderr.close()


def run_child(
    env: Mapping[str, str], steps: Iterable[tuple[str, str | None]], timeout: float = 240
) -> subprocess.CompletedProcess:
    """Materialize `steps` in a fresh process (no pause); fails the caller's test when it fails."""
    return subprocess.run(
        [sys.executable, "-c", PAUSE_PRELUDE + MATERIALIZE, json.dumps(list(steps))],
        cwd=REPO,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def kill_at(
    env: Mapping[str, str],
    steps: Iterable[tuple[str, str | None]],
    pause: dict,
    marker_dir: Path,
    timeout: float = 240,
    zygote: Zygote | None = None,
) -> Killed:
    """Run `steps` in a child, wait until it reaches `pause`, SIGKILL it there.

    Args:
        env: The child's environment.
        steps: (asset, partition) to materialize, in order.
        pause: The pause point (see `PAUSE_PRELUDE`).
        marker_dir: Where the marker file (and the child's log) go.
        timeout: Seconds to wait for the pause point.
        zygote: Fork the child from this pre-imported process instead of starting Python afresh.

    Raises:
        AssertionError: The child ended (or timed out) before reaching the pause point.
    """
    marker = Path(marker_dir) / f"pause-{time.monotonic_ns()}.json"
    spec = {**pause, "marker": str(marker)}
    if zygote is not None:
        return _kill_forked(zygote, env, steps, spec, marker, timeout)
    child = subprocess.Popen(
        [sys.executable, "-c", PAUSE_PRELUDE + MATERIALIZE, json.dumps(list(steps))],
        cwd=REPO,
        env={**env, "HNR_TEST_PAUSE": json.dumps(spec)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + timeout
    try:
        while not marker.exists():
            if child.poll() is not None or time.monotonic() > deadline:
                child.kill()
                _, err = child.communicate(timeout=60)
                raise AssertionError(
                    f"the child never reached {pause} (rc={child.returncode}):\n{err.decode()[-4000:]}"
                )
            time.sleep(0.02)
        time.sleep(0.05)  # the marker is written just before the pause; let the child enter its sleep
        os.kill(child.pid, signal.SIGKILL)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=60)
    where = json.loads(marker.read_text())["where"]
    return Killed(where=where, returncode=child.returncode, stderr=err.decode(errors="replace"))


def _kill_forked(zygote: Zygote, env, steps, spec: dict, marker: Path, timeout: float) -> Killed:
    log = marker.with_suffix(".log")
    pid = zygote.spawn({**env, "HNR_TEST_PAUSE": json.dumps(spec)}, steps, PAUSE_PRELUDE + MATERIALIZE, log)
    deadline = time.monotonic() + timeout
    while not marker.exists():
        state = _proc_state(pid)
        if state in (None, "Z") or time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            rc = zygote.wait(pid)
            raise AssertionError(f"the child never reached {spec} (rc={rc}):\n{log.read_text()[-4000:]}")
        time.sleep(0.02)
    time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    rc = zygote.wait(pid)
    where = json.loads(marker.read_text())["where"]
    return Killed(where=where, returncode=rc, stderr=log.read_text(errors="replace"))


def _proc_state(pid: int) -> str | None:
    """The state letter of a process (`R`, `S`, `Z`, ...), None when it does not exist."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


# ------------------------------------------------------------------------------------------ inspecting


def is_tmp(path: Path) -> bool:
    """A temporary sibling (or something inside one): `.name.tmp-*` (lib.runtime.io) or `.shard-*.tmp-*`."""
    return any(part.startswith(".") and ".tmp-" in part for part in path.parts)


def tmp_leftovers(root: Path) -> list[str]:
    """Temporary siblings under `root` (relative paths of the top-most temporary entries)."""
    found = []
    for path in sorted(Path(root).rglob("*")):
        rel = path.relative_to(root)
        if rel.name.startswith(".") and ".tmp-" in rel.name and not is_tmp(rel.parent):
            found.append(str(rel))
    return found


def visible_files(root: Path) -> dict[str, str]:
    """sha256 of every file a reader would open under `root` (temporary siblings excluded)."""
    out = {}
    for path in sorted(Path(root).rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not is_tmp(rel):
            out[str(rel)] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return out


def unreadable(root: Path) -> list[str]:
    """Visible Parquet/JSON files under `root` that do not parse: a partial file a reader would see."""
    bad = []
    for rel in visible_files(root):
        path = Path(root) / rel
        try:
            if path.suffix == ".parquet":
                pl.read_parquet(path)
            elif path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
        except Exception as exc:  # any failure to parse is what the test looks for
            bad.append(f"{rel}: {type(exc).__name__}: {exc}")
    return bad


def frames_fingerprint(folder: Path, names: Iterable[str]) -> dict[str, str]:
    """Content hash (`frame_fingerprint`) of each named Parquet file of a folder."""
    return {name: frame_fingerprint(pl.read_parquet(Path(folder) / name)) for name in names}


def files_fingerprint(folder: Path, names: Iterable[str]) -> dict[str, str]:
    """sha256 of each named file of a folder."""
    return {name: hashlib.sha256((Path(folder) / name).read_bytes()).hexdigest()[:16] for name in names}


def json_without(path: Path, *keys: str) -> dict:
    """A JSON object without the (volatile) keys given: timings, paths, run ids."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return {k: v for k, v in data.items() if k not in keys}


def copy_root(seed: Path, target: Path, drop: Iterable[str]) -> Path:
    """A copy of a seeded data root without `drop` (relative paths) and without its MLflow store."""
    shutil.copytree(seed, target, ignore=shutil.ignore_patterns("mlflow", "dagster"))
    for rel in drop:
        path = Path(target) / rel
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    return Path(target)


def duplicated(frame: pl.DataFrame, keys: list[str]) -> int:
    """Rows whose `keys` repeat another row's."""
    return int(frame.select(pl.struct(*keys).is_duplicated().sum()).item())
