"""Progress lines with a rate and, where the total is known, the time left: plain text, one line
per step, so logs that are not a terminal stay readable (no carriage-return frames).

    rate = Rate()
    say(f"scored {done} samples ({rate.of(done)})")            # "... (41.2/s)"
    say(f"base responses {done}/{total} ({rate.of(done, total)})")  # "... (3.1/s, 12 s left)"
"""

from __future__ import annotations

import time


class Rate:
    """How fast something has advanced since the object was made."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def of(self, done: int, total: int | None = None) -> str:
        elapsed = time.monotonic() - self.started
        if done <= 0 or elapsed <= 0:
            return "starting"
        per_second = done / elapsed
        text = f"{per_second:.1f}/s" if per_second < 100 else f"{per_second:,.0f}/s"
        if total is not None and total > done:
            text += f", {duration((total - done) / per_second)} left"
        return text


def duration(seconds: float) -> str:
    """`12 s`, `4 min 05 s`, `2 h 03 min`."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"
