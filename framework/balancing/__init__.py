"""Balancing: a subchannel per endpoint, a picker over the usable ones, and BalancedChannel."""

from .channel import BalancedChannel
from .p2c import P2cEwmaPicker
from .picker import Picker, RoundRobinPicker
from .registry import PICKERS, picker_class
from .subchannel import Subchannel

__all__ = [
    "PICKERS",
    "BalancedChannel",
    "P2cEwmaPicker",
    "Picker",
    "RoundRobinPicker",
    "Subchannel",
    "picker_class",
]
