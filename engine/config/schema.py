"""The settings schema (pydantic): every section and setting of loopdeck.toml, validated with one-line errors."""

from __future__ import annotations

import functools
import json
import re
import sys
from pathlib import PurePosixPath
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from loopdeck.engine.errors import LoopdeckError

CONFIG_FILE = "loopdeck.toml"
STATE_DIR = ".loopdeck"  # run state inside a workspace, never in git
DEFAULT_PATTERN = r"^val_bpb:\s*([-+0-9.eE]+|nan|inf)"
# autoresearch's prepare.py fixes a 5-minute budget; used when a foreign repo does not say otherwise.
AUTORESEARCH_BUDGET = 300.0

# The one definition of each choice; the command line offers exactly these (`get_args` turns them into tuples).
AgentKind = Literal["auto", "offline", "claude", "openai", "claude-code", "codex"]
ApprovalPolicy = Literal["ask", "auto"]
PipelineMode = Literal["auto", "on", "off"]
WorkerBackend = Literal["local", "ray"]
AGENT_KINDS: tuple[str, ...] = get_args(AgentKind)
APPROVALS: tuple[str, ...] = get_args(ApprovalPolicy)
PIPELINE_MODES: tuple[str, ...] = get_args(PipelineMode)
SCALES = (2.0, 4.0)  # what `loopdeck transfer --scale` offers: 2x, 4x
SCALE_RULES = ("x",)  # how a scale knob grows: "x" = multiplied by the scale
WORKER_BACKENDS: tuple[str, ...] = get_args(WorkerBackend)
BudgetClockKind = Literal["process", "wall"]
BUDGET_CLOCKS: tuple[str, ...] = get_args(BudgetClockKind)
# Wall seconds one second of a process-clock budget may take: that clock stops while the run waits for a CPU, and a
# neighbour as busy as a 2-core hog halves what the run gets. The timeout and the outside budget check allow it.
PROCESS_CLOCK_STRETCH = 3.0
OfflineSearch = Literal["rules", "tpe"]
OFFLINE_SEARCHES: tuple[str, ...] = get_args(OfflineSearch)


def _relative_path(value: str) -> str:
    """A workspace file path: relative, posix, inside the workspace, not in .git or .loopdeck."""
    parts = PurePosixPath(value).parts
    if (not value or "\\" in value or value.startswith("/") or ".." in parts or str(PurePosixPath(value)) != value
            or parts[0] in (".git", STATE_DIR)):
        raise ValueError(f"must be a relative path inside the workspace such as 'train.py', got {value!r}")
    return value


def _price_table(prices: dict[str, float], allowed: tuple[str, ...]) -> dict[str, float]:
    """A `prices` setting: $ per million tokens for the kinds of token this agent is billed for, none negative."""
    unknown = sorted(set(prices) - set(allowed))
    if unknown:
        raise ValueError(f"unknown price {unknown[0]!r}; allowed: {', '.join(allowed)}")
    if any(v < 0 for v in prices.values()):
        raise ValueError("prices must be >= 0")
    return prices


class _Section(BaseModel):
    # strict: TOML is typed, so "60" for a number is a mistake worth reporting rather than coercing.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class ExperimentSettings(_Section):
    """What an experiment is: which files change, how it runs, for how long."""

    editable: list[str] = Field(default=["train.py"], min_length=1,
                                description="files the agent may change (relative to this directory)")
    protected: list[str] = Field(default=[], description="files hashed at session start and checked before every run")
    command: list[str] = Field(default=["{python}", "train.py"], min_length=1,
                               description="the run command; {python} = the interpreter loopdeck runs under")
    budget_seconds: float = Field(default=60.0, gt=0, description="training time budget per experiment, in seconds")
    budget_clock: BudgetClockKind = Field(
        default="process", description="what times the budget: process (CPU seconds of the run / its threads; on "
        "CUDA the GPU's time: a busy machine cannot change a run's steps) | wall (needed by targets that never read "
        "LOOPDECK_BUDGET_CLOCK)")
    timeout_seconds: float = Field(default=0.0, ge=0, description="0 = budget*2 + 120 (start-up, compile, "
                                   "evaluation; the budget counted 3× on the process clock); then the whole "
                                   "process group is killed")
    data: str = Field(default="", description='training corpus, passed as LOOPDECK_DATA; "" = the embedded corpus')
    warm_runner: Literal["auto", "off"] = Field(
        default="auto", description='"auto": fork each run of a loopdeck harness from a process that has imported '
        "torch and loaded the data (starts in milliseconds; others start fresh, and each run's log says which); "
        '"off": a fresh process for every run')
    env: dict[str, str] = Field(default={}, description="extra environment variables for the training process")
    env_allow: list[str] = Field(default=[], description="variables passed through the credential scrub "
                                 "(names containing KEY, TOKEN, SECRET, PASSWORD, … are removed otherwise)")
    protected_sha256: dict[str, str] = Field(default={}, description="pinned sha256 of protected files: a session "
                                             "refuses to start when one differs (written by loopdeck init)")

    scale_knobs: dict[str, str] = Field(
        default={}, description='size constants `loopdeck transfer` scales with the budget, e.g. { DEPTH = "x" } '
        '("x": multiplied by the scale); {} = the budget only. `loopdeck init` declares DEPTH')

    @field_validator("editable", "protected")
    @classmethod
    def _paths(cls, paths: list[str]) -> list[str]:
        for path in paths:
            _relative_path(path)
        if len(set(paths)) != len(paths):
            raise ValueError(f"lists a file twice: {paths}")
        return paths

    @field_validator("protected_sha256")
    @classmethod
    def _pins(cls, pins: dict[str, str]) -> dict[str, str]:
        for path, digest in pins.items():
            _relative_path(path)
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError(f"{path}: expected a sha256 as 64 lowercase hex digits, got {digest!r}")
        return pins

    @model_validator(mode="after")
    def _pins_are_protected(self) -> ExperimentSettings:
        unlisted = sorted(set(self.protected_sha256) - set(self.protected))
        if unlisted:
            raise ValueError(f"protected_sha256 pins {', '.join(unlisted)}, which [experiment] protected does not "
                             "list")
        return self

    @field_validator("scale_knobs")
    @classmethod
    def _scale_knobs(cls, knobs: dict[str, str]) -> dict[str, str]:
        for name, rule in knobs.items():
            if not name.isidentifier() or rule not in SCALE_RULES:
                raise ValueError(f'each entry is NAME = "x" (a module-level constant of an editable file, multiplied '
                                 f'by the scale), got {name} = {rule!r}')
        return knobs

    @field_validator("command")
    @classmethod
    def _command(cls, argv: list[str]) -> list[str]:
        if not argv[0].strip():
            raise ValueError("the program to run must not be empty")
        return argv


class MetricSettings(_Section):
    """How the experiment's score is read from its output."""

    name: str = Field(default="val_bpb", min_length=1, description="the metric's name (shown and recorded)")
    pattern: str = Field(default=DEFAULT_PATTERN, description="regex matched per line of the output; the last "
                         "match's first group is the metric")
    direction: Literal["minimize", "maximize"] = Field(default="minimize", description="minimize | maximize")
    min_improvement: float = Field(default=0.0, ge=0, description="a change must beat the incumbent by more "
                                   "than this to be kept")

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, pattern: str) -> str:
        try:
            compiled = re.compile(pattern, re.MULTILINE)
        except re.error as exc:
            raise ValueError(f"is not a valid regular expression ({exc}), got {pattern!r}") from None
        if compiled.groups < 1:
            raise ValueError(f"needs a capture group around the number, e.g. '^val_bpb:\\s*(\\S+)', got {pattern!r}")
        return pattern


class LoopSettings(_Section):
    """When the loop asks, and when it stops."""

    approval: ApprovalPolicy = Field(default="ask", description="ask (a person approves each change) | "
                                     "auto; unset: ask in the console, auto headless")
    max_experiments: int = Field(default=0, ge=0, description="0 = no limit (the baseline is not counted)")
    max_hours: float = Field(default=0.0, ge=0, description="0 = no limit")
    max_consecutive_crashes: int = Field(default=5, ge=1, description="stop after this many failed runs in a row")
    pipeline: PipelineMode = Field(
        default="auto", description="draft the next proposal while an experiment trains: on | off | auto (on once "
        "the agent's proposals take more than 10% of budget_seconds)")
    tag: str = Field(default="", description='research branch loopdeck/<tag>; "" = today\'s date (YYYYMMDD)')

    @field_validator("tag")
    @classmethod
    def _tag(cls, tag: str) -> str:
        if tag and (not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", tag) or ".." in tag
                    or tag.endswith((".", ".lock"))):
            raise ValueError(f"must be letters, digits, '.', '_' or '-' (a git branch name part), got {tag!r}")
        return tag


class ClaudeSettings(_Section):
    """The Claude agent (used when [agent] kind is claude, or auto with ANTHROPIC_API_KEY set)."""

    model: str = Field(default="claude-sonnet-5-5", min_length=1, description="Anthropic model id")
    max_tokens: int = Field(default=16000, gt=0, description="output token cap per turn")
    thinking: Literal["adaptive", "enabled", "between_tools", "disabled"] = Field(
        default="adaptive",
        description="adaptive | enabled | between_tools | disabled (some models refuse disabled: use between_tools)")
    effort: Literal["low", "medium", "high", "xhigh", "max"] = Field(default="medium",
                                                                    description="low | medium | high | xhigh | max")
    budget_usd: float = Field(default=0.0, ge=0, description="0 = no cap; the session stops cleanly when spent")
    budget_tokens: int = Field(default=0, ge=0, description="0 = no cap")
    base_url: str = Field(default="", description='"" = the SDK default')
    prices: dict[str, float] = Field(default={}, description="$ per million tokens overriding the built-in dated "
                                     "table: input, output, cache_write, cache_read")
    outage_max_wait_seconds: float = Field(default=120.0, gt=0, description="an outage of the API is waited out, "
                                           "never counted as crashes; the wait between tries doubles up to this")
    fallback_model: str = Field(default="", description="a second model, asked for the rest of a turn when the "
                                "reworded retry after a refusal is refused too (checked at start like model); "
                                '"" = none, the turn is dropped')

    @field_validator("prices")
    @classmethod
    def _prices(cls, prices: dict[str, float]) -> dict[str, float]:
        return _price_table(prices, ("input", "output", "cache_write", "cache_read"))


class OpenAISettings(_Section):
    """The agent on any OpenAI-compatible endpoint, hosted or local (Ollama, vLLM, llama.cpp, LM Studio)."""

    base_url: str = Field(default="", description='e.g. "http://localhost:11434/v1" for Ollama; "" = '
                          "OPENAI_BASE_URL, else api.openai.com")
    model: str = Field(default="", description='model id as the server names it; "" = the one model the '
                       "server lists")
    api_key_env: str = Field(default="OPENAI_API_KEY", min_length=1, description="environment variable holding "
                             "the key (a local server without one needs none)")
    compact: bool = Field(default=False, description="true = a shorter system prompt and simpler tool schemas, "
                          "for small (local) models")
    max_tokens: int = Field(default=0, ge=0, description="output token cap per request; 0 = the server's default")
    budget_usd: float = Field(default=0.0, ge=0, description="0 = no cap; needs prices")
    budget_tokens: int = Field(default=0, ge=0, description="0 = no cap")
    prices: dict[str, float] = Field(default={}, description="$ per million tokens: input, output, cache_read "
                                     "(no built-in table: a local model costs nothing)")

    @field_validator("prices")
    @classmethod
    def _prices(cls, prices: dict[str, float]) -> dict[str, float]:
        return _price_table(prices, ("input", "output", "cache_read"))


class CliAgentSettings(_Section):
    """A coding-agent CLI as the agent (used when [agent] kind is claude-code or codex)."""

    executable: str = Field(default="", description='the CLI to run; "" = claude or codex on PATH')
    turn_timeout_seconds: float = Field(default=900.0, gt=0, description="a turn still running after this "
                                        "long is killed (its whole process group) and counts as a failed turn")
    allowed_tools: list[str] = Field(default=["Read", "Edit", "Write"], min_length=1,
                                     description="claude-code's --allowedTools (codex: its workspace-write sandbox)")
    pass_api_key: bool = Field(default=False, description="claude-code: false = ANTHROPIC_API_KEY is removed from "
                               "the CLI's environment, so it uses its own login (your subscription); true = the "
                               "CLI bills that API key per token")


class OfflineSettings(_Section):
    """The built-in offline agent's search (engine/agents/offline/)."""

    search: OfflineSearch = Field(default="rules", description="rules (hand-written one-knob-at-a-time moves) | "
                                  "tpe (Optuna's TPE over the same knobs; needs pip install 'loopdeck[optuna]')")


class AgentSettings(_Section):
    """Who proposes the changes."""

    kind: AgentKind = Field(default="auto", description="auto (claude if ANTHROPIC_API_KEY is set, else "
                            "offline) | offline | claude | openai | claude-code | codex")
    seed: int = Field(default=0, ge=0, description="seed of the offline agent's search")
    claude: ClaudeSettings = Field(default_factory=ClaudeSettings)
    openai: OpenAISettings = Field(default_factory=OpenAISettings)
    cli: CliAgentSettings = Field(default_factory=CliAgentSettings)
    offline: OfflineSettings = Field(default_factory=OfflineSettings)


class SandboxSettings(_Section):
    """Containment of the training process (Linux; what it guarantees and what not: engine/run/sandbox.py)."""

    network: bool = Field(default=True, description="false = training runs in its own network namespace: no "
                          "internet, no LAN, not even the host's 127.0.0.1")
    memory_mb: int = Field(default=0, ge=0, description="per-process memory cap (RLIMIT_DATA); 0 = no limit")
    cpu_seconds: int = Field(default=0, ge=0, description="per-process CPU-time cap (RLIMIT_CPU); 0 = no limit")
    max_processes: int = Field(default=0, ge=0, description="processes + threads of the run (RLIMIT_NPROC); "
                               "0 = no limit")


class EvaluationSettings(_Section):
    """Research integrity: how runs are scored, how noise is handled, doomed runs, the holdout split."""

    mode: Literal["auto", "trusted", "self_reported"] = Field(
        default="auto", description="trusted: a separate process scores the saved weights with the protected "
        "harness (GPT target) | self_reported: the number the run prints | auto: trusted when train.py imports "
        "the workspace's harness.py and saves model.pt, else self_reported")
    mismatch_tolerance: float = Field(default=0.001, ge=0, description="a printed metric further than this from "
                                      "the trusted score is flagged on the experiment")
    eval_timeout_seconds: float = Field(default=300.0, gt=0, description="the trusted evaluation process is "
                                        "killed after this long")
    startup_allowance_seconds: float = Field(
        default=60.0, ge=0, description="wall time a run may take beyond budget_seconds (start-up, compilation, "
        "final evaluation; at least twice the baseline's own overhead) before it is rejected for ignoring its "
        "budget")
    evaluate_once: bool = Field(default=True, description="trusted mode: a run's own final evaluation scores a "
                                "short subset only (a tamper check against the trusted score of the same tokens), "
                                "since the trusted evaluator scores it in full; false = both evaluate in full")
    baseline_seeds: int = Field(default=3, ge=1, description="baseline runs with different seeds to measure the "
                                "run-to-run noise (each extra one costs a run; 1 = noise not measured)")
    noise_drift: float = Field(default=0.1, ge=0, description="re-measure the noise on the incumbent once its "
                               "metric has moved this fraction away from the mean it was measured at (0 = never)")
    confirm_multiple: float = Field(default=2.0, ge=0, description="an improvement within this many noise "
                                    "standard deviations is re-run before it can be kept")
    confirm_runs: int = Field(default=2, ge=1, description="fresh-seed re-runs of a candidate within the noise")
    paired: bool = Field(default=False, description="re-run the incumbent with the same fresh seeds too, and "
                         "compare run by run")
    allow_seed_changes: bool = Field(default=False, description="false = a change that only alters a *SEED* "
                                     "constant or a seed() call is refused")
    allow_cosmetic_changes: bool = Field(default=False, description="false = a change that only alters "
                                         "whitespace, comments or docstrings is refused")
    early_abort: bool = Field(default=True, description="stop a run whose loss falls clearly behind the "
                              "incumbent's at the same training time")
    abort_after_fraction: float = Field(default=0.5, ge=0, le=1, description="early abort is considered only "
                                        "past this fraction of the budget")
    abort_margin: float = Field(default=0.1, gt=0, description="behind = loss more than this fraction above the "
                                "incumbent's")
    abort_sustain_points: int = Field(default=10, ge=1, description="consecutive behind loss records before a "
                                      "run is stopped")
    holdout_every: int = Field(default=5, ge=0, description="score the incumbent on the holdout split every this "
                               "many kept experiments (and at the end; 0 = only at the end); trusted mode only")
    transfer_warning: float = Field(default=0.5, ge=0, description="warn when the holdout gain since the "
                                    "baseline is below this fraction of the validation gain")


class ResearchSettings(_Section):
    """How the research planner steers each turn (engine/research/planner.py), and the studies of the kept chain:
    ablation (`loopdeck ablate`) and the scale-transfer check (`loopdeck transfer`)."""

    planner: bool = Field(default=True, description="true = each turn has a mode (explore | exploit | combine | "
                          "ablate) chosen from the history; false = plain greedy turns")
    plateau_k: int = Field(default=5, ge=1, description="a plateau: this many experiments without a keep (or keeps "
                           "gaining less than the noise band); the planner then changes direction")
    near_miss_band: float = Field(default=0.0, ge=0, description="± band of a near-miss when the noise is not "
                                  "measured; 0 = 0.5% of the incumbent metric")
    skip_repeats: bool = Field(default=True, description="true = an idea already tried against the incumbent "
                               "(same code, same direction, not kept) is rejected before it runs; false = flagged")

    study_seeds: int = Field(default=3, ge=1, description="runs per variant in an ablation or transfer study, the "
                             "same seeds for every variant (compared run by run)")
    transfer_every: int = Field(default=0, ge=0, description="run the scale-transfer check every this many kept "
                                "experiments (0 = only when asked: `loopdeck transfer`)")
    transfer_scale: float = Field(default=2.0, gt=1, description="the scale of the automatic transfer check: "
                                  "budget and scale_knobs multiplied by it")

    @field_validator("transfer_scale")
    @classmethod
    def _scale(cls, scale: float) -> float:
        if scale not in SCALES:
            raise ValueError(f"must be one of {', '.join(f'{s:g}' for s in SCALES)}, got {scale:g}")
        return scale


class NotifySettings(_Section):
    """Messages when you are away, through apprise (pip install 'loopdeck[notify]'): Slack, Discord, ntfy, e-mail…"""

    urls: list[str] = Field(default=[], description='apprise URLs, e.g. ["ntfy://ntfy.sh/my-topic"]; also from '
                            "LOOPDECK_NOTIFY_URLS, which keeps tokens out of this file")
    approval_wait_minutes: float = Field(default=10.0, ge=0, description="a diff waiting for approval this long "
                                         "sends a message; 0 = never")
    new_best: bool = Field(default=True, description="a kept experiment (a new best) sends a message")
    crash_streak: int = Field(default=3, ge=0, description="this many failed experiments in a row send a message; "
                              "0 = never")
    agent_outage: bool = Field(default=True, description="a turn lost to an outage of the agent's service, or "
                               "refused by the agent, sends a message (once until the agent proposes again)")
    session_end: bool = Field(default=True, description="the session's end sends a message with its results")
    include_diff: bool = Field(default=False, description="true = messages about a change include its diff (your "
                               "code); never the API key")

    @field_validator("urls")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        if any(not url.strip() for url in urls):
            raise ValueError("must not hold an empty URL")
        return urls
class WorkersSettings(_Section):
    """How many experiments run at once, and where (engine/research/parallel.py, engine/run/ray_executor.py)."""

    backend: WorkerBackend = Field(default="local", description="local (process groups on this machine) | ray "
                                   "(one Ray task per experiment; pip install 'loopdeck[ray]')")
    count: int | Literal["auto"] = Field(default=1, description='experiments in flight; "auto" = one per GPU (ray), '
                                         "or CPU cores / cpus_per_worker without GPUs (never oversubscribed)")
    address: str = Field(default="", description='ray only: "" = start a local Ray and stop it at the end; '
                         '"auto" or "ray://host:port" = join that cluster')
    cpus_per_worker: float = Field(default=1.0, gt=0, description="CPU cores each experiment reserves")
    gpus_per_worker: float = Field(default=-1.0, ge=-1, description="GPUs each experiment reserves; -1 = 1 where "
                                   "the machine or cluster has GPUs, else 0")
    resources: dict[str, float] = Field(default={}, description="ray only: custom Ray resources each "
                                        'experiment reserves, e.g. {A100 = 1}: runs go only to nodes that have them')

    @field_validator("count")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError(f'must be >= 1 or "auto", got {value}')
        return value

    @field_validator("resources")
    @classmethod
    def _amounts(cls, resources: dict[str, float]) -> dict[str, float]:
        wrong = [f"{name} = {amount:g}" for name, amount in resources.items() if amount <= 0]
        if wrong:
            raise ValueError(f"each resource needs an amount above 0, got {', '.join(wrong)}")
        return resources

    @model_validator(mode="after")
    def _address_needs_ray(self) -> WorkersSettings:
        if self.address and self.backend != "ray":
            raise ValueError('address is a Ray cluster\'s: set backend = "ray" too')
        if self.address not in ("", "auto") and not re.fullmatch(r"(ray://)?[\w.-]+:\d+", self.address):
            raise ValueError(f'address must be "", "auto" or "ray://host:port", got {self.address!r}')
        return self


class Config(_Section):
    """Root of loopdeck.toml: `.experiment`, `.metric`, `.loop`, `.agent` (with `.agent.claude`, `.agent.openai`,
    `.agent.offline`), `.sandbox`, `.evaluation`, `.research`, `.notify`, `.workers`."""

    experiment: ExperimentSettings = Field(default_factory=ExperimentSettings)
    metric: MetricSettings = Field(default_factory=MetricSettings)
    loop: LoopSettings = Field(default_factory=LoopSettings)
    agent: AgentSettings = Field(default_factory=AgentSettings)
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    research: ResearchSettings = Field(default_factory=ResearchSettings)
    notify: NotifySettings = Field(default_factory=NotifySettings)
    workers: WorkersSettings = Field(default_factory=WorkersSettings)

    def timeout(self) -> float:
        """Hard per-run timeout in seconds: timeout_seconds, or (wall budget)*2 + 120 when it is 0."""
        return self.experiment.timeout_seconds or self.wall_budget() * 2 + 120

    def wall_budget(self) -> float:
        """The most wall seconds the training budget may take: more than budget_seconds on the process clock."""
        stretch = PROCESS_CLOCK_STRETCH if self.experiment.budget_clock == "process" else 1.0
        return self.experiment.budget_seconds * stretch

    def command_argv(self) -> list[str]:
        """The run command with `{python}` replaced by the interpreter loopdeck runs under."""
        return [arg.replace("{python}", sys.executable) for arg in self.experiment.command]

    def updated(self, **fields: Any) -> Config:
        """A validated copy with settings replaced by field name (budget_seconds=5, approval="auto", kind=…)."""
        unknown = sorted(set(fields) - set(_field_sections()))
        if unknown:
            raise TypeError(f"unknown settings {unknown}")
        # Only what was set before, plus the new values: which settings a file set explicitly stays known
        # (headless runs, for one, are unattended unless loopdeck.toml itself asks for the approval gate).
        data = self.model_dump(exclude_unset=True)
        for name, value in fields.items():
            section = data
            for key in _field_sections()[name]:
                section = section.setdefault(key, {})
            section[name] = value
        return validate(data, "settings")


@functools.cache
def _field_sections() -> dict[str, tuple[str, ...]]:
    """Every setting's name -> the section path holding it. Names are unique across sections except the agents'
    (`model`, `base_url`, `max_tokens`, …): a shared name is the first section's, [agent.claude]'s."""
    index: dict[str, tuple[str, ...]] = {}

    def walk(model: type[BaseModel], path: tuple[str, ...]) -> None:
        for name, info in model.model_fields.items():
            annotation = info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, (*path, name))
            else:
                index.setdefault(name, path)

    walk(Config, ())
    return index


# --- errors --------------------------------------------------------------------------------------------------------


def _shown(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


_TYPE_NAMES = {"float_type": "a number", "int_type": "a whole number", "int_from_float": "a whole number",
               "string_type": "a string", "list_type": "a list", "dict_type": "a table",
               "model_type": "a table", "literal_error": "one of", "bool_type": "true or false"}


def _describe(error: dict[str, Any]) -> str:
    loc = error["loc"]
    where = ".".join(str(part) for part in loc if isinstance(part, str))
    where += "".join(f"[{part}]" for part in loc if isinstance(part, int))
    kind, ctx, value = error["type"], error.get("ctx", {}), error.get("input")
    if kind == "extra_forbidden":
        model: type[BaseModel] = Config
        for part in loc[:-1]:
            annotation = model.model_fields[str(part)].annotation
            assert isinstance(annotation, type)
            model = annotation
        allowed = ", ".join(model.model_fields)
        return f"{where}: unknown setting; allowed here: {allowed}"
    if kind == "literal_error":
        return f"{where}: must be one of {ctx['expected']}, got {_shown(value)}"
    if kind in ("greater_than", "greater_than_equal"):
        op, bound = (">", ctx["gt"]) if kind == "greater_than" else (">=", ctx["ge"])
        return f"{where}: must be {op} {bound:g}, got {_shown(value)}"
    if kind == "finite_number":
        return f"{where}: must be a finite number, got {_shown(value)}"
    if kind in ("too_short", "string_too_short"):
        return f"{where}: must not be empty"
    if kind in _TYPE_NAMES:
        return f"{where}: expected {_TYPE_NAMES[kind]}, got {type(value).__name__} {_shown(value)}"
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {message}"


def validate(data: Any, source: str) -> Config:
    """Settings from parsed TOML data; any problem raises LoopdeckError naming the field and the allowed values."""
    if not isinstance(data, dict):
        raise LoopdeckError(f"{source}: expected a table of settings")
    unknown = sorted(set(data) - set(Config.model_fields))
    if unknown:
        raise LoopdeckError(f"{source}: {unknown[0]}: unknown section; allowed: {', '.join(Config.model_fields)}")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(error) for error in exc.errors()]
        raise LoopdeckError(f"{source}: " + "; ".join(problems)) from None
