"""loopdeck.toml: the settings schema (`schema`) and the file itself (`files`: read, inferred, written, pinned).

Everything the rest of loopdeck uses is importable from here; the two modules import only each other's public
names and `errors`.
"""

from loopdeck.engine.config.files import (
    BUDGET_CONSTANT,
    BUDGET_VARIABLE,
    CLOCK_VARIABLE,
    SEED_VARIABLE,
    BudgetConstant,
    budget_location,
    default_toml,
    find_budget_constant,
    load_config,
    parse_config,
    pin_protected_file,
    reads_variable,
    seedable,
    toml_value,
)
from loopdeck.engine.config.schema import (
    AGENT_KINDS,
    APPROVALS,
    AUTORESEARCH_BUDGET,
    BUDGET_CLOCKS,
    CONFIG_FILE,
    DEFAULT_PATTERN,
    PIPELINE_MODES,
    SCALES,
    STATE_DIR,
    WORKER_BACKENDS,
    AgentKind,
    AgentSettings,
    ApprovalPolicy,
    ClaudeSettings,
    Config,
    EvaluationSettings,
    ExperimentSettings,
    LoopSettings,
    MetricSettings,
    NotifySettings,
    PipelineMode,
    ResearchSettings,
    SandboxSettings,
    WorkersSettings,
    validate,
)

__all__ = [
    "AGENT_KINDS", "APPROVALS", "AUTORESEARCH_BUDGET", "BUDGET_CONSTANT", "BUDGET_VARIABLE", "CONFIG_FILE", "SEED_VARIABLE", "DEFAULT_PATTERN", "PIPELINE_MODES", "SCALES", "STATE_DIR",
    "AgentKind", "AgentSettings", "ApprovalPolicy", "ClaudeSettings", "Config", "EvaluationSettings",
    "ExperimentSettings", "LoopSettings", "MetricSettings", "NotifySettings", "PipelineMode", "ResearchSettings", "SandboxSettings", "BudgetConstant",
    "budget_location", "default_toml", "find_budget_constant", "load_config", "parse_config", "pin_protected_file",
    "reads_variable", "seedable", "toml_value", "validate",
    "WORKER_BACKENDS", "WorkersSettings",
    "reads_variable", "seedable", "toml_value", "validate", "BUDGET_CLOCKS", "CLOCK_VARIABLE",
]
