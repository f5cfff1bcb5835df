"""Validation of the strings in a profile that name files, folders, models or URLs.

Names that become path components (datasets, generators, recipes, partitions) are checked by
`io.check_safe_name`. This module checks the rest before anything runs: model references
(`tiny-random`, `package:<distribution>[/<folder>]`, an absolute folder, or a model hub id, as
`lib.runtime.models.parse_model_reference` reads them), hub revisions and download URLs. A `..`
component, a relative path where an absolute one is meant, a hub id that is not `owner/name`, or a
control character is refused with the reason.
"""

from __future__ import annotations

import re
from pathlib import Path

from hnr_assets.lib.runtime.errors import ConfigError
from hnr_assets.lib.runtime.models import PACKAGE_PREFIX, parse_model_reference

_HUB_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
_HUB_ID = re.compile(rf"^(?:{_HUB_PART}/)?{_HUB_PART}$")
_DIST = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
_FOLDER_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,255}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _refuse(what: str, value: str, why: str) -> ConfigError:
    return ConfigError(f"invalid {what} {value!r}: {why}")


def check_model_reference(value: str, what: str, *, package_folder: bool = False) -> str:
    """Validate where a model comes from.

    Args:
        value: `tiny-random`, `package:<distribution>` (with `/<folder>` inside it when
            `package_folder`), an absolute folder (`/...` or `~/...`), or a hub id (`name` or `owner/name`).
        what: What the value is, for the message (e.g. "cross_encoder.model").
        package_folder: Whether a folder inside the package may follow the distribution name.

    Returns:
        The value, with a leading `~` expanded.

    Raises:
        ConfigError: Empty, control characters, `..`, a malformed package or hub id.
    """
    if not isinstance(value, str) or not value.strip():
        raise _refuse(what, value, "empty")
    if _CONTROL.search(value):
        raise _refuse(what, value, "control characters")
    kind = parse_model_reference(value).kind
    if kind == "tiny-random":
        return value
    if kind == "package":
        dist, _, inner = value.removeprefix(PACKAGE_PREFIX).partition("/")
        if not _DIST.match(dist):
            raise _refuse(what, value, "`package:` is followed by a distribution name (letters, digits, . _ -)")
        if inner and not package_folder:
            raise _refuse(what, value, "a folder inside the package is not accepted here: `package:<distribution>`")
        bad = [part for part in inner.split("/") if not _FOLDER_PART.match(part)] if inner else []
        if bad:
            raise _refuse(what, value, f"folder components must be plain names inside the package, not {bad}")
        return value
    if kind == "path":
        if value.startswith("~") and value != "~" and not value.startswith("~/"):
            raise _refuse(what, value, "`~user` is not expanded; give an absolute folder or `~/...`")
        path = Path(value).expanduser()
        if not path.is_absolute():
            raise _refuse(what, value, "`~` does not expand to an absolute folder")
        if ".." in path.parts:
            raise _refuse(what, value, "`..` is not allowed in a model folder; give the folder itself")
        return str(path)
    if ".." in value or not _HUB_ID.match(value):
        raise _refuse(
            what,
            value,
            "not a model hub id (`name` or `owner/name`, letters, digits, . _ -), an absolute folder, "
            "`package:<distribution>` or `tiny-random`",
        )
    return value


def check_revision(value: str | None, what: str) -> str | None:
    """A hub revision (branch, tag or commit): letters, digits, `. _ - /`, no `..`."""
    if value is None:
        return None
    if not _REVISION.match(value) or ".." in value or "//" in value or value.endswith("/"):
        raise _refuse(what, value, "a revision is a branch, tag or commit (letters, digits, . _ - /, no '..')")
    return value


def check_url(value: str | None, what: str) -> str | None:
    """An http(s) URL without whitespace or control characters."""
    if value is None:
        return None
    if not re.match(r"^https?://[^\s/?#]+", value) or _CONTROL.search(value) or re.search(r"\s", value):
        raise _refuse(what, value, "an http:// or https:// URL without spaces")
    return value
