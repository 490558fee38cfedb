"""Active-learning simulation: strategies pick new pool studies, the curve is written and plotted."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lumbarseg import active_learning as al
from lumbarseg import cli, datasets, disagreement, phantom, tissues
from lumbarseg.training import SliceDataset, TrainingPreset
from lumbarseg.io import manifest
from lumbarseg.io.study import StudyError
from lumbarseg.pipeline import Segmenter

from conftest import untrained_weights

ROUNDS, K, INITIAL = 2, 1, 2


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> tuple[Path, dict]:
    """Six small phantoms (3 mm voxels): four in the pool, two held out."""
    folder = tmp_path_factory.mktemp("al_phantoms")
    phantom.write_phantoms(folder, 6, seed=41, modalities=("t2w",), spacing=(3.0, 3.0, 3.0))
    subjects = [e.subject for e in manifest.read_manifest(folder)]
    return folder, {"phantom": {"train": subjects[:3], "fusion": subjects[3:4], "holdout": subjects[4:]}}


def test_disagreement_picks_the_highest_scores_and_random_is_seeded():
    candidates = ["s/a", "s/b", "s/c", "s/d", "s/e"]
    scores = {"s/a": 0.1, "s/b": 0.5, "s/c": 0.5, "s/d": 0.9, "s/e": 0.0}
    assert al.choose("disagreement", candidates, 3, scores, np.random.default_rng(0)) == ["s/d", "s/b", "s/c"]
    draws = [al.choose("random", candidates, 2, None, np.random.default_rng([3, 1, 1])) for _ in range(2)]
    assert draws[0] == draws[1] and len(set(draws[0])) == 2 and set(draws[0]) <= set(candidates)
    others = {tuple(al.choose("random", candidates, 2, None, np.random.default_rng([s, 1, 1]))) for s in range(10)}
    assert len(others) > 1


def test_round_split_puts_every_fourth_labelled_study_in_fusion(tmp_path):
    entries = [manifest.ManifestEntry(name, f"{i:02d}", tmp_path / f"{name}{i}.nii.gz", tmp_path / f"{name}{i}_l.nii.gz",
                                      ("t2w",), {1: "disc"}) for name in ("s", "t") for i in range(10)]
    labelled = [f"s/{i:02d}" for i in (5, 1, 7, 2, 9, 0)] + ["t/04"]
    split = al.round_split(entries, labelled)
    assert split["s"]["fusion"] == ["02"]  # the 4th labelled
    assert sorted(split["s"]["train"]) == ["00", "01", "05", "07", "09"]
    assert sorted(split["s"]["holdout"]) == ["03", "04", "06", "08"]  # unlabelled: never read by training
    assert split["t"]["train"] == split["t"]["fusion"] == ["04"]  # its set's only study trains both
    assert al.round_split(entries, labelled[:2])["s"]["fusion"] == ["01"]  # fewer than 4: the last one
    crops = [manifest.ManifestEntry("ivdm3seg_crops", "A1_volume1", tmp_path / "c.nii.gz", tmp_path / "l.nii.gz",
                                    ("fat", "inn", "opp"), {1: "disc"})]
    with pytest.raises(StudyError, match="split by a unit larger than one study"):
        al.round_split(crops, ["ivdm3seg_crops/A1_volume1"])


def test_bad_settings_are_refused_before_training(phantoms, tmp_path):
    folder, split = phantoms
    with pytest.raises(al.ActiveLearningError, match="unknown strategy 'uncertainty'"):
        al.simulate([folder], "uncertainty", 1, 1, tmp_path, split=split)
    with pytest.raises(al.ActiveLearningError, match="pool has only 4"):
        al.simulate([folder], "random", 1, 5, tmp_path, initial=2, split=split)
    no_holdout = {"phantom": {**split["phantom"], "holdout": [], "train": split["phantom"]["train"] +
                              split["phantom"]["holdout"]}}
    with pytest.raises(StudyError, match="no holdout studies"):
        al.simulate([folder], "random", 1, 1, tmp_path, split=no_holdout)
    assert not list(tmp_path.iterdir())  # nothing trained
    result = cli.main(["al-simulate", "--compare", str(tmp_path / "missing.json"), "--plot", str(tmp_path / "x.png")])
    assert result == 2


def test_cli_needs_every_simulation_argument(capsys):
    with pytest.raises(SystemExit):
        cli.main(["al-simulate", "--data", "x", "--strategy", "random"])
    assert "--rounds, --per-round, --out" in capsys.readouterr().err


def test_epistemic_entropy_is_seeded_and_bounded(phantoms, tmp_path):
    folder, _ = phantoms
    segmenter = Segmenter.load(untrained_weights(tmp_path / "w", spacing=6.0))
    series = manifest.load_entry(manifest.read_manifest(folder)[0]).primary
    a, b = (al.epistemic_entropy(segmenter, series, samples=3, seed=5) for _ in range(2))
    assert a == b and 0.0 < a <= math.log2(len(segmenter.info.tissues))
    assert al.epistemic_entropy(segmenter, series, samples=3, seed=6) != a  # dropout is on
    with pytest.raises(al.ActiveLearningError, match="at least 2"):
        al.epistemic_entropy(segmenter, series, samples=1)


@pytest.fixture(scope="module")
def curves(phantoms, tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    """Every strategy, 2 rounds of 1 study on the smoke preset, in one work folder (the
    identical first round is trained once)."""
    folder, split = phantoms
    work = tmp_path_factory.mktemp("al_work")
    return work, {s: al.simulate([folder], s, ROUNDS, K, work, initial=INITIAL, preset="smoke",
                                 finetune_preset="smoke", split=split, mc_samples=2) for s in al.STRATEGIES}


@pytest.mark.slow
def test_every_strategy_labels_k_new_pool_studies_per_round(curves, phantoms):
    _, split = phantoms
    holdout = {f"phantom/{s}" for s in split["phantom"]["holdout"]}
    for strategy, curve in curves[1].items():
        rounds = curve["rounds"]
        assert [r["n_labelled"] for r in rounds] == [INITIAL + K * i for i in range(ROUNDS + 1)]
        picked = [k for r in rounds for k in r["chosen"]]
        assert len(picked) == len(set(picked)) == INITIAL + ROUNDS * K, strategy  # never twice
        assert not set(picked) & holdout, strategy
        assert set(curve["holdout"]) == holdout
        for r in rounds[1:]:
            assert len(r["chosen"]) == K
            if strategy != "random":
                assert set(r["scores"]).isdisjoint(picked[: r["n_labelled"] - K])
                assert set(r["chosen"]) <= set(r["scores"])
            if strategy not in ("random", "disagreement_diverse"):  # the highest-scored unlabelled study
                assert r["chosen"] == sorted(r["scores"], key=lambda k: (-r["scores"][k], k))[:K]
        for r in rounds:
            assert 0.0 <= r["dice"]["mean"] <= 1.0 and {"disc", "vertebral_body", "dural_sac"} <= set(r["dice"])
            assert r["dice_by_set"]["phantom"] == pytest.approx({c: d for c, d in r["dice"].items() if c != "mean"})
            assert set(r["holdout_dice"]) == holdout and "forgotten" in r
    first = {s: c["rounds"][0] for s, c in curves[1].items()}
    assert len({json.dumps(r["dice"]) for r in first.values()}) == 1  # same start for every strategy



def _curve(strategy: str, seed: int, dice: list[float]) -> dict:
    return {"strategy": strategy, "seed": seed,
            "rounds": [{"n_labelled": 3 + 2 * r, "dice": {"mean": d}} for r, d in enumerate(dice)]}


def test_label_ratio_averages_seeds_and_interpolates_between_rounds(tmp_path):
    curves = [_curve("random", 0, [0.4, 0.5, 0.6]), _curve("random", 1, [0.4, 0.5, 0.8]),
              _curve("disagreement", 0, [0.4, 0.8, 0.8]), _curve("disagreement", 1, [0.4, 0.6, 0.9])]
    ratio = al.label_ratio(curves)
    assert ratio["seeds"] == [0, 1] and ratio["baseline_final_dice"] == pytest.approx(0.7)
    # mean disagreement curve 0.4, 0.7, 0.85: reaches random's final 0.7 at exactly 5 of random's 7
    assert ratio["labelled_to_reach_it"] == pytest.approx(5.0) and ratio["ratio"] == pytest.approx(5 / 7)
    # seed 0: 0.6 reached between 3 (0.4) and 5 (0.8) labelled, at 4; seed 1: 0.8 between 5 (0.6) and 7 (0.9)
    assert ratio["ratio_per_seed"] == {0: pytest.approx(4 / 7), 1: pytest.approx((5 + 2 * 2 / 3) / 7)}
    assert al.labels_needed([3, 5, 7], [0.4, 0.5, 0.6], 0.9) is None
    paths = []
    for i, c in enumerate(curves):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(c))
    summary = tmp_path / "summary.json"
    assert cli.main(["al-simulate", "--compare", *map(str, paths), "--plot", str(tmp_path / "c.png"),
                     "--summary", str(summary)]) == 0
    written = json.loads(summary.read_text())
    assert written["label_ratio"]["disagreement"]["ratio"] == pytest.approx(5 / 7)
    assert written["curves"]["mean"]["random"]["dice"] == pytest.approx([0.4, 0.5, 0.7])
    with pytest.raises(al.ActiveLearningError, match="labelled-study counts"):
        al.mean_curves([*curves, _curve("random", 2, [0.4, 0.5])])


@pytest.mark.slow
def test_cli_writes_curve_and_plots_and_random_is_reproducible(curves, phantoms, tmp_path):
    work, previous = curves
    folder, split = phantoms
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"sets": split}))
    out = tmp_path / "random.json"
    assert cli.main(["al-simulate", "--data", str(folder), "--strategy", "random", "--rounds", str(ROUNDS),
                     "--per-round", str(K), "--initial", str(INITIAL), "--preset", "smoke",
                     "--finetune-preset", "smoke", "--split", str(split_file),
                     "--work", str(work), "--out", str(out)]) == 0  # same seed, same work: resumes, same picks
    curve = json.loads(out.read_text())
    assert [r["chosen"] for r in curve["rounds"]] == [r["chosen"] for r in previous["random"]["rounds"]]
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    paths = []
    for strategy, c in previous.items():
        paths.append(tmp_path / f"{strategy}.json")
        al.save_curve(c, paths[-1])
    plot = tmp_path / "compare.png"
    assert cli.main(["al-simulate", "--compare", *map(str, paths), "--plot", str(plot)]) == 0
    assert plot.read_bytes()[:4] == b"\x89PNG"


# --- issue 15: forgetting, the fine-tuning round, disagreement variants -------------------------


def test_forgotten_flags_only_a_class_that_falls_to_zero():
    before = {"disc": 0.78, "vertebral_body": 0.82, "dural_sac": 0.04, "mean": 0.55}
    assert al.forgotten(before, {"disc": 0.0, "vertebral_body": 0.85, "dural_sac": 0.0, "mean": 0.3}) == ["disc"]
    assert al.forgotten(before, {"disc": 0.3, "vertebral_body": 0.01, "dural_sac": 0.0, "mean": 0.1}) == \
        ["vertebral_body"]  # dural_sac never had it (0.04 <= HAD)
    assert al.forgotten(before, {"disc": 0.5, "vertebral_body": 0.6, "dural_sac": 0.0, "mean": 0.55}) == []
    assert al.forgotten({}, {"disc": 0.0}) == []


def test_simulate_flags_a_forgotten_class_in_the_curve_and_the_log(phantoms, tmp_path, monkeypatch, caplog):
    """The round models are stubs: round 0 'has' the discs, round 1 loses them. Later rounds
    must fine-tune the previous model with the fine-tuning preset."""
    folder, split = phantoms
    weights = untrained_weights(tmp_path / "w", spacing=6.0)
    calls = []

    def fake_train(preset, data_dirs, out, *, init=None, split=None):
        calls.append({"preset": preset, "init": init, "split": split})
        return weights

    def fake_dice(prediction, study):
        return {"disc": 0.8 if len(calls) == 1 else 0.0, "vertebral_body": 0.5}

    monkeypatch.setattr(al, "train", fake_train)
    monkeypatch.setattr(al, "study_dice", fake_dice)
    with caplog.at_level("WARNING", logger="lumbarseg.al"):
        curve = al.simulate([folder], "random", 2, 1, tmp_path / "work", initial=2, split=split)
    assert [r["forgotten"] for r in curve["rounds"]] == [[], ["disc"], []]  # round 2: nothing left to lose
    assert curve["forgotten"] == [{"round": 1, "class": "disc", "before": 0.8, "after": 0.0}]
    assert "FORGOTTEN: random seed 0 round 1 lost disc" in caplog.text
    first, later = TrainingPreset.load("al_round"), TrainingPreset.load("al_finetune")
    assert [c["preset"] for c in calls] == [first, later, later]
    assert calls[0]["init"] is None and calls[1]["init"] == weights


def test_fine_tuning_preset_is_gentler_and_class_balanced_on_the_same_grid():
    first, later = TrainingPreset.load("al_round"), TrainingPreset.load("al_finetune")
    assert (later.model, later.spacing_mm, later.input_size) == (first.model, first.spacing_mm, first.input_size)
    assert later.learning_rate <= first.learning_rate / 2
    assert later.fusion.learning_rate <= first.fusion.learning_rate / 4
    assert later.class_centred_fraction > 0 and later.fusion.balance_sets


def test_round_planes_score_the_whole_vertebra_as_one_group_and_the_shipped_chain_does_not():
    # Seed 4 of the third benchmark run: a round started from three SPIDER studies never learnt
    # the whole vertebra from the cross-entropy alone, and the next round lost it.
    bone = tuple(t.index for t in tissues.classes_of("vertebra"))
    for name in ("al_round", "al_finetune"):
        preset = TrainingPreset.load(name)
        assert preset.loss().groups == (bone,) and preset.loss("fusion").groups == ()
    assert TrainingPreset.load("lite").loss().groups == ()


def _volume(key: str, cls: str, shape=(24, 24, 24)) -> datasets.TrainingVolume:
    target = np.zeros(shape, np.uint8)
    target[8:16, 8:16, 10:13] = tissues.TISSUE_NAMES.index(cls)
    image = np.random.default_rng(0).random((3, *shape)).astype(np.float32)
    extent = np.full((tissues.NUM_TISSUES, 2), (1, 0))
    extent[tissues.TISSUE_NAMES.index(cls)] = (10, 12)
    return datasets.TrainingVolume(key=key, image=image, target=target, extent=extent, spacing=2.0)


def test_fine_tuning_replays_a_class_only_one_earlier_study_labels():
    """Seven vertebra-only studies were labelled after the one disc study (the seed-2 round that
    lost the discs): the fine-tuning draw still shows discs in a good share of its slices."""
    volumes = [_volume("discs/a", "disc")] + [_volume(f"bodies/{i}", "vertebral_body") for i in range(7)]
    preset = TrainingPreset.load("al_finetune")
    disc = tissues.TISSUE_NAMES.index("disc")
    data = SliceDataset(volumes, "sagittal", preset, epoch=0)
    sure_disc = [bool((allowed[disc] & (allowed.sum(0) == 1)).any()) for _, allowed in (data[i] for i in range(60))]
    assert np.mean(sure_disc) >= 0.3


def test_fusion_group_sees_every_labelled_set():
    # The seed-2 run whose round 2 lost the discs: the old rule (every 4th labelled) gave the
    # fusion lumbar_vb_t2/07 alone, so the fusion never saw a disc label.
    labelled = ["lumbar_ivd_t2/25", "lumbar_ivd_t2/46", "lumbar_vb_t2/10", "lumbar_vb_t2/07", "lumbar_vb_t2/14",
                "lumbar_vb_t2/12", "lumbar_vb_t2/13"]
    assert al.fusion_group(labelled) == ({"lumbar_ivd_t2/46", "lumbar_vb_t2/12"}, set())
    # The random seed-2 run that lost the dural sac: SPIDER's only study trained the planes alone.
    assert al.fusion_group(labelled[:3] + ["spider_t2_space/5"]) == ({"lumbar_ivd_t2/46"},
                                                                      {"lumbar_vb_t2/10", "spider_t2_space/5"})
    assert al.fusion_group(["a/1", "b/1", "c/1"]) == (set(), {"a/1", "b/1", "c/1"})


def _planes(*maps: np.ndarray) -> dict[str, np.ndarray]:
    return dict(zip(("sagittal", "coronal", "axial"), maps))


def test_class_rates_and_disc_levels_find_where_the_planes_disagree():
    disc, body = tissues.TISSUE_NAMES.index("disc"), tissues.TISSUE_NAMES.index("vertebral_body")
    agreed = np.zeros((40, 10, 10), np.uint8)
    agreed[2:8], agreed[12:18], agreed[22:28] = body, disc, disc  # a body, two discs
    noisy = agreed.copy()
    noisy[24:26] = 0  # one plane misses half of the lower disc
    rates = disagreement.class_rates(_planes(agreed, agreed, noisy))
    assert rates["vertebral_body"] == 0.0 and rates["disc"] == pytest.approx(20 * 10 / (12 * 100))
    levels = disagreement.disc_level_rates(_planes(agreed, agreed, noisy), agreed)
    assert sorted(levels) == [0.0, pytest.approx(200 / 600)]  # the lower disc's box: 2 of its 6 rows missed
    assert disagreement.disc_level_rates(_planes(agreed, agreed, agreed), np.zeros_like(agreed)) == []

    class Seg:  # what score() reads of a Segmentation
        plane_classes, classes = _planes(agreed, agreed, noisy), agreed

    weighted = (2 * rates["disc"] + 1 * 0.0) / 3
    assert disagreement.class_level(Seg) == pytest.approx(0.5 * (weighted + max(levels)))
    assert disagreement.score(Seg, "class_level") == disagreement.class_level(Seg)
    # held-out error weights: a class the model already gets right weighs nothing
    assert disagreement.error_weighted(Seg, {"disc": 0.0, "vertebral_body": 0.5}) == 0.0
    assert disagreement.error_weighted(Seg, {"disc": 0.4, "vertebral_body": 0.0}) == pytest.approx(rates["disc"])
    assert disagreement.error_weighted(Seg, {}) == disagreement.class_rate(Seg.plane_classes)


def test_diverse_choice_skips_a_near_identical_study_of_the_same_set():
    scores = {"a/1": 0.9, "a/2": 0.89, "b/1": 0.5, "a/3": 0.1, "a/4": 0.05}
    profiles = {"a/1": {"disc": 0.5}, "a/2": {"disc": 0.52}, "b/1": {"disc": 0.5}, "a/3": {"disc": 0.1},
                "a/4": {"disc": 0.9}}
    rng = np.random.default_rng(0)
    assert al.choose("disagreement", list(scores), 2, scores, rng) == ["a/1", "a/2"]
    assert al.choose("disagreement_diverse", list(scores), 2, scores, rng, profiles) == ["a/1", "b/1"]
    # an already labelled twin counts too: a/2 (rank 1, its twin a/1 labelled) waits behind b/1 (rank 2/3)
    assert al.choose("disagreement_diverse", ["a/2", "b/1", "a/3", "a/4"], 1, scores, rng, profiles, ["a/1"]) == ["b/1"]
    assert al.choose("disagreement_diverse", ["a/2", "b/1", "a/3", "a/4"], 1, scores, rng, profiles) == ["a/2"]
    assert al.similarity("a/1", "b/1", profiles) == 0.0 and al.similarity("a/1", "a/1", profiles) == 1.0


def test_every_strategy_scores_every_candidate(phantoms, tmp_path):
    folder, _ = phantoms
    segmenter = Segmenter.load(untrained_weights(tmp_path / "w", spacing=6.0))
    entries = manifest.read_manifest(folder)[:2]
    series = {e.key: manifest.load_entry(e).primary for e in entries}
    for strategy in (s for s in al.STRATEGIES if s != "random"):
        scores, profiles = al.score_candidates(strategy, segmenter, list(series), series.get,
                                               errors={"disc": 0.5}, mc_samples=2)
        assert set(scores) == set(series) and all(v >= 0.0 for v in scores.values()), strategy
        assert bool(profiles) == (strategy == "disagreement_diverse"), strategy
