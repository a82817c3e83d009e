"""What every benchmark records about the machine it ran on (the CPU kind changes between our
machines, and bf16 is ~7x fp32 where the CPU has matrix units, emulated where it has not)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from screener.model import cpu_supports_bf16


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, or the platform's processor string."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor()


def machine() -> dict[str, object]:
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "bf16_matrix_units": cpu_supports_bf16(),
        "platform": platform.platform(),
    }
