"""From label maps to findings: the paper's steps 2 (measurements) and 3 (diagnosis).

Input: per series of a study, a tissue-class map (indices of :data:`lumbarseg.tissues.TISSUES`;
:data:`~lumbarseg.tissues.IGNORE` = not annotated) on that series' grid, with its affine to
patient space (RAS, mm) -- ground truth or a prediction, a 3D volume, a sparse sagittal stack,
angulated axial stacks, in any mix. Output: :func:`study_report`, a JSON-ready dict (schema
:data:`SCHEMA`, documented in docs/findings.md) with one entry per disc level.

How (every length in mm, in patient space; thresholds in ``configs/findings.json``):

0. every map is post-processed first (:func:`lumbarseg.postprocess.remove_small_objects`:
   specks and seams thinner than a class's minimum thickness are not tissue);
1. levels are named from anatomy (:func:`lumbarseg.postprocess.name_levels`) on the study's
   largest series, or, for an axial-only study, on its axial stacks placed together in one
   patient-space grid;
2. each disc gets a frame: centre, normal (the thin axis of its voxels), anterior ``v`` (patient
   anterior within the disc plane) and right ``u``;
3. axial *sections* of each disc: acquired slices of axial stacks parallel to it, and planes
   resampled from any other series parallel to the disc through its height; all sampled on the
   same ``(v, u)`` pixel grid, so one analysis serves both;
4. per section: dural sac area (largest component) and its antero-posterior diameter along ``v``
   through the sac's centroid (the white line of the paper's Fig. 1b); the disc-contour
   *protrusion*: hernia class, plus disc class posterior to the centre and beyond the adjacent
   endplates' margin (the vertebral bodies' cross-section just above and below the disc);
5. per disc, the posterior-corner line (:func:`corner_line`): on the mid-sagittal plane and
   parasagittal planes beside it, how far the disc reaches behind the line joining the
   posteroinferior corner of the body above and the posterosuperior corner of the body below;
6. per disc: herniated by :func:`herniation_decision` (hernia class, else the corner line's
   focal or broad reach, else the disc contour), every rule's value kept as ``evidence``; the
   hernia's top point, height along the disc normal, direction by lateral offset; stenosis grade
   from the sac area in the section through the disc centre (an acquired slice when there is
   one); each herniation and stenosis finding with a ``confidence`` and its reasons.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from lumbarseg import disagreement, postprocess, tissues
from lumbarseg.config import read_config
from lumbarseg.io.study import Study

SCHEMA = "lumbarseg.findings/1"
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "findings.json"
DISC, HERNIA, SAC, BODY, SACRUM = (tissues.TISSUE_NAMES.index(n) for n in
                                   ("disc", "hernia", "dural_sac", "vertebral_body", "sacrum"))
UNKNOWN = tissues.IGNORE  # not annotated, or outside the series' field of view


@dataclass(frozen=True)
class StenosisConfig:
    """Central canal stenosis grades by dural sac area (the config file cites the cut-offs)."""

    grades_below_mm2: tuple[tuple[str, float], ...]  # (grade, area it applies below), most severe first
    above_all: str  # the grade of an area above every cut-off


@dataclass(frozen=True)
class SectionsConfig:
    """Where the axial sections of a disc are sampled, and which series are axial stacks."""

    pixel_mm: float
    half_width_mm: float  # left and right of the disc centre
    anterior_mm: float
    posterior_mm: float
    step_mm: float  # between resampled sections, along the disc normal
    beyond_disc_mm: float  # past each endplate
    axial_stack_max_angle_deg: float  # slices at most this far from the disc plane ...
    axial_stack_max_extent_mm: float  # ... spanning at most this along their normal


@dataclass(frozen=True)
class CornerLineConfig:
    """The posterior-corner-line rule (docs/findings.md): where it is measured and when a disc
    reaching past the line is a herniation rather than a bulge."""

    herniated_mm: float  # the disc reaches at least this far behind the corner line ...
    focal_mm: float  # ... and at least this much further than its median over the measured planes (a focal peak)
    broad_mm: float | None  # or its median reach is at least this (a broad-based herniation; None: not used)
    lateral_mm: float  # parasagittal planes from -lateral_mm to +lateral_mm of the disc centre ...
    step_mm: float  # ... this far apart
    search_mm: float  # the corners are looked for up to this far above and below the disc
    min_planes: int  # fewer measured planes: the rule gives no answer (the contour rule decides)


@dataclass(frozen=True)
class HerniationConfig:
    """When a disc is herniated (the combination documented in docs/findings.md), when a
    section's disc contour is a protrusion, and in which direction a hernia points."""

    margin_mm: float  # beyond the endplates' cross-section
    endplate_probe_mm: float  # where that cross-section is sampled, beyond each endplate
    min_area_mm2: float  # of a section's protrusion for the section to be herniated
    central_mm: float  # lateral offset below which a herniation is central ...
    paracentral_mm: float  # ... paracentral, then foraminal
    hernia_class_mm3: float  # this much hernia class makes a disc herniated ...
    hernia_class_reach_mm: float  # ... when it reaches this far beyond the endplates' cross-section
    corner_line: CornerLineConfig


@dataclass(frozen=True)
class ConfidenceConfig:
    """When a finding says ``confidence: low`` (docs/findings.md)."""

    herniation_margin_mm: float  # a corner-line value this close to its threshold
    sac_fragment_share: float  # the level's 3D dural sac component is less than this share of the largest
    sac_piece_share: float  # the section's largest sac piece is less than this share of its sac
    sac_neighbour_ratio: float  # the level's sac area is less than this ratio of the neighbouring levels' median
    plane_disagreement: float  # the level's plane disagreement above this


@dataclass(frozen=True)
class FindingsConfig:
    """``configs/findings.json``: every threshold of the measurements and the diagnosis."""

    version: int
    stenosis: StenosisConfig
    sections: SectionsConfig
    herniation: HerniationConfig
    confidence: ConfidenceConfig


@functools.cache
def load_config(path: Path = CONFIG) -> FindingsConfig:
    """The findings thresholds, read and checked once per file (the object is shared: frozen)."""
    return read_config(FindingsConfig, path)


def stenosis_grade(area_mm2: float, config: FindingsConfig | None = None) -> str:
    """Central canal stenosis grade of a dural sac cross-sectional area (thresholds cited in the config)."""
    stenosis = (config or load_config()).stenosis
    for grade, below in stenosis.grades_below_mm2:
        if area_mm2 < below:
            return grade
    return stenosis.above_all


@dataclass
class LabelMap:
    """One series' tissue classes. ``plane_classes`` (plane -> class map on the same grid), when
    given, yields the plane disagreement."""

    classes: np.ndarray  # (I, J, K) uint8 tissue class indices
    affine: np.ndarray  # (4, 4) voxel -> patient RAS mm
    description: str = ""
    plane_classes: dict[str, np.ndarray] | None = None

    @functools.cached_property
    def inverse(self) -> np.ndarray:
        """``(4, 4)`` patient RAS mm -> voxel index."""
        return np.linalg.inv(self.affine)

    def voxel_index(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The nearest voxel ``(N, 3)`` of patient positions ``(N, 3)`` (mm), and whether each
        lies inside the grid."""
        idx = np.rint(xyz @ self.inverse[:3, :3].T + self.inverse[:3, 3]).astype(np.int64)
        return idx, np.all((idx >= 0) & (idx < np.array(self.classes.shape)), axis=1)

    def normal(self) -> np.ndarray:
        n = self.affine[:3, 2]
        return n / np.linalg.norm(n)

    def extent_along(self, direction: np.ndarray) -> float:
        """Extent (mm) of one voxel along a unit direction."""
        return float(np.abs(self.affine[:3, :3].T @ direction).sum())


@dataclass
class Disc:
    """A named disc's frame in patient space (from the naming map)."""

    instance: postprocess.Instance
    centre: np.ndarray
    normal: np.ndarray  # superior
    v: np.ndarray  # anterior, in the disc plane
    u: np.ndarray  # the patient's right, in the disc plane
    height: float  # along the normal, near the disc's axis


@dataclass
class Section:
    """One axial plane through a disc, sampled on the disc's ``(v, u)`` grid."""

    series: int
    slice: int | None  # acquired slice index; None for a plane resampled from a volume
    offset: float  # mm from the disc centre along its normal
    point: np.ndarray  # where the disc axis crosses the plane
    normal: np.ndarray
    u: np.ndarray
    v: np.ndarray
    classes: np.ndarray  # (H, W): rows along v (posterior -> anterior), columns along u
    sac_area: float = 0.0
    ap: float = 0.0
    ap_line: tuple[np.ndarray, np.ndarray] | None = None
    protrusion: np.ndarray | None = None  # (H, W) bool
    beyond: float = 0.0  # mm the protrusion reaches past the endplate margin
    hernia_beyond: float | None = None  # mm the hernia class reaches past it (None: no hernia class or no endplates)
    sac: np.ndarray | None = None  # (H, W) bool: the sac component measured
    sac_cut: bool = False  # that component touches the edge of the series' field of view
    sac_share: float = 1.0  # its share of all the section's sac pixels

    @property
    def protrusion_area(self) -> float:
        return 0.0 if self.protrusion is None else float(self.protrusion.sum())

    def world(self, rows: np.ndarray, cols: np.ndarray, grid) -> np.ndarray:
        return self.point + grid.V[rows, None] * self.v + grid.U[cols, None] * self.u


@dataclass
class Grid:
    px: float
    U: np.ndarray  # lateral pixel positions (mm, +right)
    V: np.ndarray  # antero-posterior pixel positions (mm, +anterior)

    @classmethod
    def from_config(cls, sections: SectionsConfig) -> "Grid":
        px = sections.pixel_mm
        return cls(px, np.arange(-sections.half_width_mm, sections.half_width_mm + px / 2, px),
                   np.arange(-sections.posterior_mm, sections.anterior_mm + px / 2, px))


@dataclass
class LevelFindings:
    disc: Disc
    sections: list[Section] = field(default_factory=list)
    footprint: np.ndarray | None = None  # (H, W) endplates' cross-section, None if no body found
    corner: list[CornerPlane] = field(default_factory=list)  # the corner line on parasagittal planes
    corner_at_edge: bool = False  # the field of view's edge kept some of those planes from being measured


# --- geometry -----------------------------------------------------------------------------------

def in_plane_frame(normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Anterior ``v`` (patient +y projected into the plane) and right ``u = v x n``."""
    v = np.array([0.0, 1.0, 0.0]) - normal[1] * normal
    if np.linalg.norm(v) < 1e-3:  # a plane facing front: no anterior direction in it
        v = np.array([0.0, 0.0, 1.0]) - normal[2] * normal
    v /= np.linalg.norm(v)
    return v, np.cross(v, normal)


def disc_frame(inst: postprocess.Instance, affine: np.ndarray) -> Disc:
    points = postprocess.world_points(inst.mask, affine)
    centre = points.mean(axis=0)
    normal = postprocess.slab_normal(inst.mask, affine)
    v, u = in_plane_frame(normal)
    d = points - centre
    along = d @ normal
    near_axis = np.linalg.norm(d - along[:, None] * normal, axis=1) < 6.0
    core = along[near_axis] if near_axis.sum() > 3 else along
    voxel = float(np.abs(affine[:3, :3].T @ normal).sum())
    height = float(np.ptp(core)) + min(voxel, 2.0 * np.cbrt(abs(np.linalg.det(affine[:3, :3]))))
    return Disc(inst, centre, normal, v, u, height)


def _sample(m: LabelMap, point: np.ndarray, u: np.ndarray, v: np.ndarray, grid: Grid) -> np.ndarray:
    """Tissue classes of ``m`` on the plane grid at ``point`` (nearest voxel; UNKNOWN outside)."""
    # The plane's origin and its two steps in voxel indices, so each pixel costs two broadcast
    # adds instead of a matrix product (this runs for every section of every disc).
    rotation, shift = m.inverse[:3, :3], m.inverse[:3, 3]
    ijk = (rotation @ point + shift) + grid.V[:, None, None] * (rotation @ v) + grid.U[None, :, None] * (rotation @ u)
    # Nearest neighbour by hand: map_coordinates' order-0 edge handling drops the outer half voxel.
    idx = np.rint(ijk).astype(np.int64)
    inside = np.all((idx >= 0) & (idx < np.array(m.classes.shape)), axis=-1)
    out = np.full(inside.shape, UNKNOWN, np.uint8)
    out[inside] = m.classes[tuple(idx[inside].T)]
    return out


def is_axial_stack(m: LabelMap, normal: np.ndarray, sections: SectionsConfig) -> bool:
    """Slices parallel (within the configured angle) to a disc, spanning little along their normal."""
    cos = abs(float(m.normal() @ normal))
    span = np.linalg.norm(m.affine[:3, 2]) * (m.classes.shape[2] - 1)
    return cos >= np.cos(np.deg2rad(sections.axial_stack_max_angle_deg)) and span <= sections.axial_stack_max_extent_mm


def _splat(maps: Sequence[LabelMap], spacing: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """All maps resampled (nearest, first map wins) onto one axis-aligned grid covering them:
    how separate axial stacks are seen together for level naming."""
    corners = []
    for m in maps:
        ijk = np.stack(np.meshgrid(*[[0, n - 1] for n in m.classes.shape], indexing="ij"), -1).reshape(-1, 3)
        corners.append(ijk @ m.affine[:3, :3].T + m.affine[:3, 3])
    corners = np.concatenate(corners)
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    shape = tuple(int(n) for n in np.ceil((hi - lo) / spacing) + 1)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = lo
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1).reshape(-1, 3)
    xyz = grid * spacing + lo
    out = np.zeros(len(xyz), np.uint8)
    todo = np.ones(len(xyz), bool)
    for m in maps:
        idx, inside = m.voxel_index(xyz[todo])
        where = np.flatnonzero(todo)[inside]
        out[where] = m.classes[tuple(idx[inside].T)]
        todo[where] = False
    return out.reshape(shape), affine


# --- per-section analysis --------------------------------------------------------------------------

def _largest(mask: np.ndarray) -> np.ndarray:
    components, count = ndimage.label(mask)
    if count <= 1:
        return mask
    return components == (np.bincount(components.ravel())[1:].argmax() + 1)


def _dural_sac(sec: Section, grid: Grid) -> None:
    """Area and antero-posterior diameter (the white line: along ``v`` through the centroid)."""
    every = sec.classes == SAC
    sac = _largest(every)
    if not sac.any():
        return
    sec.sac = sac
    sec.sac_area = float(sac.sum() * grid.px**2)
    sec.sac_share = float(sac.sum() / every.sum())
    sec.sac_cut = bool((ndimage.binary_dilation(sac) & (sec.classes == UNKNOWN)).any())
    r, c = (int(round(x)) for x in ndimage.center_of_mass(sac))
    column = sac[:, c]
    runs, count = ndimage.label(column)
    if count == 0:
        return
    rows = np.flatnonzero(runs == (runs[r] if runs[r] else np.bincount(runs)[1:].argmax() + 1))
    sec.ap = float(len(rows) * grid.px)
    ends = sec.world(np.array([rows[0], rows[-1]]), np.array([c, c]), grid)
    sec.ap_line = (ends[0], ends[1])


def _margin(footprint: np.ndarray, source: LabelMap, v: np.ndarray, u: np.ndarray, grid: Grid,
            cfg: HerniationConfig) -> tuple[np.ndarray, np.ndarray]:
    """Distance (mm) of each pixel from the endplates' cross-section, and where disc material is
    beyond their margin: posterior to the disc centre, more than ``margin_mm`` out and more than
    1.5 source voxels out (a coarse grid moves the disc's and the body's voxelised edges by a
    whole voxel independently; resampling adds up to half a voxel)."""
    mm = ndimage.distance_transform_edt(~footprint, sampling=grid.px)
    voxels = ndimage.distance_transform_edt(~footprint, sampling=(grid.px / source.extent_along(v),
                                                                  grid.px / source.extent_along(u)))
    return mm, (mm > cfg.margin_mm) & (voxels > 1.5) & (grid.V < 0)[:, None]


def _protrusion(sec: Section, margin: tuple[np.ndarray, np.ndarray] | None) -> None:
    """The hernia class, plus disc class beyond the endplate margin."""
    hernia = sec.classes == HERNIA
    protrusion = hernia
    if margin is not None:
        mm, beyond = margin
        if hernia.any():
            sec.hernia_beyond = float(mm[hernia].max())
        protrusion = hernia | ((sec.classes == DISC) & beyond)
        if protrusion.any():
            sec.beyond = float(mm[protrusion].max())
    sec.protrusion = protrusion


def _herniated(sec: Section, grid: Grid, cfg: HerniationConfig) -> bool:
    return sec.protrusion_area * grid.px**2 >= cfg.min_area_mm2


# --- the posterior-corner line ---------------------------------------------------------------------

@dataclass
class CornerPlane:
    """One parasagittal plane's corner-line measurement."""

    offset: float  # mm right of the disc centre
    beyond: float  # mm the disc reaches behind the line (negative: in front of it)
    top: np.ndarray  # patient-space point of the disc's most displaced pixel
    span: float  # mm along the line over which the disc is more than half of ``beyond`` behind it
    basis: str  # "two corners" or "one corner and its body's posterior wall"
    reach: tuple[float, float] = (0.0, 0.0)  # that part's extent along the disc normal (mm from the centre)


# A disc or vertebral corner closer than this to the field of view's edge may continue beyond it.
CORNER_EDGE_MM = 5.0
AT_EDGE = "the disc reaches the edge of the field of view"


def _nearest_component(mask: np.ndarray, r: int, c: int, within_px: float) -> np.ndarray | None:
    """The connected component of ``mask`` at (r, c), or the nearest one within ``within_px``."""
    components, count = ndimage.label(mask)
    if count == 0:
        return None
    if components[r, c]:
        return components == components[r, c]
    distance, (ri, ci) = ndimage.distance_transform_edt(components == 0, return_indices=True)
    if distance[r, c] > within_px:
        return None
    return components == components[ri[r, c], ci[r, c]]


def _corner_plane(m: LabelMap, d: Disc, offset: float, cfg: CornerLineConfig, px: float) -> CornerPlane | str | None:
    """The disc's posterior reach behind the line joining the posteroinferior corner of the body
    above and the posterosuperior corner of the body below, on the parasagittal plane ``offset``
    mm right of the disc centre (None when the plane shows no disc or no body next to it,
    :data:`AT_EDGE` when the disc on it reaches the field of view's edge)."""
    half = d.height / 2 + cfg.search_mm
    V = np.arange(-45.0, 30.0 + px / 2, px)  # along v: posterior -> anterior
    N = np.arange(-half, half + px / 2, px)  # along the disc normal: inferior -> superior
    point = d.centre + offset * d.u
    classes = _sample(m, point, d.normal, d.v, Grid(px, N, V))  # rows V, columns N
    r0, c0 = int(np.argmin(np.abs(V))), int(np.argmin(np.abs(N)))
    disc = _nearest_component(np.isin(classes, (DISC, HERNIA)), r0, c0, 3.0 / px)
    if disc is None or disc.sum() * px**2 < 20.0:
        return None
    # Where the plane leaves the field of view (the top disc of a study), what lies beyond could
    # be disc or a body's corner: the plane counts only where that edge is far from both.
    unknown = classes == UNKNOWN
    edge = ndimage.distance_transform_edt(~unknown) * px if unknown.any() else np.full(classes.shape, np.inf)
    if edge[disc].min() < CORNER_EDGE_MM:
        return AT_EDGE
    VV, NN = np.meshgrid(V, N, indexing="ij")
    body = np.isin(classes, (BODY, SACRUM))
    corners = {}
    for side in (1, -1):  # above, below
        band = body & (side * NN > 0)
        components, count = ndimage.label(band)
        if count == 0:
            continue
        sizes = np.bincount(components.ravel())[1:]
        if sizes.max() * px**2 < 40.0:
            continue
        part = components == sizes.argmax() + 1
        k = int(np.argmin(VV[part] + side * NN[part]))  # the most posterior pixel nearest the disc
        corner = np.array([VV[part][k], NN[part][k]])
        if corner[0] < 0 and edge[part][k] >= CORNER_EDGE_MM:  # a posterior corner behind the disc centre
            corners[side] = (corner, part)
    if not corners:
        return None
    if len(corners) == 2:
        direction = corners[1][0] - corners[-1][0]
        basis, anchor = "two corners", corners[1][0]
    else:  # one body (L5-S1 without a sacrum label, the top of the field of view): its posterior wall
        side, (anchor, part) = next(iter(corners.items()))
        rows = [(n, V[part[:, j]].min()) for j, n in enumerate(N)
                if part[:, j].any() and 2.0 <= side * (n - anchor[1]) <= 15.0]
        if len(rows) < 4:
            return None
        slope = np.polyfit([n for n, _ in rows], [v for _, v in rows], 1)[0]
        direction = np.array([slope, 1.0])
        basis = "one corner and its body's posterior wall"
    direction = direction / np.linalg.norm(direction)
    if abs(direction[1]) < 0.5:  # a "line" within 60 degrees of the disc plane joins no corners
        return None
    posterior = np.array([direction[1], -direction[0]])
    if posterior[0] > 0:
        posterior = -posterior
    behind = VV < 0
    pix = disc & behind
    if not pix.any():
        return None
    dist = (VV - anchor[0]) * posterior[0] + (NN - anchor[1]) * posterior[1]
    reach = np.where(pix, dist, -np.inf)
    k = np.unravel_index(int(np.argmax(reach)), reach.shape)
    beyond = float(reach[k])
    along = (VV - anchor[0]) * direction[0] + (NN - anchor[1]) * direction[1]
    out = pix & (dist > beyond / 2) if beyond > 0 else np.zeros_like(pix)
    span = float(np.ptp(along[out]) + px) if out.any() else 0.0
    reach_n = (float(NN[out].min()), float(NN[out].max())) if out.any() else (0.0, 0.0)
    top = point + V[k[0]] * d.v + N[k[1]] * d.normal
    return CornerPlane(offset, beyond, top, span, basis, reach_n)


def corner_line(m: LabelMap, d: Disc, cfg: CornerLineConfig, px: float) -> tuple[list[CornerPlane], bool]:
    """The corner-line measurement on the mid-sagittal plane through the disc centre and on
    parasagittal planes every ``step_mm`` out to ``lateral_mm`` each side (the lateral profile a
    series of disc-parallel sections shows, read column by column), and whether the field of
    view's edge kept any plane from being measured."""
    offsets = np.arange(-cfg.lateral_mm, cfg.lateral_mm + 1e-6, cfg.step_mm)
    planes = [_corner_plane(m, d, float(s), cfg, px) for s in offsets]
    return [p for p in planes if isinstance(p, CornerPlane)], AT_EDGE in planes


def corner_profile_summary(profile: Sequence[Sequence[float]] | None, lateral_mm: float) -> dict | None:
    """Peak, where, and median of a corner-line profile (``[[offset_mm, reach_mm], ...]``)
    over the planes within ``lateral_mm`` of the disc centre; None without such planes."""
    rows = [(o, v) for o, v in (profile or []) if abs(o) <= lateral_mm + 1e-6]
    if not rows:
        return None
    offset, peak = max(rows, key=lambda r: r[1])
    return {"peak": float(peak), "offset": float(offset), "median": float(np.median([v for _, v in rows])),
            "planes": len(rows)}


def corner_evidence(planes: list[CornerPlane]) -> dict:
    """The corner-line values a report keeps (``evidence``): the peak reach behind the line, where,
    its value on the mid-sagittal plane, the median over the planes (a bulge's broad reach) and
    the lateral profile."""
    if not planes:
        return {"corner_line_mm": None, "corner_line_planes": 0}
    peak = max(planes, key=lambda p: p.beyond)
    mid = min(planes, key=lambda p: abs(p.offset))
    return {
        "corner_line_mm": round(peak.beyond, 2),
        "corner_line_offset_mm": round(peak.offset, 1),
        "corner_line_mid_mm": round(mid.beyond, 2) if abs(mid.offset) < 1.0 else None,
        "corner_line_median_mm": round(float(np.median([p.beyond for p in planes])), 2),
        "corner_line_span_mm": round(peak.span, 1),
        "corner_line_basis": peak.basis,
        "corner_line_planes": len(planes),
        "corner_line_profile": [[round(p.offset, 1), round(p.beyond, 2)] for p in planes],
    }


def herniation_decision(evidence: dict, cfg: HerniationConfig) -> tuple[bool, list[str]]:
    """Herniated or not from a disc's evidence, and the rules that said so (docs/findings.md):

    1. ``hernia_class_mm3`` at least ``hernia_class_mm3`` reaching at least ``hernia_class_reach_mm``
       beyond the endplates' cross-section (where there is one): the segmentation drew a hernia
       that leaves the disc space, not a healthy disc's posterior rim called hernia;
    2. else, where the corner line was measured on at least ``min_planes`` planes within
       ``lateral_mm`` of the disc centre: the disc reaches at least ``herniated_mm`` behind the
       line and that peak stands at least ``focal_mm`` above the median over the planes (focal:
       a herniation; a broad reach of the same depth is a bulge), or the median itself reaches
       ``broad_mm`` (a broad-based herniation, deeper than a bulge goes);
    3. else, unless the field of view's edge kept the corner line from being measured (the disc
       is cut: its contour is not the disc's), where there is no corner line (an axial stack alone,
       no vertebral body next to the disc): the disc contour rule (a section's protrusion beyond
       the endplate margin of at least ``min_area_mm2``).
    """
    reach = evidence.get("hernia_class_reach_mm")
    if evidence.get("hernia_class_mm3", 0.0) >= cfg.hernia_class_mm3 and (reach is None or reach >= cfg.hernia_class_reach_mm):
        return True, ["hernia class"]
    c = cfg.corner_line
    line = corner_profile_summary(evidence.get("corner_line_profile"), c.lateral_mm)
    if line is not None and line["planes"] >= c.min_planes:
        if line["peak"] >= c.herniated_mm and line["peak"] - line["median"] >= c.focal_mm:
            return True, ["corner line"]
        if c.broad_mm is not None and line["median"] >= c.broad_mm:
            return True, ["corner line"]
        return False, []
    if evidence.get("corner_line_at_edge"):
        return False, []
    if evidence.get("contour_protrusion_mm2", 0.0) >= cfg.min_area_mm2:
        return True, ["disc contour"]
    return False, []


# --- the study -------------------------------------------------------------------------------------

@dataclass
class Findings:
    maps: list[LabelMap]
    levels: postprocess.Levels | None
    discs: list[LevelFindings]
    grid: Grid
    naming_series: int | None  # index into maps; None: the axial stacks together
    problems: list[str]
    named: np.ndarray  # the class map levels were named on, small objects removed


def measure(maps: Sequence[LabelMap], config: FindingsConfig | None = None,
            post_config: postprocess.PostprocessConfig | None = None) -> Findings:
    """Name levels and measure every disc's sections (see the module doc)."""
    cfg = config or load_config()
    sections_cfg = cfg.sections
    grid = Grid.from_config(sections_cfg)
    # Measure what post-processing keeps: specks and one-voxel seams are not tissue (a model's
    # strip of "hernia" along the dural sac's front is not a herniation).
    maps = [dataclasses.replace(m, classes=postprocess.remove_small_objects(m.classes, m.affine, post_config))
            for m in maps]
    problems: list[str] = []
    known = [i for i, m in enumerate(maps) if (m.classes != UNKNOWN).any()] or list(range(len(maps)))
    primary = max(known, key=lambda i: maps[i].classes.size)
    # Axial stacks alone cannot name levels: a stack holds one disc. Name on the largest
    # series unless it is itself an axial stack (an axial-only study).
    naming = maps[primary]
    naming_index: int | None = primary
    if len(maps) > 1 and is_axial_stack(naming, np.array([0.0, 0.0, 1.0]), sections_cfg):
        splat, affine = _splat(maps)
        naming = LabelMap(postprocess.remove_small_objects(splat, affine, post_config), affine, "axial stacks together")
        naming_index = None
    levels = postprocess.name_levels(naming.classes, naming.affine, post_config)
    if not levels.discs:
        problems.append("no intervertebral disc found: levels, herniation and stenosis need discs")
        return Findings(maps, levels, [], grid, naming_index, problems, naming.classes)

    discs = [LevelFindings(disc_frame(inst, naming.affine)) for inst in levels.discs]
    for f in discs:
        d = f.disc
        reach = d.height / 2 + sections_cfg.beyond_disc_mm
        probe = d.height / 2 + cfg.herniation.endplate_probe_mm
        volume_like = [i for i, m in enumerate(maps) if not is_axial_stack(m, d.normal, sections_cfg)]
        # Resample from the series the disc was found in, unless its own slices are the sections.
        volume_like.sort(key=lambda i: i != naming_index)
        # The endplates' cross-section: bodies (or the sacrum) just beyond the disc on each side.
        for i in volume_like[:1]:
            plates = [_sample(maps[i], d.centre + s * probe * d.normal, d.u, d.v, grid) for s in (-1, 1)]
            footprint = np.logical_or.reduce([np.isin(p, (BODY, SACRUM)) for p in plates])
            f.footprint = footprint if footprint.any() else None
            for off in np.arange(-reach, reach + 1e-6, sections_cfg.step_mm):
                point = d.centre + off * d.normal
                f.sections.append(Section(i, None, float(off), point, d.normal, d.u, d.v,
                                          _sample(maps[i], point, d.u, d.v, grid)))
            f.corner, f.corner_at_edge = corner_line(maps[i], d, cfg.herniation.corner_line, grid.px)
        for i, m in enumerate(maps):
            if i in volume_like:
                continue
            f.sections += _acquired_sections(i, m, d, reach, grid)
        if f.footprint is None:  # axial only: the stack's own slices through the bodies
            bodies = [np.isin(s.classes, (BODY, SACRUM)) for s in f.sections if abs(s.offset) > d.height / 2]
            f.footprint = np.logical_or.reduce(bodies) if bodies and np.logical_or.reduce(bodies).any() else None
        margins = {}
        if f.footprint is not None:
            margins = {i: _margin(f.footprint, maps[i], d.v, d.u, grid, cfg.herniation)
                       for i in {s.series for s in f.sections}}
        for sec in f.sections:
            _dural_sac(sec, grid)
            _protrusion(sec, margins.get(sec.series))
    lonely = [f.disc.instance.name or "unnamed" for f in discs if f.footprint is None]
    if lonely:
        problems.append(f"no vertebral body next to disc(s) {', '.join(lonely)}: herniation there from the hernia class "
                        "and the corner line only")
    # An acquired slice belongs to the one disc it is closest to.
    owner: dict[tuple[int, int], tuple[float, int]] = {}
    for n, f in enumerate(discs):
        for sec in f.sections:
            if sec.slice is not None:
                key = (sec.series, sec.slice)
                if key not in owner or abs(sec.offset) < owner[key][0]:
                    owner[key] = (abs(sec.offset), n)
    for n, f in enumerate(discs):
        f.sections = [s for s in f.sections if s.slice is None or owner[(s.series, s.slice)][1] == n]
    if not any((m.classes == SAC).any() for m in maps):
        problems.append("no dural sac in the mask: sac size and stenosis not measured")
    return Findings(maps, levels, discs, grid, naming_index, problems, naming.classes)


def _acquired_sections(index: int, m: LabelMap, d: Disc, reach: float, grid: Grid) -> list[Section]:
    """The slices of an axial stack that cross this disc's axis within ``reach`` of its centre."""
    out = []
    normal = m.normal()
    cos = float(normal @ d.normal)
    v, u = in_plane_frame(normal if cos >= 0 else -normal)
    for k in range(m.classes.shape[2]):
        origin = m.affine[:3, :3] @ np.array([0.0, 0.0, k]) + m.affine[:3, 3]
        t = float((origin - d.centre) @ normal / cos)  # along the disc axis to the slice plane
        if abs(t) > reach:
            continue
        point = d.centre + t * d.normal
        classes = _sample(m, point, u, v, grid)
        if (classes != UNKNOWN).mean() < 0.5:  # the disc axis passes outside this slice's field of view
            continue
        out.append(Section(index, k, t, point, normal if cos >= 0 else -normal, u, v, classes))
    return out


# --- per-disc findings ------------------------------------------------------------------------------

def _normal_step(f: LevelFindings, series: int) -> float | None:
    """The spacing along the disc normal of the disc's sections from ``series`` (None: one section)."""
    steps = np.diff(sorted({s.offset for s in f.sections if s.series == series}))
    return float(np.median(steps)) if len(steps) else None


def _volume_pool(f: LevelFindings) -> tuple[list[Section], float]:
    """The sections a 3D quantity is summed over (resampled volume planes when there are any,
    finer along the normal, else acquired slices) and their spacing along the disc normal."""
    pool = [s for s in f.sections if s.slice is None] or list(f.sections)
    if not pool:
        return [], 0.0
    step = _normal_step(f, pool[0].series)
    return pool, 1.0 if step is None else step


def herniation_evidence(f: LevelFindings, grid: Grid) -> dict:
    """Every herniation rule's measured value for one disc (the report's ``evidence``):
    ``hernia_class_mm3``, the disc contour's protrusion beyond the endplate margin
    (``contour_protrusion_mm``, the largest section's ``contour_protrusion_mm2``) and the corner
    line's values (:func:`corner_evidence`)."""
    pool, step = _volume_pool(f)
    hernia = sum(int((s.classes == HERNIA).sum()) for s in pool) * grid.px**2 * step
    protruding = [s for s in f.sections if s.protrusion_area]
    reach = [s.hernia_beyond for s in f.sections if s.hernia_beyond is not None]
    return {
        "hernia_class_mm3": round(float(hernia), 1),
        "hernia_class_reach_mm": round(max(reach), 2) if reach else None,
        "contour_protrusion_mm": round(max((s.beyond for s in protruding), default=0.0), 2),
        "contour_protrusion_mm2": round(max((s.protrusion_area for s in protruding), default=0.0) * grid.px**2, 1),
        **corner_evidence(f.corner),
        "corner_line_at_edge": f.corner_at_edge,
    }


def herniation_confidence(evidence: dict, present: bool, decided_by: list[str], cfg: FindingsConfig,
                          plane_disagreement: float | None = None) -> list[str]:
    """Why a herniation call (present or absent) is uncertain; no reason: confidence high.
    ``plane_disagreement``: the level's, when the plane networks' maps are known."""
    reasons = []
    if decided_by != ["hernia class"]:
        reasons += _rule_doubts(evidence, present, cfg)
    if plane_disagreement is not None and plane_disagreement > cfg.confidence.plane_disagreement:
        reasons.append(f"plane disagreement {plane_disagreement:.2f}")
    return reasons


def _rule_doubts(evidence: dict, present: bool, cfg: FindingsConfig) -> list[str]:
    """The doubts about a call the corner line or the disc contour made."""
    h, c = cfg.herniation, cfg.herniation.corner_line
    near = cfg.confidence.herniation_margin_mm
    reasons = []
    line = corner_profile_summary(evidence.get("corner_line_profile"), c.lateral_mm)
    if line is not None and line["planes"] >= c.min_planes:
        focal = line["peak"] - line["median"]
        if abs(line["peak"] - c.herniated_mm) < near or (line["peak"] >= c.herniated_mm and abs(focal - c.focal_mm) < near) \
                or (c.broad_mm is not None and abs(line["median"] - c.broad_mm) < near):
            reasons.append("corner line near the threshold")
        if evidence.get("corner_line_basis") != "two corners" and (present or line["peak"] >= c.herniated_mm - near):
            reasons.append("one vertebral corner only: line along its body's posterior wall")
    elif evidence.get("corner_line_at_edge"):
        reasons.append("the disc reaches the edge of the field of view: not assessed")
    else:
        reasons.append("no corner line (no vertebral body beside the disc on a sagittal plane): disc contour only")
    if 0 < evidence.get("hernia_class_mm3", 0.0) < h.hernia_class_mm3 and not present:
        reasons.append("a little hernia class, below the threshold")
    return reasons


def _corner_planes_hot(f: LevelFindings, cfg: HerniationConfig) -> list[CornerPlane]:
    hot = [p for p in f.corner if p.beyond >= cfg.corner_line.herniated_mm]
    return hot or ([max(f.corner, key=lambda p: p.beyond)] if f.corner else [])


def _section_herniated(s: Section, h: dict, f: LevelFindings, grid: Grid, cfg: HerniationConfig) -> bool:
    """A section of a herniated disc is herniated when its own contour protrudes (the hernia
    class or disc beyond the endplate margin, ``min_area_mm2``) or, when the corner line decided,
    when it crosses the part of the disc behind the line on the peak plane."""
    if not h["present"]:
        return False
    if _herniated(s, grid, cfg):
        return True
    if h["decided_by"] == ["corner line"] and f.corner:
        peak = max(f.corner, key=lambda p: p.beyond)
        return peak.reach[0] - grid.px <= s.offset <= peak.reach[1] + grid.px
    return False


def _herniation(f: LevelFindings, maps: list[LabelMap], grid: Grid, config: FindingsConfig,
                disagreement: float | None) -> dict:
    cfg = config.herniation
    evidence = herniation_evidence(f, grid)
    present, decided_by = herniation_decision(evidence, cfg)
    reasons = herniation_confidence(evidence, present, decided_by, config, disagreement)
    out = {"present": present, "decided_by": decided_by, "confidence": "low" if reasons else "high",
           "confidence_reasons": reasons, "evidence": evidence}
    if not present:
        return out
    if decided_by == ["corner line"]:
        hot = _corner_planes_hot(f, cfg)
        peak = max(hot, key=lambda p: p.beyond)
        x = float(np.average([p.offset for p in hot], weights=[max(p.beyond, 1e-3) for p in hot]))
        tops = peak.top
        height = peak.reach[1] - peak.reach[0] + grid.px
        pool, step = _volume_pool(f)
        volume = sum(s.protrusion_area for s in pool) * grid.px**2 * step
    else:
        # Prefer resampled volume sections (finer along the normal) for the 3D description.
        pool = [s for s in f.sections if s.slice is None and s.protrusion_area] or [s for s in f.sections if s.protrusion_area]
        depth, tops = -np.inf, None
        lateral, weights = [], []
        for s in pool:
            rows, cols = np.nonzero(s.protrusion)
            lateral.append(grid.U[cols].mean())
            weights.append(len(rows))
            posterior = -grid.V[rows].min()
            if posterior > depth:
                depth = posterior
                near = -grid.V[rows] >= posterior - 1.0  # ties of a flat top: their middle
                tops = s.world(rows[near], cols[near], grid).mean(axis=0)
        offsets = [s.offset for s in pool]
        step = _normal_step(f, pool[0].series)
        if step is None:  # one acquired slice: its thickness along the normal
            step = maps[pool[0].series].extent_along(f.disc.normal)
        x = float(np.average(lateral, weights=weights))
        height = float(max(offsets) - min(offsets) + step)
        volume = sum(s.protrusion_area for s in pool) * grid.px**2 * step
    direction = "central" if abs(x) < cfg.central_mm else "paracentral" if abs(x) < cfg.paracentral_mm else "foraminal"
    top = {"mm": _r(tops), **_pixel(maps, f, tops, grid)}
    out.update({
        "direction": direction,
        "side": "none" if direction == "central" else ("right" if x > 0 else "left"),
        "lateral_offset_mm": round(x, 2),
        "top_point": top,
        "height_mm": round(float(height), 2),
        "beyond_endplate_mm": evidence["contour_protrusion_mm"],
        "beyond_corner_line_mm": evidence["corner_line_mm"],
        "volume_mm3": round(float(volume), 1),
    })
    out["slices_herniated"] = sum(1 for s in f.sections if s.slice is not None and _section_herniated(s, out, f, grid, cfg))
    return out


def _pixel(maps: list[LabelMap], f: LevelFindings, point: np.ndarray, grid: Grid) -> dict:
    """Where a point is in the source images: the acquired axial slice nearest to it when the
    disc has one (slice index, pixel (i, j)), else the voxel of the series it was found in."""
    acquired = [s for s in f.sections if s.slice is not None]
    if acquired:
        s = min(acquired, key=lambda s: abs(float((point - s.point) @ s.normal)))
    else:
        s = next(s for s in f.sections)
    m = maps[s.series]
    ijk = m.voxel_index(point[None])[0][0].tolist()
    out = {"series": s.series, "voxel": ijk}
    if s.slice is not None:
        out.update(slice=s.slice, pixel=ijk[:2])
    return out


def _centre_section(f: LevelFindings) -> Section | None:
    """Where the level's dural sac is measured: the acquired slice nearest the disc centre
    (the clinical measurement), else the resampled plane through it."""
    for pool in ([s for s in f.sections if s.slice is not None], f.sections):
        if pool:
            return min(pool, key=lambda s: abs(s.offset))
    return None


def _disagreement(plane_classes: dict[str, np.ndarray], region: np.ndarray | None = None) -> float | None:
    value = disagreement.class_rate(plane_classes, region)
    return None if value is None else round(value, 4)


def _box(mask: np.ndarray, pad: int = 2) -> np.ndarray:
    box = np.zeros_like(mask)
    sl = ndimage.find_objects(mask.astype(np.uint8))[0]
    box[tuple(slice(max(s.start - pad, 0), s.stop + pad) for s in sl)] = True
    return box


def _r(x: np.ndarray) -> list[float]:
    return [round(float(v), 2) for v in x]


def level_summary(level: dict) -> str:
    """One line a radiologist can read."""
    name = level["level"] or "unnamed disc"
    parts = [f"disc {level['disc_volume_mm3'] / 1000:.1f} cm³"]
    sac = level["dural_sac"]
    if sac:
        confidence = level.get("stenosis_confidence") or {}
        low = f" (low confidence: {'; '.join(confidence['reasons'])})" if confidence.get("confidence") == "low" else ""
        parts.append(f"dural sac {sac['area_mm2']:.0f} mm² (AP {sac['ap_diameter_mm']:.1f} mm): "
                     + ("no central stenosis" if level["stenosis"] == "none" else f"{level['stenosis']} central stenosis")
                     + low)
    h = level["herniation"]
    low = f" (low confidence: {'; '.join(h['confidence_reasons'])})" if h.get("confidence") == "low" else ""
    if h["present"]:
        where = h["direction"] + ("" if h["side"] == "none" else f" {h['side']}")
        if h.get("decided_by") == ["corner line"]:
            how = f"{h['beyond_corner_line_mm']:.1f} mm behind the vertebral corner line"
        else:
            how = f"{h['beyond_endplate_mm']:.1f} mm past the endplate margin"
        parts.append(f"{where} herniation, {h['height_mm']:.1f} mm high, {how}{low}")
    else:
        parts.append("no herniation" + low)
    return f"{name}: " + "; ".join(parts)


def _sac_component_share(findings: Findings, sec: Section, components: dict) -> float | None:
    """The share of the series' largest 3D dural sac component that the component measured at
    ``sec`` holds (1.0: the main sac; a small share: a fragment). ``components`` caches the
    labelling per series."""
    m = findings.maps[sec.series]
    if sec.series not in components:
        labels, count = ndimage.label(m.classes == SAC)
        components[sec.series] = (labels, np.bincount(labels.ravel()) if count else np.zeros(1, np.int64))
    labels, sizes = components[sec.series]
    if len(sizes) < 2 or sec.sac is None:
        return None
    rows, cols = np.nonzero(sec.sac)
    ijk, inside = m.voxel_index(sec.world(rows, cols, findings.grid))
    ids = labels[tuple(ijk[inside].T)]
    ids = ids[ids > 0]
    if not len(ids):
        return None
    return float(sizes[np.bincount(ids).argmax()] / sizes[1:].max())


def _stenosis_confidence(findings: Findings, level: dict, sec: Section | None, levels: list[dict], n: int,
                         components: dict, cfg: FindingsConfig) -> dict | None:
    """``confidence`` (``high``/``low``), the ``reasons`` for a low one and the ``evidence``
    behind the stenosis grade of a level (None without a dural sac measurement). A grade other
    than ``none`` measured on a sac fragment, a sac cut by the field of view, a sac in pieces or
    a sac far smaller than the neighbouring levels' is low confidence, as is any grade where the
    plane networks disagree much."""
    sac = level["dural_sac"]
    if sac is None or sec is None:
        return None
    c = cfg.confidence
    share = _sac_component_share(findings, sec, components)
    neighbours = [levels[k]["dural_sac"]["area_mm2"] for k in (n - 1, n + 1)
                  if 0 <= k < len(levels) and levels[k]["dural_sac"]]
    ratio = sac["area_mm2"] / float(np.median(neighbours)) if neighbours else None
    evidence = {"area_mm2": sac["area_mm2"], "sac_component_share": None if share is None else round(share, 3),
                "section_piece_share": round(sec.sac_share, 3), "cut_by_field_of_view": sec.sac_cut,
                "neighbour_area_ratio": None if ratio is None else round(ratio, 3),
                "plane_disagreement": level["plane_disagreement"]}
    reasons = []
    if level["stenosis"] != cfg.stenosis.above_all:  # an area under-measured can only make a grade too severe
        if share is not None and share < c.sac_fragment_share:
            reasons.append("sac fragment")
        if sec.sac_cut:
            reasons.append("sac cut by the field of view")
        if sec.sac_share < c.sac_piece_share:
            reasons.append("sac in pieces")
        if ratio is not None and ratio < c.sac_neighbour_ratio:
            reasons.append(f"sac area {ratio:.2f} of the neighbouring levels'")
    if level["plane_disagreement"] is not None and level["plane_disagreement"] > c.plane_disagreement:
        reasons.append(f"plane disagreement {level['plane_disagreement']:.2f}")
    return {"confidence": "low" if reasons else "high", "reasons": reasons, "evidence": evidence}


def findings_report(findings: Findings, config: FindingsConfig | None = None) -> dict:
    """The JSON-ready report of :func:`measure`'s findings (without study metadata)."""
    cfg = config or load_config()
    levels_out: list[dict] = []
    centres: list[Section | None] = []
    components: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for f in findings.discs:
        d = f.disc
        centre = _centre_section(f)
        sac = None
        if centre is not None and centre.sac_area > 0:
            sac = {"area_mm2": round(centre.sac_area, 1), "ap_diameter_mm": round(centre.ap, 2),
                   "ap_line_mm": [_r(p) for p in centre.ap_line] if centre.ap_line else None,
                   "series": centre.series, "slice": centre.slice, "offset_mm": round(centre.offset, 2)}
        naming_map = findings.maps[findings.naming_series] if findings.naming_series is not None else None
        disagreement = None
        if naming_map is not None and naming_map.plane_classes:
            disagreement = _disagreement(naming_map.plane_classes, _box(d.instance.mask))
        herniation = _herniation(f, findings.maps, findings.grid, cfg, disagreement)
        level = {
            "level": d.instance.name,
            "centre_mm": _r(d.centre), "normal": [round(float(x), 4) for x in d.normal],
            "disc_volume_mm3": round(d.instance.volume_mm3, 1), "disc_height_mm": round(d.height, 2),
            "dural_sac": sac,
            "stenosis": stenosis_grade(sac["area_mm2"], cfg) if sac else None,
            "herniation": herniation,
            "plane_disagreement": disagreement,
            "slices": [{
                "series": s.series, "slice": s.slice, "offset_mm": round(s.offset, 2),
                "point_mm": _r(s.point), "normal": [round(float(x), 4) for x in s.normal],
                "dural_sac_area_mm2": round(s.sac_area, 1), "ap_diameter_mm": round(s.ap, 2),
                "herniated": _section_herniated(s, herniation, f, findings.grid, cfg.herniation),
                "protrusion_area_mm2": round(s.protrusion_area * findings.grid.px**2, 1),
            } for s in sorted(f.sections, key=lambda s: (s.series, s.offset))],
        }
        levels_out.append(level)
        centres.append(centre)
    for n, (f, level, centre) in enumerate(zip(findings.discs, levels_out, centres)):
        level["stenosis_confidence"] = _stenosis_confidence(findings, level, centre, levels_out, n, components, cfg)
        level["summary"] = level_summary(level)
    lv = findings.levels
    naming = None
    if lv is not None:
        naming = {"anchor": lv.anchor, "confidence": lv.confidence, "notes": list(lv.notes),
                  "evidence": dict(lv.evidence), "series": findings.naming_series}
    whole = None
    named = [m for m in findings.maps if m.plane_classes]
    if named:
        whole = _disagreement(max(named, key=lambda m: m.classes.size).plane_classes)
    return {
        "naming": naming,
        "plane_disagreement": whole,
        "levels": levels_out,
        "vertebrae": [{"name": b.name, "centre_mm": _r(b.centroid_mm), "volume_mm3": round(b.volume_mm3, 1)}
                      for b in (lv.bodies if lv else [])],
        "summary": "\n".join(level["summary"] for level in reversed(levels_out)) or "no discs found",
    }


def _problems_of(maps: Sequence[LabelMap], shapes: Sequence[tuple[int, ...]]) -> list[str]:
    """What makes label maps unusable: a grid that is not its image's, values that are not classes."""
    problems = []
    for i, (m, shape) in enumerate(zip(maps, shapes)):
        name = f"series {i}" + (f" ({m.description})" if m.description else "")
        if m.classes is None:
            continue
        if m.classes.shape != tuple(shape):
            problems.append(f"{name}: mask shape {tuple(m.classes.shape)} does not match the image grid {tuple(shape)}")
        elif m.classes.size and not np.isin(np.unique(m.classes), [*range(tissues.NUM_TISSUES), UNKNOWN]).all():
            bad = sorted(set(np.unique(m.classes).tolist()) - {*range(tissues.NUM_TISSUES), UNKNOWN})
            problems.append(f"{name}: mask values {bad[:5]} are not tissue classes (0..{tissues.NUM_TISSUES - 1})")
    return problems


def study_report(study: Study, classes: Sequence[np.ndarray | None] | None = None, *,
                 plane_classes: Sequence[dict[str, np.ndarray] | None] | None = None,
                 source: str = "truth", config: FindingsConfig | None = None) -> dict:
    """The findings report of a study (schema :data:`SCHEMA`); see :func:`study_findings`."""
    return study_findings(study, classes, plane_classes=plane_classes, source=source, config=config)[0]


def study_findings(study: Study, classes: Sequence[np.ndarray | None] | None = None, *,
                   plane_classes: Sequence[dict[str, np.ndarray] | None] | None = None,
                   source: str = "truth", config: FindingsConfig | None = None) -> tuple[dict, Findings | None]:
    """The findings report of a study (schema :data:`SCHEMA`) and the :class:`Findings` behind
    it (None when nothing could be measured).

    ``classes``: one tissue-class map per ``study.series`` on that series' grid (a prediction),
    or None to use the study's own label maps (ground truth, read through ``study.structures``).
    Never raises on bad masks: ``status`` is ``"ok"``, ``"no_findings"`` (nothing to measure)
    or ``"error"`` (unusable input), and ``problems`` says why.
    """
    report = {"schema": SCHEMA, "subject": study.subject, "set": study.set, "source": source,
              "status": "ok", "problems": [], "series": [], "naming": None, "plane_disagreement": None,
              "levels": [], "vertebrae": [], "summary": ""}
    series = list(study.series)
    report["series"] = [{"index": i, "description": s.description, "shape": list(s.shape),
                         "spacing_mm": _r(s.spacing), "axcodes": "".join(s.axcodes)} for i, s in enumerate(series)]
    if classes is None:
        from lumbarseg.datasets import tissue_target

        classes = [None if s.label is None else tissue_target(s.label, study.structures) for s in series]
    classes = list(classes)
    if len(classes) != len(series):
        return _failed(report, "error", [f"{len(classes)} masks for {len(series)} series"]), None
    planes = list(plane_classes) if plane_classes is not None else [None] * len(series)
    maps = [LabelMap(None if c is None else np.asarray(c), s.affine, s.description, p)
            for c, s, p in zip(classes, series, planes)]
    problems = _problems_of(maps, [s.shape for s in series])
    if problems:
        return _failed(report, "error", problems), None
    missing = [f"series {i} has no mask: not measured" for i, m in enumerate(maps) if m.classes is None]
    for m, s in zip(maps, series):
        if m.classes is None:  # kept (as not annotated) so that series indices stay the study's
            m.classes = np.full(s.shape, UNKNOWN, np.uint8)
    if not any(((m.classes != 0) & (m.classes != UNKNOWN)).any() for m in maps):
        return _failed(report, "no_findings", missing + ["the mask is empty: no tissue to measure"]), None
    findings = measure(maps, config)
    report.update(findings_report(findings, config))
    report["problems"] = missing + findings.problems
    if not findings.discs:
        report["status"] = "no_findings"
        report["summary"] = "; ".join(findings.problems)
    return report, findings


def _failed(report: dict, status: str, problems: list[str]) -> dict:
    report.update(status=status, problems=problems, summary="; ".join(problems))
    return report
