"""Training text: the embedded corpus built from CPython's own documentation, or a user's .txt/.jsonl/.parquet files.

Every corpus is a tuple of documents, each assigned to the train, val or holdout split by a stable hash of its id,
and a sha256 fingerprint of the whole content, so a run can tell when it is scored on different text (another
Python version builds another embedded corpus).
"""

from __future__ import annotations

import ast
import glob
import hashlib
import json
import os
import platform
import re
import sys
import sysconfig
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from loopdeck.gpt.cache import atomic_path, cache_dir
from loopdeck.gpt.errors import DataError

# Bump when the builder, the document format or the split rule changes: every fingerprint changes with it.
CORPUS_FORMAT = "loopdeck-corpus-1"
VAL_FRACTION = 0.10
HOLDOUT_FRACTION = 0.05
SUFFIXES = (".txt", ".jsonl", ".parquet")
# Written by gpt.download next to its shards: names the pinned validation shard.
SHARD_MANIFEST = "loopdeck-shards.json"
# A .txt file is cut at blank lines into documents of about this many characters, so one big file still splits.
TXT_DOCUMENT_CHARS = 4000
# Test suites and vendored packages are not documentation.
_SKIPPED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    split: str  # "train" | "val" | "holdout"


@dataclass(frozen=True)
class Corpus:
    name: str  # "embedded:cpython-3.11.7" or the user's path
    fingerprint: str  # sha256 of CORPUS_FORMAT and every document's id, split and text
    documents: tuple[Document, ...]

    def texts(self, split: str) -> list[str]:
        return [doc.text for doc in self.documents if doc.split == split]

    @property
    def num_bytes(self) -> int:
        return sum(len(doc.text.encode("utf-8")) for doc in self.documents)


def split_for(doc_id: str) -> str:
    """The split a document belongs to, from a hash of its id: stable across runs, machines and corpus edits."""
    unit = int.from_bytes(hashlib.sha256(doc_id.encode("utf-8")).digest()[:8], "big") / 2**64
    if unit < HOLDOUT_FRACTION:
        return "holdout"
    if unit < HOLDOUT_FRACTION + VAL_FRACTION:
        return "val"
    return "train"


def fingerprint(documents: Iterable[Document]) -> str:
    digest = hashlib.sha256(CORPUS_FORMAT.encode())
    for doc in documents:
        for part in (doc.id, doc.split, doc.text):
            digest.update(part.encode("utf-8"))
            digest.update(b"\0")
    return digest.hexdigest()


def load_corpus(spec: str | None = None) -> Corpus:
    """The corpus named by `spec` (a directory, file or glob); None or "" means the embedded corpus."""
    return user_corpus(spec) if spec else embedded_corpus()


# ---------------------------------------------------------------------------
# Embedded corpus: pydoc help topics + standard-library docstrings
# ---------------------------------------------------------------------------


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_sources(root: Path) -> list[Path]:
    """The standard library's .py files in sorted relative-path order, test suites and site-packages pruned."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _SKIPPED_DIRS]
        found.extend(Path(folder, name) for name in files if name.endswith(".py"))
    return sorted(found, key=lambda path: path.relative_to(root).as_posix())


def _module_name(relative: Path) -> str:
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) or relative.stem


_DEFINITIONS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _docstrings(node: ast.AST, qualname: str) -> Iterator[tuple[str, str]]:
    """(qualified name, cleaned docstring) of every class and function under `node`, in source order."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, _DEFINITIONS):
            name = f"{qualname}.{child.name}"
            doc = ast.get_docstring(child)
            if doc:
                yield name, doc
            yield from _docstrings(child, name)
        elif isinstance(child, ast.stmt):  # definitions inside `if`/`with`/`try` bodies
            yield from _docstrings(child, qualname)


def _module_text(path: Path, module: str) -> str:
    """A module's docstrings as one document: each under its qualified name. The file is parsed, never imported."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError):  # e.g. lib2to3 fixtures in Python 2 syntax
        return ""
    sections = []
    module_doc = ast.get_docstring(tree)
    if module_doc:
        sections.append(f"{module}\n{module_doc}")
    sections.extend(f"{name}\n{doc}" for name, doc in _docstrings(tree, module))
    return "\n\n".join(sections)


def build_embedded_documents() -> list[Document]:
    """Build the embedded corpus from scratch (seconds): pydoc's help topics, then stdlib docstrings by path."""
    from pydoc_data.topics import topics

    documents = [Document(f"pydoc/{name}", text, split_for(f"pydoc/{name}"))
                 for name, text in sorted(topics.items()) if text.strip()]
    root = _stdlib_root()
    for path in _stdlib_sources(root):
        relative = path.relative_to(root)
        text = _module_text(path, _module_name(relative))
        if text:
            doc_id = f"stdlib/{relative.as_posix()}"
            documents.append(Document(doc_id, text, split_for(doc_id)))
    return documents


def _embedded_cache_key() -> str:
    """Everything the build reads, by name, size and mtime: a cheap stand-in for the content fingerprint."""
    import pydoc_data.topics

    root = _stdlib_root()
    digest = hashlib.sha256(f"{CORPUS_FORMAT}\0{sys.version}\0{root}\0".encode())
    for path in [Path(pydoc_data.topics.__file__), *_stdlib_sources(root)]:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return digest.hexdigest()[:20]


def embedded_corpus(*, use_cache: bool = True) -> Corpus:
    """The embedded corpus, read from the cache when its inputs are unchanged, else built and cached."""
    name = f"embedded:cpython-{platform.python_version()}"
    cache_file = cache_dir() / "corpus" / f"embedded-{_embedded_cache_key()}.json"
    if use_cache and cache_file.exists():
        cached = _read_cached(cache_file, name)
        if cached is not None:
            return cached
    documents = tuple(build_embedded_documents())
    corpus = Corpus(name, fingerprint(documents), documents)
    if use_cache:
        payload = {"fingerprint": corpus.fingerprint, "documents": [[d.id, d.text, d.split] for d in documents]}
        with atomic_path(cache_file) as tmp:
            tmp.write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")
    return corpus


def _read_cached(path: Path, name: str) -> Corpus | None:
    """The cached corpus, or None when the file is unreadable or its content no longer matches its fingerprint."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        documents = tuple(Document(*row) for row in payload["documents"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if fingerprint(documents) != payload["fingerprint"]:
        return None
    return Corpus(name, payload["fingerprint"], documents)


# ---------------------------------------------------------------------------
# User corpus: a directory, file or glob of .txt / .jsonl / .parquet
# ---------------------------------------------------------------------------

_EXPECTED = 'a directory, file or glob of .txt, .jsonl (field "text") or .parquet (column "text") files'


def data_files(spec: str) -> list[Path]:
    """The corpus files `spec` names, sorted; DataError when there are none. Cheap: reads no file contents."""
    path = Path(spec).expanduser()
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file()]
        if not files:
            raise DataError(f"data directory {spec} has no .txt, .jsonl or .parquet files; expected {_EXPECTED}")
    elif path.is_file():
        if path.suffix not in SUFFIXES:
            raise DataError(f"data file {spec} is not .txt, .jsonl or .parquet; expected {_EXPECTED}")
        files = [path]
    elif glob.has_magic(spec):
        files = [Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True)
                 if Path(p).suffix in SUFFIXES and Path(p).is_file()]
        if not files:
            raise DataError(f"data glob {spec} matches no .txt, .jsonl or .parquet files; expected {_EXPECTED}")
    else:
        raise DataError(f"data path {spec} does not exist; expected {_EXPECTED} "
                        "(or no data setting for the embedded corpus)")
    return sorted(files)


def _txt_documents(path: Path) -> Iterator[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    chunk: list[str] = []
    size = 0
    for paragraph in re.split(r"\n\s*\n", text):
        if not paragraph.strip():
            continue
        chunk.append(paragraph)
        size += len(paragraph)
        if size >= TXT_DOCUMENT_CHARS:
            yield "\n\n".join(chunk)
            chunk, size = [], 0
    if chunk:
        yield "\n\n".join(chunk)


def _jsonl_documents(path: Path) -> Iterator[str]:
    try:
        with path.open(encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    raise DataError(f"{path} line {number}: not valid JSON") from None
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise DataError(f'{path} line {number}: expected a JSON object with a string field "text"')
                yield record["text"]
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None


def _parquet_documents(path: Path) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        if "text" not in parquet.schema_arrow.names:
            raise DataError(f'{path}: no "text" column (columns: {", ".join(parquet.schema_arrow.names)})')
        for group in range(parquet.num_row_groups):
            for text in parquet.read_row_group(group, columns=["text"]).column("text").to_pylist():
                if isinstance(text, str):
                    yield text
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: not a readable parquet file ({exc})") from None


_READERS = {".txt": _txt_documents, ".jsonl": _jsonl_documents, ".parquet": _parquet_documents}


def _pinned_val_file(spec: str) -> str | None:
    """The validation shard a gpt.download manifest pins, if `spec` is a directory with one."""
    manifest = Path(spec).expanduser() / SHARD_MANIFEST
    if not manifest.is_file():
        return None
    try:
        return json.loads(manifest.read_text(encoding="utf-8"))["val"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{manifest}: unreadable shard manifest; delete it to split by document hash") from None


def user_corpus(spec: str) -> Corpus:
    """Read every document of the files `spec` names.

    With a shard manifest (written by gpt.download), the pinned validation shard supplies val and holdout and
    every other file is train; otherwise each document's split comes from the hash of its id (path#index).
    """
    files = data_files(spec)
    root = Path(os.path.commonpath(files)) if len(files) > 1 else files[0].parent
    pinned_val = _pinned_val_file(spec)
    documents = []
    for path in files:
        relative = path.relative_to(root).as_posix()
        for index, text in enumerate(_READERS[path.suffix](path)):
            if not text.strip():
                continue
            doc_id = f"{relative}#{index}"
            split = split_for(doc_id)
            if pinned_val is not None:
                split = ("holdout" if split == "holdout" else "val") if relative == pinned_val else "train"
            documents.append(Document(doc_id, text, split))
    if not documents:
        raise DataError(f"data {spec}: the files hold no text")
    corpus = Corpus(str(spec), fingerprint(documents), tuple(documents))
    for split in ("train", "val"):
        if not corpus.texts(split):
            raise DataError(f"data {spec}: {len(documents)} documents and none in the {split} split; add more "
                            f"documents (each goes to a split by a hash of its id, about "
                            f"{VAL_FRACTION:.0%} to validation)")
    return corpus


def main() -> None:
    """Build (or load) the embedded corpus and print its size, split sizes, fingerprint and timings."""
    started = time.perf_counter()
    cold = embedded_corpus(use_cache=False)
    built = time.perf_counter()
    embedded_corpus()  # writes the cache if absent
    warm_start = time.perf_counter()
    cached = embedded_corpus()
    finished = time.perf_counter()
    assert cached.fingerprint == cold.fingerprint
    print(f"corpus:      {cold.name}")
    print(f"documents:   {len(cold.documents)}")
    for split in ("train", "val", "holdout"):
        size = sum(len(text.encode("utf-8")) for text in cold.texts(split))
        print(f"{split + ':':<12} {size / 1e6:.3f} MB")
    print(f"total:       {cold.num_bytes / 1e6:.3f} MB")
    print(f"fingerprint: {cold.fingerprint}")
    print(f"cold build:  {built - started:.2f} s")
    print(f"cached load: {finished - warm_start:.2f} s  ({cache_dir() / 'corpus'})")


if __name__ == "__main__":
    main()
