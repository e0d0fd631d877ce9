"""The credential scrub: a table of names that must reach a training run and names that must not."""

from __future__ import annotations

import pytest

from loopdeck.engine.run.environment import scrubbed_env

KEPT = [
    "PATH", "HOME", "PWD", "LANG", "TERM", "DISPLAY", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "HF_HOME",
    "PYTORCH_CUDA_ALLOC_CONF", "TOKENIZERS_PARALLELISM", "XAUTHORITY", "KEYBOARD_LAYOUT", "XKB_KEYMAP",
    "TOKENIZER_PATH", "MONKEYPATCH", "PASSAGE_COUNT", "XDG_SESSION_TYPE", "LOOPDECK_EVAL_TOKENS",
]
REMOVED = [
    "ANTHROPIC_API_KEY", "WANDB_API_KEY", "OPENAI_APIKEY", "AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AZURE_CLIENT_ID",
    "GOOGLE_APPLICATION_CREDENTIALS", "GCLOUD_PROJECT", "CLOUDSDK_CONFIG", "GITHUB_TOKEN", "HF_TOKEN",
    "GH_TOKEN", "NPM_AUTH_TOKEN", "NGROK_AUTHTOKEN", "SSH_AUTH_SOCK", "DB_PASSWORD", "db_password", "PGPASSWORD",
    "DB_PASS", "CLIENT_SECRET", "MY_SECRETS_FILE", "GPG_PASSPHRASE", "SESSION_COOKIE", "PRIVATE_KEY",
    "DEPLOY_KEYS", "hf_token", "EVAL_TOKENS",
]


@pytest.mark.parametrize("name", KEPT)
def test_ordinary_names_reach_the_run(name: str) -> None:
    assert name in scrubbed_env({name: "value"})


@pytest.mark.parametrize("name", REMOVED)
def test_credential_shaped_names_are_removed(name: str) -> None:
    assert name not in scrubbed_env({name: "value"})


def test_an_allowed_credential_passes() -> None:
    env = scrubbed_env({"HF_TOKEN": "x", "GITHUB_TOKEN": "y"}, allow=["HF_TOKEN"])
    assert env == {"HF_TOKEN": "x", "PYTHONUNBUFFERED": "1"}
