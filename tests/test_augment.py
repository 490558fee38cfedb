from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from lumbarseg.augment import (
    IGNORE_INDEX,
    RandElasticGridd,
    RandTissueBrightnessd,
    RandTissueDeformd,
    inverse_distance_field,
    paper_augmentations,
    rand_crop_resized,
    rand_tilt_rotated,
)

KEYS = ("image", "label")
LABEL_MODES = {"mode": ("bilinear", "nearest"), "padding_value": (0.0, IGNORE_INDEX)}
SQUARE, BAR = 3, 8  # far-apart values: a blended label would show up as a value in between
OTHER = 12  # a label value that is no tissue class (as datasets codes uncertain pixels)
SEEDS = range(4)


@pytest.fixture
def slice_() -> dict[str, np.ndarray]:
    """A 128x128 three-channel slice: a bright square (SQUARE), a dimmer bar (BAR), a patch of
    OTHER and an unannotated corner (IGNORE_INDEX) on a dark background."""
    image = np.full((3, 128, 128), 0.1, np.float32)
    label = np.zeros((1, 128, 128), np.uint8)
    image[:, 40:80, 40:80], label[:, 40:80, 40:80] = 1.0, SQUARE
    image[:, 95:110, 30:100], label[:, 95:110, 30:100] = 0.5, BAR
    label[:, :12, 100:] = IGNORE_INDEX
    label[:, 10:25, 10:30] = OTHER
    return {"image": image, "label": label}


def geometric(name: str, prob: float = 1.0):
    return {
        "elastic_grid": lambda: RandElasticGridd(KEYS, prob, **LABEL_MODES),
        "tissue_deform": lambda: RandTissueDeformd(KEYS, "label", prob, classes=[SQUARE], **LABEL_MODES),
        "tilt_rotate": lambda: rand_tilt_rotated(KEYS, prob),
        "crop_resize": lambda: rand_crop_resized(KEYS, prob),
    }[name]()


GEOMETRIC = ("elastic_grid", "tissue_deform", "tilt_rotate", "crop_resize")


def as_np(x) -> np.ndarray:
    return np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("name", GEOMETRIC)
def test_geometric_transforms_move_image_and_label_together(slice_, name):
    transform = geometric(name)
    for seed in SEEDS:
        out = transform.set_random_state(seed)(slice_)
        image, label = as_np(out["image"]), as_np(out["label"])
        assert not np.array_equal(image, slice_["image"])
        assert dice(label[0] == SQUARE, image.mean(0) > 0.75) > 0.9


@pytest.mark.parametrize("name", GEOMETRIC)
def test_geometric_transforms_keep_label_values_and_dtype(slice_, name):
    transform = geometric(name)
    for seed in SEEDS:
        label = transform.set_random_state(seed)(slice_)["label"]
        assert label.dtype in (np.uint8, torch.uint8)
        assert set(np.unique(as_np(label))) <= {0, SQUARE, BAR, OTHER, IGNORE_INDEX}
        assert (as_np(label) == IGNORE_INDEX).any()  # the unannotated corner is carried along


def test_padding_is_ignored_in_the_label_and_dark_in_the_image(slice_):
    out = rand_crop_resized(KEYS, 1.0, zoom=(0.75, 0.75))(slice_)  # shrinks the slice inside padding
    image, label = as_np(out["image"]), as_np(out["label"])
    for edge in (np.s_[:, :5, :], np.s_[:, -5:, :], np.s_[:, :, :5], np.s_[:, :, -5:]):
        assert (label[edge] == IGNORE_INDEX).all()
        assert (image[edge] == 0).all()


def test_elastic_grid_pads_image_and_label_at_the_same_pixels(slice_):
    annotated = {"image": slice_["image"], "label": np.where(slice_["label"] == IGNORE_INDEX, 0, slice_["label"])}
    out = RandElasticGridd(KEYS, 1.0, magnitude=20.0, **LABEL_MODES).set_random_state(1)(annotated)
    padded = out["label"][0] == IGNORE_INDEX
    assert padded.any()
    assert (out["image"][:, padded] == 0).all()


def test_intensity_transforms_never_change_the_label(slice_):
    augment = paper_augmentations(prob=1.0, intensity_only=True)
    for seed in SEEDS:
        out = augment.set_random_state(seed)(slice_)
        assert not np.array_equal(as_np(out["image"]), slice_["image"])
        assert out["label"] is slice_["label"]


def test_tissue_brightness_changes_only_the_chosen_tissue(slice_):
    """Only tissue classes are chosen: never OTHER, background or ignore."""
    transform = RandTissueBrightnessd("image", "label", 1.0)
    chosen = set()
    for seed in range(8):
        out = transform.set_random_state(seed)(slice_)["image"]
        tissue = transform.brightness.tissue
        chosen.add(tissue)
        inside = np.broadcast_to(slice_["label"] == tissue, out.shape)
        assert tissue in (SQUARE, BAR)
        assert np.array_equal(out[~inside], slice_["image"][~inside])
        assert not np.allclose(out[inside], slice_["image"][inside])
        assert type(out) is np.ndarray and out.dtype == np.float32
    assert chosen == {SQUARE, BAR}


def test_tissue_deform_changes_the_object_and_nothing_far_from_it(slice_):
    radius = 10.0
    transform = RandTissueDeformd(KEYS, "label", 1.0, radius=radius, classes=[SQUARE], **LABEL_MODES)
    far = ndimage.distance_transform_edt(slice_["label"][0] != SQUARE) > radius + 1
    for seed in SEEDS:
        out = transform.set_random_state(seed)(slice_)
        assert not np.array_equal(out["label"], slice_["label"])
        assert np.array_equal(out["label"][:, far], slice_["label"][:, far])
        assert np.array_equal(out["image"][:, far], slice_["image"][:, far])


def test_transforms_without_an_eligible_tissue_do_nothing(slice_):
    empty = {"image": slice_["image"], "label": np.zeros_like(slice_["label"])}
    assert RandTissueDeformd(KEYS, "label", 1.0)(empty)["image"] is empty["image"]
    assert RandTissueBrightnessd("image", "label", 1.0)(empty)["image"] is empty["image"]


@pytest.mark.parametrize("intensity_only", [False, True])
def test_seeds_reproduce(slice_, intensity_only):
    augment = paper_augmentations(intensity_only=intensity_only)
    runs = [augment.set_random_state(seed)(slice_) for seed in (5, 5, 6)]
    for key in KEYS:
        assert np.array_equal(as_np(runs[0][key]), as_np(runs[1][key]))
    assert not np.array_equal(as_np(runs[0]["image"]), as_np(runs[2]["image"]))


@pytest.mark.parametrize(
    "transform",
    [
        RandElasticGridd(KEYS, 1.0, **LABEL_MODES),
        RandTissueDeformd(KEYS, "label", 1.0, **LABEL_MODES),
        RandTissueBrightnessd("image", "label", 1.0),
    ],
    ids=type,
)
def test_custom_transforms_reproduce_and_keep_the_array_kind(slice_, transform):
    first = transform.set_random_state(3)(slice_)
    again = transform.set_random_state(3)(slice_)
    other = transform.set_random_state(4)(slice_)
    assert np.array_equal(first["image"], again["image"]) and np.array_equal(first["label"], again["label"])
    assert not np.array_equal(first["image"], other["image"])
    assert all(type(first[k]) is np.ndarray and first[k].dtype == slice_[k].dtype for k in KEYS)
    tensors = {k: torch.as_tensor(v) for k, v in slice_.items()}
    out = transform.set_random_state(3)(tensors)
    assert all(isinstance(out[k], torch.Tensor) and out[k].dtype == tensors[k].dtype for k in KEYS)
    assert np.array_equal(out["image"].numpy(), first["image"])


def test_prob_zero_is_the_identity(slice_):
    out = paper_augmentations(prob=0.0).set_random_state(0)(slice_)
    for key in KEYS:
        assert np.array_equal(as_np(out[key]), slice_[key])
    assert out["label"].dtype == torch.uint8
    for transform in (
        RandElasticGridd(KEYS, 0.0),
        RandTissueDeformd(KEYS, "label", 0.0),
        RandTissueBrightnessd("image", "label", 0.0),
    ):
        out = transform(slice_)
        assert all(out[key] is slice_[key] for key in KEYS)


def test_inverse_distance_field():
    points = np.array([[10.0, 10.0], [30.0, 40.0]])
    vectors = np.array([[2.0, -1.0], [-3.0, 0.5]])
    shepard = inverse_distance_field((50, 60), points, vectors)
    assert torch.allclose(shepard[:, 10, 10], torch.tensor([2.0, -1.0]), atol=1e-4)
    assert shepard.norm(dim=0).max() <= 3.05  # a weighted mean never exceeds the largest vector
    local = inverse_distance_field((50, 60), points, vectors, radius=8.0)
    assert torch.allclose(local[:, 30, 40], torch.tensor([-3.0, 0.5]), atol=1e-4)
    assert torch.allclose(local[:, 30, 44], torch.tensor([-1.5, 0.25]), atol=1e-4)  # half way: half
    rows, cols = np.mgrid[:50, :60]
    far = np.hypot(rows[None] - points[:, :1, None], cols[None] - points[:, 1:, None]).min(0) >= 8
    assert (local[:, torch.from_numpy(far)] == 0).all()
