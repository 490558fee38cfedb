"""The IVDM3Seg challenge layout: ``<id>_fat.nii``, ``<id>_inn.nii``, ``<id>_opp.nii``,
``<id>_wat.nii`` (four Dixon contrasts on one grid) and ``<id>_Labels.nii`` (1 = disc)."""

from __future__ import annotations

from pathlib import Path

from lumbarseg.io import nifti
from lumbarseg.io.study import Study, StudyError

CONTRASTS = ("fat", "inn", "opp", "wat")  # file suffixes, in channel order
LABEL_SUFFIX = "Labels"


def _file(prefix: Path, suffix: str) -> Path | None:
    for ext in nifti.NIFTI_SUFFIXES:
        path = prefix.parent / f"{prefix.name}_{suffix}{ext}"
        if path.is_file():
            return path
    return None


def subjects(folder: str | Path) -> list[str]:
    """Subject ids of the IVDM3Seg studies in a folder (those with at least one contrast file)."""
    ids = set()
    for path in Path(folder).iterdir():
        name = path.name.split(".nii")[0]
        stem, _, suffix = name.rpartition("_")
        if suffix in CONTRASTS and nifti.is_nifti(path):
            ids.add(stem)
    return sorted(ids)


def is_ivdm3seg(path: str | Path) -> bool:
    path = Path(path)
    if path.is_dir():
        return bool(subjects(path))
    return any(_file(path, c) for c in CONTRASTS)


def load_ivdm3seg(path: str | Path) -> Study:
    """Load ``path`` = ``<folder>/<id>`` (a prefix), or a folder holding exactly one subject."""
    prefix = Path(path)
    if prefix.is_dir():
        ids = subjects(prefix)
        if len(ids) != 1:
            raise StudyError(prefix, f"expected one IVDM3Seg subject in the folder, found {len(ids)}: {ids[:5]}; name one as <folder>/<id>")
        prefix = prefix / ids[0]
    found = [(c, _file(prefix, c)) for c in CONTRASTS]
    files = [(c, f) for c, f in found if f is not None]
    if not files:
        raise StudyError(prefix, f"no IVDM3Seg contrast files {prefix.name}_{{{','.join(CONTRASTS)}}}.nii[.gz]")
    series = nifti.load_image([f for _, f in files], [c for c, _ in files])
    label_file = _file(prefix, LABEL_SUFFIX)
    structures = {}
    if label_file is not None:
        series.label = nifti.load_label(label_file, series)
        structures = {1: "disc"}
    return Study([series], structures=structures, subject=prefix.name, set="ivdm3seg", source=str(prefix)).check()
