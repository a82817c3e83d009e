"""Progress lines: the rate and the time left, against hand-computed values."""

from __future__ import annotations

import pytest

from screener import progress
from screener.progress import Rate, duration


def test_rate_and_time_left(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([100.0, 100.0, 104.0, 110.0, 111.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    rate = Rate()  # started at 100 s
    assert rate.of(5) == "starting"  # no time has passed
    assert rate.of(10, 30) == "2.5/s, 8 s left"  # 10 in 4 s; 20 more at 2.5/s
    assert rate.of(3000) == "300/s"  # 3000 in 10 s
    assert rate.of(0) == "starting"


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.4, "0 s"), (59.4, "59 s"), (65, "1 min 05 s"), (7380, "2 h 03 min")]
)
def test_durations_read_as_people_write_them(seconds: float, text: str) -> None:
    assert duration(seconds) == text
