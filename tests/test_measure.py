"""Findings from label maps: dural sac size in patient space, herniation, stenosis, the report."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from lumbarseg import measure, phantom, tissues
from lumbarseg.datasets import tissue_target
from lumbarseg.io.study import Series, Study

SMALL = {"spacing": (2.0, 1.2, 1.2), "extra_discs": 0}


@pytest.fixture(scope="module")
def herniated():
    """One central-or-not hernia at L4-L5, severe stenosis at L2-L3, nothing else."""
    study = phantom.generate(501, hernia_levels=("L4-L5",), stenosis={"L2-L3": "severe"}, **SMALL)
    return study, measure.study_report(study)


def by_level(report: dict) -> dict[str, dict]:
    return {lv["level"]: lv for lv in report["levels"]}


def truth_of(study: Study) -> dict[str, dict]:
    return {d["level"]: d for d in study.primary.meta["truth"]["discs"]}


def test_report_names_levels_and_finds_the_one_hernia(herniated):
    study, report = herniated
    assert report["status"] == "ok" and report["schema"] == measure.SCHEMA
    levels = by_level(report)
    assert set(levels) == set(tissues.DISC_LEVELS)
    assert [lv for lv, f in levels.items() if f["herniation"]["present"]] == ["L4-L5"]
    found, truth = levels["L4-L5"]["herniation"], truth_of(study)["L4-L5"]["hernia"]
    assert found["decided_by"] == ["hernia class"] and found["evidence"]["hernia_class_mm3"] > 20
    assert (found["direction"], found["side"]) == (truth["direction"], truth["side"])
    assert np.linalg.norm(np.subtract(found["top_point"]["mm"], truth["top_point_mm"])) < 3.0
    assert abs(found["height_mm"] - truth["height_mm"]) < 2.5
    assert json.loads(json.dumps(report)) == report  # plain JSON


def test_dural_sac_area_and_stenosis_grade_match_truth(herniated):
    study, report = herniated
    truth = truth_of(study)
    for level, found in by_level(report).items():
        area = truth[level]["stenosis"]["dural_sac_area_mm2"]
        assert found["dural_sac"]["area_mm2"] == pytest.approx(area, rel=0.08), level
        assert found["dural_sac"]["ap_diameter_mm"] == pytest.approx(truth[level]["stenosis"]["ap_diameter_mm"], abs=2.0)
    assert by_level(report)["L2-L3"]["stenosis"] == "severe"
    assert "severe central stenosis" in by_level(report)["L2-L3"]["summary"]


def test_the_corner_line_finds_a_hernia_segmented_as_disc(herniated):
    """A model that paints the hernia as disc: the disc reaching behind the line joining the
    vertebral bodies' posterior corners gives it away; the contour rule's value is kept as evidence."""
    study, _ = herniated
    classes = tissue_target(study.primary.label, study.structures)
    classes[classes == measure.HERNIA] = measure.DISC
    report = measure.study_report(study, [classes], source="model")
    levels = by_level(report)
    assert [lv for lv, f in levels.items() if f["herniation"]["present"]] == ["L4-L5"]
    h = levels["L4-L5"]["herniation"]
    assert h["decided_by"] == ["corner line"] and h["evidence"]["hernia_class_mm3"] == 0
    assert h["evidence"]["corner_line_mm"] >= 4.0 and h["evidence"]["contour_protrusion_mm"] > 2.0


def _stack(labels_at, centre, axes, pixel, thickness, n=5, size=110.0) -> Series:
    """An axial stack of ``n`` slices centred on ``centre`` with in-plane unit ``axes[0:2]`` and
    slice normal ``axes[2]``; labels from ``labels_at(points)``."""
    count = int(size / pixel)
    affine = np.eye(4)
    affine[:3, :3] = np.stack([axes[0] * pixel, axes[1] * pixel, axes[2] * thickness], axis=1)
    affine[:3, 3] = centre - affine[:3, :3] @ np.array([(count - 1) / 2, (count - 1) / 2, (n - 1) / 2])
    ijk = np.stack(np.meshgrid(np.arange(count), np.arange(count), np.arange(n), indexing="ij"), -1).reshape(-1, 3)
    label = labels_at(ijk @ affine[:3, :3].T + affine[:3, 3]).reshape(count, count, n)
    return Series(np.zeros((1, count, count, n), np.float32), affine, ("t2w",), "ax", label)


def test_angulated_axial_stack_measures_like_an_axis_aligned_one():
    """The same anatomy imaged by an angulated stack parallel to a tilted disc, and, rotated so
    the disc is level, by an axis-aligned stack with other pixels: the same dural sac area."""
    ph = phantom.Phantom(phantom.PhantomSpec.sample(502, lordosis_deg=50.0, scoliosis_deg=8.0, hernia_levels=(), stenosis={}))
    i = ph.level_names.index("L5-S1")
    centre, tangent, ant, right = (v[0] for v in ph.frame(np.array([sum(ph.discs[i]) / 2])))
    assert np.degrees(np.arccos(tangent[2])) > 15  # really angulated
    structures = {v: tissues.STUDY_LABELS[v] for v in tissues.STUDY_LABELS}
    # Angulated: rows 30 degrees off the anterior axis, 0.8 mm pixels.
    turn = np.deg2rad(30)
    a = np.cos(turn) * -right + np.sin(turn) * -ant
    b = np.cross(tangent, a)
    angulated = _stack(ph.labels_at, centre, (a, b, tangent), 0.8, 4.0)
    # Axis-aligned: the anatomy rotated about the disc centre so the disc is level; 0.55 mm pixels.
    rot = np.stack([right, ant, tangent])  # takes the disc's (right, anterior, superior) to (x, y, z)
    aligned = _stack(lambda p: ph.labels_at((p - centre) @ rot + centre), centre, tuple(np.eye(3)), 0.55, 4.0)
    assert np.allclose(aligned.affine[:3, :3], np.diag([0.55, 0.55, 4.0]))
    areas = []
    for series in (angulated, aligned):
        report = measure.study_report(Study([series], structures))
        (level,) = report["levels"]
        assert level["dural_sac"]["slice"] == 2  # measured on the acquired slice through the disc
        areas.append(level["dural_sac"]["area_mm2"])
    truth = next(d for d in ph.truth()["discs"] if d["level"] == "L5-S1")["stenosis"]["dural_sac_area_mm2"]
    assert areas[0] == pytest.approx(areas[1], rel=0.05)
    assert areas[0] == pytest.approx(truth, rel=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("part", ["sagittal only", "axial only", "sagittal + axial"])
def test_clinical_layouts_name_levels_and_measure(part):
    study = phantom.clinical_study(503, hernia_levels=("L3-L4",))
    series = {"sagittal only": study.series[:1], "axial only": study.series[1:], "sagittal + axial": study.series}[part]
    report = measure.study_report(Study(series, study.structures))
    truth = study.series[0].meta["truth"]["discs"]
    names = {}
    for lv in report["levels"]:
        nearest = min(truth, key=lambda d: np.linalg.norm(np.subtract(d["center_mm"], lv["centre_mm"])))
        names[lv["level"]] = nearest["level"]
    assert names and all(found == true for found, true in names.items()), names
    hernias = [lv["level"] for lv in report["levels"] if lv["herniation"]["present"]]
    assert hernias == ["L3-L4"]
    if part != "sagittal only":  # acquired axial slices: the sac is measured there, the top point is a pixel of one
        lv = by_level(report)["L3-L4"]
        assert lv["dural_sac"]["slice"] is not None and "pixel" in lv["herniation"]["top_point"]


def test_plane_disagreement_is_reported_when_planes_are_given(herniated):
    study, _ = herniated
    classes = tissue_target(study.primary.label, study.structures)
    other = classes.copy()
    other[other == measure.DISC] = 0  # one plane misses every disc
    agree = measure.study_report(study, [classes], plane_classes=[{"sagittal": classes, "axial": classes}])
    differ = measure.study_report(study, [classes], plane_classes=[{"sagittal": classes, "axial": other}])
    assert agree["plane_disagreement"] == 0 and by_level(agree)["L3-L4"]["plane_disagreement"] == 0
    assert differ["plane_disagreement"] > 0 and by_level(differ)["L3-L4"]["plane_disagreement"] > 0.2


@pytest.mark.parametrize("width_mm, fused", [(20.0, ("sagittal",)), (60.0, ("sagittal", "coronal", "axial"))])
def test_the_fusion_reads_only_planes_that_see_anatomy(width_mm, fused):
    """On a sagittal slab narrower than planes.MIN_SLAB_MM the axial and coronal networks see no
    anatomy and the fusion ignores them: the segmentation says so (fused_planes)."""
    from lumbarseg import planes
    from lumbarseg.pipeline import segment_series

    k = tissues.NUM_TISSUES
    series = Series(np.zeros((1, int(width_mm / 2), 40, 40), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]), ("t2w",), "vol")

    def predict(image):
        background = np.zeros((k, *image.shape[1:]), np.float32)
        background[0] = 1
        return {p: background for p in planes.PLANES}, background

    segmentation = segment_series(series, 2.0, predict)
    assert segmentation.fused_planes == fused and tuple(segmentation.fused_plane_classes) == fused


def test_a_level_has_no_plane_disagreement_from_planes_the_fusion_ignored(herniated):
    """A finding's plane disagreement compares the planes the fusion read: on a slab (the
    sagittal plane alone) there is none to report, rather than a disagreement with blind planes."""
    from lumbarseg.analysis import analyse
    from lumbarseg.pipeline import Segmentation

    study, _ = herniated
    classes = tissue_target(study.primary.label, study.structures)
    blind = classes.copy()
    blind[blind == measure.DISC] = 0

    def report(fused_planes):
        segmentation = Segmentation(classes, {"sagittal": classes, "axial": blind}, {}, np.zeros(0), fused_planes)
        return analyse(study, lambda series: segmentation).report

    slab, whole = report(("sagittal",)), report(("sagittal", "axial"))
    assert slab["plane_disagreement"] is None and by_level(slab)["L3-L4"]["plane_disagreement"] is None
    assert "plane disagreement" not in " ".join(by_level(slab)["L3-L4"]["herniation"]["confidence_reasons"])
    assert by_level(whole)["L3-L4"]["plane_disagreement"] > 0.2
    assert "plane disagreement" in " ".join(by_level(whole)["L3-L4"]["herniation"]["confidence_reasons"])


def _tiny_study(label: np.ndarray | None) -> Study:
    series = Series(np.zeros((1, 20, 20, 20), np.float32), np.eye(4), ("t2w",), "vol", label)
    return Study([series], {1: "dural_sac", 9: "disc"}, subject="bad")


@pytest.mark.parametrize("masks, status, words", [
    ([np.zeros((20, 20, 20), np.uint8)], "no_findings", "mask is empty"),
    ([np.zeros((20, 20, 19), np.uint8)], "error", "does not match the image grid"),
    ([np.full((20, 20, 20), 40, np.uint8)], "error", "not tissue classes"),
    ([np.zeros((20, 20, 20), np.uint8)] * 2, "error", "2 masks for 1 series"),
    ([None], "no_findings", "has no mask"),
])
def test_bad_masks_give_a_report_that_says_so(masks, status, words):
    report = measure.study_report(_tiny_study(None), masks)
    assert report["status"] == status and words in " ".join(report["problems"]) and report["levels"] == []


def test_a_mask_without_discs_says_so():
    label = np.zeros((20, 20, 20), np.uint8)
    label[5:15, 5:15, :] = 1  # dural sac only
    report = measure.study_report(_tiny_study(label))
    assert report["status"] == "no_findings" and "no intervertebral disc" in report["summary"]


def test_stenosis_grades_follow_the_cited_thresholds():
    assert "Schonstrom" in json.loads(measure.CONFIG.read_text())["stenosis"]["about"]  # the loader drops "about"
    assert [measure.stenosis_grade(a) for a in (30, 60, 90, 150)] == ["severe", "moderate", "mild", "none"]
    assert phantom.stenosis_grade is measure.stenosis_grade  # one implementation


def test_extra_discs_in_the_mask_stay_unnamed_above_t11():
    """A segmentation that also finds the thoracic discs above T11-T12 (which phantom truth
    leaves unlabelled): the sacrum anchors the names and the extra discs get none."""
    model = phantom.Phantom(phantom.PhantomSpec.sample(504, extra_discs=2, spacing=(3.0, 2.0, 2.0)))
    grid = model.volume_affine()
    shape = model.stored_shape()
    ijk = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1).reshape(-1, 3)
    label, look = model.evaluate(ijk @ grid[:3, :3].T + grid[:3, 3])
    structures = {v: tissues.STUDY_LABELS[v] for v in tissues.STUDY_LABELS}
    classes = tissue_target(label, structures)
    classes[(label == 0) & np.isin(look, (phantom.NUCLEUS, phantom.ANNULUS))] = measure.DISC
    series = Series(np.zeros((1, *shape), np.float32), grid, ("t2w",), "vol", label.reshape(shape))
    report = measure.study_report(Study([series], structures), [classes.reshape(shape)], source="model")
    truth = {d["level"]: d["center_mm"] for d in model.truth()["discs"]}
    named = [lv for lv in report["levels"] if lv["level"]]
    assert len(report["levels"]) == 9 and len(named) == 7
    for lv in named:
        assert np.linalg.norm(np.subtract(lv["centre_mm"], truth[lv["level"]])) < 5.0
    assert report["naming"]["anchor"] == "sacrum"


# --- the posterior-corner-line rule and confidence, on a synthetic motion segment -----------------

def _segment(bulge: str = "none", depth: float = 0.0, sac: str = "whole") -> Study:
    """A straight motion segment on a 1 mm grid (identity axes: x right, y anterior, z superior):
    vertebral bodies above and below a 10 mm disc, all 40 mm wide and 30 mm deep with their
    posterior walls in line at y = -15, and a dural sac behind them. ``bulge``: the disc's back
    reaching ``depth`` mm behind the corner line ``"broad"``ly (across its whole width and
    height, a bulge) or ``"focal"``ly (3 mm wide at the midline, a herniation). ``sac``:
    ``"whole"``, or ``"fragment"``: at the disc only a small piece cut off from the rest."""
    shape = (70, 90, 90)
    affine = np.eye(4)
    affine[:3, 3] = [-35.0, -55.0, -45.0]
    x, y, z = (np.arange(n) + o for n, o in zip(shape, affine[:3, 3]))
    X, Y, Z = np.meshgrid(x, y, z, indexing="ij")
    label = np.zeros(shape, np.uint8)
    wide, deep = np.abs(X) <= 20, (Y >= -15) & (Y <= 15)
    label[wide & deep & (Z > 5) & (Z <= 35)] = 2  # body above
    label[wide & deep & (Z < -5) & (Z >= -35)] = 2  # body below
    label[wide & deep & (np.abs(Z) <= 5)] = 1  # disc
    if bulge == "broad":
        label[wide & (Y < -15) & (Y >= -15 - depth) & (np.abs(Z) <= 5)] = 1
    elif bulge == "focal":
        label[(np.abs(X) <= 1) & (Y < -15) & (Y >= -15 - depth) & (np.abs(Z) <= 4)] = 1
    canal = (np.abs(X) <= 8) & (Y >= -30) & (Y <= -15 - max(depth, 0) - 1)
    if sac == "whole":
        label[canal] = 3
    else:
        label[canal & (np.abs(Z) > 9)] = 3
        # 7 x 6 x 13 mm: above post-processing's smallest dural sac (500 mm^3), under 50 mm^2 at the disc
        label[(np.abs(X) <= 3) & (Y >= -27) & (Y <= -22) & (np.abs(Z) <= 6)] = 3
    series = Series(np.zeros((1, *shape), np.float32), affine, ("t2w",), "vol", label)
    return Study([series], {1: "disc", 2: "vertebral_body", 3: "dural_sac"}, subject="segment")


def test_a_focal_reach_behind_the_corner_line_is_a_herniation_a_broad_one_a_bulge():
    cfg = measure.load_config().herniation.corner_line
    depth = cfg.herniated_mm + 1.0  # deep enough, focal enough on a narrow bump, shallower than a broad-based herniation
    assert depth - 0.5 >= cfg.focal_mm and (cfg.broad_mm is None or depth < cfg.broad_mm)
    (focal,) = measure.study_report(_segment("focal", depth))["levels"]
    (broad,) = measure.study_report(_segment("broad", depth))["levels"]
    (flat,) = measure.study_report(_segment())["levels"]
    for level, reach in ((focal, depth), (broad, depth), (flat, 0.0)):
        e = level["herniation"]["evidence"]
        assert e["corner_line_basis"] == "two corners" and e["corner_line_planes"] >= cfg.min_planes
        assert e["corner_line_mm"] == pytest.approx(reach, abs=1.01)
        assert e["hernia_class_mm3"] == 0
    assert focal["herniation"]["present"] and focal["herniation"]["decided_by"] == ["corner line"]
    assert focal["herniation"]["direction"] == "central"
    assert abs(focal["herniation"]["evidence"]["corner_line_offset_mm"]) <= 1
    assert "behind the vertebral corner line" in focal["summary"]
    assert not broad["herniation"]["present"]  # as deep, but everywhere: a bulge
    assert broad["herniation"]["evidence"]["corner_line_median_mm"] == pytest.approx(depth, abs=1.01)
    assert not flat["herniation"]["present"] and flat["herniation"]["confidence"] == "high"
    # the same decision from the evidence alone (what scripts/tune_herniation.py sweeps)
    h = measure.load_config().herniation
    assert measure.herniation_decision(focal["herniation"]["evidence"], h) == (True, ["corner line"])
    assert measure.herniation_decision(broad["herniation"]["evidence"], h) == (False, [])


def test_a_seam_of_hernia_class_is_not_a_herniation_a_lump_is():
    """What a network draws along the dural sac's front, a one-voxel seam of hernia class behind
    the disc, is removed with the other thin and small pieces before measuring; a lump of hernia
    class as thick as a real herniation decides by itself."""
    study = _segment()
    series = study.primary
    x, y, z = (np.arange(n) + o for n, o in zip(series.shape, series.affine[:3, 3]))
    X, Y, Z = np.meshgrid(x, y, z, indexing="ij")
    seam, lump = series.label.copy(), series.label.copy()
    seam[(np.abs(X) <= 8) & (Y == -16) & (np.abs(Z) <= 4)] = 4  # 153 mm^3, 1 mm thick
    lump[(X**2 + (Y + 19) ** 2 + Z**2) <= 3.5**2] = 4  # a 7 mm ball in the canal, against the disc
    structures = {**study.structures, 4: "hernia"}
    (thin,) = measure.study_report(Study([replace(series, label=seam)], structures))["levels"]
    (thick,) = measure.study_report(Study([replace(series, label=lump)], structures))["levels"]
    assert thin["herniation"]["evidence"]["hernia_class_mm3"] == 0 and not thin["herniation"]["present"]
    assert thick["herniation"]["present"] and thick["herniation"]["decided_by"] == ["hernia class"]
    assert thick["herniation"]["evidence"]["hernia_class_mm3"] > 100


def test_hernia_class_on_the_discs_own_rim_is_not_a_herniation():
    """A network's hernia class drawn over a healthy disc's posterior rim stays inside the disc
    space: however much of it there is, it does not reach hernia_class_reach_mm beyond the
    endplates' cross-section, so the hernia-class rule does not call it."""
    cfg = measure.load_config().herniation
    study = _segment()
    series = study.primary
    x, y, z = (np.arange(n) + o for n, o in zip(series.shape, series.affine[:3, 3]))
    X, Y, Z = np.meshgrid(x, y, z, indexing="ij")
    rim = series.label.copy()
    rim[(np.abs(X) <= 6) & (Y >= -15) & (Y <= -11) & (np.abs(Z) <= 4)] = 4  # 13 x 5 x 9 mm of the disc's back
    (level,) = measure.study_report(Study([replace(series, label=rim)], {**study.structures, 4: "hernia"}))["levels"]
    e = level["herniation"]["evidence"]
    assert e["hernia_class_mm3"] >= 10 * cfg.hernia_class_mm3
    assert e["hernia_class_reach_mm"] < cfg.hernia_class_reach_mm
    assert not level["herniation"]["present"]
    assert measure.herniation_decision({**e, "hernia_class_reach_mm": cfg.hernia_class_reach_mm}, cfg) == (True, ["hernia class"])


def _top_cut(study: Study, top_mm: float) -> Study:
    """``study`` (of :func:`_segment`) with its field of view ending ``top_mm`` above the disc
    centre, as long as before (background added below, so it is no axial stack)."""
    series = study.primary
    kept = series.label[:, :, : int(top_mm - series.affine[2, 3]) + 1]
    added = series.label.shape[2] - kept.shape[2]
    label = np.concatenate([np.zeros((*kept.shape[:2], added), np.uint8), kept], axis=2)
    return Study([Series(np.zeros((1, *label.shape), np.float32), series.affine @ _shift(0, 0, -added), ("t2w",), "vol",
                         label)], study.structures)


def test_the_corner_line_is_measured_where_the_field_of_view_ends_away_from_the_disc():
    """The top disc of a study: the field of view ends inside the body above, where the corner
    line's search reaches past it. Where the edge is
    far from the disc and the corners, the corner line is measured; where it cuts into the disc's
    neighbourhood, the disc is not assessed (no disc-contour call on a cut disc)."""
    c = measure.load_config().herniation.corner_line
    depth = c.herniated_mm + 1.0
    (far,) = measure.study_report(_top_cut(_segment("focal", depth), 16.0))["levels"]
    assert far["herniation"]["evidence"]["corner_line_planes"] >= c.min_planes
    assert not far["herniation"]["evidence"]["corner_line_at_edge"]
    assert far["herniation"]["present"] and far["herniation"]["decided_by"] == ["corner line"]
    (near,) = measure.study_report(_top_cut(_segment("focal", depth), 8.0))["levels"]
    e = near["herniation"]["evidence"]
    assert e["corner_line_at_edge"] and e["corner_line_planes"] == 0
    assert not near["herniation"]["present"] and near["herniation"]["confidence"] == "low"
    assert "the disc reaches the edge of the field of view: not assessed" in near["herniation"]["confidence_reasons"]


def test_a_reach_just_under_the_threshold_is_absent_with_low_confidence():
    cfg = measure.load_config()
    t = cfg.herniation.corner_line.herniated_mm
    (level,) = measure.study_report(_segment())["levels"]
    profile = level["herniation"]["evidence"]["corner_line_profile"]

    def reaching(mm: float) -> dict:  # the mid-sagittal plane alone reaching ``mm`` behind the line
        return {**level["herniation"]["evidence"], "corner_line_profile": [[o, mm if o == 0 else 0.0] for o, _ in profile]}

    assert measure.herniation_decision(reaching(t - 0.5), cfg.herniation) == (False, [])
    assert measure.herniation_confidence(reaching(t - 0.5), False, [], cfg) == ["corner line near the threshold"]
    assert measure.herniation_confidence(reaching(t - 3.0), False, [], cfg) == []
    assert measure.herniation_decision(reaching(t + 3.0), cfg.herniation) == (True, ["corner line"])
    level["herniation"].update(present=False, confidence="low", confidence_reasons=["corner line near the threshold"])
    assert "no herniation (low confidence: corner line near the threshold)" in measure.level_summary(level)


def test_a_severe_stenosis_measured_on_a_sac_fragment_says_low_confidence():
    (whole,) = measure.study_report(_segment())["levels"]
    (piece,) = measure.study_report(_segment(sac="fragment"))["levels"]
    assert whole["stenosis"] == "none" and whole["stenosis_confidence"]["confidence"] == "high"
    assert whole["stenosis_confidence"]["evidence"]["sac_component_share"] == 1.0
    assert piece["stenosis"] == "severe"
    confidence = piece["stenosis_confidence"]
    assert confidence["confidence"] == "low" and "sac fragment" in confidence["reasons"]
    assert confidence["evidence"]["sac_component_share"] < 0.1
    assert "severe central stenosis (low confidence: sac fragment" in piece["summary"]


def test_a_sac_cut_by_the_field_of_view_is_low_confidence():
    study = _segment()
    series = study.primary
    label = series.label[28:42].copy()  # a 14 mm wide sagittal stack, narrower than the sac
    cut = Series(np.zeros((1, *label.shape), np.float32), series.affine @ _shift(28, 0, 0), ("t2w",), "vol", label)
    (level,) = measure.study_report(Study([cut], study.structures))["levels"]
    assert level["stenosis_confidence"]["evidence"]["cut_by_field_of_view"]
    if level["stenosis"] != "none":
        assert "sac cut by the field of view" in level["stenosis_confidence"]["reasons"]


def _shift(i: int, j: int, k: int) -> np.ndarray:
    out = np.eye(4)
    out[:3, 3] = [i, j, k]
    return out


def test_a_single_slice_study_is_a_report_not_an_exception():
    study = _segment("focal", 6.0)
    label = study.primary.label[35:36].copy()  # the mid-sagittal slice alone
    one = Series(np.zeros((1, *label.shape), np.float32), study.primary.affine @ _shift(35, 0, 0), ("t2w",), "vol", label)
    report = measure.study_report(Study([one], study.structures))
    assert report["status"] in ("ok", "no_findings", "error")
    assert report["status"] == "ok" or report["problems"]
    assert json.loads(json.dumps(report)) == report
