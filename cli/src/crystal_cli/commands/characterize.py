"""``crystal characterize``: ranked structure hypotheses for a powder pattern (or for structures).

Registered by :mod:`crystal_cli.commands`; heavy imports happen inside the command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from crystal.errors import ConfigError
from crystal_cli._common import ThreadsOption, apply_threads, component_config
from crystal_cli.commands.predict import RandomInitOption, trained_config

__all__ = ["characterize_cmd"]

_PATTERN_SUFFIXES = (".xy", ".xye", ".txt", ".dat")


def _is_structure_file(path: Path) -> bool:
    name = path.name.lower()
    if name.startswith(("poscar", "contcar")) or path.suffix.lower() in (
        ".cif",
        ".vasp",
        ".poscar",
        ".json",
        ".extxyz",
    ):
        return True
    if path.suffix.lower() == ".csv" and path.is_file():
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.strip() and not line.lstrip().startswith("#"):
                    return "cif" in [f.strip().strip('"').lower() for f in line.split(",")]
    return False


def _read_structures(paths: list[Path], what: str) -> Any:
    from crystal.batch import CrystalBatch
    from crystal.io import read_structures

    try:
        read = read_structures([str(p) for p in paths])  # files, folders or (quoted) globs
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from None
    if read.failures:
        first = read.failures[0]
        typer.echo(f"warning: {len(read.failures)} entr(ies) could not be read, e.g. {first}", err=True)
    if not read.structures:
        raise ConfigError(f"{what}: no readable structures in {', '.join(map(str, paths))}")
    batch = CrystalBatch.from_structures(read.structures)
    batch.ids = list(read.ids)
    return batch


def characterize_cmd(
    pattern: Annotated[
        Path,
        typer.Argument(
            help="Measured pattern (.xy, .xye, .csv, .txt, .dat; 2θ in degrees) — or structures (.cif, POSCAR, "
            ".json, CSV with a cif column), whose patterns are simulated first."
        ),
    ],
    characterizer: Annotated[str, typer.Option("--characterizer", "-C", help="Characterizer plugin name.")] = "xrdcnn",
    top: Annotated[int, typer.Option("--top", "-k", min=1, help="Hypotheses shown per head.")] = 5,
    match_files: Annotated[
        list[Path] | None,
        typer.Option(
            "--match",
            "-m",
            help="Candidate structures to rank by pattern similarity: files, folders or quoted globs (repeatable).",
        ),
    ] = None,
    metric: Annotated[str, typer.Option(help="Similarity for --match: cosine or pearson.")] = "pearson",
    max_strain: Annotated[
        float, typer.Option(help="--match: search isotropic strain of each candidate within ± this fraction.")
    ] = 0.03,
    max_shift: Annotated[float, typer.Option(help="--match: search a zero shift within ± this many degrees.")] = 0.1,
    no_classify: Annotated[
        bool, typer.Option("--no-classify", help="Only --match (no characterizer is loaded).")
    ] = False,
    weights: Annotated[
        str | None,
        typer.Option(
            help="Named weights of the characterizer (default: its default weights), or a checkpoint file "
            "(e.g. written by `python -m crystal_xrdcnn.train`)."
        ),
    ] = None,
    random_init: RandomInitOption = False,
    config: Annotated[
        list[str] | None, typer.Option("--config", "-c", help="Characterizer config KEY=VALUE (repeatable).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "cpu",
    threads: ThreadsOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Rank crystal-structure hypotheses (crystal system, extinction group, space group) for a powder
    XRD pattern, and optionally rank candidate structures by how well their simulated pattern matches."""
    apply_threads(threads)
    import torch

    from crystal.plugins import load
    from crystal_xrd import MeasuredPattern, match, read_pattern, resample, simulate
    from crystal_xrd.profile import grid

    if not pattern.exists():
        raise ConfigError(f"characterize: {pattern} does not exist")
    if metric not in ("cosine", "pearson"):
        raise ConfigError(f"characterize: --metric {metric!r}; allowed: cosine, pearson")
    if no_classify and not match_files:
        raise ConfigError("characterize: --no-classify needs --match candidate files")
    if no_classify and (weights is not None or random_init):
        raise ConfigError(
            "characterize: --weights and --random-init choose the characterizer; --no-classify loads none"
        )
    structures = _is_structure_file(pattern)
    out: dict[str, Any] = {"input": str(pattern), "kind": "structures" if structures else "pattern"}
    comp = None
    xrd_cfg: dict[str, Any] = {}
    used = None
    if not no_classify:
        char_config, used = trained_config(
            "characterizer", characterizer, weights, component_config(config), random_init, "crystal characterize"
        )
        comp = load("characterizer", characterizer, char_config, device=device)
        xrd_cfg = dict(getattr(comp, "representation_config", {}) or {})
    if structures:
        batch = _read_structures([pattern], "characterize")
        sim = simulate(batch.to(dtype=torch.float32), xrd_cfg)
        signals, names = sim.patterns, list(batch.ids)
        measured = MeasuredPattern(sim.two_theta.double(), sim.patterns[0].double(), source=str(pattern))
    else:
        measured = read_pattern(pattern)
        from crystal_xrd import make_config

        cfg = make_config(xrd_cfg)
        xs = grid(cfg.two_theta_min, cfg.step, cfg.num_points, dtype=torch.float32, device=torch.device("cpu"))
        lo, hi = float(measured.two_theta[0]), float(measured.two_theta[-1])
        if hi < cfg.two_theta_min or lo > cfg.two_theta_max:
            raise ConfigError(
                f"characterize: {pattern} covers 2θ {lo:g}–{hi:g}°, outside the model's grid "
                f"{cfg.two_theta_min:g}–{cfg.two_theta_max:g}°"
            )
        signals, names = resample(measured, xs)[None, :], [pattern.name]
    if comp is not None:
        probs = comp.characterize(signals)
        results = []
        for i, name in enumerate(names):
            heads = {}
            for head, p in probs.items():
                labels = comp.labels(head)
                k = min(top, p.shape[1])
                val, idx = p[i].topk(k)
                heads[head] = [
                    {"label": labels[j], "probability": float(v)} for v, j in zip(val, idx.tolist(), strict=True)
                ]
            results.append({"id": name, "hypotheses": heads})
        out["characterizer"] = characterizer
        out["weights"] = list(comp.weights_in_use())
        if (checkpoint_sha256 := getattr(comp, "checkpoint_sha256", None)) is not None:
            out["checkpoint_sha256"] = checkpoint_sha256
        out["random_init"] = random_init
        out["results"] = results
    if match_files:
        candidates = _read_structures(list(match_files), "characterize --match")
        res = match(
            measured,
            candidates.to(dtype=torch.float64),
            xrd_cfg,
            metric=metric,  # type: ignore[arg-type]
            max_strain=max_strain,
            max_shift=max_shift,
        )
        strain = res.strain.tolist() if res.strain is not None else [0.0] * len(res.ids)
        shift = res.shift.tolist() if res.shift is not None else [0.0] * len(res.ids)
        out["match"] = [
            {"rank": r + 1, "id": cid, "score": float(sc), "strain": st, "shift_deg": sh}
            for r, (cid, sc, st, sh) in enumerate(zip(res.ids, res.scores.tolist(), strain, shift, strict=True))
        ]
    if as_json:
        typer.echo(json.dumps(out, indent=1))
        return
    if used is not None:
        typer.echo(used)
    for res_i in out.get("results", []):
        typer.echo(f"{res_i['id']}: hypotheses from {characterizer}")
        for head, hyps in res_i["hypotheses"].items():
            typer.echo(f"  {head}:")
            for rank, h in enumerate(hyps, start=1):
                typer.echo(f"    {rank}. {h['label']:<40} {100 * h['probability']:6.2f} %")
    if "match" in out:
        typer.echo(
            f"candidates ranked by {metric} similarity of their simulated pattern to {pattern.name} "
            f"(best strain within ±{max_strain:g}, zero shift within ±{max_shift:g}°):"
        )
        for m in out["match"][:top]:
            typer.echo(
                f"  {m['rank']}. {m['id']:<40} {m['score']:.4f}  (strain {100 * m['strain']:+.2f} %, "
                f"shift {m['shift_deg']:+.3f}°)"
            )
