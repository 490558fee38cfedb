"""``evaluate-findings``: Table 5/6 statistics and level-naming accuracy against truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import load_module
from lumbarseg import cli, findings, measure, phantom, pipeline, tissues
from lumbarseg.analysis import analyse
from lumbarseg.datasets import tissue_target
from lumbarseg.io.study import Series, Study
from lumbarseg.pipeline import Segmentation, Segmenter


def test_detection_statistics_count_like_table_5():
    row = findings.detection([True, True, False, False, False], [True, False, False, True, False])
    assert (row["tp"], row["fn"], row["fp"], row["tn"]) == (1, 1, 1, 2)
    assert row["sensitivity"] == 0.5 and row["specificity"] == pytest.approx(2 / 3, abs=1e-4)
    assert row["precision"] == 0.5 and row["accuracy"] == 0.6
    assert findings.detection([], [])["sensitivity"] is None


def test_level_naming_is_scored_against_the_label_names():
    label = np.zeros((10, 10, 100), np.uint8)
    label[2:8, 2:8, 10:20] = 1  # L5-S1
    label[2:8, 2:8, 50:60] = 2  # L4-L5
    series = Series(np.zeros((1, 10, 10, 100), np.float32), np.eye(4), ("t2w",), label=label)
    study = Study([series], {1: "L5-S1", 2: "L4-L5"})

    def report(names):
        return {"levels": [{"centre_mm": [4.5, 4.5, z], "level": n} for z, n in zip((14.5, 54.5), names)], "vertebrae": []}

    assert findings.score_levels(report(["L5-S1", "L4-L5"]), study) == {"correct": 2, "total": 2, "errors": []}
    wrong = findings.score_levels(report(["L4-L5", "L3-L4"]), study)
    assert wrong["correct"] == 0 and "L5-S1 named L4-L5" in wrong["errors"]
    missed = findings.score_levels({"levels": report(["L5-S1", "L4-L5"])["levels"][:1], "vertebrae": []}, study)
    assert missed["correct"] == 1 and missed["errors"] == ["L4-L5 not found"]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantoms")
    phantom.write_phantoms(out, 2, seed=611, spacing=(2.5, 1.5, 1.5), hernia_levels=("L4-L5", "L2-L3"))
    return out


def test_evaluate_findings_on_phantoms_from_ground_truth(phantoms, tmp_path):
    out = tmp_path / "findings.json"
    assert cli.main(["evaluate-findings", "--data", str(phantoms), "--out", str(out), "--reports", str(tmp_path / "r")]) == 0
    results = json.loads(out.read_text())
    assert results["source"] == "truth" and results["phantoms"] == 2
    per_disc = results["herniation"]["per_disc"]
    assert per_disc["tp"] + per_disc["fn"] == 4  # two hernias per phantom, both in view
    assert per_disc["sensitivity"] == 1.0 and per_disc["specificity"] == 1.0
    per_slice = results["herniation"]["per_slice"]
    assert per_slice["tp"] > 4 and per_slice["sensitivity"] > 0.6 and per_slice["specificity"] > 0.95
    assert results["top_point"]["n"] == 4 and results["top_point"]["mae_mm"] < 3.0
    assert results["levels"]["accuracy"] == 1.0 and results["levels"]["total"] >= 2 * 12
    assert len(list((tmp_path / "r").glob("*.json"))) == 2


def test_model_findings_are_the_reports_of_analyse(phantoms, monkeypatch):
    """``--source model`` reports through :func:`lumbarseg.analysis.analyse`, as ``lumbarseg infer``
    and the MONAI Label app do: a model that answers with the truth scores as the truth does."""

    class Perfect:
        def segment(self, series: Series) -> Segmentation:
            return Segmentation(tissue_target(series.label, tissues.STUDY_LABELS), {}, {}, np.zeros(0))

    analysed = []
    monkeypatch.setattr(Segmenter, "load", classmethod(lambda cls, weights: Perfect()))
    monkeypatch.setattr(findings, "analyse", lambda study, segment: analysed.append(study.subject) or analyse(study, segment))
    model = findings.evaluate_findings(phantoms, "model", weights="perfect")
    truth = findings.evaluate_findings(phantoms, "truth")
    assert len(analysed) == 2 and model["source"] == "model"
    assert {k: v for k, v in model.items() if k not in ("source", "weights")} == \
        {k: v for k, v in truth.items() if k not in ("source", "weights")}


def test_evaluate_findings_bad_input_is_a_message(tmp_path, capsys):
    assert cli.main(["evaluate-findings", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "f.json")]) == 2
    assert "manifest.csv" in capsys.readouterr().err
    phantom.write_phantoms(tmp_path / "p", 1, seed=612, spacing=(4.0, 2.0, 2.0))
    code = cli.main(["evaluate-findings", "--data", str(tmp_path / "p"), "--out", str(tmp_path / "f.json"),
                     "--source", "model", "--weights", str(tmp_path / "no_weights")])
    assert code == 2 and "model.json" in capsys.readouterr().err



def test_the_per_level_table_marks_what_the_report_doubts():
    """Each level beside its truth: a finding the report holds with low confidence says so, and
    disagreement with the truth is shown whatever the confidence."""
    from rich.console import Console

    graded = {"set": "spider_t2_space", "subject": "57", "gradings": [
        {"level": "L4-L5", "herniated": True, "by_order": False, "confidence": "low"},
        {"level": "L3-L4", "herniated": False, "by_order": False, "confidence": "high"},
        {"level": "L2-L3", "herniated": False, "by_order": None, "confidence": None}]}
    console = Console(record=True, width=200)
    findings._print_per_level(console, {"source": "model", "subjects": [graded]})
    rows = {line.split("│")[1].strip(): line for line in console.export_text().splitlines()
            if line.count("│") > 3 and line.split("│")[1].strip().startswith("L")}
    assert "no (low confidence)" in rows["L4-L5"] and "disagree" in rows["L4-L5"]
    assert "low confidence" not in rows["L3-L4"] and "disagree" not in rows["L3-L4"]
    assert "no disc found" in rows["L2-L3"]


def test_the_class_scale_sweep_reuses_the_networks_and_chooses_by_the_specificity_target():
    """scripts/tune_class_scale.py: its cache runs the networks once per series and gives the
    classes a segmenter with that class_scale gives; the choice is the most sensitive factor
    reaching the specificity target among those that keep the stenosis grades, else the best
    Youden index."""
    tune = load_module("scripts/tune_class_scale.py")
    series = Series(np.zeros((1, 12, 20, 16), np.float32), np.diag([4.0, 1.5, 1.5, 1.0]), ("t2w",), "vol")
    hernia, disc = tissues.TISSUE_NAMES.index("hernia"), tissues.TISSUE_NAMES.index("disc")

    class Networks:  # stands in for Segmenter.predict: hernia just ahead of disc everywhere
        spacing, calls = 3.0, 0

        def predict(self, image):
            self.calls += 1
            p = np.zeros((tissues.NUM_TISSUES, *image.shape[1:]), np.float32)
            p[hernia], p[disc] = 0.55, 0.45
            return {"sagittal": p}, p, None

    networks = Networks()
    cached = tune.CachedSegmenter(networks)
    for factor, expected in ((1.0, hernia), (0.5, disc), (1.0, hernia)):
        cached.scale = pipeline.class_scale_vector({"hernia": factor}, tissues.TISSUE_NAMES)
        segmentation = cached.segment(series)
        assert (segmentation.classes == expected).all() and (segmentation.plane_classes["sagittal"] == hernia).all()
    assert networks.calls == 1

    def row(factor, sensitivity, specificity, stenosis):
        return {"factor": factor, "phantoms": {"stenosis_grade_accuracy": stenosis, "herniation_per_disc": {
            "sensitivity": sensitivity, "specificity": specificity, "youden": sensitivity + specificity - 1}}}

    rows = [row(0.3, 0.60, 0.97, 0.82), row(0.5, 0.66, 0.955, 0.82), row(0.7, 0.70, 0.96, 0.70), row(1.0, 0.71, 0.91, 0.82)]
    assert tune.choose(rows, slack=0.01, min_specificity=0.95) == 0.5  # 0.7 loses stenosis grades
    assert tune.choose(rows, slack=0.01, min_specificity=0.99) == 1.0  # none reaches it: best Youden


def test_the_hernia_class_sweep_re_decides_discs_from_their_evidence():
    """scripts/tune_hernia_class.py: every setting decides each disc as herniation_decision
    would (a disc failing the hernia-class rule falls through to the corner line)."""
    tune = load_module("scripts/tune_hernia_class.py")
    big = {"hernia_class_mm3": 200.0, "hernia_class_reach_mm": 6.0}
    small = {"hernia_class_mm3": 30.0, "hernia_class_reach_mm": 4.0}
    line = {"hernia_class_mm3": 0.0, "corner_line_profile": [[x, 5.0 if x == 0 else 0.5] for x in range(-4, 5)]}
    rows = {"model": [(True, big), (False, small), (True, line), (True, None)]}  # None: no level matched
    results = {(r["hernia_class_mm3"], r["hernia_class_reach_mm"]): r["model"]
               for r in tune.sweep(rows, measure.load_config().herniation)}
    assert (results[(20.0, 3.5)]["tp"], results[(20.0, 3.5)]["fp"]) == (2, 1)  # the small one called too
    assert (results[(40.0, 3.5)]["tp"], results[(40.0, 3.5)]["fp"]) == (2, 0)
    assert (results[(200.0, 7.0)]["tp"], results[(200.0, 7.0)]["fn"]) == (1, 2)  # the corner line's disc stays
