"""ML-MLOps Portfolio: three ML services on one shared MLOps core."""

__version__ = "0.1.0"
