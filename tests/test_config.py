"""loopdeck.toml: validation messages, the default file, and inference for autoresearch-style repositories."""

from __future__ import annotations

import stat
import sys
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopdeck.engine.config import DEFAULT_PATTERN, Config, default_toml, load_config, parse_config
from loopdeck.engine.errors import LoopdeckError


def _error(text: str) -> str:
    with pytest.raises(LoopdeckError) as info:
        parse_config(text)
    return str(info.value)


def test_default_toml_round_trips_to_the_defaults() -> None:
    text = default_toml()
    assert parse_config(text) == Config()
    # every setting is visible and commented
    for name in ("editable", "protected", "command", "budget_seconds", "timeout_seconds", "pattern", "direction",
                 "max_experiments", "kind", "model", "base_url"):
        line = next(line for line in text.splitlines() if line.startswith(f"{name} ="))
        assert "#" in line.split("=", 1)[1]
    # the approval default depends on the mode (console: ask, headless: auto), so it is shown but left unset
    assert '# approval = "ask"' in text
    assert "approval" not in parse_config(text).loop.model_fields_set
    assert "approval" in parse_config(default_toml(approval="ask")).loop.model_fields_set


def test_default_toml_overrides_and_awkward_strings() -> None:
    data = 'C:\\corpus "quoted" \x7f'
    text = default_toml(budget_seconds=5, data=data, kind="offline", approval="auto", env={"A B": "x'y"})
    config = parse_config(text)
    assert config.experiment.budget_seconds == 5.0
    assert config.experiment.data == data
    assert config.experiment.env == {"A B": "x'y"}
    assert (config.agent.kind, config.loop.approval) == ("offline", "auto")
    assert config.metric.pattern == DEFAULT_PATTERN
    with pytest.raises(TypeError):
        default_toml(budget=5)


def test_load_config_reads_the_file(tmp_path: Path) -> None:
    (tmp_path / "loopdeck.toml").write_text(default_toml(budget_seconds=2.5))
    (tmp_path / "train.py").write_text("print('val_bpb: 1.0')\n")
    config, notes = load_config(tmp_path)
    assert config.experiment.budget_seconds == 2.5 and notes == []


@pytest.mark.parametrize(("toml", "expected"), [
    ("[experiment]\nbudget_seconds = -3", "experiment.budget_seconds: must be > 0, got -3"),
    ("[experiment]\nbudget_seconds = nan", "experiment.budget_seconds: must be a finite number"),
    ("[experiment]\nbudget_seconds = '60'", "experiment.budget_seconds: expected a number, got str '60'"),
    ("[loop]\napproval = 'sometimes'", "loop.approval: must be one of 'ask' or 'auto', got 'sometimes'"),
    ("[metric]\ndirection = 'down'", "metric.direction: must be one of 'minimize' or 'maximize'"),
    # A prefix: more agent kinds join the list (claude-code, codex, openai), the ones before stay.
    ("[agent]\nkind = 'gpt'", "agent.kind: must be one of 'auto', 'offline', 'claude',"),
    ("[agent.claude]\neffort = 'extreme'", "agent.claude.effort: must be one of 'low', 'medium', 'high', 'xhigh' or 'max'"),
    ("[loop]\nmax_experiments = 1.5", "loop.max_experiments: expected a whole number"),
    ("[loop]\nmax_experiments = true", "loop.max_experiments: expected a whole number"),
    ("[loop]\nmax_consecutive_crashes = 0", "loop.max_consecutive_crashes: must be >= 1, got 0"),
    ("[loop]\ntag = 'a b'", "loop.tag: must be letters, digits"),
    ("[experiment]\nbudget = 5", "experiment.budget: unknown setting; allowed here: editable, protected, command"),
    ("[experimnet]\nbudget_seconds = 5", "experimnet: unknown section; allowed: experiment, metric, loop, agent"),
    ("[agent.claude]\ntemperature = 1", "agent.claude.temperature: unknown setting; allowed here: model"),
    ("experiment = 3", "experiment: expected a table"),
    ("[experiment]\neditable = []", "experiment.editable: must not be empty"),
    ("[experiment]\neditable = ['../x.py']", "experiment.editable: must be a relative path inside the workspace"),
    ("[experiment]\neditable = ['.git/config']", "must be a relative path inside the workspace"),
    ("[experiment]\nprotected = ['/etc/passwd']", "experiment.protected: must be a relative path"),
    ("[experiment]\neditable = [3]", "experiment.editable[0]: expected a string, got int 3"),
    ("[experiment]\ncommand = ['']", "experiment.command: the program to run must not be empty"),
    ("[experiment]\nenv = { A = 1 }", "experiment.env.A: expected a string, got int 1"),
    ("[metric]\npattern = '(unclosed'", "metric.pattern: is not a valid regular expression"),
    ("[metric]\npattern = '^val_bpb: \\S+'", "metric.pattern: needs a capture group"),
])
def test_bad_values_name_the_field_and_the_allowed_values(toml: str, expected: str) -> None:
    message = _error(toml)
    assert expected in message
    assert message.startswith("loopdeck.toml: ")
    assert "Traceback" not in message and "pydantic" not in message


def test_several_problems_are_all_reported() -> None:
    message = _error("[experiment]\nbudget_seconds = 0\n[loop]\napproval = 'x'\n")
    assert "experiment.budget_seconds" in message and "loop.approval" in message


def test_invalid_toml_reports_the_line() -> None:
    message = _error("[experiment]\nbudget_seconds = = 3\n")
    assert "invalid TOML" in message and "line 2" in message


def test_timeout_and_command() -> None:
    config = parse_config("[experiment]\nbudget_seconds = 10\ncommand = ['{python}', 'train.py', '--x={python}']")
    assert config.timeout() == 10 * 3 * 2 + 120  # the process clock's budget may take 3× its wall time
    assert config.updated(budget_clock="wall").timeout() == 140.0
    assert config.command_argv() == [sys.executable, "train.py", f"--x={sys.executable}"]
    assert parse_config("[experiment]\ntimeout_seconds = 7").timeout() == 7.0


def test_updated_validates() -> None:
    config = Config().updated(budget_seconds=3, approval="auto", tag="night1")
    assert (config.experiment.budget_seconds, config.loop.approval, config.loop.tag) == (3.0, "auto", "night1")
    assert Config().experiment.budget_seconds == 60.0
    with pytest.raises(LoopdeckError, match="experiment.budget_seconds: must be > 0"):
        Config().updated(budget_seconds=-1)


def test_missing_editable_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "loopdeck.toml").write_text("[experiment]\neditable = ['model.py']\n")
    with pytest.raises(LoopdeckError, match="model.py not found"):
        load_config(tmp_path)


def test_unreadable_config(tmp_path: Path) -> None:
    (tmp_path / "loopdeck.toml").write_bytes(b"\xff\xfe[experiment]")
    with pytest.raises(LoopdeckError, match="cannot read"):
        load_config(tmp_path)


def _autoresearch_repo(root: Path, budget_line: str = "TIME_BUDGET = 300  # seconds") -> Path:
    (root / "train.py").write_text("print('---')\nprint('val_bpb: 1.0')\n")
    (root / "prepare.py").write_text(f"MAX_SEQ_LEN = 2048\n{budget_line}\n")
    (root / "program.md").write_text("# autoresearch\n")
    return root


def test_infers_an_autoresearch_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    config, notes = load_config(_autoresearch_repo(tmp_path, "TIME_BUDGET = 120"))
    assert config.experiment.editable == ["train.py"]
    assert config.experiment.protected == ["prepare.py"]
    assert config.command_argv() == [sys.executable, "train.py"]
    assert config.metric.pattern == DEFAULT_PATTERN and config.metric.direction == "minimize"
    assert config.experiment.budget_seconds == 120.0
    text = "\n".join(notes)
    assert "inferred" in text and "prepare.py" in text and "TIME_BUDGET in prepare.py" in text


def test_infers_uv_run_for_a_uv_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "repo").mkdir()
    repo = _autoresearch_repo(tmp_path / "repo")
    (repo / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (repo / "uv.lock").write_text("")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    config, notes = load_config(repo)
    assert config.command_argv()[0] == sys.executable
    assert not any("not on PATH" in note for note in notes)  # preflight says what a missing uv means, with the fix
    uv = bin_dir / "uv"
    uv.write_text("#!/bin/sh\n")
    uv.chmod(uv.stat().st_mode | stat.S_IEXEC)
    config, notes = load_config(repo)
    assert config.command_argv() == ["uv", "run", "train.py"]
    assert config.experiment.budget_seconds == 300.0


def test_directory_without_train_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(LoopdeckError, match=r"loopdeck init"):
        load_config(tmp_path)
    with pytest.raises(LoopdeckError, match="not a directory"):
        load_config(tmp_path / "missing")


_SCALARS = st.one_of(st.integers(-10**20, 10**20), st.floats(), st.booleans(), st.text(max_size=20),
                     st.lists(st.text(max_size=8), max_size=3), st.dictionaries(st.text(max_size=5),
                                                                              st.text(max_size=5), max_size=2))
_SECTIONS = {
    "experiment": ["editable", "protected", "command", "budget_seconds", "timeout_seconds", "data", "env",
                   "env_allow", "unknown"],
    "metric": ["name", "pattern", "direction", "min_improvement"],
    "loop": ["approval", "max_experiments", "max_hours", "max_consecutive_crashes", "tag"],
    "agent": ["kind", "seed", "claude"],
}


@st.composite
def _config_tables(draw: st.DrawFn) -> dict:
    table = {}
    for section in draw(st.lists(st.sampled_from([*_SECTIONS, "bogus"]), max_size=4, unique=True)):
        keys = _SECTIONS.get(section, ["x"])
        table[section] = {key: draw(_SCALARS) for key in draw(st.lists(st.sampled_from(keys), max_size=4,
                                                                          unique=True))}
    return table


def _toml_of(table: dict) -> str:
    from loopdeck.engine.config import toml_value

    lines = []
    for section, values in table.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_config_tables())
def test_arbitrary_settings_give_a_config_or_a_clear_error(table: dict) -> None:
    text = _toml_of(table)
    assert tomllib.loads(text) is not None
    try:
        config = parse_config(text)
    except LoopdeckError as exc:
        assert str(exc).startswith("loopdeck.toml: ") and "\n" not in str(exc)
    else:
        assert parse_config(default_toml(**_flatten(config))) == config


def _flatten(config: Config) -> dict:
    flat = {}
    for section in (config.experiment, config.metric, config.loop, config.agent, config.agent.claude):
        flat.update({k: v for k, v in section.model_dump().items() if not isinstance(v, dict) or k == "env"})
    return flat


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_gives_a_config_or_a_clear_error(text: str) -> None:
    try:
        parse_config(text)
    except LoopdeckError as exc:
        assert str(exc).startswith("loopdeck.toml: ")



def test_an_updated_config_still_knows_which_settings_were_set() -> None:
    config = parse_config("[loop]\nmax_hours = 2.0\n").updated(baseline_seeds=1)
    assert config.evaluation.baseline_seeds == 1 and config.loop.max_hours == 2.0
    assert "max_hours" in config.loop.model_fields_set and "approval" not in config.loop.model_fields_set
    assert "baseline_seeds" in config.evaluation.model_fields_set
