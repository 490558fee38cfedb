"""The serving subcommands of ``lumbarseg``: ``export``, ``triton serve|health`` and ``infer``
(registered by :func:`add_commands` from :mod:`lumbarseg.cli`)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from lumbarseg.config import ConfigError
from lumbarseg.io.study import Series, Study, StudyError
from lumbarseg.triton.server import DEFAULT_URL, TritonError

if TYPE_CHECKING:
    from lumbarseg.analysis import Analysis

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / "lite"


def _fail(args: argparse.Namespace, err: Exception) -> int:
    print(f"lumbarseg {args.command}: error: {err}", file=sys.stderr)
    return 2


def _export(args: argparse.Namespace) -> int:
    from lumbarseg.triton.export import ExportError, export

    try:
        report = export(args.weights, args.repository, args.version)
    except ExportError as err:
        return _fail(args, err)
    for model, path in report.files.items():
        print(f"{model:15s} {path}  max |torch - onnxruntime| {report.max_difference[model]:.1e}")
    print(f"exported {args.weights} into {report.repository} (version {report.version})")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from lumbarseg.triton.export import NETWORK_MODELS
    from lumbarseg.triton.server import TritonServer

    if (args.instances or args.threads) and not args.cpu:
        return _fail(args, TritonError("--instances and --threads scale the CPU configs: add --cpu (the GPU "
                                       "configs set their instances in config.pbtxt)"))
    repository = Path(args.repository)
    missing = [m for m in NETWORK_MODELS if not any((repository / m).glob("*/model.onnx"))]
    if missing:
        return _fail(args, TritonError(f"{repository}: no model.onnx for {', '.join(missing)}; run "
                                       f"`lumbarseg export --weights WEIGHTS --repository {repository}` first"))
    server = TritonServer(repository, http_port=args.http_port, grpc_port=args.grpc_port,
                          config_name="cpu" if args.cpu else None, log_path=args.log or "-", address=args.address,
                          instances=args.instances, threads=args.threads)

    def terminate(signum, frame):  # `kill` stops the server as cleanly as Ctrl-C
        # Stopping is bounded (server.stop: SIGKILL after 30 s), so later signals are ignored: a
        # terminal's Ctrl-C reaches the whole process group and a script then `kill`s us too
        # (scripts/demo.sh), which would otherwise cut the stop short with a traceback.
        for other in (signal.SIGINT, signal.SIGTERM):
            signal.signal(other, signal.SIG_IGN)
        raise KeyboardInterrupt

    # Installed for SIGINT too: a process started in the background inherits SIGINT ignored,
    # and Python then never turns Ctrl-C / SIGINT into KeyboardInterrupt.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, terminate)
    try:
        from lumbarseg.triton.server import KEY_ENV, key_file

        server.start(timeout=args.timeout)
        host = server.url.rsplit(":", 1)[0]
        key_from = f"${KEY_ENV}" if os.environ.get(KEY_ENV) else str(key_file())
        configs = "GPU configs" if not args.cpu else "CPU configs" if not server.scale else \
            "CPU configs, {} instance(s) x {} thread(s) per model".format(*server.scale)
        print(f"Triton ready: inference on grpc://{host}:{args.grpc_port}, health on http://{server.url} "
              f"({configs}, {repository}); inference and model control need "
              f"the admin key ({key_from}); Ctrl-C stops it", flush=True)
        while server.process.poll() is None:
            time.sleep(0.5)
        return _fail(args, TritonError(f"tritonserver exited with code {server.process.returncode}"))
    except TritonError as err:
        hint = "" if args.cpu else " (the GPU configs need Triton's onnxruntime backend and a GPU; the local " \
                                   "tritonserver has the python backend only: try --cpu)"
        return _fail(args, TritonError(f"{err}{hint}"))
    except KeyboardInterrupt:
        print("stopping Triton", flush=True)
        return 0
    finally:
        server.stop()


def _health(args: argparse.Namespace) -> int:
    import json

    from lumbarseg.triton.client import TritonSegmenter

    try:
        with TritonSegmenter(args.triton_url, retries=0, timeout=10) as client:
            health = client.health()
    except TritonError as err:
        return _fail(args, err)
    print(json.dumps(health, indent=1))
    return 0 if health["ready"] and all(s == "READY" for s in health["models"].values()) else 1


def _targets(studies: list[str], out: Path, suffix: str) -> list[Path]:
    """One output per study: ``out`` itself for one study, else ``out/<study name><suffix>``."""
    if len(studies) == 1 and not out.is_dir():
        return [out]
    from lumbarseg.io.nifti import study_name

    names = [study_name(s) + suffix for s in studies]
    if len(set(names)) < len(names):
        raise ValueError("two studies would write the same output file; give them distinct names")
    out.mkdir(parents=True, exist_ok=True)
    return [out / n for n in names]


def _dicom_targets(args: argparse.Namespace) -> tuple[list[Path | None], list[Path | None]]:
    """(DICOM-SEG, SR) per study: ``--seg`` and ``--sr`` name them as ``--out`` names labels; an
    SR needs its SEG, which without ``--seg`` lies beside it as ``<SR stem>_seg.dcm``."""
    none = [None] * len(args.studies)
    srs = _targets(args.studies, Path(args.sr), "_sr.dcm") if args.sr else none
    if args.seg:
        return _targets(args.studies, Path(args.seg), "_seg.dcm"), srs
    return [sr and sr.with_name(f"{sr.stem}_seg.dcm") for sr in srs], srs


def _dicom_source(path: str, study: Study) -> Series:
    """The series a DICOM-SEG and an SR reference: the study's primary series, read from DICOM."""
    if "files" not in study.primary.meta:
        raise StudyError(path, "--seg and --sr need a DICOM study: a DICOM-SEG and a structured report reference "
                               "the DICOM source images, and this study is not DICOM")
    return study.primary


def _analyser(args: argparse.Namespace) -> Callable[[Study], Analysis]:
    """:func:`lumbarseg.analysis.analyse` on the chosen backend's networks. Called once the first
    study has loaded and passed its checks, so that bad input is refused before PyTorch or a
    Triton connection is brought up."""
    from lumbarseg.analysis import analyse

    if args.backend == "triton":
        from lumbarseg.triton.client import TritonSegmenter

        backend = TritonSegmenter(args.triton_url, timeout=args.timeout)
        backend.require_ready()
        segment = backend.segment  # with the planes: the report's plane disagreement needs them
    else:
        from lumbarseg.pipeline import Segmenter

        segment = Segmenter.load(args.weights).segment
    return lambda study: analyse(study, segment)


def _infer(args: argparse.Namespace) -> int:
    import json

    from lumbarseg import io

    try:
        targets = _targets(args.studies, Path(args.out), "_label.nii.gz")
        reports = _targets(args.studies, Path(args.report), "_report.json") if args.report else [None] * len(targets)
        segs, srs = _dicom_targets(args)
    except ValueError as err:
        return _fail(args, err)
    analyse = None
    try:
        for path, target, report, seg, sr in zip(args.studies, targets, reports, segs, srs):
            study = io.load_study(path)
            source = _dicom_source(path, study) if seg else None
            analyse = analyse or _analyser(args)
            result = analyse(study)
            io.save_label(result.label, result.affine, target)
            if report is not None:
                report.write_text(json.dumps(result.report, indent=1))
            if seg is not None:
                from lumbarseg.io.sr import write_findings_dicom

                write_findings_dicom(result.label, result.report, source, seg, sr)
            naming = result.report["naming"] or {}
            named = [lv["level"] for lv in result.report["levels"] if lv["level"]]
            print(f"{path} -> {target}  discs {', '.join(named) or 'none'} (anchor {naming.get('anchor')}, "
                  f"confidence {naming.get('confidence')})", flush=True)
    except (TritonError, StudyError, ConfigError) as err:  # ConfigError: a weights folder without a valid model.json
        return _fail(args, err)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a weights folder to ONNX in the Triton model repository",
                       description="Export the plane networks and the fusion of a weights folder to ONNX "
                                   "(REPOSITORY/<model>/<version>/model.onnx), each checked against PyTorch "
                                   "with onnxruntime; set the pipeline's spacing from the weights. Missing "
                                   "configs are copied from the project's model_repository/.")
    p.add_argument("--weights", default=str(WEIGHTS), help=f"weights folder (default {WEIGHTS})")
    p.add_argument("--repository", default=str(REPOSITORY), help=f"model repository (default {REPOSITORY})")
    p.add_argument("--version", type=int, default=1, help="model version folder (default 1)")
    p.set_defaults(run=_export)

    p = sub.add_parser("triton", help="run a local Triton server on the model repository, or check one",
                       description="Local NVIDIA Triton (the nvidia-pytriton wheel's tritonserver) on 127.0.0.1; "
                                   "inference, model control, shared memory, trace, logging and statistics need the "
                                   "admin key ($LUMBARSEG_TRITON_KEY, else the key file $LUMBARSEG_TRITON_KEY_FILE, "
                                   "default ~/.cache/lumbarseg/triton-admin-key, made with mode 0600 at the first "
                                   "start); clients of this project read it the same way.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    s = actions.add_parser("serve", help="serve the repository until Ctrl-C",
                           description="Start tritonserver on loopback, wait until every model is ready, "
                                       "serve until Ctrl-C or SIGTERM, then shut it down.")
    s.add_argument("--cpu", action="store_true",
                   help="use each model's configs/cpu.pbtxt (python backend on onnxruntime; no GPU needed)")
    s.add_argument("--instances", type=int,
                   help="with --cpu: instances of every model (default: the configs' 1); 2 serves two readers' "
                        "studies side by side (1.38-1.46x the studies/s at 4 clients on 2 cores, twice the memory per "
                        "request in flight: docs/performance.md)")
    s.add_argument("--threads", type=int,
                   help="with --cpu: onnxruntime threads per model instance (default with --instances: CPU cores / "
                        "instances; without: the configs' 2)")
    s.add_argument("--repository", default=str(REPOSITORY), help=f"model repository (default {REPOSITORY})")
    s.add_argument("--http-port", type=int, default=8010, help="HTTP port (default 8010; 8000 is MONAI Label's)")
    s.add_argument("--grpc-port", type=int, default=8011, help="gRPC port (default 8011)")
    s.add_argument("--address", default="127.0.0.1",
                   help="interface both endpoints bind (default 127.0.0.1, loopback only; another address exposes "
                        "Triton to that network, where only its admin key protects it)")
    s.add_argument("--log", help="write the server log to this file (default: this terminal)")
    s.add_argument("--timeout", type=float, default=180, help="seconds to wait for readiness (default 180)")
    s.set_defaults(run=_serve)
    s = actions.add_parser("health", help="print a server's liveness, readiness and model states",
                           description="Exit status 0 when the server and every model are ready, 1 when not, "
                                       "2 when the server cannot be reached.")
    s.add_argument("--triton-url", default=DEFAULT_URL, help=f"the server's gRPC address, grpc://HOST:PORT (default {DEFAULT_URL})")
    s.set_defaults(run=_health)

    p = sub.add_parser("infer", help="segment studies into level-named label maps (in-process or on Triton)",
                       description="Segment each STUDY (NIfTI 3D/4D file or DICOM folder; its largest series) "
                                   "and write the study label map (discs and bodies named by level) as NIfTI; "
                                   "for a DICOM study also as a DICOM-SEG (--seg) and the findings as a DICOM "
                                   "Structured Report (--sr, TID 1500) referencing that SEG and the source images.")
    p.add_argument("studies", nargs="+", metavar="STUDY")
    p.add_argument("--out", required=True,
                   help="label file for one study; a folder (STUDY name + _label.nii.gz) for several")
    p.add_argument("--backend", choices=("local", "triton"), default="local",
                   help="local: PyTorch in this process (--weights); triton: a server's spine_pipeline (--triton-url)")
    p.add_argument("--weights", default=str(WEIGHTS), help=f"weights folder for --backend local (default {WEIGHTS})")
    p.add_argument("--triton-url", default=DEFAULT_URL, help=f"the server's gRPC address, grpc://HOST:PORT (default {DEFAULT_URL})")
    p.add_argument("--report", help="findings report JSON for one study; a folder (STUDY name + _report.json) "
                                    "for several")
    p.add_argument("--seg", help="DICOM-SEG for one DICOM study; a folder (STUDY name + _seg.dcm) for several")
    p.add_argument("--sr", help="findings as a DICOM SR (TID 1500) for one DICOM study; a folder (STUDY name + "
                                "_sr.dcm) for several; its SEG is --seg, else the SR's name + _seg.dcm beside it")
    p.add_argument("--timeout", type=float, default=300, help="seconds per Triton request (default 300)")
    p.set_defaults(run=_infer)
