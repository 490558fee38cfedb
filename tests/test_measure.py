"""Findings from label maps: dural sac size in patient space, herniation, stenosis, the report."""

from __future__ import annotations

import json

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
    assert found["evidence"] == "hernia class"
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


def test_disc_contour_finds_a_hernia_segmented_as_disc(herniated):
    """A model that paints the hernia as disc: the disc reaching past the endplates gives it away."""
    study, _ = herniated
    classes = tissue_target(study.primary.label, study.structures)
    classes[classes == measure.HERNIA] = measure.DISC
    report = measure.study_report(study, [classes], source="model")
    levels = by_level(report)
    assert [lv for lv, f in levels.items() if f["herniation"]["present"]] == ["L4-L5"]
    assert levels["L4-L5"]["herniation"]["evidence"] == "disc contour"


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
