"""Open the run store's DuckDB file, waiting while another screener process holds it.

DuckDB lets one process at a time open a file for writing. A run that finds the store held
waits for it, saying so every 30 s, for up to STORE_WAIT_SECONDS ($SCREENER_STORE_WAIT), and
then stops with a message that names `--store`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from screener.errors import ConfigError

STORE_WAIT_SECONDS = 600.0  # a run waits this long for a store another run holds
STORE_POLL_SECONDS = 0.5
STORE_WAIT_MESSAGE_EVERY = 30.0


def store_wait_seconds() -> float:
    """How long a run waits for a store another process holds ($SCREENER_STORE_WAIT)."""
    text = os.environ.get("SCREENER_STORE_WAIT", "")
    try:
        return float(text) if text else STORE_WAIT_SECONDS
    except ValueError:
        raise ConfigError(f"SCREENER_STORE_WAIT={text!r}: expected a number of seconds") from None


def connect_waiting(
    where: str,
    config: dict[str, str | bool | int | float | list[str]],
    progress: Callable[[str], None] | None = None,
    wait_seconds: float | None = None,
) -> Any:
    """A DuckDB connection to `where`, waiting while another process holds its lock (up to
    `wait_seconds`, default `store_wait_seconds()`), and saying so to `progress`."""
    import duckdb

    say = progress or (lambda message: None)
    limit = store_wait_seconds() if wait_seconds is None else wait_seconds
    started = time.monotonic()
    next_message = started
    while True:
        try:
            return duckdb.connect(where, config=config)
        except duckdb.IOException as exc:
            first_line = str(exc).splitlines()[0]
            waited = time.monotonic() - started
            if "lock" not in first_line.lower():
                raise ConfigError(
                    f"cannot open the run store {where}: {first_line} (pass --store with "
                    "another path)"
                ) from exc
            if waited >= limit:
                raise ConfigError(
                    f"cannot open the run store {where}: {first_line} (another screener run is "
                    f"using it{f' and did not finish within {limit:g} s' if waited else ''}: "
                    "wait for it, or pass --store with a path of this run's own)"
                ) from exc
            if time.monotonic() >= next_message:
                say(
                    f"the run store {where} is in use by another screener run: waiting for it "
                    f"(up to {limit:g} s; --store PATH gives this run a store of its own)"
                )
                next_message = time.monotonic() + STORE_WAIT_MESSAGE_EVERY
            time.sleep(min(STORE_POLL_SECONDS, max(0.0, limit - waited)))
        except duckdb.Error as exc:
            raise ConfigError(
                f"the run store {where} is not a usable DuckDB file ({exc}): delete it (it is "
                "only a cache) or pass --store with another path"
            ) from exc
