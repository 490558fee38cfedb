"""Choose the hernia-class rule's thresholds on validation phantoms (never the held-out seed).

The first herniation rule (:func:`lumbarseg.measure.herniation_decision`) calls a disc herniated
when the segmentation holds at least ``hernia_class_mm3`` of hernia class that reaches at least
``hernia_class_reach_mm`` beyond the endplates. This script reads the reports
``evaluate-findings --reports DIR`` wrote for phantom folders (seeds no result uses: 777 and
778), from the model's masks (``--reports``) and from the truth masks (``--truth-reports``), pairs
each truth disc with the report level nearest its centre (as ``evaluate-findings`` does), and
sweeps both thresholds over the stored evidence (a disc failing the first rule falls through to
the others, as in the code): sensitivity, specificity and Youden index per setting and source.
The choice (written into the JSON; a person copies it into ``configs/findings.json``): the
highest Youden index averaged over the sources, so that the rule is judged apart from the model
as ``tune_herniation.py`` does; ties to the higher mean specificity, then to the smaller
thresholds.

    .venv/bin/lumbarseg evaluate-findings --data runs/ph777 --source model --reports runs/reports_777 --out runs/val_777.json
    .venv/bin/lumbarseg evaluate-findings --data runs/ph777 --reports runs/truth_reports_777 --out runs/truth_777.json
    (the same for 778)
    .venv/bin/python scripts/tune_hernia_class.py --data runs/ph777 runs/ph778 \
        --reports runs/reports_777 runs/reports_778 --truth-reports runs/truth_reports_777 runs/truth_reports_778 \
        --out docs/results/hernia_class_sweep.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lumbarseg import measure  # noqa: E402
from lumbarseg.findings import detection, matched_discs  # noqa: E402
from lumbarseg.io import manifest  # noqa: E402

VOLUME_MM3 = [float(x) for x in range(20, 201, 10)]
REACH_MM = [float(x) for x in np.round(np.arange(3.0, 7.01, 0.5), 2)]


def discs(data: Path, reports: Path) -> list[tuple[bool, dict]]:
    """(truth herniated, the matched level's evidence) per truth disc inside the field of view;
    a disc no report level matches counts as not found (evidence empty)."""
    out = []
    for entry in manifest.read_manifest(data):
        report = json.loads((reports / f"{entry.set}_{entry.subject}.json").read_text())
        truth = json.loads((data / f"{entry.subject}_truth.json").read_text())
        for d, level in matched_discs(report, manifest.load_entry(entry), truth):
            out.append((bool(d["hernia"]["present"]), None if level is None else level["herniation"].get("evidence", {})))
    return out


def sweep(sources: dict[str, list[tuple[bool, dict]]], cfg: measure.HerniationConfig) -> list[dict]:
    """Per setting, each source's detection figures and their mean Youden index and specificity."""
    results = []
    for volume in VOLUME_MM3:
        for reach in REACH_MM:
            setting = dataclasses.replace(cfg, hernia_class_mm3=volume, hernia_class_reach_mm=reach)
            row = {"hernia_class_mm3": volume, "hernia_class_reach_mm": reach}
            for source, rows in sources.items():
                predicted = [e is not None and measure.herniation_decision(e, setting)[0] for _, e in rows]
                d = detection([t for t, _ in rows], predicted)
                row[source] = {**d, "youden": round(d["sensitivity"] + d["specificity"] - 1, 4)}
            row["youden"] = round(float(np.mean([row[s]["youden"] for s in sources])), 4)
            row["specificity"] = round(float(np.mean([row[s]["specificity"] for s in sources])), 4)
            results.append(row)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="phantom folders (manifest + truth JSON)")
    parser.add_argument("--reports", type=Path, nargs="+", required=True,
                        help="their report folders from the model's masks, in the same order")
    parser.add_argument("--truth-reports", type=Path, nargs="+", help="their report folders from the truth masks")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    folders = {"model": args.reports, **({"truth": args.truth_reports} if args.truth_reports else {})}
    if any(len(f) != len(args.data) for f in folders.values()):
        parser.error("give one report folder per --data folder")
    sources = {name: [row for data, reports in zip(args.data, f) for row in discs(data, reports)]
               for name, f in folders.items()}
    cfg = measure.load_config().herniation
    results = sweep(sources, cfg)
    best = max(results, key=lambda r: (r["youden"], r["specificity"], -r["hernia_class_mm3"], -r["hernia_class_reach_mm"]))
    current = next(r for r in results if (r["hernia_class_mm3"], r["hernia_class_reach_mm"])
                   == (cfg.hernia_class_mm3, cfg.hernia_class_reach_mm))
    out = {"command": " ".join(["scripts/tune_hernia_class.py", *(argv or sys.argv[1:])]),
           "data": [str(d) for d in args.data], "discs": {s: len(r) for s, r in sources.items()},
           "herniated": {s: sum(t for t, _ in r) for s, r in sources.items()},
           "current": current, "choice": best, "sweep": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    for name, r in (("current (configs/findings.json)", current), ("choice", best)):
        print(f"{name}: hernia_class_mm3 {r['hernia_class_mm3']:g}, reach {r['hernia_class_reach_mm']:g} mm: " + "; ".join(
            f"{s} sensitivity {r[s]['sensitivity']:.3f} specificity {r[s]['specificity']:.3f} (tp {r[s]['tp']} fp {r[s]['fp']})"
            for s in sources))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
