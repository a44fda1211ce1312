"""Measured-pattern readers, writer and resampling."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from crystal_xrd import MeasuredPattern, PatternError, read_pattern, resample, write_pattern

X = torch.linspace(10.0, 80.0, 351, dtype=torch.float64)
Y = 100.0 * torch.exp(-((X - 30.0) ** 2) / 0.5) + 5.0 + 0.01 * X
E = torch.sqrt(Y)


@pytest.mark.parametrize("ext", [".xy", ".xye", ".csv", ".txt", ".dat"])
def test_round_trip(tmp_path: Path, ext: str) -> None:
    errors = E if ext in (".xye", ".csv") else None
    path = write_pattern(tmp_path / f"p{ext}", X, Y, errors, comment="sample A\nCu Kα, 40 kV")
    got = read_pattern(path)
    assert torch.equal(got.two_theta, X) and torch.equal(got.intensity, Y)
    if ext == ".xye":
        assert got.errors is not None and torch.equal(got.errors, E)
    assert got.source == str(path)


def test_comments_headers_and_separators(tmp_path: Path) -> None:
    p = tmp_path / "m.xy"
    p.write_text(
        "! instrument: D8\n; measured 2024\n% x y\n\n2theta intensity\n"
        "10.0 1.0  # inline comment\n10.5,2.0\n11.0;3.0\n11.5\t4.0 99 98\n// end\n",
        encoding="utf-8",
    )
    got = read_pattern(p)
    assert got.two_theta.tolist() == [10.0, 10.5, 11.0, 11.5] and got.intensity.tolist() == [1, 2, 3, 4]


def test_csv_header_picks_columns_by_name(tmp_path: Path) -> None:
    p = tmp_path / "m.csv"
    p.write_text("# exported\nindex,Intensity,2Theta,sigma\n0,5,20.0,1\n1,6,20.1,2\n2,7,20.2,3\n", encoding="utf-8")
    got = read_pattern(p)
    assert got.two_theta.tolist() == [20.0, 20.1, 20.2]
    assert got.intensity.tolist() == [5, 6, 7]
    assert got.errors is not None and got.errors.tolist() == [1, 2, 3]


def test_descending_file_is_reversed(tmp_path: Path) -> None:
    p = tmp_path / "d.xy"
    p.write_text("30 3\n20 2\n10 1\n", encoding="utf-8")
    got = read_pattern(p)
    assert got.two_theta.tolist() == [10, 20, 30] and got.intensity.tolist() == [1, 2, 3]


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("bad.xy", "10 1\n11 abc\n12 3\n", r"bad\.xy, line 2, field 2 \(intensity\): 'abc'"),
        ("bad2.xy", "10 1\n11\n", r"line 2: expected at least 2 fields"),
        ("bad.xye", "10 1 0.1\n11 2\n", r"bad\.xye, line 2: expected at least 3 fields"),
        ("neg.xye", "10 1 0.1\n11 2 -1\n", r"line 2, field 3 \(error\): negative"),
        ("nan.xy", "10 1\n11 nan\n", r"line 2, field 2 \(intensity\): 'nan' is not a finite number"),
        ("order.xy", "10 1\n12 2\n11 3\n", r"strictly increasing; data point 3"),
        ("dup.xy", "10 1\n10 2\n11 3\n", r"strictly increasing"),
        ("range.xy", "-1 1\n10 2\n", r"outside \(0, 180\)"),
        ("empty.xy", "# nothing\n\n", r"no data"),
        ("one.xy", "10 1\n", r"found 1 data line"),
        ("hdr.csv", "# x\n2theta,foo\n1,2\n3,4\n", r"hdr\.csv, line 2: header .* has no intensity"),
        ("csvbad.csv", "2theta,intensity\n10,1\n11,\n", r"csvbad\.csv, line 3, field 2 \(intensity\)"),
        ("pattern.raw", "10 1\n", r"unknown pattern file extension '\.raw'"),
    ],
)
def test_malformed_files_name_file_line_and_field(tmp_path: Path, name: str, text: str, needle: str) -> None:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    with pytest.raises(PatternError, match=needle):
        read_pattern(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PatternError, match="cannot read pattern file"):
        read_pattern(tmp_path / "absent.xy")


def test_resample_linear_and_zero_outside() -> None:
    pat = MeasuredPattern(
        torch.tensor([10.0, 20.0, 30.0], dtype=torch.float64), torch.tensor([0.0, 10.0, 5.0], dtype=torch.float64)
    )
    grid = torch.tensor([5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0], dtype=torch.float32)
    y = resample(pat, grid, normalize="none")
    assert y.dtype == torch.float32
    assert y.tolist() == pytest.approx([0.0, 0.0, 5.0, 10.0, 7.5, 5.0, 0.0])
    assert resample(pat, grid, scale=100.0).max().item() == pytest.approx(100.0)


def test_resample_round_trip_of_simulated_pattern(tmp_path: Path) -> None:
    from pymatgen.core import Lattice, Structure

    from crystal.batch import CrystalBatch
    from crystal_xrd import simulate

    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    res = simulate(CrystalBatch.from_structures([s]).to(dtype=torch.float64), step=0.01, fwhm=0.2)
    path = write_pattern(tmp_path / "nacl.xy", res.two_theta, res.patterns[0])
    coarse = simulate(CrystalBatch.from_structures([s]).to(dtype=torch.float64), step=0.04, fwhm=0.2)
    back = resample(read_pattern(path), coarse.two_theta)
    assert torch.allclose(back, coarse.patterns[0], atol=1e-9)
