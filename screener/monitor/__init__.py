"""Watch a model's persona drift, not only the data: between a base model and its checkpoints
(`monitor_checkpoints`, `screener monitor checkpoints`) and while it trains (`DriftCallback` for
transformers' Trainer, `DriftMeter` for a plain loop).
"""

from screener.monitor.callback import DriftCallback, DriftPoint
from screener.monitor.checkpoints import monitor_checkpoints
from screener.monitor.meter import DriftMeter
from screener.monitor.result import DriftBound, MonitorResult, write_monitor

__all__ = [
    "DriftBound",
    "DriftCallback",
    "DriftMeter",
    "DriftPoint",
    "MonitorResult",
    "monitor_checkpoints",
    "write_monitor",
]
