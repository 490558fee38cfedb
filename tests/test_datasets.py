"""Training targets for partially annotated sets, and the loss that respects them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lumbarseg import datasets, planes, tissues
from lumbarseg.io import manifest
from lumbarseg.losses import PartialDiceCELoss, known_dice_loss, marginal_cross_entropy

DISC, VB = tissues.TISSUE_NAMES.index("disc"), tissues.TISSUE_NAMES.index("vertebral_body")


def test_unannotated_classes_and_heights_are_allowed_not_background():
    # a column of 10 z positions: discs labelled at z 3 and 6 (value 1 and 2); nothing else named
    label = np.zeros((1, 1, 10), np.uint16)
    label[..., 3], label[..., 6] = 1, 2
    target = datasets.tissue_target(label, {1: "L5-S1", 2: "L4-L5"})
    assert target[0, 0, 3] == DISC == target[0, 0, 6]
    extent = datasets.class_extents(target, {DISC})
    assert tuple(extent[DISC]) == (3, 6) and extent[VB][0] > extent[VB][1]
    z = np.arange(10).reshape(1, 1, 10)
    allowed = datasets.allowed_classes(target, extent, z)
    # a labelled disc voxel allows only disc
    assert allowed[:, 0, 0, 3].tolist() == [k == DISC for k in range(tissues.NUM_TISSUES)]
    # a 0 voxel between labelled discs is surely not a disc, but may be a (never annotated) body
    assert not allowed[DISC, 0, 0, 4] and allowed[VB, 0, 0, 4] and allowed[0, 0, 0, 4]
    # above the labelled extent (an unlabelled disc further up) a disc is allowed
    assert allowed[DISC, 0, 0, 8]


def test_unnamed_label_values_are_ignored():
    label = np.array([[[0, 1, 7]]])
    target = datasets.tissue_target(label, {1: "disc"})
    assert target.tolist() == [[[0, DISC, datasets.IGNORE]]]
    allowed = datasets.allowed_classes(target, datasets.class_extents(target, {DISC}), np.arange(3))
    assert allowed[:, 0, 0, 2].all()


def test_marginal_loss_is_cross_entropy_when_fully_annotated_and_free_where_unknown():
    logits = torch.randn(2, tissues.NUM_TISSUES, 4, 5)
    target = torch.randint(0, tissues.NUM_TISSUES, (2, 4, 5))
    onehot = torch.nn.functional.one_hot(target, tissues.NUM_TISSUES).permute(0, 3, 1, 2).bool()
    ce = torch.nn.functional.cross_entropy(logits, target)
    assert torch.allclose(marginal_cross_entropy(logits, onehot), ce, atol=1e-5)
    assert marginal_cross_entropy(logits, torch.ones_like(onehot)).abs() < 1e-6
    assert known_dice_loss(logits, torch.ones_like(onehot)) == 0  # nothing known: no signal


def test_class_weights_scale_only_pixels_surely_of_that_class():
    logits = torch.randn(1, tissues.NUM_TISSUES, 4, 4)
    allowed = torch.zeros(1, tissues.NUM_TISSUES, 4, 4, dtype=torch.bool)
    allowed[:, DISC, :2] = True  # surely disc
    allowed[:, :, 2:] = True  # unknown: anything
    allowed[:, VB, 2:] = False
    per_pixel = torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~allowed, float("-inf")), 1)
    weights = torch.ones(tissues.NUM_TISSUES)
    assert torch.allclose(marginal_cross_entropy(logits, allowed, weights), marginal_cross_entropy(logits, allowed))
    weights[DISC] = 5.0
    weights[VB] = 7.0  # no pixel is surely a body: changes nothing
    expected = (5 * per_pixel[:, :2].sum() + per_pixel[:, 2:].sum()) / 16
    assert torch.allclose(marginal_cross_entropy(logits, allowed, weights), expected, atol=1e-6)


def test_partial_loss_trains_a_tiny_model_without_touching_unknown_classes():
    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, tissues.NUM_TISSUES, 1)
    x = torch.zeros(1, 1, 8, 8)
    x[..., 2:5, 2:5] = 1
    allowed = torch.zeros(1, tissues.NUM_TISSUES, 8, 8, dtype=torch.bool)
    allowed[:, DISC, 2:5, 2:5] = True
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[2:5, 2:5] = False
    allowed[:, :, outside] = True
    allowed[:, DISC, outside] = False  # outside the square: anything but disc
    loss_fn = PartialDiceCELoss()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    first = loss_fn(model(x), allowed).item()
    for _ in range(60):
        opt.zero_grad()
        loss = loss_fn(model(x), allowed)
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first
    pred = model(x).argmax(1)[0]
    assert (pred[2:5, 2:5] == DISC).all() and not (pred[outside] == DISC).any()


def test_group_dice_scores_a_partial_label_by_its_classes_summed_probability():
    # A whole-vertebra square (body, articular or spinous process, not which), surely background
    # around it: per class nothing is surely bone, so the class Dice says nothing about it.
    bone = [tissues.TISSUE_NAMES.index(n) for n in tissues.PARTIAL["vertebra"]]
    allowed = torch.zeros(1, tissues.NUM_TISSUES, 8, 8, dtype=torch.bool)
    allowed[:, 0] = True
    allowed[:, 0, 2:6, 2:6] = False
    allowed[:, bone, 2:6, 2:6] = True
    logits = torch.full((1, tissues.NUM_TISSUES, 8, 8), -10.0)
    logits[:, 0] = 10.0  # background everywhere: misses the vertebra
    assert known_dice_loss(logits, allowed) == 0 and known_dice_loss(logits, allowed, groups=[bone]) > 0.9
    # Any split of the square among its classes is right for the group: no loss
    logits[:, 0, 2:6, 2:6] = -10.0
    logits[:, bone[0], 2:6, 2:4] = logits[:, bone[1], 2:6, 4:6] = 10.0
    assert known_dice_loss(logits, allowed, groups=[bone]) < 0.01
    # A batch without a partial pixel of the group scores as without the group
    sure = torch.nn.functional.one_hot(torch.randint(0, tissues.NUM_TISSUES, (1, 8, 8)), tissues.NUM_TISSUES)
    sure, logits = sure.permute(0, 3, 1, 2).bool(), torch.randn(1, tissues.NUM_TISSUES, 8, 8)
    assert torch.equal(known_dice_loss(logits, sure, groups=[bone]), known_dice_loss(logits, sure))


@pytest.mark.realdata
def test_prepared_real_volume_keeps_labels_and_extents(shared_data):
    entry = next(e for e in manifest.read_manifest(shared_data) if e.set == "lumbar_ivd_t2")
    volume = datasets.prepare(manifest.load_entry(entry), spacing=2.0)
    assert volume.image.shape == (3, *volume.shape)
    assert set(np.unique(volume.target).tolist()) == {0, DISC}
    lo, hi = volume.extent[DISC]
    z = np.flatnonzero((volume.target == DISC).any(axis=(0, 1)))
    assert (lo, hi) == (z[0], z[-1]) and volume.extent[VB][0] > volume.extent[VB][1]


def test_allowed_sets_survive_encoding_and_planes_agree():
    rng = np.random.default_rng(3)
    target = rng.integers(0, 3, (6, 5, 8)).astype(np.uint8)
    target[:, :, :2] = 0  # below the labelled extent
    volume = datasets.TrainingVolume("s/1", rng.random((3, 6, 5, 8), np.float32), target,
                                     datasets.class_extents(target, {1, 2}), 1.0)
    full = datasets.allowed_classes(target, volume.extent, np.arange(8))
    for plane, axis in (("sagittal", 1), ("coronal", 2), ("axial", 3)):
        image, allowed = datasets.plane_slice(volume, plane, 1)
        np.testing.assert_array_equal(allowed, np.take(full, 1, axis=axis))
        np.testing.assert_array_equal(image, np.take(volume.image, 1, axis=axis))
        codes, table = datasets.encode_allowed(allowed)
        np.testing.assert_array_equal(datasets.decode_allowed(codes, table), allowed)
        # pixels surely of one class carry that class as their code (tissue-aware augmentations)
        slice_target = np.take(target, 1, axis=axis - 1)
        sure = allowed.sum(axis=0) == 1
        np.testing.assert_array_equal(codes[sure], allowed[:, sure].argmax(axis=0))
        assert (codes[slice_target == 2] == 2).all()
    codes[0, 0] = datasets.IGNORE
    assert datasets.decode_allowed(codes, table)[:, 0, 0].all()


def test_unannotated_tissues_are_background_far_from_the_labelled_spine():
    # canonical RAS grid at 2 mm: a labelled body at x 40-60, y 100-120 (y grows anterior), z 30-50
    target = np.zeros((120, 160, 100), np.uint8)
    target[40:61, 100:121, 30:51] = VB
    volume = datasets.TrainingVolume("s/1", np.zeros((3, *target.shape), np.float32), target,
                                     datasets.class_extents(target, {VB}), 2.0)
    z = np.arange(target.shape[2])[None, None, :]
    allowed = datasets.allowed_classes(target, volume.extent, z, volume.region)
    sac = tissues.TISSUE_NAMES.index("dural_sac")
    only_background = [k == 0 for k in range(tissues.NUM_TISSUES)]
    assert allowed[:, 50, 110, 40].tolist() == [k == VB for k in range(tissues.NUM_TISSUES)]
    assert allowed[:, 5, 110, 40].tolist() == only_background  # 70 mm to the side
    assert allowed[:, 50, 130, 40].tolist() == only_background  # 20 mm in front
    assert allowed[sac, 50, 60, 40] and not allowed[VB, 50, 60, 40]  # 80 mm behind: posterior elements
    assert allowed[:, 50, 30, 40].tolist() == only_background  # 140 mm behind
    assert allowed[sac, 50, 110, 60] and allowed[VB, 50, 110, 60]  # 20 mm above the labels: T10 may be there
    assert allowed[sac, 5, 110, 90] and allowed[VB, 5, 110, 90]  # far above: nothing known
    # the slices the networks train on carry the same rule
    _, axial = datasets.plane_slice(volume, "axial", 40)
    np.testing.assert_array_equal(axial, allowed[..., 40])


def test_a_volume_without_labels_knows_nothing():
    target = np.zeros((4, 4, 4), np.uint8)
    assert datasets.spine_region(target, 1.0).all()


def test_tissues_not_labelled_by_level_are_known_at_every_height():
    # a phantom-like set names the hernia: one hernia at z 3 says "no hernia" at every other height,
    # while the disc, labelled by level, stays unknown above its labelled levels
    label = np.zeros((1, 1, 10), np.uint16)
    label[..., 2], label[..., 3] = 1, 2
    target = datasets.tissue_target(label, {1: "L5-S1", 2: "hernia"})
    hernia = tissues.TISSUE_NAMES.index("hernia")
    extent = datasets.class_extents(target, {DISC, hernia})
    allowed = datasets.allowed_classes(target, extent, np.arange(10).reshape(1, 1, 10))
    assert tuple(extent[hernia]) == (0, 9)
    assert not allowed[hernia, 0, 0, 8:].any() and allowed[DISC, 0, 0, 8]


def test_a_whole_vertebra_label_allows_its_classes_and_scores_as_their_union():
    # SPIDER's `vertebra` covers body, articular and spinous process and the pedicles/laminae
    # (background in this schema); `spinal_canal` is the dural sac
    structures = {1: "disc", 2: "vertebra", 3: "spinal_canal"}
    label = np.zeros((1, 1, 10), np.uint8)
    label[..., 2:4], label[..., 5], label[..., 7] = 2, 1, 3
    target = datasets.tissue_target(label, structures)
    vertebra = tissues.PARTIAL_CODES["vertebra"]
    sac, ap = tissues.TISSUE_NAMES.index("dural_sac"), tissues.TISSUE_NAMES.index("articular_process")
    assert target[0, 0].tolist() == [0, 0, vertebra, vertebra, 0, DISC, 0, sac, 0, 0]
    annotated = {t.index for n in structures.values() for t in tissues.classes_of(n)}
    extent = datasets.class_extents(target, annotated)
    assert tuple(extent[VB]) == (2, 3)  # by level: where the vertebra label is
    allowed = datasets.allowed_classes(target, extent, np.arange(10).reshape(1, 1, 10))
    members = {t.index for t in tissues.classes_of("vertebra")}
    assert {k for k in range(tissues.NUM_TISSUES) if allowed[k, 0, 0, 2]} == members
    assert not allowed[ap, 0, 0, 4] and not allowed[sac, 0, 0, 4]  # a 0 voxel: not vertebra, not sac
    # scoring: a body + spinous process prediction of the vertebra voxels is a perfect vertebra
    pred = np.zeros_like(target)
    pred[..., 2], pred[..., 3] = VB, tissues.TISSUE_NAMES.index("spinous_process")
    from lumbarseg import metrics

    scores = metrics.dice_per_class(pred, target, np.arange(10).reshape(1, 1, 10), annotated)
    assert scores["vertebra"] == 1.0 and scores["disc"] == 0.0 and scores["dural_sac"] == 0.0
    assert "vertebral_body" not in scores  # no voxel is surely body: not scored alone


def test_spider_volume_prepares_with_canal_and_vertebra_targets(shared_data):
    entry = next(e for e in manifest.read_manifest(shared_data / "spider_t2_space") if e.subject == "5")
    volume = datasets.prepare(manifest.load_entry(entry), 1.5)
    values = set(np.unique(volume.target).tolist())
    assert {0, DISC, tissues.TISSUE_NAMES.index("dural_sac"), tissues.PARTIAL_CODES["vertebra"]} <= values
    assert volume.extent[VB][0] <= volume.extent[VB][1]


@pytest.mark.parametrize("plane", planes.PLANES)
def test_a_training_slice_with_context_is_the_slice_of_the_2_5d_volume(plane):
    """Training draws a 2.5D slice from its neighbours alone; it must equal the slice inference
    cuts from the whole volume (lumbarseg.planes.slice_context), edges included."""
    t2 = np.random.default_rng(1).random((1, 4, 5, 6)).astype(np.float32)
    image = np.concatenate([t2, t2, t2])
    volume = datasets.TrainingVolume("set/s", image, np.zeros(image.shape[1:], np.uint8), np.zeros((9, 2), int), 1.5)
    whole = planes.slice_stack(planes.slice_context(image, plane), plane)
    for index in range(len(whole)):
        np.testing.assert_array_equal(datasets.plane_slice(volume, plane, index, context=True)[0], whole[index])
        np.testing.assert_array_equal(datasets.plane_slice(volume, plane, index)[0],
                                      planes.slice_stack(image, plane)[index])
