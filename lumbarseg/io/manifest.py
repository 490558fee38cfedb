"""Data folders in the ``../shared/data`` layout: a ``manifest.csv`` with one row per study.

Columns: ``set,subject,image,label,modality,structures,shape,spacing,sha256``; paths are relative
to the manifest's folder; ``modality`` lists the image's channels separated by ``;``;
``structures`` names each label value (``1=L5-S1;2=L4-L5``). Anything a set does not name is
not annotated in it. A root manifest and a set folder's own manifest read the same way.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import nibabel as nib
import numpy as np

from lumbarseg import modalities as mod
from lumbarseg import tissues
from lumbarseg.io import nifti
from lumbarseg.io.study import Study, StudyError

MANIFEST = "manifest.csv"
COLUMNS = ("set", "subject", "image", "label", "modality", "structures", "shape", "spacing", "sha256")
REQUIRED = ("set", "subject", "image", "label", "modality", "structures")


@dataclass(frozen=True)
class ManifestEntry:
    set: str
    subject: str
    image: Path  # absolute once read
    label: Path | None  # None: an unlabelled study
    modalities: tuple[str, ...]
    structures: dict[int, str]

    @property
    def key(self) -> str:
        return f"{self.set}/{self.subject}"


def manifest_path(folder: str | Path) -> Path:
    folder = Path(folder)
    path = folder if folder.name == MANIFEST else folder / MANIFEST
    if not path.is_file():
        raise StudyError(folder, f"no {MANIFEST} here; a data folder needs one (see the README)")
    return path


def read_manifest(folder: str | Path) -> list[ManifestEntry]:
    """The studies a data folder lists, with paths made absolute. Checks the table, not the files."""
    path = manifest_path(folder)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or ())]
        if missing:
            raise StudyError(path, f"missing columns {missing}; expected {list(COLUMNS)}")
        rows = list(reader)
    if not rows:
        raise StudyError(path, "the manifest lists no studies")
    entries = []
    for line, row in enumerate(rows, start=2):
        try:
            structures = tissues.parse_structures(row["structures"] or "")
        except ValueError as err:
            raise StudyError(path, f"line {line}: {err}") from err
        if not row["image"]:
            raise StudyError(path, f"line {line}: no image path")
        entries.append(
            ManifestEntry(
                set=row["set"],
                subject=row["subject"],
                image=(path.parent / row["image"]).resolve(),
                label=(path.parent / row["label"]).resolve() if row["label"] else None,
                modalities=tuple(mod.normalize(m) for m in row["modality"].split(";") if m),
                structures=structures,
            )
        )
    return entries


def load_entry(entry: ManifestEntry) -> Study:
    """Read one manifest row: image channels, label on the same grid, the structures table."""
    series = nifti.load_image(entry.image, entry.modalities)
    if entry.label is not None:
        series.label = nifti.load_label(entry.label, series)
    return Study([series], structures=dict(entry.structures), subject=entry.subject, set=entry.set,
                 source=str(entry.image)).check()


def load_dataset(folder: str | Path) -> list[Study]:
    """Every study of a data folder (eager; for large sets iterate ``read_manifest`` instead)."""
    return [load_entry(e) for e in read_manifest(folder)]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _relative(path: str | Path, folder: Path) -> str:
    # abspath, not resolve: a study may be a symbolic link into another store (not followed)
    return Path(os.path.abspath(path)).relative_to(os.path.abspath(folder)).as_posix()


def write_manifest(folder: str | Path, entries: Iterable[ManifestEntry]) -> Path:
    """Write ``manifest.csv`` for studies stored below ``folder``; shape, spacing and checksums
    are read from the files so they cannot disagree with them."""
    folder = Path(folder)
    path = folder / MANIFEST
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for e in entries:
            header = nib.load(str(e.image)).header
            files = [Path(e.image)] + ([Path(e.label)] if e.label else [])
            writer.writerow([
                e.set,
                e.subject,
                _relative(e.image, folder),
                _relative(e.label, folder) if e.label else "",
                ";".join(e.modalities),
                tissues.format_structures(e.structures),
                "x".join(str(n) for n in header.get_data_shape()[:3]),
                "x".join(f"{s:g}" for s in np.round(header.get_zooms()[:3], 4)),
                ";".join(_sha256(p) for p in files),
            ])
    return path
