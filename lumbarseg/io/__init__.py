"""Studies in and out: NIfTI, DICOM (sparse and angulated stacks), IVDM3Seg, manifest folders,
labels as NIfTI or DICOM-SEG. Every reader returns a :class:`Study` and raises
:class:`StudyError` (file + reason) on bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from lumbarseg.io.ivdm3seg import is_ivdm3seg, load_ivdm3seg
from lumbarseg.io.manifest import ManifestEntry, load_dataset, load_entry, read_manifest, write_manifest
from lumbarseg.io import budget
from lumbarseg.io.nifti import check_header, is_nifti, load_image, load_label, save_image, save_label, save_series
from lumbarseg.io.study import Series, Study, StudyError


def load_study(path: str | Path | Sequence[str | Path], modalities: Sequence[str] = ()) -> Study:
    """One study from whatever a user points at.

    * a NIfTI file (3D, or 4D with modalities on the last axis), or a list of 3D NIfTI files,
      one per modality; ``modalities`` names the channels;
    * an IVDM3Seg prefix ``<folder>/<id>`` or a folder holding one IVDM3Seg subject;
    * a folder of DICOM files (one or more series; sparse and angulated stacks).

    A data folder with a ``manifest.csv`` holds many studies: use :func:`load_dataset`.
    """
    if not isinstance(path, (str, Path)):
        return Study([load_image(path, modalities)], source=str(path[0])).check()
    path = Path(path)
    if is_nifti(path):
        return Study([load_image(path, modalities)], subject=path.name.split(".nii")[0], source=str(path)).check()
    if is_ivdm3seg(path):
        return load_ivdm3seg(path)
    if path.is_dir():
        if (path / "manifest.csv").is_file():
            raise StudyError(path, "this is a data folder of many studies (it has a manifest.csv); load it with load_dataset")
        from lumbarseg.io.dicom import load_dicom

        return load_dicom(path)
    raise StudyError(path, "not found" if not path.exists() else "not a NIfTI file, IVDM3Seg prefix or DICOM folder")


def check_study(path: str | Path, spacing: float | None = None) -> None:
    """Refuse a study file over the budgets of :mod:`lumbarseg.io.budget` from its header alone
    (voxels, voxel size, header size) and, given the model's ``spacing`` (mm), the network grid
    it would be resampled to. The voxel data (gzip inflation, truncation) is not read here:
    :func:`load_study`, which every caller runs next, checks it before loading. A NIfTI file is
    checked here; a DICOM folder's headers are checked by :func:`load_study` before any pixel is
    read, its grid by :func:`lumbarseg.pipeline.segment_series`."""
    if isinstance(path, (str, Path)) and is_nifti(path):
        shape, _, affine, _ = check_header(path, data=False)
        if spacing:
            budget.check_grid(path, shape, budget.affine_spacing(affine), float(spacing))


__all__ = [
    "ManifestEntry", "Series", "Study", "StudyError", "check_header", "check_study", "is_nifti", "load_dataset",
    "load_entry", "load_image", "load_ivdm3seg", "load_label", "load_study", "read_manifest", "save_image",
    "save_label", "save_series", "write_manifest",
]
