"""Training and evaluation end to end on the smoke preset (phantoms only, a few iterations)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import load_module
from lumbarseg import cli, datasets, io, phantom, pipeline, tissues
from lumbarseg.config import ConfigError
from lumbarseg.evaluation import evaluate
from lumbarseg.io.study import StudyError
from lumbarseg.pipeline import Segmenter
from lumbarseg.training import (REPO, PatchDataset, PhantomDraw, SliceDataset, TrainingPreset, collect_volumes,
                                fit_fusion, fusion_inputs, network, train)


@pytest.fixture(scope="module")
def phantom_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantoms")
    phantom.write_phantoms(folder, 2, seed=31, modalities=("t2w", "t1w"))
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory, phantom_data):
    out = tmp_path_factory.mktemp("run")
    return out, train(TrainingPreset.load("smoke"), [phantom_data], out)


def test_training_writes_a_loadable_model_with_history(trained):
    out, model = trained
    info = json.loads((model / "model.json").read_text())
    assert info["tissues"] == list(tissues.TISSUE_NAMES)
    assert set(info["history"]) == {"sagittal", "coronal", "axial", "fusion"}
    assert all(len(h) == TrainingPreset.load("smoke").epochs for p, h in info["history"].items() if p != "fusion")
    assert (out / "learning_curves.png").stat().st_size > 0
    segmenter = Segmenter.load(model)
    study = phantom.generate(5, modalities=("t2w",))
    seg = segmenter.segment(study.primary)
    assert seg.classes.shape == study.primary.shape and seg.classes.max() < tissues.NUM_TISSUES
    assert set(seg.plane_classes) == {"sagittal", "coronal", "axial"}


def test_loaded_networks_are_optimised_for_inference_and_answer_as_trained(trained):
    """Segmenter.load folds each batch norm into its convolution and stores the weights channels
    last: no batch norm is left, and the probabilities are the trained networks' to float
    rounding."""
    _, model = trained
    folded, as_trained = Segmenter.load(model), Segmenter.load(model, optimise=False)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                   for net in folded.plane_models.values() for m in net.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in as_trained.plane_models["sagittal"].modules())
    assert all(pipeline._channels_last(net) for net in folded.plane_models.values())
    assert not pipeline._channels_last(as_trained.plane_models["sagittal"])
    series = phantom.generate(6, modalities=("t2w", "t1w")).primary
    a, b = folded.segment(series), as_trained.segment(series)
    assert np.abs(a.probabilities - b.probabilities).max() < 1e-4
    for plane in a.plane_probabilities:
        assert np.abs(a.plane_probabilities[plane] - b.plane_probabilities[plane]).max() < 1e-4
    assert (a.classes == b.classes).mean() > 0.9999


def test_training_is_deterministic_and_resumes(trained, phantom_data, tmp_path):
    out, model = trained
    again = train(TrainingPreset.load("smoke"), [phantom_data], tmp_path / "again")
    for name in ("sagittal", "fusion"):
        a, b = torch.load(model / f"{name}.pt"), torch.load(again / f"{name}.pt")
        assert all(torch.equal(a[k], b[k]) for k in a), name
    # a rerun over finished checkpoints trains nothing more and gives the same weights
    history = json.loads((model / "model.json").read_text())["history"]
    resumed = train(TrainingPreset.load("smoke"), [phantom_data], out)
    assert json.loads((resumed / "model.json").read_text())["history"] == history


def test_the_cli_trains_only_the_networks_named_and_copies_the_others(trained, phantom_data, tmp_path):
    _, model = trained
    out = tmp_path / "fusion_only"
    assert cli.main(["train", "--data", str(phantom_data), "--preset", "smoke", "--init", str(model),
                     "--networks", "fusion", "--out", str(out)]) == 0
    info = json.loads((out / "model" / "model.json").read_text())
    assert set(info["history"]) == {"fusion"}
    for name in ("sagittal", "coronal", "axial"):
        a, b = torch.load(model / f"{name}.pt"), torch.load(out / "model" / f"{name}.pt")
        assert all(torch.equal(a[k], b[k]) for k in a), name
    before, after = torch.load(model / "fusion.pt"), torch.load(out / "model" / "fusion.pt")
    assert not all(torch.equal(before[k], after[k]) for k in before)


def test_a_2_5d_preset_trains_2_5d_networks_and_never_mixes_them_with_2d_ones(trained, phantom_data, tmp_path):
    """``slice_context`` in a preset (a JSON file here) reaches model.json, so the networks are
    served with the input they were trained on; keeping 2D planes beside a 2.5D preset is refused."""
    _, model = trained
    assert Segmenter.load(model).info.slice_context is False
    preset = json.loads((REPO / "configs" / "training" / "smoke.json").read_text()) | {"slice_context": True}
    (tmp_path / "smoke_2_5d.json").write_text(json.dumps(preset))
    args = ["train", "--data", str(phantom_data), "--preset", str(tmp_path / "smoke_2_5d.json"), "--init", str(model)]
    with pytest.raises(StudyError, match="slice_context"):
        train(TrainingPreset.load(tmp_path / "smoke_2_5d.json"), [phantom_data], tmp_path / "mixed", init=model,
              networks=("sagittal",))
    assert cli.main([*args, "--out", str(tmp_path / "run")]) == 0
    assert Segmenter.load(tmp_path / "run" / "model").info.slice_context is True


def test_the_plane_experiment_scores_each_arm_per_set_on_the_fusion_group(trained, phantom_data, tmp_path):
    """scripts/plane_experiment.py: arms train the plane as ``lumbarseg train`` does (a second
    run resumes from the arm's checkpoint and scores the same) and are scored on fusion studies."""
    experiment = load_module("scripts/plane_experiment.py")
    _, model = trained
    preset = json.loads((REPO / "configs" / "training" / "smoke.json").read_text()) | {"slice_context": True}
    (tmp_path / "smoke_2_5d.json").write_text(json.dumps(preset))
    args = ["--weights", str(model), "--data", str(phantom_data), "--presets", "smoke", str(tmp_path / "smoke_2_5d.json"),
            "--plane", "axial", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out.json")]
    assert experiment.main(args) == 0
    first = json.loads((tmp_path / "out.json").read_text())
    assert set(first["arms"]) == {"start", "smoke", "smoke_2_5d"} and first["fusion_group"] == 1
    assert set(first["arms"]["smoke"]["dice"]) == {"phantom"} and len(first["arms"]["smoke"]["history"]) == 2
    assert first["arms"]["smoke"]["dice"] != first["arms"]["start"]["dice"]  # trained, not the start
    assert experiment.main(args) == 0
    again = json.loads((tmp_path / "out.json").read_text())
    assert {n: a["dice"] for n, a in again["arms"].items()} == {n: a["dice"] for n, a in first["arms"].items()}
    assert experiment.main([*args[:-2], "--out", str(tmp_path / "x.json"), "--presets", "nonexistent"]) == 2


def test_a_k_fold_fusion_learns_on_predictions_by_planes_that_never_saw_the_study(trained, phantom_data, tmp_path,
                                                                                  monkeypatch):
    """fusion.out_of_fold: per fold, planes trained on the other folds' training studies predict
    this fold's, and the fusion learns on them as well; finished folds are not trained again."""
    from lumbarseg import training

    trained_on: list[set[str]] = []
    real_train_plane = training.train_plane

    def recording(plane, volumes, *args, **kwargs):
        trained_on.append({v.key for v in volumes["train"]})
        return real_train_plane(plane, volumes, *args, **kwargs)

    monkeypatch.setattr(training, "train_plane", recording)
    smoke = TrainingPreset.load("smoke")
    preset = replace(smoke, phantoms=replace(smoke.phantoms, train=2),
                     fusion=replace(smoke.fusion, out_of_fold=training.OutOfFold(folds=2, preset="smoke")))
    model = train(preset, [phantom_data], tmp_path / "run", init=trained[1], networks=("fusion",))
    assert len(trained_on) == 2 * 3  # two folds, three planes each, and only the fusion otherwise
    folds = [set(np.load(tmp_path / "run" / "folds" / f"fold{f}" / "inputs.npz").files) for f in range(2)]
    assert len(folds[0]) == len(folds[1]) == 2 and not folds[0] & folds[1]  # 2 phantom studies + 2 drawn
    for f in range(2):
        assert all(seen == folds[1 - f] for seen in trained_on[3 * f:3 * f + 3])  # never its own fold
    without = train(smoke, [phantom_data], tmp_path / "plain", init=trained[1], networks=("fusion",))
    assert not torch.equal(pipeline.load_state(model / "fusion.pt")["conv1.weight"],
                           pipeline.load_state(without / "fusion.pt")["conv1.weight"])
    train(preset, [phantom_data], tmp_path / "run", init=trained[1], networks=("fusion",))
    assert len(trained_on) == 6  # the saved fold predictions are reused
    coarse = replace(preset, spacing_mm=2.0)
    with pytest.raises(ConfigError, match="spacing"):
        train(coarse, [phantom_data], tmp_path / "coarse", init=trained[1], networks=("fusion",))


def test_a_restarted_fusion_starts_from_the_planes_average_not_from_the_one_it_replaces(trained, phantom_data,
                                                                                       tmp_path):
    import shutil

    smoke = TrainingPreset.load("smoke")
    other = tmp_path / "other"
    shutil.copytree(trained[1], other)
    torch.save({k: v + 1 for k, v in pipeline.load_state(other / "fusion.pt").items()}, other / "fusion.pt")

    def fusion_after(preset: TrainingPreset, init, name: str) -> torch.Tensor:
        model = train(preset, [phantom_data], tmp_path / name, init=init, networks=("fusion",))
        return pipeline.load_state(model / "fusion.pt")["conv2.weight"]

    restart = replace(smoke, fusion=replace(smoke.fusion, restart=True))
    assert torch.equal(fusion_after(restart, trained[1], "a"), fusion_after(restart, other, "b"))
    assert not torch.equal(fusion_after(smoke, trained[1], "c"), fusion_after(smoke, other, "d"))


def test_the_fusion_experiment_scores_k_fold_variants_per_set(trained, phantom_data, tmp_path):
    """scripts/fusion_experiment.py --oof-preset: the ``oof`` variants learn on the k-fold
    predictions besides the fusion group, and a second run reuses the saved fold predictions."""
    experiment = load_module("scripts/fusion_experiment.py")
    preset = json.loads((REPO / "configs" / "training" / "smoke.json").read_text())
    preset["phantoms"] |= {"train": 2, "fusion": 2}
    (tmp_path / "smoke_two.json").write_text(json.dumps(preset))
    args = ["--weights", str(trained[1]), "--data", str(phantom_data), "--preset", str(tmp_path / "smoke_two.json"),
            "--cache", str(tmp_path / "cache"), "--oof-preset", str(tmp_path / "smoke_two.json"), "--oof-folds", "2",
            "--work", str(tmp_path / "work"), "--variants", "per_set_lr0.0003", "oof",
            "--out", str(tmp_path / "out.json")]
    assert experiment.main(args) == 0
    first = json.loads((tmp_path / "out.json").read_text())
    assert first["oof"]["training_studies"] == 4
    row = first["per_set"]["phantom"]
    assert set(row) == {"studies", "sagittal", "coronal", "axial", "average", "per_set_lr0.0003", "oof"}
    assert row["oof"]["per_class"] != row["per_set_lr0.0003"]["per_class"]  # learnt on more than the fusion group
    saved = (tmp_path / "work" / "fold0" / "inputs.npz").stat().st_mtime_ns
    assert experiment.main(args) == 0
    assert (tmp_path / "work" / "fold0" / "inputs.npz").stat().st_mtime_ns == saved
    assert json.loads((tmp_path / "out.json").read_text())["per_set"] == first["per_set"]
    assert experiment.main([*args[:-2], "--out", str(tmp_path / "x.json"), "--oof-preset", "nonexistent"]) == 2


def test_the_average_anchor_keeps_a_fusion_learnt_on_few_studies_near_the_planes_average(trained, phantom_data,
                                                                                       tmp_path):
    preset = TrainingPreset.load("smoke")
    preset = replace(preset, fusion=replace(preset.fusion, epochs=2, iterations_per_epoch=5, learning_rate=0.01))
    volumes = collect_volumes([phantom_data], preset, tmp_path / "cache")["fusion"]
    inputs = fusion_inputs(Segmenter.load(trained[1]).plane_models, volumes, preset.spacing_mm)
    average = dict(network("fusion", preset, None).named_parameters())

    def distance(anchor: float) -> float:
        anchored = replace(preset, fusion=replace(preset.fusion, average_anchor=anchor))
        model, _ = fit_fusion(inputs, volumes, anchored, tmp_path / f"fusion_{anchor}.ckpt")
        return sum(float(((w - average[n]) ** 2).sum()) for n, w in model.named_parameters())

    free, anchored = distance(0.0), distance(100.0)
    assert free > 0 and anchored < free / 4


def test_evaluate_reports_every_model_per_class(trained, phantom_data, tmp_path):
    _, model = trained
    out = tmp_path / "results.json"
    assert cli.main(["evaluate", "--data", str(phantom_data), "--weights", str(model), "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["subjects_evaluated"] == 2
    for m in ("sagittal", "coronal", "axial", "ensemble"):
        assert 0.0 <= results["summary"][m]["disc"] <= 1.0
        assert "vertebral_body" in results["summary"][m]
    assert "L5-S1" in results["per_level"]["ensemble"]


def test_new_subjects_of_a_split_set_are_scored_as_unseen_and_never_trained_on(trained, phantom_data, tmp_path):
    # new studies from a known source (a set the split names, subjects it does not) are unseen data
    from lumbarseg.io import manifest

    entries = []
    for i, e in enumerate(manifest.read_manifest(phantom_data)):
        for path in (e.image, e.label):
            (tmp_path / path.name).symlink_to(path)
        entries.append(replace(e, set="lumbar_vb_t2", subject=f"new{i}", image=tmp_path / e.image.name,
                               label=tmp_path / e.label.name))
    manifest.write_manifest(tmp_path, entries)
    results = evaluate(trained[1], tmp_path)
    assert results["subjects_evaluated"] == 2 and {s["group"] for s in results["subjects"]} == {"unseen"}
    assert evaluate(trained[1], tmp_path, all_subjects=True)["subjects_evaluated"] == 2
    from lumbarseg.training import collect_volumes

    volumes = collect_volumes([tmp_path], replace(TrainingPreset.load("smoke"), phantoms=PhantomDraw(train=1, fusion=0, seed=5)),
                              tmp_path / "cache")
    assert [v.key.split("/")[0] for v in volumes["train"]] == ["phantom"]  # the one generated phantom only
    both = {"lumbar_vb_t2": {"train": ["new0"], "fusion": ["new0"], "holdout": []}}  # as an AL round lists a set's only study
    volumes = collect_volumes([tmp_path], replace(TrainingPreset.load("smoke"), phantoms=PhantomDraw(train=0, fusion=0, seed=5)),
                              tmp_path / "cache", both)
    assert [v.key for v in volumes["train"]] == [v.key for v in volumes["fusion"]] == ["lumbar_vb_t2/new0"]


def test_preset_phantoms_are_rendered_once_per_cache(tmp_path, monkeypatch, phantom_data):
    rendered = []
    generate = phantom.generate
    monkeypatch.setattr(phantom, "generate", lambda seed, **kw: rendered.append(seed) or generate(seed, **kw))
    preset = replace(TrainingPreset.load("smoke"), phantoms=PhantomDraw(train=1, fusion=0, seed=5))
    first = collect_volumes([phantom_data], preset, tmp_path / "cache")["train"][-1]
    again = collect_volumes([phantom_data], preset, tmp_path / "cache")["train"][-1]
    assert rendered == [5]  # the second run read the cache
    assert again.key == first.key and np.array_equal(again.image, first.image) and np.array_equal(again.target, first.target)
    other = replace(preset, phantoms=PhantomDraw(train=1, fusion=0, seed=5, hernia_probability=0.9))
    collect_volumes([phantom_data], other, tmp_path / "cache")
    assert rendered == [5, 5]  # another draw of the same seed is another phantom


def test_bad_training_input_names_the_file(tmp_path):
    with pytest.raises(StudyError, match="no manifest.csv"):
        train(TrainingPreset.load("smoke"), [tmp_path], tmp_path / "run")
    (tmp_path / "manifest.csv").write_text("set,subject,image,label,modality,structures\nx,1,gone.nii.gz,l.nii.gz,t2w,1=disc\n")
    with pytest.raises(StudyError, match="gone.nii.gz: file not found"):
        train(TrainingPreset.load("smoke"), [tmp_path], tmp_path / "run")
    with pytest.raises(ConfigError, match="no such training preset"):
        TrainingPreset.load("nonexistent")


def test_bad_evaluation_input_names_the_file(trained, tmp_path):
    _, model = trained
    with pytest.raises(StudyError, match="no manifest.csv"):
        evaluate(model, tmp_path)
    study = phantom.generate(41, modalities=("t2w",))
    io.save_image(study.primary, tmp_path / "img.nii.gz")
    io.save_label(np.zeros((4, 5, 6), np.uint8), np.eye(4), tmp_path / "lab.nii.gz")
    (tmp_path / "manifest.csv").write_text("set,subject,image,label,modality,structures\nx,1,img.nii.gz,lab.nii.gz,t2w,1=disc\n")
    with pytest.raises(StudyError, match="lab.nii.gz: .*does not match"):
        evaluate(model, tmp_path)


def test_set_weights_set_how_often_each_set_is_drawn():
    def volume(key: str, value: float) -> datasets.TrainingVolume:
        target = np.zeros((8, 8, 8), np.uint8)
        target[2:6, 2:6, 2:6] = 1
        extent = datasets.class_extents(target, {1})
        return datasets.TrainingVolume(key, np.full((3, 8, 8, 8), value, np.float32), target, extent, 1.0)

    preset = replace(TrainingPreset.load("smoke"), input_size=8, augment_probability=0.0, batch_size=1,
                     iterations_per_epoch=400)
    volumes = [volume("real/a", 1.0), volume("phantom/b", 2.0)]
    for weights, share in (({}, 0.5), ({"phantom": 3.0}, 0.75)):
        data = SliceDataset(volumes, "sagittal", replace(preset, set_weights=weights), epoch=0)
        drawn = [float(data[i][0].max()) for i in range(len(data))]
        assert set(drawn) == {1.0, 2.0}
        assert abs(drawn.count(2.0) / len(drawn) - share) < 0.07


def test_fusion_patches_are_drawn_study_by_study_or_set_by_set():
    target = np.zeros((8, 8, 8), np.uint8)
    volumes = [datasets.TrainingVolume(key, np.zeros((3, 8, 8, 8), np.float32), target,
                                       datasets.class_extents(target, set()), 1.0)
               for key in ("real/a", "phantom/b", "phantom/c")]
    channels = 3 * (tissues.NUM_TISSUES + 1)
    inputs = [np.full((channels, 8, 8, 8), value, np.float16) for value in (1.0, 2.0, 3.0)]
    preset = TrainingPreset.load("smoke")
    for balance, real_share in ((False, 1 / 3), (True, 1 / 2)):
        fusion = replace(preset.fusion, patch=8, batch_size=1, iterations_per_epoch=600, balance_sets=balance)
        data = PatchDataset(inputs, volumes, replace(preset, fusion=fusion), epoch=0)
        drawn = [float(data[i][0].max()) for i in range(len(data))]
        assert set(drawn) == {1.0, 2.0, 3.0}
        assert abs(drawn.count(1.0) / len(drawn) - real_share) < 0.06


def test_class_centred_slices_show_a_rare_class_in_their_crop():
    target = np.zeros((24, 24, 24), np.uint8)
    target[4:20, 4:20, 4:20] = 1  # a large class
    target[21:23, 21:23, 21:23] = 8  # a rare one in a corner, 8 voxels
    volume = datasets.TrainingVolume("phantom/a", np.zeros((3, 24, 24, 24), np.float32), target,
                                     datasets.class_extents(target, {1, 8}), 1.0)
    preset = replace(TrainingPreset.load("smoke"), input_size=12, augment_probability=0.0, batch_size=1,
                     iterations_per_epoch=200)

    def share_with_rare(fraction: float, centre_weights: dict | None = None) -> float:
        data = SliceDataset([volume], "axial", replace(preset, class_centred_fraction=fraction,
                                                        centre_weights=centre_weights or {}), epoch=0)
        rare = [bool((data[i][1][8] & (data[i][1].sum(0) == 1)).any()) for i in range(len(data))]
        return sum(rare) / len(rare)

    assert share_with_rare(0.0) < 0.05
    assert 0.4 < share_with_rare(1.0) < 0.6  # half the draws pick the rare class, always in the crop
    rare_name = tissues.TISSUE_NAMES[8]
    assert 0.85 < share_with_rare(1.0, {rare_name: 9.0}) < 0.95  # nine draws in ten


def test_a_preset_weighting_an_unknown_tissue_names_the_file(tmp_path):
    data = json.loads((REPO / "configs" / "training" / "smoke.json").read_text())
    data["class_weights"] = {"sacrum": 5.0, "coccyx": 3.0}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="coccyx") as error:
        TrainingPreset.load(path)
    assert str(path) in str(error.value)
    data["class_weights"] = {}
    data["centre_weights"] = {"coccyx": 3.0}
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="centre_weights names unknown tissue.*coccyx"):
        TrainingPreset.load(path)
    data["centre_weights"] = {}
    data["fusion"]["class_weights"] = {"coccyx": 3.0}
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="fusion.class_weights names unknown tissue.*coccyx"):
        TrainingPreset.load(path)
