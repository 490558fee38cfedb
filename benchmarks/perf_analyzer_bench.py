"""Triton's own load generator, ``perf_analyzer``, against ``spine_pipeline`` on the local CPU
server, next to the project's client sending the same request, in one run: figures a Triton
user can compare with their own.

PyPI's ``perf-analyzer`` is a placeholder (0.1.0) and current ``tritonclient`` wheels do not ship
the binary; ``benchmarks/get_perf_analyzer.sh`` takes it from the tritonclient 2.41.0 wheel, which
does. Both clients send the same request: ``IMAGE (3, X, Y, Z)`` of a phantom's network-input
shape, filled with zeros (the work does not depend on the values; perf_analyzer's "random" makes
NaNs, which the server refuses), and get every output back, as perf_analyzer asks for all.

    benchmarks/get_perf_analyzer.sh
    .venv/bin/python benchmarks/perf_analyzer_bench.py --weights weights/lite
"""

from __future__ import annotations

import argparse
import csv
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import triton_bench as tb  # noqa: E402

from lumbarseg.triton.server import GRPC_ADMIN_HEADER  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BINARY = REPO / ".venv" / "perf_analyzer" / "perf_analyzer"


def perf_analyzer(binary: Path, port: int, shape: list[int], concurrency: str, work: Path, requests: int,
                  key: str, trials: int = 3) -> list[dict]:
    """Rows of perf_analyzer's CSV report (latencies in ms) over gRPC (HTTP inference is closed:
    lumbarseg.triton.server)."""
    protocol = "grpc"
    report = work / f"perf_{protocol}.csv"
    command = [str(binary), "-m", "spine_pipeline", "-u", f"127.0.0.1:{port}", "-i", protocol,
               "--shape", "IMAGE:" + ",".join(map(str, shape)), "--input-data", "zero",
               "--concurrency-range", concurrency, "--measurement-mode", "count_windows",
               "--measurement-request-count", str(requests), "--stability-percentage", "50", "--max-trials", str(trials),
               "--percentile", "90", "-f", str(report),
               "-H", f"{GRPC_ADMIN_HEADER}:{key}"]  # inference is restricted
    print(" ".join(command), flush=True)
    run = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    (work / f"perf_{protocol}.log").write_text(run.stdout + run.stderr)
    if run.returncode != 0:
        raise RuntimeError(f"perf_analyzer ({protocol}) exited {run.returncode}: {(run.stdout + run.stderr)[-800:]}")
    rows = []
    with report.open() as f:
        for row in csv.DictReader(f):
            rows.append({"concurrency": int(row["Concurrency"]), "inferences_per_s": float(row["Inferences/Second"]),
                         **{k: round(float(row[c]) / 1000, 1) for k, c in (
                             ("p50_ms", "p50 latency"), ("p90_ms", "p90 latency"), ("client_send_ms", "Client Send"),
                             ("server_queue_ms", "Server Queue"), ("server_compute_ms", "Server Compute Infer"),
                             ("client_recv_ms", "Client Recv"))}})
    return sorted(rows, key=lambda row: row["concurrency"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="weights/lite", help="weights folder")
    parser.add_argument("--repository", help="an exported model repository of --weights to copy (default: export)")
    parser.add_argument("--perf-analyzer", default=str(DEFAULT_BINARY), help="perf_analyzer (get_perf_analyzer.sh)")
    parser.add_argument("--seed", type=int, default=0, help="phantom study seed (its network input's shape)")
    parser.add_argument("--concurrency", default="1:2", help="perf_analyzer --concurrency-range")
    parser.add_argument("--requests", type=int, default=3, help="requests per measurement window")
    parser.add_argument("--trials", type=int, default=3,
                        help="measurement windows perf_analyzer may take to find three within 50%% of each other")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads per python model in the server")
    parser.add_argument("--instances", type=int, default=1,
                        help="instances of every model in the CPU configs (the repository's own: 1)")
    parser.add_argument("--out", default=str(tb.RESULTS / "perf_analyzer_lite.json"), help="results JSON (and .md beside it)")
    parser.add_argument("--note", default="", help="context to record with the results")
    args = parser.parse_args(argv)
    binary = Path(args.perf_analyzer)
    if not binary.is_file():
        parser.error(f"{binary}: no perf_analyzer; run benchmarks/get_perf_analyzer.sh")

    import os

    import numpy as np
    import tritonclient.grpc as grpcclient

    from lumbarseg import phantom, pipeline, planes
    from lumbarseg.triton.export import TEMPLATE, export
    from lumbarseg.triton.server import TritonServer, admin_headers

    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the stubs' numpy/torch; onnxruntime's: the scaled configs
    work = Path(tempfile.mkdtemp(prefix="perf_analyzer_bench_"))
    repository = work / "model_repository"
    if args.repository:
        shutil.copytree(args.repository, repository, ignore=shutil.ignore_patterns("__pycache__", "tmp*"))
    else:
        shutil.copytree(TEMPLATE, repository, ignore=shutil.ignore_patterns("*.onnx", "__pycache__"))
        export(Path(args.weights), repository)
    series = phantom.generate(args.seed).primary
    spacing = pipeline.Segmenter.load(args.weights).spacing
    image = np.zeros((3, *planes.grid_size(planes.to_canonical(series), spacing)), np.float32)
    server = TritonServer(repository, http_port=tb.free_port(), grpc_port=tb.free_port(), config_name="cpu",
                          log_path=work / "triton.log", instances=args.instances, threads=args.threads)
    result = {"command": " ".join(["benchmarks/perf_analyzer_bench.py", *(argv or sys.argv[1:])]), "note": args.note,
              "machine": tb.machine(args.threads), "weights": args.weights, "perf_analyzer": "tritonclient 2.41.0 wheel",
              "request": {"model": "spine_pipeline", "input_shape": list(image.shape), "phantom_seed": args.seed},
              "instances_per_model": args.instances}
    with server:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")

        def request() -> float:
            tensor = grpcclient.InferInput("IMAGE", list(image.shape), "FP32")
            tensor.set_data_from_numpy(image)
            start = time.perf_counter()
            client.infer("spine_pipeline", [tensor], headers=admin_headers(server.key))  # every output, as perf_analyzer asks
            return time.perf_counter() - start

        request()  # warm-up
        if args.instances > 1:  # every instance's first request loads its sessions: warm them all up
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(2 * args.instances) as pool:
                list(pool.map(lambda _: request(), range(2 * args.instances)))
        ours = [request() for _ in range(args.requests)]
        result["project_client_grpc"] = {"requests": len(ours), "median_ms": round(statistics.median(ours) * 1000, 1),
                                         "latencies_ms": [round(t * 1000, 1) for t in ours]}
        print("project client:", result["project_client_grpc"], flush=True)
        result["perf_analyzer_rows"] = {"grpc": perf_analyzer(binary, server.grpc_port, list(image.shape), args.concurrency,
                                                              work, args.requests, server.key, args.trials)}
    tb.write_results(result, Path(args.out), markdown)
    return 0


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = ["# perf_analyzer against spine_pipeline", "",
             f"`{r['command']}`; perf_analyzer from the {r['perf_analyzer']}; input IMAGE "
             f"{'x'.join(map(str, r['request']['input_shape']))} (phantom seed {r['request']['phantom_seed']}'s network "
             f"input shape), every output returned; Triton 2.51 CPU configs, {r.get('instances_per_model', 1)} "
             "instance(s) of every model.", "",
             tb.machine_line(m, r["note"]), "",
             "| client | protocol | concurrency | inferences/s | p50 ms | p90 ms | server compute ms | server queue ms |",
             "|---|---|---|---|---|---|---|---|"]
    for protocol, rows in r["perf_analyzer_rows"].items():
        for row in rows:
            lines.append(f"| perf_analyzer | {protocol} | {row['concurrency']} | {row['inferences_per_s']:.3f} | "
                         f"{row['p50_ms']} | {row['p90_ms']} | {row['server_compute_ms']} | {row['server_queue_ms']} |")
    c = r["project_client_grpc"]
    lines.append(f"| tritonclient (this project's request) | grpc | 1 | {1000 / c['median_ms']:.3f} | {c['median_ms']} | "
                 "| | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
