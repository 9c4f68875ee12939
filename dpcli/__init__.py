"""dpcli: optimization-based dataset pruning with a generalization guarantee."""

__version__ = "0.1.0"
