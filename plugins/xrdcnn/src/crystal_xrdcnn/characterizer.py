"""``xrdcnn``: powder pattern → crystal system, extinction group and space group probabilities."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field, model_validator

from crystal.components import Characterizer, ComponentConfig
from crystal.errors import ConfigError, WeightsError
from crystal.manifest import NamedWeights, WeightsManifest
from crystal_xrdcnn.labels import HEADS, head_labels
from crystal_xrdcnn.model import XRDCNN, NetConfig

__all__ = ["CHECKPOINT_FORMAT", "XRDCNNCharacterizer", "XRDCNNConfig", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "crystal-xrdcnn/1"
#: the 2θ grid of the shipped weights: the 'xrd' representation's defaults
GRID_FIELDS = ("wavelength", "two_theta_min", "two_theta_max", "step")


#: the named weights this component ships (declared once: `crystal plugins manifest --write`
#: copies them into crystal_plugin.toml, the config's `weights` field accepts exactly these names)
WEIGHTS = NamedWeights(
    WeightsManifest(
        name="xrdcnn-pyxtal230",
        file="package:crystal_xrdcnn/weights/xrdcnn-pyxtal230.pt",
        sha256="87431f88279e09b2b8fa366327e3fd250bef775f6fbb9a7dd2b934c010f98703",
        licence="MIT",
        training_data=(
            "6,520 structures made by the framework (python -m crystal_xrdcnn.make_data --seed 0 --per-group 24 "
            "--shared ../shared/data --shared-per-set 500): 5,520 pyxtal random crystals (24 per space group, "
            "all 230) + 500 Perov-5 and 500 Carbon-24 val.csv structures; 90/10 split by structure (seed 0); "
            "patterns simulated on the fly by crystal_xrd with augmentation; test.csv held out"
        ),
        description=(
            "xrdcnn (4 conv blocks with BatchNorm, 16/32/64/128 channels, hidden 256, dropout 0.3), 604,541 "
            "parameters; 18 epochs (best 18, val_loss 8.666), 533 s on one CPU thread; spglib labels (symprec "
            "0.1 Å); model card: weights/xrdcnn-pyxtal230.md"
        ),
        metrics={
            "val_crystal_system_top1": 0.4862,
            "val_extinction_group_top1": 0.2009,
            "val_space_group_top1": 0.158,
            "perov5_test300_crystal_system_top1": 0.47,
            "perov5_test300_space_group_top1": 0.413,
            "carbon24_test300_crystal_system_top1": 0.833,
            "carbon24_test300_space_group_top1": 0.637,
            "jarvis70_crystal_system_top1": 0.3,
            "jarvis70_space_group_top1": 0.029,
            "pyxtal_heldout460_crystal_system_top1": 0.533,
            "pyxtal_heldout460_space_group_top1": 0.091,
        },
    ),
)


class XRDCNNConfig(ComponentConfig):
    """Which trained network to use."""

    weights: Annotated[str, WEIGHTS] | None = Field(
        "xrdcnn-pyxtal230", description="named weights shipped with the plugin (None: use `checkpoint` or untrained)"
    )
    checkpoint: Path | None = Field(
        None, description="a checkpoint written by `python -m crystal_xrdcnn.train` (used when weights is None)"
    )
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="expected sha256 of `checkpoint`")
    seed: int = Field(0, description="initialisation seed of an untrained network (no weights, no checkpoint)")

    @model_validator(mode="before")
    @classmethod
    def _checkpoint_replaces_default_weights(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("checkpoint") is not None:
            if data.get("weights") is not None:
                raise ValueError("give either `weights` (a shipped name) or `checkpoint` (a file), not both")
            data = {**data, "weights": None}
        return data


def save_checkpoint(path: Path, net: XRDCNN, xrd: dict[str, Any], metadata: dict[str, Any] | None = None) -> None:
    """Write ``{"format", "net", "xrd", "metadata", "state_dict"}`` (configs as JSON strings)."""
    from crystal.io import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "net": net.config.model_dump_json(),
        "xrd": json.dumps({k: xrd[k] for k in GRID_FIELDS}),
        "metadata": json.dumps(metadata or {}),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
    }
    with atomic_write(path, "wb") as fh:
        torch.save(payload, fh)


def _from_payload(obj: Any, where: str) -> tuple[XRDCNN, dict[str, Any], dict[str, Any]]:
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise WeightsError(f"xrdcnn: {where} is not a {CHECKPOINT_FORMAT} checkpoint")
    net = XRDCNN(NetConfig.model_validate_json(obj["net"]))
    try:
        net.load_state_dict(obj["state_dict"])
    except RuntimeError as exc:
        raise WeightsError(f"xrdcnn: {where}: state_dict does not fit the network: {exc}") from None
    return net.eval(), json.loads(obj["xrd"]), json.loads(obj["metadata"])


def load_checkpoint(path: Path, sha256: str | None = None) -> tuple[XRDCNN, dict[str, Any], dict[str, Any], str]:
    """Verify (when ``sha256`` is given) and load a checkpoint weights-only; returns ``(net, xrd, metadata, digest)``."""
    from crystal.weights import refused_pickle_message, sha256sum

    if not path.is_file():
        raise ConfigError(f"xrdcnn: checkpoint {str(path)!r} does not exist")
    digest = sha256sum(path)
    if sha256 is not None and digest != sha256:
        raise WeightsError(f"xrdcnn: checkpoint {str(path)!r} has sha256 {digest}, expected {sha256}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors are not trusted
        raise WeightsError(f"xrdcnn: {refused_pickle_message(path, exc)}") from None
    net, xrd, meta = _from_payload(obj, repr(str(path)))
    return net, xrd, meta, digest


class XRDCNNCharacterizer(Characterizer):
    """1D CNN on powder XRD patterns after Park et al., IUCrJ 4, 486 (2017).

    ``characterize(signals)`` takes (B, L) patterns on the grid of :attr:`representation_config`
    (the ``xrd`` representation's default grid for the shipped weights) and returns
    ``{"crystal_system": (B, 7), "extinction_group": (B, 112), "space_group": (B, 230)}``
    probabilities.
    """

    name: ClassVar[str] = "xrdcnn"
    version: ClassVar[str] = "0.1.0"
    description = (
        "Powder XRD pattern (2θ 5-90°, 0.02° grid, Cu Kα) -> probabilities of 7 crystal systems, 112 extinction "
        "groups and 230 space groups; trained on patterns simulated by crystal_xrd from pyxtal random crystals "
        "of all 230 groups plus Perov-5/Carbon-24 val structures"
    )
    Config: ClassVar[type[XRDCNNConfig]] = XRDCNNConfig
    consumes: ClassVar[str] = "xrd"
    produces: ClassVar[str] = "hypotheses"
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    weights: ClassVar[tuple[str, ...]] = WEIGHTS
    default_weights: ClassVar[str | None] = "xrdcnn-pyxtal230"

    config: XRDCNNConfig

    def __init__(self, config: Any = None, *, device: str = "auto", **overrides: Any) -> None:
        super().__init__(config, device=device, **overrides)
        cfg = self.config
        self.metadata: dict[str, Any] = {}
        self.checkpoint_sha256: str | None = None
        if cfg.weights is not None:
            from crystal.weights import load_state_dict, resolve_weights

            path, entry = resolve_weights(cfg.weights)
            net, xrd, self.metadata = _from_payload(load_state_dict(entry), f"weights {cfg.weights!r} ({path})")
            self.checkpoint_sha256 = entry.sha256
        elif cfg.checkpoint is not None:
            net, xrd, self.metadata, self.checkpoint_sha256 = load_checkpoint(cfg.checkpoint, cfg.sha256)
        else:
            from crystal_xrd import XRDConfig

            torch.manual_seed(cfg.seed)
            net = XRDCNN(NetConfig(input_points=XRDConfig().num_points))
            xrd = {k: getattr(XRDConfig(), k) for k in GRID_FIELDS}
        self.net = net.to(self.device).eval()
        self._xrd = xrd

    @classmethod
    def from_network(cls, net: XRDCNN, xrd: dict[str, Any], *, device: str = "cpu") -> XRDCNNCharacterizer:
        """Wrap a trained network (e.g. right after training) without a file."""
        obj = cls({"weights": None}, device=device)
        obj.net = net.to(obj.device).eval()
        obj._xrd = {k: xrd[k] for k in GRID_FIELDS}
        return obj

    def weights_in_use(self) -> tuple[str, ...]:
        return (self.config.weights,) if self.config.weights is not None else ()

    @property
    def representation_config(self) -> dict[str, Any]:
        """The ``xrd`` config fields (wavelength and 2θ grid) the network was trained on."""
        return dict(self._xrd)

    @property
    def input_points(self) -> int:
        return self.net.config.input_points

    def characterize(self, signals: torch.Tensor) -> dict[str, torch.Tensor]:
        if signals.dim() != 2 or int(signals.shape[1]) != self.input_points:
            g = self._xrd
            raise ConfigError(
                f"characterizer 'xrdcnn': signals must have shape (B, {self.input_points}) — patterns on the 2θ grid "
                f"{g['two_theta_min']}–{g['two_theta_max']}° step {g['step']}° ({g['wavelength']}); "
                f"got {tuple(signals.shape)} (set the representation's two_theta_min/two_theta_max/step to match)"
            )
        if not bool(torch.isfinite(signals).all()):
            raise ConfigError("characterizer 'xrdcnn': signals contain NaN or inf")
        with torch.no_grad():
            logits = self.net(signals.to(self.device))
        return {h: torch.softmax(v.float(), dim=1) for h, v in logits.items()}

    def labels(self, head: str) -> list[str]:
        if head not in HEADS:
            raise ConfigError(f"characterizer 'xrdcnn': unknown head {head!r}; heads: {', '.join(HEADS)}")
        return head_labels(head)

    def characterize_pattern(self, pattern: Any) -> dict[str, torch.Tensor]:
        """Classify a measured pattern (:class:`crystal_xrd.MeasuredPattern`): resampled onto the grid first."""
        from crystal_xrd import make_config, resample
        from crystal_xrd.profile import grid

        cfg = make_config(self._xrd)
        xs = grid(cfg.two_theta_min, cfg.step, cfg.num_points, dtype=torch.float32, device=self.device)
        return self.characterize(resample(pattern, xs)[None, :])
