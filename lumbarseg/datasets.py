"""Studies -> training volumes for the plane networks, with what each set does not annotate.

The real sets label different structures (discs in one, vertebral bodies in others) and only
some levels of what their images show (a T2 set labels T11-L5 bodies, yet T10 and S1 are in
view). So a voxel labelled 0 is background only for the classes the set annotates *at that
height*. Each :class:`TrainingVolume` keeps, per tissue class, the superior-inferior extent
where it is annotated (``extent``): for discs and bodies, which sets label level by level, the
extent of their labelled voxels; for any other tissue a set names, the whole volume (a set that
labels the sacrum or a hernia labels all of it). Outside the extent, or for a class the set
never names, the class is *unknown*, and :func:`allowed_classes` lets the loss accept it there.

Unknown is not unbounded: every tissue class lies near the spine. Far from the labelled discs
and bodies (abdomen, back muscles, air) an unlabelled voxel is background whatever the set
annotates (:func:`spine_region`). Without this rule nothing on a real image teaches
background, and a network paints the tissues only phantoms label over the whole body.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from lumbarseg import planes, tissues
from lumbarseg.io.study import Study, StudyError

IGNORE = tissues.IGNORE
# Labelled level by level over a range of levels, with more levels in view than labelled.
BY_LEVEL = {tissues.TISSUE_NAMES.index("disc"), tissues.TISSUE_NAMES.index("vertebral_body")}

# How far from the labelled discs and vertebral bodies (their in-plane bounding box, taken over
# WINDOW_MM above and below) any lumbar tissue can reach: spinous process tips lie ~100 mm
# behind the bodies' posterior edge at most, articular processes and foraminal hernias well
# within 40 mm of their sides, nothing of the classes more than 15 mm in front of them.
SPINE_MARGINS_MM = {"lateral": 40.0, "anterior": 15.0, "posterior": 110.0}
WINDOW_MM = 30.0


@dataclass
class TrainingVolume:
    key: str  # "<set>/<subject>"
    image: np.ndarray  # (3, X, Y, Z) float32, canonical, network-normalised, at the preset spacing
    target: np.ndarray  # (X, Y, Z) uint8 tissue class (lumbarseg.tissues.TISSUES index)
    extent: np.ndarray  # (K, 2) int: z range [lo, hi] where class k is annotated; lo > hi: nowhere
    spacing: float  # mm, isotropic
    region: np.ndarray = field(init=False, repr=False)  # (X, Y, Z) bool, see spine_region

    def __post_init__(self) -> None:
        self.region = spine_region(self.target, self.spacing)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.target.shape  # type: ignore[return-value]

    @cached_property
    def repeated_slots(self) -> tuple[int, ...]:
        """Input slots repeating slot 0 (:func:`lumbarseg.planes.repeated_slots`), for 2.5D input."""
        return planes.repeated_slots(self.image)

    @cached_property
    def class_voxels(self) -> dict[int, np.ndarray]:
        """Per tissue class labelled in this volume (background aside), its voxels' ``(N, 3)`` indices."""
        present = [k for k in np.unique(self.target) if 0 < k < tissues.NUM_TISSUES]
        return {int(k): np.argwhere(self.target == k).astype(np.int16) for k in present}


def _code_allows() -> np.ndarray:
    table = np.zeros((IGNORE + 1, tissues.NUM_TISSUES), bool)
    table[: tissues.NUM_TISSUES] = np.eye(tissues.NUM_TISSUES, dtype=bool)
    for name, code in tissues.PARTIAL_CODES.items():
        table[code, [t.index for t in tissues.classes_of(name)]] = True
    table[IGNORE] = True
    return table


# ``(256, K)`` bool: the classes a value of a tissue-class map allows (a class itself, the members
# of a partial name's code, every class for IGNORE).
CODE_ALLOWS = _code_allows()


def tissue_target(label: np.ndarray, structures: dict[int, str]) -> np.ndarray:
    """Study label values -> tissue class indices (partial names -> their
    :data:`~lumbarseg.tissues.PARTIAL_CODES`). Values the table does not name are not
    annotated structures; they become :data:`IGNORE`."""
    lut = np.full(max(int(label.max()), max(structures, default=0)) + 1, IGNORE, np.uint8)
    lut[0] = 0
    for value, name in structures.items():
        lut[value] = tissues.PARTIAL_CODES[name] if name in tissues.PARTIAL else tissues.tissue_of(name).index
    return lut[label]


def class_extents(target: np.ndarray, annotated: set[int]) -> np.ndarray:
    """Per tissue class, the z-index range (canonical axis 2, inferior->superior) where it is
    annotated: for the :data:`BY_LEVEL` classes that of the voxels labelled as (possibly) that
    class, for other annotated classes all of it; classes the set does not annotate get an empty
    range. Background counts as annotated wherever any class is."""
    extent = np.tile(np.array([[1, 0]]), (tissues.NUM_TISSUES, 1))
    for k in annotated:
        if k not in BY_LEVEL:
            extent[k] = (0, target.shape[2] - 1)
            continue
        codes = np.flatnonzero(CODE_ALLOWS[:IGNORE, k])
        z = np.flatnonzero(np.isin(target, codes).any(axis=(0, 1)))
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
    annotated = {t.index for name in study.structures.values() for t in tissues.classes_of(name)}
    return TrainingVolume(
        key=f"{study.set}/{study.subject}", image=image, target=target,
        extent=class_extents(target, annotated), spacing=spacing,
    )


def spine_region(target: np.ndarray, spacing: float) -> np.ndarray:
    """``(X, Y, Z)`` bool on the canonical grid (RAS: axis 1 runs posterior -> anterior): where a
    tissue the set does not label may lie. At each height within :data:`WINDOW_MM` of labelled
    voxels, that is the in-plane bounding box of the labelled voxels within the window, widened
    by :data:`SPINE_MARGINS_MM`; elsewhere (far above or below the labels, e.g. the sacrum
    under a set labelled down to L5) nothing is known and the region is everything."""
    labelled = (target > 0) & (target != IGNORE)
    region = np.ones(target.shape, bool)
    heights = np.flatnonzero(labelled.any(axis=(0, 1)))
    if not heights.size:
        return region
    lateral, anterior, posterior = (round(SPINE_MARGINS_MM[k] / spacing) for k in ("lateral", "anterior", "posterior"))
    window = round(WINDOW_MM / spacing)
    in_x, in_y = labelled.any(axis=1), labelled.any(axis=0)  # (X, Z), (Y, Z)
    for z in range(max(0, heights[0] - window), min(target.shape[2], heights[-1] + window + 1)):
        near = slice(max(0, z - window), z + window + 1)
        x, y = np.flatnonzero(in_x[:, near].any(axis=1)), np.flatnonzero(in_y[:, near].any(axis=1))
        if not x.size:
            continue  # a gap in the labels longer than the window: nothing known here
        region[:, :, z] = False
        region[max(0, x[0] - lateral) : x[-1] + lateral + 1, max(0, y[0] - posterior) : y[-1] + anterior + 1, z] = True
    return region


def allowed_classes(target: np.ndarray, extent: np.ndarray, z: np.ndarray, region: np.ndarray | None = None) -> np.ndarray:
    """``(K, *target.shape)`` bool: the classes each voxel may belong to.

    ``target`` is a slice (or volume) of tissue classes, ``z`` the canonical z index of each of
    its voxels (broadcastable), ``region`` the matching part of :func:`spine_region` (None:
    everywhere). A labelled voxel allows only its class (a partial name's code: its classes); a
    voxel labelled 0 allows background and, inside the region, every class not annotated at its
    height; :data:`IGNORE` allows all.
    """
    shape = (-1, *([1] * target.ndim))
    known = (extent[:, 0].reshape(shape) <= z) & (z <= extent[:, 1].reshape(shape))
    allowed = np.where(target == 0, ~known, np.moveaxis(CODE_ALLOWS[target], -1, 0))
    if region is not None:
        allowed[1:] &= region | (target != 0)
    allowed[0] |= target == 0
    return allowed


def save_volume(volume: TrainingVolume, path: Path) -> None:
    # float32 as prepared: a rerun reading the cache must see what the first run trained on.
    np.savez(path, key=volume.key, image=volume.image.astype(np.float32), target=volume.target,
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
    # Each pixel's set as one integer, class 0 the highest bit: np.unique on integers is ~50x
    # faster than on boolean rows (axis=0) and sorts the sets in the same order.
    bits = 1 << np.arange(k - 1, -1, -1, dtype=np.int64)
    values, inverse = np.unique(np.tensordot(bits, allowed.reshape(k, -1), axes=1), return_inverse=True)
    patterns = (values[:, None] & bits) > 0
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


def plane_slice(volume: TrainingVolume, plane: str, index: int, *, context: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Slice ``index`` of a volume along ``plane``: image ``(3, H, W)`` and allowed ``(K, H, W)``;
    ``context``: 2.5D input (:func:`lumbarseg.planes.slice_context`)."""
    if context and volume.repeated_slots:
        # the slice and its neighbours only, not the whole volume, per drawn slice
        lo = max(0, index - 1)
        slab = np.take(volume.image, range(lo, min(volume.shape[planes.NORMAL_AXIS[plane]], index + 2)),
                       axis=1 + planes.NORMAL_AXIS[plane])
        image = planes.slice_stack(planes.slice_context(slab, plane, volume.repeated_slots), plane)[index - lo]
    else:
        image = planes.slice_stack(volume.image, plane)[index]
    target, region = (planes.slice_stack(v[None], plane)[index, 0] for v in (volume.target, volume.region))
    # Canonical z (inferior->superior) is the slice index of an axial slice, and the last
    # in-plane axis (W) of sagittal and coronal slices.
    z = np.array(index) if plane == "axial" else np.arange(volume.shape[2])[None, :]
    return image, allowed_classes(target, volume.extent, z, region)
