"""The networks in process on PyTorch (made :func:`lumbarseg.pipeline.for_inference`, as
:meth:`lumbarseg.pipeline.Segmenter.load` does, and as trained), on onnxruntime in float32 and on
onnxruntime with int8 plane models, side by side in one run: time per study and held-out Dice.

The float32 files are what ``lumbarseg export`` writes (onnxruntime applies its full graph
optimisation, ``ORT_ENABLE_ALL``, when it loads them). The int8 variant is onnxruntime's static
quantisation of the three plane models (``quantize_static``: QDQ format, int8 weights per
output channel, uint8 activations, ranges calibrated on slices of *training* studies, never
the evaluated ones); the fusion, two small 3D convolutions, stays float32. Both onnxruntime
variants run through the in-process predictor of ``triton_bench.py`` (the Triton pipeline's
chunking of slice stacks); PyTorch is :class:`lumbarseg.pipeline.Segmenter`, what ``lumbarseg
infer`` runs. Every variant gets the same threads (onnxruntime's do not spin-wait between runs, which would
slow the PyTorch rounds that follow them):

* **time** of :func:`lumbarseg.analysis.analyse` on the 36x256x256 four-contrast phantom of
  ``triton_bench.py`` (IVDM3Seg's grid), from the loaded study to the report, split into
  segmentation and report: one warm-up per variant, then ``--repeats`` rounds in which each
  variant runs once in turn, so a load change hits all alike; medians;
* **held-out Dice** per class of the fused segmentation and of each plane (``lumbarseg
  evaluate``'s studies and scoring rule), every variant on every study.

    nice .venv/bin/python benchmarks/inference_backends.py --weights weights/lite --repeats 5

Writes ``benchmarks/results/inference_backends.{json,md}`` with the machine and its load. The int8
variant would ship only if its Dice stays within 0.005 of float32 on every class.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import triton_bench as tb  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# torch: lumbarseg.pipeline.Segmenter as loaded for inference (batch norm folded, channels last);
# torch_as_trained: the same networks as trained; float32 and int8: onnxruntime.
VARIANTS = ("torch", "torch_as_trained", "float32", "int8")
PLANE_MODELS = {"sagittal": "plane_sagittal", "coronal": "plane_coronal", "axial": "plane_axial"}
TOLERANCE = 0.005


class Calibration:
    """onnxruntime's ``CalibrationDataReader`` over one plane's slices of the calibration
    studies: every ``stride``-th slice, ``batch`` slices a feed."""

    def __init__(self, images: list[np.ndarray], plane: str, stride: int = 4, batch: int = 8):
        from lumbarseg import planes

        stacks = [planes.slice_stack(image, plane)[::stride] for image in images]
        self.feeds = iter([{"IMAGE": np.ascontiguousarray(stack[i : i + batch])}
                           for stack in stacks for i in range(0, len(stack), batch)])

    def get_next(self):
        return next(self.feeds, None)


def calibration_images(data: Path, count: int, spacing: float) -> tuple[list[str], list[np.ndarray]]:
    """Network inputs of ``count`` training-group studies, one per set in turn (the sets'
    contrasts and fields of view differ), never the evaluated holdout."""
    from lumbarseg import planes
    from lumbarseg.io import manifest
    from lumbarseg.training import group_of, load_split

    split = load_split()
    by_set: dict[str, list] = {}
    for entry in manifest.read_manifest(data):
        if entry.set in split and group_of(entry, split) == "train":
            by_set.setdefault(entry.set, []).append(entry)
    chosen = []
    while len(chosen) < count and any(by_set.values()):
        for entries in by_set.values():
            if entries and len(chosen) < count:
                chosen.append(entries.pop(0))
    names = [f"{e.set}/{e.subject}" for e in chosen]
    print("calibration studies: " + ", ".join(names), flush=True)
    return names, [planes.model_input(manifest.load_entry(e).primary, spacing) for e in chosen]


def quantise(float_repo: Path, int8_repo: Path, images: list[np.ndarray]) -> dict:
    """The int8 repository: ``float_repo`` with each plane model statically quantised."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    shutil.copytree(float_repo, int8_repo)
    sizes = {}
    # quant_pre_process leaves scratch files (a shape-inference model, external data) in the
    # working directory: keep them in the temporary one
    with contextlib.chdir(int8_repo.parent):
        for plane, model in PLANE_MODELS.items():
            source = float_repo / model / "1" / "model.onnx"
            prepared = int8_repo / model / "1" / "prepared.onnx"
            target = int8_repo / model / "1" / "model.onnx"
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            start = time.perf_counter()
            quantize_static(str(prepared), str(target), Calibration(images, plane), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
            prepared.unlink()
            sizes[model] = {"float32_kib": source.stat().st_size // 1024, "int8_kib": target.stat().st_size // 1024,
                            "quantise_s": round(time.perf_counter() - start, 1)}
            print(f"{model}: {sizes[model]}", flush=True)
    return sizes


def study_timing(segmenters: dict, repeats: int, seed: int) -> dict:
    """The phantom from the loaded study to the report on every variant, interleaved."""
    from lumbarseg import analysis, phantom

    study = phantom.generate(seed, shape=tb.IVDM_SHAPE, spacing=tb.IVDM_SPACING, modalities=tb.IVDM_MODALITIES)
    times = {v: {"study": [], "segment": [], "report": []} for v in segmenters}

    def run(variant: str) -> tuple[float, float]:
        seconds = {}

        def segment(series):
            start = time.perf_counter()
            result = segmenters[variant](series)
            seconds["segment"] = time.perf_counter() - start
            return result

        start = time.perf_counter()
        analysis.analyse(study, segment)
        return time.perf_counter() - start, seconds["segment"]

    for variant in segmenters:
        run(variant)  # warm-up
    for round_ in range(repeats):
        for variant in segmenters:
            total, segment = run(variant)
            for key, value in (("study", total), ("segment", segment), ("report", total - segment)):
                times[variant][key].append(round(value, 3))
        print(f"round {round_ + 1}/{repeats}: " + ", ".join(
            f"{v} {t['study'][-1]:.2f} s (segment {t['segment'][-1]:.2f})" for v, t in times.items()), flush=True)
    medians = {v: {key: round(statistics.median(runs), 3) for key, runs in t.items()} for v, t in times.items()}
    return {"shape": list(tb.IVDM_SHAPE), "spacing_mm": list(tb.IVDM_SPACING), "modalities": list(tb.IVDM_MODALITIES),
            "phantom_seed": seed, "runs": times, "median_s": medians,
            "ratio_to_torch": {v: round(m["study"] / medians["torch"]["study"], 3) for v, m in medians.items()},
            "target_s": 5.0}


def heldout_dice(segmenters: dict, data: Path, limit: int | None) -> dict:
    """Dice per class, fused and per plane, of every variant on ``lumbarseg evaluate``'s studies."""
    from lumbarseg import evaluation
    from lumbarseg.io import manifest

    entries = evaluation.evaluated_entries(data)[:limit]
    models = evaluation.MODELS
    subjects = []
    for n, entry in enumerate(entries, 1):
        study = manifest.load_entry(entry)
        if study.primary.label is None:
            continue
        row = {"set": entry.set, "subject": entry.subject, "dice": {}}
        for variant, segment in segmenters.items():
            segmentation = segment(study.primary)
            predictions = {**segmentation.plane_classes, "ensemble": segmentation.classes}
            row["dice"][variant] = {m: evaluation.study_dice(predictions[m], study) for m in models}
        subjects.append(row)
        print(f"{n}/{len(entries)} {entry.set}/{entry.subject}: ensemble " + ", ".join(
            f"{v} {np.mean(list(d['ensemble'].values())):.3f}" for v, d in row["dice"].items()), flush=True)

    def mean(rows: list[dict]) -> dict:
        keys = sorted({k for r in rows for k in r})
        return {k: round(float(np.mean([r[k] for r in rows if k in r])), 4) for k in keys}

    summary = {v: {m: mean([s["dice"][v][m] for s in subjects]) for m in models} for v in segmenters}
    difference = {m: {c: round(summary["int8"][m][c] - summary["float32"][m][c], 4) for c in summary["float32"][m]}
                  for m in models}
    per_set = {st: {v: mean([s["dice"][v]["ensemble"] for s in subjects if s["set"] == st]) for v in segmenters}
               for st in sorted({s["set"] for s in subjects})}
    return {"data": str(data), "rule": evaluation.RULE, "studies": len(subjects), "summary": summary,
            "difference_int8_minus_float32": difference,
            "largest_ensemble_drop": min(difference["ensemble"].values(), default=0.0),
            "per_set_ensemble": per_set, "subjects": subjects, "tolerance": TOLERANCE}


def markdown(r: dict) -> str:
    lines = ["# The networks in process: PyTorch, onnxruntime float32, onnxruntime int8", "", f"`{r['command']}`", "",
             tb.machine_line(r["machine"], r.get("note", "")), "",
             "int8: onnxruntime `quantize_static` of the three plane models (QDQ, int8 weights per channel, uint8 "
             "activations, MinMax ranges from slices of the training studies " + ", ".join(r["calibration"]["studies"])
             + "); the fusion stays float32. Every variant runs in process with the same threads; the onnxruntime "
             "ones chunk slice stacks as the Triton pipeline does, torch is `lumbarseg.pipeline.Segmenter`.", ""]
    lines += ["| plane model | float32 KiB | int8 KiB | quantisation s |", "|---|---|---|---|"]
    lines += [f"| {m} | {s['float32_kib']} | {s['int8_kib']} | {s['quantise_s']} |" for m, s in r["sizes"].items()]
    if "study" in r:
        s = r["study"]
        lines += ["", f"## The {'x'.join(map(str, s['shape']))} four-contrast study, in process", "",
                  f"Phantom seed {s['phantom_seed']}; `analysis.analyse` from the loaded study to the report: segment "
                  f"(resampling, networks, classes on the source grid) and report (post-processing, levels, "
                  f"measurements); median of {len(s['runs']['torch']['study'])} interleaved rounds after a warm-up each.", "",
                  "| variant | segment s | report s | study s (median) | / torch | study s, every round |", "|---|---|---|---|---|---|"]
        lines += [f"| {v} | {s['median_s'][v]['segment']} | {s['median_s'][v]['report']} | **{s['median_s'][v]['study']}** | "
                  f"{s['ratio_to_torch'][v]} | {', '.join(map(str, s['runs'][v]['study']))} |" for v in VARIANTS]
        lines += ["", f"Target: <= {s['target_s']} s per study."]
    if "dice" in r:
        d = r["dice"]
        classes = sorted(d["summary"]["float32"]["ensemble"])
        lines += ["", f"## Held-out Dice, every variant on the same {d['studies']} studies", "",
                  f"`lumbarseg evaluate`'s holdout of `{d['data']}`. Scoring: {d['rule']}.", "",
                  "| model | variant | " + " | ".join(classes) + " |", "|---|---|" + "---|" * len(classes)]
        for m in d["summary"]["float32"]:
            for v in VARIANTS:
                lines.append(f"| {m} | {v} | " + " | ".join(f"{d['summary'][v][m].get(c, float('nan')):.4f}" for c in classes) + " |")
            lines.append(f"| {m} | int8 - float32 | " + " | ".join(f"{d['difference_int8_minus_float32'][m].get(c, float('nan')):+.4f}"
                                                                 for c in classes) + " |")
        verdict = "within" if d["largest_ensemble_drop"] >= -d["tolerance"] else "outside"
        lines += ["", f"Largest drop of an ensemble class mean: {d['largest_ensemble_drop']:+.4f} ({verdict} the "
                  f"tolerance of {d['tolerance']})."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=REPO / "weights" / "lite")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--calibration-studies", type=int, default=8, help="training studies the int8 ranges come from")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="phantom seed of the timed study")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N held-out studies")
    parser.add_argument("--skip", nargs="*", default=[], choices=["study", "dice"])
    parser.add_argument("--note", default="")
    parser.add_argument("--out", type=Path, default=tb.RESULTS / "inference_backends.json")
    args = parser.parse_args(argv)

    import torch

    from lumbarseg import pipeline
    from lumbarseg.pipeline import Segmenter
    from lumbarseg.triton.export import TEMPLATE, export

    spacing = Segmenter.load(args.weights).spacing
    result = {"command": "benchmarks/inference_backends.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": tb.machine(args.threads), "note": args.note}
    with tempfile.TemporaryDirectory() as tmp:
        float_repo, int8_repo = Path(tmp) / "float32", Path(tmp) / "int8"
        shutil.copytree(TEMPLATE, float_repo, ignore=shutil.ignore_patterns("*.onnx", "__pycache__"))
        export(args.weights, float_repo)
        names, images = calibration_images(args.data, args.calibration_studies, spacing)
        result["calibration"] = {"studies": names, "slices_every": 4}
        result["sizes"] = quantise(float_repo, int8_repo, images)
        del images
        torch.set_num_threads(args.threads)
        # onnxruntime's threads would spin-wait between its runs and slow the PyTorch rounds after them
        onnx = {v: tb.OnnxPredictor(repo, args.threads, spacing, spinning=False)
                for v, repo in (("float32", float_repo), ("int8", int8_repo))}
        segmenters = {"torch": Segmenter.load(args.weights).segment,
                      "torch_as_trained": Segmenter.load(args.weights, optimise=False).segment,
                      **{v: functools.partial(pipeline.segment_series, spacing=spacing, predict=p.predict) for v, p in onnx.items()}}
        if "study" not in args.skip:
            result["study"] = study_timing(segmenters, args.repeats, args.seed)
        if "dice" not in args.skip:
            result["dice"] = heldout_dice(segmenters, args.data, args.limit)
    tb.write_results(result, args.out, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
