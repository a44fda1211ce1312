"""``crystal xrd simulate``: powder XRD patterns of structure files, one ``.xy`` file each.

Registered on the ``crystal`` command line by :mod:`crystal_xrd.hooks` (the
``register_commands`` hook); the core CLI does not know this plugin. Only typer and
crystal-core's light modules are imported here: torch, pymatgen and the simulator are
imported inside the command, so ``crystal --help`` stays fast.

The output directory holds::

    <id>.xy          one pattern per readable structure: a ``#`` header (id, source file,
                     formula, wavelength, grid, profile, units) and two columns, 2θ in
                     degrees and intensity (normalised to a maximum of 1 unless
                     ``normalize='none'``)
    summary.csv      id, file, source, formula, peak count, strongest peak (2θ, d)
    failures.csv     id, status, step, reason, source of every structure without a pattern
                     (unreadable file or entry, degenerate cell, ...)
    manifest.json    command, config, versions, device, torch threads, timings, counts, status

Every file is written through a temporary file and renamed (never half-written).
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import platform
import re
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from crystal.errors import ConfigError, CrystalError

__all__ = ["simulate_cmd", "xrd_app"]

xrd_app = typer.Typer(
    name="xrd", help="Powder X-ray diffraction (crystal-xrd): simulate patterns.", no_args_is_help=True
)

_PACKAGES = ("crystal-core", "crystal-xrd", "crystal-cli", "torch", "numpy", "pymatgen")
_SUMMARY_FIELDS = [
    "id",
    "file",
    "source",
    "formula",
    "num_peaks",
    "strongest_peak_two_theta_deg",
    "strongest_peak_d_spacing_angstrom",
]
_FAILURE_FIELDS = ["id", "status", "step", "reason", "source"]


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from crystal.io import atomic_write

    with atomic_write(path) as fh:
        json.dump(data, fh, indent=2, default=str)
        fh.write("\n")


def _write_csv(path: Path, fields: list[str], rows: list[dict[str, Any]]) -> None:
    from crystal.io import atomic_write

    with atomic_write(path, newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _file_name(ident: str, taken: set[str]) -> str:
    """``<id>.xy`` with characters that are unsafe in file names replaced; unique in ``taken``."""
    stem = re.sub(r"[^A-Za-z0-9._+=-]", "_", ident).strip("._") or "structure"
    name, k = f"{stem}.xy", 1
    while name.lower() in taken:  # case-insensitive file systems too
        k += 1
        name = f"{stem}-{k}.xy"
    taken.add(name.lower())
    return name


def _wavelength(text: str) -> str | float:
    """``CuKa`` stays a name, ``1.5406`` becomes a number of Å (validated by the config)."""
    try:
        return float(text)
    except ValueError:
        return text


def _threads(threads: int | None) -> int:
    """``--threads`` (or ``$CRYSTAL_NUM_THREADS``, else the idle cores) for torch; exported for workers."""
    from crystal.device import set_num_threads

    n = set_num_threads(threads)
    os.environ["CRYSTAL_NUM_THREADS"] = str(n)
    return n


def _header(cfg: Any, ident: str, source: str, formula: str) -> str:
    lam = cfg.wavelength_angstrom
    name = f"{cfg.wavelength} ({lam:g} Å)" if isinstance(cfg.wavelength, str) else f"{lam:g} Å"
    width = f"FWHM {cfg.fwhm:g}° (2θ)" + (
        f" + Scherrer, crystallite size {cfg.crystallite_size:g} nm" if cfg.crystallite_size else ""
    )
    scale = (
        f"normalised to a maximum of {cfg.scale:g} (arbitrary units)"
        if cfg.normalize == "max"
        else "absolute kinematic intensity (electrons², arbitrary scale)"
    )
    lines = [
        f"crystal xrd simulate (crystal-xrd {_version('crystal-xrd')}): kinematic powder pattern",
        f"id: {ident}",
        f"source: {source}",
        f"formula: {formula}",
        f"wavelength: {name}",
        f"grid: 2θ {cfg.two_theta_min:g}–{cfg.two_theta_max:g}°, step {cfg.step:g}°, {cfg.num_points} points",
        f"profile: {cfg.profile}, {width}",
        f"intensity: {scale}",
        "columns: two_theta_deg intensity",
    ]
    return "".join(f"# {line}\n" for line in lines)


def _pattern_text(header: str, x_column: list[str], ys: list[float]) -> str:
    """``header`` then ``"<2θ> <intensity>"`` rows; ``x_column`` holds the formatted 2θ values
    (``"12.340000 "``, the same for every pattern of a grid). Most points of a pattern are 0."""
    rows = [x + ("0\n" if y == 0.0 else f"{y:.8g}\n") for x, y in zip(x_column, ys, strict=True)]
    return header + "".join(rows)


class _Bar:
    """A rich progress bar over the structures (nothing when quiet)."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.progress: Any = None
        if quiet:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]xrd simulate"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
        )
        self.task = self.progress.add_task("patterns", total=total)
        self.progress.start()

    def advance(self, n: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=n)

    def warn(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(f"[yellow]skipped[/] {text}")
        else:
            typer.echo(f"skipped {text}", err=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


@xrd_app.command("simulate")
def simulate_cmd(
    inputs: Annotated[
        list[Path], typer.Argument(help="Structure files, folders or globs (CIF, POSCAR, extxyz, JSON, CSV).")
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "--run-dir",
            "-o",
            help="Output directory; must not exist or be empty (default runs/xrd-<time>).",
        ),
    ] = None,
    wavelength: Annotated[
        str, typer.Option(help="X-ray wavelength: a name (CuKa, CuKa1, MoKa, CoKa, ...) or a number of Å.")
    ] = "CuKa",
    two_theta_min: Annotated[float, typer.Option(help="Lower end of the 2θ grid, degrees.")] = 5.0,
    two_theta_max: Annotated[float, typer.Option(help="Upper end of the 2θ grid, degrees (< 180).")] = 90.0,
    step: Annotated[float, typer.Option(help="2θ grid spacing, degrees.")] = 0.02,
    fwhm: Annotated[float, typer.Option(help="Instrumental peak FWHM, degrees 2θ.")] = 0.1,
    profile: Annotated[str, typer.Option(help="Peak shape: gaussian, lorentzian or pseudo_voigt.")] = "gaussian",
    config: Annotated[
        list[str] | None,
        typer.Option(
            "--config",
            "-c",
            help="Any other simulator field KEY=VALUE (TOML value; e.g. crystallite_size=50, scale=100, "
            "debye_waller=0.5; docs/xrd.md). Repeatable.",
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Structures simulated together (the simulator bounds memory itself).")
    ] = 64,
    dtype: Annotated[str, typer.Option(help="float32 or float64 (structure factors and patterns).")] = "float64",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            min=1,
            help="CPU threads for torch (default: $CRYSTAL_NUM_THREADS, else the idle cores: cores minus the "
            "load average).",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress; print only the output directory.")] = False,
) -> None:
    """Simulate powder XRD patterns (batched, crystal-xrd): one .xy file per structure."""
    n_threads = _threads(threads)
    if dtype not in ("float32", "float64"):
        raise ConfigError(f"--dtype {dtype!r}: allowed: float32, float64")
    from crystal.specs import parse_key_value

    fields: dict[str, Any] = {}
    for item in config or []:
        try:
            key, value = parse_key_value(item, "--config")
        except ValueError as exc:
            raise ConfigError(f"{exc}, e.g. --config crystallite_size=50") from None
        fields[key] = value
    given = {"wavelength", "two_theta_min", "two_theta_max", "step", "fwhm", "profile"} & set(fields)
    if given:
        raise ConfigError(
            f"--config {', '.join(sorted(given))}: use the --{next(iter(given)).replace('_', '-')} option"
        )
    if "augment" in fields:
        raise ConfigError("--config augment: training augmentation is not applied by `crystal xrd simulate`")

    import torch

    from crystal.device import resolve_device
    from crystal.io import atomic_write, read_structures
    from crystal_xrd.simulate import make_config, simulate

    cfg = make_config(
        fields,
        wavelength=_wavelength(wavelength),
        two_theta_min=two_theta_min,
        two_theta_max=two_theta_max,
        step=step,
        fwhm=fwhm,
        profile=profile,
    )
    dev = resolve_device(device)
    torch_dtype = torch.float32 if dtype == "float32" else torch.float64
    out = output if output is not None else Path("runs") / f"xrd-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out}: exists and is not an empty directory; choose another output directory (-o DIR)")
    read = read_structures(inputs)  # a missing file: ConfigError, nothing written
    if not read.ids:
        reasons = "; ".join(f"{f.id}: {f.reason}" for f in read.failures[:3])
        raise ConfigError("xrd simulate: no readable structure in the inputs" + (f" ({reasons})" if reasons else ""))

    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {
        "command": "crystal xrd simulate",
        "crystal_version": _version("crystal-core"),
        "inputs": [str(p.resolve()) for p in inputs],
        "config": {**cfg.model_dump(mode="json"), "wavelength_angstrom": cfg.wavelength_angstrom},
        "dtype": dtype,
        "batch_size": batch_size,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {p: _version(p) for p in _PACKAGES},
        "torch_threads": torch.get_num_threads(),
        "started": _dt.datetime.now(_dt.UTC).isoformat(),
        "status": "running",
        "timings_s": {},
    }
    _write_json(out / "manifest.json", manifest)

    failures: list[dict[str, Any]] = [
        {"id": f.id, "status": "failed", "step": "read", "reason": f.reason, "source": f.source} for f in read.failures
    ]
    summary: list[dict[str, Any]] = []
    taken: set[str] = {"manifest.json", "summary.csv", "failures.csv"}
    bar = _Bar(len(read.ids), quiet)
    for f in read.failures:
        bar.warn(f"{f.id} ({f.source}): {f.reason}")
    t_sim = 0.0

    def write_one(k: int, ident: str, source: str, two_theta: list[str], res: Any, j: int) -> None:
        structure = read.structures[k]
        formula = structure.composition.formula.replace(" ", "")
        name = _file_name(ident, taken)
        with atomic_write(out / name) as fh:
            fh.write(_pattern_text(_header(cfg, ident, source, formula), two_theta, res.patterns[j].tolist()))
        mask = res.peaks.mask[j]
        row: dict[str, Any] = {"id": ident, "file": name, "source": source, "formula": formula}
        row["num_peaks"] = int(mask.sum())
        if row["num_peaks"]:
            top = int(torch.argmax(torch.where(mask, res.peaks.intensity[j], -torch.inf)))
            row["strongest_peak_two_theta_deg"] = round(float(res.peaks.two_theta[j, top]), 6)
            row["strongest_peak_d_spacing_angstrom"] = round(float(res.peaks.d_spacing[j, top]), 6)
        summary.append(row)

    def simulate_part(index: list[int]) -> tuple[Any, float]:
        from crystal.batch import CrystalBatch

        batch = CrystalBatch.from_structures(
            [read.structures[k] for k in index], [read.ids[k] for k in index], dtype=torch_dtype, device=dev
        )
        t0 = time.perf_counter()
        res = simulate(batch, cfg)
        return res, time.perf_counter() - t0

    try:
        for lo in range(0, len(read.ids), batch_size):
            part = list(range(lo, min(lo + batch_size, len(read.ids))))
            try:
                groups: list[tuple[list[int], Any]] = []
                res, dt = simulate_part(part)
                t_sim += dt
                groups.append((part, res))
            except (CrystalError, ValueError, RuntimeError):  # one bad crystal must not drop the batch
                groups = []
                for k in part:
                    try:
                        res, dt = simulate_part([k])
                        t_sim += dt
                        groups.append(([k], res))
                    except (CrystalError, ValueError, RuntimeError) as exc:
                        reason = str(exc) or type(exc).__name__
                        ident, source = read.ids[k], read.sources[k]
                        failures.append(
                            {"id": ident, "status": "failed", "step": "simulate", "reason": reason, "source": source}
                        )
                        bar.warn(f"{ident} ({source}): {reason}")
            for index, res in groups:
                two_theta = [f"{x:.6f} " for x in res.two_theta.tolist()]
                for j, k in enumerate(index):
                    write_one(k, read.ids[k], read.sources[k], two_theta, res, j)
                bar.advance(len(index))
            bar.advance(len(part) - sum(len(i) for i, _ in groups))
    except BaseException as exc:
        bar.close()
        interrupted = isinstance(exc, KeyboardInterrupt)
        manifest.update(status="interrupted" if interrupted else "failed", error=f"{type(exc).__name__}: {exc}")
        manifest["counts"] = {"inputs": len(read.ids) + len(read.failures), "ok": len(summary)}
        _write_csv(out / "summary.csv", _SUMMARY_FIELDS, summary)  # the patterns written so far are complete
        _write_csv(out / "failures.csv", _FAILURE_FIELDS, failures)
        _write_json(out / "manifest.json", manifest)
        if interrupted:
            typer.echo(f"interrupted after {len(summary)} patterns (each written completely): {out}", err=True)
            raise typer.Exit(130) from None
        raise
    bar.close()
    _write_csv(out / "summary.csv", _SUMMARY_FIELDS, summary)
    _write_csv(out / "failures.csv", _FAILURE_FIELDS, failures)
    total = time.perf_counter() - t_start
    manifest["timings_s"] = {"simulate": round(t_sim, 3), "total": round(total, 3)}
    manifest["counts"] = {"inputs": len(read.ids) + len(read.failures), "ok": len(summary), "failed": len(failures)}
    manifest["outputs"] = ["summary.csv", "failures.csv", *(r["file"] for r in summary)]
    manifest["status"] = "finished"
    manifest["finished"] = _dt.datetime.now(_dt.UTC).isoformat()
    _write_json(out / "manifest.json", manifest)
    if quiet:
        typer.echo(str(out))
        return
    rate = len(summary) / t_sim if t_sim > 0 else float("nan")
    typer.echo(
        f"{len(summary)} patterns, {len(failures)} failed, in {total:.1f} s "
        f"(simulation {rate:.3g} patterns/s, {n_threads} thread(s)) → {out}"
    )
    for row in failures[:5]:
        typer.echo(f"failed {row['id']} at {row['step']}: {row['reason']}", err=True)
    if len(failures) > 5:
        typer.echo(f"... and {len(failures) - 5} more in {out / 'failures.csv'}", err=True)
