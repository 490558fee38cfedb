"""Phantoms carry the ground truth they claim."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from lumbarseg import phantom, tissues
from lumbarseg.io import manifest

V = tissues.STUDY_VALUES
SMALL = {"spacing": (2.0, 1.6, 1.6)}


@pytest.fixture(scope="module")
def study():
    return phantom.generate(11, extra_discs=2, hernia_levels=("L4-L5", "L2-L3"), modalities=("t2w", "t1w"),
                            stenosis={"L3-L4": "severe"}, **SMALL)


def _centre_z(series, value):
    ijk = np.argwhere(series.label == value)
    return series.world(ijk)[:, 2].mean()


def test_every_class_and_seven_named_discs_in_order(study):
    s = study.primary
    present = {tissues.STUDY_LABELS[v] for v in np.unique(s.label) if v}
    assert present >= {*tissues.DISC_LEVELS, *tissues.VERTEBRAE[:-1], "sacrum", "dural_sac", "hernia",
                       "articular_process", "ligamentum_flavum", "spinous_process"}
    classes = {tissues.tissue_of(n).name for n in present}
    assert classes == set(tissues.TISSUE_NAMES) - {"background"}
    disc_z = [_centre_z(s, V[lv]) for lv in reversed(tissues.DISC_LEVELS)]  # L5-S1 first
    assert np.all(np.diff(disc_z) > 0), "discs must go up from L5-S1 to T11-T12"
    body_z = [_centre_z(s, V[v]) for v in reversed(tissues.VERTEBRAE[:-1])]  # L5 first
    assert all(d < b < d2 for d, b, d2 in zip(disc_z, body_z, disc_z[1:]))  # bodies between discs
    sacrum_top = s.world(np.argwhere(s.label == V["sacrum"]))[:, 2].max()
    assert sacrum_top < disc_z[0]


def test_hernias_touch_their_disc_posteriorly_and_top_point_is_on_them(study):
    s = study.primary
    truth = {d["level"]: d for d in s.meta["truth"]["discs"]}
    hernia = s.label == V["hernia"]
    parts, count = ndimage.label(hernia)
    assert count == 2
    for level in ("L4-L5", "L2-L3"):
        h = truth[level]["hernia"]
        assert h["present"]
        top = np.array(h["top_point_mm"])
        voxels = np.argwhere(hernia)
        distances = np.linalg.norm(s.world(voxels) - top, axis=1)
        assert distances.min() < 1.5 * s.spacing.max()  # the top point is on the hernia
        own = parts == parts[tuple(voxels[distances.argmin()])]
        touching = ndimage.binary_dilation(own) & (s.label == V[level])
        assert touching.any(), f"{level} hernia must touch its disc"
        disc_y = s.world(np.argwhere(s.label == V[level]))[:, 1].mean()
        assert s.world(np.argwhere(own))[:, 1].mean() < disc_y  # posterior (lower y in RAS)
    for level in ("L5-S1", "L3-L4", "L1-L2"):
        assert not truth[level]["hernia"]["present"]


def test_extra_discs_are_visible_but_unlabelled(study):
    s = study.primary
    spec = phantom.PhantomSpec.sample(11, extra_discs=2, **SMALL)
    model = phantom.Phantom(spec)
    b, t = model.discs[-1]  # the top extra disc
    c, *_ = (v[0] for v in model.frame(np.array([(b + t) / 2])))
    label, look = model.evaluate(c[None])
    assert label[0] == 0 and look[0] in (phantom.NUCLEUS, phantom.ANNULUS)
    assert s.meta["truth"]["extra_discs"] == 2


def test_stenosis_truth_narrows_the_dural_sac(study):
    truth = {d["level"]: d["stenosis"] for d in study.primary.meta["truth"]["discs"]}
    assert truth["L3-L4"]["grade"] == "severe"
    normal = [t["dural_sac_area_mm2"] for lv, t in truth.items() if t["grade"] == "none"]
    assert normal and truth["L3-L4"]["dural_sac_area_mm2"] < 0.5 * min(normal)
    assert truth["L3-L4"]["ap_diameter_mm"] < 0.5 * max(t["ap_diameter_mm"] for t in truth.values())


def test_intensities_look_like_mri(study):
    s = study.primary
    t2, t1 = s.image[0], s.image[1]
    csf, body = s.label == V["dural_sac"], s.label == V["L3"]
    assert np.median(t2[csf]) > 1.5 * np.median(t2[body])  # fluid bright on T2
    assert np.median(t1[csf]) < 0.5 * np.median(t1[body])  # and dark on T1


def test_seed_reproduces_and_differs():
    a = phantom.generate(3, **SMALL).primary
    b = phantom.generate(3, **SMALL).primary
    c = phantom.generate(4, **SMALL).primary
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)


def test_hernia_probability_sets_how_many_discs_herniate_and_nothing_else():
    """Training presets draw phantoms with more hernias (PhantomDraw.hernia_probability); the
    default is what ``lumbarseg phantoms`` draws (the evaluation phantoms stay as they were)."""
    default = phantom.PhantomSpec.sample(5)
    assert phantom.PhantomSpec.sample(5, hernia_probability=0.35) == default
    every = phantom.PhantomSpec.sample(5, hernia_probability=1.0)
    assert [h.level for h in every.hernias] == list(tissues.DISC_LEVELS[2:])
    assert not phantom.PhantomSpec.sample(5, hernia_probability=0.0).hernias


def test_clinical_axial_stacks_are_parallel_to_their_discs_and_not_axis_aligned():
    study = phantom.clinical_study(5, lordosis_deg=45.0)
    sagittal, axials = study.series[0], study.series[1:]
    assert len(axials) == 7 and sagittal.spacing[2] > 3  # sparse sagittal slices
    truth = {d["level"]: d for d in sagittal.meta["truth"]["discs"]}
    tilted = 0
    for series in axials:
        level = series.description.removeprefix("ax_")
        normal = series.affine[:3, 2] / np.linalg.norm(series.affine[:3, 2])
        angle = np.degrees(np.arccos(min(1.0, abs(normal @ np.array(truth[level]["normal"])))))
        assert angle < 3, f"{level} stack tilted {angle:.1f} deg from its disc"
        tilted += np.degrees(np.arccos(abs(normal[2]))) > 5
        centre = series.world((np.array(series.shape) - 1) / 2)
        value = series.label[tuple(np.round(series.voxel(truth[level]["center_mm"])).astype(int))]
        assert tissues.STUDY_LABELS.get(int(value)) == level  # the disc centre is in its stack
        assert np.linalg.norm(centre - truth[level]["center_mm"]) < 40
    assert tilted >= 3  # lordosis tilts several axial stacks away from the scanner axes


def test_write_phantoms_writes_the_manifest_layout(tmp_path):
    manifest_path = phantom.write_phantoms(tmp_path, 2, seed=7, **SMALL)
    entries = manifest.read_manifest(tmp_path)
    assert manifest_path.name == "manifest.csv" and len(entries) == 2
    for entry in entries:
        study = manifest.load_entry(entry)
        assert study.set == "phantom" and len(study.primary.modalities) == len(entry.modalities)
        assert {"L5-S1", "T11-T12"} <= set(study.structures.values())
        truth = json.loads((tmp_path / f"{entry.subject}_truth.json").read_text())
        assert len(truth["discs"]) == 7
    again = tmp_path / "again"
    phantom.write_phantoms(again, 2, seed=7, **SMALL)
    assert (again / "manifest.csv").read_text() == (tmp_path / "manifest.csv").read_text()
