"""Which subjects ``evaluate`` and ``evaluate-findings`` score: the split's groups (--groups), the
holdout by default, every subject with --all-subjects."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from lumbarseg import cli, phantom, planes, tissues
from lumbarseg.datasets import tissue_target
from lumbarseg.evaluation import evaluated_entries, scored_groups
from lumbarseg.io import manifest
from lumbarseg.pipeline import Segmentation, Segmenter
from lumbarseg.training import GROUPS, REPO, SPLIT, load_split, subject_unit


def units(entries, set_name: str) -> set[str]:
    return {subject_unit(set_name, e.subject) for e in entries if e.set == set_name}


def test_the_cli_offers_the_split_groups():
    assert cli.SPLIT_GROUPS == GROUPS
    assert all(set(groups) == set(GROUPS) for groups in json.loads(SPLIT.read_text())["sets"].values())


@pytest.mark.parametrize("command", ["evaluate", "evaluate-findings"])
def test_the_help_offering_them_loads_no_torch(command):
    probe = (f"import sys; from lumbarseg import cli\ntry: cli.build_parser().parse_args([{command!r}, '-h'])\n"
             "except SystemExit: pass\nsys.exit('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0 and "--groups GROUP" in result.stdout, result.stderr


@pytest.mark.realdata
def test_groups_select_exactly_the_split_subjects_of_every_real_set(shared_data):
    split = load_split()
    every = manifest.read_manifest(shared_data)
    assert evaluated_entries(shared_data, all_subjects=True) == every
    chosen = evaluated_entries(shared_data, groups=("train", "fusion"))
    holdout = evaluated_entries(shared_data)
    assert evaluated_entries(shared_data, groups=("holdout",)) == holdout
    for set_name, groups in split.items():
        assert units(chosen, set_name) == set(groups["train"]) | set(groups["fusion"]), set_name
        assert units(holdout, set_name) == set(groups["holdout"]), set_name
    assert {e.set for e in every} <= set(split)  # every shared set is in the split: none is scored whole
    assert len(chosen) + len(holdout) == len(every)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """One phantom image filed as four studies: a train, a holdout and an unplaced ("unseen")
    subject of a split set, and a phantom, whose set the split does not name."""
    folder = tmp_path_factory.mktemp("mixed")
    phantom.write_phantoms(folder, 1, seed=73, spacing=(4.0, 2.0, 2.0), modalities=("t2w",))
    (entry,) = manifest.read_manifest(folder)
    groups = load_split()["lumbar_vb_t2"]
    subjects = {"train": groups["train"][0], "holdout": groups["holdout"][0], "unseen": "new1"}
    manifest.write_manifest(folder, [entry, *(replace(entry, set="lumbar_vb_t2", subject=s) for s in subjects.values())])
    return folder, subjects, entry.subject


def scored(entries) -> set[str]:
    return {e.subject for e in entries}


def test_unseen_subjects_go_with_the_holdout_and_phantoms_are_always_scored(mixed):
    folder, subject, ph = mixed
    assert scored(evaluated_entries(folder)) == {subject["holdout"], subject["unseen"], ph}
    assert scored(evaluated_entries(folder, groups=("train", "fusion"))) == {subject["train"], ph}
    assert scored(evaluated_entries(folder, groups=("train", "holdout"))) == {*subject.values(), ph}
    assert scored(evaluated_entries(folder, all_subjects=True)) == {*subject.values(), ph}
    assert scored_groups(("fusion", "train")) == ["train", "fusion"]
    assert scored_groups(all_subjects=True) == [*GROUPS, "unseen"]
    with pytest.raises(ValueError, match="unknown split group"):
        scored_groups(("validation",))


@pytest.mark.parametrize("command", ["evaluate", "evaluate-findings"])
def test_groups_and_all_subjects_together_are_refused(command, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--data", str(tmp_path), "--out", str(tmp_path / "r.json"),
                  "--groups", "train", "--all-subjects"])
    assert exit_.value.code == 2
    assert "--all-subjects: not allowed with argument --groups" in capsys.readouterr().err


class Perfect:
    """A model that answers with the truth, every plane too."""

    def segment(self, series) -> Segmentation:
        classes = tissue_target(series.label, tissues.STUDY_LABELS)
        return Segmentation(classes, {p: classes for p in planes.PLANES}, {}, np.zeros(0))


def test_the_results_record_the_groups_scored(mixed, tmp_path, monkeypatch):
    folder, subject, ph = mixed
    monkeypatch.setattr(Segmenter, "load", classmethod(lambda cls, weights: Perfect()))
    run = {"evaluate": ["--weights", "perfect"], "evaluate-findings": []}
    for command, extra in run.items():
        out = tmp_path / f"{command}.json"
        assert cli.main([command, "--data", str(folder), "--out", str(out), "--groups", "train", *extra]) == 0
        results = json.loads(out.read_text())
        assert results["groups"] == ["train"], command
        assert {s["subject"] for s in results["subjects"]} == {subject["train"], ph}, command
    assert cli.main(["evaluate", "--data", str(folder), "--weights", "perfect", "--out", str(tmp_path / "h.json")]) == 0
    default = json.loads((tmp_path / "h.json").read_text())
    assert default["groups"] == ["holdout", "unseen"] and default["holdout_only"]
    assert not json.loads((tmp_path / "evaluate.json").read_text())["holdout_only"]
