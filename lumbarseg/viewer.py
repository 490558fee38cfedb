"""The viewer stack on loopback: Orthanc holding DICOM studies, the MONAI Label app reading them
through DICOMweb, and OHIF (bundled with MONAI Label, at ``/ohif/monai-label``) in a browser.

    lumbarseg viewer --phantoms 2            # Orthanc :8042 + MONAI Label :8000, prints the OHIF URLs
    lumbarseg orthanc serve --upload DIR     # Orthanc alone
    lumbarseg orthanc upload DIR --url URL   # DICOM files into a running Orthanc

Orthanc comes from Debian (``orthanc``, ``orthanc-dicomweb``) and runs with the project's own
configuration (``configs/orthanc.json``: HTTP on a port of our choice, local clients only, no DICOM
network listener, no authentication, DICOMweb at ``/dicom-web``); the launcher writes a copy with
this run's port, storage folder and plugin path next to the storage.

MONAI Label reads Orthanc as a DICOMweb datastore: every MR series is an image (its id is the
SeriesInstanceUID), downloaded on first use and cached (with a NIfTI conversion); the app's infer
reads the cached DICOM series and stores its DICOM-SEG and findings SR back into Orthanc; a label
saved with tag ``final``
is converted to DICOM-SEG (dcmqi's ``itkimage2segimage``, installed with the venv) and stored back
into Orthanc by STOW-RS. OHIF is served by MONAI Label itself and reads DICOM through the server's
``/proxy/dicom`` routes, so the browser talks to one origin. OHIF's MONAI Label panel takes the
server URL from its ``MONAILABEL_SERVER_URL`` cookie, by default the page's host on port 8000.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from lumbarseg import QUIET_WARNINGS
from lumbarseg.io.nifti import is_nifti, study_name
from lumbarseg.services import await_ready

REPO = Path(__file__).resolve().parents[1]
ORTHANC_CONFIG = REPO / "configs" / "orthanc.json"
APP = REPO / "apps" / "lumbar_spine"
PLUGIN_PLACES = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so*")
APT_PACKAGES = ("orthanc", "orthanc-dicomweb", "chromium")
MONAILABEL_PORT = 8000  # OHIF's MONAI Label panel assumes this port unless its cookie says otherwise
ORTHANC_PORT = 8042


class ViewerError(RuntimeError):
    """A part of the viewer stack is missing, could not start or refused a request; the message
    says which and why."""


def orthanc_binary() -> str:
    found = shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if os.access(p, os.X_OK)), None)
    if not found:
        raise ViewerError("Orthanc is not installed: apt-get install orthanc orthanc-dicomweb (Debian/Ubuntu)")
    return found


def dicomweb_plugin() -> Path:
    for pattern in PLUGIN_PLACES:
        matches = sorted(Path("/").glob(pattern.lstrip("/")))
        if matches:
            return matches[0]
    raise ViewerError("Orthanc's DICOMweb plugin is not installed: apt-get install orthanc-dicomweb")


def missing_packages() -> list[str]:
    """The Debian packages of the viewer stack that are not installed (empty when all are)."""
    missing = []
    for name, present in (("orthanc", lambda: orthanc_binary()), ("orthanc-dicomweb", lambda: dicomweb_plugin()),
                          ("chromium", lambda: chromium_binary())):
        try:
            present()
        except ViewerError:
            missing.append(name)
    return missing


def chromium_binary() -> str:
    found = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    if not found:
        raise ViewerError("Chromium is not installed: apt-get install chromium")
    return found


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed server's TIME_WAIT is no user
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _request(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None,
             timeout: float = 30.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _terminate(process: subprocess.Popen | None, timeout: float = 30.0) -> None:
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class Orthanc:
    """An Orthanc process on ``port`` storing into ``storage``; a context manager.

    ``log``: the server's log file (default ``storage/orthanc.log``); ``"-"`` for this terminal."""

    def __init__(self, storage: str | Path, *, port: int = ORTHANC_PORT, config: str | Path = ORTHANC_CONFIG,
                 log: str | Path | None = None):
        self.storage = Path(storage).resolve()
        self.port = port
        self.config = Path(config)
        self.log = None if str(log) == "-" else Path(log) if log else self.storage / "orthanc.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def write_config(self) -> Path:
        config = json.loads(self.config.read_text())
        db = self.storage / "db"
        config.update(StorageDirectory=str(db), IndexDirectory=str(db), HttpPort=self.port,
                      Plugins=[str(dicomweb_plugin())])
        path = self.storage / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        return path

    def ready(self) -> bool:
        try:
            status, body = _request(f"{self.url}/plugins", timeout=2)
        except OSError:
            return False
        return status == 200 and "dicom-web" in json.loads(body)

    def start(self, timeout: float = 60.0) -> "Orthanc":
        binary = orthanc_binary()
        if not port_free(self.port):
            raise ViewerError(f"Orthanc: port {self.port} on 127.0.0.1 is in use; choose another (--orthanc-port)")
        self.storage.mkdir(parents=True, exist_ok=True)
        config = self.write_config()
        out = None if self.log is None else open(self.log, "ab")
        self.process = subprocess.Popen([binary, str(config)], stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True, cwd=self.storage)
        await_ready("Orthanc", self, timeout=timeout, poll=0.3, error=ViewerError, log=self.log)
        return self

    def stop(self) -> None:
        _terminate(self.process)

    def __enter__(self) -> "Orthanc":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- REST ---------------------------------------------------------------------------------

    def get(self, path: str) -> object:
        status, body = _request(self.url + path)
        if status != 200:
            raise ViewerError(f"Orthanc GET {path}: HTTP {status}: {body[:300]!r}")
        return json.loads(body)

    def upload(self, *paths: str | Path) -> list[str]:
        """Store every DICOM file under ``paths`` (files or folders); returns the
        StudyInstanceUIDs stored, in first-seen order. Files that are not DICOM are skipped."""
        return upload(self.url, *paths)

    def series(self, modality: str | None = None) -> list[dict]:
        """QIDO-RS series search through the DICOMweb plugin (DICOM JSON, one dict per series)."""
        query = f"?Modality={urllib.parse.quote(modality)}" if modality else ""
        status, body = _request(f"{self.dicomweb}/series{query}", headers={"Accept": "application/dicom+json"})
        if status != 200:
            raise ViewerError(f"Orthanc QIDO /series{query}: HTTP {status}: {body[:300]!r}")
        return json.loads(body or b"[]")


def _dicom_files(paths) -> list[Path]:
    files = []
    for path in map(Path, paths):
        if not path.exists():
            raise ViewerError(f"{path}: no such file or folder")
        for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if f.is_file():
                with f.open("rb") as fh:
                    head = fh.read(132)
                if head[128:132] == b"DICM":
                    files.append(f)
    return files


def upload(url: str, *paths: str | Path) -> list[str]:
    """POST every DICOM file under ``paths`` to the Orthanc at ``url``; returns the
    StudyInstanceUIDs stored."""
    studies: dict[str, str] = {}
    files = _dicom_files(paths)
    if not files:
        raise ViewerError(f"no DICOM files under {', '.join(map(str, paths))}")
    for f in files:
        try:
            status, body = _request(f"{url.rstrip('/')}/instances", "POST", f.read_bytes(),
                                    {"Content-Type": "application/dicom"}, timeout=60)
        except OSError as err:
            raise ViewerError(f"cannot reach Orthanc at {url}: {err}") from err
        if status != 200:
            raise ViewerError(f"Orthanc refused {f}: HTTP {status}: {body[:300]!r}")
        parent = json.loads(body)["ParentStudy"]
        if parent not in studies:
            status, body = _request(f"{url.rstrip('/')}/studies/{parent}")
            studies[parent] = json.loads(body)["MainDicomTags"]["StudyInstanceUID"]
    return list(studies.values())


def write_phantom_dicom(out: str | Path, count: int, seed: int = 0, modalities: tuple[str, ...] = ("t2w",)) -> list[Path]:
    """``count`` phantom studies in the clinical DICOM layout (a sagittal stack plus one angulated
    axial stack per disc, each its own series) under ``out/<subject>/``."""
    from lumbarseg import phantom
    from lumbarseg.io.dicom import write_dicom_study

    folders = []
    for i in range(count):
        study = phantom.clinical_study(phantom.study_seed(seed, i), modalities=tuple(modalities))
        folders.append(write_dicom_study(study, Path(out) / study.subject, patient_id=study.subject))
    return folders


class MonaiLabel:
    """``monailabel start_server`` for ``app`` on 127.0.0.1:``port`` reading ``studies`` (a folder, or
    a DICOMweb URL such as ``Orthanc.dicomweb``); a context manager.

    For a DICOMweb datastore it searches MR series (MONAI Label's default is CT only) and caches
    downloads in ``cache`` (default: beside the log). ``env`` adds to or overrides the server's
    environment (``MONAI_LABEL_*`` settings)."""

    def __init__(self, app: str | Path, studies: str | Path, *, port: int = MONAILABEL_PORT,
                 conf: dict[str, str] | None = None, env: dict[str, str] | None = None,
                 log: str | Path | None = None, cache: str | Path | None = None):
        self.app = Path(app).resolve()
        self.studies = str(studies)
        self.port = port
        self.conf = dict(conf or {})
        self.log = None if str(log) == "-" else Path(log) if log else None
        self.cache = Path(cache) if cache else None
        self.extra_env = dict(env or {})
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ohif_url(self, study_uid: str | None = None, mode: str = "monai-label") -> str:
        """OHIF in ``mode``: ``monai-label`` (segmentation) or ``viewer`` (the basic viewer, which
        opens the findings SR)."""
        return f"{self.url}/ohif/{mode}" + (f"?StudyInstanceUIDs={study_uid}" if study_uid else "")

    def command(self) -> list[str]:
        args = [str(Path(sys.executable).parent / "monailabel"), "start_server", "--app", str(self.app),
                "--studies", self.studies, "--host", "127.0.0.1", "--port", str(self.port)]
        for key, value in self.conf.items():
            args += ["--conf", key, str(value)]
        return args

    def environment(self) -> dict[str, str]:
        bin_dir = str(Path(sys.executable).parent)  # monailabel, and dcmqi's itkimage2segimage
        env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
               "MONAI_LABEL_TRACKING_ENABLED": "false", "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
               "PYTHONWARNINGS": ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), QUIET_WARNINGS]))}
        if self.studies.startswith(("http://", "https://")):
            cache = self.cache or (self.log.parent if self.log else self.app) / "dicomweb-cache"
            # NIfTI conversion on: MONAI Label registers a DICOMweb image locally only then, and
            # saving a label needs it. The app's infer reads the cached DICOM series itself.
            env.update(MONAI_LABEL_DICOMWEB_SEARCH_FILTER=json.dumps({"Modality": "MR"}),
                       MONAI_LABEL_DICOMWEB_CACHE_PATH=str(cache),
                       MONAI_LABEL_DICOMWEB_CONVERT_TO_NIFTI="true")
        env.update(self.extra_env)
        return env

    def ready(self) -> bool:
        try:
            return _request(f"{self.url}/info/", timeout=5)[0] == 200
        except OSError:
            return False

    def start(self, timeout: float = 300.0) -> "MonaiLabel":
        if not port_free(self.port):
            raise ViewerError(f"MONAI Label: port {self.port} on 127.0.0.1 is in use; choose another (--port)")
        out = None if self.log is None else open(self.log, "ab")
        self.process = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, env=self.environment(),
                                        start_new_session=True)
        await_ready("MONAI Label", self, timeout=timeout, poll=1.0, error=ViewerError, log=self.log)
        return self

    def stop(self) -> None:
        _terminate(self.process)

    def __enter__(self) -> "MonaiLabel":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --- command line --------------------------------------------------------------------------------

def _fail(args: argparse.Namespace, err: Exception) -> int:
    print(f"lumbarseg {args.command}: error: {err}", file=sys.stderr)
    return 2


def _wait_until_stopped(*processes: subprocess.Popen) -> int:
    def terminate(signum, frame):  # `kill` stops the stack as cleanly as Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    try:
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    return 1


def nifti_as_dicom(path: str | Path, out: str | Path) -> Path:
    """A NIfTI study written as DICOM (one MR series per contrast) under ``out/<name>/``, the
    patient id its file name: what Orthanc and OHIF can hold."""
    from lumbarseg.io import load_study
    from lumbarseg.io.dicom import write_dicom_study

    name = study_name(path)
    study = load_study(path)
    for series in study.series:
        series.description = name  # the series' name in the viewer (with its contrast), not the file's
    return write_dicom_study(study, Path(out) / name, patient_id=name)


def _upload_sources(args: argparse.Namespace, orthanc: Orthanc) -> list[str]:
    sources = [nifti_as_dicom(p, orthanc.storage / "nifti") if is_nifti(p) else p for p in map(Path, args.upload or [])]
    if getattr(args, "phantoms", 0):
        sources += write_phantom_dicom(orthanc.storage / "phantoms", args.phantoms, args.seed)
    uids = orthanc.upload(*sources) if sources else []
    if sources:
        print(f"uploaded {len(uids)} studies from {', '.join(map(str, sources))}", flush=True)
    return uids


def _orthanc_serve(args: argparse.Namespace) -> int:
    orthanc = Orthanc(args.storage, port=args.port, log=args.log)
    try:
        orthanc.start()
        _upload_sources(args, orthanc)
        print(f"Orthanc ready: {orthanc.url}/  DICOMweb {orthanc.dicomweb}  storage {orthanc.storage}; "
              "Ctrl-C stops it", flush=True)
        return _wait_until_stopped(orthanc.process)
    except ViewerError as err:
        return _fail(args, err)
    finally:
        orthanc.stop()


def _orthanc_upload(args: argparse.Namespace) -> int:
    try:
        uids = upload(args.url, *args.paths)
    except ViewerError as err:
        return _fail(args, err)
    for uid in uids:
        print(uid)
    return 0


def _viewer(args: argparse.Namespace) -> int:
    app = Path(args.app)
    model = app / "model" / "lumbar_spine"
    if args.weights and not (model / "model.json").is_file():
        shutil.copytree(args.weights, model, dirs_exist_ok=True)
        print(f"serving the weights in {args.weights} (copied to {model})", flush=True)
    orthanc = Orthanc(args.storage, port=args.orthanc_port)
    server = MonaiLabel(app, orthanc.dicomweb, port=args.port, conf=dict(args.conf or []),
                        log=orthanc.storage / "monailabel.log", cache=orthanc.storage / "dicomweb-cache")
    try:
        orthanc.start()
        uids = _upload_sources(args, orthanc)
        print(f"Orthanc ready: {orthanc.url}/ (DICOMweb {orthanc.dicomweb}); starting MONAI Label "
              f"(log {server.log})", flush=True)
        server.start()
        print(f"MONAI Label ready: {server.url}/  (3D Slicer: MONAI Label module, server {server.url})")
        studies = uids or sorted({s["0020000D"]["Value"][0] for s in orthanc.series("MR")})
        for uid in studies:
            print(f"OHIF: {server.ohif_url(uid)}  (after Run, its findings SR: {server.ohif_url(uid, 'viewer')})")
        if not studies:
            print(f"OHIF: {server.ohif_url()} (Orthanc holds no MR study yet: lumbarseg orthanc upload DIR "
                  f"--url {orthanc.url})")
        if args.port != MONAILABEL_PORT:
            print(f"(OHIF's MONAI Label panel assumes port {MONAILABEL_PORT}: enter {server.url}/ in its Server field "
                  "and press the connect button)")
        print("Ctrl-C stops both", flush=True)
        return _wait_until_stopped(orthanc.process, server.process)
    except ViewerError as err:
        return _fail(args, err)
    finally:
        server.stop()
        orthanc.stop()


def add_commands(sub) -> None:
    """Register ``orthanc serve|upload`` and ``viewer`` on the ``lumbarseg`` parser."""
    p = sub.add_parser("orthanc", help="run Orthanc (DICOMweb) on loopback, upload DICOM into it",
                       description="Orthanc with the project's configuration (configs/orthanc.json): HTTP on "
                                   "127.0.0.1 clients only, DICOMweb at /dicom-web, no authentication.")
    osub = p.add_subparsers(dest="orthanc_command", required=True, metavar="ACTION")
    q = osub.add_parser("serve", help="start Orthanc and keep it running until Ctrl-C")
    q.add_argument("--port", type=int, default=ORTHANC_PORT, help=f"HTTP port (default {ORTHANC_PORT})")
    q.add_argument("--storage", default=".viewer/orthanc", help="storage folder (default .viewer/orthanc)")
    q.add_argument("--upload", nargs="+", metavar="PATH",
                   help="DICOM files or folders, or NIfTI studies (written as DICOM first), to store once it is up")
    q.add_argument("--phantoms", type=int, default=0, metavar="N", help="also store N phantom studies (clinical layout)")
    q.add_argument("--seed", type=int, default=0, help="phantom seed (default 0)")
    q.add_argument("--log", help="log file (default STORAGE/orthanc.log; '-' for this terminal)")
    q.set_defaults(run=_orthanc_serve)
    q = osub.add_parser("upload", help="store DICOM files or folders into a running Orthanc; prints study UIDs")
    q.add_argument("paths", nargs="+", metavar="PATH")
    q.add_argument("--url", default=f"http://127.0.0.1:{ORTHANC_PORT}", help="Orthanc's URL (default %(default)s)")
    q.set_defaults(run=_orthanc_upload)

    p = sub.add_parser("viewer", help="Orthanc + the MONAI Label app on DICOMweb; prints the OHIF URLs",
                       description="Start Orthanc (configs/orthanc.json) and the lumbar_spine MONAI Label app reading "
                                   "it through DICOMweb, optionally store phantom or your DICOM studies, and print "
                                   "the OHIF URL of each study (OHIF is served by MONAI Label at /ohif/). 3D "
                                   "Slicer's MONAI Label module connects to the same server URL.")
    p.add_argument("--port", type=int, default=MONAILABEL_PORT,
                   help=f"MONAI Label port (default {MONAILABEL_PORT}, which OHIF's panel assumes)")
    p.add_argument("--orthanc-port", type=int, default=ORTHANC_PORT, help=f"Orthanc port (default {ORTHANC_PORT})")
    p.add_argument("--storage", default=".viewer/orthanc",
                   help="Orthanc storage, logs and the DICOMweb cache (default .viewer/orthanc)")
    p.add_argument("--phantoms", type=int, default=0, metavar="N", help="store N phantom studies (clinical layout)")
    p.add_argument("--seed", type=int, default=0, help="phantom seed (default 0)")
    p.add_argument("--upload", nargs="+", metavar="PATH",
                   help="DICOM files or folders, or NIfTI studies (written as DICOM first), to store; the demo "
                        "stores samples/spider_57/57_t2.nii.gz, a real patient")
    p.add_argument("--app", default=str(APP), help="MONAI Label app folder (default apps/lumbar_spine)")
    p.add_argument("--weights", help="weights folder to serve when the app has no model yet")
    p.add_argument("--conf", nargs=2, action="append", metavar=("KEY", "VALUE"),
                   help="app option, as monailabel start_server --conf (e.g. backend triton)")
    p.set_defaults(run=_viewer)
