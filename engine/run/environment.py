"""The environment a training run gets: the engine's own, scrubbed of credentials, plus loopdeck's contract variables."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from loopdeck.engine.config import Config

_SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "PASSPHRASE", "CREDENTIAL", "AUTH", "COOKIE",
                 "PRIVATE")
_CLOUD_PREFIXES = ("AWS_", "AZURE_", "GOOGLE_", "GCLOUD_", "CLOUDSDK_")


def _looks_secret(name: str) -> bool:
    upper = name.upper()
    return any(word in upper for word in _SECRET_WORDS) or upper.startswith(_CLOUD_PREFIXES)


def scrubbed_env(base: Mapping[str, str], allow: Iterable[str] = (), extra: Mapping[str, str] | None = None
                 ) -> dict[str, str]:
    """base without credential-looking variables (except `allow`), plus extra, plus PYTHONUNBUFFERED=1.

    Removed: names containing KEY, TOKEN, SECRET, PASSWORD, PASSWD, PASSPHRASE, CREDENTIAL, AUTH, COOKIE or
    PRIVATE (any case), and cloud credential families AWS_*, AZURE_*, GOOGLE_*, GCLOUD_*, CLOUDSDK_*.
    """
    allowed = set(allow)
    # LOOPDECK_* is loopdeck's own training contract (e.g. LOOPDECK_EVAL_TOKENS), never a credential.
    env = {name: value for name, value in base.items()
           if name in allowed or name.startswith("LOOPDECK_") or not _looks_secret(name)}
    env.update(extra or {})
    env["PYTHONUNBUFFERED"] = "1"
    return env


def training_env(config: Config, *, metrics_path: Path, run_dir: Path, seed: int | None = None,
                 base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The scrubbed environment for one run of `config`: LOOPDECK_TIME_BUDGET/METRICS/RUN_DIR/DATA(/SEED)."""
    experiment = config.experiment
    extra = {**experiment.env, "LOOPDECK_TIME_BUDGET": repr(experiment.budget_seconds),
             "LOOPDECK_METRICS": str(metrics_path), "LOOPDECK_RUN_DIR": str(run_dir),
             "LOOPDECK_DATA": experiment.data}
    if seed is not None:
        extra["LOOPDECK_SEED"] = str(seed)
    return scrubbed_env(os.environ if base is None else base, experiment.env_allow, extra)
