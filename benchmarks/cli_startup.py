"""Wall time of `crystal plugins list` and `crystal --help` (goal: < 0.5 s).

Baseline in the same run: a bare `python -c pass` start-up, so the printed ratio says how
much crystal adds on top of the interpreter itself.

    python benchmarks/cli_startup.py [--repeat 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

CRYSTAL = str(Path(sys.executable).with_name("crystal"))


def timed(cmd: list[str], repeat: int) -> tuple[float, float]:
    subprocess.run(cmd, capture_output=True, check=True)  # warm caches
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        samples.append(time.perf_counter() - t)
    return statistics.median(samples), min(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()
    base, _ = timed([sys.executable, "-c", "pass"], args.repeat)
    print(f"{'command':<28} {'median s':>9} {'min s':>7} {'x python':>9}")
    print(f"{'python -c pass':<28} {base:>9.3f} {'':>7} {1.0:>9.1f}")
    for label, cmd in (
        ("crystal plugins list", [CRYSTAL, "plugins", "list"]),
        ("crystal --help", [CRYSTAL, "--help"]),
        ("crystal plugins list --json", [CRYSTAL, "plugins", "list", "--json"]),
    ):
        med, best = timed(cmd, args.repeat)
        flag = "ok" if med < 0.5 else "SLOW (goal < 0.5 s)"
        print(f"{label:<28} {med:>9.3f} {best:>7.3f} {med / base:>9.1f}  {flag}")


if __name__ == "__main__":
    main()
