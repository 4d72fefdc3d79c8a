"""Imported first by each benchmark script (``import _checkout``): this checkout's packages ahead of
whatever the cached virtual environment's editable install names (the last checkout that ran make)."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if sys.path[:1] != [str(REPO)]:
    sys.path.insert(0, str(REPO))
