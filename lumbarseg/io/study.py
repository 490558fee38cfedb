"""The in-memory study: image stacks placed in patient space, and the one error bad input raises.

Data contract (every loader returns it, every consumer relies on it):

* ``Series.image`` is ``float32``, channels first, ``(C, I, J, K)``: C modalities on one grid.
* ``Series.affine`` maps voxel indices ``(i, j, k, 1)`` to patient coordinates in millimetres
  in NIfTI's RAS+ world: +x towards the patient's right, +y anterior, +z superior (DICOM's LPS+
  with x and y negated).
* ``Series.label`` is an optional integer label map ``(I, J, K)`` on the same grid; what its
  values mean is ``Study.structures`` (value -> structure name of :mod:`lumbarseg.tissues`).

A study holds one or more series: a 3D volume is one series; a clinical DICOM study is a
sparse sagittal stack plus angulated axial stacks, each its own series with its own affine.
Arrays keep the orientation they were stored in; consumers reorient through the affine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class StudyError(ValueError):
    """Bad study input. ``path`` names the file or folder, ``reason`` says what is wrong."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass
class Series:
    image: np.ndarray  # (C, I, J, K) float32
    affine: np.ndarray  # (4, 4) voxel -> RAS mm
    modalities: tuple[str, ...]
    description: str = ""
    label: np.ndarray | None = None  # (I, J, K) integer, same grid
    source: str = ""  # file or folder it was read from
    meta: dict[str, Any] = field(default_factory=dict)  # loader specifics (e.g. DICOM UIDs)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape[1:])  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along i, j, k."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def axcodes(self) -> tuple[str, str, str]:
        import nibabel as nib

        return nib.aff2axcodes(self.affine)

    def world(self, ijk: np.ndarray) -> np.ndarray:
        """Patient (RAS, mm) coordinates of voxel indices, ``(..., 3) -> (..., 3)``."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def voxel(self, xyz: np.ndarray) -> np.ndarray:
        """Continuous voxel indices of patient coordinates; inverse of :meth:`world`."""
        inv = np.linalg.inv(self.affine)
        xyz = np.asarray(xyz, dtype=np.float64)
        return xyz @ inv[:3, :3].T + inv[:3, 3]

    def take_label(self, label: np.ndarray, affine: np.ndarray, tol_mm: float = 1e-2) -> np.ndarray:
        """``label`` on this series' grid, given on the same voxels stored in another axis order
        (``affine``): the same study read by another converter (a DICOM series that MONAI Label
        turned into NIfTI). Axis flips and permutations only; :class:`StudyError` when the two
        grids are not the same voxels."""
        import nibabel as nib

        ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine),
                                               nib.orientations.io_orientation(self.affine))
        out = np.ascontiguousarray(nib.orientations.apply_orientation(label, ornt))
        moved = affine @ nib.orientations.inv_ornt_aff(ornt, label.shape)
        corners = np.array([[0, 0, 0, 1], [*np.array(self.shape) - 1, 1]], float).T
        if out.shape != self.shape or np.abs((moved - self.affine) @ corners).max() > tol_mm:
            raise StudyError(self.source or self.description or "series",
                             f"a label of shape {label.shape} is not on this series' grid {self.shape}")
        return out

    def check(self) -> "Series":
        """Raise :class:`StudyError` unless this series keeps the data contract."""
        where = self.source or self.description or "series"
        if self.image.ndim != 4:
            raise StudyError(where, f"image must be (C, I, J, K), got shape {self.image.shape}")
        if self.image.shape[0] != len(self.modalities):
            raise StudyError(
                where, f"{self.image.shape[0]} channels but modalities {list(self.modalities)}"
            )
        if self.image.size == 0:
            raise StudyError(where, "image is empty")
        if self.affine.shape != (4, 4) or not np.all(np.isfinite(self.affine)):
            raise StudyError(where, "affine is not a finite 4x4 matrix")
        if abs(np.linalg.det(self.affine[:3, :3])) < 1e-9:
            raise StudyError(where, "affine is singular (zero voxel size or collinear axes)")
        bad = ~np.isfinite(self.image)
        if bad.any():
            raise StudyError(where, f"{int(bad.sum())} voxels are NaN or infinite")
        if self.label is not None and self.label.shape != self.shape:
            raise StudyError(
                where, f"label shape {self.label.shape} does not match image shape {self.shape}"
            )
        return self


@dataclass
class Study:
    series: list[Series]
    structures: dict[int, str] = field(default_factory=dict)  # label value -> structure name
    subject: str = ""
    set: str = ""
    source: str = ""

    @property
    def primary(self) -> Series:
        """The series with the most voxels: the volume for 3D studies, the sagittal stack for
        clinical ones."""
        return max(self.series, key=lambda s: s.image[0].size)

    @property
    def label(self) -> np.ndarray | None:
        return self.primary.label

    def check(self) -> "Study":
        if not self.series:
            raise StudyError(self.source or self.subject, "study has no image series")
        for series in self.series:
            series.check()
        return self
