"""The package's version (model files record it)."""

__version__ = "0.1.0"
