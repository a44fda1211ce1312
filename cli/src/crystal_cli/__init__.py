"""The crystal command line (console script ``crystal``)."""

__all__ = ["__version__"]
__version__ = "0.1.0"
