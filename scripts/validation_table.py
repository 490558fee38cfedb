"""Candidate against baseline weights on data that is not a result: one markdown table.

Reads what ``scripts/validate_candidate.sh`` writes into DIR, for NAME ``candidate`` and
``baseline``: ``NAME_phantoms.json`` (``evaluate-findings --source model`` on the validation
phantoms), ``NAME_findings.json`` (the same on the real data's non-holdout subjects,
``--groups train fusion``) and ``NAME_evaluate.json`` (``evaluate --groups train fusion``). Prints
the two side by side (phantoms: herniation per disc, stenosis grade, level naming; real data:
level naming per set, herniation and dural sac against the radiologist and the expert masks,
ensemble Dice per set and class) and writes the table to DIR/validation.md. Real-data results
that scored the holdout group are refused: held-out figures come after the choice.

    .venv/bin/python scripts/validation_table.py runs/validate/stage8
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

NAMES = ("candidate", "baseline")
KINDS = ("phantoms", "findings", "evaluate")
REAL = ("findings", "evaluate")  # the kinds scored on the split's subjects


class ValidationError(Exception):
    pass


def load(folder: Path) -> dict[str, dict[str, dict]]:
    """``{name: {kind: results}}``, checked: every file there, real data without the holdout,
    candidate and baseline scored on the same data and groups."""
    results: dict[str, dict[str, dict]] = {name: {} for name in NAMES}
    for name in NAMES:
        for kind in KINDS:
            path = folder / f"{name}_{kind}.json"
            if not path.is_file():
                raise ValidationError(f"{path}: not found (scripts/validate_candidate.sh writes it)")
            try:
                results[name][kind] = json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise ValidationError(f"{path}: not a results JSON ({err})") from None
            groups = results[name][kind].get("groups")
            if kind in REAL and (groups is None or "holdout" in groups):
                raise ValidationError(f"{path}: scored split groups {groups}, not only non-holdout ones "
                                      "(run it with --groups train fusion)")
    for kind in KINDS:
        scored = [(results[n][kind]["data"], results[n][kind].get("groups")) for n in NAMES]
        if scored[0] != scored[1]:
            raise ValidationError(f"{kind}: candidate and baseline scored different data or groups: {scored}")
    return results


def ratio(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def detection(row: dict) -> str:
    """Sensitivity / specificity (false positives of the truly negative)."""
    return f"{ratio(row['sensitivity'])} / {ratio(row['specificity'])} (FP {row['fp']} of {row['fp'] + row['tn']})"


def naming(levels: dict | None) -> str:
    if not levels or not levels["total"]:
        return "–"
    return f"{levels['correct']}/{levels['total']} ({levels['correct'] / levels['total']:.3f})"


def table(results: dict[str, dict[str, dict]]) -> str:
    rows: list[tuple[str, ...]] = []

    def row(label: str, cell) -> None:
        rows.append((label, *(cell(results[n]) for n in NAMES)))

    def section(title: str) -> None:
        rows.append((f"**{title}**", "", ""))

    first = results[NAMES[0]]
    section(f"phantoms (`{first['phantoms']['data']}`, {first['phantoms']['studies']})")
    row("herniated disc: sensitivity / specificity (FP of healthy discs)",
        lambda r: detection(r["phantoms"]["herniation"]["per_disc"]))
    row("stenosis grade accuracy", lambda r: ratio(r["phantoms"]["stenosis"]["grade_accuracy"]))
    row("level naming", lambda r: naming(r["phantoms"]["levels"]))

    findings = first["findings"]
    section(f"real data, split groups {', '.join(findings['groups'])} (`{findings['data']}`)")
    row("studies: findings / Dice", lambda r: f"{r['findings']['studies']} / {r['evaluate']['subjects_evaluated']}")
    named = sorted({s for n in NAMES for s, lv in results[n]["findings"]["levels"]["per_set"].items() if lv["total"]})
    for st in named:
        row(f"{st}: level naming", lambda r, st=st: naming(r["findings"]["levels"]["per_set"].get(st)))
    if any(results[n]["findings"]["radiologist"] for n in NAMES):  # sets with a gradings.csv (SPIDER)
        def graded(cell):
            return lambda r: "–" if not r["findings"]["radiologist"] else cell(r["findings"]["radiologist"])

        def sac(g: dict) -> str:
            error = (g["dural_sac"] or {}).get("ap_mae_mm")
            return "–" if error is None else f"{error:.2f}"

        row("radiologist's gradings: herniation by order, sensitivity / specificity (FP of healthy discs)",
            graded(lambda g: detection(g["herniation_by_order"])))
        row("radiologist's gradings: level naming by order", graded(lambda g: naming(g["naming"])))
        row("dural sac AP diameter error against the expert masks (mm)", graded(sac))
    dice = sorted({(st, c) for n in NAMES for st, models in results[n]["evaluate"]["per_set"].items()
                   for c in models["ensemble"]})
    for st, c in dice:
        row(f"{st}: {c} ensemble Dice",
            lambda r, st=st, c=c: ratio(r["evaluate"]["per_set"].get(st, {}).get("ensemble", {}).get(c)))

    header = ("", *(f"{n} (`{results[n]['evaluate']['weights']}`)" for n in NAMES))
    lines = [header, ("---",) * len(header), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", metavar="DIR", help="folder of the candidate_*.json and baseline_*.json results")
    parser.add_argument("--out", help="markdown file to write (default DIR/validation.md)")
    args = parser.parse_args(argv)
    folder = Path(args.dir)
    try:
        text = table(load(folder))
    except ValidationError as err:
        parser.error(str(err))
    out = Path(args.out) if args.out else folder / "validation.md"
    out.write_text(text)
    print(text + f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
