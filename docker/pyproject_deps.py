"""Print the project's runtime dependencies from pyproject.toml, one per line (used by the Dockerfiles).

Installing them before the source keeps the dependency layers cached when only the code changes.
`--exclude NAME ...` leaves out packages that an earlier layer installed with its own pins (the GPU image
takes torch and transformers from vLLM's pins).

Usage: python docker/pyproject_deps.py [--exclude NAME ...] [--extra NAME ...] > requirements.txt
"""

import argparse
import re
import sys
import tomllib
from pathlib import Path

NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    """PEP 503 normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(pyproject: Path, extras: list[str], exclude: list[str]) -> list[str]:
    """The dependency specifiers of `pyproject` (and of `extras`) whose names are not in `exclude`."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    specs = list(project["dependencies"])
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"{pyproject}: no optional dependency group {extra!r}")
        specs += optional[extra]
    skip = {canonical(n) for n in exclude}
    out = []
    for spec in specs:
        match = NAME.match(spec)
        if match is None:
            raise SystemExit(f"{pyproject}: cannot read the name of dependency {spec!r}")
        if canonical(match.group(1)) not in skip:
            out.append(spec)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    parser.add_argument("--extra", nargs="*", default=[], help="optional dependency groups to add")
    parser.add_argument("--exclude", nargs="*", default=[], help="package names to leave out")
    args = parser.parse_args(argv)
    sys.stdout.write("".join(f"{spec}\n" for spec in requirements(args.pyproject, args.extra, args.exclude)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
