"""Loading released checkpoint formats without arbitrary unpickling.

PyTorch-Lightning checkpoints (``*.ckpt``, a ``torch.save``-d dict with ``state_dict``,
``hyper_parameters``, ``optimizer_states``, ``callbacks``, ...) often pickle objects of other
packages next to the tensors: omegaconf ``DictConfig``/``ListConfig`` in ``hyper_parameters``
(Hydra projects such as DiffCSP, CDVAE, MatterGen), Lightning's ``AttributeDict``, and with
Lightning < 1.5 the callback *classes* as keys of ``callbacks``. A plain
``torch.load(..., weights_only=True)`` refuses them and ``weights_only=False`` would run any
code the file names.

:func:`load_lightning_checkpoint` keeps ``weights_only=True`` and allowlists, for the duration
of the call (``torch.serialization.safe_globals``), a fixed set of *stand-ins* registered under
those names: inert classes that only record the pickled state (omegaconf containers, nodes
and their metadata), inert references for type objects that appear only as values
(``typing.Any``, ``builtins.dict``, ``collections.defaultdict``, Lightning callback classes),
and ``pathlib`` paths rebuilt as strings. No function or class of another package is ever
imported or called; omegaconf and Lightning need not be installed. After loading, the
stand-ins are converted to plain data (:func:`plain_data`): a ``DictConfig`` becomes a
``dict``, a ``ListConfig`` a ``list``, a value node its value; interpolations such as
``"${model.radius}"`` stay strings (they are not resolved), omegaconf's missing value stays
``"???"``. Any other global in the file is refused with a :class:`~crystal.errors.WeightsError`
naming the file and the global.

The stable API: ``load_lightning_checkpoint(path) -> dict`` (the checkpoint dict with plain
``hyper_parameters``; ``state_dict`` is the file's tensors), :func:`plain_data` and
:data:`SAFE_GLOBAL_NAMES` (the names allowlisted).
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from crystal.errors import WeightsError

__all__ = ["SAFE_GLOBAL_NAMES", "load_lightning_checkpoint", "plain_data"]


class _Recorded:
    """Stand-in for a pickled object: keeps the state ``BUILD`` hands it, does nothing else."""

    #: the global name this stand-in answers to (set on the subclasses)
    global_name = ""

    def __init__(self) -> None:  # never called by the unpickler (it uses ``__new__``)
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)):
            merged: dict[Any, Any] = dict(state[0] or {})
            merged.update(state[1] or {})
            state = merged
        self.state = state

    def __repr__(self) -> str:
        return f"<stand-in {self.global_name}>"


class _DictConfig(_Recorded):
    global_name = "omegaconf.dictconfig.DictConfig"


class _ListConfig(_Recorded):
    global_name = "omegaconf.listconfig.ListConfig"


class _ValueNode(_Recorded):
    global_name = "omegaconf.nodes.ValueNode"


class _Metadata(_Recorded):
    global_name = "omegaconf.base.Metadata"


class _AttributeDict:
    """Stand-in for Lightning's ``AttributeDict`` (a dict subclass): ``__new__`` returns a plain
    dict, so that the unpickler's ``SETITEMS`` fills it like any dict."""

    def __new__(cls, *args: Any) -> dict[Any, Any]:  # type: ignore[misc]
        return {}


class _GlobalRef:
    """An inert reference to a type that is pickled as a value (``typing.Any`` as omegaconf's
    ``ref_type``, ``builtins.dict`` as an ``object_type``, a Lightning callback class as a key of
    ``callbacks``). Hashable; calling it is refused."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise WeightsError(f"checkpoint calls {self.name}(...), which is not allowed in a weights-only load")

    def __repr__(self) -> str:
        return f"<global {self.name}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _GlobalRef) and other.name == self.name

    def __hash__(self) -> int:
        return hash(("_GlobalRef", self.name))


def _defaultdict(*args: Any) -> dict[Any, Any]:
    """``collections.defaultdict(factory)`` → a plain dict (the factory, a reference, is dropped)."""
    return {}


def _posix_path(*parts: Any) -> str:
    return PurePosixPath(*(str(p) for p in parts)).as_posix()


def _windows_path(*parts: Any) -> str:
    return str(PureWindowsPath(*(str(p) for p in parts)))


_OMEGACONF_NODES = (
    "AnyNode",
    "StringNode",
    "IntegerNode",
    "FloatNode",
    "BooleanNode",
    "BytesNode",
    "PathNode",
    "ValueNode",
    "InterpolationResultNode",
)

_TYPE_REFERENCES = (
    "typing.Any",
    "typing.Dict",
    "typing.List",
    "typing.Tuple",
    "typing.Optional",
    "typing.Union",
    "builtins.dict",
    "builtins.list",
    "builtins.tuple",
    "builtins.str",
    "builtins.int",
    "builtins.float",
    "builtins.bool",
    "builtins.bytes",
    "builtins.object",
    "builtins.NoneType",
    "pathlib.Path",
    # Lightning < 1.5 keys ``callbacks`` by the callback class itself
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
    "pytorch_lightning.callbacks.lr_monitor.LearningRateMonitor",
    "pytorch_lightning.callbacks.progress.ProgressBar",
    "pytorch_lightning.callbacks.progress.tqdm_progress.TQDMProgressBar",
    "pytorch_lightning.callbacks.stochastic_weight_avg.StochasticWeightAveraging",
    "pytorch_lightning.callbacks.gradient_accumulation_scheduler.GradientAccumulationScheduler",
)


def _stand_ins() -> list[Any]:
    """(stand-in, global name) pairs for ``torch.serialization.safe_globals``."""
    pairs: list[Any] = [
        (_DictConfig, "omegaconf.dictconfig.DictConfig"),
        (_ListConfig, "omegaconf.listconfig.ListConfig"),
        (_Metadata, "omegaconf.base.Metadata"),
        (_Metadata, "omegaconf.base.ContainerMetadata"),
        (_AttributeDict, "pytorch_lightning.utilities.parsing.AttributeDict"),
        (_AttributeDict, "lightning.fabric.utilities.data.AttributeDict"),
        (_AttributeDict, "lightning_fabric.utilities.data.AttributeDict"),
        (_defaultdict, "collections.defaultdict"),
        (_posix_path, "pathlib.PosixPath"),
        (_posix_path, "pathlib.PurePosixPath"),
        (_windows_path, "pathlib.WindowsPath"),
        (_windows_path, "pathlib.PureWindowsPath"),
    ]
    pairs += [(_ValueNode, f"omegaconf.nodes.{name}") for name in _OMEGACONF_NODES]
    pairs += [(_GlobalRef(name), name) for name in _TYPE_REFERENCES]
    return pairs


#: every global name :func:`load_lightning_checkpoint` allowlists (as an inert stand-in)
SAFE_GLOBAL_NAMES: tuple[str, ...] = tuple(str(name) for _, name in _stand_ins())

_MISSING = "???"


def _state(obj: _Recorded) -> dict[Any, Any]:
    state = getattr(obj, "state", None)
    return state if isinstance(state, dict) else {}


def plain_data(obj: Any) -> Any:
    """Replace the stand-ins in ``obj`` by plain data, recursively: ``DictConfig`` → dict,
    ``ListConfig`` → list, value node → its value, type reference → its dotted name (str).
    Tensors, numbers and strings are returned as they are; an ``OrderedDict`` stays one."""
    if isinstance(obj, _DictConfig | _ListConfig):
        state = _state(obj)
        content = state.get("_content")
        if content is None or isinstance(content, str):  # None, "???" or a whole-node interpolation
            return content
        if isinstance(obj, _DictConfig):
            return {plain_data(k): plain_data(v) for k, v in dict(content).items()}
        return [plain_data(v) for v in content]
    if isinstance(obj, _ValueNode):
        state = _state(obj)
        return plain_data(state.get("_val"))
    if isinstance(obj, _Metadata):
        return None
    if isinstance(obj, _GlobalRef):
        return obj.name
    if isinstance(obj, OrderedDict):
        return OrderedDict((plain_data(k), plain_data(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {plain_data(k): plain_data(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain_data(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(plain_data(v) for v in obj)
    return obj


_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL ([\w.]+)|unrecognized function (\S+)|but got (<class '[^']+'>)")


def load_lightning_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Load a PyTorch-Lightning checkpoint with ``torch.load(..., weights_only=True)``.

    ``hyper_parameters`` (omegaconf containers, ``AttributeDict``) and the other entries are
    returned as plain dicts/lists/values (:func:`plain_data`); ``state_dict`` holds the tensors
    (on ``map_location``). The file must be a dict with a ``state_dict`` entry. Raises
    :class:`~crystal.errors.WeightsError` naming the file (and the global, for a global that
    is neither weights-only nor one of :data:`SAFE_GLOBAL_NAMES`).
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"Lightning checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(_stand_ins()):
            raw = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, WeightsError, RuntimeError, AttributeError, TypeError, ValueError) as exc:
        text = str(exc)
        found = _GLOBAL_IN_MESSAGE.search(text)
        name = next((g for g in found.groups() if g), None) if found else None
        what = f"it pickles {name}, which is not allowed" if name else "it does not load weights-only"
        first_line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise WeightsError(
            f"{path}: refused to load as a Lightning checkpoint: {what} (only tensors, plain data and "
            f"inert stand-ins for omegaconf/Lightning objects are unpickled; torch: {first_line})"
        ) from None
    if not isinstance(raw, dict) or "state_dict" not in raw:
        kind = sorted(map(str, raw)) if isinstance(raw, dict) else type(raw).__name__
        raise WeightsError(f"{path}: not a Lightning checkpoint (no 'state_dict'; found {kind})")
    out: dict[str, Any] = plain_data(raw)
    return out
