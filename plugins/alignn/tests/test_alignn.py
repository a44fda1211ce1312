"""Tests of the crystal-alignn encoder plugin (CPU, about 15 s on 2 cores).

References that do not use the code under test: the atom graph against the reference
construction (``usnistgov/alignn``: k-nearest shell with ties, cutoff extension, undirected
union) re-expressed with pymatgen's neighbour list; the edge-gated convolution against an
edge-by-edge Python loop; the line graph against explicit bond-angle cosines.
Models are kept small with :data:`SMALL` except in the contract test (default size).
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from crystal.batch import CrystalBatch
from crystal.errors import ConfigError, StructureError
from crystal.testing import permute, random_rotation, rotate, supercell, translate, unimodular_recell
from crystal.testing.contracts import check_plugin, sample_batch
from crystal_alignn.encoder import ALIGNNEncoder
from crystal_alignn.graph import alignn_graph
from crystal_alignn.layers import EdgeGatedGraphConv, RBFExpansion
from crystal_alignn.layers.edge_gated_conv import GATE_EPS

SMALL = {
    "hidden_features": 16,
    "embedding_features": 8,
    "alignn_layers": 2,
    "gcn_layers": 1,
    "edge_input_features": 16,
    "triplet_input_features": 8,
}
PMG_STRUCTURES = Path(__import__("pymatgen.util").util.__file__).parent / "structures"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pmg(*names: str):
    from pymatgen.core import Structure

    return [Structure.from_file(PMG_STRUCTURES / f"{n}.json") for n in names]


@pytest.fixture(scope="module")
def crystals() -> CrystalBatch:
    """Rattled Si / NaCl / Cu2 (no ties) and SrTiO3 / TiO2 (many exactly tied neighbours)."""
    extra = CrystalBatch.from_structures(_pmg("SrTiO3", "TiO2"))
    return CrystalBatch.concat([sample_batch(), extra])


def _small(**kw) -> ALIGNNEncoder:
    return ALIGNNEncoder({**SMALL, **kw}, device="cpu")


# --------------------------------------------------------------------------- contract
def test_contract_at_default_size():
    enc = check_plugin("encoder", "alignn")
    assert isinstance(enc, ALIGNNEncoder)
    cfg = enc.config
    defaults = (cfg.bond_rbf_max, cfg.max_neighbors, cfg.alignn_layers, cfg.gcn_layers, cfg.edge_input_features)
    assert defaults == (8.0, 12, 4, 4, 80)
    assert (cfg.triplet_input_features, cfg.embedding_features, cfg.hidden_features) == (40, 64, 256)
    # 4.03 M parameters for one scalar target (the paper's ALIGNN has about 4.0 M)
    assert sum(p.numel() for p in enc.net.parameters()) == 4_027_009


def test_import_is_light():
    code = "import sys, crystal_alignn; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------ graph
def _reference_graph(structure, cutoff: float = 8.0, k: int = 12) -> np.ndarray:
    """The reference's k-nearest graph with pymatgen's neighbour list: rows (i, j, vector).

    ``nearest_neighbor_edges``: enlarge the radius (longest lattice vector, else double it)
    until every site has k neighbours; each site keeps all neighbours up to its k-th
    distance. ``use_canonize`` + ``build_undirected_edgedata``: the set of kept bonds and
    their reverses (each once, apart from the reference's doubled self-image bonds).
    """
    r = cutoff
    while True:
        nbrs = structure.get_all_neighbors(r)
        if min(len(n) for n in nbrs) >= k:
            break
        longest = max(structure.lattice.abc)
        r = longest if r < longest else 2 * r
    bonds = set()
    for i, neighbours in enumerate(nbrs):
        neighbours = sorted(neighbours, key=lambda n: n.nn_distance)
        dk = neighbours[k - 1].nn_distance
        for n in neighbours:
            if n.nn_distance <= dk + 1e-6:
                v = tuple(np.round(n.coords - structure[i].coords, 6) + 0.0)
                bonds.add((i, n.index, v))
                bonds.add((n.index, i, tuple(-x + 0.0 for x in v)))
    return np.array(sorted((i, j, *v) for i, j, v in bonds))


def _ours(batch: CrystalBatch, k: int = 12) -> np.ndarray:
    g = alignn_graph(batch, k, with_line_graph=False)
    rows = torch.cat([g.edge_index.T.double(), torch.round(g.vectors, decimals=6)], dim=1) + 0.0
    return np.array(sorted(tuple(r) for r in rows.tolist()))


@pytest.mark.parametrize("names", [("SrTiO3",), ("TiO2",), ("Graphite",), ("LiFePO4",), ("CsCl",)])
def test_atom_graph_matches_reference_construction(names):
    (s,) = _pmg(*names)
    ref, ours = _reference_graph(s), _ours(CrystalBatch.from_structures([s]))
    assert ref.shape == ours.shape
    np.testing.assert_allclose(ours, ref, atol=2e-6)


def test_cutoff_extension_and_search_radius_independence(monkeypatch):
    from pymatgen.core import Lattice, Structure

    # 9 Å cubic cell, 2 atoms: no neighbour within 8 Å for anyone -> the radius grows
    sparse = Structure(Lattice.cubic(9.0), ["Ar", "Ar"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    si = _pmg("Si")[0]
    batch = CrystalBatch.from_structures([si, sparse])
    ours = _ours(batch)
    ref_si, ref_sparse = _reference_graph(si), _reference_graph(sparse)
    ref_sparse[:, :2] += 2  # atom indices of the second crystal in the batch
    np.testing.assert_allclose(ours, np.array(sorted(map(tuple, np.vstack([ref_si, ref_sparse])))), atol=2e-6)
    # undirected, and every atom has at least k neighbours
    g = alignn_graph(batch, 12, with_line_graph=False)
    assert torch.bincount(g.edge_index[0]).min() >= 12
    assert sorted(map(tuple, g.edge_index.T.tolist())) == sorted(map(tuple, g.edge_index.flip(0).T.tolist()))
    # the reference's extension makes the graph the exact k-shell whatever the search radius:
    # many growth rounds from 0.5 Å, or one search at 12 Å, give the same graph
    import crystal_alignn.graph as graph_module

    for start in (0.5, 12.0):
        monkeypatch.setattr(graph_module, "_start_radius", lambda b, k, r=start: torch.full((len(b),), r))
        np.testing.assert_allclose(_ours(batch), ours, atol=1e-9)


def test_line_graph_cosines_are_bond_angles():
    batch = CrystalBatch.from_structures(_pmg("Li2O"))
    g = alignn_graph(batch, 12)
    e1, e2 = g.line_index
    assert torch.equal(g.edge_index[1, e1], g.edge_index[0, e2])  # bonds meet head to tail at b
    indeg = torch.bincount(g.edge_index[1], minlength=batch.num_nodes)
    outdeg = torch.bincount(g.edge_index[0], minlength=batch.num_nodes)
    assert e1.numel() == int((indeg * outdeg).sum())
    for t in range(0, e1.numel(), 97):  # angle a-b-c at b from the bond vectors b->a and b->c
        ba, bc = -g.vectors[e1[t]].numpy(), g.vectors[e2[t]].numpy()
        cos = ba @ bc / np.linalg.norm(ba) / np.linalg.norm(bc)
        assert g.cosines[t].item() == pytest.approx(cos, abs=1e-12)


def test_rbf_matches_reference_form():
    rbf = RBFExpansion(0.0, 8.0, 80)
    d = torch.tensor([0.0, 1.234, 7.9], dtype=torch.float64)
    centres = np.linspace(0.0, 8.0, 80)
    gamma = 1.0 / np.diff(centres).mean()  # the reference: 1 / lengthscale (not squared)
    expected = np.exp(-gamma * (d.numpy()[:, None] - centres) ** 2)
    np.testing.assert_allclose(rbf(d).numpy(), expected, rtol=1e-12)


# ------------------------------------------------------------------------------ layers
@pytest.mark.parametrize("normalize", [True, False])
def test_edge_gated_conv_matches_edge_by_edge_loop(normalize):
    torch.manual_seed(0)
    n, e, f = 5, 14, 6
    edge_index = torch.randint(0, n, (2, e))
    edge_index[1, 0] = 4
    edge_index[1][edge_index[1] == 3] = 2  # node 3 receives nothing: h_3 = 0
    x, y = torch.randn(n, f, dtype=torch.float64), torch.randn(e, f, dtype=torch.float64)
    conv = EdgeGatedGraphConv(f, f, normalize_gates=normalize).double().eval()
    for bn in (conv.bn_nodes, conv.bn_edges):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)

    def bn(mod, v):
        return (v - mod.running_mean) / torch.sqrt(mod.running_var + mod.eps) * mod.weight + mod.bias

    def lin(mod, v):
        return mod.weight @ v + mod.bias

    silu = torch.nn.functional.silu
    with torch.no_grad():
        x_new, y_new = conv(edge_index, x, y)
        for k in range(e):
            i, j = edge_index[:, k].tolist()
            m = lin(conv.src_gate, x[i]) + lin(conv.dst_gate, x[j]) + lin(conv.edge_gate, y[k])
            assert torch.allclose(y_new[k], y[k] + silu(bn(conv.bn_edges, m)), atol=1e-12)
        for j in range(n):
            num, den = torch.zeros(f, dtype=torch.float64), torch.zeros(f, dtype=torch.float64)
            for k in range(e):
                if edge_index[1, k] == j:
                    i = int(edge_index[0, k])
                    gate = torch.sigmoid(
                        lin(conv.src_gate, x[i]) + lin(conv.dst_gate, x[j]) + lin(conv.edge_gate, y[k])
                    )
                    num += gate * lin(conv.dst_update, x[i])
                    den += gate
            h = num / (den + GATE_EPS) if normalize else num
            expected = x[j] + silu(bn(conv.bn_nodes, lin(conv.src_update, x[j]) + h))
            assert torch.allclose(x_new[j], expected, atol=1e-12), j


# ------------------------------------------------------------------------- symmetries
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_invariances(crystals, dtype):
    enc = _small(seed=1)
    if dtype == torch.float64:
        enc.net.double()
    # float32 round-off is ~3e-8 here; a 2 % strain moves the predictions by ~4e-6 (checked below)
    atol, rtol = (1e-12, 0.0) if dtype == torch.float64 else (4e-7, 0.0)

    def predict(b: CrystalBatch) -> torch.Tensor:
        out = enc.predict(b)["prediction"]
        assert out.dtype == dtype
        return out

    ref = predict(crystals)
    assert ref.std() > 1e-3  # different crystals, different predictions
    R = random_rotation(torch.Generator().manual_seed(3))
    permuted, _ = permute(crystals, torch.Generator().manual_seed(4))
    cases = {
        "rotation": rotate(crystals, R),
        "translation": translate(crystals, torch.tensor([0.3, -1.7, 2.2])),
        "permutation": permuted,
        "supercell 2x1x1": supercell(crystals, (2, 1, 1)),
        "supercell 2x2x2": supercell(crystals, (2, 2, 2)),
        "unimodular recell": unimodular_recell(crystals),
    }
    for label, other in cases.items():
        torch.testing.assert_close(
            predict(other), ref, atol=atol, rtol=rtol, msg=lambda m, label=label: f"{label}: {m}"
        )
    # the tolerances are tight enough to see a small change of geometry
    strained = crystals.with_positions(crystals.frac_coords, crystals.lattices * 1.02)
    assert (predict(strained) - ref).abs().max() > 5 * atol


def test_batched_equals_one_by_one_and_left_handed_cell(crystals):
    enc = _small(seed=2)
    enc.net.double()
    ref = enc.predict(crystals)["prediction"]
    singles = torch.cat([enc.predict(crystals.select([i]))["prediction"] for i in range(len(crystals))])
    torch.testing.assert_close(singles, ref, atol=1e-10, rtol=1e-10)
    inverted = crystals.with_positions(crystals.frac_coords, -crystals.lattices)  # bond angles unchanged
    torch.testing.assert_close(enc.predict(inverted)["prediction"], ref, atol=1e-10, rtol=1e-10)


# --------------------------------------------------------------------------- targets
def test_per_atom_and_multi_target_shapes(crystals):
    targets = [
        {"name": "energy", "unit": "eV/atom"},
        {"name": "dipole", "dim": 3},
        {"name": "metal", "task": "classification"},
        {"name": "charge", "level": "atom"},
        {"name": "moment", "level": "atom", "dim": 2},
    ]
    enc = _small(targets=targets)
    out = enc.predict(crystals)
    b, n = len(crystals), crystals.num_nodes
    assert enc.target_set.structure_width == 1 + 3 + 2 and enc.target_set.atom_width == 3
    assert out["energy"].shape == (b,) and out["dipole"].shape == (b, 3) and out["metal"].shape == (b,)
    assert out["charge"].shape == (n,) and out["moment"].shape == (n, 2)
    assert ((out["metal"] > 0) & (out["metal"] < 1)).all()
    # per-atom outputs follow the atoms under a permutation
    permuted, order = permute(crystals, torch.Generator().manual_seed(5))
    torch.testing.assert_close(enc.predict(permuted)["charge"], out["charge"][order], atol=2e-5, rtol=2e-5)
    three = _small(
        targets=[{"name": "a"}, {"name": "b"}, {"name": "phase", "task": "classification", "num_classes": 3}]
    )
    out = three.predict(crystals)
    assert out["a"].shape == (b,) and out["b"].shape == (b,) and out["phase"].shape == (b, 3)
    torch.testing.assert_close(out["phase"].sum(-1), torch.ones(b))


def test_save_load_identical(tmp_path, crystals):
    enc = _small(seed=7, targets=[{"name": "gap", "unit": "eV"}, {"name": "metal", "task": "classification"}])
    enc.target_set.fit_normalizer({"gap": torch.tensor([0.5, 1.0, 3.0])})
    enc.net.train()
    with torch.no_grad():  # move the BatchNorm running statistics away from their initial values
        enc.net(crystals)
    digest = enc.save(tmp_path / "alignn.pt", metadata={"data": "test"})
    again = ALIGNNEncoder(checkpoint=tmp_path / "alignn.pt", sha256=digest, device="cpu")
    assert again.config.hidden_features == SMALL["hidden_features"] and again.metadata == {"data": "test"}
    a, b = enc.predict(crystals), again.predict(crystals)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_overfits_eight_real_structures():
    batch = CrystalBatch.from_structures(_pmg("Si", "LiFePO4", "SrTiO3", "CsCl", "Li2O", "TiO2", "Graphite", "K2O2"))
    y = torch.randn(8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2.0 + 1.0
    enc = _small(seed=0)
    enc.target_set.fit_normalizer({"prediction": y})
    opt = torch.optim.Adam(enc.net.parameters(), lr=1e-2)
    enc.net.train()
    for _ in range(60):
        opt.zero_grad()
        loss, _ = enc.target_set.loss(enc.net(batch), {"prediction": y})
        loss.backward()
        opt.step()
    mae = (enc.predict(batch)["prediction"].double() - y).abs().mean()
    assert mae < 0.1 * y.std(), (float(mae), float(y.std()))


# ---------------------------------------------------------------------------- errors
def test_unknown_element_is_a_structure_error(crystals):
    bad = CrystalBatch(
        atomic_numbers=crystals.atomic_numbers.clone(),
        frac_coords=crystals.frac_coords,
        lattices=crystals.lattices,
        num_atoms=crystals.num_atoms,
    )
    bad.atomic_numbers[0] = 101
    with pytest.raises(StructureError, match=r"Md \(Z=101\).*Z 1-100"):
        _small().predict(bad)


def test_degenerate_cell_is_a_structure_error(crystals):
    lattices = crystals.lattices.clone()
    lattices[1, 2] = lattices[1, 0]  # two equal lattice vectors: zero volume
    with pytest.raises(StructureError, match="'NaCl' have a degenerate cell"):
        _small().predict(crystals.with_positions(crystals.frac_coords, lattices))


@pytest.mark.parametrize(
    "bad",
    [
        {"hidden_size": 64},
        {"hidden_features": 0},
        {"bond_rbf_max": -1.0},
        {"max_neighbors": 0},
        {"edge_input_features": 1},
        {"alignn_layers": -1},
        {"layer_order": "pair-triplet"},
    ],
)
def test_invalid_config_is_a_config_error(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        ALIGNNEncoder(bad, device="cpu")


def test_every_field_changes_the_prediction(crystals):
    def predict(**kw) -> torch.Tensor:
        enc = _small(**kw)
        enc.net.double()  # an untrained ALIGNN is only weakly sensitive to geometry (~1e-6): compare in float64
        return enc.predict(crystals)["prediction"]

    ref = predict(seed=3)
    changes = {
        "bond_rbf_max": 6.0,
        "max_neighbors": 8,
        "alignn_layers": 1,
        "gcn_layers": 2,
        "edge_input_features": 12,
        "triplet_input_features": 6,
        "embedding_features": 4,
        "hidden_features": 12,
        "layer_order": "line-then-atom",
        "gate_normalization": "none",
        "seed": 4,
    }
    for field, value in changes.items():
        assert (predict(**{"seed": 3, field: value}) - ref).abs().max() > 1e-9, field
    # no ALIGNN layer: no line graph and no angle embedding
    plain = _small(alignn_layers=0)
    assert plain.net.model.angle_embedding is None and torch.isfinite(plain.predict(crystals)["prediction"]).all()
    assert math.isclose(plain.net.model.edge_embedding[0].vmax, 8.0)
    assert math.isclose(_small(bond_rbf_max=6.0).net.model.edge_embedding[0].vmax, 6.0)


def test_elemental_crystals_see_geometry_only_through_the_gate_epsilon(monkeypatch):
    """Reference behaviour, kept: the node update is a gate-weighted *mean* of neighbour
    features, so atoms that start identical (one element) stay identical in every layer and
    the pooled features depend on the structure only through the 1e-6 added to the sum of
    the gates. Without it, diamond, graphite and a strained diamond give the same value."""
    from ase.build import bulk

    import crystal_alignn.layers.edge_gated_conv as eggc

    enc = _small(seed=5)
    enc.net.double()
    diamond = CrystalBatch.from_atoms([bulk("C", "diamond", a=3.57)])
    carbon = CrystalBatch.concat(
        [
            diamond,
            CrystalBatch.from_structures(_pmg("Graphite")),
            diamond.with_positions(diamond.frac_coords, diamond.lattices * 1.05),
        ]
    )
    salt = sample_batch().select([1])
    salts = CrystalBatch.concat([salt, salt.with_positions(salt.frac_coords, salt.lattices * 1.05)])
    with_eps = enc.predict(carbon)["prediction"]
    monkeypatch.setattr(eggc, "GATE_EPS", 0.0)
    out = enc.predict(carbon)["prediction"]
    torch.testing.assert_close(out, out[:1].expand(3), atol=1e-13, rtol=0)  # structure-blind
    assert (with_eps - out).abs().max() > 1e-12  # the epsilon is the only difference
    salt_out = enc.predict(salts)["prediction"]
    assert (salt_out[0] - salt_out[1]).abs() > 1e-8  # a binary compound does see its geometry
    # the documented deviation: unnormalised gates (Bresson & Laurent 2017) see it in float64 and float32
    free = _small(seed=5, gate_normalization="none")
    for dtype in (torch.float64, torch.float32):
        free.net.to(dtype)
        out = free.predict(carbon)["prediction"]
        assert (out[0] - out[1]).abs() > 1e-4 and (out[0] - out[2]).abs() > 1e-4, dtype
