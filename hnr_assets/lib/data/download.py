"""Resumable downloads with a published checksum, and safe zip extraction.

Users with internet fetch BEIR datasets (and MS MARCO through BEIR's copy) from the official mirror.
An interrupted download leaves `<file>.part`; the next call resumes it with an HTTP Range request.
"""

from __future__ import annotations

import hashlib
import logging
import time
import zipfile
from pathlib import Path

import requests

from hnr_assets.lib.runtime.errors import DownloadError
from hnr_assets.lib.runtime.io import atomic_dir

log = logging.getLogger(__name__)

BEIR_BASE_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets"

# md5 of each archive as published in the BEIR README (beir-cellar/beir, "Available Datasets").
BEIR_MD5 = {
    "msmarco": "444067daf65d982533ea17ebd59501e4",
    "trec-covid": "ce62140cb23feb9becf6270d0d1fe6d1",
    "nfcorpus": "a89dba18a62ef92f7d323ec890a0d38d",
    "nq": "d4d3d2e48787a744b6f6e691ff534307",
    "hotpotqa": "f412724f78b0d91183a0e86805e16114",
    "fiqa": "17918ed23cd04fb15047f73e6c3bd9d9",
    "arguana": "8ad3e3c2a5867cdced806d6503f29b99",
    "webis-touche2020": "46f650ba5a527fc69e0a6521c5a23563",
    "cqadupstack": "4e41456d7df8ee7760a7f866133bda78",
    "quora": "18fb154900ba42a600f84b839c173167",
    "dbpedia-entity": "c2a39eb420a3164af735795df012ac2c",
    "scidocs": "38121350fc3a4d2f48850f6aff52e4a9",
    "fever": "5a818580227bfb4b35bb6fa46d9b6c03",
    "climate-fever": "8b66f0a9126c521bae2bde127b4dc99d",
    "scifact": "5f7d1de60b170fc8027bb7898e2efca1",
}


def beir_url(name: str) -> str:
    return f"{BEIR_BASE_URL}/{name}.zip"


def file_md5(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()  # noqa: S324 - checksum published by BEIR, not a security boundary
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download(
    url: str,
    dest: Path,
    md5: str | None = None,
    *,
    timeout: float = 60.0,
    retries: int = 5,
    backoff: float = 2.0,
    chunk: int = 1 << 20,
) -> Path:
    """Download `url` to `dest`, resuming a previous partial download, and verify its md5.

    Args:
        url: HTTP(S) URL.
        dest: Final path; the partial file is `dest` + `.part`.
        md5: Expected hex md5 of the whole file, or None to skip the check.
        timeout: Seconds to wait for the server on each request.
        retries: Attempts before giving up; each resumes from what is already on disk.
        backoff: Base of the exponential wait between attempts, in seconds.
        chunk: Bytes per read.

    Returns:
        `dest`, complete and verified.

    Raises:
        DownloadError: The server keeps failing, or the checksum differs.
    """
    dest = Path(dest)
    if dest.is_file() and (md5 is None or file_md5(dest) == md5):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last_error: Exception | None = None
    for attempt in range(1, retries + 1):
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with requests.get(url, headers=headers, stream=True, timeout=timeout) as resp:
                if resp.status_code == 416:  # range beyond the end: the part file is complete
                    break
                resp.raise_for_status()
                mode = "ab" if have and resp.status_code == 206 else "wb"
                with part.open(mode) as fh:
                    for block in resp.iter_content(chunk_size=chunk):
                        fh.write(block)
            break
        except (requests.RequestException, OSError) as exc:
            last_error = exc
            log.warning("download of %s failed (attempt %d/%d): %s", url, attempt, retries, exc)
            if attempt < retries:
                time.sleep(backoff ** (attempt - 1))
    else:
        raise DownloadError(f"could not download {url} after {retries} attempts: {last_error}")

    if md5 is not None:
        got = file_md5(part)
        if got != md5:
            part.unlink(missing_ok=True)
            raise DownloadError(f"{url}: md5 {got} differs from the published {md5}; the partial file was removed")
    part.replace(dest)
    return dest


def extract_zip(archive: Path, target: Path) -> Path:
    """Extract a zip archive into `target` atomically, refusing members that escape it.

    A single top-level folder in the archive (BEIR's `<name>/`) is unwrapped, so `target` itself
    becomes the dataset folder.
    """
    archive = Path(archive)
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{archive}: not a zip archive ({exc})") from None
    with zf, atomic_dir(target) as tmp:
        root = tmp.resolve()
        for member in zf.infolist():
            dest = (tmp / member.filename).resolve()
            if not dest.is_relative_to(root):
                raise DownloadError(f"{archive}: member {member.filename!r} would escape the target folder")
        zf.extractall(tmp)
        entries = [p for p in tmp.iterdir() if not p.name.startswith(("__MACOSX", "."))]
        if len(entries) == 1 and entries[0].is_dir():
            inner = entries[0].rename(tmp / ".unwrap")
            for child in inner.iterdir():
                child.rename(tmp / child.name)
            inner.rmdir()
    return target
