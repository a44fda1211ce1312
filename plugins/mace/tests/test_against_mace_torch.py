"""Optional cross-check against the reference implementation (skipped unless ``mace-torch`` is importable).

The plugin does not depend on mace-torch. To run this check, install it next to the project
without its dependencies (it pins an old e3nn), plus the one import it needs::

    pip install --no-deps --target /tmp/mt mace-torch torch-ema
    PYTHONPATH=/tmp/mt OMP_NUM_THREADS=1 python -m pytest plugins/mace/tests/test_against_mace_torch.py

mace-torch's ``ScaleShiftMACE`` gets random weights. They are copied into our :class:`MACE`:
everything maps one-to-one except the product-basis weights. For those, the reference's
weighted coupling tensors ``U·W`` are symmetrised over their ν input indices and re-expressed
in our symmetric basis by least squares. The residual must vanish, because the two bases span
the same space. The per-atom energies must then agree to round-off. Tested with mace-torch 0.3.16.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from e3nn import o3

from crystal_mace.model import MACE

mace_modules = pytest.importorskip("mace.modules", reason="mace-torch is not installed (optional cross-check)")

torch.set_num_threads(1)


def _pair(hidden: str, max_ell: int, corr: int, first: str) -> tuple[MACE, torch.nn.Module, float]:
    import numpy as np
    from mace.modules.models import ScaleShiftMACE

    theirs = ScaleShiftMACE(
        r_max=4.0,
        num_bessel=8,
        num_polynomial_cutoff=5,
        max_ell=max_ell,
        interaction_cls=mace_modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=mace_modules.interaction_classes[first],
        num_interactions=2,
        num_elements=2,
        hidden_irreps=o3.Irreps(hidden),
        MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=np.zeros(2),
        avg_num_neighbors=6.0,
        atomic_numbers=[1, 2],
        correlation=corr,
        gate=torch.nn.functional.silu,
        radial_MLP=[16, 16],
        atomic_inter_scale=0.7,
        atomic_inter_shift=-0.2,
    )
    with torch.no_grad():
        for p in theirs.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    mine = MACE(
        2,
        r_max=4.0,
        max_ell=max_ell,
        hidden_irreps=hidden,
        correlation=corr,
        radial_mlp=(16, 16),
        avg_num_neighbors=6.0,
        scale=0.7,
        shift=-0.2,
        interaction_first="residual" if "Residual" in first else "non_residual",
    )
    ts = theirs.state_dict()
    new: dict[str, torch.Tensor] = {}
    for k, v in mine.state_dict().items():
        if ".symmetric_contraction." in k:
            continue
        tk = k.replace("node_embedding.", "node_embedding.linear.").replace(".radial.", ".conv_tp_weights.")
        assert ts[tk].shape == v.shape, (k, tk)
        new[k] = ts[tk]
    residual = 0.0
    for t, prod in enumerate(mine.products):
        for c, con in enumerate(prod.symmetric_contraction.contractions):
            pre = f"products.{t}.symmetric_contractions.contractions.{c}."
            for nu in range(1, con.correlation + 1):
                u_t = ts[pre + f"U_matrix_{nu}"]
                if con.dim_out == 1:
                    u_t = u_t.unsqueeze(0)
                w_t = (
                    ts[pre + "weights_max"]
                    if nu == con.correlation
                    else ts[pre + f"weights.{con.correlation - 1 - nu}"]
                )
                full = torch.einsum("...n,enk->e...k", u_t, w_t)  # (Z, M, D, ..., D, K)
                perms = list(itertools.permutations(range(2, 2 + nu)))
                sym = sum(full.permute(0, 1, *p, full.dim() - 1) for p in perms) / len(perms)
                u_m = getattr(con, f"U_{nu}")
                a = u_m.reshape(-1, u_m.shape[-1])
                b = sym.reshape(sym.shape[0], -1, sym.shape[-1])
                sol = torch.linalg.lstsq(a.expand(b.shape[0], *a.shape), b).solution
                residual = max(residual, float((a @ sol - b).abs().max()))
                new[f"products.{t}.symmetric_contraction.contractions.{c}.weights.{nu - 1}"] = sol
                new[f"products.{t}.symmetric_contraction.contractions.{c}.U_{nu}"] = u_m
    mine.load_state_dict(new, strict=True)
    return mine, theirs, residual


@pytest.mark.parametrize(
    ("hidden", "max_ell", "corr", "first"),
    [
        ("8x0e + 8x1o", 3, 3, "RealAgnosticResidualInteractionBlock"),
        ("8x0e + 8x1o", 2, 3, "RealAgnosticResidualInteractionBlock"),
        ("8x0e + 8x1o + 8x2e", 3, 2, "RealAgnosticResidualInteractionBlock"),
        ("8x0e + 8x1o", 3, 3, "RealAgnosticInteractionBlock"),
    ],
)
def test_same_energies_as_mace_torch(hidden: str, max_ell: int, corr: int, first: str) -> None:
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        mine, theirs, residual = _pair(hidden, max_ell, corr, first)
    finally:
        torch.set_default_dtype(prev)
    assert residual < 1e-12  # the reference's symmetrised coupling tensors lie in our basis's span
    g = torch.Generator().manual_seed(0)
    n = 10
    pos = torch.rand(n, 3, generator=g, dtype=torch.float64) * 5.0
    species = torch.randint(0, 2, (n,), generator=g)
    d = torch.cdist(pos, pos)
    i, j = torch.nonzero((d < 4.0) & (d > 0), as_tuple=True)
    ours = mine(species, torch.stack([i, j]), pos[j] - pos[i], torch.zeros(n, dtype=torch.long), 1)
    data = {
        "positions": pos,
        "node_attrs": torch.nn.functional.one_hot(species, 2).double(),
        "edge_index": torch.stack([j, i]),  # mace-torch: (sender, receiver)
        "shifts": torch.zeros(len(i), 3, dtype=torch.float64),
        "unit_shifts": torch.zeros(len(i), 3, dtype=torch.float64),
        "cell": torch.zeros(3, 3, dtype=torch.float64),
        "batch": torch.zeros(n, dtype=torch.long),
        "ptr": torch.tensor([0, n]),
        "head": torch.zeros(1, dtype=torch.long),
    }
    ref = theirs(data, training=False, compute_force=False)["node_energy"]
    assert ref.abs().mean() > 0.05
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=1e-10)
