"""Write the DiffCSP golden fixture with the reference implementation (jiaor17/DiffCSP).

Run once, in a side virtual environment with the reference code (NOT the crystal venv)::

    python3.11 -m venv /tmp/diffcsp-ref
    /tmp/diffcsp-ref/bin/pip install torch==2.13.0 numpy pandas networkx pymatgen scikit-learn \\
        p_tqdm pyxtal pathos einops hydra-core omegaconf pytorch-lightning python-dotenv \\
        torch_geometric setuptools wheel
    git clone https://github.com/jiaor17/DiffCSP /tmp/DiffCSP   # commit 7121d15 (Dec 2023)
    # torch-scatter 2.1.2: either build it (pip install torch-scatter --no-build-isolation, 30+ min
    # on a loaded 2-core machine), or use its source with BUILD_DOCS=1 (what was done for the
    # committed files): the reference's CSPNet only calls torch_scatter.scatter(reduce="mean"),
    # which is pure Python in torch_scatter (scatter_sum via Tensor.scatter_add_, then the count);
    # BUILD_DOCS=1 only replaces the compiled ops (min/max/segment_*, unused here) by placeholders.
    /tmp/diffcsp-ref/bin/pip download torch-scatter==2.1.2 --no-deps --no-binary :all: -d /tmp/ts-src
    tar xzf /tmp/ts-src/torch_scatter-2.1.2.tar.gz -C /tmp/ts-src
    BUILD_DOCS=1 PROJECT_ROOT=/tmp/DiffCSP HYDRA_JOBS=/tmp WABDB_DIR=/tmp \\
        PYTHONPATH=/tmp/DiffCSP:/tmp/ts-src/torch_scatter-2.1.2 OMP_NUM_THREADS=1 \\
        /tmp/diffcsp-ref/bin/python plugins/diffcsp/tests/golden/make_golden.py

Versions used for the committed files (also in ``versions`` of ``reference_outputs.pt``): Python
3.11.7, torch 2.13.0+cpu, pytorch-lightning 2.6.6, omegaconf 2.3.1, hydra-core 1.3.8,
torch_geometric 2.8.1, torch_scatter 2.1.2 (source, BUILD_DOCS=1), numpy 2.4.6, pymatgen
2026.10.24, pyxtal 1.1.5; reference commit 7121d159826efa2ba9500bf299250d96da37f146.

What it writes into ``plugins/diffcsp/tests/golden/``:

* ``run/epoch=0-step=1.ckpt`` and ``run/hparams.yaml``: a released-format DiffCSP run. The config is
  the reference's own Hydra config (``conf/default.yaml``, ``model=diffusion``, ``data=perov_5``)
  composed with smaller decoder overrides (hidden_dim 16, 2 layers, 4 frequencies, time_dim 8; the
  1000-step schedules are the real ones), the model built exactly as ``diffcsp/run.py`` does
  (``hydra.utils.instantiate(cfg.model, optim=..., data=..., logging=..., _recursive_=False)``),
  its parameters randomised (seed 0; LayerNorm weights too, so that every tensor matters), then
  one Lightning ``Trainer.fit`` step on three crystals and ``trainer.save_checkpoint``;
  ``hparams.yaml`` is ``OmegaConf.to_yaml(cfg)`` as ``run.py`` writes it.
* ``run_ab_initio/``: the same for the ab initio model (``model=diffusion_w_type``: continuous
  type input ``Linear(100, H)``, type head), seed 4.
* ``reference_outputs.pt`` (plain tensors, loads weights-only):

  - ``net/*``: ``model.decoder`` (CSPNet) on a batch of 3 crystals of 2, 3 and 5 atoms at times
    1, 500 and 1000 (inputs and the outputs ``pred_l`` (3, 3, 3), ``pred_x`` (10, 3));
  - ``first/*``: the reference sampler ``model.sample(batch, step_lr=1e-5)`` from t = T = 1000,
    stopped after its first two predictor–corrector steps. The noise: every ``torch.rand``,
    ``torch.randn`` and ``torch.randn_like`` the sampler draws is recorded (wrapped; the values
    come from torch's global generator, seeded), in draw order: the prior ``l_T`` (B, 3, 3) and
    ``x_T`` (N, 3), then per step ``rand_l`` and ``rand_x`` of the corrector (``rand_l`` unused by
    the reference) and ``rand_l``, ``rand_x`` of the predictor. The state after each step is read
    from the inputs of the decoder's next call (``x_t`` is the wrapped coordinates, ``l_t`` the
    lattice). Our side feeds the same tensors to ``DiffCSP.reverse_step`` (corrector noise =
    the corrector's ``rand_x``; predictor noises = the predictor's ``rand_x`` and ``rand_l``).
  - ``last/*``: the same sampler with ``beta_scheduler.timesteps`` set to 2, i.e. the last two
    steps t = 2, 1 of the 1000-step schedule (the buffers are unchanged; only the loop start
    moves), run to the end: its returned ``frac_coords`` and ``lattices`` and the recorded noise
    (t = 1 draws none: zeros, as the reference).
  - ``ab_initio_net/*``: the ab initio decoder on the same crystals with random (N, 100) type
    inputs; ``ab_initio_first/*``: its sampler's first step from t = T (draws: ``l_T``, ``x_T``,
    ``t_T``, then the corrector's ``rand_l``, ``rand_t``, ``rand_x`` and the predictor's), the
    state read from the decoder's next call.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
OUT_RUN = HERE / "run"
OUT_RUN_AB = HERE / "run_ab_initio"
OVERRIDES = [
    "data=perov_5",
    "model.decoder.hidden_dim=16",
    "model.decoder.num_layers=2",
    "model.decoder.num_freqs=4",
    "model.time_dim=8",
    "optim.use_lr_scheduler=false",
    "train.pl_trainer.gpus=0",
]
STEP_LR = 1e-5
NUM_ATOMS = [2, 3, 5]


class _Stop(Exception):
    pass


def _batch(atom_types: torch.Tensor, frac: torch.Tensor, lattices: torch.Tensor, num_atoms: torch.Tensor):  # type: ignore[no-untyped-def]
    from diffcsp.common.data_utils import lattice_params_to_matrix_torch  # noqa: F401  (reference import check)
    from torch_geometric.data import Batch, Data

    datas = []
    start = 0
    for b, n in enumerate(num_atoms.tolist()):
        lat = lattices[b]
        lengths = lat.norm(dim=-1)
        pairs = ((1, 2), (0, 2), (0, 1))
        cosines = torch.stack([(lat[i] @ lat[j]) / (lengths[i] * lengths[j]) for i, j in pairs])
        angles = torch.rad2deg(torch.acos(cosines))
        datas.append(
            Data(
                frac_coords=frac[start : start + n],
                atom_types=atom_types[start : start + n],
                lengths=lengths.view(1, -1),
                angles=angles.view(1, -1),
                num_atoms=n,
                num_nodes=n,
            )
        )
        start += n
    return Batch.from_data_list(datas)


class _Recorder:
    """Wrap torch.rand/randn/randn_like and the decoder's forward while the reference samples."""

    def __init__(self, model, stop_after: int | None) -> None:  # type: ignore[no-untyped-def]
        self.model = model
        self.stop_after = stop_after
        self.draws: list[torch.Tensor] = []
        self.calls: list[dict[str, torch.Tensor]] = []

    def __enter__(self) -> _Recorder:
        self.orig = (torch.rand, torch.randn, torch.randn_like)
        rand, randn, randn_like = self.orig

        def rec(fn):  # type: ignore[no-untyped-def]
            def inner(*a, **k):  # type: ignore[no-untyped-def]
                out = fn(*a, **k)
                self.draws.append(out.detach().clone())
                return out

            return inner

        torch.rand, torch.randn, torch.randn_like = rec(rand), rec(randn), rec(randn_like)
        self.orig_forward = self.model.decoder.forward

        def forward(t, atom_types, frac_coords, lattices, num_atoms, node2graph):  # type: ignore[no-untyped-def]
            call = {"frac": frac_coords.clone(), "lat": lattices.clone(), "types": atom_types.clone()}
            self.calls.append(call)
            if self.stop_after is not None and len(self.calls) > self.stop_after:
                raise _Stop
            out = self.orig_forward(t, atom_types, frac_coords, lattices, num_atoms, node2graph)
            call.update(pred_l=out[0].clone(), pred_x=out[1].clone())
            return out

        self.model.decoder.forward = forward
        return self

    def __exit__(self, *exc: object) -> bool:
        torch.rand, torch.randn, torch.randn_like = self.orig
        self.model.decoder.forward = self.orig_forward
        return exc[0] is _Stop


def main() -> None:
    import hydra
    import omegaconf
    import pytorch_lightning as pl
    import torch_geometric
    import torch_scatter
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from torch_geometric.loader import DataLoader

    ref_root = Path(os.environ["PROJECT_ROOT"])

    def build(model_name: str, run_dir: Path, seed: int):  # type: ignore[no-untyped-def]
        """The reference model as diffcsp/run.py builds it, randomised, one Lightning step, saved."""
        with initialize_config_dir(str(ref_root / "conf"), version_base=None):
            cfg = compose(config_name="default", overrides=[*OVERRIDES, f"model={model_name}"])
        torch.manual_seed(seed)
        model = hydra.utils.instantiate(
            cfg.model, optim=cfg.optim, data=cfg.data, logging=cfg.logging, _recursive_=False
        )
        with torch.no_grad():  # random weights everywhere (LayerNorm included), outputs O(1)
            for name, p in model.named_parameters():
                p.add_(0.3 * torch.randn_like(p) if "layer_norm" in name else 0.05 * torch.randn_like(p))
        run_dir.mkdir(parents=True, exist_ok=True)
        for old in run_dir.glob("*.ckpt"):
            old.unlink()
        trainer = pl.Trainer(
            max_steps=1,
            logger=False,
            enable_progress_bar=False,
            accelerator="cpu",
            default_root_dir="/tmp/diffcsp-golden",
        )
        trainer.fit(model, DataLoader([batch.get_example(i) for i in range(3)], batch_size=3))
        trainer.save_checkpoint(str(run_dir / "epoch=0-step=1.ckpt"))
        (run_dir / "hparams.yaml").write_text(OmegaConf.to_yaml(cfg=cfg))
        return model.eval()

    # a batch of three crystals of different sizes
    g = torch.Generator().manual_seed(1)
    num_atoms = torch.tensor(NUM_ATOMS)
    n = int(num_atoms.sum())
    atom_types = torch.randint(1, 101, (n,), generator=g)
    frac = torch.rand(n, 3, generator=g)
    lattices = 3.0 * torch.eye(3) + 0.6 * torch.randn(3, 3, 3, generator=g)
    batch = _batch(atom_types, frac, lattices, num_atoms)
    model = build("diffusion", OUT_RUN, 0)
    ckpt = OUT_RUN / "epoch=0-step=1.ckpt"

    out: dict[str, object] = {}
    times = torch.tensor([1, 500, 1000])
    with torch.no_grad():
        time_emb = model.time_embedding(times)
        pred_l, pred_x = model.decoder(time_emb, batch.atom_types, batch.frac_coords, lattices, num_atoms, batch.batch)
    out["net"] = {
        "times": times,
        "atom_types": atom_types,
        "frac_coords": frac,
        "lattices": lattices,
        "num_atoms": num_atoms,
        "pred_l": pred_l,
        "pred_x": pred_x,
    }

    # the first two reverse steps from t = T
    torch.manual_seed(2)
    with _Recorder(model, stop_after=4) as rec:  # stops at the 5th decoder call (corrector of t = T - 2)
        model.sample(batch, step_lr=STEP_LR)
    assert len(rec.calls) == 5 and len(rec.draws) >= 2 + 4 * 2, (len(rec.calls), len(rec.draws))
    out["first"] = {
        "step_lr": torch.tensor(STEP_LR),
        "l_T": rec.draws[0],
        "x_T": rec.draws[1],
        # per step: [corrector rand_l (unused), corrector rand_x, predictor rand_l, predictor rand_x]
        "noise": [rec.draws[2 + 4 * k : 6 + 4 * k] for k in range(2)],
        "frac_after": torch.stack([rec.calls[2]["frac"], rec.calls[4]["frac"]]),
        "lat_after": torch.stack([rec.calls[2]["lat"], rec.calls[4]["lat"]]),
        "corrector_pred_x_T": rec.calls[0]["pred_x"],
    }

    # the last two steps (t = 2, 1) to the end
    torch.manual_seed(3)
    model.beta_scheduler.timesteps = 2
    with _Recorder(model, stop_after=None) as rec:
        final, _ = model.sample(batch, step_lr=STEP_LR)
    model.beta_scheduler.timesteps = 1000
    assert len(rec.draws) == 2 + 4, len(rec.draws)
    out["last"] = {
        "step_lr": torch.tensor(STEP_LR),
        "l_T": rec.draws[0],
        "x_T": rec.draws[1],
        "noise": [rec.draws[2:6], [torch.zeros_like(d) for d in rec.draws[2:6]]],  # t = 2, then t = 1 (zeros)
        "frac_coords": final["frac_coords"],
        "lattices": final["lattices"],
    }
    # ab initio (diffusion_w_type): the network on noisy one-hot types, and the first step from t = T
    model_ab = build("diffusion_w_type", OUT_RUN_AB, 4)
    types_in = torch.randn(n, 100, generator=g)
    with torch.no_grad():
        time_emb = model_ab.time_embedding(times)
        pl_ab, px_ab, pt_ab = model_ab.decoder(time_emb, types_in, frac, lattices, num_atoms, batch.batch)
    out["ab_initio_net"] = {"types": types_in, "pred_l": pl_ab, "pred_x": px_ab, "pred_t": pt_ab}
    torch.manual_seed(5)
    with _Recorder(model_ab, stop_after=2) as rec:  # stops at the 3rd decoder call (corrector of t = T - 1)
        model_ab.sample(batch, step_lr=STEP_LR)
    assert len(rec.calls) == 3 and len(rec.draws) >= 3 + 6, (len(rec.calls), len(rec.draws))
    out["ab_initio_first"] = {
        "step_lr": torch.tensor(STEP_LR),
        "l_T": rec.draws[0],
        "x_T": rec.draws[1],
        "t_T": rec.draws[2],
        # [corrector rand_l, rand_t (both unused), rand_x, predictor rand_l, rand_t, rand_x]
        "noise": rec.draws[3:9],
        "frac_after": rec.calls[2]["frac"],
        "lat_after": rec.calls[2]["lat"],
        "types_after": rec.calls[2]["types"],
    }
    out["versions"] = {
        "torch": str(torch.__version__),
        "pytorch_lightning": str(pl.__version__),
        "omegaconf": omegaconf.__version__,
        "hydra": hydra.__version__,
        "torch_scatter": torch_scatter.__version__,
        "torch_geometric": torch_geometric.__version__,
        "python": sys.version.split()[0],
        "diffcsp_commit": os.environ.get("DIFFCSP_COMMIT", "7121d15"),
    }
    torch.save(out, HERE / "reference_outputs.pt")
    files = [ckpt, OUT_RUN / "hparams.yaml", OUT_RUN_AB / "epoch=0-step=1.ckpt", HERE / "reference_outputs.pt"]
    sizes = {str(p.relative_to(HERE)): p.stat().st_size for p in files}
    print("wrote", sizes)


if __name__ == "__main__":
    main()
