"""``lumbarseg`` command line: one subcommand per job, each with ``-h``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lumbarseg import __version__

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "lite"
SPLIT_GROUPS = ("train", "fusion", "holdout")  # lumbarseg.training.GROUPS, whose import loads torch: not for -h


def _phantoms(args: argparse.Namespace) -> int:
    from lumbarseg import phantom

    overrides = {}
    if args.modalities:
        overrides["modalities"] = tuple(args.modalities.split(","))
    manifest = phantom.write_phantoms(Path(args.out), args.count, args.seed, **overrides)
    print(f"wrote {args.count} studies and {manifest}")
    if args.dicom:
        from lumbarseg.io.dicom import write_dicom_study

        for i in range(args.count):
            study = phantom.clinical_study(phantom.study_seed(args.seed, i), **overrides)
            folder = write_dicom_study(study, Path(args.out) / "dicom" / study.subject, patient_id=study.subject)
            print(f"wrote clinical DICOM layout (sagittal + angulated axial stacks) to {folder}")
    _inspect_paths([manifest.parent])
    return 0


def _labelled(label, structures: dict[int, str]) -> str:
    """'9 classes; discs T11-T12..L5-S1 (7); bodies T11..L5 (7)' for a label map."""
    import numpy as np

    from lumbarseg import tissues

    names = [structures.get(int(v), f"{int(v)}=?") for v in np.unique(label) if v]
    known = [n for n in names if tissues.is_known_structure(n)]
    parts = [f"{len({t.name for n in known for t in tissues.classes_of(n)} - {'background'})} classes"]
    for kind, order in (("discs", tissues.DISC_LEVELS), ("bodies", tissues.VERTEBRAE)):
        found = [n for n in order if n in known]
        if found:
            parts.append(f"{kind} {found[0]}..{found[-1]} ({len(found)})" if len(found) > 1 else f"{kind} {found[0]}")
    unknown = len(names) - len(known)
    return "; ".join(parts + ([f"{unknown} unnamed values"] if unknown else []))


def _inspect_paths(paths: list[Path]) -> None:
    from rich.console import Console
    from rich.table import Table

    from lumbarseg import io

    table = Table("study", "series", "modalities", "shape", "spacing mm", "axes", "labelled")
    for path in paths:
        if (path / "manifest.csv").is_file() or path.name == "manifest.csv":
            studies = [io.load_entry(e) for e in io.read_manifest(path)]
        else:
            studies = [io.load_study(path)]
        for study in studies:
            for series in study.series:
                present = ""
                if series.label is not None:
                    present = _labelled(series.label, study.structures)
                table.add_row(
                    f"{study.set}/{study.subject}" if study.set else study.subject,
                    series.description, ";".join(series.modalities),
                    "x".join(map(str, series.shape)),
                    "x".join(f"{s:.2g}" for s in series.spacing), "".join(series.axcodes), present,
                )
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def _inspect(args: argparse.Namespace) -> int:
    _inspect_paths([Path(p) for p in args.paths])
    return 0


def _train(args: argparse.Namespace) -> int:
    import logging

    from lumbarseg.training import TrainingPreset, train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(), logging.FileHandler(out / "train.log")])
    model = train(TrainingPreset.load(args.preset), [Path(d) for d in args.data], out,
                  init=Path(args.init) if args.init else None,
                  **({"networks": tuple(args.networks)} if args.networks else {}))
    print(f"weights: {model}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from lumbarseg.evaluation import evaluate, print_results

    results = evaluate(args.weights, args.data, all_subjects=args.all_subjects, groups=tuple(args.groups))
    Path(args.out).write_text(json.dumps(results, indent=1))
    print_results(results)
    print(f"wrote {args.out}")
    return 0


def _evaluate_findings(args: argparse.Namespace) -> int:
    import json

    from lumbarseg.findings import evaluate_findings, print_findings

    results = evaluate_findings(args.data, args.source, args.weights, reports=args.reports,
                                all_subjects=args.all_subjects, groups=tuple(args.groups))
    Path(args.out).write_text(json.dumps(results, indent=1))
    print_findings(results)
    print(f"wrote {args.out}")
    return 0


def _al_simulate(args: argparse.Namespace) -> int:
    import logging

    from lumbarseg import active_learning as al

    if args.compare:
        if not args.plot:
            args.parser.error("--compare needs --plot PNG")
        curves = [al.load_curve(Path(p)) for p in args.compare]
        al.plot_curves(curves, Path(args.plot))
        print(f"wrote {args.plot}")
        try:
            summary = al.compare(curves)
        except al.ActiveLearningError as err:
            args.parser.error(str(err))
        for strategy, mean in summary["curves"]["mean"].items():
            print(f"{strategy:>20} seeds {mean['seeds']}: " + "  ".join(
                f"{n} labelled {d:.3f}" for n, d in zip(mean["n_labelled"], mean["dice"])))
        for strategy, ratio in summary["label_ratio"].items():
            needed = ratio["labelled_to_reach_it"]
            print(f"random reaches mean Dice {ratio['baseline_final_dice']:.3f} with {ratio['baseline_labelled']} "
                  f"labelled; {strategy} " + ("never does" if needed is None else
                                             f"with {needed:.1f}: ratio {ratio['ratio']:.2f}"))
        for strategy, counts in summary["below_epistemic"].items():
            if counts:
                print(f"{strategy} is below epistemic by more than the seeds' spread at {counts} labelled")
        for f in summary["forgotten"]:
            print(f"FORGOTTEN: {f['strategy']} seed {f['seed']} round {f['round']} lost {f['class']}")
        if args.summary:
            Path(args.summary).parent.mkdir(parents=True, exist_ok=True)
            Path(args.summary).write_text(json.dumps(summary, indent=1))
            print(f"wrote {args.summary}")
        return 0
    missing = [f"--{n.replace('_', '-')}" for n in ("data", "strategy", "rounds", "per_round", "out")
               if getattr(args, n) is None]
    if missing:
        args.parser.error(f"a simulation needs {', '.join(missing)} (or use --compare CURVE... --plot PNG)")
    out = Path(args.out)
    work = Path(args.work) if args.work else out.parent / "al_runs"
    work.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(), logging.FileHandler(work / "al.log")])
    split = None
    if args.split:
        from lumbarseg.training import load_split

        split = load_split(Path(args.split))
    try:
        curve = al.simulate([Path(d) for d in args.data], args.strategy, args.rounds, args.per_round, work,
                            initial=args.initial, preset=args.preset, finetune_preset=args.finetune_preset,
                            seed=args.seed, mc_samples=args.mc_samples, candidates=args.candidates,
                            init_weights=Path(args.init_weights) if args.init_weights else None, split=split)
    except al.ActiveLearningError as err:
        args.parser.error(str(err))
    al.save_curve(curve, out)
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def _add_subject_choice(p: argparse.ArgumentParser) -> None:
    """--groups or --all-subjects: which subjects of the sets in configs/data/split.json are scored."""
    chosen = p.add_mutually_exclusive_group()
    chosen.add_argument("--groups", nargs="+", choices=SPLIT_GROUPS, default=["holdout"], metavar="GROUP",
                        help="score only the subjects of these groups of configs/data/split.json "
                             f"({', '.join(SPLIT_GROUPS)}; default holdout, which also takes the subjects no group "
                             "names); e.g. train fusion to judge a candidate before any held-out figure. Sets the "
                             "split does not name are scored whole")
    chosen.add_argument("--all-subjects", action="store_true", help="score every subject, those trained on too")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lumbarseg", description="Lumbar spine MRI segmentation: studies, models, serving."
    )
    parser.add_argument("--version", action="version", version=f"lumbarseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("phantoms", help="write synthetic lumbar spine studies with full ground truth",
                       description="Write synthetic lumbar spine studies (NIfTI image, label map, truth JSON) "
                                   "and a manifest.csv in the shared-data layout.")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--count", type=int, default=3, help="number of studies (default 3)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same studies")
    p.add_argument("--modalities", help="comma-separated contrasts for every study, e.g. t2w,t1w "
                                        "(default: 1-4 drawn per study)")
    p.add_argument("--dicom", action="store_true",
                   help="also write each study in the clinical layout as DICOM: a sparse sagittal stack "
                        "plus one angulated axial stack per disc, under OUT/dicom/<subject>/")
    p.set_defaults(run=_phantoms)

    p = sub.add_parser("inspect", help="summarise studies: series, modalities, grid, labelled structures",
                       description="Load studies the way every other command does and print a summary. "
                                   "PATH is a NIfTI file, a DICOM folder, an IVDM3Seg prefix or a data "
                                   "folder with a manifest.csv.")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.set_defaults(run=_inspect)

    p = sub.add_parser("train", help="train the three plane networks, then the fusion on out-of-fold predictions",
                       description="Train on data folders (manifest layout) plus phantoms, with the subject split "
                                   "of configs/data/split.json. Resumes from OUT/checkpoints when rerun.")
    p.add_argument("--data", nargs="+", required=True, help="data folders with a manifest.csv")
    p.add_argument("--preset", default="lite", help="training preset: a name in configs/training or a JSON path")
    p.add_argument("--out", required=True, help="run folder: checkpoints, cache, log, learning curves, model/")
    p.add_argument("--init", metavar="WEIGHTS", help="start every network from this weights folder (a warm start, "
                                                     "e.g. weights/lite), not from random weights")
    p.add_argument("--networks", nargs="+", metavar="NET",
                   help="train only these of sagittal, coronal, axial, fusion (default all); the others are taken from --init")
    p.set_defaults(run=_train)

    p = sub.add_parser("evaluate", help="Dice per class, per subject and per level for each plane and the ensemble",
                       description="Evaluate a weights folder on a data folder (manifest layout). Sets named in "
                                   "configs/data/split.json are scored on their holdout subjects only, unless "
                                   "--groups or --all-subjects says otherwise.")
    p.add_argument("--data", required=True, help="data folder with a manifest.csv (root or one set)")
    p.add_argument("--weights", default=str(DEFAULT_WEIGHTS), help=f"weights folder (default {DEFAULT_WEIGHTS})")
    p.add_argument("--out", required=True, help="results JSON")
    _add_subject_choice(p)
    p.set_defaults(run=_evaluate)

    p = sub.add_parser("evaluate-findings", help="herniation, hernia top point, stenosis and level naming against truth",
                       description="Findings (lumbarseg/measure.py) of every study of a data folder against its truth: "
                                   "phantom <subject>_truth.json (herniation per disc and per axial slice, top point, "
                                   "height, stenosis), the manifest's level names (level-naming accuracy) and a "
                                   "radiologist's gradings.csv beside the images (SPIDER: herniation per disc; with "
                                   "--source model also the dural sac against the expert masks).")
    p.add_argument("--data", required=True, help="data folder with a manifest.csv")
    p.add_argument("--out", required=True, help="results JSON")
    p.add_argument("--source", choices=("truth", "model"), default="truth",
                   help="findings from the ground-truth masks (default) or from the model's predictions")
    p.add_argument("--weights", default=str(DEFAULT_WEIGHTS), help=f"weights folder for --source model (default {DEFAULT_WEIGHTS})")
    p.add_argument("--reports", help="also write each study's findings report JSON into this folder")
    _add_subject_choice(p)
    p.set_defaults(run=_evaluate_findings)

    p = sub.add_parser("al-simulate", help="simulate active learning: holdout Dice against labelled studies per strategy",
                       description="Start from a few labelled pool studies (the split's train+fusion groups); each "
                                   "round score the unlabelled pool with the current model, label the best K by the "
                                   "strategy, fine-tune on all labelled studies (preset al_finetune) and evaluate on the "
                                   "split's holdout. Writes the curve JSON and a PNG beside it. With --compare, plot "
                                   "curves side by side instead.")
    p.add_argument("--data", nargs="+", help="data folders with a manifest.csv")
    p.add_argument("--strategy", choices=("random", "disagreement", "disagreement_level", "disagreement_error",
                                          "disagreement_diverse", "epistemic"),
                   help="random: seeded draw; disagreement: plane disagreement (lumbarseg.disagreement, the app's "
                        "class_rate), highest first; disagreement_level: per-class rates (discs, dural sac weighted "
                        "up) with the worst disc level; disagreement_error: per-class rates weighted by the "
                        "holdout error; disagreement_diverse: class_rate with a penalty for near-identical studies "
                        "of one set; epistemic: MC-dropout entropy of the fused probabilities "
                        "(docs/active_learning.md)")
    p.add_argument("--rounds", type=int, help="rounds after the initial model")
    p.add_argument("--per-round", type=int, help="studies labelled per round (K)")
    p.add_argument("--out", help="curve JSON (the PNG goes beside it)")
    p.add_argument("--initial", type=int, default=3, help="labelled studies at the start, a seeded draw (default 3)")
    p.add_argument("--preset", default="al_round", help="training preset of round 0 from scratch (default al_round)")
    p.add_argument("--finetune-preset", default="al_finetune",
                   help="training preset of the fine-tuning rounds (and of round 0 with --init-weights; "
                        "default al_finetune)")
    p.add_argument("--candidates", type=int,
                   help="score only a seeded sample of this many unlabelled studies per round (default: all)")
    p.add_argument("--init-weights", help="weights folder the initial model fine-tunes (default: train from scratch)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial draw, random picks and MC dropout")
    p.add_argument("--mc-samples", type=int, default=8, help="MC-dropout samples per study for epistemic (default 8)")
    p.add_argument("--split", help="subject split JSON (default configs/data/split.json); its holdout group is "
                                   "evaluated, never picked")
    p.add_argument("--work", help="folder of the round models (default: al_runs beside OUT); simulations sharing it "
                                  "share their identical first round, so run them one after another")
    p.add_argument("--compare", nargs="+", metavar="CURVE", help="curve JSONs to plot side by side (with --plot)")
    p.add_argument("--plot", help="PNG for --compare")
    p.add_argument("--summary", help="with --compare: JSON of the seed-averaged curves per class, each strategy's "
                                     "labelled-study ratio to reach random's final Dice, where a disagreement "
                                     "variant is below epistemic by more than the seeds' spread, forgotten classes")
    p.set_defaults(run=_al_simulate, parser=p)

    from lumbarseg.triton.commands import add_commands as add_serving_commands  # export, triton, infer

    add_serving_commands(sub)
    from lumbarseg.viewer import add_commands as add_viewer_commands  # orthanc serve|upload, viewer

    add_viewer_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from lumbarseg.config import ConfigError
    from lumbarseg.io.study import StudyError

    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (StudyError, ConfigError) as err:
        print(f"lumbarseg {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
