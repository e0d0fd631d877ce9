"""loopdeck's GPT target: the editable training template, its protected harness, corpus, tokenizers and CLI.

Importing this package stays cheap (no torch): the engine reads TRAIN_TEMPLATE without paying torch's import time.
"""

from pathlib import Path

TRAIN_TEMPLATE = Path(__file__).with_name("train.py")
