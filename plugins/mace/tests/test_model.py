"""Model-level tests of MACE (tiny widths, float64, CPU, one thread): symmetries, smoothness, body order."""

from __future__ import annotations

import pytest
import torch
from e3nn import o3

from crystal_mace.model import MACE
from crystal_mace.radial import PolynomialCutoff
from crystal_mace.symmetric_contraction import SymmetricContraction, symmetric_coupling_basis

torch.set_num_threads(1)

R_MAX = 4.0
TINY = dict(hidden_irreps="8x0e + 8x1o", max_ell=2, radial_mlp=(16, 16), avg_num_neighbors=6.0, r_max=R_MAX)


def _model(seed: int = 0, dtype: torch.dtype = torch.float64, **kw: object) -> MACE:
    torch.manual_seed(seed)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = MACE(num_elements=2, **{**TINY, **kw})  # type: ignore[arg-type]
    finally:
        torch.set_default_dtype(prev)
    return model.to(dtype)


def _cluster(n: int = 9, seed: int = 0, dtype: torch.dtype = torch.float64):
    """Random non-periodic cluster: species (N,), edge_index (2, E), vectors (E, 3), batch (N,)."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(n, 3, generator=g, dtype=torch.float64) * 5.0
    species = torch.randint(0, 2, (n,), generator=g)
    d = torch.cdist(pos, pos)
    i, j = torch.nonzero((d < R_MAX) & (d > 0), as_tuple=True)
    edge_index = torch.stack([i, j])
    return species, edge_index, pos, torch.zeros(n, dtype=torch.long)


def _energies(model: MACE, species, edge_index, pos, batch) -> torch.Tensor:
    vectors = pos[edge_index[1]] - pos[edge_index[0]]
    return model(species, edge_index, vectors.to(next(model.parameters()).dtype), batch, 1)


@pytest.fixture(scope="module")
def model() -> MACE:
    return _model()


@pytest.fixture(scope="module")
def cluster():
    return _cluster()


def test_rotation_and_inversion_invariance(model: MACE, cluster) -> None:
    species, edge_index, pos, batch = cluster
    assert edge_index.shape[1] > 20
    e = _energies(model, species, edge_index, pos, batch)
    torch.manual_seed(3)
    R = o3.rand_matrix(dtype=torch.float64)
    for Q in (R, -R):  # proper rotation, and rotation times inversion
        e_rot = _energies(model, species, edge_index, pos @ Q.T + 1.3, batch)
        torch.testing.assert_close(e_rot, e, atol=1e-12, rtol=1e-10)


def test_permutation_of_atoms_and_edges(model: MACE, cluster) -> None:
    species, edge_index, pos, batch = cluster
    e = _energies(model, species, edge_index, pos, batch)
    g = torch.Generator().manual_seed(1)
    perm = torch.randperm(len(species), generator=g)  # new atom k is old atom perm[k]
    inv = torch.argsort(perm)
    new_edges = inv[edge_index][:, torch.randperm(edge_index.shape[1], generator=g)]
    e_perm = _energies(model, species[perm], new_edges, pos[perm], batch)
    torch.testing.assert_close(e_perm, e[perm], atol=1e-12, rtol=1e-10)


def test_smooth_in_vectors_gradcheck(model: MACE) -> None:
    species, edge_index, pos, batch = _cluster(5, seed=2)
    vectors = (pos[edge_index[1]] - pos[edge_index[0]]).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda v: model(species, edge_index, v, batch, 1).sum(), (vectors,), eps=1e-6, atol=1e-6
    )


def test_smooth_at_the_cutoff(model: MACE, cluster) -> None:
    """An extra neighbour just inside r_max changes nothing (to the envelope's (1−r/r_max)³ order)."""
    species, edge_index, pos, batch = cluster
    e = _energies(model, species, edge_index, pos, batch)
    vectors = pos[edge_index[1]] - pos[edge_index[0]]
    extra = torch.tensor([[R_MAX * (1 - 1e-4), 0.0, 0.0]], dtype=torch.float64)
    new_index = torch.cat([edge_index, torch.tensor([[0], [1]])], dim=1)
    e2 = model(species, new_index, torch.cat([vectors, extra]), batch, 1)
    assert (e2 - e).abs().max() < 1e-9
    # and it does change the energy when well inside
    e3 = model(species, new_index, torch.cat([vectors, 0.5 * extra]), batch, 1)
    assert (e3 - e).abs().max() > 1e-6


def test_envelope_and_derivatives_vanish_at_rmax() -> None:
    env = PolynomialCutoff(R_MAX, 5)
    r = torch.tensor([R_MAX], dtype=torch.float64, requires_grad=True)
    f = env(r)
    (d1,) = torch.autograd.grad(f.sum(), r, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), r)
    assert abs(float(f.detach())) < 1e-12 and abs(float(d1.detach())) < 1e-12 and abs(float(d2)) < 1e-10
    assert float(env(torch.tensor([0.0], dtype=torch.float64))) == 1.0


def test_no_edges(model: MACE) -> None:
    species = torch.tensor([0, 1, 0])
    e = model(
        species,
        torch.zeros((2, 0), dtype=torch.long),
        torch.zeros((0, 3), dtype=torch.float64),
        torch.tensor([0, 1, 2]),
        3,
    )
    assert e.shape == (3,) and torch.isfinite(e).all()
    assert float(e[0].detach()) == float(e[2].detach())  # isolated atoms: one energy per element


def test_float32_matches_float64(model: MACE, cluster) -> None:
    species, edge_index, pos, batch = cluster
    e64 = _energies(model, species, edge_index, pos, batch)
    m32 = _model(dtype=torch.float32)
    e32 = _energies(m32, species, edge_index, pos, batch)
    assert e32.dtype == torch.float32
    torch.testing.assert_close(e32.double(), e64, atol=1e-5, rtol=1e-4)


def test_higher_body_order_is_live(cluster) -> None:
    """Zeroing the ν ≥ 2 product weights (leaving a 2-body model) changes the energies, and
    correlation=1 and correlation=3 models differ."""
    species, edge_index, pos, batch = cluster
    model = _model(correlation=3)
    e = _energies(model, species, edge_index, pos, batch)
    with torch.no_grad():
        for prod in model.products:
            for c in prod.symmetric_contraction.contractions:
                for w in list(c.weights)[1:]:
                    w.zero_()
    e_two_body = _energies(model, species, edge_index, pos, batch)
    assert (e - e_two_body).abs().max() > 1e-4
    e1 = _energies(_model(correlation=1), species, edge_index, pos, batch)
    assert (e1 - e).abs().max() > 1e-4


def _random_a(n: int, k: int, irreps: o3.Irreps, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, k, irreps.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_symmetric_contraction_body_order_and_equivariance() -> None:
    """Only-ν weights make B homogeneous of degree ν in A; B's 1o part rotates with D¹(R)."""
    coupling = o3.Irreps("0e + 1o + 2e")
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        sc = SymmetricContraction(coupling, "4x0e + 4x1o", correlation=3, num_elements=2)
    finally:
        torch.set_default_dtype(prev)
    a = _random_a(5, 4, coupling)
    species = torch.tensor([0, 1, 1, 0, 1])
    for keep in (1, 2, 3):
        with torch.no_grad():
            saved = [[w.clone() for w in c.weights] for c in sc.contractions]
            for c in sc.contractions:
                for nu, w in enumerate(c.weights, start=1):
                    if nu != keep:
                        w.zero_()
            b1, b2 = sc(a, species), sc(2.0 * a, species)
            torch.testing.assert_close(b2, 2.0**keep * b1)
            assert b1.abs().max() > 1e-6
            for c, ws in zip(sc.contractions, saved, strict=True):
                for w, s in zip(c.weights, ws, strict=True):
                    w.copy_(s)
    R = o3.rand_matrix(dtype=torch.float64)
    d_in = coupling.D_from_matrix(R)
    out_irreps = o3.Irreps("4x0e + 4x1o")
    b = sc(a, species)
    b_rot = sc(a @ d_in.T, species)
    torch.testing.assert_close(b_rot, b @ out_irreps.D_from_matrix(R).T)


def test_coupling_basis_is_symmetric_and_complete() -> None:
    irreps = o3.Irreps("0e + 1o + 2e + 3o")
    u = symmetric_coupling_basis(irreps, 3, o3.Irrep("0e"))  # (1, 16, 16, 16, n)
    torch.testing.assert_close(u, u.permute(0, 2, 1, 3, 4))
    torch.testing.assert_close(u, u.permute(0, 1, 3, 2, 4))
    # invariants of Sym³(0e+1o+2e+3o): (l1,l2,l3) multisets with even parity and a triangle:
    # 000, 011, 022, 033, 112, 123, 222, 233 -> 8
    assert u.shape[-1] == 8
    flat = u.reshape(-1, u.shape[-1])
    assert torch.linalg.matrix_rank(flat) == 8


def test_non_residual_first_layer_differs(cluster) -> None:
    species, edge_index, pos, batch = cluster
    e_res = _energies(_model(interaction_first="residual"), species, edge_index, pos, batch)
    m = _model(interaction_first="non_residual")
    assert m.interactions[0].residual is False and m.interactions[1].residual is True
    e_non = _energies(m, species, edge_index, pos, batch)
    assert torch.isfinite(e_non).all() and (e_non - e_res).abs().max() > 1e-6


def test_state_dict_roundtrip_through_float32_keeps_exact_basis() -> None:
    m64 = _model()
    sd32 = {k: (v.float() if v.is_floating_point() else v) for k, v in m64.state_dict().items()}
    fresh = _model(seed=5)
    fresh.load_state_dict(sd32)
    u_key = next(k for k in sd32 if k.endswith("U_3"))
    exact = dict(fresh.named_buffers())[u_key]
    assert exact.dtype == torch.float64
    torch.testing.assert_close(exact, dict(m64.named_buffers())[u_key], atol=0.0, rtol=0.0)


@pytest.mark.parametrize(("layers", "corr"), [(1, 2), (3, (3, 1, 2))])
def test_other_depths_and_per_layer_correlation(layers: int, corr: int | tuple[int, ...], cluster) -> None:
    species, edge_index, pos, batch = cluster
    model = _model(num_interactions=layers, correlation=corr)
    assert len(model.readouts) == layers
    assert [p.symmetric_contraction.correlation for p in model.products] == (
        [corr] * layers if isinstance(corr, int) else list(corr)
    )
    e = _energies(model, species, edge_index, pos, batch)
    R = o3.rand_matrix(dtype=torch.float64)
    torch.testing.assert_close(_energies(model, species, edge_index, pos @ R.T, batch), e, atol=1e-12, rtol=1e-10)


def test_edge_tensor_product_layout_matches_reference_convention() -> None:
    """Output blocks sorted by irrep and instructions ordered by output block (mace-torch's layout of the
    radial MLP's per-edge path weights)."""
    from crystal_mace.interaction import tp_out_irreps_with_instructions

    sh = o3.Irreps.spherical_harmonics(3)
    target = (sh * 8).sort()[0].simplify()
    irreps_mid, instructions = tp_out_irreps_with_instructions(o3.Irreps("8x0e + 8x1o"), sh, target)
    assert str(irreps_mid) == "8x0e+8x0e+8x1o+8x1o+8x1o+8x2e+8x2e+8x2e+8x3o+8x3o"
    assert [ins[2] for ins in instructions] == list(range(len(irreps_mid)))
    assert (instructions[0][:2], instructions[1][:2]) == ((0, 0), (1, 1))  # 0e x 0e, then 1o x 1o -> 0e
