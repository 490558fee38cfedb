"""Memory of the local serving stack, per process: the Triton server with its python stubs
(CPU configs) and the MONAI Label app on the Triton backend, idle and while each serves the
benchmark study. Reports RSS, PSS and USS per process (see ``triton_bench.tree_memory``: summed
RSS counts shared pages once per process, summed PSS adds up to real occupancy) and adds them
to a ``triton_bench`` results file, re-rendering its Markdown.

    .venv/bin/python benchmarks/stack_memory.py --weights weights/lite --repository model_repository \\
        --results benchmarks/results/triton_bench_lite.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import triton_bench as tb  # noqa: E402


def peak_during(pids: dict[str, int], action) -> tuple[dict, object]:
    """Run ``action`` while sampling :func:`tb.tree_memory` of each tree; the sample with the
    largest summed PSS (per tree) and the action's result."""
    peaks = {name: {"pss_mib": 0} for name in pids}
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            for name, pid in pids.items():
                now = tb.tree_memory(pid)
                if now["pss_mib"] > peaks[name]["pss_mib"]:
                    peaks[name] = now
            stop.wait(0.5)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        result = action()
    finally:
        stop.set()
        thread.join()
    return peaks, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--repository", required=True, help="an exported model repository of --weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", required=True, help="triton_bench results JSON to add the figures to")
    parser.add_argument("--key", default="stack_memory", help="where in the results (stack_memory or stack_memory_<variant>)")
    parser.add_argument("--ort-arena", choices=["on", "off"], default="on",
                        help="onnxruntime memory arena in the server's plane and fusion models")
    args = parser.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = os.environ["LUMBARSEG_ORT_THREADS"] = str(args.threads)
    os.environ["LUMBARSEG_ORT_ARENA"] = "1" if args.ort_arena == "on" else "0"

    from lumbarseg import phantom
    from lumbarseg.triton.client import TritonSegmenter
    from lumbarseg.triton.server import TritonServer

    series = phantom.generate(args.seed).primary
    work = Path(tempfile.mkdtemp(prefix="stack_memory_"))
    out: dict = {"ort_arena": args.ort_arena, "load_average_start": [round(x, 2) for x in os.getloadavg()]}
    try:
        repository = work / "model_repository"
        shutil.copytree(args.repository, repository, ignore=shutil.ignore_patterns("__pycache__", "tmp*"))
        server = TritonServer(repository, http_port=tb.free_port(), grpc_port=tb.free_port(), config_name="cpu",
                              log_path=work / "triton.log")
        with server:
            pid = server.process.pid
            with TritonSegmenter(f"grpc://127.0.0.1:{server.grpc_port}") as client:
                client.segment(series)  # warm: every stub has run once
                out["triton_idle"] = tb.tree_memory(pid)
                peaks, _ = peak_during({"triton": pid}, lambda: client.segment(series))
                out["triton_serving"] = peaks["triton"]
            # The app in front of this server.
            app_out = {}
            import subprocess

            repo = Path(__file__).resolve().parents[1]
            app = work / "app"
            shutil.copytree(repo / "apps" / "lumbar_spine", app, ignore=shutil.ignore_patterns("model", "__pycache__"))
            shutil.copytree(args.weights, app / "model" / "lumbar_spine")
            studies = work / "studies"
            studies.mkdir()
            from lumbarseg import io

            io.save_image(series, studies / "bench.nii.gz")
            port = tb.free_port()
            bin_dir = Path(sys.executable).parent
            env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                   "MONAI_LABEL_TRACKING_ENABLED": "false", "MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}
            process = subprocess.Popen([str(bin_dir / "monailabel"), "start_server", "--app", str(app), "--studies",
                                        str(studies), "--host", "127.0.0.1", "--port", str(port), "--conf", "backend",
                                        "triton", "--conf", "triton_url", f"grpc://127.0.0.1:{server.grpc_port}"],
                                       stdout=open(work / "app.log", "wb"), stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True)
            try:
                deadline = time.monotonic() + 300
                while True:
                    try:
                        with urllib.request.urlopen(f"http://127.0.0.1:{port}/info/", timeout=5) as r:
                            if r.status == 200:
                                break
                    except OSError:
                        pass
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError((work / "app.log").read_text()[-2000:])
                    time.sleep(1)

                def infer():
                    req = urllib.request.Request(f"http://127.0.0.1:{port}/infer/lumbar_spine?image=bench", data=b"",
                                                 method="POST")
                    with urllib.request.urlopen(req, timeout=900) as r:
                        return r.read()

                infer()  # warm
                app_out["app_idle"] = tb.tree_memory(process.pid)
                peaks, _ = peak_during({"app": process.pid, "triton": pid}, infer)
                app_out["app_serving"], app_out["triton_serving"] = peaks["app"], peaks["triton"]
            finally:
                os.killpg(process.pid, 15)
                process.wait(timeout=60)
            out["app"] = app_out
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    for key in ("pss_mib", "rss_mib", "uss_mib"):
        out[f"stack_{key}"] = out["app"]["app_serving"][key] + out["app"]["triton_serving"][key]
    path = Path(args.results)
    results = json.loads(path.read_text())
    results[args.key] = out
    path.write_text(json.dumps(results, indent=1))
    path.with_suffix(".md").write_text(tb.markdown(results))
    print(json.dumps({k: v for k, v in out.items() if k.startswith("stack") or k.startswith("load")}))
    print(f"updated {path} and {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
