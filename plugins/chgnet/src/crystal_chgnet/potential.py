"""CHGNet (Deng et al., Nat. Mach. Intell. 5, 1031 (2023)) as a batched crystal potential.

The model is rebuilt from a weights-only checkpoint (``crystal.weights.load_state_dict``:
sha256-verified, ``torch.load(weights_only=True)``); no pickled module is ever executed.

Per :meth:`CHGNetPotential.compute` call the batch is converted once to pymatgen
structures, CHGNet's own graph converter builds one crystal graph per crystal, and the
model runs ONE forward (plus one backward for forces/stress) per chunk of
``batch_size`` crystals. Forces and stress are taken by a first-order
``torch.autograd.grad`` (CHGNet's own ``forward`` keeps a double-backward graph for
training, ``create_graph=True``, which is 2-4x slower for inference and gives the same
numbers).

Units and conventions (those of :class:`crystal.components.PotentialOutput`):

* energy: eV, TOTAL per crystal (CHGNet predicts eV/atom; multiplied by the atom count),
* forces: eV/Å, ``-∂E/∂r``,
* stress: eV/Å³, ``σ = (1/|V|) ∂E/∂ε`` (ASE sign: positive = tensile). CHGNet reports GPa
  with the same sign; its calculator multiplies by ``ase.units.GPa``. Here the strain
  derivative is divided by ``|V|`` directly, which also fixes the sign for left-handed
  cells (CHGNet divides by the signed triple product).

CHGNet runs in float32 internally; outputs are cast to the batch's dtype and device.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field

from crystal.batch import CrystalBatch
from crystal.components import ComponentConfig, Potential, PotentialOutput
from crystal.errors import StructureError, WeightsError
from crystal.manifest import NamedWeights, WeightsManifest
from crystal.weights import load_state_dict

if TYPE_CHECKING:
    from chgnet.graph import CrystalGraph
    from chgnet.model import CHGNet
    from pymatgen.core import Structure

__all__ = ["CHGNetConfig", "CHGNetPotential", "build_model"]

#: CHGNet version string of each weights name, and CHGNet.load's ``mlp_out_bias`` rule
#: (True only for 0.2.0, for backward compatibility; see chgnet issue #79).
_CHECKPOINTS: dict[str, tuple[str, bool]] = {
    "chgnet-0.3.0": ("0.3.0", False),
    "chgnet-0.2.0": ("0.2.0", True),
}


#: the named weights this component ships (declared once: `crystal plugins manifest --write`
#: copies them into crystal_plugin.toml, the config's `weights` field accepts exactly these names)
WEIGHTS = NamedWeights(
    WeightsManifest(
        name="chgnet-0.3.0",
        file="package:chgnet/pretrained/0.3.0/chgnet_0.3.0_e29f68s314m37.pth.tar",
        sha256="d14ab7c0f093efe64b60a7bcd540bca10e74fb7f46c86108a079af60524659d1",
        licence="BSD-3-Clause-LBNL",
        training_data="MPtrj (Materials Project trajectories, 1.58 M structures)",
        description=(
            "CHGNet v0.3.0 (2023-10-22): atom-graph cutoff 6 Å, bond-graph cutoff 3 Å, 412,525 parameters; "
            "shipped in the chgnet wheel"
        ),
        metrics={
            "split": "MPtrj random 90/5/5 train/val/test (chgnet pretrained/0.3.0/README.md)",
            "energy_mae_test_meV_per_atom": 29,
            "force_mae_test_meV_per_A": 68,
            "stress_mae_test_GPa": 0.314,
            "magmom_mae_test_muB": 0.037,
            "energy_mae_val_meV_per_atom": 29,
            "force_mae_val_meV_per_A": 70,
            "stress_mae_val_GPa": 0.308,
            "magmom_mae_val_muB": 0.037,
        },
    ),
    WeightsManifest(
        name="chgnet-0.2.0",
        file="package:chgnet/pretrained/0.2.0/chgnet_0.2.0_e30f77s348m32.pth.tar",
        sha256="ef624f78b6db9d315b4ef256f1bb3207449924191b91720dc17d3f60c5df980e",
        licence="BSD-3-Clause-LBNL",
        training_data="MPtrj (Materials Project trajectories, 1.58 M structures)",
        description=(
            "CHGNet v0.2.0 (2023-02-24), the weights of the Nature Machine Intelligence paper: atom-graph cutoff "
            "5 Å, bond-graph cutoff 3 Å, 400,438 parameters; shipped in the chgnet wheel"
        ),
        metrics={
            "split": "MPtrj random 80/10/10 train/val/test (chgnet pretrained/0.2.0/README.md; Deng et al. 2023)",
            "energy_mae_test_meV_per_atom": 30,
            "force_mae_test_meV_per_A": 77,
            "stress_mae_test_GPa": 0.348,
            "magmom_mae_test_muB": 0.032,
            "energy_mae_val_meV_per_atom": 30,
            "force_mae_val_meV_per_A": 75,
            "stress_mae_val_GPa": 0.35,
            "magmom_mae_val_muB": 0.033,
        },
    ),
)


class CHGNetConfig(ComponentConfig):
    """Settings of the CHGNet potential."""

    weights: Annotated[str, WEIGHTS] = Field(
        "chgnet-0.3.0",
        description="pretrained weights: 'chgnet-0.3.0' (atom-graph cutoff 6 Å, default) or "
        "'chgnet-0.2.0' (the paper's weights, cutoff 5 Å)",
    )
    batch_size: int = Field(
        64,
        ge=1,
        description="crystals per model forward/backward pass (a memory/speed trade-off; results "
        "agree to float32 round-off, ~1e-6 eV/atom)",
    )
    on_isolated_atoms: Literal["error", "warn"] = Field(
        "error",
        description="an atom with no neighbour within the atom-graph cutoff (6 Å for 0.3.0, 5 Å for "
        "0.2.0) gets no message passing and unphysical energy/zero force: 'error' raises "
        "StructureError, 'warn' emits a RuntimeWarning and computes anyway (CHGNet's own default)",
    )


def build_model(weights: str, device: torch.device | str = "cpu") -> CHGNet:
    """Build a CHGNet model from the named, sha256-verified, weights-only checkpoint.

    Reproduces ``CHGNet.load(model_name=...)``: ``CHGNet(**model_args, mlp_out_bias=...,
    version=...)`` followed by a strict ``load_state_dict``.
    """
    from chgnet.model import CHGNet

    if weights not in _CHECKPOINTS:
        raise WeightsError(f"chgnet: unknown weights {weights!r}; choose from {', '.join(_CHECKPOINTS)}")
    version, mlp_out_bias = _CHECKPOINTS[weights]
    checkpoint = load_state_dict(weights, map_location="cpu")
    try:
        state = checkpoint["model"]
        model_args = dict(state["model_args"])
        state_dict = state["state_dict"]
    except (KeyError, TypeError) as exc:
        raise WeightsError(f"weights {weights!r}: not a CHGNet checkpoint (missing {exc})") from None
    model_args.pop("version", None)
    with contextlib.redirect_stdout(io.StringIO()):  # CHGNet.__init__ prints its size
        model = CHGNet(**model_args, mlp_out_bias=mlp_out_bias, version=version)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"weights {weights!r} do not fit the CHGNet architecture: {exc}") from None
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device)


class CHGNetPotential(Potential):
    """CHGNet universal potential: energy (eV), forces (eV/Å), stress (eV/Å³) of whole batches."""

    name = "chgnet"
    version = "0.1.0"
    description = (
        "CHGNet pretrained universal potential: total energy (eV), forces (eV/Å) and stress (eV/Å³, ASE sign) of "
        "batched crystals, elements H–Pu (Z = 1–94)"
    )
    Config: ClassVar[type[ComponentConfig]] = CHGNetConfig
    consumes = "crystal"
    produces = "energy+forces+stress"
    devices = ("cpu", "cuda")
    weights = WEIGHTS
    default_weights = "chgnet-0.3.0"
    #: CHGNet's atom embedding covers H (1) to Pu (94)
    elements: ClassVar[frozenset[int] | None] = frozenset(range(1, 95))
    memory_metric = "edges"  # atom graph at the cutoff (plus a bond graph within it)

    config: CHGNetConfig

    def __init__(
        self, config: ComponentConfig | dict[str, Any] | None = None, *, device: str = "auto", **overrides: Any
    ) -> None:
        super().__init__(config, device=device, **overrides)
        self.model = build_model(self.config.weights, self.device)
        self.converter = self.model.graph_converter
        # isolated atoms are detected (and reported with the crystal id) here, not in chgnet
        self.converter.set_isolated_atom_response("ignore")

    @property
    def cutoff(self) -> float:
        """Atom-graph cutoff radius of the loaded weights, Å."""
        return float(self.converter.atom_graph_cutoff)

    # ------------------------------------------------------------------ public API
    def compute(self, batch: CrystalBatch, *, forces: bool = True, stress: bool = True) -> PotentialOutput:
        """Energy (B,) eV, forces (N, 3) eV/Å, stress (B, 3, 3) eV/Å³ of every crystal."""
        dtype, out_device = batch.dtype, batch.device
        B = len(batch)
        if B == 0:
            return PotentialOutput.empty(batch, forces=forces, stress=stress)
        self.check_elements(batch)
        self.check_geometry(batch)
        graphs = self.graphs(batch)
        energies: list[torch.Tensor] = []
        force_parts: list[torch.Tensor] = []
        strain_grads: list[torch.Tensor] = []
        size = self.config.batch_size
        for start in range(0, B, size):
            e, f, g = self._forward(graphs[start : start + size], forces=forces, stress=stress)
            energies.append(e)
            if f is not None:
                force_parts.append(f)
            if g is not None:
                strain_grads.append(g)
        energy = torch.cat(energies).to(device=out_device, dtype=dtype)
        out = PotentialOutput(energy=energy)
        if forces:
            out.forces = torch.cat(force_parts).to(device=out_device, dtype=dtype)
        if stress:
            dEde = torch.cat(strain_grads).to(device=out_device, dtype=dtype)
            out.stress = dEde / batch.volumes[:, None, None]
        return out

    def structures(self, batch: CrystalBatch) -> list[Structure]:
        """The crystals as pymatgen structures (lattice rows, unwrapped coordinates and pbc kept)."""
        from pymatgen.core import Lattice, Structure

        cpu = batch if batch.device.type == "cpu" else batch.to("cpu")
        lats = cpu.lattices.detach().double().numpy()
        fracs = cpu.frac_coords.detach().double().numpy()
        zs = cpu.atomic_numbers.tolist()
        pbcs = cpu.pbc.tolist()
        ptr = cpu.ptr.tolist()
        return [
            Structure(Lattice(lats[b], pbc=tuple(pbcs[b])), zs[ptr[b] : ptr[b + 1]], fracs[ptr[b] : ptr[b + 1]])
            for b in range(len(cpu))
        ]

    def graphs(self, batch: CrystalBatch) -> list[CrystalGraph]:
        """CHGNet crystal graphs of every crystal (CHGNet's own converter), on the model device.

        Applies :attr:`CHGNetConfig.on_isolated_atoms`.
        """
        graphs = []
        isolated: list[str] = []
        for b, structure in enumerate(self.structures(batch)):
            graph = self.converter(structure, graph_id=batch.ids[b])
            n_centres = int(torch.unique(graph.atom_graph[:, 0]).numel()) if graph.atom_graph.numel() else 0
            if n_centres < len(structure):
                isolated.append(f"{batch.ids[b]} ({len(structure) - n_centres} of {len(structure)} atoms)")
            graphs.append(graph if self.device.type == "cpu" else graph.to(str(self.device)))
        if isolated:
            msg = (
                f"chgnet: isolated atoms (no neighbour within the {self.cutoff:g} Å atom-graph cutoff) in "
                f"crystal(s) {', '.join(isolated)}; CHGNet is unreliable for them (vacuum or too-large cell?)"
            )
            if self.config.on_isolated_atoms == "error":
                raise StructureError(msg + "; set on_isolated_atoms='warn' to compute anyway")
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
        return graphs

    # ------------------------------------------------------------------ internals
    def _forward(
        self, graphs: list[CrystalGraph], *, forces: bool, stress: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """One batched CHGNet pass: (K,) total energies, (n, 3) forces, (K, 3, 3) ∂E/∂ε."""
        from chgnet.model.model import BatchedGraph

        model = self.model
        need_grad = forces or stress
        with torch.set_grad_enabled(need_grad), warnings.catch_warnings():
            # BatchedGraph.from_graphs builds its volume tensor from 0-d tensors that carry grad
            warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True")
            bg = BatchedGraph.from_graphs(
                graphs,
                bond_basis_expansion=model.bond_basis_expansion,
                angle_basis_expansion=model.angle_basis_expansion,
                compute_stress=stress,
            )
            pred = model._compute(bg, compute_force=False, compute_stress=False)
            n_atoms = pred["atoms_per_graph"].to(pred["e"].dtype)
            comp = model.composition_model(graphs) if model.composition_model is not None else 0.0
            per_atom = pred["e"] + comp if model.is_intensive else (pred["e"] + comp) / n_atoms
            total = per_atom * n_atoms
            grads: tuple[torch.Tensor, ...] = ()
            if need_grad:
                inputs = [*bg.atom_positions] if forces else []
                if stress:
                    inputs += list(bg.strains)
                grads = torch.autograd.grad(total.sum(), inputs)
        # per-atom energy in float32 times the atom count in float64, as CHGNetCalculator does
        energy = per_atom.detach().double() * pred["atoms_per_graph"].double()
        f = -torch.cat(grads[: len(graphs)]) if forces else None
        g = torch.stack(grads[-len(graphs) :]) if stress else None
        return energy, f, g
