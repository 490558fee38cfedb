"""Segmentation quality, scored the way the data allows.

A class is scored only where its truth is known: within the superior-inferior extent of that
class's labelled voxels in the study (so a correctly found T10 body in a set that labels T11-L5
is not a false positive), and not at all when the set does not name the class. ``z`` is any
superior-inferior coordinate per voxel (broadcastable to the label map): patient z in mm for
evaluation, the canonical z index for validation during training.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from lumbarseg import tissues


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & truth).sum()) / total


def scored_region(truth: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Voxels within the superior-inferior extent of ``truth``'s voxels (all False if none)."""
    zs = np.broadcast_to(z, truth.shape)[truth]
    if zs.size == 0:
        return np.zeros(truth.shape, bool)
    return np.broadcast_to((z >= zs.min()) & (z <= zs.max()), truth.shape)


def dice_per_class(pred: np.ndarray, target: np.ndarray, z: np.ndarray, annotated: set[int]) -> dict[str, float]:
    """Dice per annotated tissue class (indices into ``tissues.TISSUES``) on class maps, each
    within its scored region; classes with no labelled voxel in this study are left out. A
    partial name's voxels in ``target`` (:data:`~lumbarseg.tissues.PARTIAL_CODES`) are scored
    under that name against the union of the foreground classes it names (``vertebra``: body,
    articular and spinous process predicted)."""
    scores = {}
    for k in sorted(annotated - {0}):
        truth = target == k
        region = scored_region(truth, z)
        if region.any():
            scores[tissues.TISSUE_NAMES[k]] = dice((pred == k) & region, truth)
    for name, code in tissues.PARTIAL_CODES.items():
        truth = target == code
        region = scored_region(truth, z)
        if region.any():
            members = [t.index for t in tissues.classes_of(name) if t.index]
            scores[name] = dice(np.isin(pred, members) & region, truth)
    return scores


def dice_per_level(pred: np.ndarray, label: np.ndarray, structures: dict[int, str], z: np.ndarray) -> dict[str, float]:
    """Dice per labelled disc level or vertebra (the paper's Table 2).

    ``pred`` holds tissue classes; each predicted voxel of a class is given to the nearest
    labelled instance of that class (so one disc's leak into its neighbour counts against the
    neighbour), within the class's scored region.
    """
    scores = {}
    named = {v: n for v, n in structures.items() if n in (*tissues.DISC_LEVELS, *tissues.VERTEBRAE)}
    for k in {tissues.tissue_of(n).index for n in named.values()}:
        levels = {v: n for v, n in named.items() if tissues.tissue_of(n).index == k}
        instances = np.where(np.isin(label, list(levels)), label, 0)
        if not instances.any():
            continue
        nearest = ndimage.distance_transform_edt(instances == 0, return_distances=False, return_indices=True)
        owner = instances[tuple(nearest)]
        predicted = (pred == k) & scored_region(instances > 0, z)
        for value, name in levels.items():
            truth = label == value
            if truth.any():
                scores[name] = dice(predicted & (owner == value), truth)
    return scores
