"""loopdeck.gpt.download against a local HTTP server on 127.0.0.1: resume with Range, corrupt files rejected, shard manifests."""

from __future__ import annotations

import hashlib
import io
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loopdeck.gpt.download import DownloadError, RemoteCorpus, download_file, download_shards
from loopdeck.gpt.harness import SHARD_MANIFEST, load_corpus

FAST = {"backoff": 0.0, "timeout": 5.0, "log": lambda message: None}


def parquet_bytes(rows: int, tag: str) -> bytes:
    buffer = io.BytesIO()
    texts = [f"{tag} document {i}: " + "lorem ipsum dolor sit amet " * 20 for i in range(rows)]
    pq.write_table(pa.table({"text": texts}), buffer)
    return buffer.getvalue()


class ShardServer:
    """Serves `files` by path with HTTP Range support; can cut a response short once, or ignore Range."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_once: dict[str, int] = {}  # path -> bytes to send before dropping the connection, first GET only
        self.honour_range = True
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.bytes_sent = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                range_header = self.headers.get("Range")
                server.requests.append((self.path, range_header))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
                if match and server.honour_range:
                    start = int(match[1])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = server.cut_once.pop(self.path, None)
                if cut is not None:
                    body = body[:cut]  # the announced length never arrives: a dropped connection
                server.bytes_sent += len(body)  # counted first: the client may finish before write() returns
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def server() -> Iterator[ShardServer]:
    shard_server = ShardServer()
    yield shard_server
    shard_server.close()


def test_interrupted_transfer_resumes_with_a_range_request(server, tmp_path):
    data = parquet_bytes(300, "resume")
    server.files["/shard.parquet"] = data
    server.cut_once["/shard.parquet"] = len(data) // 3
    dest = tmp_path / "shard.parquet"

    assert download_file(f"{server.url}/shard.parquet", dest, chunk_size=4096, **FAST) == dest
    assert dest.read_bytes() == data
    assert not (tmp_path / "shard.parquet.part").exists()
    assert server.requests == [("/shard.parquet", None), ("/shard.parquet", f"bytes={len(data) // 3}-")]
    assert server.bytes_sent == len(data)  # the second request fetched only the missing part


def test_a_complete_part_file_is_verified_and_renamed(server, tmp_path):
    data = parquet_bytes(20, "whole")
    server.files["/shard.parquet"] = data
    (tmp_path / "shard.parquet.part").write_bytes(data)  # e.g. killed between the last byte and the rename
    dest = download_file(f"{server.url}/shard.parquet", tmp_path / "shard.parquet", **FAST)
    assert dest.read_bytes() == data
    assert server.requests == [("/shard.parquet", f"bytes={len(data)}-")]  # answered 416: nothing left


def test_a_server_that_ignores_range_restarts_the_file(server, tmp_path):
    data = parquet_bytes(200, "norange")
    server.files["/shard.parquet"] = data
    server.cut_once["/shard.parquet"] = 1000
    server.honour_range = False
    dest = download_file(f"{server.url}/shard.parquet", tmp_path / "shard.parquet", chunk_size=512, **FAST)
    assert dest.read_bytes() == data


def test_a_corrupt_file_is_rejected_and_removed(server, tmp_path):
    data = parquet_bytes(50, "corrupt")
    server.files["/shard.parquet"] = data[:-12] + b"\0" * 12  # footer destroyed, length unchanged
    dest = tmp_path / "shard.parquet"
    with pytest.raises(DownloadError, match="not a readable parquet file"):
        download_file(f"{server.url}/shard.parquet", dest, attempts=2, **FAST)
    assert list(tmp_path.iterdir()) == []
    assert server.requests == [("/shard.parquet", None)] * 2  # each attempt started over


def test_a_sha256_mismatch_is_rejected(server, tmp_path):
    data = parquet_bytes(20, "digest")
    server.files["/shard.parquet"] = data
    with pytest.raises(DownloadError, match="sha256"):
        download_file(f"{server.url}/shard.parquet", tmp_path / "shard.parquet", sha256="0" * 64, attempts=1, **FAST)
    assert list(tmp_path.iterdir()) == []
    good = download_file(f"{server.url}/shard.parquet", tmp_path / "shard.parquet",
                         sha256=hashlib.sha256(data).hexdigest(), **FAST)
    assert good.read_bytes() == data


def test_existing_files_are_kept_when_valid_and_replaced_when_corrupt(server, tmp_path):
    data = parquet_bytes(20, "existing")
    server.files["/shard.parquet"] = data
    dest = tmp_path / "shard.parquet"
    dest.write_bytes(data)
    download_file(f"{server.url}/shard.parquet", dest, **FAST)
    assert server.requests == []
    dest.write_bytes(b"garbage")
    download_file(f"{server.url}/shard.parquet", dest, **FAST)
    assert dest.read_bytes() == data and len(server.requests) == 1


def test_missing_file_fails_at_once(server, tmp_path):
    with pytest.raises(DownloadError, match="404"):
        download_file(f"{server.url}/absent.parquet", tmp_path / "absent.parquet", attempts=5, **FAST)
    assert len(server.requests) == 1  # a 404 is not retried


def test_download_shards_pins_the_validation_shard(server, tmp_path):
    remote = RemoteCorpus("local", f"{server.url}/data", num_shards=10, val_shard=9)
    for index in (0, 1, 9):
        server.files[f"/data/shard_{index:05d}.parquet"] = parquet_bytes(30, f"shard{index}")
    server.cut_once["/data/shard_00001.parquet"] = 500

    dest = download_shards(remote, num_train=2, dest=tmp_path / "shards", workers=2, chunk_size=256, **FAST)
    assert sorted(path.name for path in dest.iterdir()) == [
        SHARD_MANIFEST, "shard_00000.parquet", "shard_00001.parquet", "shard_00009.parquet"]
    corpus = load_corpus(str(dest))
    assert all(text.startswith("shard9 ") for text in corpus.texts("val") + corpus.texts("holdout"))
    assert {text.split()[0] for text in corpus.texts("train")} == {"shard0", "shard1"}
