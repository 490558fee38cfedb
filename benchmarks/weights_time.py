"""In-process study time of weights folders, side by side in one run.

Retraining changes the weights, not the networks, but a new rule (the narrow-slab rule, a
post-processing change) or a new preset can change what a study costs. Each weights folder
analyses the same 36x256x256 four-contrast phantom (IVDM3Seg's grid, as ``triton_bench.py``):
:func:`lumbarseg.analysis.analyse` (three planes, fusion, post-processing, findings report),
one warm-up each, then ``--repeats`` rounds in which every folder runs once in turn, so a load
change on this shared machine hits all of them alike. Medians and the ratio to the first folder.

    python benchmarks/weights_time.py --weights OLD NEW --labels previous shipped

Writes ``benchmarks/results/weights_time.{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from lumbarseg import analysis, phantom, pipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))
import triton_bench as tb  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def measure(folders: list[Path], repeats: int, seed: int) -> list[list[float]]:
    """Seconds per :func:`analysis.analyse` of the phantom, ``repeats`` per folder, interleaved."""
    study = phantom.generate(seed, shape=tb.IVDM_SHAPE, spacing=tb.IVDM_SPACING, modalities=tb.IVDM_MODALITIES)
    segmenters = [pipeline.Segmenter.load(f) for f in folders]
    for segmenter in segmenters:
        analysis.analyse(study, segmenter.segment)  # warm-up
    times: list[list[float]] = [[] for _ in folders]
    for _ in range(repeats):
        for segmenter, own in zip(segmenters, times):
            start = time.perf_counter()
            analysis.analyse(study, segmenter.segment)
            own.append(time.perf_counter() - start)
    return times


def markdown(result: dict) -> str:
    lines = ["# In-process study time by weights folder", "",
             tb.machine_line(result["machine"], f"{result['repeats']} interleaved rounds after a warm-up; "
                             f"phantom {'x'.join(map(str, tb.IVDM_SHAPE))}, four contrasts, seed {result['seed']}."), "",
             "| weights | folder | median s | ratio to the first |", "|---|---|---|---|"]
    first = result["rows"][0]["median_s"]
    for row in result["rows"]:
        lines.append(f"| {row['label']} | `{row['weights']}` | {row['median_s']:.2f} | {row['median_s'] / first:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", nargs="+", required=True, help="weights folders; the first is the reference")
    parser.add_argument("--labels", nargs="+", help="a name per folder for the table (default: folder names)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="phantom seed (default 0)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--out", default=str(RESULTS / "weights_time.json"), help="results JSON (Markdown beside it)")
    args = parser.parse_args(argv)
    labels = args.labels or [Path(w).name for w in args.weights]
    if len(labels) != len(args.weights):
        parser.error("--labels needs one name per --weights folder")
    torch.set_num_threads(args.threads)
    times = measure([Path(w) for w in args.weights], args.repeats, args.seed)
    result = {"command": " ".join(["benchmarks/weights_time.py", *(argv or sys.argv[1:])]),
              "machine": tb.machine(args.threads), "repeats": args.repeats, "seed": args.seed,
              "rows": [{"label": label, "weights": w, "median_s": round(statistics.median(t), 3),
                        "seconds": [round(s, 3) for s in t]} for label, w, t in zip(labels, args.weights, times)]}
    tb.write_results(result, Path(args.out), markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
