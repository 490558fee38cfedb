"""Real servers for the tests, on loopback: the MONAI Label app (a copy, with the weights a test
chooses) and the viewer stack's Debian packages (Orthanc, its DICOMweb plugin, Chromium).

The processes are started by :mod:`lumbarseg.viewer`, the same code ``lumbarseg viewer`` runs."""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from lumbarseg import viewer

from conftest import REPO, free_port

APP = REPO / "apps" / "lumbar_spine"


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body as MONAI Label's clients send uploads: (body, content type)."""
    boundary = "lumbarsegboundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="{name}"\r\n'
              f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"
              for k, (name, data) in files.items()]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def http_json(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None,
              timeout: float = 300) -> tuple[int, dict]:
    """(status, JSON body) of one request, error statuses included; a body that is not JSON comes
    back as ``{"text": <its first 200 characters>}``."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        return status, json.loads(raw or b"{}")
    except ValueError:
        return status, {"text": raw[:200].decode(errors="replace")}


def require_viewer_packages() -> None:
    """Skip when Orthanc, its DICOMweb plugin or Chromium is missing (``scripts/setup.sh``
    installs them when run as root); in CI (``CI`` set) that is a failure, not a skip."""
    missing = viewer.missing_packages()
    if missing:
        message = (f"viewer stack not installed: {', '.join(missing)} (Debian packages; scripts/setup.sh installs "
                   f"them as root: apt-get install {' '.join(viewer.APT_PACKAGES)})")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


class Server:
    """``monailabel start_server`` for a copy of the app serving ``weights``, on a free port;
    ``studies`` is a folder or a DICOMweb URL. Stop it with :meth:`stop`."""

    def __init__(self, root: Path, studies: Path | str, conf: dict[str, str], weights: Path,
                 env: dict[str, str] | None = None):
        self.app = root / "app"
        shutil.copytree(APP, self.app, ignore=shutil.ignore_patterns("model", "__pycache__"))
        shutil.copytree(weights, self.app / "model" / "lumbar_spine")
        self.log = root / "server.log"
        self.monailabel = viewer.MonaiLabel(self.app, studies, port=free_port(), conf=conf,
                                            env={"OMP_NUM_THREADS": "1", **(env or {})}, log=self.log,
                                            cache=root / "dicomweb-cache")
        self.port = self.monailabel.port
        self.url = self.monailabel.url
        self.process = None
        try:
            self.monailabel.start(timeout=300)
        except viewer.ViewerError as err:
            raise AssertionError(str(err)) from err
        self.process = self.monailabel.process

    def request(self, method: str, path: str, body: bytes | None = None, timeout: float = 600) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def get(self, path: str) -> tuple[int, dict]:
        status, body = self.request("GET", path, timeout=60)
        return status, json.loads(body)

    def post(self, path: str, params: dict | None = None, timeout: float = 600) -> tuple[int, dict]:
        status, body = self.request("POST", path, json.dumps(params).encode() if params else b"", timeout)
        return status, json.loads(body or b"{}")

    def stop(self) -> None:
        self.monailabel.stop()
