"""Trusted evaluation of a GPT-target workspace: when it applies, how `python -m loopdeck.gpt.evaluate` runs, its answer.

`[evaluation] mode = "auto"` scores runs out of process when the training file is a GPT-target file: it imports
the workspace's own `harness` module (harness.py beside it) and saves its weights with `save_model`. The scorer
loads that harness.py, checked against the sha256 the session started with, so the built-in target and a foreign
repository with such a harness are scored alike. Other repositories (autoresearch's own train.py, anything that
does not save loadable weights) are scored by the number they print, and every experiment says so
(`self_reported`). The decision is made once, at session start, from the workspace as it is then: an agent cannot
switch a session to self-reported scoring by editing the import away (its runs then fail to produce weights).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loopdeck.engine.config import Config
from loopdeck.engine.run.executor import RunResult
from loopdeck.gpt import HARNESS_FILE

# What must stay the same from one evaluation to the next within a session: the text scored and how.
REFERENCE_KEYS = ("corpus_fingerprint", "tokenizer", "eval_tokens", "batch_size", "seq_len")


@dataclass(frozen=True)
class EvaluationPlan:
    trusted: bool
    train_file: str  # the workspace file the evaluator imports
    note: str  # one line for the session's start: how runs are scored and why
    error: str = ""  # set when mode = "trusted" is asked of a workspace that cannot be scored that way
    harness: str = HARNESS_FILE  # the workspace's protected harness the evaluator scores with


def evaluation_plan(workspace: Path, config: Config) -> EvaluationPlan:
    mode = config.evaluation.mode
    train_file = _training_file(config)
    why_not = _not_gpt_target(workspace, train_file) if train_file else "the run command names no editable .py"
    if mode == "self_reported" or (mode == "auto" and why_not):
        because = "[evaluation] mode = self_reported" if mode == "self_reported" else why_not
        return EvaluationPlan(False, train_file or "", f"metric self-reported: the number the run prints is used "
                              f"as it is ({because})")
    if why_not:
        return EvaluationPlan(False, train_file or "", "", error=f"[evaluation] mode = \"trusted\" needs a GPT-target "
                              f"training file: {why_not}. Use mode = \"auto\" or \"self_reported\" for this workspace")
    return EvaluationPlan(True, train_file, f"metric trusted: a separate process scores each run's saved weights "
                          f"with the workspace's pinned {HARNESS_FILE}; what {train_file} prints is shown, never used to decide")


def _training_file(config: Config) -> str | None:
    """The editable Python file the run command executes (train.py for the template and autoresearch)."""
    editable = set(config.experiment.editable)
    return next((arg for arg in config.experiment.command if arg.endswith(".py") and arg in editable),
                "train.py" if "train.py" in editable else None)


def _not_gpt_target(workspace: Path, train_file: str) -> str:
    """"" for a training file that imports the workspace's harness and saves its weights with save_model, else
    why not."""
    path = workspace / train_file
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError) as exc:
        return f"cannot read {path.name} ({exc})"
    module = Path(HARNESS_FILE).stem
    imports_harness = any(
        (isinstance(node, ast.ImportFrom) and node.module == module and node.level == 0)
        or (isinstance(node, ast.Import) and any(alias.name == module for alias in node.names))
        for node in ast.walk(tree))
    saves = any((isinstance(node, ast.Name) and node.id == "save_model")
                or (isinstance(node, ast.Attribute) and node.attr == "save_model") for node in ast.walk(tree))
    if not imports_harness:
        return f"{path.name} does not import the workspace's {module}"
    if not (workspace / HARNESS_FILE).is_file():
        return f"{path.name} imports {module} but the workspace has no {HARNESS_FILE}"
    return "" if saves else f"{path.name} does not save its weights with save_model"


def trusted_hashes(workspace: Path) -> dict[str, str]:
    """What trusted scoring relies on, to hash at session start and check before every run and evaluation: the
    workspace's harness.py (relative name) and the installed scorer, which a training run could overwrite
    (absolute path)."""
    spec = importlib.util.find_spec("loopdeck.gpt.evaluate")  # its file, without importing it
    assert spec is not None and spec.origin is not None
    scorer = Path(spec.origin).resolve()
    files = {HARNESS_FILE: workspace / HARNESS_FILE, str(scorer): scorer}
    return {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in files.items()}


def evaluator_argv(workspace: Path, train_file: str, weights: Path, harness_sha256: str,
                   split: str = "val") -> list[str]:
    """`python -P -m loopdeck.gpt.evaluate …`: -P keeps the working directory off sys.path, so nothing in the
    workspace can stand in for the installed scorer; the scorer refuses a harness.py without this sha256."""
    return [sys.executable, "-P", "-m", "loopdeck.gpt.evaluate", "--workspace", str(workspace),
            "--train-file", train_file, "--weights", str(weights), "--harness-sha256", harness_sha256,
            "--split", split]


@dataclass(frozen=True)
class Evaluation:
    status: str  # "ok" | "rejected" | "crash"
    reason: str = ""
    bpb: float | None = None  # on the split asked for
    val_bpb: float | None = None  # on val, when the split asked for was another
    reference: dict[str, Any] = field(default_factory=dict)  # REFERENCE_KEYS as the evaluator saw them
    harness: str = ""  # the harness file the evaluator imported
    harness_sha256: str = ""  # and the sha256 it checked it against
    subset_bpb: float | None = None  # on the first `subset_tokens` of val: what a run under loopdeck prints
    subset_tokens: int | None = None

    def printed_counterpart(self, eval_tokens: object) -> float | None:
        """The trusted score to compare a run's printed number with: on the subset when the run says it scored
        only those tokens (its metrics "end" record), else the full score."""
        if self.subset_tokens is not None and eval_tokens == self.subset_tokens:
            return self.subset_bpb
        return self.bpb


def read_evaluation(result: RunResult) -> Evaluation:
    """The evaluator's answer from its run; a crash with the reason when it gave none."""
    # Here, not at the top: only trusted sessions load the gpt package (gpt.evaluate itself loads no torch).
    from loopdeck.gpt.evaluate import EXIT_REJECTED, RESULT_PREFIX

    if result.timed_out:
        return Evaluation("crash", f"the trusted evaluation was killed after {result.timeout_seconds:g} s "
                          "([evaluation] eval_timeout_seconds)")
    answer = _last_answer(result.read_log(), RESULT_PREFIX)
    if answer is None:
        what = result.error_line or f"exit code {result.returncode}"
        return Evaluation("crash", f"the trusted evaluation gave no result ({what})")
    status, reason = answer.get("status"), str(answer.get("reason", ""))
    if status == "rejected" and result.returncode == EXIT_REJECTED:
        return Evaluation("rejected", reason)
    if status != "ok" or result.returncode != 0:
        return Evaluation("crash", f"the trusted evaluation failed: {reason or status}")
    bpb, val_bpb = _finite(answer.get("bpb")), _finite(answer.get("val_bpb"))
    if bpb is None:
        return Evaluation("crash", f"the trusted evaluation returned no usable score ({answer.get('bpb')!r})")
    tokens = answer.get("subset_tokens")
    return Evaluation("ok", bpb=bpb, val_bpb=val_bpb, harness=str(answer.get("harness", "")),
                      harness_sha256=str(answer.get("harness_sha256", "")), subset_bpb=_finite(answer.get("subset_bpb")),
                      subset_tokens=tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None,
                      reference={key: answer.get(key) for key in REFERENCE_KEYS})


def _last_answer(log: str, prefix: str) -> dict | None:
    for line in reversed(log.splitlines()):
        if line.startswith(prefix):
            try:
                answer = json.loads(line[len(prefix):])
            except ValueError:
                return None
            return answer if isinstance(answer, dict) else None
    return None


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None
