"""The command line as a user runs it: a real subprocess of the installed console script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from lumbarseg import io, tissues

LUMBARSEG = str(Path(sys.executable).parent / "lumbarseg")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([LUMBARSEG, *args], capture_output=True, text=True, timeout=600)


def test_help_lists_the_subcommands():
    result = run("--help")
    assert result.returncode == 0
    for command in ("phantoms", "inspect", "train", "evaluate"):
        assert command in result.stdout
    assert run("phantoms", "-h").returncode == 0


def test_phantoms_write_three_studies_with_every_class_and_the_dicom_layout(tmp_path):
    result = run("phantoms", "--out", str(tmp_path), "--count", "3", "--seed", "7", "--dicom")
    assert result.returncode == 0, result.stderr
    entries = io.read_manifest(tmp_path)
    assert len(entries) == 3
    for entry in entries:
        study = io.load_entry(entry)
        names = {study.structures[int(v)] for v in np.unique(study.label) if v}
        assert {tissues.tissue_of(n).name for n in names} == set(tissues.TISSUE_NAMES) - {"background"}
        assert [n for n in tissues.DISC_LEVELS if n in names] == list(tissues.DISC_LEVELS)
        dicom = io.load_study(tmp_path / "dicom" / entry.subject)
        assert len(dicom.series) == 8  # sagittal + one angulated axial stack per disc
    assert "L5-S1" in result.stdout
    inspect = run("inspect", str(tmp_path))  # imports MONAI and torch
    assert inspect.returncode == 0 and inspect.stderr == "", inspect.stderr  # no library deprecation noise


def test_errors_are_one_line_with_the_file(tmp_path):
    result = run("inspect", str(tmp_path / "missing.nii.gz"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"lumbarseg inspect: error: {tmp_path / 'missing.nii.gz'}: file not found"


def test_triton_serve_scales_only_the_cpu_configs(tmp_path):
    result = run("triton", "serve", "--instances", "2", "--repository", str(tmp_path))
    assert result.returncode == 2
    assert "--instances and --threads scale the CPU configs: add --cpu" in result.stderr
