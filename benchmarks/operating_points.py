"""What the in-process pipeline costs at other operating points: model grid spacing and network
width, side by side in one run on the 36x256x256 four-modality study of ``triton_bench``.

The shipped ``lite`` weights run at 1.5 mm; the <= 5 s target for this study is missed there
(see ``triton_bench``). This measures how far a coarser grid and a narrower network would go,
before anyone spends a training run on one. Timing does not depend on the weights, so every
point uses untrained networks of its shape; what each point would cost in Dice needs a
training run and ``lumbarseg evaluate``, and is not measured here.

    .venv/bin/python benchmarks/operating_points.py --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import triton_bench as tb  # noqa: E402

# Network shapes as plane-network presets (configs/models/lite.json and a narrower variant).
NARROW = {"block": "basic", "layers": [2, 2, 2], "widths": [16, 32, 64], "stem_width": 16,
          "decoder_widths": [32, 24, 12], "dropout": 0.1, "input_size": 128}
SHAPES = {"lite": "lite", "narrow": NARROW}
POINTS = "lite@1.5,lite@2.0,lite@2.5,narrow@1.5,narrow@2.0"


def segmenter(shape: str, spacing: float):
    import torch

    from lumbarseg import pipeline, planes, tissues
    from lumbarseg.networks.fusion import fusion_net
    from lumbarseg.networks.plane_net import plane_net

    torch.manual_seed(0)
    k = tissues.NUM_TISSUES
    models = {p: plane_net(preset=SHAPES[shape], num_classes=k) for p in planes.PLANES}
    return pipeline.Segmenter(models, fusion_net(num_classes=k), spacing, {"preset": shape, "untrained": True})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", default=POINTS, help=f"comma-separated SHAPE@SPACING_MM; shapes: {sorted(SHAPES)}")
    parser.add_argument("--weights", default="weights/lite", help="trained weights: the post-processing and report cost")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (every point once per round)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", default=str(tb.RESULTS / "operating_points.json"), help="results JSON (and .md beside it)")
    parser.add_argument("--note", default="", help="context to record with the results (e.g. other load)")
    args = parser.parse_args(argv)

    import torch

    from lumbarseg import analysis, phantom, pipeline, planes

    torch.set_num_threads(args.threads)
    study = phantom.generate(0, shape=tb.IVDM_SHAPE, spacing=tb.IVDM_SPACING, modalities=tb.IVDM_MODALITIES)
    series = study.primary
    segmenters = {}
    for point in args.points.split(","):
        shape, spacing = point.split("@")
        if shape not in SHAPES:
            parser.error(f"unknown network shape {shape!r}; known: {sorted(SHAPES)}")
        segmenters[point] = segmenter(shape, float(spacing))
    shipped = pipeline.Segmenter.load(args.weights)
    segmentation = shipped.segment(series)
    # What follows the networks (post-processing, measurements, report) depends on the label map,
    # not on the grid: an untrained network's noise would inflate it, so time it on the shipped
    # model's segmentation once, and each point's segmentation (resampling + networks) on its own.
    segment_s: dict[str, list[float]] = {point: [] for point in segmenters}
    report_s: list[float] = []
    for seg in segmenters.values():
        seg.segment(series)  # warm-up
    for round_ in range(args.repeats):
        for point, seg in segmenters.items():
            start = time.perf_counter()
            seg.segment(series)
            segment_s[point].append(round(time.perf_counter() - start, 3))
        start = time.perf_counter()
        analysis.analyse(study, lambda _: segmentation)
        report_s.append(round(time.perf_counter() - start, 3))
        print(f"round {round_ + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in segment_s.items())
              + f", report {report_s[-1]:.1f} s", flush=True)
    report = statistics.median(report_s)
    rows = []
    for point, seg in segmenters.items():
        image = planes.model_input(series, seg.spacing)
        median = statistics.median(segment_s[point])
        rows.append({"point": point, "model_grid": list(image.shape[1:]),
                     "gflop": round(tb.pipeline_flops(seg, image) / 1e9, 1), "segment_median_s": round(median, 3),
                     "segment_s": segment_s[point], "study_estimate_s": round(median + report, 3)})
    first = rows[0]["study_estimate_s"]
    for row in rows:
        row["ratio_to_first"] = round(row["study_estimate_s"] / first, 3)
    result = {"study": {"shape": list(tb.IVDM_SHAPE), "spacing_mm": list(tb.IVDM_SPACING),
                        "modalities": list(tb.IVDM_MODALITIES), "phantom_seed": 0},
              "machine": tb.machine(args.threads), "repeats": args.repeats, "note": args.note, "weights": args.weights,
              "report_median_s": round(report, 3), "report_s": report_s, "target_s": 5.0, "points": rows,
              "shapes": {"narrow": NARROW, "lite": "configs/models/lite.json"}}
    tb.write_results(result, Path(args.out), markdown)
    return 0


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = ["# Operating points of the in-process pipeline", "",
             f"`benchmarks/operating_points.py --repeats {r['repeats']}` on the {'x'.join(map(str, r['study']['shape']))} "
             f"four-modality phantom, {m['threads_per_backend']} torch threads, interleaved rounds. *Segment*: resampling "
             "to the model grid, three planes, fusion, classes back on the source grid (untrained networks of each shape: "
             "timing does not depend on the weights). *Report*: post-processing, measurements and report on the "
             f"shipped model's segmentation ({r['weights']}), median {r['report_median_s']} s, the same for every point.", "",
             tb.machine_line(m, r["note"]), "",
             "| shape @ grid mm | model grid | GFLOP (networks) | segment s (median) | + report = study s | vs first |",
             "|---|---|---|---|---|---|"]
    for p in r["points"]:
        lines.append(f"| {p['point']} | {'x'.join(map(str, p['model_grid']))} | {p['gflop']} | {p['segment_median_s']} | "
                     f"{p['study_estimate_s']} | {p['ratio_to_first']:.2f}x |")
    lines.append(f"\nTarget: <= {r['target_s']} s per study. Only `lite@1.5` has trained weights; the other rows show "
                 "what a preset at that point would cost to run, not what it would score.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
