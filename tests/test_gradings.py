"""Real-data findings truth: SPIDER's per-disc gradings and its whole-vertebra masks made
measurable, on the shipped sample patient (samples/spider_57) and on small synthetic cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lumbarseg import gradings, measure, tissues
from lumbarseg.io import manifest
from lumbarseg.io.study import Series, StudyError

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
BODY, SAC = tissues.tissue_of("vertebral_body").index, tissues.tissue_of("dural_sac").index


def test_a_whole_vertebra_is_body_in_front_of_the_canal_and_left_out_behind_it():
    # Identity affine: j is RAS y, which grows anteriorly. The canal at j 10..13; one "vertebra"
    # label in front of it (j 14..20) and one behind it (j 2..9).
    label = np.zeros((6, 24, 8), np.uint8)
    label[:, 10:14, :] = 3  # spinal_canal
    label[1:5, 2:10, 2:6] = 2
    label[1:5, 14:21, 2:6] = 2
    series = Series(np.zeros((1, *label.shape), np.float32), np.eye(4), ("t2w",), label=label)
    classes = gradings.expert_classes(series, {1: "disc", 2: "vertebra", 3: "spinal_canal"})
    assert (classes[:, 10:14, :] == SAC).all()
    assert (classes[1:5, 14:21, 2:6] == BODY).all()
    assert (classes[1:5, 2:10, 2:6] == 0).all()
    assert set(np.unique(classes)) == {0, BODY, SAC}


def test_the_canal_wall_is_taken_per_sagittal_column():
    """One sagittal slice whose canal label reaches forward (a lateral recess, a tilted spine)
    moves the body's back wall in that slice only, not in every slice of the same height."""
    label = np.zeros((6, 24, 8), np.uint8)
    label[:, 10:14, :] = 3  # spinal canal, j 10..13
    label[0, 14:18, :] = 3  # ... reaching to j 17 in slice i = 0
    label[1:, 14:21, 2:6] = 2  # vertebra in front of it
    label[0, 18:21, 2:6] = 2
    series = Series(np.zeros((1, *label.shape), np.float32), np.eye(4), ("t2w",), label=label)
    classes = gradings.expert_classes(series, {1: "disc", 2: "vertebra", 3: "spinal_canal"})
    assert (classes[1:, 14:21, 2:6] == BODY).all()
    assert (classes[0, 18:21, 2:6] == BODY).all()


def test_gradings_keep_the_bulging_column(tmp_path):
    (tmp_path / "gradings.csv").write_text("subject,ivd_from_caudal,level,disc_herniation,disc_bulging\n"
                                          "5,1,L5-S1,0,1\n5,2,L4-L5,1,0\n")
    g = gradings.load_gradings(tmp_path)["5"]
    assert [(d.level, d.herniated, d.bulging) for d in g] == [("L5-S1", False, True), ("L4-L5", True, False)]


def test_whole_vertebrae_without_a_canal_are_refused():
    label = np.zeros((4, 4, 4), np.uint8)
    label[1:3, 1:3, 1:3] = 2
    series = Series(np.zeros((1, 4, 4, 4), np.float32), np.eye(4), ("t2w",), label=label, source="x.nii.gz")
    with pytest.raises(StudyError, match="x.nii.gz: whole-vertebra labels without a spinal canal"):
        gradings.expert_classes(series, {2: "vertebra"})


def test_a_table_that_is_not_gradings_is_refused(tmp_path):
    (tmp_path / "gradings.csv").write_text("subject,level\n5,L5-S1\n")
    with pytest.raises(StudyError, match="gradings.csv: not a gradings table"):
        gradings.load_gradings(tmp_path)
    assert gradings.load_gradings(tmp_path / "none") == {}


@pytest.mark.slow
def test_the_expert_masks_of_the_sample_patient_against_its_radiologist():
    """Patient 57's expert masks through the measurement code: seven discs named L5-S1 to
    T11-T12 from the lowest disc up, matched by name and by order from the caudal end. The
    radiologist graded L4-L5 herniated; the corner-line rule (thresholds chosen on other
    patients) reads a broad reach there, just under its thresholds: it does not call it, and says
    that its call is uncertain. Every disc where the report and the radiologist disagree says
    ``confidence: low``; no healthy disc is called herniated."""
    study = manifest.load_entry(manifest.read_manifest(SAMPLES)[0])
    report = measure.study_report(study, [gradings.expert_classes(study.primary, study.structures)])
    assert report["status"] == "ok", report["problems"]
    rows = gradings.score_gradings(report, gradings.load_gradings(SAMPLES / "spider_57")["57"])
    assert [r["level"] for r in rows] == ["L5-S1", "L4-L5", "L3-L4", "L2-L3", "L1-L2", "T12-L1", "T11-T12"]
    assert [r["name_at_order"] for r in rows] == [r["level"] for r in rows]
    assert [r["by_name"] for r in rows] == [r["by_order"] for r in rows]
    assert [r["level"] for r in rows if r["herniated"]] == ["L4-L5"]
    assert not any(r["by_order"] and not r["herniated"] for r in rows)  # no false call
    levels = {level["level"]: level for level in report["levels"]}
    for r in rows:
        if r["by_order"] != r["herniated"]:
            assert levels[r["level"]]["herniation"]["confidence"] == "low", r["level"]
    l45 = levels["L4-L5"]["herniation"]["evidence"]
    assert l45["corner_line_mm"] > 3.0 and l45["corner_line_basis"] == "two corners"


@pytest.mark.slow
def test_evaluate_findings_scores_the_expert_masks_against_the_radiologist(capsys):
    from lumbarseg.findings import evaluate_findings, print_findings

    results = evaluate_findings(SAMPLES, "truth")  # patient 57 is a holdout subject: it counts
    g = results["radiologist"]
    assert (g["studies"], g["discs"]) == (1, 7)
    by_order = g["herniation_by_order"]
    assert (by_order["tp"] + by_order["fn"], by_order["fp"] + by_order["tn"], by_order["fp"]) == (1, 6, 0)
    assert g["naming"] == {"correct": 7, "total": 7}
    assert results["subjects"][0]["status"] == "ok"
    print_findings(results)  # one study: each level against the radiologist, as the demo shows it
    table = capsys.readouterr().out
    assert "spider_t2_space 57: each level against the radiologist's gradings" in table
    assert [line.split()[1] for line in table.splitlines() if line.startswith("│ L")][:2] == ["L5-S1", "L4-L5"]
    cells = [cell.strip() for line in table.splitlines() for cell in line.split("│")]
    assert cells.count("agree") == 6 + by_order["tp"] and table.count("disagree") == by_order["fn"]
