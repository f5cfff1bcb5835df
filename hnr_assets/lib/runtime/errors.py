"""The project's own errors: every failure a user can cause is one of these, with a message that
names the file, line, key or partition at fault and what is wrong with it."""

from __future__ import annotations

from pathlib import Path


class HnrError(Exception):
    """Base class of every error hnr raises on purpose."""


class ConfigError(HnrError):
    """A setting, profile or name is invalid."""


class DataValidationError(HnrError):
    """An input file breaks its contract.

    Args:
        path: The file at fault.
        problem: What is wrong, in words.
        line: The 1-based line number, when the problem is on one line.
    """

    def __init__(self, path: str | Path, problem: str, line: int | None = None) -> None:
        self.path = Path(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        super().__init__(f"{where}: {problem}")


class DownloadError(HnrError):
    """A download failed or its checksum does not match."""


class SourceNotFoundError(HnrError):
    """A dataset or model cannot be found in any configured source."""


class MissingInputError(HnrError):
    """A file an asset reads is not there; the message names the asset (and partition) to materialize.

    Args:
        path: The missing file or folder.
        message: What is missing and what to materialize.
    """

    def __init__(self, path: str | Path, message: str) -> None:
        self.path = Path(path)
        super().__init__(message)
