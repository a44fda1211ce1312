"""crystal-example: a tiny crystal plugin (mass density encoder + one metric hook).

Keep this file tiny: ``crystal plugins list`` locates the package (to read
``crystal_plugin.toml``) without importing it, and ``crystal.hooks`` imports only
:mod:`crystal_example.hooks`. The encoder lives in :mod:`crystal_example.encoder` and is
imported only when a pipeline or ``crystal.load`` asks for it.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
