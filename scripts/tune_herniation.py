"""Choose the herniation rule's thresholds on SPIDER patients that are NOT results.

Runs the findings code on the SPIDER patients of the split's ``train`` and ``fusion`` groups
(``configs/data/split.json``; the ``holdout`` group is refused, never read), from the expert
masks (``truth``) and, with ``--model``, from the shipped model's masks, pairs each disc with the
radiologist's ``gradings.csv`` row by order from the caudal end (as ``evaluate-findings`` does),
keeps every rule's measured value per disc (the report's ``herniation.evidence``) and sweeps the
corner-line settings (``herniation.corner_line``: ``lateral_mm`` x ``herniated_mm`` x ``focal_mm``
x ``broad_mm``) over them: sensitivity and specificity per setting, for each source. The
corner line is measured once, out to the largest ``lateral_mm`` swept; each setting decides from
the profile within its own ``lateral_mm`` (as :func:`lumbarseg.measure.herniation_decision` does).

The choice (written into the JSON, not into ``configs/findings.json``: a person copies it there):
the setting with the highest Youden index (sensitivity + specificity - 1) averaged over the sources
measured; ties go to the higher mean specificity, then to the larger ``herniated_mm`` and
``focal_mm``, then to no ``broad_mm`` (else the smaller), then to the narrower lateral range. The figures of the
old disc-contour rule (a section protruding ``min_area_mm2`` past the endplate margin) on the
same discs are kept beside it.

    .venv/bin/python scripts/tune_herniation.py --out docs/results/herniation_threshold_sweep.json \\
        [--model weights/lite] [--cache /tmp/spider_model_masks]

``--cache``: a folder of ``model_<subject>.npz`` (``classes`` and ``plane_<name>`` arrays) read
instead of running the model, and written where missing. Writes the JSON and a PNG beside it
(sensitivity and specificity against ``herniated_mm``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lumbarseg import gradings, measure  # noqa: E402
from lumbarseg.findings import detection  # noqa: E402
from lumbarseg.io import manifest  # noqa: E402
from lumbarseg.io.study import Study  # noqa: E402
from lumbarseg.training import load_split  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "spider_t2_space"
SET = "spider_t2_space"
TUNING_GROUPS = ("train", "fusion")
LATERAL_MM = (4.0, 5.0, 6.0, 8.0, 10.0)  # measured out to the largest, decided within each
HERNIATED_MM = [float(x) for x in np.round(np.arange(1.0, 8.01, 0.5), 2)]
FOCAL_MM = [float(x) for x in np.round(np.arange(0.0, 5.01, 0.5), 2)]
BROAD_MM = (4.0, 5.0, 6.0, 7.0, 8.0, None)
COLUMNS = ["lateral_mm", "herniated_mm", "focal_mm", "broad_mm", "tp", "fn", "fp", "tn"]


def rates(row: list) -> tuple[float, float]:
    """(sensitivity, specificity) of a sweep row."""
    tp, fn, fp, tn = row[4:8]
    return (tp / (tp + fn) if tp + fn else 0.0), (tn / (tn + fp) if tn + fp else 0.0)


def tuning_entries(data: Path) -> list[manifest.ManifestEntry]:
    split = load_split()[SET]
    tuning = {s for g in TUNING_GROUPS for s in split[g]}
    holdout = set(split["holdout"])
    assert not tuning & holdout, "a subject in both the tuning and the holdout groups"
    entries = [e for e in manifest.read_manifest(data) if e.subject in tuning]
    assert entries and not any(e.subject in holdout for e in entries)
    return entries


def model_classes(entry, study: Study, weights: Path | None, cache: Path | None, segmenter: list) -> tuple:
    path = None if cache is None else cache / f"model_{entry.subject}.npz"
    if path is not None and path.is_file():
        z = np.load(path)
        return z["classes"], {k[6:]: z[k] for k in z.files if k.startswith("plane_")}
    if not segmenter:
        from lumbarseg.pipeline import Segmenter

        segmenter.append(Segmenter.load(weights))
    seg = segmenter[0].segment(study.primary)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, classes=seg.classes, **{f"plane_{k}": v for k, v in seg.plane_classes.items()})
    return seg.classes, seg.plane_classes


def disc_rows(source: str, data: Path, weights: Path | None, cache: Path | None,
              config: measure.FindingsConfig) -> list[dict]:
    """One row per graded disc: the radiologist's herniation and bulging, and the evidence of
    the report's disc at the same order from the caudal end (None when the report has none)."""
    graded = gradings.load_gradings(data)
    rows, segmenter = [], []
    for entry in tuning_entries(data):
        t0 = time.time()
        study = manifest.load_entry(entry)
        if source == "truth":
            classes, planes = gradings.expert_classes(study.primary, study.structures), None
        else:
            classes, planes = model_classes(entry, study, weights, cache, segmenter)
        single = Study([study.primary], study.structures, study.subject, study.set, study.source)
        report = measure.study_report(single, [classes], plane_classes=[planes or None], source=source, config=config)
        ordered = gradings.discs_from_caudal(report)
        for g in graded.get(entry.subject, []):
            level = ordered[g.from_caudal - 1] if g.from_caudal <= len(ordered) else None
            rows.append({"subject": entry.subject, "from_caudal": g.from_caudal, "level": g.level,
                         "herniated": g.herniated, "bulging": g.bulging,
                         "found": level is not None,
                         "evidence": None if level is None else level["herniation"]["evidence"],
                         "present_with_config": None if level is None else level["herniation"]["present"]})
        print(f"{source} {entry.subject}: {time.time() - t0:.0f} s", flush=True)
    return rows


def config_with(base: measure.FindingsConfig, **corner) -> measure.HerniationConfig:
    return dataclasses.replace(base.herniation, corner_line=dataclasses.replace(base.herniation.corner_line, **corner))


def score(rows: list[dict], decide) -> dict:
    found = [r for r in rows if r["found"]]
    out = detection([r["herniated"] for r in found], [decide(r["evidence"]) for r in found])
    out["discs_missing"] = len(rows) - len(found)
    bulging = [r for r in found if r["bulging"] and not r["herniated"]]
    out["bulging_called_herniated"] = f"{sum(decide(r['evidence']) for r in bulging)}/{len(bulging)}"
    return out


def settings() -> list[dict]:
    return [{"lateral_mm": lat, "herniated_mm": t, "focal_mm": f, "broad_mm": b}
            for lat in LATERAL_MM for t in HERNIATED_MM for f in FOCAL_MM for b in BROAD_MM]


def sweep(rows: list[dict], base: measure.FindingsConfig) -> list[list]:
    """One row per setting, columns :data:`COLUMNS`."""
    table = []
    for setting in settings():
        cfg = config_with(base, **setting)
        r = score(rows, lambda e, cfg=cfg: measure.herniation_decision(e, cfg)[0])
        table.append([*setting.values(), r["tp"], r["fn"], r["fp"], r["tn"]])
    return table


def old_rule(rows: list[dict], base: measure.FindingsConfig) -> dict:
    """The disc-contour rule this one replaces: a section protruding ``min_area_mm2``."""
    return score(rows, lambda e: e["hernia_class_mm3"] > 0 or e["contour_protrusion_mm2"] >= base.herniation.min_area_mm2)


def choose(sweeps: dict[str, list[list]], rows: dict[str, list[dict]], base: measure.FindingsConfig) -> dict:
    sources = list(sweeps)

    def key(i: int):
        j = np.mean([sum(rates(sweeps[s][i])) - 1 for s in sources])
        sp = np.mean([rates(sweeps[s][i])[1] for s in sources])
        lat, t, f, b = sweeps[sources[0]][i][:4]
        return (round(float(j), 6), round(float(sp), 6), t, f, -1 if b is None else -b, -lat)

    best = max(range(len(sweeps[sources[0]])), key=key)
    setting = dict(zip(COLUMNS[:4], sweeps[sources[0]][best][:4]))
    cfg = config_with(base, **setting)
    return {**setting, "mean_youden": key(best)[0],
            **{s: score(rows[s], lambda e: measure.herniation_decision(e, cfg)[0]) for s in sources}}


def plot(path: Path, sweeps: dict[str, list[list]], chosen: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sweeps), figsize=(6 * len(sweeps), 4.2), squeeze=False)
    lines = ((chosen["lateral_mm"], chosen["focal_mm"], chosen["broad_mm"], "-", "chosen focal/broad"),
             (chosen["lateral_mm"], 0.0, None, ":", "no focal test"))
    for ax, (source, table) in zip(axes[0], sweeps.items()):
        for lat, focal, broad, style, name in lines:
            rows = [r for r in table if r[0] == lat and r[2] == focal and r[3] == broad]
            x = [r[1] for r in rows]
            ax.plot(x, [rates(r)[0] for r in rows], "C3" + style, label=f"sensitivity ({name})")
            ax.plot(x, [rates(r)[1] for r in rows], "C0" + style, label=f"specificity ({name})")
        ax.axvline(chosen["herniated_mm"], color="grey", lw=0.8)
        ax.set_xlabel("herniated_mm: the disc's reach behind the corner line (mm)")
        ax.set_ylim(-0.02, 1.02)
        setting = f"lateral {chosen['lateral_mm']:g} mm, focal {chosen['focal_mm']:g} mm, broad {chosen['broad_mm']}"
        ax.set_title(f"23 non-holdout SPIDER patients, {source} masks\n{setting}", fontsize=9)
        ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def _dump(result: dict) -> str:
    """JSON with one sweep row and one disc per line (the file stays small enough to read)."""
    head = json.dumps({k: v for k, v in result.items() if k not in ("sweep", "discs")}, indent=1)[:-2]
    parts = [head + ","]
    for key in ("sweep", "discs"):
        blocks = []
        for source, rows in result[key].items():
            lines = ",\n".join("   " + json.dumps(r, separators=(",", ":")) for r in rows)
            blocks.append(f'  "{source}": [\n{lines}\n  ]')
        parts.append(f' "{key}": {{\n' + ",\n".join(blocks) + "\n }" + ("," if key == "sweep" else ""))
    return "\n".join(parts) + "\n}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "herniation_threshold_sweep.json")
    ap.add_argument("--model", type=Path, default=None, help="also from this model's masks (e.g. weights/lite)")
    ap.add_argument("--cache", type=Path, default=None, help="folder of cached model masks (model_<subject>.npz)")
    ap.add_argument("--rows", type=Path, default=None, help="reuse the per-disc rows of an earlier run's JSON")
    args = ap.parse_args(argv)
    base = measure.load_config()
    # Measure the corner line out to the widest lateral range swept; each setting decides within its own.
    measuring = dataclasses.replace(base, herniation=config_with(base, lateral_mm=max(LATERAL_MM)))
    sources = ["truth"] + (["model"] if args.model or args.cache else [])
    if args.rows:
        rows = json.loads(args.rows.read_text())["discs"]
    else:
        rows = {s: disc_rows(s, args.data, args.model, args.cache, measuring) for s in sources}
    sweeps = {s: sweep(rows[s], base) for s in rows}
    chosen = choose(sweeps, rows, base)
    result = {
        "about": "Herniation thresholds chosen on SPIDER's non-holdout patients (scripts/tune_herniation.py); "
                 "discs paired with gradings.csv by order from the caudal end.",
        "data": str(args.data), "groups": list(TUNING_GROUPS),
        "subjects": sorted({r["subject"] for r in next(iter(rows.values()))}, key=int),
        "holdout_used": False,
        "criterion": "highest Youden index (sensitivity + specificity - 1) averaged over the sources; ties to the "
                     "higher mean specificity, then to the larger herniated_mm and focal_mm, then to no broad_mm "
                     "(else the smaller), then to the narrower lateral range",
        "fixed": {k: v for k, v in dataclasses.asdict(base.herniation.corner_line).items() if k not in COLUMNS}
                 | {"hernia_class_mm3": base.herniation.hernia_class_mm3},
        "chosen": chosen,
        "old_contour_rule": {s: old_rule(rows[s], base) for s in rows},
        "sweep_columns": COLUMNS,
        "sweep": sweeps,
        "discs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(_dump(result) + "\n")
    plot(args.out.with_suffix(".png"), sweeps, chosen)
    print(json.dumps({"chosen": chosen, "old_contour_rule": result["old_contour_rule"]}, indent=1))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
