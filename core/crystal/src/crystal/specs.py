"""Small command-line value specs shared by every front end (``--set``, ``--option``).

``KEY=VALUE`` overrides are parsed the same way everywhere: the value is read as a TOML
value (``0.05``, ``true``, ``"Cu"``, ``[1, 2]``), and anything that is not valid TOML is
kept as the raw string (``chgnet``).
"""

from __future__ import annotations

import tomllib
from typing import Any

__all__ = ["parse_key_value", "parse_value"]


def parse_value(raw: str) -> Any:
    """``raw`` as a TOML value, else the string itself (``"0.05"`` -> ``0.05``, ``"abc"`` -> ``"abc"``)."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def parse_key_value(item: str, what: str = "option") -> tuple[str, Any]:
    """Split ``KEY=VALUE`` and parse the value with :func:`parse_value`.

    Raises ``ValueError`` naming ``what`` when there is no ``=`` or the key is empty.
    """
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"{what} {item!r} is not KEY=VALUE")
    return key.strip(), parse_value(raw)
