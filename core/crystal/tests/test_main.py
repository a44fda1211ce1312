"""``python -m crystal``: listing and checking plugins with crystal-core alone."""

from __future__ import annotations

import subprocess
import sys

from crystal.__main__ import main
from crystal.plugins import list_plugins


def test_list_prints_every_installed_component_without_importing_torch():
    code = (
        "import sys, io, contextlib\n"
        "from crystal.__main__ import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    rc = main(['list'])\n"
        "print(out.getvalue())\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1] == "NO-TORCH"
    for info in list_plugins():
        assert any(line.split()[:2] == [info.kind, info.name] for line in lines), info


def test_list_filters_by_kind(capsys):
    assert main(["list", "--kind", "potential"]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert rows
    assert set(rows) == {"potential"}


def test_unknown_kind_is_a_clear_error(capsys):
    assert main(["list", "--kind", "potentials-and-more"]) == 2
    assert "unknown component kind" in capsys.readouterr().err


def test_check_reports_each_plugin(capsys):
    rc = main(["check"])
    out = capsys.readouterr().out
    names = {info.name for info in list_plugins()}
    assert all(f":{n} (" in out for n in names)
    assert rc == (1 if "BAD" in out else 0)
