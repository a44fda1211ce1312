"""Train a CrystaLLM model on a CDVAE-style CSV (column ``cif``) with crystal's training engine
(:func:`crystal_train.engine.fit_model`).

Data: every CIF is canonicalised (:func:`crystal_crystallm.canonical.canonical_cif`) and
tokenised; each becomes one row of a right-padded ``(N, L)`` id tensor starting at ``data_``
(rows longer than the context are dropped and counted). A seeded fraction is held out for
model selection (the epoch with the lowest validation loss is kept). The run folder (``--run-dir``,
default ``<out>-run``) gets what every crystal trainer writes (:mod:`crystal_train.writers`):
``metrics.csv``, ``model-card.md``, ``summary.json``, ``predictions.csv`` (teacher-forced loss and
accuracy of each held-out CIF) and ``failures.csv`` (the dropped rows, by reason).

Command line (the shipped ``crystallm-perov5`` weights, two stages; see their model card)::

    python -m crystal_crystallm.train --data ../shared/data/perov_5/val.csv --epochs 5 --batch-size 8 \\
        --lr 1.5e-3 --dropout 0 --out stage1.pt
    python -m crystal_crystallm.train --data ../shared/data/perov_5/val.csv --init stage1.pt --epochs 5 \\
        --batch-size 8 --lr 1e-3 --warmup-epochs 0 --out crystallm-perov5.pt --card crystallm-perov5.md
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import platform
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from crystal.errors import ConfigError, StructureError
from crystal_crystallm.canonical import canonical_from_cif
from crystal_crystallm.checkpoint import save_checkpoint
from crystal_crystallm.model import CrystaLLMNet, GPTConfig
from crystal_crystallm.tokenizer import tokenizer

__all__ = ["TokenData", "encode_cifs", "evaluate_loss", "main", "read_cifs", "train"]

log = logging.getLogger(__name__)


@dataclass
class TokenData:
    """Canonical CIF texts as a padded id tensor ``ids`` ``(N, L)``, with what was dropped."""

    ids: torch.Tensor
    texts: list[str]
    skipped: dict[str, int] = field(default_factory=dict)


def read_cifs(path: str | Path, limit: int | None = None) -> list[str]:
    """The ``cif`` column of a CDVAE-style CSV (first ``limit`` rows)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"crystallm train: data file {str(path)!r} does not exist")
    csv.field_size_limit(sys.maxsize)
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "cif" not in reader.fieldnames:
            raise ConfigError(f"crystallm train: {str(path)!r} has no 'cif' column")
        rows = [row["cif"] for row in reader]
    return rows[:limit] if limit is not None else rows


def encode_cifs(cifs: Sequence[str], max_tokens: int) -> TokenData:
    """Canonicalise and tokenise ``cifs``; rows with more than ``max_tokens`` tokens are dropped."""
    tok = tokenizer()
    texts: list[str] = []
    skipped = {"unparseable": 0, "too_long": 0, "unknown_tokens": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cif in cifs:
            try:
                texts.append(canonical_from_cif(cif))
            except StructureError:
                skipped["unparseable"] += 1
    keep: list[str] = []
    for text in texts:
        ids = tok.encode(text)
        if tok.unk_id in ids:
            skipped["unknown_tokens"] += 1
        elif len(ids) > max_tokens:
            skipped["too_long"] += 1
        else:
            keep.append(text)
    if not keep:
        raise ConfigError(f"crystallm train: no usable CIF (skipped: {skipped})")
    return TokenData(tok.encode_batch(keep), keep, skipped)


@torch.no_grad()
def evaluate_loss(net: CrystaLLMNet, ids: torch.Tensor, batch_size: int = 64) -> dict[str, float]:
    """Token-weighted teacher-forced loss, perplexity and accuracy of ``net`` on ``ids``."""
    net.eval()
    pad = net.pad_id
    total = 0.0
    correct = 0.0
    count = 0
    for start in range(0, ids.shape[0], batch_size):
        chunk = ids[start : start + batch_size]
        n = int((chunk[:, 1:] != pad).sum())
        out = net.training_loss(chunk)
        total += float(out["loss"]) * n
        correct += float(out["accuracy"]) * n
        count += n
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": float(torch.exp(torch.tensor(loss))), "accuracy": correct / max(count, 1)}


def train(
    data: str | Path,
    *,
    out: str | Path,
    gpt: GPTConfig | None = None,
    epochs: int = 5,
    batch_size: int = 8,
    lr: float = 1.5e-3,
    weight_decay: float = 0.1,
    warmup_epochs: int = 1,
    val_fraction: float = 0.1,
    seed: int = 0,
    limit: int | None = None,
    test: str | Path | None = None,
    run_dir: str | Path | None = None,
    init: str | Path | None = None,
) -> dict[str, Any]:
    """Train on ``data``, save the best model to ``out``; returns the model card's facts.

    ``init``: continue from a checkpoint's weights (its architecture replaces ``gpt``).
    """
    from crystal_train import FitConfig, fit_model

    prior: dict[str, Any] = {}
    if init is not None:
        from crystal_crystallm.checkpoint import load_checkpoint

        start_net, prior, init_sha = load_checkpoint(init)
        gpt = start_net.cfg
        prior = {"init": str(init), "init_sha256": init_sha, "init_meta": prior}
    gpt = gpt or GPTConfig()
    t0 = time.perf_counter()
    tokens = encode_cifs(read_cifs(data, limit), gpt.block_size)
    n = tokens.ids.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = round(val_fraction * n)
    if n - n_val < 1:
        raise ConfigError(f"crystallm train: {n} CIFs leave nothing to train on with val_fraction={val_fraction}")
    val_ids = tokens.ids[perm[:n_val]] if n_val else None
    train_ids = tokens.ids[perm[n_val:]]
    prep_seconds = time.perf_counter() - t0
    torch.manual_seed(seed)
    net = CrystaLLMNet(gpt)
    if init is not None:
        net.load_state_dict(start_net.state_dict())
    fit = FitConfig(
        max_epochs=epochs,
        batch_size=batch_size,
        optimizer="adamw",
        lr=lr,
        weight_decay=weight_decay,
        scheduler="cosine",
        warmup_epochs=warmup_epochs,
        gradient_clip=1.0,
        seed=seed,
        accelerator="cpu",
        monitor="val_loss" if val_ids is not None else "train_loss",
    )
    run = Path(run_dir) if run_dir else Path(out).with_name(Path(out).stem + "-run")
    result = fit_model(net, train_ids, val_ids, fit, run_dir=run, run_name="crystallm")
    trained: CrystaLLMNet = result.net  # type: ignore[assignment]
    facts: dict[str, Any] = {
        "data": str(data),
        "split": f"{val_fraction:g} of the rows held out for model selection (seed {seed})",
        "sizes": {"train": int(train_ids.shape[0]), "val": int(n_val)},
        "skipped": tokens.skipped,
        "max_tokens_in_data": int((tokens.ids != net.pad_id).sum(dim=1).max()),
        "architecture": json.loads(gpt.model_dump_json()),
        "parameters": trained.num_parameters(),
        "optimiser": {
            "optimizer": "adamw",
            "lr": lr,
            "weight_decay": weight_decay,
            "scheduler": "cosine",
            "warmup_epochs": warmup_epochs,
            "gradient_clip": 1.0,
            "batch_size": batch_size,
        },
        "epochs": epochs,
        "best_epoch": result.best_epoch,
        "history": result.history,
        "train_seconds": result.seconds,
        "prep_seconds": prep_seconds,
        "machine": f"{platform.machine()}, torch threads {torch.get_num_threads()}",
        "metrics": {},
        **prior,
    }
    facts["metrics"]["train"] = evaluate_loss(trained, train_ids)
    if val_ids is not None:
        facts["metrics"]["val"] = evaluate_loss(trained, val_ids)
    if test is not None:
        test_tokens = encode_cifs(read_cifs(test), gpt.block_size)
        facts["metrics"]["test"] = evaluate_loss(trained, test_tokens.ids)
        facts["test"] = {"data": str(test), "size": int(test_tokens.ids.shape[0]), "skipped": test_tokens.skipped}
    facts["sha256"] = save_checkpoint(trained, out, meta={k: v for k, v in facts.items() if k != "history"})
    facts["file"] = str(out)
    _write_run(
        run, trained, facts, val_ids if val_ids is not None else train_ids, "val" if val_ids is not None else "train"
    )
    return facts


def _write_run(run: Path, net: CrystaLLMNet, facts: dict[str, Any], ids: torch.Tensor, split: str) -> None:
    """The run writers' artefacts; predictions.csv: teacher-forced loss of each held-out CIF."""
    from crystal.io import Failure
    from crystal_train.engine import item_losses
    from crystal_train.writers import RunReport, write_run

    losses = item_losses(net, ids)
    header = ["split", "row", *(losses[0] if losses else [])]
    rows = [[split, i, *row.values()] for i, row in enumerate(losses)]
    failures = [
        Failure(f"{n} row(s)", "read", reason, str(facts["data"])) for reason, n in facts["skipped"].items() if n
    ]
    name = Path(facts["file"]).stem
    summary = {k: v for k, v in facts.items() if k != "history"}
    title, lines, sections = _card_parts(name, facts)
    write_run(
        run,
        RunReport(title, lines, facts["metrics"], summary, facts["architecture"], header, rows, [], failures, sections),
    )


def _card_parts(name: str, facts: dict[str, Any]) -> tuple[str, list[str], list[str]]:
    lines = [
        "generator: `crystallm` 0.1.0 (CrystaLLM, Antunes, Butler & Grau-Crespo, Nat. Commun. 15, 10570 (2024))",
        f"training data: {facts['data']} (canonicalised: CifWriter symprec 0.1, 4 decimals, atom-properties block)",
        f"split: {facts['split']}; test: {facts.get('test', {}).get('data', 'none')}",
        f"sizes: train {facts['sizes']['train']}, val {facts['sizes']['val']}"
        + (f", test {facts['test']['size']}" if "test" in facts else "")
        + f"; skipped {facts['skipped']}",
        f"epochs {facts['epochs']}, best epoch {facts['best_epoch']}; optimiser {facts['optimiser']}",
        f"training time: {facts['train_seconds']:.1f} s (+ {facts['prep_seconds']:.1f} s canonicalisation) on CPU "
        f"({facts['machine']})",
        f"parameters: {facts['parameters']:,}",
        *([f"continued from `{facts['init']}` (sha256 `{facts['init_sha256']}`)"] if "init" in facts else []),
        f"file: `{Path(facts['file']).name}`, sha256 `{facts['sha256']}`",
        "metrics: loss in nats/token, perplexity, next-token accuracy (teacher forcing)",
    ]
    history = [
        "Per-epoch history:",
        "",
        "| epoch | train_loss | val_loss | val_accuracy | seconds |",
        "|---|---|---|---|---|",
    ]
    for h in facts.get("history", []):
        history.append(
            f"| {int(h.get('epoch', 0))} | {h.get('train_loss', float('nan')):.4f} | {h.get('val_loss', float('nan')):.4f}"
            f" | {h.get('val_accuracy', float('nan')):.4f} | {h.get('epoch_time_s', float('nan')):.1f} |"
        )
    return f"`{name}` model card", lines, ["\n".join(history)]


def model_card(name: str, facts: dict[str, Any]) -> str:
    """Markdown model card for weights ``name`` from :func:`train`'s facts (:func:`crystal_train.writers.model_card`)."""
    from crystal_train.writers import model_card as card

    title, lines, sections = _card_parts(name, facts)
    return card(title, lines, facts["metrics"], facts["architecture"], sections)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m crystal_crystallm.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="CSV with a 'cif' column (e.g. ../shared/data/perov_5/val.csv)")
    p.add_argument("--out", required=True, help="checkpoint file to write (.pt)")
    p.add_argument("--test", default=None, help="CSV to report teacher-forced test loss on")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="use only the first N rows")
    p.add_argument("--block-size", type=int, default=512, help="context length, tokens")
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--dropout", type=float, default=0.0, help="paper: 0.1")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument(
        "--run-dir", default=None, help="run folder: metrics.csv, model card, predictions (default <out>-run)"
    )
    p.add_argument("--card", default=None, help="write a markdown model card here")
    p.add_argument("--init", default=None, help="continue from this checkpoint's weights and architecture")
    p.add_argument("--name", default=None, help="weights name for the model card")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    gpt = GPTConfig(block_size=a.block_size, n_layer=a.n_layer, n_head=a.n_head, n_embd=a.n_embd, dropout=a.dropout)
    facts = train(
        a.data,
        out=a.out,
        gpt=gpt,
        epochs=a.epochs,
        batch_size=a.batch_size,
        lr=a.lr,
        weight_decay=a.weight_decay,
        warmup_epochs=a.warmup_epochs,
        val_fraction=a.val_fraction,
        seed=a.seed,
        limit=a.limit,
        test=a.test,
        run_dir=a.run_dir,
        init=a.init,
    )
    if a.card:
        Path(a.card).write_text(model_card(a.name or Path(a.out).stem, facts))
    print(json.dumps({k: v for k, v in facts.items() if k != "history"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
