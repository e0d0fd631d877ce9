"""The experiment ledger: every experiment in SQLite (.loopdeck/ledger.sqlite), mirrored to results.tsv.

Durability: WAL journal with `synchronous=FULL`. A committed transaction survives a killed engine in either
NORMAL or FULL mode (the WAL frames are in the OS page cache when `commit` returns); FULL also fsyncs the WAL on
every commit, so a committed row survives an OS crash or power loss too. The loop commits a handful of
transactions per experiment (minutes apart), so the extra fsync costs nothing that matters.

Recovery from a corrupt ledger (the open fails with a `LoopdeckError` saying so): move `ledger.sqlite` (and its
`-wal`/`-shm` companions) and `results.tsv` aside and keep them: results.tsv holds the history, and a fresh ledger
rewrites it. `loopdeck run` then starts a fresh ledger (numbering from 0, a new baseline at the current incumbent);
`sqlite3 ledger.sqlite ".recover"` can often salvage the rows of the damaged file; events.jsonl keeps the events.

The rows (experiments, their extra runs, studies of the kept chain, noise estimates), their schema and the store
share this module (about 550 lines): a new field touches all three.
results.tsv's format is `results_tsv`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
import threading
import time
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.events import ExperimentStatus
from loopdeck.engine.store import results_tsv
from loopdeck.engine.store.results_tsv import RESULTS_FILE

LEDGER_FILE = "ledger.sqlite"
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
    # Research integrity (engine/research/integrity.py): `metric` is the trusted score when self_reported is False.
    reported_metric: float | None = None  # what the training file printed
    metric_mismatch: bool = False  # the printed metric disagreed with the trusted score beyond the tolerance
    metric_runs: int = 1  # runs `metric` is the mean of (baseline seeds, confirmations)
    noise_std: float | None = None  # run-to-run standard deviation of the metric in force when this was judged
    delta_band: float | None = None  # ± on `delta`: one standard error of the difference
    holdout_metric: float | None = None  # this experiment's weights on the holdout split (never decides anything)
    holdout_val_metric: float | None = None  # the same weights on the validation split, for the transfer gap
    worker: str = ""  # where the run happened, when experiments run on several workers (engine/run/ray_executor.py)
    budget_clock: str = "wall"  # what timed the run's budget (process | wall): scores of different clocks differ
    # The research log (engine/agents/regions.py, engine/research/planner.py): what the idea touched, which way
    # each constant moved, the planner's mode and reason for its turn, and the experiment it repeated.
    region: str = ""  # space-separated `path:NAME` entries
    signs: dict = field(default_factory=dict)  # `path:NAME` -> +1 | -1 | a fingerprint of its new code
    mode: str = ""  # explore | exploit | combine | ablate ("" before the planner, and for a baseline)
    mode_reason: str = ""
    repeat_of: int | None = None

    @property
    def is_baseline(self) -> bool:
        """The one definition of a baseline: a run of the unchanged incumbent commit that starts a research line
        (`meta["baseline"]`), whatever its number — a failed first baseline makes the next one #1."""
        return bool(self.meta.get("baseline"))


def first_baseline(rows: Iterable[ExperimentRow]) -> ExperimentRow | None:
    """The baseline experiments are measured against: the first kept baseline (an earlier one may have failed)."""
    return next((row for row in rows if row.is_baseline and row.status == "keep"), None)


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


@dataclass
class StudyRow:
    """One variant of an ablation or transfer study (engine/research/ablation.py, transfer.py): the incumbent
    with one kept change reverted, the baseline or incumbent at a larger scale. Not an experiment: never in
    results.tsv or the agent's history."""

    study: int  # rows of one study share it
    kind: str  # "ablation" | "transfer"
    incumbent: int  # the experiment the study examined
    label: str  # "incumbent", "without #3", "baseline", "simplified"
    scale: float = 1.0  # budget and size knobs × this (1 = as the loop runs)
    change: int | None = None  # the kept experiment this variant is about
    commit: str = ""
    seeds: list = field(default_factory=list)
    metrics: list = field(default_factory=list)  # one per seed; None for a failed run
    gain: float | None = None  # ablation: the change's contribution; transfer: the gain at this scale
    band: float | None = None  # ± on gain
    reference_gain: float | None = None  # the same gain as the loop measured it (transfer)
    verdict: str = ""  # ablation: matters | nothing | hurts | conflict | failed; transfer: holds | shrinks | …
    detail: str = ""
    created_at: float = 0.0
    id: int | None = None
@dataclass(frozen=True)
class NoiseEstimate:
    """The metric's run-to-run noise, measured once and reused while what it depends on stays the same: the
    target (train.py and harness hashes), the budget and the machine (engine/research/noise.py keys it)."""

    key: str  # target + context: an exact match is the same measurement's conditions
    context: str  # harness, budget and machine: what must match for the estimate to carry over to a new incumbent
    std: float | None
    mean: float
    runs: int
    experiment: int  # the experiment whose runs measured it (the baseline, or an incumbent re-measured)
    measured_at: float = 0.0


_FIELDS = tuple(f.name for f in dataclasses.fields(ExperimentRow))
_JSON_FIELDS = frozenset({"env", "meta", "signs"})
_BOOL_FIELDS = frozenset({"self_reported", "metric_mismatch"})
_COLUMNS = ", ".join(f'"{name}"' for name in _FIELDS)
_RUN_FIELDS = tuple(f.name for f in dataclasses.fields(RunRow))
_STUDY_FIELDS = tuple(f.name for f in dataclasses.fields(StudyRow))
_STUDY_JSON = frozenset({"seeds", "metrics"})

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
    (
        """CREATE TABLE IF NOT EXISTS studies (
            "study" INTEGER NOT NULL,
            "kind" TEXT NOT NULL,
            "incumbent" INTEGER NOT NULL,
            "label" TEXT NOT NULL,
            "scale" REAL NOT NULL DEFAULT 1,
            "change" INTEGER,
            "commit" TEXT NOT NULL DEFAULT '',
            "seeds" TEXT NOT NULL DEFAULT '[]',
            "metrics" TEXT NOT NULL DEFAULT '[]',
            "gain" REAL,
            "band" REAL,
            "reference_gain" REAL,
            "verdict" TEXT NOT NULL DEFAULT '',
            "detail" TEXT NOT NULL DEFAULT '',
            "created_at" REAL NOT NULL DEFAULT 0,
            "id" INTEGER PRIMARY KEY AUTOINCREMENT
        )""",
        'CREATE INDEX IF NOT EXISTS studies_study ON studies ("study")',
    ),
    ('ALTER TABLE experiments ADD COLUMN "worker" TEXT NOT NULL DEFAULT \'\'',),
    ("""ALTER TABLE experiments ADD COLUMN "budget_clock" TEXT NOT NULL DEFAULT 'wall'""",),
    (
        """CREATE TABLE noise (
            "key" TEXT PRIMARY KEY,
            "context" TEXT NOT NULL,
            "std" REAL,
            "mean" REAL NOT NULL,
            "runs" INTEGER NOT NULL,
            "experiment" INTEGER NOT NULL,
            "measured_at" REAL NOT NULL
        )""",
    ),
    (
        "ALTER TABLE experiments ADD COLUMN region TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE experiments ADD COLUMN signs TEXT NOT NULL DEFAULT '{}'",
        "ALTER TABLE experiments ADD COLUMN mode TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE experiments ADD COLUMN mode_reason TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE experiments ADD COLUMN repeat_of INTEGER",
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
        """The last experiment kept (the baseline is recorded as kept), or None before the baseline finished. By
        when it was kept: with several experiments in flight a lower number can be kept after a higher one."""
        with self._lock:
            found = self._select("WHERE status = 'keep' ORDER BY finished_at DESC, id DESC LIMIT 1")
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

    def next_study(self) -> int:
        """The number of the next ablation or transfer study (1 on a ledger without one)."""
        with self._lock:
            (top,) = self._conn.execute("SELECT MAX(study) FROM studies").fetchone()
        return 1 if top is None else top + 1

    def record_study(self, rows: Iterable[StudyRow]) -> None:
        """Record the variants of one finished study in one transaction."""
        now = time.time()
        with self._transaction("record a study"):
            for row in rows:
                values = {name: value for name, value in dataclasses.asdict(row).items() if name != "id"}
                values["created_at"] = values["created_at"] or now
                for name in _STUDY_JSON:
                    values[name] = json.dumps(values[name])
                columns = ", ".join(f'"{name}"' for name in values)
                self._conn.execute(f"INSERT INTO studies ({columns}) VALUES ({', '.join('?' for _ in values)})",
                                   tuple(values.values()))

    def studies(self, kind: str | None = None) -> list[StudyRow]:
        """Study rows, oldest first: all of them, or those of one kind."""
        columns = ", ".join(f'"{name}"' for name in _STUDY_FIELDS)
        where, args = ("", ()) if kind is None else ("WHERE kind = ?", (kind,))
        with self._lock:
            found = self._conn.execute(f"SELECT {columns} FROM studies {where} ORDER BY id", args).fetchall()
        rows = []
        for values in found:
            row = dict(zip(_STUDY_FIELDS, values, strict=True))
            rows.append(StudyRow(**{**row, **{name: json.loads(row[name]) for name in _STUDY_JSON}}))
        return rows
    def save_noise(self, estimate: NoiseEstimate) -> None:
        """Store a noise estimate (replacing one with the same key)."""
        values = {**dataclasses.asdict(estimate), "measured_at": estimate.measured_at or time.time()}
        with self._transaction("record a noise estimate"):
            self._conn.execute(f"INSERT OR REPLACE INTO noise ({', '.join(values)}) VALUES "
                               f"({', '.join('?' for _ in values)})", tuple(values.values()))

    def noise_estimates(self) -> list[NoiseEstimate]:
        """Every stored noise estimate, newest first."""
        names = [f.name for f in dataclasses.fields(NoiseEstimate)]
        with self._lock:
            found = self._conn.execute(f"SELECT {', '.join(names)} FROM noise ORDER BY measured_at DESC").fetchall()
        return [NoiseEstimate(**dict(zip(names, row, strict=True))) for row in found]

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
        return results_tsv.results_text(self._select())

    def _sync_results(self) -> None:
        """Bring results.tsv up to date after an engine died between its commit and the TSV rewrite."""
        if not results_tsv.is_current(self.results_path, self._results_text()):
            with self._transaction(f"update {RESULTS_FILE}"):
                if not results_tsv.is_current(self.results_path, self._results_text()):
                    self._write_results()

    def _write_results(self) -> None:
        """Rewrite results.tsv atomically. Runs inside a write transaction, so two processes never race on it."""
        results_tsv.write_atomically(self.results_path, self._results_text())


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
