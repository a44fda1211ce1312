"""SevenNet-0 (Park et al., J. Chem. Theory Comput. 20, 4857 (2024)) as a batched crystal potential.

Weights
    The checkpoints shipped in the ``sevenn`` wheel are sha256-verified and loaded by
    :func:`crystal.weights.load_state_dict`, i.e. ``torch.load(weights_only=True)``. They are
    not *pure* tensor dicts: the training ``config`` stores three numpy arrays (``shift``,
    ``shift_cp``, ``scale_cp``), so the weights-only unpickler needs the numpy
    reconstruction globals ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``,
    ``numpy.dtype`` and the concrete dtype classes (``numpy.dtypes.Float32DType`` ...).
    These are allow-listed with ``torch.serialization.safe_globals`` for the duration of
    the load only (no arbitrary class or callable is unpickled; sevenn itself uses
    ``weights_only=False``). The model is then rebuilt by sevenn's own
    ``SevenNetCheckpoint.build_model`` (``build_E3_equivariant_model`` + strict
    ``load_state_dict``, plain e3nn backend) from that verified dict.

Batching
    Per :meth:`SevenNetPotential.compute` call, :func:`crystal.neighbors.radius_graph` builds
    the periodic 5 Å graph of the whole chunk at once (edges across non-periodic axes
    dropped), edge vectors ``r_j + n L - r_i`` are recomputed differentiably from Cartesian
    positions and a homogeneous strain (the same construction as sevenn's
    ``EdgePreprocess``), and sevenn's ``AtomGraphSequential`` — without its
    ``force_output`` head — runs ONE forward per chunk of ``batch_size`` crystals. Forces
    and stress come from one first-order ``torch.autograd.grad`` w.r.t. positions and strain.

Units and conventions (those of :class:`crystal.components.PotentialOutput`):

* energy: eV, TOTAL per crystal (sevenn's ``inferred_total_energy``),
* forces: eV/Å, ``-∂E/∂r``,
* stress: eV/Å³, ``σ = (1/|V|) ∂E/∂ε`` (ASE sign: positive = tensile); sevenn's calculator
  returns the same tensor (it negates its internal "virial stress").

SevenNet-0 runs in float32 (as upstream) unless ``dtype="float64"`` is configured (the
same weights cast to double, for finite-difference checks); edge vectors are formed in the
batch's dtype and cast; outputs are cast to the batch's dtype and device.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field

from crystal.batch import CrystalBatch
from crystal.components import ComponentConfig, Potential, PotentialOutput
from crystal.errors import WeightsError
from crystal.manifest import NamedWeights, WeightsManifest
from crystal.neighbors import radius_graph
from crystal.weights import load_state_dict

if TYPE_CHECKING:
    from sevenn.nn.sequential import AtomGraphSequential

__all__ = ["SEVENNET_0_ELEMENTS", "SevenNetConfig", "SevenNetPotential", "build_model", "load_checkpoint"]

#: atomic numbers of SevenNet-0's type map: H–Bi (1–83) and Ac–Pu (89–94)
SEVENNET_0_ELEMENTS: frozenset[int] = frozenset(range(1, 84)) | frozenset(range(89, 95))

#: the named weights this component ships (declared once: `crystal plugins manifest --write`
#: copies them into crystal_plugin.toml, the config's `weights` field accepts exactly these names)
WEIGHTS = NamedWeights(
    WeightsManifest(
        name="sevennet-0",
        file="package:sevenn/pretrained_potentials/SevenNet_0__11Jul2024/checkpoint_sevennet_0.pth",
        sha256="7052cb42b7b3be42b40b97fa0d21077a48c54b5548948fc4dcf346629f813c36",
        licence="MIT",
        training_data="MPtrj (Materials Project trajectories of CHGNet, 1.58 M PBE/PBE+U structures)",
        description=(
            "SevenNet-0 (11Jul2024), sevenn's default '7net-0': 5 interaction layers, 128x0e+64x1e+32x2e "
            "features, cutoff 5 Å (XPLOR switch from 4.5 Å), 89 elements; shipped in the sevenn wheel"
        ),
    ),
    WeightsManifest(
        name="sevennet-0-22may2024",
        file="package:sevenn/pretrained_potentials/SevenNet_0__22May2024/checkpoint_sevennet_0.pth",
        sha256="5d389fafd512e6ae2830d74d0b66ffc49a55d3832653ff8e7bf7f1343013c1d1",
        licence="MIT",
        training_data="MPtrj (Materials Project trajectories of CHGNet, 1.58 M PBE/PBE+U structures)",
        description=(
            "SevenNet-0 (22May2024), the first release of SevenNet-0 (sevenn name '7net-0_22May2024'); same "
            "architecture and cutoff; shipped in the sevenn wheel"
        ),
    ),
)


class SevenNetConfig(ComponentConfig):
    """Settings of the SevenNet potential."""

    weights: Annotated[str, WEIGHTS] = Field(
        "sevennet-0",
        description="pretrained weights: 'sevennet-0' (SevenNet-0 11Jul2024, sevenn's default '7net-0') "
        "or 'sevennet-0-22may2024' (the first SevenNet-0 release)",
    )
    batch_size: int = Field(
        32,
        ge=1,
        description="crystals per model forward/backward pass (a memory/speed trade-off; results agree "
        "to float32 round-off)",
    )
    dtype: Literal["float32", "float64"] = Field(
        "float32",
        description="precision the model runs in: 'float32' (as trained and as sevenn's calculator) or "
        "'float64' (same weights in double precision: slower, smooth finite differences)",
    )


def _numpy_safe_globals() -> list[Any]:
    """The numpy globals a SevenNet checkpoint's config needs under ``weights_only=True``."""
    import numpy as np

    try:
        reconstruct = np._core.multiarray._reconstruct  # numpy >= 2
    except AttributeError:  # pragma: no cover - numpy 1.x
        reconstruct = np.core.multiarray._reconstruct
    out: list[Any] = [(reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype]
    if reconstruct.__module__.startswith("numpy._core"):
        out.append((reconstruct, "numpy._core.multiarray._reconstruct"))
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        for name in ("Float32DType", "Float64DType", "Int32DType", "Int64DType", "BoolDType"):
            if hasattr(dtypes, name):
                out.append(getattr(dtypes, name))
    return out


def load_checkpoint(weights: str) -> dict[str, Any]:
    """The sha256-verified SevenNet checkpoint dict, loaded with ``torch.load(weights_only=True)``.

    Only numpy's array-reconstruction globals are additionally allow-listed (see module doc).
    """
    with torch.serialization.safe_globals(_numpy_safe_globals()):
        checkpoint = load_state_dict(weights, map_location="cpu")
    if not isinstance(checkpoint, dict) or "config" not in checkpoint or "model_state_dict" not in checkpoint:
        raise WeightsError(f"weights {weights!r}: not a SevenNet checkpoint (need 'config' and 'model_state_dict')")
    return checkpoint


def build_model(
    weights: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> AtomGraphSequential:
    """Build SevenNet from the named, verified checkpoint, ready for batched inference.

    Reproduces ``sevenn.util.load_checkpoint(path).build_model()`` (e3nn backend) but takes
    the checkpoint dict from :func:`load_checkpoint` instead of sevenn's
    ``torch.load(weights_only=False)``. The ``force_output`` head is removed: forces and
    stress are taken by the plugin.
    """
    from sevenn.checkpoint import SevenNetCheckpoint, _config_cp_routine

    if weights not in WEIGHTS:
        raise WeightsError(f"sevennet: unknown weights {weights!r}; choose from {', '.join(WEIGHTS)}")
    raw = load_checkpoint(weights)

    class _VerifiedCheckpoint(SevenNetCheckpoint):
        def _load(self) -> None:  # sevenn's SevenNetCheckpoint._load without torch.load
            self._config_original = raw.get("config", {})
            self._model_state_dict = raw.get("model_state_dict", {})
            self._optimizer_state_dict = {}
            self._scheduler_state_dict = {}
            self._epoch = raw.get("epoch")
            self._time = raw.get("time", "Not found")
            self._hash = raw.get("hash", "Not found")
            self._config = _config_cp_routine(dict(self._config_original))
            self._loaded = True

    cp = _VerifiedCheckpoint(f"<crystal weights {weights}>")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = cp.build_model()
    except (AssertionError, RuntimeError, KeyError) as exc:
        raise WeightsError(f"weights {weights!r} do not build a SevenNet model: {exc}") from None
    if model.type_map is None or set(model.type_map) != SEVENNET_0_ELEMENTS:
        raise WeightsError(f"weights {weights!r}: element set differs from SevenNet-0's")
    model.delete_module_by_key("force_output")
    model.key_grad = None  # edge vectors carry the plugin's own autograd graph
    model.set_is_batch_data(True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if dtype != torch.float32:
        # sevenn's OnehotEmbedding hard-codes ``.float()``: cast its outputs to the model dtype
        embedding = model._modules["onehot_idx_to_onehot"]
        keys = [k for k in (embedding.key_output, embedding.key_additional_output) if k is not None]

        def _cast(module: torch.nn.Module, args: Any, output: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            for k in keys:
                output[k] = output[k].to(dtype)
            return output

        embedding.register_forward_hook(_cast)
    return model.to(device=device, dtype=dtype)


class SevenNetPotential(Potential):
    """SevenNet-0 universal potential: energy (eV), forces (eV/Å), stress (eV/Å³) of whole batches."""

    name = "sevennet"
    version = "0.1.0"
    description = (
        "SevenNet-0 pretrained universal potential (NequIP-type E(3)-equivariant GNN, cutoff 5 Å): total energy "
        "(eV), forces (eV/Å) and stress (eV/Å³, ASE sign) of batched crystals, 89 elements (Z = 1–83, 89–94)"
    )
    Config: ClassVar[type[ComponentConfig]] = SevenNetConfig
    consumes = "crystal"
    produces = "energy+forces+stress"
    devices = ("cpu", "cuda")
    weights = WEIGHTS
    default_weights = "sevennet-0"
    #: SevenNet-0's type map: H–Bi and Ac–Pu (no Po–Ra, Z = 84–88)
    elements: ClassVar[frozenset[int] | None] = SEVENNET_0_ELEMENTS
    memory_metric = "edges"  # equivariant messages on the radius graph

    config: SevenNetConfig

    def __init__(
        self, config: ComponentConfig | dict[str, Any] | None = None, *, device: str = "auto", **overrides: Any
    ) -> None:
        super().__init__(config, device=device, **overrides)
        self.model_dtype = torch.float64 if self.config.dtype == "float64" else torch.float32
        self.model = build_model(self.config.weights, self.device, self.model_dtype)

    @property
    def cutoff(self) -> float:
        """Graph cutoff radius of the loaded weights, Å (5 Å for SevenNet-0)."""
        return float(self.model.cutoff)

    # ------------------------------------------------------------------ public API
    def compute(self, batch: CrystalBatch, *, forces: bool = True, stress: bool = True) -> PotentialOutput:
        """Energy (B,) eV, forces (N, 3) eV/Å, stress (B, 3, 3) eV/Å³ of every crystal."""
        dtype, out_device = batch.dtype, batch.device
        B = len(batch)
        if B == 0:
            return PotentialOutput.empty(batch, forces=forces, stress=stress)
        self.check_elements(batch)
        self.check_geometry(batch)
        work = batch if batch.device == self.device else batch.to(self.device)
        energies: list[torch.Tensor] = []
        force_parts: list[torch.Tensor] = []
        strain_grads: list[torch.Tensor] = []
        size = self.config.batch_size
        for start in range(0, B, size):
            chunk = work if size >= B else work.select(list(range(start, min(start + size, B))))
            e, f, g = self._forward(chunk, forces=forces, stress=stress)
            energies.append(e)
            if f is not None:
                force_parts.append(f)
            if g is not None:
                strain_grads.append(g)
        out = PotentialOutput(energy=torch.cat(energies).to(device=out_device, dtype=dtype))
        if forces:
            out.forces = torch.cat(force_parts).to(device=out_device, dtype=dtype)
        if stress:
            dEde = torch.cat(strain_grads).to(device=out_device, dtype=dtype)
            out.stress = dEde / batch.volumes.abs()[:, None, None]
        return out

    # ------------------------------------------------------------------ internals
    def _forward(
        self, batch: CrystalBatch, *, forces: bool, stress: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """One batched SevenNet pass: (K,) total energies, (n, 3) forces, (K, 3, 3) ∂E/∂ε."""
        import sevenn._keys as KEY

        K = len(batch)
        with torch.no_grad():
            graph = radius_graph(batch, self.cutoff)
            edge_index, shifts = graph.edge_index, graph.shifts
            # no images across non-periodic axes (as sevenn's/ASE's neighbour list)
            if not bool(batch.pbc.all()):
                src_pbc = batch.pbc[batch.batch[edge_index[0]]]
                keep = ~((shifts != 0) & ~src_pbc).any(dim=1)
                edge_index, shifts = edge_index[:, keep], shifts[keep]
        need_grad = forces or stress
        with torch.set_grad_enabled(need_grad):
            pos = batch.cart_coords.detach().requires_grad_(forces)
            lat = batch.lattices.detach()
            strain = torch.zeros((K, 3, 3), dtype=pos.dtype, device=pos.device, requires_grad=stress)
            if stress:
                sym = 0.5 * (strain + strain.transpose(1, 2))
                deform = torch.eye(3, dtype=pos.dtype, device=pos.device) + sym
                pos_s = torch.einsum("ni,nij->nj", pos, deform[batch.batch])
                lat_s = lat @ deform
            else:
                pos_s, lat_s = pos, lat
            i, j = edge_index
            vec = pos_s[j] - pos_s[i] + torch.einsum("ei,eij->ej", shifts.to(pos.dtype), lat_s[batch.batch[i]])
            data = {
                KEY.NODE_FEATURE: batch.atomic_numbers,
                KEY.ATOMIC_NUMBERS: batch.atomic_numbers,
                KEY.EDGE_IDX: edge_index,
                KEY.EDGE_VEC: vec.to(self.model_dtype),
                KEY.BATCH: batch.batch,
            }
            result = self.model(data)
            total = result[KEY.PRED_TOTAL_ENERGY]
            if total.shape[0] < K:  # scatter output is sized by the last crystal's index + 1
                total = torch.cat([total, total.new_zeros(K - total.shape[0])])
            inputs = [t for t, want in ((pos, forces), (strain, stress)) if want]
            grads = torch.autograd.grad(total.sum(), inputs, allow_unused=True) if inputs else ()
        grads = tuple(torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads, strict=True))
        energy = total.detach().to(torch.float64)
        f = -grads[0] if forces else None
        g = grads[-1] if stress else None
        return energy, f, g
