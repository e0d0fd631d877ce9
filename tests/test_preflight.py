"""Preflight: each problem of an autoresearch-layout repo found before the baseline, with its fix; `loopdeck
doctor`; a failed headless run's error printed once, on stderr."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from autoresearch_fixture import make_repo
from conftest import git

from loopdeck.cli.main import main
from loopdeck.engine.config import load_config
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.run import preflight as preflight_module
from loopdeck.engine.run.preflight import GPU_FIX, Preflight, preflight
from loopdeck.engine.session import Session
from loopdeck.engine.store.workspace import init_workspace

pytestmark = pytest.mark.timeout(120)

MISSING = "loopdeck_test_kernels"  # a module no machine has


def check(repo: Path) -> Preflight:
    return preflight(repo, load_config(repo)[0])


def found(report: Preflight, name: str) -> tuple[str, str]:
    (match,) = [item for item in report.checks if item.name == name]
    return match.level, match.line()


@pytest.fixture
def no_subprocess(monkeypatch) -> Callable[[], None]:
    """Call it once the repository is made (git runs as subprocesses): from then on a subprocess fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"preflight started a subprocess: {args}")

    return lambda: monkeypatch.setattr(subprocess, "run", refuse)


@pytest.fixture
def path_without_uv(tmp_path, monkeypatch) -> Path:
    """PATH = one folder holding only git (sessions need it), so `uv` is not there; returns that folder."""
    folder = tmp_path / "bin"
    folder.mkdir()
    git_program = _which("git")
    assert git_program
    (folder / "git").symlink_to(git_program)
    monkeypatch.setenv("PATH", str(folder))
    return folder


def _which(program: str) -> str:
    for folder in os.environ["PATH"].split(os.pathsep):
        candidate = Path(folder) / program
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return ""


def test_a_repo_that_can_run_passes_without_a_subprocess(tmp_path, no_subprocess):
    repo = make_repo(tmp_path / "repo")
    no_subprocess()
    report = check(repo)
    assert report.runnable and not report.warnings, report.checks
    assert found(report, "imports")[0] == "ok" and found(report, "data")[0] == "ok"


def test_the_built_in_gpt_target_passes_quickly_without_a_subprocess(tmp_path, no_subprocess):
    workspace = init_workspace(tmp_path / "gpt", approval="auto")
    no_subprocess()
    started = time.monotonic()
    report = check(workspace)
    assert time.monotonic() - started < 2.0
    assert report.runnable and not report.warnings, report.checks
    assert found(report, "cuda") == ("ok", "cuda: the code uses CUDA when present and falls back otherwise")


def test_a_missing_import_is_a_problem_with_its_pip_command(tmp_path):
    report = check(make_repo(tmp_path / "repo", missing_import=MISSING))
    level, line = found(report, "imports")
    assert level == "problem" and not report.runnable
    assert f"{MISSING} (train.py)" in line and line.endswith(f"fix: `pip install {MISSING}`")


def test_local_modules_and_relative_imports_are_not_checked(tmp_path, no_subprocess):
    repo = make_repo(tmp_path / "repo")
    (repo / "helpers").mkdir()
    (repo / "train.py").write_text("from __future__ import annotations\nimport helpers\nfrom prepare import x\n"
                                   "from . import sibling\ntry:\n    import " + MISSING + "\nexcept ImportError:\n"
                                   "    pass\n")
    no_subprocess()
    assert found(check(repo), "imports")[0] == "ok"


def test_another_python_is_asked_for_its_imports(tmp_path, monkeypatch):
    repo = make_repo(tmp_path / "repo", missing_import=MISSING)
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "python3").symlink_to(sys.executable)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    (repo / "loopdeck.toml").write_text('[experiment]\nprotected = ["prepare.py"]\ncommand = ["python3", '
                                        '"train.py"]\n')
    level, line = found(check(repo), "imports")
    assert level == "problem" and f"not installed for {folder / 'python3'}: {MISSING} (train.py)" in line


def test_a_run_command_not_on_path_is_a_problem(tmp_path):
    repo = make_repo(tmp_path / "repo")
    (repo / "loopdeck.toml").write_text('[experiment]\ncommand = ["no-such-launcher", "train.py"]\n')
    level, line = found(check(repo), "command")
    assert level == "problem" and "`no-such-launcher` (the run command) is not on PATH" in line


def test_cuda_only_code_on_a_machine_without_a_gpu_is_a_problem(tmp_path, monkeypatch, no_subprocess):
    monkeypatch.setattr(preflight_module, "nvidia_driver_present", lambda: False)
    cuda_repo, cpu_repo = make_repo(tmp_path / "repo", cuda_only=True), make_repo(tmp_path / "cpu")
    no_subprocess()
    level, line = found(check(cuda_repo), "cuda")
    assert level == "problem" and "train.py:" in line and line.endswith(f"fix: {GPU_FIX}")
    assert not [item for item in check(cpu_repo).checks if item.name == "cuda"]  # no CUDA use: no cuda line


@pytest.mark.parametrize("torch_sees_gpu, level", [(False, "problem"), (True, "ok"), (None, "warning")])
def test_with_a_driver_the_runs_python_is_asked_whether_torch_sees_the_gpu(tmp_path, monkeypatch,
                                                                           torch_sees_gpu, level):
    asked = []
    monkeypatch.setattr(preflight_module, "nvidia_driver_present", lambda: True)
    monkeypatch.setattr(preflight_module, "cuda_available", lambda python: asked.append(python) or torch_sees_gpu)
    found_level, line = found(check(make_repo(tmp_path / "repo", cuda_only=True)), "cuda")
    assert found_level == level and asked == [sys.executable]
    if level == "problem":
        assert "cannot use the GPU" in line and "install a CUDA build of torch" in line


def test_the_cuda_probe_answers_for_this_python():
    assert preflight_module.cuda_available(sys.executable) in (True, False)
    assert preflight_module.cuda_available(str(Path(sys.executable).parent / "no-such-python")) is None


def test_a_uv_project_without_uv_is_a_warning_naming_the_python_used(tmp_path, path_without_uv):
    report = check(make_repo(tmp_path / "repo", uv_project=True))
    level, line = found(report, "uv")
    assert report.runnable and level == "warning"
    assert f"loopdeck's own Python ({sys.executable}) runs it" in line and line.endswith("then `uv sync`")


def test_a_uv_project_without_uv_fixes_missing_imports_and_data_with_uv(tmp_path, path_without_uv):
    repo = make_repo(tmp_path / "repo", uv_project=True, missing_import=MISSING,
                     cache_dir=tmp_path / "not-prepared")
    report = check(repo)
    assert found(report, "imports")[1].endswith("fix: `uv sync`")
    assert found(report, "data")[1].endswith("fix: `uv run prepare.py`")


def test_a_uv_project_with_uv_and_no_environment_yet_suggests_uv_sync(tmp_path, monkeypatch, no_subprocess):
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "uv").write_text("#!/bin/sh\nexit 0\n")
    (folder / "uv").chmod(0o755)
    repo = make_repo(tmp_path / "repo", uv_project=True, missing_import=MISSING)
    monkeypatch.setenv("PATH", str(folder))
    no_subprocess()
    report = check(repo)
    assert found(report, "command")[1].startswith("command: `uv run train.py` runs")
    assert found(report, "imports") == ("ok", "imports: installed by uv from uv.lock")
    assert found(report, "uv")[0] == "warning" and found(report, "uv")[1].endswith("fix: `uv sync`")


def test_a_missing_data_cache_is_a_problem_with_the_prepare_command(tmp_path):
    report = check(make_repo(tmp_path / "repo", cache_dir=tmp_path / "not-prepared"))
    level, line = found(report, "data")
    assert level == "problem" and not report.runnable
    assert f"CACHE_DIR {tmp_path / 'not-prepared'} (prepare.py) does not exist" in line
    assert line.endswith("fix: `python prepare.py`")


def test_autoresearchs_cache_expression_is_read_from_the_protected_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    repo = make_repo(tmp_path / "repo")
    prepare = (repo / "prepare.py").read_text().splitlines()
    prepare = [line for line in prepare if not line.startswith("CACHE_DIR")]
    (repo / "prepare.py").write_text("\n".join([
        *prepare, 'CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "autoresearch")',
        'DATA_DIR = os.path.join(CACHE_DIR, "data")', ""]))
    assert found(check(repo), "data")[1] == ("data: CACHE_DIR ~/.cache/autoresearch (prepare.py) does not exist: "
                                             "the data is not prepared — fix: `python prepare.py`")
    (tmp_path / "home/.cache/autoresearch").mkdir(parents=True)
    assert "DATA_DIR ~/.cache/autoresearch/data" in found(check(repo), "data")[1]  # prepared only halfway
    (tmp_path / "home/.cache/autoresearch/data").mkdir()
    assert found(check(repo), "data")[0] == "ok"


def test_a_session_stops_before_anything_runs_with_one_error(tmp_path):
    repo = make_repo(tmp_path / "repo", missing_import=MISSING, cache_dir=tmp_path / "not-prepared")
    with pytest.raises(LoopdeckError) as raised:
        Session(repo)
    message = str(raised.value)
    assert "\n" not in message and f"`pip install {MISSING}`" in message and "`python prepare.py`" in message
    assert f"`loopdeck doctor {repo}` lists every check" in message
    assert git(repo, "branch", "--list", "loopdeck/*") == "" and not (repo / ".loopdeck").exists()


def test_preflight_warnings_are_session_notes(tmp_path, path_without_uv):
    session = Session(make_repo(tmp_path / "repo", uv_project=True))
    try:
        assert any(note.startswith("uv: a uv project") for note in session.config_notes)
    finally:
        session.close()


def test_headless_run_refused_by_preflight_prints_one_line_on_stderr(tmp_path, capsys):
    repo = make_repo(tmp_path / "repo", missing_import=MISSING)
    code = main(["run", str(repo), "--headless", "--max-experiments", "1"])
    out, err = capsys.readouterr()
    assert code == 2 and "error" not in out
    assert err.startswith("loopdeck: error: ") and len(err.strip().splitlines()) == 1 and MISSING in err


def test_a_failed_headless_run_prints_its_error_once_on_stderr(tmp_path, capsys):
    repo = make_repo(tmp_path / "repo")
    (repo / "train.py").write_text('import sys\n\nsys.exit("no metric today")\n')
    git(repo, "commit", "-qam", "a train.py that fails")
    code = main(["run", str(repo), "--headless", "--max-experiments", "1"])
    out, err = capsys.readouterr()
    assert code == 2 and "loopdeck: error" not in out, out
    assert err.startswith("loopdeck: error: the baseline run failed") and len(err.strip().splitlines()) == 1


def test_doctor_prints_every_check_and_exits_0_when_runnable(tmp_path, capsys):
    repo = make_repo(tmp_path / "repo")
    assert main(["doctor", str(repo)]) == 0
    out = capsys.readouterr().out
    assert "ok       imports: " in out and "ok       data: " in out and out.rstrip().endswith(
        f"can run here (`loopdeck run {repo}`)")


def test_doctor_exits_1_with_each_problem_and_its_fix(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(preflight_module, "nvidia_driver_present", lambda: False)
    repo = make_repo(tmp_path / "repo", missing_import=MISSING, cuda_only=True)
    assert main(["doctor", str(repo)]) == 1
    out = capsys.readouterr().out
    assert f"problem  imports: not installed for loopdeck's own Python ({sys.executable}): {MISSING}" in out
    assert "problem  cuda: CUDA is required (train.py:" in out and "2 problems: apply the fixes above" in out
    assert main(["doctor", str(tmp_path / "empty-dir-that-is-no-repo")]) == 1


def test_a_workspace_of_an_earlier_loopdeck_is_told_to_migrate_not_to_install_gpt(tmp_path):
    from loopdeck.engine.config import default_toml

    workspace = make_repo(tmp_path / "old")
    (workspace / "train.py").write_text("import torch\nfrom gpt.harness import MAX_SEQ_LEN\nprint(MAX_SEQ_LEN)\n")
    (workspace / "loopdeck.toml").write_text(default_toml())
    git(workspace, "add", "-A")
    git(workspace, "commit", "-qm", "a workspace as an earlier loopdeck made it")
    with pytest.raises(LoopdeckError, match=f"run `loopdeck migrate {workspace}`"):
        Session(workspace)


def test_a_relative_run_command_is_looked_up_in_the_workspace(tmp_path, monkeypatch):
    repo = make_repo(tmp_path / "repo")
    (repo / "env/bin").mkdir(parents=True)
    (repo / "env/bin/python").symlink_to(sys.executable)
    (repo / "loopdeck.toml").write_text('[experiment]\nprotected = ["prepare.py"]\ncommand = ["env/bin/python", '
                                        '"train.py"]\n')
    monkeypatch.chdir(tmp_path)
    report = check(repo)
    assert found(report, "command") == ("ok", f"command: `env/bin/python train.py` runs {repo / 'env/bin/python'}")
    assert found(report, "imports")[0] == "ok"
