"""The strict pydantic base every crystal settings model uses, and its error formatting.

:class:`StrictModel` is a frozen :class:`pydantic.BaseModel` that rejects unknown fields:
a typo in a TOML file or a ``--set`` override is an error, never silently ignored. Component
configs (:class:`~crystal.components.ComponentConfig`), pipeline, relaxation, MD and
training options all derive from it::

    from crystal.config import StrictModel

    class MyOptions(StrictModel):
        steps: int = 100

:func:`format_validation_error` turns a :class:`pydantic.ValidationError` into one readable
line per field, prefixed with where the values came from.

Importing this module does not import torch.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["StrictModel", "format_validation_error"]


class StrictModel(BaseModel):
    """A frozen pydantic model that rejects unknown fields (``extra="forbid"``).

    Subclasses may add settings (``model_config = ConfigDict(validate_default=True)``;
    pydantic merges them with these) but should keep ``extra="forbid"`` and ``frozen=True``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


def format_validation_error(exc: ValidationError, where: str) -> str:
    """``exc`` as ``"<where>: field '<loc>': <message>"`` parts joined by ``"; "``.

    Unknown fields read ``unknown parameter``; the location of an error at the model's root
    is ``<root>``.

    >>> class Opts(StrictModel):
    ...     steps: int = 1
    >>> try:
    ...     Opts(stpes=3)
    ... except ValidationError as exc:
    ...     print(format_validation_error(exc, "relax"))
    relax: field 'stpes': unknown parameter
    """
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown parameter"
        parts.append(f"{where}: field {loc!r}: {msg}")
    return "; ".join(parts)
