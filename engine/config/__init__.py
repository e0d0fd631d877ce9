"""loopdeck.toml: the settings schema (`schema`) and the file itself (`files`: read, inferred, written, pinned).

Everything the rest of loopdeck uses is importable from here; the two modules import only each other's public
names and `errors`.
"""

from loopdeck.engine.config.files import (
    default_toml,
    load_config,
    parse_config,
    pin_protected_file,
    toml_value,
)
from loopdeck.engine.config.schema import (
    AGENT_KINDS,
    APPROVALS,
    AUTORESEARCH_BUDGET,
    CONFIG_FILE,
    DEFAULT_PATTERN,
    PIPELINE_MODES,
    STATE_DIR,
    AgentKind,
    AgentSettings,
    ApprovalPolicy,
    ClaudeSettings,
    Config,
    EvaluationSettings,
    ExperimentSettings,
    LoopSettings,
    MetricSettings,
    PipelineMode,
    SandboxSettings,
    validate,
)

__all__ = [
    "AGENT_KINDS", "APPROVALS", "AUTORESEARCH_BUDGET", "CONFIG_FILE", "DEFAULT_PATTERN", "PIPELINE_MODES", "STATE_DIR",
    "AgentKind", "AgentSettings", "ApprovalPolicy", "ClaudeSettings", "Config", "EvaluationSettings",
    "ExperimentSettings", "LoopSettings", "MetricSettings", "PipelineMode", "SandboxSettings", "default_toml",
    "load_config", "parse_config", "pin_protected_file", "toml_value", "validate",
]
