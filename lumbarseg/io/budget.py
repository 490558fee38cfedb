"""Memory budgets of a study, checked from headers before any voxel is read.

A study file is small on disk but can ask for a lot of memory: a 30 KB NIfTI header may
declare billions of voxels, a gzip stream of zeros inflates about 1000-fold, and a voxel size of
10 m turns a 30^3 image into a petabyte grid once it is resampled to the network's spacing.
Every reader of :mod:`lumbarseg.io` (and so the CLI, the MONAI Label app and the Triton client)
checks these budgets from the header first and raises :class:`StudyError` with the reason:

``MAX_VOXELS`` = 2**26 (67,108,864) voxels in a study, all channels and series together.
    As float32 that is 256 MiB; loading holds the raw dtype, the float32 copy and the channel
    stack at once, so a load peaks below 1 GiB. The largest clinical lumbar acquisitions fit
    with room to spare (a 3D T2 SPACE at 0.9 mm, 320x320x110, is 11 M voxels; a 4-contrast
    Dixon 320x320x80 is 33 M; every study of the shared data is under 8 M).

``MAX_GRID_VOXELS`` = 2**23 (8,388,608; 203^3) voxels of the network grid (the field of view
    resampled to the model's isotropic spacing), per series. Inference holds per grid voxel the 3
    input channels, the class probabilities of 3 planes, the fusion input and the fused
    probabilities (float32) plus torch's working copies: measured in process with the lite
    model (9 tissue classes, one thread; peak RSS over the load, 64^3 -> +172 MB, 96^3 ->
    +438 MB) at 450 bytes per grid voxel plus ~60 MB, so the budget caps one inference near
    4 GiB. A lumbar field of view (300 x 300 x 120 mm at the lite
    model's 1.5 mm: 3.2 M voxels) and a whole-spine sagittal one (900 x 300 x 100 mm: 8.0 M)
    fit. The Triton backend has its own limits (the pipeline's ``max_voxels`` and
    ``max_extent``), which its client checks before it sends a grid.

``SPACING_MM`` = 0.05 .. 30 mm per voxel axis. MR voxels are 0.2 - 8 mm (a sparse stack's
    slice step with gaps stays under 15 mm); a 10 m voxel is a broken or hostile header.

``MAX_HEADER_BYTES`` = 16 MiB before the voxel data (NIfTI ``vox_offset``: header plus
    extensions), so a header cannot make the reader skip gigabytes.

gzip: the stream is decompressed in 1 MiB chunks (never held) and counted; more than the header's
    voxel bytes plus ``GZIP_SLACK_BYTES`` (1 MiB of trailing bytes) is a gzip bomb and refused,
    fewer is a truncated file. This costs one decompression pass (about 0.1 s for a typical
    study) and no memory.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from lumbarseg.io.study import StudyError

MAX_VOXELS = 2**26
MAX_GRID_VOXELS = 2**23
SPACING_MM = (0.05, 30.0)
MAX_HEADER_BYTES = 16 * 2**20
GZIP_SLACK_BYTES = 2**20
_CHUNK = 2**20


def check_size(path: str | Path, shape: Sequence[int], counted: int = 0) -> int:
    """Refuse a header whose voxel count (plus ``counted`` voxels already loaded for the same
    study) is over :data:`MAX_VOXELS`; returns the new total."""
    count = math.prod(int(n) for n in shape)
    if min((int(n) for n in shape), default=0) < 0:
        raise StudyError(path, f"header declares a negative size {tuple(shape)}")
    if count + counted > MAX_VOXELS:
        what = f"image of shape {tuple(int(n) for n in shape)} has {count:,} voxels"
        if counted:
            what += f" ({count + counted:,} in the study so far)"
        raise StudyError(path, f"{what}, over the limit of {MAX_VOXELS:,}")
    return count + counted


def check_spacing(path: str | Path, spacing: Iterable[float]) -> None:
    """Refuse voxel sizes no MR image has (see :data:`SPACING_MM`)."""
    spacing = [float(s) for s in spacing]
    low, high = SPACING_MM
    if not all(math.isfinite(s) and low <= s <= high for s in spacing):
        shown = ", ".join(f"{s:.6g}" for s in spacing)
        raise StudyError(path, f"voxel size ({shown}) mm is outside {low}..{high} mm per axis: not an MR image "
                               "(a broken header?)")


def grid_voxels(shape: Sequence[int], spacing: Iterable[float], target: float) -> int:
    """Voxels of the field of view ``shape`` x ``spacing`` resampled to ``target`` mm isotropic
    (as :func:`lumbarseg.planes.grid_size` computes it)."""
    return math.prod(max(1, int(round(int(n) * float(s) / target))) for n, s in zip(shape, spacing))


def check_grid(path: str | Path, shape: Sequence[int], spacing: Iterable[float], target: float) -> None:
    """Refuse a series whose network grid at ``target`` mm would be over :data:`MAX_GRID_VOXELS`."""
    spacing = [float(s) for s in spacing]
    check_spacing(path, spacing)
    count = grid_voxels(shape, spacing, target)
    if count > MAX_GRID_VOXELS:
        extent = " x ".join(f"{int(n) * s:.0f}" for n, s in zip(shape, spacing))
        raise StudyError(path, f"field of view {extent} mm at the model's {target:g} mm spacing is a grid of "
                               f"{count:,} voxels, over the limit of {MAX_GRID_VOXELS:,}")


def affine_spacing(affine: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def check_gzip(path: str | Path, expected_bytes: int) -> None:
    """Stream a gzip file (all members) and refuse it when it inflates to more than
    ``expected_bytes`` + :data:`GZIP_SLACK_BYTES` (a gzip bomb) or to fewer than
    ``expected_bytes`` (truncated); nothing but one 1 MiB chunk is held in memory."""
    limit = expected_bytes + GZIP_SLACK_BYTES
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(_CHUNK):
                total += len(chunk)
                if total > limit:
                    raise StudyError(path, f"gzip stream inflates to more than {limit:,} bytes where the header "
                                           f"declares {expected_bytes:,} (a gzip bomb?)")
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
        raise StudyError(path, f"truncated or corrupt gzip data ({err})") from err
    if total < expected_bytes:
        raise StudyError(path, f"truncated or corrupt image data: {total:,} of {expected_bytes:,} bytes")
