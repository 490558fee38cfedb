"""Spine-region inference (lumbarseg.pipeline: first pass, box, crop, paste) and the report on
the tissue's box (lumbarseg.analysis). Fast, CPU: the plane networks are stand-ins that call a
voxel tissue where the first input channel is bright, so the box the first pass finds is known;
the fusion is an untrained network of the real shape."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from lumbarseg import analysis, phantom, pipeline, planes, tissues
from lumbarseg.datasets import tissue_target
from lumbarseg.io.study import Series
from lumbarseg.networks.fusion import fusion_net
from lumbarseg.pipeline import CROPPED, MOSTLY_SPINE, NOTHING_FOUND, OFF, Region, RegionSettings, Segmentation

SPACING = 3.0  # a coarse model grid keeps every test cheap
K = tissues.NUM_TISSUES


class Bright(nn.Module):
    """A plane network stand-in: tissue (class 1) where input channel 0 is above 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], K, *x.shape[2:])
        logits[:, 1] = 20.0 * (x[:, 0] - 0.5)
        return logits


def segmenter(**settings) -> pipeline.Segmenter:
    torch.manual_seed(0)
    info = pipeline.ModelInfo(preset="lite", spacing_mm=SPACING, tissues=tuple(tissues.TISSUE_NAMES))
    return pipeline.Segmenter({p: Bright() for p in planes.PLANES}, fusion_net(num_classes=K), SPACING, info,
                              RegionSettings(**{"enabled": True, **settings}))


@pytest.fixture(scope="module")
def study():
    return phantom.generate(1)


@pytest.fixture(scope="module")
def truth_series(study) -> Series:
    """The phantom with its tissue mask as the image: what the stand-in networks see as tissue."""
    series = study.primary
    mask = (series.label > 0).astype(np.float32)
    return Series(np.stack([mask * 100.0] * 3), series.affine, ("t2w", "t1w", "stir"), "truth as image",
                  series.label, "phantom")


@pytest.fixture(scope="module")
def segmented(truth_series) -> dict[str, Segmentation]:
    """The truth-as-image series through the stand-ins, with and without spine-region inference."""
    seg = segmenter()
    return {"region": seg.segment(truth_series), "whole": seg.segment(truth_series, region=False)}


def model_input(series: Series) -> np.ndarray:
    return planes.model_input(series, SPACING)


def test_the_box_holds_the_spine_and_drops_a_stray_far_from_it(truth_series):
    image = model_input(truth_series)
    spine = image[0] > 0.5
    stray = image.copy()
    stray[0, :, :4, :4] = 1.0  # a bright corner far in front of the spine: a first-pass false positive
    settings = RegionSettings(enabled=True)
    region = segmenter().locate(stray)
    assert region.status == CROPPED and region.cropped and region.reason.startswith("cropped")
    assert region.grid == spine.shape and 0 < region.share < settings.max_share
    assert spine[region.slices].sum() == spine.sum()  # every spine voxel inside
    margin = int(np.ceil(settings.margin_mm / SPACING))
    found = np.argwhere(spine)
    for axis, (start, stop) in enumerate(region.box):
        n = spine.shape[axis]
        # the margin around the spine, except where the grid ends (left-right: at least MIN_SLAB_MM wide)
        assert start == 0 or start <= found[:, axis].min() - margin
        assert stop == n or stop >= found[:, axis].max() + 1 + margin
    assert region.box[1][0] > 4  # the stray corner (antero-posterior index < 4) is not in the box
    assert (region.box[0][1] - region.box[0][0]) * SPACING >= min(planes.MIN_SLAB_MM, spine.shape[0] * SPACING)


def test_region_inference_keeps_the_grid_with_background_outside_the_box(truth_series, segmented):
    result = segmented["region"]
    region = result.region
    assert region.cropped
    assert result.classes.shape == truth_series.shape and result.classes.dtype == np.uint8
    grid = planes.grid_size(planes.to_canonical(truth_series), SPACING)
    assert result.probabilities.shape == (K, *grid) and region.grid == grid
    outside = np.ones(grid, bool)
    outside[region.slices] = False
    for probabilities in (result.probabilities, *result.plane_probabilities.values()):
        assert probabilities.shape == (K, *grid)
        assert (probabilities[0][outside] == 1.0).all() and (probabilities[1:][:, outside] == 0).all()
    for plane, classes in result.plane_classes.items():
        assert classes.shape == truth_series.shape
    # the stand-in networks find the spine inside the box as they do over the whole volume
    whole = segmented["whole"]
    assert whole.region.status == OFF
    for plane in planes.PLANES:
        assert (result.plane_classes[plane] == whole.plane_classes[plane]).mean() > 0.999


def test_analyse_returns_the_series_grid_and_affine_with_region_inference(study, segmented):
    out = analysis.analyse(study, lambda series: segmented["region"])
    assert out.label.shape == study.primary.shape
    np.testing.assert_array_equal(out.affine, study.primary.affine)
    assert out.segmentation.region.cropped


def test_turned_off_it_is_whole_volume_inference(truth_series):
    seg = segmenter()
    image = model_input(truth_series)
    per_plane, fused, region = seg.predict(image, region=False)
    assert region.status == OFF and not region.cropped and region.box == tuple((0, n) for n in image.shape[1:])
    expected = {p: pipeline.predict_plane(m, image, p) for p, m in seg.plane_models.items()}
    for plane in planes.PLANES:
        np.testing.assert_array_equal(per_plane[plane], expected[plane])
    np.testing.assert_allclose(fused, pipeline.fuse(seg.fusion, expected, SPACING), atol=1e-6)
    # the same, turned off in the settings (a weights folder's model.json) instead of per call
    assert segmenter(enabled=False).segment(truth_series).region.status == OFF


def test_a_first_pass_that_finds_nothing_runs_the_whole_volume_and_says_so(truth_series):
    blank = Series(np.zeros_like(truth_series.image), truth_series.affine, truth_series.modalities, "blank",
                   None, "blank")
    result = segmenter().segment(blank)
    assert result.region.status == NOTHING_FOUND and not result.region.cropped
    assert "no spine" in result.region.reason and result.region.as_dict()["cropped"] is False
    assert result.classes.shape == blank.shape
    assert not any(classes.any() for classes in result.plane_classes.values())  # (the fusion is untrained)
    # too little tissue to be a spine: the same
    speck = truth_series.image * 0
    speck[:, 10:12, 100:102, 100:102] = 100.0
    tiny = Series(speck, truth_series.affine, truth_series.modalities, "speck", None, "speck")
    assert segmenter().segment(tiny).region.status == NOTHING_FOUND


def test_a_box_covering_most_of_the_grid_runs_the_whole_volume():
    image = np.ones((3, 20, 40, 40), np.float32)  # tissue everywhere
    image[0, :, :4] = 0.0  # but a thin slab in front: the box holds 90 % of the grid
    region = segmenter().locate(image)
    assert region.status == MOSTLY_SPINE and not region.cropped and region.shape == image.shape[1:]
    assert segmenter(max_share=0.95, margin_mm=0.0).locate(image).cropped  # (the margin would reach the front)


def test_untrained_networks_never_crash(tmp_path, study):
    from conftest import untrained_weights

    seg = pipeline.Segmenter.load(untrained_weights(tmp_path / "w", SPACING))
    assert seg.region == RegionSettings()  # a model.json without "region": the defaults
    result = seg.segment(study.primary, region=True)
    assert result.classes.shape == study.primary.shape and result.region is not None


def test_fusion_positions_stay_relative_to_the_whole_grid():
    grid = (20, 30, 40)
    region = Region(grid, ((2, 18), (5, 25), (0, 40)), CROPPED)
    probabilities = {p: np.full((K, *region.shape), 1.0 / K, np.float32) for p in planes.PLANES}
    x = pipeline.region_fusion_input(probabilities, region, K, spacing=SPACING)
    assert x.shape == (3 * (K + 1), *region.shape)
    for i, plane in enumerate(planes.PLANES):
        np.testing.assert_array_equal(x[i * (K + 1) + K], planes.position_encoding(grid, plane)[region.slices])


def test_region_code_and_settings_round_trip():
    region = Region((20, 30, 40), ((2, 18), (5, 25), (0, 40)), CROPPED)
    assert Region.from_code(region.code(), region.grid) == region
    assert region.code().dtype == np.int32 and region.code().shape == (7,)
    settings = RegionSettings(enabled=False, margin_mm=20.0)
    assert RegionSettings.from_parameter(settings.parameter()) == settings
    with pytest.raises(ValueError, match="unknown"):
        RegionSettings.from_parameter("margin=3")
    info = pipeline.read_config(pipeline.ModelInfo, {"preset": "lite", "spacing_mm": 1.5, "tissues": ["background"],
                                                      "region": {"margin_mm": 20.0}})
    assert info.region == RegionSettings(margin_mm=20.0)


def test_class_maps_give_the_classes_of_probabilities():
    """A backend may send each plane's class map instead of its probabilities (the Triton
    pipeline's <PLANE>_CLASSES, pasted into the grid like probabilities) and the fused classes
    already on the series' canonical grid (SOURCE_CLASSES): the segmentation's classes are the
    same either way."""
    series = Series(np.zeros((1, 14, 30, 25), np.float32), np.diag([4.0, 1.3, 1.3, 1.0]), ("t2w",), "vol")
    grid = planes.model_input(series, SPACING).shape[1:]
    region = Region(grid, ((2, grid[0] - 1), (3, grid[1] - 2), (1, grid[2])), CROPPED)
    rng = np.random.default_rng(4)
    box = {p: rng.random((K, *region.shape), dtype=np.float32) for p in planes.PLANES}
    fused = pipeline.paste(box["sagittal"], region)
    source_classes = pipeline.class_map(planes.resample(fused, planes.canonical_shape(series), "trilinear"))

    def sending(maps: bool):
        return lambda image: ({p: pipeline.paste(pipeline.class_map(v) if maps else v, region) for p, v in box.items()},
                              source_classes if maps else fused, region)

    probabilities, maps = (pipeline.segment_series(series, SPACING, sending(m)) for m in (False, True))
    assert maps.plane_probabilities == {} and set(probabilities.plane_probabilities) == set(planes.PLANES)
    assert maps.probabilities is None and probabilities.probabilities is fused
    for plane in planes.PLANES:
        assert maps.plane_classes[plane].shape == series.shape and maps.plane_classes[plane].dtype == np.uint8
        np.testing.assert_array_equal(maps.plane_classes[plane], probabilities.plane_classes[plane])
        assert 0 < (maps.plane_classes[plane] == 0).mean() < 1  # background outside the box, tissue inside
    np.testing.assert_array_equal(maps.classes, probabilities.classes)


def test_class_scale_moves_one_class_decision_in_process():
    """A weights folder's class_scale multiplies its classes' fused probabilities before the
    argmax: a hernia factor below 1 gives the disc the voxels where hernia led by less than
    that factor, and nothing else changes; the planes' own classes stay the plain argmax."""
    hernia, disc = tissues.TISSUE_NAMES.index("hernia"), tissues.TISSUE_NAMES.index("disc")
    fused = np.full((K, 6, 1, 1), 0.01, np.float32)
    fused[hernia, :, 0, 0] = [0.50, 0.45, 0.40, 0.30, 0.20, 0.05]
    fused[disc, :, 0, 0] = 0.25
    scale = pipeline.class_scale_vector({"hernia": 0.6}, tissues.TISSUE_NAMES)
    assert scale.dtype == np.float32 and scale[hernia] == np.float32(0.6) and np.delete(scale, hernia).tolist() == [1.0] * (K - 1)
    assert pipeline.class_map(fused)[:, 0, 0].tolist() == [hernia] * 4 + [disc] * 2
    assert pipeline.class_map(fused, scale)[:, 0, 0].tolist() == [hernia] * 2 + [disc] * 4

    series = Series(np.zeros((1, 14, 30, 25), np.float32), np.diag([4.0, 1.3, 1.3, 1.0]), ("t2w",), "vol")
    grid = planes.model_input(series, SPACING).shape[1:]
    probabilities = np.zeros((K, *grid), np.float32)
    probabilities[disc], probabilities[hernia] = 0.45, 0.55
    plain = segmenter(enabled=False)
    scaled = pipeline.Segmenter(plain.plane_models, plain.fusion, SPACING,
                                replace(plain.info, class_scale={"hernia": 0.6}), plain.region)
    for model, expected in ((plain, hernia), (scaled, disc)):
        model.predict = lambda image, region: ({p: probabilities for p in planes.PLANES}, probabilities, Region.whole(grid, OFF))
        segmentation = model.segment(series)
        assert (segmentation.classes == expected).all()
        assert all((c == hernia).all() for c in segmentation.plane_classes.values())


@pytest.mark.parametrize("text, reason", [("hernia=0", "positive and finite"), ("hernia=nan", "positive and finite"),
                                          ("bone=2", "not classes of these networks"), ("hernia", "not name=factor")])
def test_a_bad_class_scale_is_refused_with_the_file(tmp_path, text, reason):
    assert pipeline.class_scale_from_parameter(pipeline.class_scale_parameter({"hernia": 0.55, "disc": 2.0})) == \
        {"hernia": 0.55, "disc": 2.0}
    assert pipeline.class_scale_from_parameter("") == {} and pipeline.class_scale_vector({}, tissues.TISSUE_NAMES) is None
    with pytest.raises(ValueError, match=reason):
        pipeline.class_scale_vector(pipeline.class_scale_from_parameter(text), tissues.TISSUE_NAMES)
    if "=" in text:  # the same in a weights folder: refused on load, naming its model.json
        (tmp_path / pipeline.MODEL_FILE).write_text(json.dumps(
            {"preset": "lite", "spacing_mm": 1.5, "tissues": list(tissues.TISSUE_NAMES),
             "class_scale": pipeline.class_scale_from_parameter(text)}))
        with pytest.raises(pipeline.ConfigError, match=f"{pipeline.MODEL_FILE}.*{reason}"):
            pipeline.ModelInfo.load(tmp_path)


@pytest.mark.parametrize("seed", [0, 3])
def test_the_report_on_the_tissue_box_is_the_report_on_the_whole_series(seed):
    study = phantom.generate(seed)
    series = study.primary
    truth = tissue_target(series.label, study.structures)
    rng = np.random.default_rng(seed)
    plane_classes = {p: np.where(rng.random(truth.shape) < 0.02, 0, truth).astype(np.uint8) for p in planes.PLANES}

    def segment(_):
        return Segmentation(truth, plane_classes, {}, np.zeros(0))

    cropped = analysis.analyse(study, segment)
    whole = analysis.analyse(study, segment, crop=False)
    assert analysis.tissue_box([truth, *plane_classes.values()]) is not None  # the crop happened
    assert json.dumps(cropped.report, sort_keys=True) == json.dumps(whole.report, sort_keys=True)
    np.testing.assert_array_equal(cropped.label, whole.label)
    assert cropped.report["series"][0]["shape"] == list(series.shape)


def test_the_report_of_an_empty_segmentation_is_not_cropped(study):
    empty = np.zeros(study.primary.shape, np.uint8)
    out = analysis.analyse(study, lambda _: Segmentation(empty, {}, {}, np.zeros(0)))
    assert out.report["status"] == "no_findings" and not out.label.any()
