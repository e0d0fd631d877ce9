"""The environment a training run gets: the engine's own, scrubbed of credentials, plus loopdeck's contract variables."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from loopdeck.engine.config import Config

# Words that name a credential wherever they appear, even inside a longer word (PGPASSWORD, CLIENT_SECRET).
_SECRET_PARTS = ("SECRET", "PASSWORD", "PASSWD", "PASSPHRASE", "CREDENTIAL", "COOKIE")
# Words that name a credential only as a whole `_`-separated word: as substrings they are everywhere
# (TOKENIZERS_PARALLELISM, XAUTHORITY, KEYBOARD_LAYOUT). The plurals keep e.g. EVAL_TOKENS out, as before.
_SECRET_WORDS = frozenset({
    "KEY", "KEYS", "TOKEN", "TOKENS", "AUTH", "PRIVATE", "PASS", "APIKEY", "ACCESSKEY", "PRIVATEKEY", "AUTHKEY",
    "AUTHTOKEN", "ACCESSTOKEN", "APITOKEN",
})
_CLOUD_PREFIXES = ("AWS_", "AZURE_", "GOOGLE_", "GCLOUD_", "CLOUDSDK_")


def _looks_secret(name: str) -> bool:
    upper = name.upper()
    if upper.startswith(_CLOUD_PREFIXES) or any(part in upper for part in _SECRET_PARTS):
        return True
    return not _SECRET_WORDS.isdisjoint(re.split(r"[^A-Z0-9]+", upper))


def scrubbed_env(base: Mapping[str, str], allow: Iterable[str] = (), extra: Mapping[str, str] | None = None
                 ) -> dict[str, str]:
    """base without credential-shaped variables (except `allow`), plus extra, plus PYTHONUNBUFFERED=1.

    Removed (any case): names containing SECRET, PASSWORD, PASSWD, PASSPHRASE, CREDENTIAL or COOKIE; names with
    KEY, TOKEN, AUTH, PRIVATE or PASS as a whole `_`-separated word (API_KEY, HF_TOKEN, NPM_AUTH), or APIKEY,
    ACCESSKEY, AUTHTOKEN and kin; and the cloud credential families AWS_*, AZURE_*, GOOGLE_*, GCLOUD_*,
    CLOUDSDK_*. Kept: look-alikes such as TOKENIZERS_PARALLELISM, XAUTHORITY or KEYBOARD_LAYOUT.
    """
    allowed = set(allow)
    # LOOPDECK_* is loopdeck's own training contract (e.g. LOOPDECK_EVAL_TOKENS), never a credential.
    env = {name: value for name, value in base.items()
           if name in allowed or name.startswith("LOOPDECK_") or not _looks_secret(name)}
    env.update(extra or {})
    env["PYTHONUNBUFFERED"] = "1"
    return env


def budget_clock_env(clock: str) -> dict[str, str]:
    """The variables of a run on budget clock `clock`: LOOPDECK_BUDGET_CLOCK, and on the process clock
    OMP_WAIT_POLICY=PASSIVE, read when torch loads OpenMP. Spinning idle threads burn CPU while they wait for a
    thread the neighbour's load delays, so CPU time would count the wait (measured on 2 cores, 4 s budget: 63
    steps quiet, 7-9 beside a 2-process hog when spinning; 63 and 58 when passive)."""
    return {"LOOPDECK_BUDGET_CLOCK": clock, **({"OMP_WAIT_POLICY": "PASSIVE"} if clock == "process" else {})}


def training_env(config: Config, *, metrics_path: Path, run_dir: Path, seed: int | None = None,
                 base: Mapping[str, str] | None = None, trusted_eval: bool = False) -> dict[str, str]:
    """The scrubbed environment for one run of `config`: LOOPDECK_TIME_BUDGET/BUDGET_CLOCK/METRICS/RUN_DIR/DATA
    (/SEED), and
    LOOPDECK_TRUSTED_EVAL=1 when the trusted evaluator scores the run (its own final evaluation is then short)."""
    experiment = config.experiment
    extra = {**budget_clock_env(experiment.budget_clock), **experiment.env,
             "LOOPDECK_TIME_BUDGET": repr(experiment.budget_seconds),
             "LOOPDECK_METRICS": str(metrics_path), "LOOPDECK_RUN_DIR": str(run_dir),
             "LOOPDECK_DATA": experiment.data}
    if seed is not None:
        extra["LOOPDECK_SEED"] = str(seed)
    if trusted_eval:
        extra["LOOPDECK_TRUSTED_EVAL"] = "1"
    return scrubbed_env(os.environ if base is None else base, experiment.env_allow, extra)
