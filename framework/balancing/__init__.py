"""Balancing: a subchannel per endpoint, a picker over the usable ones, and BalancedChannel."""

from .channel import BalancedChannel
from .picker import PICKERS, Picker, RoundRobinPicker, picker_class
from .subchannel import Subchannel

__all__ = ["PICKERS", "BalancedChannel", "Picker", "RoundRobinPicker", "Subchannel", "picker_class"]
