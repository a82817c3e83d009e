"""Watch a model's persona drift, not only the data: between a base model and its checkpoints
(`monitor_checkpoints`, `screener monitor checkpoints`), while it trains (`DriftCallback` for
transformers' Trainer, `DriftMeter` for a plain loop), and in the conversations it holds once
deployed (`monitor_conversations`, `screener monitor conversations`).
"""

from screener.monitor.callback import DriftCallback, DriftPoint
from screener.monitor.checkpoints import monitor_checkpoints
from screener.monitor.conversations import ConversationsResult, monitor_conversations
from screener.monitor.meter import DriftMeter
from screener.monitor.result import DriftBound, MonitorResult, write_monitor

__all__ = [
    "ConversationsResult",
    "DriftBound",
    "DriftCallback",
    "DriftMeter",
    "DriftPoint",
    "MonitorResult",
    "monitor_checkpoints",
    "monitor_conversations",
    "write_monitor",
]
