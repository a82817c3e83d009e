"""The state root: one directory for screener's caches (converted models, later the run store).

`SCREENER_HOME` overrides the default `~/.cache/screener`; tests point it at a temp dir.
"""

from __future__ import annotations

import os
from pathlib import Path


def state_root() -> Path:
    """The directory screener keeps its state in (created on first use by the writer)."""
    configured = os.environ.get("SCREENER_HOME")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "screener"
