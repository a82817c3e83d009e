"""The state root: one directory for screener's caches (converted models, the run store); and
safe file names made from labels.

`SCREENER_HOME` overrides the default `~/.cache/screener`; tests point it at a temp dir.
"""

from __future__ import annotations

import os
from pathlib import Path


def state_root() -> Path:
    """The directory screener keeps its state in (created on first use by the writer)."""
    configured = os.environ.get("SCREENER_HOME")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "screener"


def safe_file_name(text: str) -> str:
    """A file name from a label such as a source or a run's name (keeps it inside the directory
    it is joined to)."""
    name = Path(text).name or "data"
    return "".join(c if c.isalnum() or c in "._-[]" else "_" for c in name).lstrip(".") or "data"
