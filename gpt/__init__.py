"""loopdeck's GPT target: the editable training template, its protected harness, the scorer and the downloader.

Importing this package stays cheap (no torch): the engine reads these paths without paying torch's import time.
"""

from pathlib import Path

TRAIN_TEMPLATE = Path(__file__).with_name("train.py")
HARNESS_TEMPLATE = Path(__file__).with_name("harness.py")
HARNESS_FILE = "harness.py"  # the harness's name in a workspace, beside train.py: train.py imports `harness`
