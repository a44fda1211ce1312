"""crystal-pyxtal: random symmetric crystals from PyXtal as a crystal generator.

Importing this package is cheap (no torch, pymatgen or pyxtal); the generator lives in
:mod:`crystal_pyxtal.generator` and is loaded through the ``crystal.generators`` entry point.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
