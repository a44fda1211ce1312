"""CrystaLLM (Antunes, Butler & Grau-Crespo, Nat. Commun. 15, 10570 (2024)) as a crystal generator.

A GPT trained from scratch on canonical CIF text; prompted with a composition (and optionally a
space group); every sampled CIF is checked before it is returned. See the package README.
"""

from __future__ import annotations

__version__ = "0.1.0"
