"""Test support for crystal-mattergen: makes the helper modules beside the tests importable
(the suite runs with ``--import-mode=importlib``)."""

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
