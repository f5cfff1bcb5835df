"""Resumable, checksummed downloads against a real HTTP server on 127.0.0.1, and safe extraction."""

from __future__ import annotations

import hashlib
import http.server
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hnr_assets.lib.data.download import download, extract_zip
from hnr_assets.lib.runtime.errors import DownloadError, SourceNotFoundError
from hnr_assets.lib.data.sources import resolve_dataset
from hnr_assets_tests.fixtures import make_tiny_dataset


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    payload: bytes = b""
    requests: list[str | None] = []  # noqa: RUF012 - per-test state, reset by the fixture
    fail_first: int = 0

    def do_GET(self) -> None:
        type(self).requests.append(self.headers.get("Range"))
        if type(self).fail_first > 0:
            type(self).fail_first -= 1
            self.send_response(500)
            self.end_headers()
            return
        data, status = self.payload, 200
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.end_headers()
                return
            data, status = data[start:], 206
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_RangeHandler]]]:
    handler = type("H", (_RangeHandler,), {"payload": b"x" * 10_000, "requests": [], "fail_first": 0})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/data.zip", handler
    httpd.shutdown()


def test_download_verifies_md5(server, tmp_path: Path) -> None:
    url, handler = server
    md5 = hashlib.md5(handler.payload).hexdigest()
    dest = download(url, tmp_path / "d.zip", md5)
    assert dest.read_bytes() == handler.payload
    assert not (tmp_path / "d.zip.part").exists()


def test_download_resumes_a_partial_file(server, tmp_path: Path) -> None:
    url, handler = server
    (tmp_path / "d.zip.part").write_bytes(handler.payload[:4000])
    download(url, tmp_path / "d.zip", hashlib.md5(handler.payload).hexdigest())
    assert handler.requests == ["bytes=4000-"]
    assert (tmp_path / "d.zip").read_bytes() == handler.payload


def test_download_retries_server_errors(server, tmp_path: Path) -> None:
    url, handler = server
    handler.fail_first = 2
    download(url, tmp_path / "d.zip", None, backoff=0.01)
    assert len(handler.requests) == 3


def test_bad_checksum_is_an_error_and_removes_the_part(server, tmp_path: Path) -> None:
    url, _ = server
    with pytest.raises(DownloadError, match="differs from the published 0000"):
        download(url, tmp_path / "d.zip", "0000")
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server_fails_after_retries(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="after 2 attempts"):
        download("http://127.0.0.1:9/none.zip", tmp_path / "d.zip", None, retries=2, backoff=0.01, timeout=2)


def test_extract_unwraps_the_top_folder(tmp_path: Path) -> None:
    make_tiny_dataset(tmp_path / "src" / "tiny")
    archive = tmp_path / "tiny.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in (tmp_path / "src").rglob("*"):
            zf.write(path, path.relative_to(tmp_path / "src"))
    extract_zip(archive, tmp_path / "out")
    assert (tmp_path / "out" / "corpus.jsonl").is_file()
    assert (tmp_path / "out" / "qrels" / "test.tsv").is_file()


def test_extract_refuses_zip_slip(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../../escaped.txt", "x")
    with pytest.raises(DownloadError, match="would escape the target folder"):
        extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_resolve_order_mirror_then_folder_then_download(server, tmp_path: Path) -> None:
    make_tiny_dataset(tmp_path / "mirror" / "tiny")
    make_tiny_dataset(tmp_path / "folder")
    found = resolve_dataset(
        "tiny", mirror=tmp_path / "mirror", folder=tmp_path / "folder", url=None, md5=None, cache_dir=tmp_path
    )
    assert found.kind == "mirror"
    found = resolve_dataset(
        "tiny", mirror=tmp_path / "empty", folder=tmp_path / "folder", url=None, md5=None, cache_dir=tmp_path
    )
    assert found.kind == "folder"
    with pytest.raises(
        SourceNotFoundError, match=r"dataset 'tiny' not found: tried mirror .* \(absent\); no download URL"
    ):
        resolve_dataset("tiny", mirror=tmp_path / "empty", folder=None, url=None, md5=None, cache_dir=tmp_path)


def test_resolve_downloads_and_extracts(server, tmp_path: Path) -> None:
    url, handler = server
    make_tiny_dataset(tmp_path / "src" / "tiny")
    archive = tmp_path / "tiny.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in (tmp_path / "src").rglob("*"):
            zf.write(path, path.relative_to(tmp_path / "src"))
    handler.payload = archive.read_bytes()
    found = resolve_dataset(
        "tiny",
        mirror=None,
        folder=None,
        url=url,
        md5=hashlib.md5(handler.payload).hexdigest(),
        cache_dir=tmp_path / "cache",
    )
    assert found.kind == "download"
    assert (found.folder / "corpus.jsonl").is_file()
    again = resolve_dataset("tiny", mirror=None, folder=None, url=url, md5=None, cache_dir=tmp_path / "cache")
    assert again.folder == found.folder
    assert len(handler.requests) == 1
