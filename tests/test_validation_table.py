"""``scripts/validation_table.py``: candidate and baseline results side by side, from the JSONs
``evaluate-findings`` and ``evaluate`` write (the findings ones built by their own summariser)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import load_module
from lumbarseg import findings

NON_HOLDOUT = ["train", "fusion"]


@pytest.fixture(scope="module")
def table_script():
    return load_module("scripts/validation_table.py")


def phantom_row(subject: str, hernia: list[tuple[bool, bool]], grades: list[tuple[str, str]], named: int) -> dict:
    """A phantom's scores: (truth, found) herniation per disc, (truth, found) stenosis grade,
    ``named`` of 14 levels named correctly."""
    return {"set": "phantom", "subject": subject, "status": "ok", "problems": [],
            "levels": {"correct": named, "total": 14, "errors": []},
            "phantom": {"discs": [{"level": f"d{i}", "truth": t, "predicted": p, "confidence": None, "matched": True}
                                  for i, (t, p) in enumerate(hernia)],
                        "slices": [], "tops": [],
                        "stenosis": [{"level": f"d{i}", "truth": t, "predicted": p, "confidence": None,
                                      "area_truth": 150.0, "area": None} for i, (t, p) in enumerate(grades)]}}


def real_row(set_name: str, subject: str, correct: int, total: int, graded=(), sac=()) -> dict:
    """A real study's scores: level naming, (radiologist, found) herniation by order and the dural
    sac's AP error per graded disc."""
    row = {"set": set_name, "subject": subject, "status": "ok", "problems": [],
           "levels": {"correct": correct, "total": total, "errors": []}}
    if graded:
        row["gradings"] = [{"level": f"d{i}", "from_caudal": i + 1, "herniated": t, "by_name": None, "by_order": p,
                            "confidence": "high", "name_at_order": f"d{i}"} for i, (t, p) in enumerate(graded)]
        row["dural_sac"] = [{"level": f"d{i}", "ap_truth_mm": 12.0, "area_truth_mm2": 150.0, "ap_error_mm": e,
                             "area_error_mm2": None if e is None else 10.0} for i, e in enumerate(sac)]
    return row


def write_results(folder: Path, name: str, weights: str, hernia_found: list[bool], grades_found: list[str],
                  named: int, dixon_named: int, spider_found: list[bool], sac: list[float | None], dice: float) -> None:
    hernia = list(zip([True, True, False, False, False], hernia_found))
    grades = list(zip(["normal", "mild", "moderate", "normal"], grades_found))
    phantoms = findings.summarise([phantom_row("phantom_1", hernia, grades, named), phantom_row("phantom_2", [], [], 14)],
                                  "runs/validate/phantoms", "model", weights, ["holdout", "unseen"])
    spider = list(zip([True, False, False, False], spider_found))
    real = findings.summarise([real_row("lumbar_vb_dixon", "01", dixon_named, 5), real_row("lumbar_vb_dixon", "03", 5, 5),
                               real_row("ivdm3seg_crops", "A1_volume1", 0, 0),
                               real_row("spider_t2_space", "5", 0, 0, spider, sac)],
                              "../shared/data", "model", weights, NON_HOLDOUT)
    evaluate = {"weights": weights, "data": "../shared/data", "groups": NON_HOLDOUT, "subjects_evaluated": 4,
                "per_set": {"lumbar_vb_dixon": {"sagittal": {"vertebral_body": 0.5}, "ensemble": {"vertebral_body": dice}},
                            "spider_t2_space": {"ensemble": {"disc": 0.8, "dural_sac": 0.9}}}}
    for kind, results in (("phantoms", phantoms), ("findings", real), ("evaluate", evaluate)):
        (folder / f"{name}_{kind}.json").write_text(json.dumps(results, indent=1))


@pytest.fixture
def results(tmp_path) -> Path:
    write_results(tmp_path, "candidate", "runs/stage8/model", [True, False, True, False, False],
                  ["normal", "mild", "mild", "mild"], 13, 4, [True, True, False, False], [1.0, 2.0, None], 0.875)
    write_results(tmp_path, "baseline", "weights/lite", [False] * 5, ["normal", "mild", "moderate", "mild"], 14, 5,
                  [False] * 4, [1.0], 0.9)
    return tmp_path


def cells(markdown: str) -> dict[str, tuple[str, str]]:
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines() if line.startswith("|")]
    return {label: (candidate, baseline) for label, candidate, baseline in rows}


def test_the_table_sets_candidate_beside_baseline(table_script, results, capsys):
    assert table_script.main([str(results)]) == 0
    written = (results / "validation.md").read_text()
    assert written in capsys.readouterr().out
    rows = cells(written)
    assert rows[""] == ("candidate (`runs/stage8/model`)", "baseline (`weights/lite`)")
    assert rows["herniated disc: sensitivity / specificity (FP of healthy discs)"] == \
        ("0.500 / 0.667 (FP 1 of 3)", "0.000 / 1.000 (FP 0 of 3)")
    assert rows["stenosis grade accuracy"] == ("0.500", "0.750")
    assert rows["level naming"] == ("27/28 (0.964)", "28/28 (1.000)")
    assert rows["lumbar_vb_dixon: level naming"] == ("9/10 (0.900)", "10/10 (1.000)")
    assert not any(label.startswith("ivdm3seg_crops: level") for label in rows)  # it names no levels
    assert rows["radiologist's gradings: herniation by order, sensitivity / specificity (FP of healthy discs)"] == \
        ("1.000 / 0.667 (FP 1 of 3)", "0.000 / 1.000 (FP 0 of 3)")
    assert rows["dural sac AP diameter error against the expert masks (mm)"] == ("1.50", "1.00")
    assert rows["lumbar_vb_dixon: vertebral_body ensemble Dice"] == ("0.875", "0.900")
    assert rows["spider_t2_space: dural_sac ensemble Dice"] == ("0.900", "0.900")
    assert rows["studies: findings / Dice"] == ("4 / 4", "4 / 4")
    assert "**real data, split groups train, fusion (`../shared/data`)**" in rows
    assert "**phantoms (`runs/validate/phantoms`, 2)**" in rows


def test_a_missing_file_is_named(table_script, results, capsys):
    (results / "baseline_evaluate.json").unlink()
    with pytest.raises(SystemExit) as exit_:
        table_script.main([str(results)])
    assert exit_.value.code == 2
    assert f"{results / 'baseline_evaluate.json'}: not found" in capsys.readouterr().err
    assert not (results / "validation.md").exists()


def test_real_results_that_scored_the_holdout_are_refused(table_script, results, capsys):
    path = results / "candidate_findings.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "groups": ["holdout", "unseen"]}))
    with pytest.raises(SystemExit):
        table_script.main([str(results)])
    assert f"{path}: scored split groups ['holdout', 'unseen']" in capsys.readouterr().err
