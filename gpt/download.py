"""Download remote parquet text shards (autoresearch / nanochat layout) for use as `--data DIR`.

Each shard is fetched with retries and exponential backoff into `NAME.part`, resumed with an HTTP Range request
after a broken transfer, checked (parquet footer with a "text" column, and sha256 where known) and only then
renamed into place, so a directory never holds a torn or corrupt shard under its final name. The validation shard
is pinned: always fetched, and named in a manifest that the harness reads to use it as the validation split.

Never runs by default: `python -m loopdeck.gpt.download --corpus climbmix --num-shards 4`.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from loopdeck.gpt.harness import SHARD_MANIFEST, DataError, atomic_path, cache_dir, optional_import


@dataclass(frozen=True)
class RemoteCorpus:
    name: str
    base_url: str
    num_shards: int  # shards 0 … num_shards - 1 exist
    val_shard: int  # pinned validation shard
    filename: str = "shard_{index:05d}.parquet"
    sha256: Mapping[str, str] = field(default_factory=dict)  # known digests by file name, checked when present

    def shard_name(self, index: int) -> str:
        return self.filename.format(index=index)

    def url(self, index: int) -> str:
        return f"{self.base_url.rstrip('/')}/{self.shard_name(index)}"


CORPORA = {
    # autoresearch's corpus; its last shard is the pinned validation shard.
    "climbmix": RemoteCorpus("climbmix", "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main",
                             num_shards=6543, val_shard=6542),
    # nanochat's corpus, the same convention.
    "fineweb-edu": RemoteCorpus("fineweb-edu",
                                "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main",
                                num_shards=1823, val_shard=1822),
}


class DownloadError(DataError):
    """A shard could not be fetched, or what arrived is not the shard."""


class _CorruptFile(Exception):
    """The file arrived whole but fails its checks: fetching it again from the start is the only remedy."""


class _ShortTransfer(OSError):
    """The connection ended before the announced length: resume from what arrived."""


def verify_shard(path: Path, sha256: str | None = None) -> None:
    """Raise _CorruptFile unless `path` is a readable parquet file with a "text" column (and the given digest)."""
    pa = optional_import("pyarrow", "pyarrow", "checking a parquet shard")
    pq = optional_import("pyarrow.parquet", "pyarrow", "checking a parquet shard")
    if sha256:
        digest = hashlib.sha256()
        with path.open("rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != sha256.lower():
            raise _CorruptFile(f"sha256 {digest.hexdigest()} differs from the expected {sha256}")
    try:
        names = pq.read_schema(path).names
    except (OSError, pa.ArrowException) as exc:
        raise _CorruptFile(f"not a readable parquet file ({exc})") from None
    if "text" not in names:
        raise _CorruptFile(f'no "text" column (columns: {", ".join(names)})')


def _fetch_into(url: str, part: Path, timeout: float, chunk_size: int) -> None:
    """Append the rest of `url` to `part` (a Range request from its current size); _ShortTransfer if cut off."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "loopdeck", **({"Range": f"bytes={offset}-"} if offset else {})}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left past `offset`: the part is already whole
            return
        raise
    with response:
        if offset and response.status != 206:  # the server ignored the Range header: start over
            offset = 0
        length = response.headers.get("Content-Length")
        expected = offset + int(length) if length is not None else None
        with part.open("ab" if offset else "wb") as file:
            for block in iter(lambda: response.read(chunk_size), b""):
                file.write(block)
    received = part.stat().st_size
    if expected is not None and received < expected:
        raise _ShortTransfer(f"transfer cut off at {received} of {expected} bytes")


def _permanent(exc: Exception) -> bool:
    """HTTP errors that another attempt will not fix (404, 403, …); timeouts and rate limits are retried."""
    return isinstance(exc, urllib.error.HTTPError) and 400 <= exc.code < 500 and exc.code not in (408, 429)


def download_file(url: str, dest: Path, *, sha256: str | None = None, attempts: int = 5, backoff: float = 1.0,
                  timeout: float = 30.0, chunk_size: int = 1 << 20,
                  log: Callable[[str], None] = print) -> Path:
    """Fetch `url` to `dest` unless a valid copy is there; resumable, verified, renamed into place atomically."""
    if dest.exists():
        try:
            verify_shard(dest, sha256)
            return dest
        except _CorruptFile as exc:
            log(f"{dest.name}: existing copy rejected ({exc}); fetching it again")
            dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    problem: Exception | None = None
    for attempt in range(1, attempts + 1):
        try:
            _fetch_into(url, part, timeout, chunk_size)
            verify_shard(part, sha256)
            os.replace(part, dest)
            return dest
        except _CorruptFile as exc:
            part.unlink(missing_ok=True)
            problem = exc
        except (OSError, http.client.HTTPException) as exc:  # URLError and timeouts are OSErrors
            problem = exc
            if _permanent(exc):
                break
        if attempt < attempts:
            delay = backoff * 2 ** (attempt - 1)
            log(f"{dest.name}: attempt {attempt}/{attempts} failed ({problem}); retrying in {delay:g} s")
            time.sleep(delay)
    raise DownloadError(f"could not download {url}: {problem}")


def download_shards(corpus: RemoteCorpus, num_train: int, dest: Path | None = None, *, workers: int = 4,
                    **fetch_options) -> Path:
    """Fetch the first `num_train` training shards and the pinned validation shard into `dest`; write the manifest."""
    dest = dest or cache_dir() / "data" / corpus.name
    train = [index for index in range(min(num_train, corpus.num_shards)) if index != corpus.val_shard]
    indices = [*train, corpus.val_shard]

    def fetch(index: int) -> Path:
        name = corpus.shard_name(index)
        return download_file(corpus.url(index), dest / name, sha256=corpus.sha256.get(name), **fetch_options)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(fetch, indices))
    manifest = {"corpus": corpus.name, "base_url": corpus.base_url, "val": corpus.shard_name(corpus.val_shard),
                "train": [corpus.shard_name(index) for index in train]}
    with atomic_path(dest / SHARD_MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loopdeck.gpt.download", description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", choices=sorted(CORPORA), default="climbmix")
    parser.add_argument("--num-shards", type=int, default=4, help="training shards (the validation shard is extra)")
    parser.add_argument("--dest", type=Path, help="target directory (default: the loopdeck cache)")
    parser.add_argument("--workers", type=int, default=4, help="parallel downloads")
    args = parser.parse_args(argv)
    try:
        dest = download_shards(CORPORA[args.corpus], args.num_shards, args.dest, workers=args.workers)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"shards ready in {dest}\ntrain on them with: loopdeck train --data {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
