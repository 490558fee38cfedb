"""Active-learning simulation: strategies pick new pool studies, the curve is written and plotted."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lumbarseg import active_learning as al
from lumbarseg import cli, phantom
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
    entries = [manifest.ManifestEntry("s", f"{i:02d}", tmp_path / f"{i}.nii.gz", tmp_path / f"{i}_l.nii.gz",
                                      ("t2w",), {1: "disc"}) for i in range(10)]
    labelled = [f"s/{i:02d}" for i in (5, 1, 7, 2, 9, 0)]
    split = al.round_split(entries, labelled)["s"]
    assert split["fusion"] == ["02"]  # the 4th labelled
    assert sorted(split["train"]) == ["00", "01", "05", "07", "09"]
    assert sorted(split["holdout"]) == ["03", "04", "06", "08"]  # unlabelled: never read by training
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
    return work, {s: al.simulate([folder], s, ROUNDS, K, work, initial=INITIAL, preset="smoke", split=split,
                                 mc_samples=2) for s in al.STRATEGIES}


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
            if strategy != "random":  # the highest-scored unlabelled study
                assert set(r["scores"]).isdisjoint(picked[: r["n_labelled"] - K])
                assert r["chosen"] == sorted(r["scores"], key=lambda k: (-r["scores"][k], k))[:K]
        for r in rounds:
            assert 0.0 <= r["dice"]["mean"] <= 1.0 and {"disc", "vertebral_body"} <= set(r["dice"])
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
    assert json.loads(summary.read_text())["ratio"] == pytest.approx(5 / 7)
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
                     "--per-round", str(K), "--initial", str(INITIAL), "--preset", "smoke", "--split", str(split_file),
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
