"""Studies -> training volumes for the plane networks, with what each set does not annotate.

The real sets label different structures (discs in one, vertebral bodies in others) and only
some levels of what their images show (a T2 set labels T11-L5 bodies, yet T10 and S1 are in
view). So a voxel labelled 0 is background only for the classes the set annotates *at that
height*. Each :class:`TrainingVolume` keeps, per tissue class, the superior-inferior extent of
its labelled voxels (``extent``); outside it, or for a class the set never names, the class
is *unknown*, and :func:`allowed_classes` lets the loss accept it there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lumbarseg import planes, tissues
from lumbarseg.io.study import Study, StudyError

IGNORE = tissues.IGNORE


@dataclass
class TrainingVolume:
    key: str  # "<set>/<subject>"
    image: np.ndarray  # (3, X, Y, Z) float32, canonical, network-normalised, at the preset spacing
    target: np.ndarray  # (X, Y, Z) uint8 tissue class (lumbarseg.tissues.TISSUES index)
    extent: np.ndarray  # (K, 2) int: z range [lo, hi] where class k is annotated; lo > hi: nowhere
    spacing: float  # mm, isotropic

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.target.shape  # type: ignore[return-value]


def tissue_target(label: np.ndarray, structures: dict[int, str]) -> np.ndarray:
    """Study label values -> tissue class indices. Values the table does not name are not
    annotated structures; they become :data:`IGNORE`."""
    lut = np.full(max(int(label.max()), max(structures, default=0)) + 1, IGNORE, np.uint8)
    lut[0] = 0
    for value, name in structures.items():
        lut[value] = tissues.tissue_of(name).index
    return lut[label]


def class_extents(target: np.ndarray, annotated: set[int]) -> np.ndarray:
    """Per tissue class, the z-index range (canonical axis 2, inferior->superior) of its
    labelled voxels; classes the set does not annotate get an empty range. Background counts
    as annotated wherever any class is."""
    extent = np.tile(np.array([[1, 0]]), (tissues.NUM_TISSUES, 1))
    for k in annotated:
        z = np.flatnonzero((target == k).any(axis=(0, 1)))
        if z.size:
            extent[k] = (z[0], z[-1])
    return extent


def prepare(study: Study, spacing: float) -> TrainingVolume:
    """A labelled study as a training volume: canonical orientation, three normalised input
    channels, isotropic ``spacing`` (mm), tissue targets and annotated extents."""
    series = study.primary
    if series.label is None:
        raise StudyError(study.source or study.subject, "the study has no label map to train on")
    image = planes.network_input(series)
    canonical = planes.to_canonical(series)
    target = tissue_target(canonical.label, study.structures)
    size = planes.grid_size(canonical, spacing)
    image = planes.resample(image, size, "trilinear")
    target = planes.resample(target[None], size, "nearest")[0]
    annotated = {tissues.tissue_of(name).index for name in study.structures.values()}
    return TrainingVolume(
        key=f"{study.set}/{study.subject}", image=image, target=target,
        extent=class_extents(target, annotated), spacing=spacing,
    )


def allowed_classes(target: np.ndarray, extent: np.ndarray, z: np.ndarray) -> np.ndarray:
    """``(K, *target.shape)`` bool: the classes each voxel may belong to.

    ``target`` is a slice (or volume) of tissue classes, ``z`` the canonical z index of each of
    its voxels (broadcastable). A labelled voxel allows only its class; a voxel labelled 0
    allows background and every class not annotated at its height; :data:`IGNORE` allows all.
    """
    k = np.arange(tissues.NUM_TISSUES).reshape(-1, *([1] * target.ndim))
    known = (extent[:, 0].reshape(k.shape) <= z) & (z <= extent[:, 1].reshape(k.shape))
    allowed = np.where(target == 0, ~known, target == k)
    allowed[0] |= target == 0
    allowed |= target == IGNORE
    return allowed


def save_volume(volume: TrainingVolume, path: Path) -> None:
    np.savez(path, key=volume.key, image=volume.image.astype(np.float16), target=volume.target,
             extent=volume.extent, spacing=volume.spacing)


def load_volume(path: Path) -> TrainingVolume:
    with np.load(path) as f:
        return TrainingVolume(str(f["key"]), f["image"].astype(np.float32), f["target"], f["extent"],
                              float(f["spacing"]))


def encode_allowed(allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(K, H, W)`` bool -> a code map ``(H, W)`` uint8 and a table ``(256, K)`` bool, so the
    allowed sets can travel through label augmentations (nearest-neighbour) as plain values.

    A pixel that is surely class c gets code c, so tissue-aware augmentations still see real
    tissue masks; other allowed sets get codes from K up; code :data:`IGNORE` (augmentation
    padding) decodes to "all classes allowed"."""
    k = allowed.shape[0]
    table = np.ones((IGNORE + 1, k), bool)
    table[:k] = np.eye(k, dtype=bool)
    patterns, inverse = np.unique(allowed.reshape(k, -1).T, axis=0, return_inverse=True)
    single = patterns.sum(axis=1) == 1
    mixed = np.flatnonzero(~single)
    if k + len(mixed) > IGNORE:
        raise ValueError(f"{len(mixed)} distinct allowed-class sets in one slice; at most {IGNORE - k} fit")
    code_of = np.empty(len(patterns), np.uint8)
    code_of[single] = patterns[single].argmax(axis=1)
    code_of[mixed] = k + np.arange(len(mixed))
    table[k : k + len(mixed)] = patterns[mixed]
    return code_of[inverse.reshape(-1)].reshape(allowed.shape[1:]), table


def decode_allowed(codes: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_allowed`: ``(H, W)`` codes -> ``(K, H, W)`` bool."""
    return np.moveaxis(table[codes], -1, 0)


def plane_slice(volume: TrainingVolume, plane: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Slice ``index`` of a volume along ``plane``: image ``(3, H, W)`` and allowed ``(K, H, W)``."""
    image = planes.slice_stack(volume.image, plane)[index]
    target = planes.slice_stack(volume.target[None], plane)[index, 0]
    # Canonical z (inferior->superior) is the slice index of an axial slice, and the last
    # in-plane axis (W) of sagittal and coronal slices.
    z = np.array(index) if plane == "axial" else np.arange(volume.shape[2])[None, :]
    return image, allowed_classes(target, volume.extent, z)
