"""The protected harness of the GPT target: fixed constants, data, tokenizers, dataloader, evaluation, output.

Fixed, do not modify. Experiments edit train.py; this file defines how they are measured, so every experiment
trains for the same budget and is scored on the same validation tokens in the same way. Every new
workspace holds its own copy, hash-pinned in loopdeck.toml, so a loopdeck upgrade never changes how an existing
workspace is measured (autoresearch's `prepare.py` plays the same part).

One file on purpose, and longer than our usual modules for that reason: it is copied into a workspace and pinned
by one hash, and `python train.py` must run beside it where only torch is installed. So it imports only the
standard library and torch; optional extras (pyarrow for parquet data, `tokenizers` for BPE) are imported inside
the function that needs them. `python harness.py` builds the embedded corpus and prints its statistics.

Environment (all optional; the engine sets them, a person may too):
  LOOPDECK_TIME_BUDGET   training seconds (default 60)
  LOOPDECK_BUDGET_CLOCK  process (default: seconds of CPU or GPU work, which a busy machine cannot shorten) | wall
  LOOPDECK_EVAL_TOKENS   evaluation token count; tests only, since it changes what val_bpb means
  LOOPDECK_DATA          a directory, file or glob of .txt/.jsonl/.parquet; unset = the embedded corpus
  LOOPDECK_TOKENIZER     byte (default), bpe or bpe:VOCAB (a BPE trained on the corpus and cached)
  LOOPDECK_DEVICE        cpu | cuda | mps; unset = CUDA, else MPS, else CPU
  LOOPDECK_SEED          integer seed (default 0)
  LOOPDECK_RUN_DIR       where the finished run saves model.pt (default runs/latest under the current directory)
  LOOPDECK_METRICS       JSON-lines file the run appends its start/step/end records to
  LOOPDECK_CACHE         where derived data is kept (built corpus, trained tokenizers; default: the user cache)
  LOOPDECK_TRUSTED_EVAL  1 when loopdeck's trusted evaluator scores the run's weights: the run's own final
                         evaluation (`report_bpb`) then scores a short subset only, as a tamper signal
"""

from __future__ import annotations

import ast
import contextlib
import glob
import hashlib
import importlib
import json
import math
import os
import platform
import re
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import IO, Any, Protocol

import torch
import torch.nn.functional as F

__all__ = [
    "BUDGET_CLOCK", "EVAL_BATCH_SIZE", "EVAL_TOKENS", "MAX_SEQ_LEN", "TAMPER_EVAL_TOKENS", "TIME_BUDGET",
    "UNTIMED_STEPS", "BudgetClock", "Data", "DataError", "MetricsLog", "evaluate_bpb", "format_summary", "load_data",
    "load_model", "make_train_loader", "open_metrics", "peak_flops", "peak_memory_mb", "pick_device", "report_bpb",
    "run_dir", "run_seed", "save_model",
]


class DataError(Exception):
    """Bad or missing training data, or a bad setting: printed as one line naming the path, never a traceback."""


def _env_number(name: str, default: float, kind: type) -> Any:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not value > 0 or not math.isfinite(value):
        raise DataError(f"{name} must be a positive {'whole ' if kind is int else ''}number, got {raw!r}")
    return value


# ---------------------------------------------------------------------------
# Constants (fixed, do not modify)
# ---------------------------------------------------------------------------

MAX_SEQ_LEN = 256  # context length of every training row and every evaluation row
TIME_BUDGET = _env_number("LOOPDECK_TIME_BUDGET", 60.0, float)  # training seconds, start-up steps excluded
EVAL_TOKENS = _env_number("LOOPDECK_EVAL_TOKENS", 131072, int)  # validation tokens scored (fewer if val is smaller)
EVAL_BATCH_SIZE = 32  # rows of MAX_SEQ_LEN per evaluation forward pass
UNTIMED_STEPS = 3  # first optimizer steps not counted in the budget: compilation, allocator warm-up
BUDGET_CLOCK = os.environ.get("LOOPDECK_BUDGET_CLOCK", "").strip().lower() or "process"  # what times the budget
TAMPER_EVAL_TOKENS = 16384  # what a run scores itself on when loopdeck's trusted evaluator scores it in full


# ---------------------------------------------------------------------------
# The run's environment
# ---------------------------------------------------------------------------


def run_seed() -> int:
    raw = os.environ.get("LOOPDECK_SEED", "").strip() or "0"
    try:
        return int(raw)
    except ValueError:
        raise DataError(f"LOOPDECK_SEED must be an integer, got {raw!r}") from None


def pick_device() -> torch.device:
    """LOOPDECK_DEVICE when set, else the best available: CUDA, then Apple's MPS, then the CPU."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    requested = os.environ.get("LOOPDECK_DEVICE", "").strip().lower() or "auto"
    if requested == "auto":
        return torch.device(next(name for name, present in available.items() if present))
    if requested not in available:
        raise DataError(f"LOOPDECK_DEVICE={requested!r}: expected cpu, cuda, mps or auto")
    if not available[requested]:
        raise DataError(f"LOOPDECK_DEVICE={requested}: no {requested} device on this machine; "
                        "unset it to use the best device available")
    return torch.device(requested)


def run_dir() -> Path:
    return Path(os.environ.get("LOOPDECK_RUN_DIR") or Path("runs", "latest"))


def cache_dir() -> Path:
    """$LOOPDECK_CACHE, else the platform's per-user cache folder (as platformdirs would pick it) + loopdeck."""
    override = os.environ.get("LOOPDECK_CACHE", "").strip()
    if override:
        return Path(override).expanduser()
    home = Path.home()
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "loopdeck"
    if os.name == "nt":
        return Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local") / "loopdeck" / "Cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache") / "loopdeck"


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one step, on failure it is removed.

    Readers therefore see the old file or the complete new one, never a torn write (two runs may build the same
    cache entry at once).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------
# Budget clock: what a training step costs against TIME_BUDGET
# ---------------------------------------------------------------------------


class BudgetClock:
    """Times each training step in the seconds the budget counts, so a busy machine cannot change a run's steps.

    "process" counts work done, not time waited: on CPU the process's CPU seconds (all its threads) divided by
    torch's thread count; on a GPU (CUDA, MPS) the device time between two events recorded around the step. "wall"
    counts wall-clock seconds, as autoresearch does. `name` is recorded with the run's results.
    """

    def __init__(self, device: torch.device, kind: str = BUDGET_CLOCK) -> None:
        if kind not in ("process", "wall"):
            raise DataError(f"LOOPDECK_BUDGET_CLOCK={kind!r}: expected process or wall")
        self.name = kind
        self.device = device
        if kind == "process" and device.type == "cpu" and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
            # Spinning OpenMP threads burn CPU while waiting for a thread a busy machine delays: set before torch
            # loads, which is too late here (loopdeck sets it for every run on this clock).
            print("note: the process clock counts waiting as work unless OMP_WAIT_POLICY=PASSIVE is set when the "
                  "run starts (loopdeck sets it)", flush=True)
        self._started = 0.0
        self._begin: torch.Event | None = None

    def start(self) -> None:
        """Mark the start of a step."""
        if self.name == "process" and self.device.type != "cpu":
            self._begin = torch.Event(self.device, enable_timing=True)
            self._begin.record()
        else:
            self._started = self._now()

    def stop(self) -> float:
        """Seconds since `start` on this clock; call it once the step's result is on the host."""
        if self._begin is None:
            return self._now() - self._started
        end = torch.Event(self.device, enable_timing=True)
        end.record()
        end.synchronize()
        return self._begin.elapsed_time(end) / 1000

    def _now(self) -> float:
        if self.name == "wall":
            return time.perf_counter()
        # CPU seconds of every thread: a step starved by a neighbour's load waits longer, but its work costs the same.
        return time.process_time() / max(torch.get_num_threads(), 1)


# ---------------------------------------------------------------------------
# Corpus: documents, splits and fingerprints (the embedded one, or a user's files)
# ---------------------------------------------------------------------------

# Bump when the builder, the document format or the split rule changes: every fingerprint changes with it.
CORPUS_FORMAT = "loopdeck-corpus-1"
VAL_FRACTION = 0.10
HOLDOUT_FRACTION = 0.05
SUFFIXES = (".txt", ".jsonl", ".parquet")
# Written by loopdeck.gpt.download next to its shards: names the pinned validation shard.
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


def optional_import(name: str, pip_name: str, purpose: str) -> ModuleType:
    """An optional extra, imported where it is needed; DataError naming the pip command when it is missing."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise DataError(f"{purpose} needs the {pip_name} package: pip install {pip_name}") from None


def _parquet_documents(path: Path) -> Iterator[str]:
    pa = optional_import("pyarrow", "pyarrow", f"reading {path.name}")
    pq = optional_import("pyarrow.parquet", "pyarrow", f"reading {path.name}")

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
    """The validation shard a download manifest pins, if `spec` is a directory with one."""
    manifest = Path(spec).expanduser() / SHARD_MANIFEST
    if not manifest.is_file():
        return None
    try:
        return json.loads(manifest.read_text(encoding="utf-8"))["val"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{manifest}: unreadable shard manifest; delete it to split by document hash") from None


def user_corpus(spec: str) -> Corpus:
    """Read every document of the files `spec` names.

    With a shard manifest (written by loopdeck.gpt.download), the pinned validation shard supplies val and holdout and
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


# ---------------------------------------------------------------------------
# Tokenizers: byte-level (256 bytes + BOS, the default) and a byte-level BPE
# ---------------------------------------------------------------------------

BOS = "<|bos|>"
DEFAULT_BPE_VOCAB = 4096


class Tokenizer(Protocol):
    name: str  # recorded with every run: "byte" or "bpe-4096"
    vocab_size: int
    bos_id: int

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def decode(self, ids: list[int]) -> str: ...

    def token_bytes(self) -> list[int]: ...


class ByteTokenizer:
    """Token i < 256 is byte i; token 256 is BOS."""

    name = "byte"
    vocab_size = 257
    bos_id = 256

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(text.encode("utf-8")) for text in texts]

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def token_bytes(self) -> list[int]:
        return [1] * 256 + [0]


class BPETokenizer:
    """A byte-level BPE (GPT-2 style byte alphabet, so any text round-trips) with BOS as its one special token."""

    def __init__(self, backend) -> None:  # a tokenizers.Tokenizer
        self._backend = backend
        self.vocab_size = backend.get_vocab_size()
        self.bos_id = backend.token_to_id(BOS)
        self.name = f"bpe-{self.vocab_size}"

    @classmethod
    def train(cls, texts: list[str], vocab_size: int) -> BPETokenizer:
        tokenizers = optional_import("tokenizers", "tokenizers", "a BPE tokenizer")
        pre_tokenizers = tokenizers.pre_tokenizers
        backend = tokenizers.Tokenizer(tokenizers.models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = tokenizers.decoders.ByteLevel()
        trainer = tokenizers.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS], show_progress=False,
                                                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        backend.train_from_iterator(texts, trainer=trainer)
        return cls(backend)

    @classmethod
    def load(cls, path: Path) -> BPETokenizer:
        return cls(optional_import("tokenizers", "tokenizers", "a BPE tokenizer").Tokenizer.from_file(str(path)))

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            self._backend.save(str(tmp))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self._backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self._backend.decode(ids)

    def token_bytes(self) -> list[int]:
        # In the byte-level alphabet every character of a token's string is exactly one byte of text.
        lengths = [0] * self.vocab_size
        for token, index in self._backend.get_vocab().items():
            lengths[index] = 0 if index == self.bos_id else len(token)
        return lengths


def get_tokenizer(spec: str, corpus: Corpus) -> Tokenizer:
    """`byte` (or empty), `bpe` or `bpe:VOCAB`. A BPE is trained on the corpus's train split once and cached."""
    spec = spec.strip().lower()
    if spec in ("", "byte"):
        return ByteTokenizer()
    kind, _, size = spec.partition(":")
    if kind != "bpe" or not (size == "" or size.isdigit()):
        raise DataError(f"unknown tokenizer {spec!r}: expected byte, bpe or bpe:VOCAB_SIZE (e.g. bpe:4096)")
    vocab_size = int(size) if size else DEFAULT_BPE_VOCAB
    if not 258 <= vocab_size <= 1_000_000:
        raise DataError(f"BPE vocabulary size must be between 258 and 1000000, got {vocab_size}")
    path = cache_dir() / "tokenizers" / f"bpe-{vocab_size}-{corpus.fingerprint[:16]}.json"
    if path.exists():
        return BPETokenizer.load(path)
    tokenizer = BPETokenizer.train(corpus.texts("train"), vocab_size)
    tokenizer.save(path)
    return tokenizer


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Data:
    corpus_name: str
    fingerprint: str  # sha256 of the corpus content: differs on another Python version's embedded corpus
    tokenizer: Tokenizer
    train: torch.Tensor  # (N,) int32 token stream: every document is BOS followed by its tokens
    val: torch.Tensor  # (N,) int32, the same for every experiment
    holdout: torch.Tensor  # (N,) int32, never used for keep decisions
    token_bytes: torch.Tensor  # (vocab_size,) int64: UTF-8 bytes each token stands for; BOS stands for none


def _token_stream(tokenizer: Tokenizer, texts: list[str]) -> torch.Tensor:
    bos = torch.tensor([tokenizer.bos_id], dtype=torch.int32)
    pieces = []
    for ids in tokenizer.encode_batch(texts):
        pieces += [bos, torch.tensor(ids, dtype=torch.int32)]
    return torch.cat(pieces) if pieces else torch.empty(0, dtype=torch.int32)


# Data already loaded in this process, by (data spec, tokenizer spec): loopdeck's warm runner loads it once in a
# zygote process and forks every run from there, so a run's load_data() costs nothing.
_LOADED: dict[tuple[str, str], Data] = {}


def load_data(spec: str | None = None, tokenizer_spec: str | None = None) -> Data:
    """Corpus and tokenizer from the arguments, else from LOOPDECK_DATA / LOOPDECK_TOKENIZER, tokenized by split
    (once per process: a second call with the same settings returns the same Data)."""
    spec = (os.environ.get("LOOPDECK_DATA", "") if spec is None else spec).strip()
    tokenizer_spec = (os.environ.get("LOOPDECK_TOKENIZER", "") if tokenizer_spec is None else tokenizer_spec).strip()
    if (spec, tokenizer_spec) not in _LOADED:
        _LOADED[spec, tokenizer_spec] = _tokenized(spec, tokenizer_spec)
    return _LOADED[spec, tokenizer_spec]


def _tokenized(spec: str, tokenizer_spec: str) -> Data:
    corpus = load_corpus(spec or None)
    tokenizer = get_tokenizer(tokenizer_spec, corpus)
    return Data(
        corpus_name=corpus.name,
        fingerprint=corpus.fingerprint,
        tokenizer=tokenizer,
        train=_token_stream(tokenizer, corpus.texts("train")),
        val=_token_stream(tokenizer, corpus.texts("val")),
        holdout=_token_stream(tokenizer, corpus.texts("holdout")),
        token_bytes=torch.tensor(tokenizer.token_bytes(), dtype=torch.int64),
    )


def make_train_loader(data: Data, batch_size: int, seq_len: int, seed: int,
                      device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (inputs, targets) batches of shape (batch_size, seq_len): windows at seeded random offsets."""
    last_start = len(data.train) - seq_len - 1
    if last_start < 0:
        raise DataError(f"the train split has {len(data.train)} tokens; a batch row needs {seq_len + 1}")
    generator = torch.Generator().manual_seed(seed)
    window = torch.arange(seq_len + 1)
    while True:
        starts = torch.randint(0, last_start + 1, (batch_size, 1), generator=generator)
        rows = data.train[starts + window].long()  # (B, T+1)
        if device.type == "cuda":  # pinned host memory lets the copy overlap the previous step's compute
            rows = rows.pin_memory()
        rows = rows.to(device, non_blocking=True)
        yield rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


# ---------------------------------------------------------------------------
# Evaluation (fixed: this is the metric)
# ---------------------------------------------------------------------------


def eval_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA, nothing elsewhere: the precision every evaluation forward pass runs in."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


@torch.no_grad()
def evaluate_bpb(model: torch.nn.Module, data: Data, device: torch.device | None = None, split: str = "val",
                 eval_tokens: int | None = None) -> float:
    """Bits per byte of `model` on the first `eval_tokens` target tokens of a split (fewer when it is shorter).

    model(inputs) must return logits (B, T, vocab). Summed cross-entropy in nats over the target tokens, divided by
    ln 2 times the UTF-8 bytes those targets stand for; BOS targets stand for no bytes and count in neither sum,
    so the figure is comparable across tokenizers. Rows are consecutive MAX_SEQ_LEN windows, batch shape fixed.
    """
    device = device or next(model.parameters()).device
    stream = getattr(data, split)
    eval_tokens = EVAL_TOKENS if eval_tokens is None else eval_tokens
    rows = min(eval_tokens, len(stream) - 1) // MAX_SEQ_LEN
    if rows < 1:
        raise DataError(f"the {split} split has {len(stream)} tokens; evaluation needs at least {MAX_SEQ_LEN + 1}")
    inputs = stream[: rows * MAX_SEQ_LEN].view(rows, MAX_SEQ_LEN)
    targets = stream[1 : rows * MAX_SEQ_LEN + 1].view(rows, MAX_SEQ_LEN)
    token_bytes = data.token_bytes.to(device)
    total_nats = torch.zeros((), dtype=torch.float64, device=device)
    total_bytes = torch.zeros((), dtype=torch.int64, device=device)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, rows, EVAL_BATCH_SIZE):
            x = inputs[start : start + EVAL_BATCH_SIZE].to(device).long()
            y = targets[start : start + EVAL_BATCH_SIZE].to(device).long()
            with eval_autocast(device):
                logits = model(x)
            nats = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none")
            nbytes = token_bytes[y.flatten()]
            total_nats += (nats * (nbytes > 0)).sum(dtype=torch.float64)
            total_bytes += nbytes.sum()
    finally:
        model.train(was_training)
    return total_nats.item() / (math.log(2) * total_bytes.item())


def report_bpb(model: torch.nn.Module, data: Data, device: torch.device | None = None) -> tuple[float, int]:
    """(val_bpb, the eval_tokens it was scored with): what a run reports at its end. Standalone, the full evaluation. Under loopdeck's
    trusted evaluator (LOOPDECK_TRUSTED_EVAL=1), which scores the saved weights in full anyway, only the first
    TAMPER_EVAL_TOKENS: evaluation is paid once, and loopdeck compares this number with its own score of the same
    subset, a cheap signal that the run's code tampered with its model or its output."""
    trusted_elsewhere = os.environ.get("LOOPDECK_TRUSTED_EVAL") == "1"
    tokens = min(TAMPER_EVAL_TOKENS, EVAL_TOKENS) if trusted_elsewhere else EVAL_TOKENS
    return evaluate_bpb(model, data, device, eval_tokens=tokens), tokens


# ---------------------------------------------------------------------------
# Weights, so another process can rebuild and score the model
# ---------------------------------------------------------------------------


def save_model(config: dict[str, Any], state_dict: dict[str, torch.Tensor], directory: Path | None = None) -> Path:
    """Write {"config": config, "state_dict": state_dict} to DIR/model.pt (LOOPDECK_RUN_DIR by default)."""
    path = (directory or run_dir()) / "model.pt"
    with atomic_path(path) as tmp:
        torch.save({"config": config, "state_dict": state_dict}, tmp)
    return path


def load_model(train_module: ModuleType, path: Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """Rebuild `train_module.GPT(train_module.GPTConfig(**config))` from a saved model.pt and load its weights."""
    checkpoint = torch.load(path, map_location=device, weights_only=True)
    model = train_module.GPT(train_module.GPTConfig(**checkpoint["config"])).to(device)
    model.load_state_dict(checkpoint["state_dict"])
    return model


# ---------------------------------------------------------------------------
# Hardware figures for the progress line and the summary
# ---------------------------------------------------------------------------

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets; matched against the device name in order.
_PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12), ("H100", 989.4e12), ("H200", 989.4e12), ("GH200", 989.4e12), ("B200", 2250e12),
    ("A100", 312e12), ("L40S", 362.1e12), ("L4", 121e12), ("A10G", 70e12), ("RTX 4090", 165.2e12),
    ("RTX 3090", 71e12),
)


def peak_flops(device: torch.device) -> float | None:
    """The device's peak bf16 FLOP/s, or None where no figure is known (CPU, MPS, unlisted GPUs): no MFU then."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in _PEAK_BF16_FLOPS if key in name), None)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of the run: allocated CUDA/MPS memory, or on CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if device.type == "mps":
        return torch.mps.driver_allocated_memory() / 2**20
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


# ---------------------------------------------------------------------------
# Output: the LOOPDECK_METRICS JSON-lines stream and autoresearch's summary block
# ---------------------------------------------------------------------------

# autoresearch's summary: `---`, then these keys in this order, each with its number format.
SUMMARY_FORMATS = {
    "val_bpb": ".6f",
    "training_seconds": ".1f",
    "total_seconds": ".1f",
    "peak_vram_mb": ".1f",
    "mfu_percent": ".2f",
    "total_tokens_M": ".1f",
    "num_steps": "d",
    "num_params_M": ".1f",
    "depth": "d",
}


class MetricsLog:
    """Appends one JSON object per line to a file and flushes each, so a reader can follow the run live."""

    def __init__(self, path: str | os.PathLike | None) -> None:
        self._file: IO[str] | None = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115

    def write(self, kind: str, **fields: Any) -> None:
        if self._file is None:
            return
        # "time" (seconds since the epoch): when the run got there, for loopdeck's account of where time goes.
        record = {"type": kind, "time": time.time(),
                  **{key: _finite_or_none(value) for key, value in fields.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def start(self, **fields: Any) -> None:
        self.write("start", **fields)

    def step(self, **fields: Any) -> None:
        self.write("step", **fields)

    def end(self, summary: dict[str, Any]) -> None:
        self.write("end", **summary)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def open_metrics() -> MetricsLog:
    """The stream named by LOOPDECK_METRICS, or one that writes nothing when it is unset."""
    return MetricsLog(os.environ.get("LOOPDECK_METRICS") or None)


def _finite_or_none(value: Any) -> Any:
    # JSON has no NaN or Infinity; a reader in another language would choke on Python's extensions.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def format_summary(summary: dict[str, Any]) -> str:
    """The summary block: `---` then `key: value` lines, values aligned; a missing figure (None) prints as 0."""
    width = max(map(len, SUMMARY_FORMATS)) + 2
    lines = ["---"]
    for key, spec in SUMMARY_FORMATS.items():
        value = summary[key]
        lines.append(f"{key + ':':<{width}}{format(value if value is not None else 0, spec)}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# `python harness.py`: build (or load) the embedded corpus and print its statistics
# ---------------------------------------------------------------------------


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
