"""Copy a finished `train_potential` run into the plugin as named weights.

    python plugins/mace/training/ship.py runs/mlearn/mace-Si-<stamp> mace-mlearn-si

Writes ``src/crystal_mace/weights/<name>.pt`` (the run's ``model.pt``, unchanged) and
``<name>.md`` (its model card, with machine-specific paths made relative), and prints the
``[[weights]]`` stanza for ``crystal_plugin.toml`` (sha256 and test metrics from ``summary.json``).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
WEIGHTS = HERE.parent / "src" / "crystal_mace" / "weights"


def _relative(text: str) -> str:
    return text.replace(str(Path("/work/shared/data")), "../shared/data")


def main() -> int:
    run, name = Path(sys.argv[1]), sys.argv[2]
    summary = json.loads((run / "summary.json").read_text())
    WEIGHTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "model.pt", WEIGHTS / f"{name}.pt")
    card = _relative((run / "model-card.md").read_text())
    (WEIGHTS / f"{name}.md").write_text(card.replace("# mace potential model card", f"# {name} model card", 1))
    test = summary["metrics"]["test"]
    data = _relative(summary["data"]["train"][0])
    print(f"""
[[weights]]
name = "{name}"
file = "package:crystal_mace/weights/{name}.pt"
sha256 = "{summary["sha256"]}"
licence = "MIT"
training_data = "mlearn (Zuo et al. 2020) {"/".join(summary["elements"])}: {data} ({summary["sizes"]["train"]} structures for training, {summary["sizes"]["val"]} held out for model selection, seed 0); tested on the official test.xyz ({summary["sizes"]["test"]})"
description = "MACE (reduced width: {summary["parameters"]:,} parameters; see the model card) trained for {summary["epochs"]} epochs ({summary["train_time_s"]:.0f} s, 1 CPU thread); test energy MAE {test["energy_mae_mev_per_atom"]:.2f} meV/atom, force MAE {test["forces_mae"]:.3f} eV/Å; model card: weights/{name}.md"

[weights.metrics]
test_energy_mae_meV_per_atom = {test["energy_mae_mev_per_atom"]:.4f}
test_forces_mae_eV_per_A = {test["forces_mae"]:.5f}
""")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
