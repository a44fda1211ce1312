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

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["StrictModel", "field_hint", "format_validation_error", "tag_values"]


class StrictModel(BaseModel):
    """A frozen pydantic model that rejects unknown fields (``extra="forbid"``).

    Subclasses may add settings (``model_config = ConfigDict(validate_default=True)``;
    pydantic merges them with these) but should keep ``extra="forbid"`` and ``frozen=True``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


def _unwrap(tp: Any) -> list[Any]:
    """The member types of ``tp`` (through Annotated, Optional/Union, list/tuple/dict values)."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(tp) for m in _unwrap(arg)]
    return [tp]


def _models(tps: list[Any]) -> list[type[BaseModel]]:
    return [t for tp in tps for t in _unwrap(tp) if isinstance(t, type) and issubclass(t, BaseModel)]


def _elements(tps: list[Any]) -> list[Any]:
    out = []
    for tp in tps:
        for t in _unwrap(tp):
            origin = typing.get_origin(t)
            if origin in (list, tuple, set, frozenset) or (isinstance(origin, type) and issubclass(origin, list)):
                out += [a for a in typing.get_args(t) if a is not Ellipsis]
            elif origin is dict:
                out += list(typing.get_args(t)[1:])
    return out


def _tags(model: type[BaseModel]) -> set[str]:
    """The string values of the model's ``Literal`` fields (a discriminated union's tags)."""
    out: set[str] = set()
    for f in model.model_fields.values():
        for t in _unwrap(f.annotation):
            if typing.get_origin(t) is typing.Literal:
                out |= {v for v in typing.get_args(t) if isinstance(v, str)}
    return out


def _types_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[Any]:
    """The candidate types at ``loc`` (a pydantic error location) inside ``model``."""
    current: list[Any] = [model]
    for part in loc:
        if isinstance(part, int):
            current = _elements(current)
            continue
        nxt: list[Any] = []
        for m in _models(current):
            if part in m.model_fields:
                nxt.append(m.model_fields[part].annotation)
            elif part in _tags(m):  # a discriminated union's tag in the location
                nxt.append(m)
        if not nxt:  # a dict key: the dict's value type
            nxt = _elements(current)
        current = nxt
    return current


def field_hint(model: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    """For an unknown field at ``loc`` in ``model``: ``"; did you mean 'fmax'?"`` (or ``""``)."""
    if not loc or not isinstance(loc[-1], str):
        return ""
    names = sorted({n for m in _models(_types_at(model, loc[:-1])) for n in m.model_fields})
    close = difflib.get_close_matches(loc[-1], names, n=2, cutoff=0.6)
    return f"; did you mean {' or '.join(map(repr, close))}?" if close else ""


def tag_values(model: type[BaseModel], loc: tuple[int | str, ...], discriminator: str) -> list[str]:
    """The allowed values of ``discriminator`` for the union at ``loc`` in ``model``."""
    out: set[str] = set()
    for m in _models(_types_at(model, loc)):
        field = m.model_fields.get(discriminator)
        if field is not None:
            for t in _unwrap(field.annotation):
                if typing.get_origin(t) is typing.Literal:
                    out |= {v for v in typing.get_args(t) if isinstance(v, str)}
    return sorted(out)


def format_validation_error(exc: ValidationError, where: str, model: type[BaseModel] | None = None) -> str:
    """``exc`` as ``"<where>: field '<loc>': <message>"`` parts joined by ``"; "``.

    Unknown fields read ``unknown parameter`` (with a did-you-mean when ``model``, the
    validated class, is given); the location of an error at the model's root is ``<root>``.

    >>> class Opts(StrictModel):
    ...     steps: int = 1
    >>> try:
    ...     Opts(stpes=3)
    ... except ValidationError as exc:
    ...     print(format_validation_error(exc, "relax", Opts))
    relax: field 'stpes': unknown parameter; did you mean 'steps'?
    """
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown parameter" + (field_hint(model, tuple(err["loc"])) if model is not None else "")
        parts.append(f"{where}: field {loc!r}: {msg}")
    return "; ".join(parts)
