"""Pretrained universal potentials zero-shot on the mlearn benchmark (Zuo et al. 2020).

Usage::

    python benchmarks/mlearn_zeroshot.py [--potentials chgnet sevennet] [--elements Cu Ge Li Mo Ni Si]
                                         [--batch-size 16] [--threads 2]

For each element, every structure of ``../shared/data/mlearn/<El>/test.xyz`` is evaluated
in batches through crystal's Potential contract. Reported: force MAE (eV/Å) over all force
components, and energy MAE (meV/atom) both raw and after removing one constant per-atom
offset fitted on that element's ``train.xyz`` (the potentials were trained on Materials
Project PBE(+U) energies whose reference differs from mlearn's VASP settings; the offset
is the only thing taken from mlearn's training data). Next to them, the published test
MAEs of the fitted GAP and MTP (Zuo et al., J. Phys. Chem. A 124, 731 (2020), Table 2),
which were trained on the train split.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "mlearn"
#: Zuo et al. 2020 test MAEs: energy meV/atom, force eV/Å
PUBLISHED = {
    "Ni": {"GAP": (0.42, 0.02), "MTP": (0.48, 0.01)},
    "Cu": {"GAP": (0.46, 0.01), "MTP": (0.41, 0.01)},
    "Li": {"GAP": (0.49, 0.01), "MTP": (0.49, 0.01)},
    "Mo": {"GAP": (2.24, 0.09), "MTP": (2.83, 0.09)},
    "Si": {"GAP": (2.91, 0.07), "MTP": (2.21, 0.06)},
    "Ge": {"GAP": (2.06, 0.05), "MTP": (1.79, 0.05)},
}


def _predict(pot, batch, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    energies, forces = [], []
    for chunk in batch.split(batch_size):
        out = pot.compute(chunk.to(pot.device), forces=True, stress=False)
        energies.append(out.energy.detach().double().cpu())
        assert out.forces is not None
        forces.append(out.forces.detach().double().cpu())
    return torch.cat(energies), torch.cat(forces)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--potentials", nargs="+", default=["chgnet", "sevennet"])
    parser.add_argument("--elements", nargs="+", default=list(PUBLISHED))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"error: mlearn data not found at {DATA} (../shared/data/mlearn)", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)

    from crystal import load
    from crystal.targets import TargetSpec
    from crystal_train import read_labelled

    specs = [TargetSpec(name="energy", unit="eV"), TargetSpec(name="forces", level="atom", dim=3, unit="eV/Å")]
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), device {args.device}; mlearn test sets, zero-shot"
    )
    print()
    print(
        "| potential | element | energy MAE raw (meV/atom) | energy MAE, offset removed (meV/atom) | force MAE (eV/Å) "
        "| GAP (meV/atom, eV/Å) | MTP (meV/atom, eV/Å) | test structures/s |"
    )
    print("|---|---|---|---|---|---|---|---|", flush=True)
    for name in args.potentials:
        pot = load("potential", name, device=args.device)
        for el in args.elements:
            test = read_labelled([DATA / el / "test.xyz"], specs).batch
            train = read_labelled([DATA / el / "train.xyz"], specs).batch
            t0 = time.perf_counter()
            e_test, f_test = _predict(pot, test, args.batch_size)
            speed = len(test) / (time.perf_counter() - t0)
            e_train, _ = _predict(pot, train, args.batch_size)
            offset = float(
                ((train.crystal_properties["energy"] - e_train) / train.num_atoms.double()).mean()
            )  # eV/atom
            err_raw = (e_test - test.crystal_properties["energy"]) / test.num_atoms.double()
            raw, shifted = float(err_raw.abs().mean()) * 1000, float((err_raw + offset).abs().mean()) * 1000
            f_mae = float((f_test - test.atom_properties["forces"].double()).abs().mean())
            gap, mtp = PUBLISHED[el]["GAP"], PUBLISHED[el]["MTP"]
            print(
                f"| {name} | {el} | {raw:.1f} | {shifted:.2f} | {f_mae:.3f} | {gap[0]}, {gap[1]} | {mtp[0]}, {mtp[1]} "
                f"| {speed:.1f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
