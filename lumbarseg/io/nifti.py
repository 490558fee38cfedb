"""NIfTI studies: one file per modality or one 4D file with modalities on the last axis.

Reading goes through nibabel's header first, so a wrong shape or an absurd size is refused
before any voxel is read (the budgets of :mod:`lumbarseg.io.budget`: voxels, voxel size, header
size, gzip inflation).
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

from lumbarseg import modalities as mod
from lumbarseg.io import budget
from lumbarseg.io.study import Series, StudyError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# What nibabel and gzip raise on a truncated or corrupt file.
_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError)


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def study_name(path: str | Path) -> str:
    """A file's name without its NIfTI suffix (``57_t2.nii.gz`` -> ``57_t2``)."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        name = name.removesuffix(suffix)
    return name


def _open(path: Path) -> nib.Nifti1Image:
    if not path.is_file():
        raise StudyError(path, "file not found")
    try:
        img = nib.load(str(path))
    except _READ_ERRORS as err:
        raise StudyError(path, f"not a readable NIfTI file ({err})") from err
    return img


def _read(path: Path, img: nib.Nifti1Image) -> np.ndarray:
    try:
        return np.asarray(img.dataobj, dtype=np.float32)
    except _READ_ERRORS as err:
        raise StudyError(path, f"truncated or corrupt image data ({err})") from err


def _spatial_shape(path: Path, shape: tuple[int, ...]) -> tuple[tuple[int, int, int], int]:
    """(I, J, K) and channel count of a 3D or 4D header; NIfTI's 5D vector form is accepted
    when its 4th (time) axis is a singleton."""
    if len(shape) == 5 and shape[3] == 1:
        shape = shape[:3] + shape[4:]
    if len(shape) < 3 or min(shape[:3]) < 2:
        raise StudyError(path, f"a 3D image is needed, got shape {shape} (a 2D image?)")
    if len(shape) > 4:
        raise StudyError(path, f"expected a 3D or 4D image, got {len(shape)}D shape {shape}")
    return tuple(shape[:3]), (shape[3] if len(shape) == 4 else 1)  # type: ignore[return-value]


def check_header(path: str | Path, img: nib.Nifti1Image | None = None, counted: int = 0, *,
                 data: bool = True) -> tuple[tuple[int, int, int], int, np.ndarray, int]:
    """The header's (I, J, K), channel count and affine, after the budgets of
    :mod:`lumbarseg.io.budget` (voxels, with ``counted`` voxels already loaded for the same
    study; voxel size; header size; with ``data``, the file holding, and a gzip stream inflating
    to, what the header declares): nothing but the header and, with ``data``, a streamed pass
    over a gzip file is read. Returns ``(shape, channels, affine, total voxels so far)``."""
    path = Path(path)
    img = _open(path) if img is None else img
    shape, count = _spatial_shape(path, img.shape)
    total = budget.check_size(path, (*shape, count), counted)
    affine = np.asarray(img.affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise StudyError(path, "affine is not a finite 4x4 matrix")
    budget.check_spacing(path, budget.affine_spacing(affine))
    header = img.header
    try:
        offset = int(header.get_data_offset())
        data_bytes = int(np.prod(img.shape, dtype=np.int64)) * header.get_data_dtype().itemsize
    except (TypeError, ValueError) as err:
        raise StudyError(path, f"not a readable NIfTI header ({err})") from err
    if offset > budget.MAX_HEADER_BYTES:
        raise StudyError(path, f"voxel data starts at byte {offset:,}, beyond the {budget.MAX_HEADER_BYTES:,} "
                               "bytes a header with extensions may take")
    if data and str(path).lower().endswith(".gz"):
        budget.check_gzip(path, offset + data_bytes)
    elif data and path.stat().st_size < offset + data_bytes:
        raise StudyError(path, f"truncated or corrupt image data: {path.stat().st_size:,} bytes, the header "
                               f"declares {offset + data_bytes:,}")
    return shape, count, affine, total


def load_image(paths: str | Path | Sequence[str | Path], modalities: Sequence[str] = ()) -> Series:
    """Load a study volume: one 4D file, or several 3D files (one per modality) on one grid.

    ``modalities`` names the channels in order (defaults to ``mr0, mr1, ...``).
    """
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not paths:
        raise StudyError("<no path>", "no image file given")
    channels: list[np.ndarray] = []
    affine = None
    grid = None
    voxels = 0
    for path in paths:
        img = _open(path)
        shape, count, header_affine, voxels = check_header(path, img, voxels)
        if grid is None:
            grid, affine = shape, header_affine
        elif shape != grid:
            raise StudyError(path, f"modality shape {shape} does not match {grid} of {paths[0]}")
        elif not np.allclose(img.affine, affine, atol=1e-3):
            raise StudyError(path, f"modality affine differs from that of {paths[0]}")
        data = _read(path, img).reshape(*shape, count)
        channels.extend(np.moveaxis(data, -1, 0))
    names = tuple(mod.normalize(m) for m in modalities) or tuple(f"mr{i}" for i in range(len(channels)))
    if len(names) != len(channels):
        raise StudyError(paths[0], f"{len(channels)} image channels but {len(names)} modality names {list(names)}")
    series = Series(
        image=np.stack(channels), affine=np.asarray(affine, dtype=np.float64), modalities=names,
        source=str(paths[0]), description=Path(paths[0]).name,
    )
    return series.check()


def load_label(path: str | Path, like: Series) -> np.ndarray:
    """A label map for ``like``: same grid (shape and affine), integer values."""
    path = Path(path)
    img = _open(path)
    shape = img.shape[:3] if len(img.shape) == 4 and img.shape[3] == 1 else img.shape
    if tuple(shape) != like.shape:
        raise StudyError(path, f"label shape {tuple(shape)} does not match image shape {like.shape}")
    if not np.allclose(img.affine, like.affine, atol=1e-3):
        raise StudyError(path, "label affine does not match the image's (not on the same grid)")
    check_header(path, img)
    data = _read(path, img).reshape(like.shape)
    if not np.all(data == np.round(data)) or data.min() < 0:
        raise StudyError(path, "label values must be non-negative integers")
    return data.astype(np.uint16 if data.max() > 255 else np.uint8)


def _header(affine: np.ndarray) -> nib.Nifti1Header:
    header = nib.Nifti1Header()
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header.set_xyzt_units("mm")
    return header


def save_image(series: Series, path: str | Path) -> Path:
    """Write the image as 3D (one modality) or 4D (modalities on the last axis) NIfTI."""
    path = Path(path)
    data = np.moveaxis(series.image, 0, -1)
    if data.shape[-1] == 1:
        data = data[..., 0]
    nib.save(nib.Nifti1Image(data.astype(np.float32), series.affine, _header(series.affine)), str(path))
    return path


def save_label(label: np.ndarray, affine: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    dtype = np.uint8 if label.max(initial=0) <= 255 else np.uint16
    header = _header(affine)
    header.set_data_dtype(dtype)  # else the header's float32 wins over the array's integer type
    nib.save(nib.Nifti1Image(label.astype(dtype), affine, header), str(path))
    return path


def save_series(series: Series, image_path: str | Path, label_path: str | Path | None = None) -> None:
    """Image (and label, if the series has one and a path is given) as NIfTI files."""
    save_image(series, image_path)
    if label_path is not None and series.label is not None:
        save_label(series.label, series.affine, label_path)
