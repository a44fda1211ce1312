"""The commands of ``crystal``, one module per group; importing this package registers them.

Each module imports only typer and crystal-core at import time; torch, plugins and the
batteries are imported inside the commands, so ``crystal --help`` stays fast.
"""

from __future__ import annotations

from crystal_cli.app import app
from crystal_cli.commands import characterize, evaluate, generate, plugins, predict, run, simulate, train, weights

app.command("evaluate")(evaluate.evaluate_cmd)
app.command("characterize")(characterize.characterize_cmd)

__all__ = ["characterize", "evaluate", "generate", "plugins", "predict", "run", "simulate", "train", "weights"]
