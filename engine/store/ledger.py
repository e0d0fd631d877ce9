"""The experiment ledger: every experiment in SQLite (.loopdeck/ledger.sqlite) plus autoresearch's results.tsv.

Durability: WAL journal with `synchronous=FULL`. A committed transaction survives a killed engine in either
NORMAL or FULL mode (the WAL frames are in the OS page cache when `commit` returns); FULL also fsyncs the WAL on
every commit, so a committed row survives an OS crash or power loss too. The loop commits a handful of
transactions per experiment (minutes apart), so the extra fsync costs nothing that matters.

Recovery from a corrupt ledger (the open fails with a `LoopdeckError` saying so): move `ledger.sqlite` (and its
`-wal`/`-shm` companions) and `results.tsv` aside and keep them: results.tsv holds the history, and a fresh ledger
rewrites it. `loopdeck run` then starts a fresh ledger (numbering from 0, a new baseline at the current incumbent);
`sqlite3 ledger.sqlite ".recover"` can often salvage the rows of the damaged file; events.jsonl keeps the events.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
import threading
import time
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.events import ExperimentStatus

LEDGER_FILE = "ledger.sqlite"
RESULTS_FILE = "results.tsv"
RESULTS_HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
# results.tsv knows three outcomes. Rows without a commit never ran (vetoed, or rejected by the guard) and are
# left out, like running rows; a run rejected after it ran (it broke its budget, its model looks ahead) is a crash.
# Extra runs (baseline seeds, confirmations) live in the runs table: results.tsv keeps one line per experiment.
_TSV_STATUS = {
    "keep": "keep", "discard": "discard", "aborted": "discard",
    "crash": "crash", "timeout": "crash", "nan": "crash", "interrupted": "crash", "rejected": "crash",
}
_FINAL_STATUSES = frozenset(typing.get_args(ExperimentStatus)) - {"running"}


@dataclass
class ExperimentRow:
    id: int
    status: str
    description: str = ""
    rationale: str = ""
    parent_commit: str = ""
    commit: str = ""
    metric: float | None = None
    delta: float | None = None
    incumbent_metric: float | None = None
    peak_memory_mb: float | None = None
    training_seconds: float | None = None
    wall_seconds: float | None = None
    diff: str = ""
    log_path: str = ""
    reason: str = ""
    log_tail: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    cost_usd: float = 0.0
    agent: str = ""
    self_reported: bool = True
    started_at: float = 0.0
    finished_at: float | None = None
    env: dict = field(default_factory=dict)  # environment capsule: versions, device, corpus fingerprint, hashes
    meta: dict = field(default_factory=dict)  # what the proposing agent attached (Proposal.meta)
    # Research integrity (engine/integrity.py): `metric` is the trusted score when self_reported is False.
    reported_metric: float | None = None  # what the training file printed
    metric_mismatch: bool = False  # the printed metric disagreed with the trusted score beyond the tolerance
    metric_runs: int = 1  # runs `metric` is the mean of (baseline seeds, confirmations)
    noise_std: float | None = None  # run-to-run standard deviation of the metric in force when this was judged
    delta_band: float | None = None  # ± on `delta`: one standard error of the difference
    holdout_metric: float | None = None  # this experiment's weights on the holdout split (never decides anything)
    holdout_val_metric: float | None = None  # the same weights on the validation split, for the transfer gap

    @property
    def is_baseline(self) -> bool:
        """The one definition of a baseline: a run of the unchanged incumbent commit that starts a research line
        (`meta["baseline"]`), whatever its number — a failed first baseline makes the next one #1."""
        return bool(self.meta.get("baseline"))


@dataclass
class RunRow:
    """One extra run of an experiment: a baseline seed ("noise"), a confirmation ("confirm") or the incumbent's
    paired re-run ("incumbent"). Not an experiment: never in results.tsv or the agent's history."""

    experiment: int  # the experiment this run repeats (for "incumbent": the candidate it is paired with)
    role: str
    seed: int
    status: str  # "ok", or the failure (crash, timeout, nan, rejected, interrupted)
    commit: str = ""
    metric: float | None = None
    reported_metric: float | None = None
    training_seconds: float | None = None
    wall_seconds: float | None = None
    reason: str = ""
    log_path: str = ""
    finished_at: float = 0.0
    id: int | None = None


_FIELDS = tuple(f.name for f in dataclasses.fields(ExperimentRow))
_JSON_FIELDS = frozenset({"env", "meta"})
_BOOL_FIELDS = frozenset({"self_reported", "metric_mismatch"})
_COLUMNS = ", ".join(f'"{name}"' for name in _FIELDS)
_RUN_FIELDS = tuple(f.name for f in dataclasses.fields(RunRow))

# MIGRATIONS[v] takes a ledger from schema version v to v+1 (PRAGMA user_version). A new ExperimentRow field
# gets a new entry (`ALTER TABLE experiments ADD COLUMN …`); existing entries never change.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE experiments (
            "id" INTEGER PRIMARY KEY,
            "status" TEXT NOT NULL,
            "description" TEXT NOT NULL DEFAULT '',
            "rationale" TEXT NOT NULL DEFAULT '',
            "parent_commit" TEXT NOT NULL DEFAULT '',
            "commit" TEXT NOT NULL DEFAULT '',
            "metric" REAL,
            "delta" REAL,
            "incumbent_metric" REAL,
            "peak_memory_mb" REAL,
            "training_seconds" REAL,
            "wall_seconds" REAL,
            "diff" TEXT NOT NULL DEFAULT '',
            "log_path" TEXT NOT NULL DEFAULT '',
            "reason" TEXT NOT NULL DEFAULT '',
            "log_tail" TEXT NOT NULL DEFAULT '',
            "input_tokens" INTEGER NOT NULL DEFAULT 0,
            "output_tokens" INTEGER NOT NULL DEFAULT 0,
            "cache_write_tokens" INTEGER NOT NULL DEFAULT 0,
            "cache_read_tokens" INTEGER NOT NULL DEFAULT 0,
            "cost_usd" REAL NOT NULL DEFAULT 0,
            "agent" TEXT NOT NULL DEFAULT '',
            "self_reported" INTEGER NOT NULL DEFAULT 1,
            "started_at" REAL NOT NULL DEFAULT 0,
            "finished_at" REAL,
            "env" TEXT NOT NULL DEFAULT '{}',
            "meta" TEXT NOT NULL DEFAULT '{}'
        )""",
        'CREATE INDEX experiments_status ON experiments ("status")',
    ),
    (
        'ALTER TABLE experiments ADD COLUMN "reported_metric" REAL',
        'ALTER TABLE experiments ADD COLUMN "metric_mismatch" INTEGER NOT NULL DEFAULT 0',
        'ALTER TABLE experiments ADD COLUMN "metric_runs" INTEGER NOT NULL DEFAULT 1',
        'ALTER TABLE experiments ADD COLUMN "noise_std" REAL',
        'ALTER TABLE experiments ADD COLUMN "delta_band" REAL',
        'ALTER TABLE experiments ADD COLUMN "holdout_metric" REAL',
        'ALTER TABLE experiments ADD COLUMN "holdout_val_metric" REAL',
        """CREATE TABLE runs (
            "experiment" INTEGER NOT NULL,
            "role" TEXT NOT NULL,
            "seed" INTEGER NOT NULL,
            "status" TEXT NOT NULL,
            "commit" TEXT NOT NULL DEFAULT '',
            "metric" REAL,
            "reported_metric" REAL,
            "training_seconds" REAL,
            "wall_seconds" REAL,
            "reason" TEXT NOT NULL DEFAULT '',
            "log_path" TEXT NOT NULL DEFAULT '',
            "finished_at" REAL NOT NULL DEFAULT 0,
            "id" INTEGER PRIMARY KEY AUTOINCREMENT
        )""",
        'CREATE INDEX runs_experiment ON runs ("experiment")',
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


class Ledger:
    """One connection per instance, shared by the engine's loop thread and any reader thread under a lock.

    Several processes may open the same ledger (the engine writes, `loopdeck status` or a console reads): WAL
    lets readers proceed while the engine writes."""

    def __init__(self, state_dir: Path, *, create: bool = True) -> None:
        """`create=False` refuses a state directory without a ledger (for commands that only read one)."""
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / LEDGER_FILE
        self.results_path = self.state_dir / RESULTS_FILE
        self._lock = threading.RLock()
        if not self.path.exists():
            if not create:
                raise LoopdeckError(
                    f"no experiment ledger in {self.state_dir}: nothing has run in this workspace yet "
                    "(start a session with `loopdeck run`)"
                )
            try:
                self.state_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise LoopdeckError(f"cannot create the state directory {self.state_dir}: {exc}") from exc
        self._conn = self._open()
        try:
            self._migrate()
            self._sync_results()
        except sqlite3.Error as exc:  # e.g. "disk I/O error": the disk is full or failing
            self._conn.close()
            raise LoopdeckError(f"cannot open the experiment ledger {self.path}: {exc}") from exc
        except BaseException:
            self._conn.close()
            raise

    # --- public API ----------------------------------------------------------------------------------------------

    def next_id(self) -> int:
        """The id of the next experiment: 0 (the baseline) on an empty ledger."""
        with self._lock:
            (top,) = self._conn.execute("SELECT MAX(id) FROM experiments").fetchone()
        return 0 if top is None else top + 1

    def begin(self, row: ExperimentRow) -> None:
        """Record a new experiment (status usually "running"). Its id must be new."""
        values = _encode(dataclasses.asdict(row))
        if not values["started_at"]:
            values["started_at"] = time.time()
        placeholders = ", ".join("?" for _ in _FIELDS)
        with self._transaction(f"record experiment {row.id}"):
            if self._conn.execute("SELECT 1 FROM experiments WHERE id = ?", (row.id,)).fetchone():
                raise ValueError(f"experiment {row.id} is already in the ledger")
            self._conn.execute(
                f"INSERT INTO experiments ({_COLUMNS}) VALUES ({placeholders})",
                tuple(values[name] for name in _FIELDS),
            )

    def update(self, id: int, **fields: Any) -> None:
        """Change some fields of an experiment in one transaction."""
        with self._transaction(f"update experiment {id}"):
            self._update(id, fields)

    def finish(self, id: int, status: str, **fields: Any) -> None:
        """Give an experiment its final status (and any other fields); results.tsv is rewritten atomically."""
        if status not in _FINAL_STATUSES:
            raise ValueError(f"not a final experiment status: {status!r} (one of {sorted(_FINAL_STATUSES)})")
        fields = {"finished_at": time.time(), **fields, "status": status}
        tsv_error: LoopdeckError | None = None
        with self._transaction(f"record the outcome of experiment {id}"):
            self._update(id, fields)
            try:
                self._write_results()
            except LoopdeckError as exc:
                tsv_error = exc  # the row still commits: the database is the record, the TSV a copy
        if tsv_error is not None:
            raise tsv_error

    def get(self, id: int) -> ExperimentRow | None:
        with self._lock:
            found = self._conn.execute(f"SELECT {_COLUMNS} FROM experiments WHERE id = ?", (id,)).fetchone()
        return None if found is None else _decode(found)

    def rows(self) -> list[ExperimentRow]:
        """Every experiment, by id."""
        with self._lock:
            return self._select()

    def incumbent(self) -> ExperimentRow | None:
        """The latest kept experiment (the baseline is recorded as kept), or None before the baseline finished."""
        with self._lock:
            found = self._select("WHERE status = 'keep' ORDER BY id DESC LIMIT 1")
        return found[0] if found else None

    def unfinished(self) -> list[ExperimentRow]:
        """Experiments still marked running: the engine died while they were in flight."""
        with self._lock:
            return self._select("WHERE status = 'running' ORDER BY id")

    def record_run(self, run: RunRow) -> int:
        """Record one finished extra run (its id is assigned here and returned)."""
        values = {name: value for name, value in dataclasses.asdict(run).items() if name != "id"}
        values["finished_at"] = values["finished_at"] or time.time()
        columns = ", ".join(f'"{name}"' for name in values)
        with self._transaction(f"record a run of experiment {run.experiment}"):
            cursor = self._conn.execute(f"INSERT INTO runs ({columns}) VALUES ({', '.join('?' for _ in values)})",
                                        tuple(values.values()))
        return int(cursor.lastrowid or 0)

    def runs(self, experiment: int | None = None) -> list[RunRow]:
        """Extra runs, oldest first: all of them, or those of one experiment."""
        columns = ", ".join(f'"{name}"' for name in _RUN_FIELDS)
        where, args = ("", ()) if experiment is None else ("WHERE experiment = ?", (experiment,))
        with self._lock:
            found = self._conn.execute(f"SELECT {columns} FROM runs {where} ORDER BY id", args).fetchall()
        return [RunRow(**dict(zip(_RUN_FIELDS, row, strict=True))) for row in found]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- internals -----------------------------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        recovery = (
            f"move {self.path.name} (and any {self.path.name}-wal / -shm beside it) and {RESULTS_FILE} out of "
            f"{self.state_dir}, and keep them: {RESULTS_FILE} holds the history (a fresh ledger rewrites it), and "
            f"`sqlite3 {self.path.name} .recover` can often salvage the rows. `loopdeck run` then starts a fresh "
            "ledger with a new baseline"
        )
        try:
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE … COMMIT), one per state change.
            conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise LoopdeckError(f"cannot open the experiment ledger {self.path}: {exc}") from exc
        try:
            check = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
            if check != ["ok"]:
                raise LoopdeckError(
                    f"the experiment ledger {self.path} is corrupt ({'; '.join(check[:3])}). To recover: {recovery}"
                )
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise LoopdeckError(f"cannot put the experiment ledger {self.path} in WAL mode (got {mode!r})")
            conn.execute("PRAGMA synchronous=FULL")
        except LoopdeckError:
            conn.close()
            raise
        except sqlite3.DatabaseError as exc:
            conn.close()
            reason = str(exc)
            if "not a database" in reason or "malformed" in reason:
                raise LoopdeckError(
                    f"the experiment ledger {self.path} is corrupt ({reason}). To recover: {recovery}"
                ) from exc
            raise LoopdeckError(f"cannot open the experiment ledger {self.path}: {reason}") from exc
        return conn

    def _schema_version(self) -> int:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise LoopdeckError(
                f"the experiment ledger {self.path} was written by a newer loopdeck (schema {version}, this one "
                f"knows {SCHEMA_VERSION}): upgrade loopdeck"
            )
        return version

    def _migrate(self) -> None:
        # Checked outside a write transaction first, so a reader of an up-to-date ledger never takes the write lock.
        if self._schema_version() == SCHEMA_VERSION:
            return
        with self._transaction("upgrade the ledger schema"):
            for statements in MIGRATIONS[self._schema_version():]:
                for statement in statements:
                    self._conn.execute(statement)
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextlib.contextmanager
    def _transaction(self, what: str = "write the ledger") -> Iterator[None]:
        """One write transaction; SQLite failures (disk full, read-only file…) become a `LoopdeckError`."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._write_failed(what, exc) from exc
            try:
                yield
                self._conn.execute("COMMIT")
            except BaseException as exc:
                if self._conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):  # SQLite rolls back itself if this fails too
                        self._conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._write_failed(what, exc) from exc
                raise

    def _write_failed(self, what: str, exc: sqlite3.Error) -> LoopdeckError:
        return LoopdeckError(f"could not {what} in {self.path}: {exc}. Is the disk full, or {self.state_dir} "
                             "read-only? Free space or fix its permissions, then run again: the session resumes "
                             "where it stopped (committed experiments are safe)")

    def _update(self, id: int, fields: dict[str, Any]) -> None:
        unknown = set(fields) - (set(_FIELDS) - {"id"})
        if unknown:
            raise TypeError(f"not updatable experiment fields: {sorted(unknown)}")
        if not fields:
            return
        values = _encode(fields)
        assignments = ", ".join(f'"{name}" = ?' for name in values)
        cursor = self._conn.execute(
            f"UPDATE experiments SET {assignments} WHERE id = ?", (*values.values(), id)
        )
        if cursor.rowcount == 0:
            raise KeyError(f"experiment {id} is not in the ledger")

    def _select(self, clause: str = "ORDER BY id") -> list[ExperimentRow]:
        return [_decode(found) for found in self._conn.execute(f"SELECT {_COLUMNS} FROM experiments {clause}")]

    def _results_text(self) -> str:
        return RESULTS_HEADER + "".join(_results_line(row) for row in self._select())

    def _results_stale(self) -> bool:
        try:
            return self.results_path.read_text(encoding="utf-8") != self._results_text()
        except (OSError, UnicodeDecodeError):
            return True

    def _sync_results(self) -> None:
        """Bring results.tsv up to date after an engine died between its commit and the TSV rewrite."""
        if self._results_stale():
            with self._transaction(f"update {RESULTS_FILE}"):
                if self._results_stale():
                    self._write_results()

    def _write_results(self) -> None:
        """Rewrite results.tsv atomically. Runs inside a write transaction, so two processes never race on it."""
        text = self._results_text()
        tmp = self.results_path.with_name(f".{RESULTS_FILE}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8", newline="\n") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.results_path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise LoopdeckError(f"could not write {self.results_path}: {exc}. Is the disk full? Free space, then run "
                                "again: the session resumes, and results.tsv is rewritten from the ledger") from exc


def _encode(values: dict[str, Any]) -> dict[str, Any]:
    encoded = dict(values)
    for name in _JSON_FIELDS & encoded.keys():
        encoded[name] = json.dumps(encoded[name] or {}, sort_keys=True, default=str)
    for name in _BOOL_FIELDS & encoded.keys():
        encoded[name] = int(bool(encoded[name]))
    return encoded


def _decode(found: tuple[Any, ...]) -> ExperimentRow:
    values = dict(zip(_FIELDS, found, strict=True))
    for name in _JSON_FIELDS:
        values[name] = json.loads(values[name] or "{}")
    for name in _BOOL_FIELDS:
        values[name] = bool(values[name])
    return ExperimentRow(**values)


def _results_line(row: ExperimentRow) -> str:
    """One results.tsv line, or "" for a row that never ran (no commit, or a status autoresearch has no word for)."""
    status = _TSV_STATUS.get(row.status)
    if status is None or not row.commit:
        return ""
    crashed = status == "crash"
    metric = 0.0 if crashed or row.metric is None else row.metric
    memory_gb = 0.0 if crashed or row.peak_memory_mb is None else row.peak_memory_mb / 1024
    description = " ".join(row.description.split())  # tabs or newlines would break the TSV
    return f"{row.commit[:7]}\t{metric:.6f}\t{memory_gb:.1f}\t{status}\t{description}\n"


# --- `loopdeck status` --------------------------------------------------------------------------------------------

_TABLE_WIDTH = 100
_TABLE_COLUMNS = (("id", 4, ">"), ("status", 11, "<"), ("metric", 10, ">"), ("delta", 10, ">"),
                  ("mem GB", 6, ">"), ("train s", 7, ">"))


def format_status_table(rows: list[ExperimentRow]) -> str:
    """The ledger as a plain-text table no wider than 100 columns, with a baseline/best/kept footer."""
    if not rows:
        return "no experiments yet"
    fixed = sum(width + 2 for _, width, _ in _TABLE_COLUMNS)
    desc_width = _TABLE_WIDTH - fixed
    header = "  ".join(f"{name:{align}{width}}" for name, width, align in _TABLE_COLUMNS) + "  description"
    lines = [header, "-" * min(_TABLE_WIDTH, fixed + desc_width)]
    for row in rows:
        cells = (
            str(row.id), row.status, _number(row.metric, "{:.6f}"), _number(row.delta, "{:+.6f}"),
            _number(None if row.peak_memory_mb is None else row.peak_memory_mb / 1024, "{:.1f}"),
            _number(row.training_seconds, "{:.1f}"),
        )
        line = "  ".join(f"{cell:{align}{width}}" for cell, (_, width, align) in zip(cells, _TABLE_COLUMNS, strict=True))
        lines.append(f"{line}  {_clip(' '.join(row.description.split()), desc_width)}".rstrip())
    lines.append("")
    lines.append(_footer(rows))
    return "\n".join(lines)


def _footer(rows: list[ExperimentRow]) -> str:
    kept = [row for row in rows if row.status == "keep" and row.metric is not None]
    baseline = next((row for row in rows if row.id == 0), None)
    experiments = [row for row in rows if row.id != 0]
    parts = [f"baseline {_number(baseline.metric if baseline else None, '{:.6f}')}"]
    if kept:
        best = kept[-1].metric
        parts.append(f"best {best:.6f} (#{kept[-1].id})")
        if baseline is not None and baseline.metric:
            change = best - baseline.metric
            parts[-1] += f", {change:+.6f} ({100 * change / abs(baseline.metric):+.2f}%) vs baseline"
    else:
        parts.append("best -")
    parts.append(f"kept {sum(row.status == 'keep' for row in experiments)}/{len(experiments)} experiments")
    return " · ".join(parts)


def _number(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
