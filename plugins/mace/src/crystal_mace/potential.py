"""The ``mace`` potential: :class:`~crystal_mace.model.MACE` behind crystal's trainable-potential contract.

Core (:mod:`crystal.trainable_potential`) builds the radius graph at ``cutoff`` (= MACE's ``r_max``),
differentiable edge vectors, adds the per-element reference energies ``e0s`` and takes forces and
stress by autograd; this module declares the architecture (:class:`MACEConfig`), builds the model
and computes MACE's data statistics (average number of neighbours, scale and shift).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator, model_validator

from crystal.batch import CrystalBatch
from crystal.components import ComponentConfig
from crystal.manifest import NamedWeights, WeightsManifest
from crystal.trainable_potential import PotentialConfig, TrainablePotential
from crystal_mace import __version__
from crystal_mace.model import MACE

__all__ = ["MACEConfig", "MACEPotential"]

#: fields :meth:`MACEPotential.statistics` sets from the training data (unless given explicitly)
STATISTICS_FIELDS = ("avg_num_neighbors", "scale", "shift")


def _irreps(value: str, what: str, scalars_only: bool = False) -> str:
    from e3nn import o3

    try:
        irreps = o3.Irreps(value).simplify()
    except (ValueError, AssertionError) as exc:
        raise ValueError(f"{what} {value!r} is not an e3nn irreps string (e.g. '128x0e + 128x1o'): {exc}") from None
    if irreps.dim == 0:
        raise ValueError(f"{what} {value!r} is empty")
    if scalars_only and any(ir.l != 0 or ir.p != 1 for _, ir in irreps):
        raise ValueError(f"{what} {value!r} must hold scalars (0e) only")
    return str(irreps)


_CONVERTER = "crystal_mace.convert:convert_module"
_MP_CITATION = (
    "I. Batatia et al., A foundation model for atomistic materials chemistry, arXiv:2401.00096 (2023); "
    "MACE: I. Batatia et al., NeurIPS 35 (2022)"
)
_MPTRJ = (
    "MPtrj (Deng et al. 2023): ~1.58 M structures of Materials Project relaxation trajectories, 89 elements, "
    "PBE/PBE+U energies, forces and stresses"
)
_OFF_CITATION = (
    "D. P. Kovács et al., MACE-OFF23: Transferable machine learning force fields for organic molecules, "
    "arXiv:2312.15211 (2023)"
)
_SPICE = "SPICE v1 (Eastman et al. 2023), neutral molecules of H C N O F P S Cl Br I, ωB97M-D3(BJ)/def2-TZVPPD"
_ASL = "ASL (Academic Software License, non-commercial)"
_PICKLED = (
    " Released as a pickled mace-torch module: run `crystal weights import --trust-pickle FILE` once in an "
    "environment with mace-torch to convert it to weights-only (crystal never unpickles it otherwise)."
)


def _foundation(name: str, url: str, sha256: str | None, size: int | None, **kw: Any) -> WeightsManifest:
    kw["description"] = kw["description"] + _PICKLED
    return WeightsManifest(
        name=name, file=url, sha256=sha256, size=size, format="pickled-module", converter=_CONVERTER, **kw
    )


#: mace-torch's released foundation models, at the authors' URLs (those of mace-torch's
#: mace/calculators/foundations_models.py). sha256/size of the MP/MPA files: computed from the released
#: files by third parties (two independent records agree for small and MPA-0; the mace-torch golden tests
#: pin the MPA-0 digest); medium and large (one record each) and the MACE-OFF23 files are pinned at first
#: download.
FOUNDATION_WEIGHTS = (
    _foundation(
        "mace-mp-0-small",
        "https://github.com/ACEsuit/mace-mp/releases/download/mace_mp_0/2023-12-10-mace-128-L0_energy_epoch-249.model",
        "2ddb079cee0e131eaaf6912ba581b394551ead283e95c99cfe78c605d10b5736",
        32581838,
        licence="MIT",
        citation=_MP_CITATION,
        training_data=_MPTRJ,
        description="MACE-MP-0 small: universal potential for 89 elements (128x0e hidden features, max_L 0, 2 layers, "
        "r_max 6 Å, ScaleShiftMACE).",
    ),
    _foundation(
        "mace-mp-0-medium",
        "https://github.com/ACEsuit/mace-mp/releases/download/mace_mp_0/2023-12-03-mace-128-L1_epoch-199.model",
        None,  # one third-party record only (see the description): pinned at first download
        None,
        licence="MIT",
        citation=_MP_CITATION,
        training_data=_MPTRJ,
        description="MACE-MP-0 medium: universal potential for 89 elements (128x0e+128x1o, 2 layers, r_max 6 Å, "
        "ScaleShiftMACE). Digest pinned at first download; one third-party record reports sha256 "
        "01bfe22100139f424713cf921144e5509cbe353d67aa9fa1be9c6e1e0ed35845, 44,422,970 bytes.",
    ),
    _foundation(
        "mace-mp-0-large",
        "https://github.com/ACEsuit/mace-mp/releases/download/mace_mp_0/MACE_MPtrj_2022.9.model",
        None,  # one third-party record only (see the description): pinned at first download
        None,
        licence="MIT",
        citation=_MP_CITATION,
        training_data=_MPTRJ,
        description="MACE-MP-0 large: universal potential for 89 elements (the MPtrj 2022.9 model that "
        "mace-torch's mace_mp(model='large') loads; ScaleShiftMACE). Digest pinned at first download; one "
        "third-party record reports sha256 f80e992b65ab8f88fdf26964511357c022e92704e4d9bcd086652635a8495b32, "
        "133,803,220 bytes.",
    ),
    _foundation(
        "mace-mpa-0-medium",
        "https://github.com/ACEsuit/mace-mp/releases/download/mace_mpa_0/mace-mpa-0-medium.model",
        "75428afe3a1d7d8062e19bcaabd5c433623cabf308242ec9fb493e38604fb638",
        79462305,
        licence="MIT",
        citation=_MP_CITATION,
        training_data=_MPTRJ + "; plus sAlex (a subsample of the Alexandria PBE data set)",
        description="MACE-MPA-0 medium: universal potential for 89 elements, mace-torch's default since 0.3.10 "
        "(ZBL pair repulsion, Agnesi distance transform).",
    ),
    _foundation(
        "mace-off23-small",
        "https://github.com/ACEsuit/mace-off/raw/main/mace_off23/MACE-OFF23_small.model",
        None,
        None,
        licence=_ASL,
        citation=_OFF_CITATION,
        training_data=_SPICE,
        description="MACE-OFF23 small: organic force field (96 channels, L=0, r_max 4.5 Å).",
    ),
    _foundation(
        "mace-off23-medium",
        "https://github.com/ACEsuit/mace-off/raw/main/mace_off23/MACE-OFF23_medium.model",
        None,
        None,
        licence=_ASL,
        citation=_OFF_CITATION,
        training_data=_SPICE,
        description="MACE-OFF23 medium: organic force field (128 channels, L=1, r_max 5 Å).",
    ),
    _foundation(
        "mace-off23-large",
        "https://github.com/ACEsuit/mace-off/raw/main/mace_off23/MACE-OFF23_large.model",
        None,
        None,
        licence=_ASL,
        citation=_OFF_CITATION,
        training_data=_SPICE,
        description="MACE-OFF23 large: organic force field (192 channels, L=2, r_max 5 Å).",
    ),
)

#: the named weights this component ships (declared once: `crystal plugins manifest --write`
#: copies them into crystal_plugin.toml, the config's `weights` field accepts exactly these names)
WEIGHTS = NamedWeights(
    WeightsManifest(
        name="mace-mlearn-li",
        file="package:crystal_mace/weights/mace-mlearn-li.pt",
        sha256="ba97262829ff9c7f450a7583b4498ed448516549cceb97b16ebef900bc03caba",
        licence="MIT",
        training_data=(
            "mlearn (Zuo et al. 2020) Li: ../shared/data/mlearn/Li/train.xyz (217 structures for training, 24 "
            "held out for model selection, seed 0); tested on the official test.xyz (29)"
        ),
        description=(
            "MACE (reduced width: 57,744 parameters; see the model card) trained for 19 epochs (2286 s, 1 CPU "
            "thread); test energy MAE 5.54 meV/atom, force MAE 0.027 eV/Å; model card: weights/mace-mlearn-li.md"
        ),
        metrics={
            "test_energy_mae_meV_per_atom": 5.5448,
            "test_forces_mae_eV_per_A": 0.02696,
        },
    ),
    WeightsManifest(
        name="mace-mlearn-mo",
        file="package:crystal_mace/weights/mace-mlearn-mo.pt",
        sha256="1390271e81cec60fe81977be6b4d4433062b08923ddbbb2e8ef95d4cf1b5e8e0",
        licence="MIT",
        training_data=(
            "mlearn (Zuo et al. 2020) Mo: ../shared/data/mlearn/Mo/train.xyz (175 structures for training, 19 "
            "held out for model selection, seed 0); tested on the official test.xyz (23)"
        ),
        description=(
            "MACE (reduced width: 57,744 parameters; see the model card) trained for 35 epochs (2282 s, 1 CPU "
            "thread); test energy MAE 9.63 meV/atom, force MAE 0.123 eV/Å; model card: weights/mace-mlearn-mo.md"
        ),
        metrics={
            "test_energy_mae_meV_per_atom": 9.6265,
            "test_forces_mae_eV_per_A": 0.12275,
        },
    ),
    WeightsManifest(
        name="mace-mlearn-si",
        file="package:crystal_mace/weights/mace-mlearn-si.pt",
        sha256="927fd8bbec44140943738ff33b802c26d57c11da5dd683185316926e1936088b",
        licence="MIT",
        training_data=(
            "mlearn (Zuo et al. 2020) Si: ../shared/data/mlearn/Si/train.xyz (193 structures for training, 21 "
            "held out for model selection, seed 0); tested on the official test.xyz (25)"
        ),
        description=(
            "MACE (reduced width: 57,744 parameters; see the model card) trained for 15 epochs (2286 s, 1 CPU "
            "thread); test energy MAE 17.79 meV/atom, force MAE 0.100 eV/Å; model card: "
            "weights/mace-mlearn-si.md"
        ),
        metrics={
            "test_energy_mae_meV_per_atom": 17.7923,
            "test_forces_mae_eV_per_A": 0.10009,
        },
    ),
    WeightsManifest(
        name="mace-mlearn-cu",
        file="package:crystal_mace/weights/mace-mlearn-cu.pt",
        sha256="efdc8d0167bb65207ccdcea6cfe79d0d60d8b20d0bbc30506f129078308a46ff",
        licence="MIT",
        training_data=(
            "mlearn (Zuo et al. 2020) Cu: ../shared/data/mlearn/Cu/train.xyz (236 structures for training, 26 "
            "held out for model selection, seed 0); tested on the official test.xyz (31)"
        ),
        description=(
            "MACE (reduced width: 57,744 parameters; see the model card) trained for 10 epochs (2285 s, 1 CPU "
            "thread); test energy MAE 22.41 meV/atom, force MAE 0.036 eV/Å; model card: "
            "weights/mace-mlearn-cu.md"
        ),
        metrics={
            "test_energy_mae_meV_per_atom": 22.4105,
            "test_forces_mae_eV_per_A": 0.03587,
        },
    ),
    WeightsManifest(
        name="mace-mlearn-ge",
        file="package:crystal_mace/weights/mace-mlearn-ge.pt",
        sha256="75d548ad3d7a2f48bb70a32e1ba045d717dbf0d7f887a3d782cf89928b0a83c3",
        licence="MIT",
        training_data=(
            "mlearn (Zuo et al. 2020) Ge: ../shared/data/mlearn/Ge/train.xyz (205 structures for training, 23 "
            "held out for model selection, seed 0); tested on the official test.xyz (25)"
        ),
        description=(
            "MACE (reduced width: 57,744 parameters; see the model card) trained for 28 epochs (2283 s, 1 CPU "
            "thread); test energy MAE 8.40 meV/atom, force MAE 0.065 eV/Å; model card: weights/mace-mlearn-ge.md"
        ),
        metrics={
            "test_energy_mae_meV_per_atom": 8.3982,
            "test_forces_mae_eV_per_A": 0.065,
        },
    ),
    *FOUNDATION_WEIGHTS,
)


class MACEConfig(PotentialConfig):
    """Hyperparameters of :class:`MACEPotential`; defaults are the MACE paper's / reference code's.

    ``weights`` takes the names of :data:`WEIGHTS`. Inherited: ``checkpoint``, ``sha256``, ``elements``, ``cutoff`` (= MACE's r_max, 5 Å),
    ``e0s``, ``seed``, ``dtype`` (float64 by default, as MACE's training default), ``batch_size``,
    ``min_distance``. ``avg_num_neighbors``, ``scale`` and ``shift`` are set from the training data by
    :meth:`MACEPotential.statistics` unless given explicitly.
    """

    weights: Annotated[str, WEIGHTS] | None = Field(
        None, description="named weights shipped with the plugin (`crystal plugins info`)"
    )

    hidden_irreps: str = Field(
        "128x0e + 128x1o",
        description="node features between layers (e3nn irreps; dimensionless): K channels of every irrep, "
        "starting with 0e, e.g. '128x0e + 128x1o' (reference default), '32x0e + 32x1o' (small)",
    )
    max_ell: int = Field(3, ge=0, le=6, description="highest degree l of the spherical harmonics Y_lm(r̂) (and of A)")
    correlation: int | tuple[int, ...] = Field(
        3,
        description="highest order ν of the symmetric product basis (messages are (ν+1)-body); one value for "
        "every layer or one per layer, each 1..4",
    )
    num_interactions: int = Field(2, ge=1, le=6, description="number of message-passing layers T")
    num_bessel: int = Field(8, ge=1, le=64, description="number of Bessel radial basis functions")
    num_polynomial_cutoff: int = Field(
        5,
        ge=1,
        le=20,
        description="order p of the polynomial cutoff envelope (it and its first two derivatives vanish at the cutoff)",
    )
    radial_mlp: tuple[int, ...] = Field(
        (64, 64, 64), description="hidden widths of the SiLU MLP mapping radial features to tensor-product weights"
    )
    mlp_irreps: str = Field("16x0e", description="hidden irreps (scalars) of the last layer's non-linear readout")
    interaction_first: Literal["residual", "non_residual"] = Field(
        "residual",
        description="first layer: 'residual' (element-dependent self-connection of the embedding, MACE's "
        "RealAgnosticResidualInteractionBlock, the paper's update and mace-torch's ScaleShiftMACE default) or 'non_residual' (element-dependent linear map "
        "of the message, no self-connection; mace-torch's --model MACE)",
    )
    gate: Literal["silu", "tanh", "abs", "none"] = Field(
        "silu", description="activation of the last layer's readout MLP (mace-torch's --gate)"
    )
    pair_repulsion: bool = Field(
        False,
        description="add ZBL screened nuclear repulsion (per-element covalent-radius envelope) to the "
        "interaction energy, as MACE-MP-0b / MACE-MPA-0 (mace-torch's --pair_repulsion)",
    )
    distance_transform: Literal["none", "agnesi"] = Field(
        "none",
        description="transform of the distance seen by the Bessel basis: 'agnesi' as MACE-MP-0b / MACE-MPA-0 "
        "(mace-torch's --distance_transform Agnesi)",
    )
    apply_cutoff: bool = Field(
        True,
        description="envelope on the radial features (True, MACE's default) or on the radial MLP's output "
        "(False, mace-torch's apply_cutoff=False)",
    )
    covalent_radii: tuple[float, ...] | None = Field(
        None,
        description="Å, one per element (in `elements` order), used by pair_repulsion and the Agnesi "
        "transform; default: ASE's covalent radii (released models carry theirs)",
    )
    head: str | None = Field(
        None,
        description="the head of a multi-head mace-torch model to load (default: 'Default', else the first); "
        "recorded with the converted weights",
    )
    avg_num_neighbors: float = Field(
        1.0,
        gt=0,
        description="average number of neighbours within the cutoff (dimensionless; normalises the "
        "message sum); set from the training graphs",
    )
    scale: float = Field(
        1.0,
        gt=0,
        description="eV; per-atom interaction energies are scale·E_int + shift; set from the training "
        "data to the RMS of the force components (eV/Å, numerically)",
    )
    shift: float = Field(0.0, description="eV/atom; set from the training data to the mean of (E − Σ e0)/N")

    @field_validator("hidden_irreps")
    @classmethod
    def _check_hidden(cls, value: str) -> str:
        from e3nn import o3

        text = _irreps(value, "hidden_irreps")
        irreps = o3.Irreps(text)
        muls = {mul for mul, _ in irreps}
        if irreps[0].ir != o3.Irrep("0e") or len(muls) != 1 or len({ir for _, ir in irreps}) != len(irreps):
            raise ValueError(
                f"hidden_irreps {value!r} must start with 0e and hold every irrep once with the same multiplicity "
                "(the number of channels), e.g. '128x0e + 128x1o'"
            )
        return text

    @field_validator("mlp_irreps")
    @classmethod
    def _check_mlp(cls, value: str) -> str:
        return _irreps(value, "mlp_irreps", scalars_only=True)

    @field_validator("radial_mlp")
    @classmethod
    def _check_radial(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(w < 1 for w in value):
            raise ValueError(f"radial_mlp widths must be >= 1, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _check_correlation(self) -> MACEConfig:
        corr = (self.correlation,) if isinstance(self.correlation, int) else self.correlation
        if isinstance(self.correlation, tuple) and len(corr) != self.num_interactions:
            raise ValueError(
                f"correlation has {len(corr)} entries but num_interactions = {self.num_interactions} "
                "(give one value, or one per layer)"
            )
        if any(c < 1 or c > 4 for c in corr):
            raise ValueError(f"correlation must be in 1..4, got {self.correlation}")
        if self.covalent_radii is not None and self.elements and len(self.covalent_radii) != len(self.elements):
            raise ValueError(f"covalent_radii has {len(self.covalent_radii)} entries for {len(self.elements)} elements")
        return self


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(prev)


class MACEPotential(TrainablePotential):
    """MACE interatomic potential (Batatia et al., NeurIPS 2022) on e3nn, trained by crystal.

    >>> pot = MACEPotential(elements=("Cu",), hidden_irreps="8x0e + 8x1o")  # doctest: +SKIP
    >>> pot.compute(batch)  # energy (B,) eV, forces (N, 3) eV/Å, stress (B, 3, 3) eV/Å³  # doctest: +SKIP
    """

    name = "mace"
    memory_metric = "edges"  # messages on the radius graph at the cutoff
    version = __version__
    description = (
        "MACE (paper defaults: 2 layers, 128x0e+128x1o, max_ell 3, correlation 3 = 4-body messages, 8 Bessel + "
        "p=5 envelope, cutoff 5 Å), trainable on energies/forces/stress: total energy (eV), forces (eV/Å) and "
        "stress (eV/Å³) of batched crystals"
    )
    Config: ClassVar[type[ComponentConfig]] = MACEConfig
    consumes = "crystal"
    produces = "energy+forces+stress"
    devices = ("cpu", "cuda")
    weights = WEIGHTS

    @classmethod
    def build_model(cls, config: Any) -> torch.nn.Module:
        """A fresh :class:`MACE` for ``config`` (built in float64: exact coupling bases; core casts it to
        ``config.dtype``)."""
        assert isinstance(config, MACEConfig)
        from crystal.elements import atomic_number

        needs_z = config.pair_repulsion or config.distance_transform != "none"
        with _default_dtype(torch.float64):
            return MACE(
                num_elements=len(config.elements),
                r_max=config.cutoff,
                num_bessel=config.num_bessel,
                num_polynomial_cutoff=config.num_polynomial_cutoff,
                max_ell=config.max_ell,
                hidden_irreps=config.hidden_irreps,
                correlation=config.correlation if isinstance(config.correlation, int) else list(config.correlation),
                num_interactions=config.num_interactions,
                radial_mlp=list(config.radial_mlp),
                mlp_irreps=config.mlp_irreps,
                avg_num_neighbors=config.avg_num_neighbors,
                scale=config.scale,
                shift=config.shift,
                interaction_first=config.interaction_first,
                gate=config.gate,
                pair_repulsion=config.pair_repulsion,
                distance_transform=config.distance_transform,
                apply_cutoff=config.apply_cutoff,
                atomic_numbers=[atomic_number(el) for el in config.elements] if needs_z else None,
                covalent_radii=list(config.covalent_radii) if config.covalent_radii is not None else None,
            )

    def _read_checkpoint(self) -> dict[str, Any] | None:
        """Named weights of mace-torch's released models (``format = "pickled-module"``: their weights-only
        conversion, see :mod:`crystal_mace.convert`) and ``checkpoint`` files holding such a payload are
        converted to a crystal checkpoint here; everything else is core's crystal checkpoint."""
        from crystal.errors import ConfigError, WeightsError
        from crystal.weights import load_state_dict, resolve_weights, sha256sum
        from crystal_mace.convert import PAYLOAD_FORMAT, payload_to_checkpoint

        cfg = self.config
        assert isinstance(cfg, MACEConfig)
        payload: Any = None
        digest: str | None = None
        if cfg.weights is not None and cfg.checkpoint is None:
            entry = type(self).weights.entry(cfg.weights)
            if entry.format == "pickled-module":
                path, _entry = resolve_weights(cfg.weights)
                payload, digest = load_state_dict(cfg.weights), sha256sum(path)
        elif cfg.checkpoint is not None and cfg.weights is None and Path(cfg.checkpoint).is_file():
            digest = sha256sum(Path(cfg.checkpoint))
            if cfg.sha256 is not None and digest != cfg.sha256:
                raise WeightsError(
                    f"potential 'mace': checkpoint {str(cfg.checkpoint)!r} has sha256 {digest}, expected {cfg.sha256}"
                )
            try:
                obj = torch.load(cfg.checkpoint, map_location="cpu", weights_only=True)
            except Exception:  # not weights-only: core's reader gives the error
                obj = None
            if isinstance(obj, dict) and obj.get("format") == "crystal-converted-weights":
                obj = obj.get("payload")
            if isinstance(obj, dict) and obj.get("format") == PAYLOAD_FORMAT:
                payload = obj
        if payload is None:
            return super()._read_checkpoint()
        try:
            ckpt = payload_to_checkpoint(payload, head=cfg.head)
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"potential 'mace': cannot load the mace-torch model: {exc}") from None
        self.checkpoint_sha256 = digest
        return ckpt

    @classmethod
    def statistics(cls, config: Any, data: CrystalBatch, energy_offsets: torch.Tensor, graph: Any) -> dict[str, Any]:
        """MACE's data statistics of the training set (fields the user set explicitly are kept):

        * ``avg_num_neighbors`` = (number of directed edges within the cutoff) / (number of atoms);
        * ``shift`` = mean over crystals of the interaction energy per atom ``(E − Σ_i e0_{s_i}) / N`` (eV);
        * ``scale`` = RMS of all force components (MACE's default ``rms_forces_scaling``); without
          forces (or all zero) the standard deviation of the per-atom interaction energies, else 1.
        """
        out: dict[str, Any] = {}
        n_atoms = max(int(data.num_nodes), 1)
        edge_index = graph.edge_index
        if not bool(data.pbc.all()):
            # the edges core keeps: no periodic images along non-periodic axes
            src_pbc = data.pbc[data.batch[edge_index[0]]]
            edge_index = edge_index[:, ~((graph.shifts != 0) & ~src_pbc).any(dim=1)]
        avg = edge_index.shape[1] / n_atoms
        out["avg_num_neighbors"] = float(avg) if avg > 0 else 1.0
        energy = data.crystal_properties.get("energy")
        per_atom = None
        if energy is not None and len(data):
            per_atom = (energy.to(torch.float64) - energy_offsets.to(torch.float64)) / data.num_atoms.to(torch.float64)
            out["shift"] = float(per_atom.mean())
        forces = data.atom_properties.get("forces")
        rms = float(forces.to(torch.float64).pow(2).mean().sqrt()) if forces is not None and forces.numel() else 0.0
        if rms > 0:
            out["scale"] = rms
        elif per_atom is not None and per_atom.numel() > 1 and float(per_atom.std()) > 0:
            out["scale"] = float(per_atom.std())
        else:
            out["scale"] = 1.0
        explicit = getattr(config, "model_fields_set", set())
        return {k: v for k, v in out.items() if k not in explicit}
