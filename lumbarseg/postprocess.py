"""Tissue-class maps -> clean instances, discs and vertebrae named by level.

The paper named discs by taking "the bottom 7": a detected sacrum, or an extra disc, shifted
every name and lost the top disc. Here levels come from anatomy, in patient space:

1. connected components per class; objects smaller than a per-class volume in mm^3
   (``configs/postprocess.json``) are removed, and so are the parts of a class thinner than its
   ``min_thickness_mm`` (a herniation is a lump of disc material, not a one-voxel seam);
2. disc and body centroids are ordered along the spine's main axis (a line fitted through
   them, pointing superior), so lordosis and oblique acquisitions do not matter;
3. the anchor is the sacrum when one is visible (and no longer than an adult sacrum,
   ``max_sacrum_length_mm``): the lowest disc above its top is L5-S1, and "discs" inside the
   sacrum are dropped, unless a whole vertebral body sits on one (the sacrum is fused: such a
   "sacrum" took in lumbar bone). Without a sacrum the lowest disc is taken as L5-S1
   (the lowest body as L5), with lower confidence, unless a lumbar-sized vertebral body with
   another body below it lies under that disc: then L5-S1 was not found, the lowest disc is
   L4-L5 and the body under it L5 (``missing_lowest_disc``);
4. names go up from the anchor, skipping a level where the gap to the next disc is about twice
   the usual spacing (a disc not found); discs above T11-T12 stay unnamed;
5. each body takes the name of the vertebra above the disc below it (L4 sits above L4-L5);
6. the anchor is checked against independent evidence (:func:`anchor_evidence`, reported as
   ``naming.evidence``; names are not changed by it): the sacrum's shape (a wedge tapering
   caudally and longer than a lumbar body, not a box like L5), the lowest disc's wedge angle
   (L5-S1 is the most wedged disc) and the count of lumbar-shaped bodies above the anchor.
   Evidence against the anchor lowers ``confidence`` and says why in ``notes``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from lumbarseg import tissues
from lumbarseg.config import read_config

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "postprocess.json"
DISC, BODY, SACRUM = (tissues.TISSUE_NAMES.index(n) for n in ("disc", "vertebral_body", "sacrum"))


@dataclass(eq=False)  # one object of a mask: identity, not (array) field equality
class Instance:
    tissue: str
    mask: np.ndarray  # (I, J, K) bool
    volume_mm3: float
    centroid_mm: np.ndarray  # (3,) patient RAS
    position: float = 0.0  # mm along the spine axis, increasing superiorly
    name: str | None = None  # level or vertebra, None if not named


@dataclass
class Levels:
    discs: list[Instance]  # caudal -> cranial
    bodies: list[Instance]
    sacrum: Instance | None
    confidence: float
    anchor: str  # "sacrum", "lowest disc" or "lowest body"
    notes: list[str] = field(default_factory=list)
    evidence: dict = field(default_factory=dict)  # anchor_evidence(): what the anchor was checked against


@dataclass(frozen=True)
class PostprocessConfig:
    """``configs/postprocess.json``: what is too small to be an object, too long to be a sacrum."""

    min_volume_mm3: dict[str, float]  # per tissue name; a tissue not named keeps every object
    min_thickness_mm: dict[str, float]  # per tissue name: what a ball this wide does not fit in is removed
    max_sacrum_length_mm: float  # a longer "sacrum" is a segmentation error, not an anchor
    anchor_checks: "AnchorChecks"
    missing_lowest_disc: "MissingLowestDisc"


@dataclass(frozen=True)
class AnchorChecks:
    """When the evidence speaks against the naming anchor (:func:`anchor_evidence`)."""

    sacrum_min_length_ratio: float  # a sacrum at most this many lumbar body lengths long ...
    sacrum_max_taper: float  # ... or tapering less than this (caudal / cranial depth) is box-shaped
    lowest_disc_min_wedge_deg: float  # a lowest disc wedged less than this (and than the disc above) is not typical of L5-S1


@dataclass(frozen=True)
class MissingLowestDisc:
    """When, without a sacrum, the lowest disc found is L4-L5 (:func:`_lowest_disc_missed`)."""

    upper_body_share: float  # the body right under the lowest disc is at least this share of the median body,
    upper_body_drop: float  # its centre at least this many disc spacings below the disc's (not beside it) ...
    lower_body_share: float  # ... and a second body under it at least this share


@functools.cache
def load_config(path: Path = CONFIG) -> PostprocessConfig:
    """The post-processing thresholds, read and checked once per file (the object is shared: frozen)."""
    return read_config(PostprocessConfig, path)


def _voxel_volume(affine: np.ndarray) -> float:
    return float(abs(np.linalg.det(affine[:3, :3])))


def instances(classes: np.ndarray, affine: np.ndarray, tissue: int, min_volume_mm3: float) -> list[Instance]:
    """Connected components of one tissue class at least ``min_volume_mm3`` large."""
    components, count = ndimage.label(classes == tissue)
    if count == 0:
        return []
    voxel = _voxel_volume(affine)
    sizes = np.bincount(components.ravel())[1:]
    kept = np.flatnonzero(sizes * voxel >= min_volume_mm3)
    # Centroids of the kept components only: a noisy map has hundreds of specks.
    centroids = ndimage.center_of_mass(components > 0, components, kept + 1) if len(kept) else []
    out = []
    for i, centre in zip(kept, centroids):
        centroid = affine[:3, :3] @ np.asarray(centre) + affine[:3, 3]
        out.append(Instance(tissues.TISSUE_NAMES[tissue], components == i + 1, float(sizes[i] * voxel), centroid))
    return out


def _ball(diameter_mm: float, affine: np.ndarray) -> np.ndarray:
    """Voxels of a ball ``diameter_mm`` wide on the grid of ``affine`` (anisotropic voxels: an ellipsoid)."""
    radius = diameter_mm / 2 / np.linalg.norm(affine[:3, :3], axis=0)  # in voxels, per axis
    half = np.floor(radius).astype(int)
    grid = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    return sum((g / r) ** 2 for g, r in zip(grid, radius)) <= 1


def remove_small_objects(classes: np.ndarray, affine: np.ndarray, config: PostprocessConfig | None = None) -> np.ndarray:
    """Class map with the parts of a class thinner than its minimum thickness (mm) and the
    components below its minimum volume (mm^3) set to background."""
    config = config or load_config()
    minimum = config.min_volume_mm3
    out = classes.copy()
    voxel = _voxel_volume(affine)
    for k, name in enumerate(tissues.TISSUE_NAMES[1:], start=1):
        mask = classes == k
        if name in config.min_thickness_mm and mask.any():
            opened = ndimage.binary_opening(mask, _ball(config.min_thickness_mm[name], affine))
            out[mask & ~opened] = 0
            mask = opened
        components, count = ndimage.label(mask)
        if count:
            small = np.bincount(components.ravel()) * voxel < minimum.get(name, 0)
            small[0] = False
            out[small[components]] = 0
    return out


def _spine_axis(points: np.ndarray) -> np.ndarray:
    """Unit direction of the line through the centroids, pointing to the patient's superior."""
    if len(points) < 2:
        return np.array([0.0, 0.0, 1.0])
    direction = np.linalg.svd(points - points.mean(axis=0))[2][0]
    return direction if direction[2] >= 0 else -direction


def slab_normal(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Unit normal of a flat object (a disc): its direction of least spread, pointing superior."""
    points = np.argwhere(mask) @ affine[:3, :3].T
    normal = np.linalg.svd(points - points.mean(axis=0), full_matrices=False)[2][-1]
    return normal if normal[2] >= 0 else -normal


def world_points(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Patient-space positions (mm), one row per voxel of ``mask``."""
    return np.argwhere(mask) @ affine[:3, :3].T + affine[:3, 3]


def _span(inst: Instance, affine: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Positions (mm along the spine axis) of an instance's voxels."""
    return world_points(inst.mask, affine) @ axis


def _regularise(items: list[Instance], affine: np.ndarray, axis: np.ndarray, notes: list[str],
                split: bool) -> list[Instance]:
    """One instance per anatomical object, ordered caudal -> cranial: pieces much closer than
    the usual spacing are merged (a body cut in two); with ``split``, objects about twice the
    usual length are cut along the axis (two touching bodies; not for discs, whose tilted
    wedges are long on the axis by nature)."""
    items = sorted(items, key=lambda i: i.position)
    if len(items) < 3:
        return items
    usual = float(np.median(np.diff([i.position for i in items])))
    merged = [items[0]]
    for inst in items[1:]:
        if inst.position - merged[-1].position < 0.4 * usual:
            a = merged.pop()
            volume = a.volume_mm3 + inst.volume_mm3
            centroid = (a.centroid_mm * a.volume_mm3 + inst.centroid_mm * inst.volume_mm3) / volume
            inst = Instance(a.tissue, a.mask | inst.mask, volume, centroid, float(centroid @ axis))
            notes.append(f"two {a.tissue} pieces merged at {inst.position:.0f} mm")
        merged.append(inst)
    if not split:
        return merged
    spans = [_span(i, affine, axis) for i in merged]
    usual_length = float(np.median([np.ptp(p) for p in spans]))
    out = []
    for inst, pos in zip(merged, spans):
        parts = int(round(np.ptp(pos) / usual_length)) if usual_length > 0 else 1
        if parts < 2:
            out.append(inst)
            continue
        notes.append(f"a {inst.tissue} {parts}x the usual length split in {parts}")
        edges = np.linspace(pos.min(), pos.max() + 1e-6, parts + 1)
        voxels = np.argwhere(inst.mask)
        for lo, hi in zip(edges[:-1], edges[1:]):
            mask = np.zeros_like(inst.mask)
            part = voxels[(pos >= lo) & (pos < hi)]
            mask[tuple(part.T)] = True
            centroid = part.mean(axis=0) @ affine[:3, :3].T + affine[:3, 3]
            out.append(Instance(inst.tissue, mask, inst.volume_mm3 * len(part) / len(voxels), centroid, float(centroid @ axis)))
    return sorted(out, key=lambda i: i.position)


def _count_up(items: list[Instance], names_caudal_first: tuple[str, ...]) -> None:
    """Name items from the first name upwards, skipping a name across a gap of about twice the
    usual spacing (an object not found); items past the last name stay unnamed."""
    gaps = np.diff([i.position for i in items])
    usual = float(np.median(gaps)) if len(gaps) else 0.0
    index = 0
    for n, inst in enumerate(items):
        if n:
            index += max(1, int(round(gaps[n - 1] / usual))) if usual > 0 else 1
        inst.name = names_caudal_first[index] if index < len(names_caudal_first) else None


def name_levels(classes: np.ndarray, affine: np.ndarray, config: PostprocessConfig | None = None) -> Levels:
    """Discs and vertebral bodies of a tissue-class map, named by level (see module doc)."""
    cfg = config or load_config()
    minimum = cfg.min_volume_mm3
    discs = instances(classes, affine, DISC, minimum["disc"])
    bodies = instances(classes, affine, BODY, minimum["vertebral_body"])
    sacra = instances(classes, affine, SACRUM, minimum["sacrum"])
    sacrum = max(sacra, key=lambda s: s.volume_mm3) if sacra else None
    if len(discs) + len(bodies) >= 3:
        axis = _spine_axis(np.array([i.centroid_mm for i in discs + bodies]))
    elif discs:  # too few centroids for a line (one axial stack): a disc's normal is the axis
        axis = slab_normal(max(discs, key=lambda d: d.volume_mm3).mask, affine)
    else:
        axis = _spine_axis(np.array([i.centroid_mm for i in bodies]))
    for inst in discs + bodies:
        inst.position = float(inst.centroid_mm @ axis)
    notes: list[str] = []

    anchor, confidence = "lowest disc", 0.6
    longest = cfg.max_sacrum_length_mm
    span = None if sacrum is None else _span(sacrum, affine, axis)
    if span is not None and np.ptp(span) > longest:
        # No sacrum is that long: a segmentation that calls much of the image "sacrum" must not
        # swallow every disc as "inside the sacrum".
        notes.append(f"a 'sacrum' {np.ptp(span):.0f} mm long (more than {longest:g} mm) is not one: not used as the anchor")
        sacrum = None
    if sacrum is not None:
        top = float(span.max())
        below_top = [d for d in discs if d.position < top - 5.0]
        lumbar = _carrying_a_body(below_top, discs, bodies)
        if lumbar:
            # The sacrum is fused: no whole vertebral body sits on a disc inside it. A "sacrum"
            # reaching over such discs took in lumbar bone (L5, even L3-L5 in some masks).
            notes.append(f"{len(lumbar)} disc(s) below the 'sacrum' top kept: a whole vertebral body sits on each")
        inside = [d for d in below_top if d not in lumbar]
        if inside:
            notes.append(f"{len(inside)} disc-like object(s) within the sacrum ignored")
        discs = [d for d in discs if d not in inside]
        anchor, confidence = "sacrum", 0.8 if lumbar else 0.95
    elif not discs and bodies:
        anchor = "lowest body"
    discs = _regularise(discs, affine, axis, notes, split=False)
    bodies = _regularise(bodies, affine, axis, notes, split=True)
    missed = anchor == "lowest disc" and _lowest_disc_missed(discs, bodies, cfg.missing_lowest_disc)
    if missed:
        confidence *= 0.8
        notes.append("a lumbar-sized vertebral body with another body below it lies under the lowest disc: "
                     "L5-S1 was not found, the lowest disc is named L4-L5")
    _count_up(discs, tuple(reversed(tissues.DISC_LEVELS))[int(missed):])
    if any(d.name is None for d in discs):
        notes.append(f"{sum(d.name is None for d in discs)} disc(s) above T11-T12 left unnamed")
    _name_bodies(bodies, discs)

    gaps = np.diff([d.position for d in discs])
    if len(gaps) and (gaps.max() > 1.5 * np.median(gaps) or gaps.min() < 0.5 * np.median(gaps)):
        confidence *= 0.8
        notes.append("irregular disc spacing: a disc may be missing or split")
    evidence = anchor_evidence(discs, bodies, sacrum if anchor == "sacrum" else None, affine, axis)
    for why in _against_the_anchor(evidence, anchor, cfg.anchor_checks):
        confidence *= 0.8
        notes.append(why)
    return Levels(discs, bodies, sacrum, round(confidence, 3), anchor, notes, evidence)


def _depth_axis(axis: np.ndarray) -> np.ndarray:
    """Patient anterior made perpendicular to the spine axis."""
    a = np.array([0.0, 1.0, 0.0]) - axis[1] * axis
    return a / np.linalg.norm(a) if np.linalg.norm(a) > 1e-3 else np.array([0.0, 0.0, 1.0])


def _wedge_deg(disc: Instance, affine: np.ndarray, axis: np.ndarray) -> float | None:
    """Angle (degrees) between a disc's endplates on its mid-sagittal section: the difference of
    its height along the spine axis in its anterior and posterior thirds over their distance."""
    points = world_points(disc.mask, affine)
    depth_axis = _depth_axis(axis)
    right = np.cross(depth_axis, axis)
    lateral = (points - points.mean(axis=0)) @ right
    mid = np.abs(lateral) < 5.0
    points = points[mid] if mid.sum() > 20 else points
    depth, along = points @ depth_axis, points @ axis
    lo, hi = np.percentile(depth, [5, 95])
    third = (hi - lo) / 3
    if third <= 0:
        return None
    front, back = depth > hi - third, depth < lo + third
    if front.sum() < 3 or back.sum() < 3:
        return None
    rise = np.ptp(along[front]) - np.ptp(along[back])
    return float(np.degrees(np.arctan2(rise, float(np.mean(depth[front]) - np.mean(depth[back])))))


def anchor_evidence(discs: list[Instance], bodies: list[Instance], sacrum: Instance | None,
                    affine: np.ndarray, axis: np.ndarray) -> dict:
    """What the naming anchor can be checked against, each independent of the count itself:

    * ``sacrum_length_ratio``: the sacrum's length along the spine axis over the median lumbar
      body's, and ``sacrum_taper``: its antero-posterior depth in its caudal third over its
      cranial third (a sacrum is a long wedge; a "sacrum" that is really L5 is a box like the
      bodies);
    * ``lowest_disc_wedge_deg`` and ``next_disc_wedge_deg``: the lowest two discs' wedge angles
      (L5-S1 is usually the most wedged lumbar disc);
    * ``lumbar_bodies_above_anchor``: bodies named L1-L5.
    """
    out: dict = {"sacrum_length_ratio": None, "sacrum_taper": None, "lowest_disc_wedge_deg": None,
                 "next_disc_wedge_deg": None,
                 "lumbar_bodies_above_anchor": sum(b.name in ("L1", "L2", "L3", "L4", "L5") for b in bodies)}
    if discs:
        out["lowest_disc_wedge_deg"] = _round(_wedge_deg(discs[0], affine, axis))
    if len(discs) > 1:
        out["next_disc_wedge_deg"] = _round(_wedge_deg(discs[1], affine, axis))
    if sacrum is not None and bodies:
        lengths = [np.ptp(_span(b, affine, axis)) for b in bodies]
        along = _span(sacrum, affine, axis)
        out["sacrum_length_ratio"] = _round(float(np.ptp(along) / np.median(lengths)))
        depth = world_points(sacrum.mask, affine) @ _depth_axis(axis)
        lo, hi = along.min(), along.max()
        third = (hi - lo) / 3
        cranial, caudal = depth[along > hi - third], depth[along < lo + third]
        if third > 0 and len(cranial) > 3 and len(caudal) > 3 and np.ptp(cranial) > 0:
            out["sacrum_taper"] = _round(float(np.ptp(caudal) / np.ptp(cranial)))
    return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def _against_the_anchor(evidence: dict, anchor: str, checks: AnchorChecks) -> list[str]:
    """Notes for the evidence that speaks against the anchor (each lowers the confidence)."""
    notes = []
    if anchor == "sacrum":
        ratio, taper = evidence["sacrum_length_ratio"], evidence["sacrum_taper"]
        if ratio is not None and taper is not None and ratio <= checks.sacrum_min_length_ratio \
                and taper >= checks.sacrum_max_taper:
            notes.append(f"the 'sacrum' is box-shaped like a lumbar body (length {ratio:.2f} bodies, taper {taper:.2f}): "
                         "it may be L5, every name one level too low")
    low, nxt = evidence["lowest_disc_wedge_deg"], evidence["next_disc_wedge_deg"]
    if low is not None and nxt is not None and low < checks.lowest_disc_min_wedge_deg and low < nxt:
        notes.append(f"the lowest disc is wedged {low:.0f} degrees, less than the disc above it ({nxt:.0f}): "
                     "not typical of L5-S1")
    return notes


def _carrying_a_body(candidates: list[Instance], discs: list[Instance], bodies: list[Instance]) -> list[Instance]:
    """The whole ``candidates`` (at least half the median disc's volume; a sacral disc remnant
    is smaller) with a whole vertebral body (likewise) above them, below the next disc up."""
    if not bodies:
        return []
    whole_disc = 0.5 * float(np.median([d.volume_mm3 for d in discs]))
    whole_body = 0.5 * float(np.median([b.volume_mm3 for b in bodies]))
    out = []
    for disc in candidates:
        ceiling = min((d.position for d in discs if d.position > disc.position), default=np.inf)
        if disc.volume_mm3 >= whole_disc and any(disc.position < b.position < ceiling and b.volume_mm3 >= whole_body
                                                 for b in bodies):
            out.append(disc)
    return out


def _lowest_disc_missed(discs: list[Instance], bodies: list[Instance], cfg: MissingLowestDisc) -> bool:
    """Whether a whole lumbar-sized body with a second body below it lies under the lowest disc.
    Under L5-S1 there is only the sacrum: at most the S1 body, often drawn in part. Two bodies,
    the upper one whole, mean the disc between them (L5-S1) was not found."""
    if len(discs) < 2 or len(bodies) < 3:
        return False
    median = float(np.median([b.volume_mm3 for b in bodies]))
    spacing = float(np.median(np.diff([d.position for d in discs])))
    under = [b for b in bodies if b.position < discs[0].position]
    return len(under) >= 2 and under[-1].volume_mm3 >= cfg.upper_body_share * median \
        and discs[0].position - under[-1].position >= cfg.upper_body_drop * spacing \
        and under[-2].volume_mm3 >= cfg.lower_body_share * median


def _name_bodies(bodies: list[Instance], discs: list[Instance]) -> None:
    """A body above disc "X-Y" is X; the body right under the lowest named disc "X-Y" is Y
    unless Y is S1 (the sacrum's body, not a lumbar vertebra); with no discs, the lowest body is
    L5 and names go up."""
    upper = {level: level.split("-")[0] for level in tissues.DISC_LEVELS}
    named_discs = [d for d in discs if d.name]
    if not named_discs:
        _count_up(bodies, tuple(reversed(tissues.VERTEBRAE[:-1])))
        return
    lowest = named_discs[0]
    under = [b for b in bodies if b.position < lowest.position]
    for body in bodies:
        below = [d for d in named_discs if d.position < body.position]
        if below:
            body.name = upper[below[-1].name]
        elif under and body is under[-1] and lowest.name != "L5-S1":
            body.name = lowest.name.split("-")[1]
        else:
            body.name = None


def study_label_map(classes: np.ndarray, levels: Levels) -> np.ndarray:
    """Tissue classes -> study label values (:data:`lumbarseg.tissues.STUDY_LABELS`): named discs
    and bodies by level, unnamed ones as plain ``disc`` / ``vertebral_body``."""
    out = np.zeros(classes.shape, np.uint8)
    for k, name in enumerate(tissues.TISSUE_NAMES[1:], start=1):
        out[classes == k] = tissues.STUDY_VALUES[name]
    for inst in levels.discs + levels.bodies:
        if inst.name in tissues.STUDY_VALUES:
            out[inst.mask] = tissues.STUDY_VALUES[inst.name]
    return out
