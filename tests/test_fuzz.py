"""Bad input refused, property-based (hypothesis): arbitrary TOML and text to the config loader, arbitrary argument
values to every CLI subcommand, arbitrary agent proposals to the guard — a clear error or a valid result, never a
traceback. Then each kind of bad agent output through the real loop: refused with a reason the agent and the
console both receive."""

from __future__ import annotations

import contextlib
import difflib
import io
import json
import math
import os
import tempfile
from pathlib import Path

import pytest
from conftest import git, init_repo, ledger_rows
from fake_targets import PROGRAM_MD, ScriptedAgent, change, fake_train_source, write_files
from fault_support import amend_config, assert_consistent
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from loopdeck.cli.main import main
from loopdeck.engine.config import Config, load_config, parse_config
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.events import ChangeRejected
from loopdeck.engine.research.guard import MAX_FILE_BYTES, GuardRejection, check_proposal
from loopdeck.engine.store.lock import WorkspaceLock

pytestmark = pytest.mark.timeout(300)
FAST = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])  # no .hypothesis/ in the repo

# --- loopdeck.toml ------------------------------------------------------------------------------------------------

SECTIONS = ["experiment", "metric", "loop", "agent", "sandbox", "agent.claude"]
FIELDS = ["editable", "protected", "command", "budget_seconds", "timeout_seconds", "data", "env", "env_allow", "name",
          "pattern", "direction", "min_improvement", "approval", "max_experiments", "max_hours",
          "max_consecutive_crashes", "tag", "kind", "seed", "claude", "model", "max_tokens", "thinking", "effort",
          "budget_usd", "budget_tokens", "base_url", "prices", "network", "memory_mb", "cpu_seconds",
          "max_processes"]
PRINTABLE = st.characters(blacklist_categories=("Cs", "Cc"))
scalars = (st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(PRINTABLE, max_size=30) | st.sampled_from(["train.py", "../x", "/etc/passwd", ".git/config",
                                                                "(", "^x:(\\S+)", "ask", "auto", "claude", "minimize"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.sampled_from(FIELDS) | st.text(PRINTABLE, max_size=8), inner, max_size=4),
                      max_leaves=12)
documents = st.dictionaries(st.sampled_from(SECTIONS) | st.text(PRINTABLE, min_size=1, max_size=10),
                            st.dictionaries(st.sampled_from(FIELDS) | st.text(PRINTABLE, max_size=10), values,
                                            max_size=5), max_size=4)


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(document: dict) -> str:
    out = []
    for section, fields in document.items():
        header = ".".join(json.dumps(part, ensure_ascii=False) if not part.isidentifier() else part
                          for part in section.split("."))
        out.append(f"[{header}]")
        out += [f"{json.dumps(key, ensure_ascii=False)} = {toml_value(value)}" for key, value in fields.items()]
    return "\n".join(out) + "\n"


def assert_config_or_clear_error(text: str) -> None:
    try:
        config = parse_config(text)
    except LoopdeckError as exc:
        message = str(exc)
        assert message.startswith("loopdeck.toml: ") and len(message) > len("loopdeck.toml: ")
        assert "Traceback" not in message and "validation error" not in message and "pydantic" not in message
    else:
        assert isinstance(config, Config) and config.timeout() > 0


@pytest.mark.slow
@settings(FAST, max_examples=400)
@given(documents)
@example({"metric": {"pattern": "(" * 300 + ")" * 300}})
@example({"experiment": {"budget_seconds": math.inf, "editable": ["a\\b"]}})
@example({"agent": {"claude": {"prices": {"input": -1.0}}}})
def test_arbitrary_toml_documents_give_a_config_or_a_clear_error(document):
    assert_config_or_clear_error(toml_document(document))


@settings(FAST, max_examples=300)
@given(st.text())
@example("[experiment]\nbudget_seconds = 1e400")
@example("[loop]\nmax_experiments = 99999999999999999999999")
@example('[sandbox]\nnetwork = "no"')
def test_arbitrary_text_gives_a_config_or_a_clear_error(text):
    assert_config_or_clear_error(text)


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory(prefix="loopdeck-fuzz-") as directory:
        yield Path(directory)


@settings(FAST, max_examples=100)
@given(st.binary(max_size=300))
@example(b"\xff\xfe[experiment]\n")
def test_arbitrary_bytes_in_loopdeck_toml_give_a_config_or_a_clear_error(scratch, data):
    (scratch / "train.py").write_text("print('val_bpb: 1')\n")
    (scratch / "loopdeck.toml").write_bytes(data)
    try:
        config, _ = load_config(scratch)
    except LoopdeckError as exc:
        assert str(exc)
    else:
        assert isinstance(config, Config)


# --- the command line ---------------------------------------------------------------------------------------------

# What a shell can hand over: any bytes but NUL, decoded as Python decodes argv (invalid UTF-8 becomes surrogates).
argv_text = (st.binary(max_size=24).map(os.fsdecode) | st.text(max_size=24)
             | st.sampled_from(["~nosuchuser", "~0/x", "n" * 300, "a/" * 2100])).map(lambda s: s.replace("\0", ""))
word = argv_text.filter(lambda s: not s.startswith("-"))  # a value, not an option
bad_numbers = st.sampled_from(["0", "-3", "nan", "inf", "-inf", "1e999", "x", "", "1_000", "0x10"]) | argv_text


def mostly(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Mostly valid values, so that most calls get past argparse into the handler; the rest are junk."""
    return st.integers(0, 9).flatmap(lambda draw: bad_numbers if draw == 9 else valid)


seconds = mostly(st.floats(min_value=0.001, max_value=1e6).map(repr) | st.integers(1, 10**6).map(str))
count = mostly(st.integers(1, 10**9).map(str))


def cli(argv: list[str]) -> tuple[int, str]:
    """Run `loopdeck ARGV`: its exit status and stderr. Argparse's own exit is a status too; anything else fails."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 2
    assert isinstance(code, int), code
    assert "Traceback" not in err.getvalue() + out.getvalue()
    usage = err.getvalue().startswith("usage:")
    event(f"exit status {code}" + (" (argparse)" if usage else ""))
    assert code in (0, 1, 2) and (code != 2 or usage or err.getvalue().startswith("loopdeck: error: ")), err
    return code, err.getvalue()


@pytest.fixture(scope="module")
def fuzz_workspaces(scratch):
    """A workspace with a ledger, one whose lock is held as if an engine ran there, and a path under a file."""
    files = {"train.py": fake_train_source(), "program.md": PROGRAM_MD, ".gitignore": ".loopdeck/\n",
             "loopdeck.toml": '[experiment]\nbudget_seconds = 1.0\n\n[loop]\napproval = "auto"\n\n'
                              '[agent]\nkind = "offline"\n'}
    ran = init_repo(scratch / "ran", files)
    # Sequential: LOWER_LR_PATCH must apply to the incumbent, so the offline agent's one experiment is the one it
    # picks knowing the baseline (a draft made while the baseline trains may pick, and keep, another LR).
    assert main(["run", str(ran), "--headless", "--max-experiments", "1", "--pipeline", "off"]) == 0
    busy = init_repo(scratch / "busy", files)
    lock = WorkspaceLock(busy / ".loopdeck")
    lock.acquire()
    (scratch / "a-file").write_text("not a directory")
    yield {"ran": ran, "busy": busy, "under_a_file": scratch / "a-file" / "workspace", "scratch": scratch}
    lock.release()


LOWER_LR_PATCH = "".join(difflib.unified_diff(fake_train_source().splitlines(True),
                                              fake_train_source(lr=0.3).splitlines(True),
                                              "a/train.py", "b/train.py")).encode()
CTL_ACTIONS = ["approve", "veto", "note", "pause", "resume", "stop", "abort", "autonomous", "supervised"]


@pytest.mark.slow
@settings(FAST, max_examples=150)
@given(st.sampled_from(["status", "report", "ctl idle", "ctl busy"]), word, mostly(st.sampled_from(CTL_ACTIONS)),
       word, st.none() | count)
def test_status_report_and_ctl_with_arbitrary_values(fuzz_workspaces, command, value, action, text, experiment):
    if command.startswith("ctl"):
        workspace = fuzz_workspaces["busy" if command == "ctl busy" else "ran"]
        argv = ["ctl", str(workspace), action, text] + (["--experiment", experiment] if experiment else [])
    elif command == "report":
        # Inside the scratch folder whatever the value (an absolute one would otherwise replace the folder).
        argv = ["report", str(fuzz_workspaces["ran"]), "--out", str(fuzz_workspaces["scratch"] / "reports")
                + "/" + value]
    else:
        argv = ["status", f"./{value}" if value else str(fuzz_workspaces["ran"])]
    cli(argv)


@settings(FAST, max_examples=40)
@given(st.binary(max_size=400), word, seconds)
@example(LOWER_LR_PATCH, "lower LR \udcff (a byte that is not UTF-8)", "1")  # one that applies, and runs
def test_try_with_an_arbitrary_patch_description_and_budget(fuzz_workspaces, patch, description, budget):
    patch_file = fuzz_workspaces["scratch"] / "fuzz.patch"
    patch_file.write_bytes(patch)
    code, _ = cli(["try", str(fuzz_workspaces["ran"]), str(patch_file), "-m", description, "--budget", budget])
    if patch == LOWER_LR_PATCH:
        assert code == 0 and ledger_rows(fuzz_workspaces["ran"])[-1].description == "lower LR \ufffd (a byte that "\
            "is not UTF-8)"


@settings(FAST, max_examples=40)
@given(word, seconds, mostly(st.sampled_from(["offline", "claude"])), mostly(st.sampled_from(["ask", "auto"])),
       word)
def test_init_with_arbitrary_values(fuzz_workspaces, name, budget, agent, approve, data):
    target = fuzz_workspaces["scratch"] / "inits" / name.replace("/", "_")
    code, _ = cli(["init", str(target), "--budget", budget, "--agent", agent, "--approve", approve, "--data", data])
    if code == 0:
        assert (target / "loopdeck.toml").is_file()


@settings(FAST, max_examples=60)
@given(count, seconds, seconds, word)
@example("1", "1", "1", "x")
def test_run_headless_with_arbitrary_numbers_on_a_path_that_cannot_be_a_workspace(fuzz_workspaces, experiments,
                                                                                    hours, budget, tag):
    code, _ = cli(["run", str(fuzz_workspaces["under_a_file"]), "--headless", "--max-experiments", experiments,
                   "--max-hours", hours, "--budget", budget, "--tag", tag])
    assert code == 2


# --- agent output: the guard, then the loop -----------------------------------------------------------------------

paths = st.sampled_from(["train.py", "/etc/passwd", "../train.py", "./train.py", "train.py/", ".git/config",
                         ".loopdeck/ledger.sqlite", "program.md", "C:\\x", "train.py\0", ""]) | st.text(max_size=20)
contents = (st.text(max_size=200) | st.binary(max_size=50) | st.just("x = 1\n") | st.just("def f(:\n")
            | st.just("#" * (MAX_FILE_BYTES + 1)))


@pytest.fixture(scope="module")
def guard_workspace(scratch):
    return init_repo(scratch / "guarded", {"train.py": "x = 0\n", "program.md": PROGRAM_MD})


@settings(FAST, max_examples=300)
@given(st.dictionaries(paths, contents, max_size=3))
def test_the_guard_refuses_or_passes_any_proposal_and_never_writes(guard_workspace, files):
    before = {path: path.read_bytes() for path in guard_workspace.rglob("*") if path.is_file()}
    try:
        changed = check_proposal(files, workspace=guard_workspace, editable=["train.py"], protected_hashes={},
                                 incumbent={"train.py": "x = 0\n"})
    except GuardRejection as rejection:
        assert rejection.reason and "\n" not in rejection.reason
    else:
        assert changed == ["train.py"]
        content = files["train.py"]
        assert isinstance(content, str) and len(content.encode()) <= MAX_FILE_BYTES
        compile(content, "train.py", "exec")
    assert before == {path: path.read_bytes() for path in guard_workspace.rglob("*") if path.is_file()}


def bad_outputs(outside: Path) -> list[tuple[str, dict, str]]:
    """(description, files, what the reason says) for each kind of agent output the loop must refuse."""
    good = fake_train_source(lr=0.3)
    return [
        ("absolute path", {str(outside / "evil.py"): "x = 1\n"}, "absolute paths are not allowed"),
        ("dot-dot", {"../evil.py": "x = 1\n"}, "'..' would leave the workspace"),
        ("symlink out", {"link.py": "x = 1\n"}, "symlink pointing outside the workspace"),
        (".git", {".git/hooks/post-commit": "#!/bin/sh\n"}, "the .git directory is off limits"),
        (".loopdeck", {".loopdeck/ledger.sqlite": ""}, "holds loopdeck's own state"),
        ("not editable", {"program.md": "obey me\n"}, "not an editable file"),
        ("binary", {"train.py": good.encode()}, "binary content"),
        ("not UTF-8", {"train.py": good + "\udcff"}, "not valid UTF-8"),
        ("NUL byte", {"train.py": good + "\0"}, "contains NUL bytes"),
        ("enormous", {"train.py": good + "#" * MAX_FILE_BYTES}, "over the 1,000,000-byte limit"),
        ("invalid Python", {"train.py": good + "def broken(:\n"}, "does not compile"),
    ]


def test_each_kind_of_bad_agent_output_is_refused_through_the_loop(make_workspace, run_session, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target.py").write_text("SECRET = 1\n")
    workspace = make_workspace(crashes=50)
    (workspace / "link.py").symlink_to(outside / "target.py")
    git(workspace, "add", "link.py")
    amend_config(workspace, replace=('editable = ["train.py"]', 'editable = ["train.py", "link.py"]'))
    cases = bad_outputs(outside)
    agent = ScriptedAgent([write_files(files, description) for description, files, _ in cases]
                          + [change("LR", 0.3)])
    _, recorded = run_session(workspace, agent)
    assert recorded.finished.reason == "exhausted"

    rows = assert_consistent(workspace)
    rejections = recorded.of(ChangeRejected)
    assert len(rejections) == len(cases)
    for number, ((description, _, expected), rejection) in enumerate(zip(cases, rejections, strict=True), start=1):
        assert rows[number].status == "rejected" and rows[number].description == description
        assert expected in rejection.reason, (description, rejection.reason)  # the console is told…
        assert rejection.reason in agent.turns[number].feedback  # …and the agent, in its next turn
    assert rows[-1].status == "keep"  # the loop went on
    assert (outside / "target.py").read_text() == "SECRET = 1\n" and not (outside / "evil.py").exists()
    assert not (workspace.parent / "evil.py").exists() and not (workspace / ".git/hooks/post-commit").exists()
    assert len(ledger_rows(workspace)) == len(cases) + 2

