"""Volumes <-> per-plane slice stacks, and the position encoding the fusion reads.

Data contract:

* A **canonical volume** is channels first ``(C, X, Y, Z)`` in the closest RAS orientation of
  its series: axis X runs left->right, Y posterior->anterior, Z inferior->superior. Every
  plane network sees slices cut from canonical volumes, so a slice looks the same whatever
  the stored orientation was.
* A plane's **slice stack** is ``(N, C, H, W)``: N slices along the plane's normal axis
  (sagittal: X, coronal: Y, axial: Z), each keeping the other two axes in order.
  :func:`restack` is the exact inverse of :func:`slice_stack`.
* The **fusion input** is ``(P * (K + 1), X, Y, Z)``, plane-major in :data:`PLANES` order: for
  each plane its K class probabilities, then its position channel. The position channel is
  the voxel's relative position along the plane's normal, ``(i + 0.5) / N`` in ``(0, 1)``, and
  It is the paper's "relative position encoding parameter": a 2D model is most reliable in the
  middle of an object along its normal, and the fusion learns where to trust which plane.
  A plane with no data (absent, or cutting a narrow sagittal slab: :func:`slab_planes`) gives
  zeros in all of its channels.
"""

from __future__ import annotations

from typing import Mapping, TypeVar

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import ScaleIntensityRangePercentiles

from lumbarseg.io.study import Series
from lumbarseg.modalities import select_channels

PLANES: tuple[str, ...] = ("sagittal", "coronal", "axial")
NORMAL_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}  # in a canonical (X, Y, Z) volume

Array = TypeVar("Array", np.ndarray, torch.Tensor)
_RAS = nib.orientations.axcodes2ornt("RAS")


def _transform(affine: np.ndarray) -> np.ndarray:
    return nib.orientations.ornt_transform(nib.orientations.io_orientation(affine), _RAS)


def to_canonical(series: Series) -> Series:
    """The series reoriented (axis flips and permutations only, no resampling) to closest RAS."""
    ornt = _transform(series.affine)

    def apply(volume: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(nib.orientations.apply_orientation(volume, ornt))

    image = np.stack([apply(channel) for channel in series.image])
    affine = series.affine @ nib.orientations.inv_ornt_aff(ornt, series.shape)
    label = None if series.label is None else apply(series.label)
    return Series(image, affine, series.modalities, series.description, label, series.source, dict(series.meta))


def canonical_shape(series: Series) -> tuple[int, int, int]:
    """The shape of :func:`to_canonical`'s grid, without moving a voxel."""
    shape = [0, 0, 0]
    for axis, (target, _) in enumerate(_transform(series.affine)):
        shape[int(target)] = series.shape[axis]
    return tuple(shape)


def from_canonical(volume: np.ndarray, source: Series) -> np.ndarray:
    """Inverse of :func:`to_canonical` for an array ``(..., X, Y, Z)`` on the canonical grid of
    ``source``: back to the stored orientation (for writing labels next to the image)."""
    back = nib.orientations.ornt_transform(_RAS, nib.orientations.io_orientation(source.affine))
    lead = volume.shape[:-3]
    flat = volume.reshape(-1, *volume.shape[-3:])
    out = np.stack([nib.orientations.apply_orientation(v, back) for v in flat])
    return np.ascontiguousarray(out.reshape(*lead, *out.shape[-3:]))


def slice_stack(volume: Array, plane: str) -> Array:
    """``(C, X, Y, Z)`` -> ``(N, C, H, W)`` slices along ``plane``'s normal (a view, no copy)."""
    axis = 1 + NORMAL_AXIS[plane]
    return volume.movedim(axis, 0) if isinstance(volume, torch.Tensor) else np.moveaxis(volume, axis, 0)


def repeated_slots(volume: np.ndarray) -> tuple[int, ...]:
    """The input slots of a network input ``(3, X, Y, Z)`` that repeat slot 0: those
    :func:`lumbarseg.modalities.select_channels` filled for a study with fewer than three contrasts."""
    return tuple(k for k in range(1, len(volume)) if np.array_equal(volume[k], volume[0]))


def slice_context(volume: np.ndarray, plane: str, slots: tuple[int, ...] | None = None) -> np.ndarray:
    """2.5D input: a network input ``(3, X, Y, Z)`` whose repeated slots (``slots``, default
    :func:`repeated_slots`) carry slot 0 one voxel before, then one after, along ``plane``'s
    normal (edges repeated), so that a plane network sees its neighbouring slices where a study
    has no third contrast. A study with three contrasts is returned as it is."""
    slots = repeated_slots(volume) if slots is None else slots
    if not slots:
        return volume
    out = volume.copy()
    axis = NORMAL_AXIS[plane]
    n = volume.shape[1 + axis]
    for k, shift in zip(slots, (-1, 1)):
        out[k] = np.take(volume[0], np.clip(np.arange(n) + shift, 0, n - 1), axis=axis)
    return out


def restack(slices: Array, plane: str) -> Array:
    """``(N, K, H, W)`` per-slice outputs -> ``(K, X, Y, Z)`` on the canonical grid."""
    axis = 1 + NORMAL_AXIS[plane]
    return slices.movedim(0, axis) if isinstance(slices, torch.Tensor) else np.moveaxis(slices, 0, axis)


def position_encoding(shape: tuple[int, int, int], plane: str) -> np.ndarray:
    """``(X, Y, Z)`` float32: relative position along the plane's normal."""
    axis = NORMAL_AXIS[plane]
    n = shape[axis]
    ramp = ((np.arange(n, dtype=np.float32) + 0.5) / n).reshape([-1 if a == axis else 1 for a in range(3)])
    return np.broadcast_to(ramp, shape).astype(np.float32)


# A sagittal slab narrower than this from left to right (mm) leaves the axial and coronal planes a
# strip of the spine in every slice, not its anatomy: on SPIDER's 13-30 mm wide T2 SPACE stacks
# they scored disc Dice 0.12 (axial) and 0.77 (coronal) against sagittal's 0.85. Vertebral bodies
# are 40-50 mm wide. Short superior-inferior extents are no such problem: on IVDM3Seg's 31 mm
# tall disc crops every plane scores 0.78-0.84.
MIN_SLAB_MM = 40.0


def slab_planes(shape: tuple[int, int, int], spacing: float) -> set[str]:
    """The planes with no data on a canonical ``shape`` grid at ``spacing`` mm: axial and coronal
    when it spans less than :data:`MIN_SLAB_MM` from left to right, else none."""
    return {"coronal", "axial"} if shape[0] * spacing < MIN_SLAB_MM else set()


def fusion_input(
    probabilities: Mapping[str, np.ndarray],
    shape: tuple[int, int, int],
    num_classes: int,
    *,
    spacing: float,
) -> np.ndarray:
    """Stack per-plane ``(K, X, Y, Z)`` probabilities and position channels into the fusion's
    ``(P * (K + 1), X, Y, Z)`` input (grid of ``spacing`` mm). A plane absent from
    ``probabilities``, or cutting a narrow sagittal slab (:func:`slab_planes`),
    contributes zeros everywhere (no data), so fusion answers from the planes that see anatomy."""
    slabs = slab_planes(shape, spacing)
    channels = []
    for plane in PLANES:
        probs = probabilities.get(plane)
        if probs is not None and probs.shape != (num_classes, *shape):
            raise ValueError(f"{plane} probabilities have shape {probs.shape}, expected {(num_classes, *shape)}")
        if probs is None or plane in slabs:
            channels.append(np.zeros((num_classes + 1, *shape), np.float32))
            continue
        channels.append(probs.astype(np.float32, copy=False))
        channels.append(position_encoding(shape, plane)[None])
    return np.concatenate(channels, axis=0)


_scale = ScaleIntensityRangePercentiles(lower=1, upper=99, b_min=0.0, b_max=1.0, clip=True, channel_wise=True)


def network_input(series: Series) -> np.ndarray:
    """The three input channels for a study, ``(3, X, Y, Z)`` float32 on the canonical grid:
    contrasts chosen by :func:`lumbarseg.modalities.select_channels`, each scaled so its 1st and
    99th percentiles map to 0 and 1 (robust to scanner units, bias and outliers)."""
    canonical = to_canonical(series)
    chosen = canonical.image[select_channels(canonical.modalities)]
    return np.asarray(_scale(chosen), dtype=np.float32)


def model_input(series: Series, spacing: float) -> np.ndarray:
    """What the networks see of a study: :func:`network_input` resampled to ``spacing`` mm
    isotropic, ``(3, X, Y, Z)`` float32 on the canonical grid."""
    return resample(network_input(series), grid_size(to_canonical(series), spacing), "trilinear")


def grid_size(series: Series, spacing: float) -> tuple[int, int, int]:
    """Shape of ``series``' field of view resampled to isotropic ``spacing`` mm."""
    return tuple(max(1, int(round(n * s / spacing))) for n, s in zip(series.shape, series.spacing))  # type: ignore[return-value]


def resample(volume: np.ndarray, size: tuple[int, int, int], mode: str) -> np.ndarray:
    """``(C, X, Y, Z)`` -> ``(C, *size)`` over the same field of view; ``mode`` "trilinear" for
    images and probabilities, "nearest" for label maps (values kept, dtype kept)."""
    if tuple(volume.shape[1:]) == tuple(size):
        return volume
    t = torch.from_numpy(np.ascontiguousarray(volume))[None]
    if mode == "nearest":
        return F.interpolate(t.float(), size=size, mode="nearest-exact")[0].to(t.dtype).numpy()
    return F.interpolate(t.float(), size=size, mode="trilinear", align_corners=False)[0].numpy()
