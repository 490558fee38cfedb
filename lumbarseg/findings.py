"""``lumbarseg evaluate-findings``: findings against truth, the way the paper's Tables 5 and 6 report them.

Per study of a data folder (manifest layout), the findings report (:mod:`lumbarseg.measure`)
of the ground-truth masks (``source="truth"``) or of a model's predictions (``"model"``) is
compared with:

* ``<subject>_truth.json`` beside the image (phantoms): per disc, herniation (present, top
  point, height, direction) and stenosis (grade, dural sac area);
* the label map's level names (``structures`` in the manifest; real sets and phantoms): each
  labelled disc or vertebra is matched to the reported instance nearest its centroid (within
  :data:`MATCH_MM`) and scored correct when the names agree; no match counts as wrong;
* ``gradings.csv`` beside the images (SPIDER, :mod:`lumbarseg.gradings`): a radiologist's
  herniation per disc, matched by name and by order from the caudal end; with ``--source model``
  also the expert masks' dural sac (SPIDER's spinal canal) per level, against the model's.

Sets of ``configs/data/split.json`` count their holdout subjects only, as ``lumbarseg evaluate``
does (``groups`` for others, e.g. ``train`` and ``fusion`` to judge a candidate or choose
thresholds on subjects that are not results; ``all_subjects`` for every one).
Expert masks whose vertebrae are whole (SPIDER) are split into body and posterior elements
first (:func:`lumbarseg.gradings.expert_classes`).

Matching rules. A truth disc is scored when its centre lies in the image; it is matched to the
reported disc nearest its centre (within :data:`MATCH_MM`), so herniation statistics do not
depend on the names. An axial slice is truly herniated when its plane passes through the
hernia: within half the hernia's height of its top point, along the slice normal.
Top-point errors are on true-positive discs: X along the disc's left-right axis, Y along its
antero-posterior axis, in mm and in pixels of the series where the point was found.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lumbarseg import gradings, measure, tissues
from lumbarseg.analysis import analyse
from lumbarseg.evaluation import evaluated_entries, scored_groups
from lumbarseg.io import manifest
from lumbarseg.io.study import Study, StudyError

SCHEMA = "lumbarseg.findings-evaluation/1"
MATCH_MM = 12.0  # well under half the spacing of neighbouring discs (~35 mm) or bodies
PER_LEVEL_STUDIES = 3  # up to this many studies (the demo's samples), each level is printed against its truth
NAMED = (*tissues.DISC_LEVELS, *tissues.VERTEBRAE[:-1])  # S1 is part of the sacrum


def detection(truth: list[bool], predicted: list[bool]) -> dict:
    """Table 5 row: accuracy, sensitivity, specificity, precision and the counts."""
    t, p = np.asarray(truth, bool), np.asarray(predicted, bool)
    tp, tn = int((t & p).sum()), int((~t & ~p).sum())
    fp, fn = int((~t & p).sum()), int((t & ~p).sum())

    def ratio(a: int, b: int) -> float | None:
        return round(a / b, 4) if b else None

    return {"accuracy": ratio(tp + tn, len(t)), "sensitivity": ratio(tp, tp + fn), "specificity": ratio(tn, tn + fp),
            "precision": ratio(tp, tp + fp), "tp": tp, "tn": tn, "fp": fp, "fn": fn}


def _centroids(study: Study) -> dict[str, np.ndarray]:
    """Patient-space centroid of every labelled level (disc or vertebra) of the primary series."""
    series = study.primary
    out = {}
    for value, name in study.structures.items():
        if name in NAMED:
            ijk = np.argwhere(series.label == value)
            if len(ijk):
                out[name] = series.world(ijk.mean(axis=0))
    return out


def _nearest(points: list[np.ndarray], target: np.ndarray) -> int | None:
    if not points:
        return None
    dist = [float(np.linalg.norm(p - target)) for p in points]
    best = int(np.argmin(dist))
    return best if dist[best] <= MATCH_MM else None


def score_levels(report: dict, study: Study) -> dict:
    """Level naming against the label map's names."""
    reported = {"disc": [(np.array(lv["centre_mm"]), lv["level"]) for lv in report["levels"]],
                "body": [(np.array(b["centre_mm"]), b["name"]) for b in report["vertebrae"]]}
    correct, errors, total = 0, [], 0
    for name, centre in _centroids(study).items():
        kind = "disc" if name in tissues.DISC_LEVELS else "body"
        match = _nearest([c for c, _ in reported[kind]], centre)
        got = reported[kind][match][1] if match is not None else None
        total += 1
        if got == name:
            correct += 1
        else:
            errors.append(f"{name} named {got}" if match is not None else f"{name} not found")
    return {"correct": correct, "total": total, "errors": errors}


def matched_discs(report: dict, study: Study, truth: dict):
    """Each disc of a phantom's truth JSON inside the study's field of view, with the report
    level nearest its centre (None when no level is within the match distance)."""
    series = study.primary
    levels = report.get("levels") or []
    centres = [np.array(lv["centre_mm"]) for lv in levels]
    for d in truth["discs"]:
        centre = np.array(d["center_mm"])
        ijk = np.rint(series.voxel(centre)).astype(int)
        if np.any(ijk < 0) or np.any(ijk >= np.array(series.shape)):
            continue  # outside the field of view
        match = _nearest(centres, centre)
        yield d, levels[match] if match is not None else None


def score_phantom(report: dict, study: Study, truth: dict) -> dict:
    """Herniation, top point and stenosis against a phantom's truth JSON."""
    discs, slices, tops, stenosis = [], [], [], []
    for d, level in matched_discs(report, study, truth):
        hernia = d["hernia"]
        found = level["herniation"] if level else {"present": False}
        discs.append({"level": d["level"], "truth": hernia["present"], "predicted": found["present"],
                      "confidence": found.get("confidence"), "matched": level is not None})
        if level is not None:
            for s in level["slices"]:
                inside = False
                if hernia["present"]:
                    gap = (np.array(hernia["top_point_mm"]) - np.array(s["point_mm"])) @ np.array(s["normal"])
                    inside = abs(float(gap)) < hernia["height_mm"] / 2
                slices.append((inside, s["herniated"]))
            area = level["dural_sac"]["area_mm2"] if level["dural_sac"] else None
            stenosis.append({"level": d["level"], "truth": d["stenosis"]["grade"], "predicted": level["stenosis"],
                             "confidence": (level.get("stenosis_confidence") or {}).get("confidence"),
                             "area_truth": d["stenosis"]["dural_sac_area_mm2"], "area": area})
        if hernia["present"] and found["present"]:
            tops.append(_top_errors(found, hernia, level, study))
    return {"discs": discs, "slices": slices, "tops": tops, "stenosis": stenosis}


def _top_errors(found: dict, hernia: dict, level: dict, study: Study) -> dict:
    normal = np.array(level["normal"])
    v, u = measure.in_plane_frame(normal)
    delta = np.array(found["top_point"]["mm"]) - np.array(hernia["top_point_mm"])
    inv = np.linalg.inv(study.series[found["top_point"]["series"]].affine[:3, :3])

    def px(direction: np.ndarray) -> float:  # source pixels per mm along a direction
        return float(np.linalg.norm(inv @ direction))

    x, y, h = abs(float(delta @ u)), abs(float(delta @ v)), abs(found["height_mm"] - hernia["height_mm"])
    return {"x_mm": x, "y_mm": y, "height_mm": h, "distance_mm": float(np.linalg.norm(delta)),
            "x_px": x * px(u), "y_px": y * px(v), "height_px": h * px(normal),
            "direction_correct": found["direction"] == hernia["direction"]}


def _sac_errors(model: dict, truth: dict) -> list[dict]:
    """Per truth level with a dural sac measurement: the model's measurement of the disc nearest
    its centre (within :data:`MATCH_MM`), as absolute errors of AP diameter and area."""
    rows = []
    for level in truth["levels"]:
        if not level["dural_sac"]:
            continue
        match = _nearest([np.array(m["centre_mm"]) for m in model["levels"]], np.array(level["centre_mm"]))
        sac = None if match is None else model["levels"][match]["dural_sac"]
        rows.append({"level": level["level"], "ap_truth_mm": level["dural_sac"]["ap_diameter_mm"],
                     "area_truth_mm2": level["dural_sac"]["area_mm2"],
                     "ap_error_mm": None if not sac else round(abs(sac["ap_diameter_mm"] - level["dural_sac"]["ap_diameter_mm"]), 2),
                     "area_error_mm2": None if not sac else round(abs(sac["area_mm2"] - level["dural_sac"]["area_mm2"]), 1)})
    return rows


def evaluate_findings(data: str | Path, source: str = "truth", weights: str | Path | None = None,
                      reports: str | Path | None = None, *, all_subjects: bool = False,
                      groups: tuple[str, ...] = ("holdout",), segmenter=None) -> dict:
    """Findings of every study of ``data`` scored against its truth (see the module doc).
    ``reports``: a folder to also write each study's report JSON to. ``segmenter``: for
    ``source="model"``, the ``weights`` already loaded (anything with ``segment(series)``:
    ``scripts/tune_class_scale.py`` passes one that reuses cached network outputs)."""
    if source not in ("truth", "model"):
        raise StudyError(data, f"source must be 'truth' or 'model', not {source!r}")
    if source != "model":
        segmenter = None
    elif segmenter is None:
        from lumbarseg.pipeline import Segmenter

        if weights is None:
            raise StudyError(data, "--source model needs --weights")
        segmenter = Segmenter.load(weights)
    if reports is not None:
        Path(reports).mkdir(parents=True, exist_ok=True)
    config = measure.load_config()
    graded: dict[Path, dict] = {}
    subjects = []
    for entry in tqdm(evaluated_entries(data, all_subjects=all_subjects, groups=groups), desc="findings", unit="study"):
        study = manifest.load_entry(entry)
        if study.primary.label is None:
            continue
        if entry.image.parent not in graded:
            graded[entry.image.parent] = gradings.load_gradings(entry.image.parent)
        graded_discs = graded[entry.image.parent].get(entry.subject)
        expert = None
        if segmenter is None or graded_discs:
            expert = measure.study_report(study, [None if s.label is None else gradings.expert_classes(s, study.structures)
                                                  for s in study.series], config=config)
        # what lumbarseg infer and the MONAI Label app report (a manifest study is one series)
        report = expert if segmenter is None else analyse(study, segmenter.segment).report
        if reports is not None:
            (Path(reports) / f"{entry.set}_{entry.subject}.json").write_text(json.dumps(report, indent=1))
        row = {"set": entry.set, "subject": entry.subject, "status": report["status"], "problems": report["problems"],
               "levels": score_levels(report, study)}
        truth_file = entry.image.parent / f"{entry.subject}_truth.json"
        if truth_file.is_file():
            row["phantom"] = score_phantom(report, study, json.loads(truth_file.read_text()))
        if graded_discs:
            row["gradings"] = gradings.score_gradings(report, graded_discs)
            if segmenter is not None:
                row["dural_sac"] = _sac_errors(report, expert)
        subjects.append(row)
    return summarise(subjects, data, source, weights if source == "model" else None,
                     scored_groups(groups, all_subjects=all_subjects))


def summarise(subjects: list[dict], data, source: str, weights, groups: list[str]) -> dict:
    """``groups``: the split groups scored (:func:`lumbarseg.evaluation.scored_groups`)."""
    phantoms = [s["phantom"] for s in subjects if "phantom" in s]
    discs = [d for p in phantoms for d in p["discs"]]
    slices = [x for p in phantoms for x in p["slices"]]
    tops = [t for p in phantoms for t in p["tops"]]
    sten = [x for p in phantoms for x in p["stenosis"]]
    measured = [x for x in sten if x["area"] is not None]

    def mean(key: str) -> float | None:
        return round(float(np.mean([t[key] for t in tops])), 3) if tops else None

    def level_stats(rows: list[dict]) -> dict:
        correct, total = sum(r["levels"]["correct"] for r in rows), sum(r["levels"]["total"] for r in rows)
        return {"accuracy": round(correct / total, 4) if total else None, "correct": correct, "total": total}

    sets = sorted({s["set"] for s in subjects})
    return {
        "schema": SCHEMA, "data": str(data), "groups": groups, "source": source,
        "weights": None if weights is None else str(weights), "studies": len(subjects), "phantoms": len(phantoms),
        "status": {k: sum(s["status"] == k for s in subjects) for k in ("ok", "no_findings", "error")},
        "herniation": {"per_disc": detection([d["truth"] for d in discs], [d["predicted"] for d in discs]),
                       "per_slice": detection([t for t, _ in slices], [p for _, p in slices]),
                       "unmatched_discs": sum(not d["matched"] for d in discs),
                       "direction_accuracy": round(float(np.mean([t["direction_correct"] for t in tops])), 4) if tops else None},
        "top_point": {"n": len(tops), "mae_mm": mean("distance_mm"), "x_mae_mm": mean("x_mm"), "y_mae_mm": mean("y_mm"),
                      "x_mae_px": mean("x_px"), "y_mae_px": mean("y_px")},
        "height": {"mae_mm": mean("height_mm"), "mae_px": mean("height_px")},
        "stenosis": {"n": len(sten), "grade_accuracy": round(float(np.mean([x["truth"] == x["predicted"] for x in sten])), 4) if sten else None,
                     "area_mae_mm2": round(float(np.mean([abs(x["area"] - x["area_truth"]) for x in measured])), 2) if measured else None,
                     "area_mape": round(float(np.mean([abs(x["area"] - x["area_truth"]) / x["area_truth"] for x in measured])), 4) if measured else None},
        "levels": {**level_stats(subjects), "per_set": {st: level_stats([s for s in subjects if s["set"] == st]) for st in sets}},
        "radiologist": _graded_summary(subjects),
        "subjects": subjects,
    }


def _graded_summary(subjects: list[dict]) -> dict | None:
    """Herniation against the radiologist's gradings (discs the report has, by name and by
    order from the caudal end), level naming by order, and the dural sac against the expert
    masks; None without graded studies."""
    rows = [r for s in subjects for r in s.get("gradings", [])]
    if not rows:
        return None
    sac = [r for s in subjects for r in s.get("dural_sac", [])]
    found = [r for r in sac if r["ap_error_mm"] is not None]

    def herniation(key: str) -> dict:
        pairs = [(r["herniated"], r[key]) for r in rows if r[key] is not None]
        return {**detection([t for t, _ in pairs], [p for _, p in pairs]), "discs_missing": len(rows) - len(pairs)}

    ordered = [r for r in rows if r["name_at_order"] is not None]
    return {
        "studies": sum("gradings" in s for s in subjects), "discs": len(rows),
        "herniation_by_order": herniation("by_order"), "herniation_by_name": herniation("by_name"),
        "naming": {"correct": sum(r["name_at_order"] == r["level"] for r in ordered), "total": len(ordered)},
        "dural_sac": None if not sac else {
            "levels": len(sac), "measured": len(found),
            "ap_mae_mm": round(float(np.mean([r["ap_error_mm"] for r in found])), 2) if found else None,
            "area_mae_mm2": round(float(np.mean([r["area_error_mm2"] for r in found])), 1) if found else None},
    }


def print_findings(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 120)
    if results["phantoms"]:
        _print_phantom_tables(console, results)
    if results["radiologist"]:
        _print_graded_tables(console, results)
    if len(results["subjects"]) <= PER_LEVEL_STUDIES:
        _print_per_level(console, results)
    lv = results["levels"]
    if lv["total"]:  # studies whose labels name their levels
        t = Table("set", "levels named correctly", "accuracy", title="Level naming")
        for st, r in lv["per_set"].items():
            if r["total"]:
                t.add_row(st, f"{r['correct']}/{r['total']}", _f(r["accuracy"]))
        t.add_row("all", f"{lv['correct']}/{lv['total']}", _f(lv["accuracy"]))
        console.print(t)
    counts: dict[str, int] = {}
    for s in results["subjects"]:
        if s["status"] != "ok":
            key = f"{s['set']}: {s['status']}: {'; '.join(s['problems'])}"
            counts[key] = counts.get(key, 0) + 1
    for key, n in counts.items():
        console.print(f"[yellow]{n} × {key}[/yellow]")


def _print_phantom_tables(console, results: dict) -> None:
    from rich.table import Table

    h = results["herniation"]
    t = Table("", "accuracy", "sensitivity", "specificity", "precision", "TP", "TN", "FP", "FN",
              title=f"Herniation (Table 5), {results['phantoms']} phantoms, source: {results['source']}")
    for name, key in (("axial slice herniated", "per_slice"), ("disc herniated", "per_disc")):
        r = h[key]
        t.add_row(name, *(_f(r[k]) for k in ("accuracy", "sensitivity", "specificity", "precision")),
                  *(str(r[k]) for k in ("tp", "tn", "fp", "fn")))
    console.print(t)
    tp, ht = results["top_point"], results["height"]
    t = Table("hernia top point (Table 6), true positives", "MAE mm", "MAE pixels", title=f"{tp['n']} hernias")
    t.add_row("X (left-right)", _f(tp["x_mae_mm"]), _f(tp["x_mae_px"]))
    t.add_row("Y (antero-posterior)", _f(tp["y_mae_mm"]), _f(tp["y_mae_px"]))
    t.add_row("height", _f(ht["mae_mm"]), _f(ht["mae_px"]))
    t.add_row("top point distance", _f(tp["mae_mm"]), "")
    console.print(t)
    s = results["stenosis"]
    console.print(f"stenosis grade accuracy {_f(s['grade_accuracy'])} over {s['n']} levels; dural sac area MAE "
                  f"{_f(s['area_mae_mm2'])} mm² ({_f(s['area_mape'])} relative); hernia direction accuracy "
                  f"{_f(h['direction_accuracy'])}")


def _print_graded_tables(console, results: dict) -> None:
    from rich.table import Table

    g = results["radiologist"]
    t = Table("disc paired with the graded one", "sensitivity", "specificity", "precision", "TP", "TN", "FP", "FN",
              "not found", title=f"Herniation against the radiologist: {g['discs']} discs of {g['studies']} studies, "
                                 f"source: {results['source']}")
    for name, key in (("by order from the caudal end", "herniation_by_order"), ("by level name", "herniation_by_name")):
        r = g[key]
        t.add_row(name, *(_f(r[k]) for k in ("sensitivity", "specificity", "precision")),
                  *(str(r[k]) for k in ("tp", "tn", "fp", "fn", "discs_missing")))
    console.print(t)
    n = g["naming"]
    console.print(f"level naming by order from the caudal end: {n['correct']}/{n['total']}")
    if g["dural_sac"]:
        d = g["dural_sac"]
        console.print(f"dural sac against the expert masks: AP diameter MAE {_f(d['ap_mae_mm'])} mm, area MAE "
                      f"{_f(d['area_mae_mm2'])} mm² ({d['measured']} of {d['levels']} levels measured by both)")


def _print_per_level(console, results: dict) -> None:
    """Per study, each disc's findings beside its truth (a phantom's, or the radiologist's
    gradings) and whether they agree: how far to trust the findings of a study like it."""
    from rich.table import Table

    def yes(x) -> str:
        return "-" if x is None else "yes" if x else "no"

    def unsure(cell: str, confidence: str | None) -> str:  # what the report itself doubts
        return f"{cell} (low confidence)" if confidence == "low" else cell

    for s in results["subjects"]:
        rows = []
        if "phantom" in s:
            grades = {x["level"]: x for x in s["phantom"]["stenosis"]}
            for d in s["phantom"]["discs"]:
                g = grades.get(d["level"], {})
                found = unsure(yes(d["predicted"]), d.get("confidence")) if d["matched"] else "no disc found"
                pairs = [(d["truth"], d["predicted"] if d["matched"] else None), (g.get("truth"), g.get("predicted"))]
                rows.append((d["level"], yes(d["truth"]), found, g.get("truth") or "-",
                             unsure(g.get("predicted") or "-", g.get("confidence")), pairs))
        for r in s.get("gradings", []):
            found = "no disc found" if r["by_order"] is None else unsure(yes(r["by_order"]), r.get("confidence"))
            rows.append((r["level"], yes(r["herniated"]), found, "-", "-", [(r["herniated"], r["by_order"])]))
        if not rows:
            continue
        truth = "the phantom's truth" if "phantom" in s else "the radiologist's gradings"
        t = Table("level", "herniated (truth)", "herniated (found)", "stenosis (truth)", "stenosis (found)", "agree",
                  title=f"{s['set']} {s['subject']}: each level against {truth} (source: {results['source']})")
        for level, *cells, pairs in rows:
            compared = [a == b for a, b in pairs if a is not None]
            agree = "-" if not compared else "agree" if all(compared) else "[red]disagree[/red]"
            t.add_row(level, *cells, agree)
        console.print(t)


def _f(x) -> str:
    return "-" if x is None else f"{x:.3f}"
