"""What a client sends is a name, never a path: the one place the app checks request input.

MONAI Label hands the app whatever a client puts in a request: ``PUT /datastore/image?image=``
becomes a file name in the studies folder, ``PUT /datastore/label?tag=`` a folder under
``labels/``, ``POST /infer?image=`` a path to read, ``preset`` a training preset to load. Here:

* Names (:func:`check_name`): 1-128 characters of ``A-Z a-z 0-9 . _ -``, starting with a letter
  or digit, no ``..`` (:data:`NAME`). A name is joined to its folder by :func:`inside`, which
  refuses a path that is a symbolic link or resolves outside the folder.
* Uploads (:class:`Uploads`): MONAI Label writes every upload (``/infer`` files, datastore images
  and labels) to the process's temp folder; the app makes that a private folder (mode 0700,
  created at start, removed at exit), so nobody else can plant or read files there. An infer
  request may read a path in it only if it is a regular file (not a symbolic link, one hard
  link, owned by the server's user) named the way MONAI Label names uploads, and only once: the
  upload of that very request, which MONAI Label hands to the app right after writing it.
  Anything else (another request's upload, a file or link dropped into the folder, a path
  anywhere else) is an unknown image (404). A refused or failed upload is deleted at once
  (MONAI Label deletes uploads only after a successful response); leftovers (a request that
  failed inside MONAI Label before reaching the app) are swept after :data:`STALE_S`.
* Images and labels are NIfTI (:data:`NIFTI_SUFFIXES`), whatever extension the client's file
  name had; an image is stored only once it loads as a study within the memory budgets of
  :mod:`lumbarseg.io.budget` (checked from its header first).
* Presets (:func:`training_preset`): a name of ``configs/training/*.json``, never a file path.

Refusals are HTTP 4xx with the reason: 400 a malformed name, 403 a symbolic link, 404 an
unknown image, model, strategy or session, 409 an image id already stored, 415 a file that is
not NIfTI, 422 content that is not a study or not within a budget.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import stat
import tarfile
import tempfile
import threading
import time
from pathlib import Path

from fastapi import HTTPException

from lumbarseg import io
from lumbarseg.io.study import StudyError
from lumbarseg.training import PRESETS  # configs/training

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
# tempfile.NamedTemporaryFile's names: "tmp" + 8 characters of its alphabet, then the suffix
# MONAI Label takes from the client's file name.
UPLOAD_NAME = re.compile(r"tmp[a-z0-9_]{8}(\.[^/]*)?")
STALE_S = 3600  # an upload older than this belongs to no running request


def check_name(value, what: str) -> str:
    """``value`` if it is a name (see :data:`NAME`), else HTTP 400 saying what a name is."""
    if not isinstance(value, str) or not NAME.fullmatch(value) or ".." in value:
        raise HTTPException(status_code=400, detail=f"{what} {value!r} is not a valid name: 1-128 letters, digits, "
                                                    "'.', '_' or '-', starting with a letter or digit, without '..' "
                                                    "(a name, not a path)")
    return value


def inside(folder: str | Path, name: str, what: str, *, check: bool = True) -> Path:
    """``folder/name``: refused when ``name`` is not a name (400, unless ``check`` is false: a
    name the server chose, such as a stored image id), when the path is a symbolic link (403) or
    when it resolves outside ``folder`` (400)."""
    if check:
        check_name(name, what)
    root = Path(folder).resolve()
    path = root / name
    if path.is_symlink():
        raise HTTPException(status_code=403, detail=f"{what} {name!r}: {path.name} is a symbolic link; refused")
    if path.resolve().parent != root or path.name != name:
        raise HTTPException(status_code=400, detail=f"{what} {name!r} leaves its folder; refused")
    return path


def nifti_suffix(filename: str | Path, what: str) -> str:
    """``.nii.gz`` or ``.nii``; anything else (the client's ``.sh``, ``.json``, ...) is 415."""
    name = str(filename).lower()
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise HTTPException(status_code=415, detail=f"{what} must be a NIfTI file ({', '.join(NIFTI_SUFFIXES)}); got "
                                                f"{Path(str(filename)).name!r}")


RESULT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".mha")


def result_suffix(value) -> str:
    """The infer result's file suffix a client asks for (``result_extension``): one of
    :data:`RESULT_SUFFIXES`, never a path fragment (400 otherwise)."""
    if value not in RESULT_SUFFIXES:
        raise HTTPException(status_code=400, detail=f"result_extension {str(value)[:40]!r}: one of {RESULT_SUFFIXES}")
    return value


def model_spacing(folder: str | Path) -> float:
    """The grid spacing (mm) of the weights folder ``folder`` (its ``model.json``)."""
    from lumbarseg.pipeline import ModelInfo

    return ModelInfo.load(folder).spacing_mm


def study_problem(err: StudyError) -> str:
    """A :class:`StudyError`'s reason without the server-side path of the file."""
    return err.reason


def check_study(path: str | Path, spacing: float | None, what: str) -> None:
    """422 unless ``path`` loads as a study within the budgets of :mod:`lumbarseg.io.budget`
    (headers first; then the network grid at ``spacing`` mm; then the full load)."""
    try:
        io.check_study(path, spacing)
        io.load_study(path)
    except StudyError as err:
        raise HTTPException(status_code=422, detail=f"{what} is not a study this app can read: "
                                                    f"{study_problem(err)}") from err


# --- uploads -------------------------------------------------------------------------------------

class Uploads:
    """The private folder MONAI Label writes this process's uploads to (see the module doc)."""

    _installed: "Uploads | None" = None
    _lock = threading.Lock()

    def __init__(self, folder: Path):
        self.folder = folder
        self.results = folder / "results"
        self.results.mkdir(mode=0o700, exist_ok=True)
        self._claimed: set[str] = set()
        self._swept = 0.0

    @classmethod
    def install(cls) -> "Uploads":
        """Once per process: a new 0700 folder in the temp folder (``TMPDIR``) becomes
        :func:`tempfile.gettempdir`, where MONAI Label writes uploads; removed at exit."""
        with cls._lock:
            if cls._installed is None or cls._installed.pid != os.getpid():
                folder = Path(tempfile.mkdtemp(prefix="lumbarseg-uploads-")).resolve()
                uploads = cls(folder)
                uploads.pid = os.getpid()
                tempfile.tempdir = str(folder)
                atexit.register(shutil.rmtree, folder, True)
                cls._installed = uploads
            return cls._installed

    def _is_upload(self, path: str) -> bool:
        """A regular file directly in the folder, named like MONAI Label's uploads, one link,
        ours (checked without following a symbolic link)."""
        if not isinstance(path, str) or os.path.dirname(os.path.abspath(path)) != str(self.folder):
            return False
        if not UPLOAD_NAME.fullmatch(os.path.basename(path)) or os.path.abspath(path) != path:
            return False
        try:
            info = os.lstat(path)
        except OSError:
            return False
        return stat.S_ISREG(info.st_mode) and info.st_nlink == 1 and info.st_uid == os.geteuid()

    def claim(self, path) -> bool:
        """True once for an upload (see :meth:`_is_upload`): the request that MONAI Label wrote
        it for; every later request naming it is refused."""
        self.sweep()
        with self._lock:
            if not self._is_upload(path) or path in self._claimed:
                return False
            self._claimed = {p for p in self._claimed if os.path.lexists(p)} | {path}
            return True

    def discard(self, *paths) -> None:
        """Delete uploads (only files this folder holds under an upload's name)."""
        for path in paths:
            if isinstance(path, str) and self._is_upload(path):
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def sweep(self) -> None:
        """Delete uploads and results older than :data:`STALE_S` (at most once a minute)."""
        now = time.time()
        if now - self._swept < 60:
            return
        self._swept = now
        for folder in (self.folder, self.results):
            for entry in os.scandir(folder):
                try:
                    if entry.is_file(follow_symlinks=False) and now - entry.stat(follow_symlinks=False).st_mtime > STALE_S:
                        os.unlink(entry.path)
                except OSError:
                    pass


def discard_upload(path) -> None:
    """Delete ``path`` if it is an upload of this process (a refused datastore upload)."""
    if Uploads._installed is not None:
        Uploads._installed.discard(path)


def results_folder() -> str:
    """Where infer results are written: never an upload, so never an infer input."""
    uploads = Uploads._installed
    return str(uploads.results) if uploads is not None else tempfile.gettempdir()


# --- infer and task requests ---------------------------------------------------------------------

def infer_input(request: dict, datastore, uploads: Uploads, sessions, models) -> list[str]:
    """Check an infer request in place; returns the uploads it claimed (to delete if it fails).

    ``image`` is a datastore image id, the upload of this request, or the image of the session
    the request names; ``label`` (an upload the app's tasks never read) is dropped. The request's
    uploads are claimed first, so a refused request's upload is deleted too."""
    image, label = request.get("image"), request.pop("label", None)
    session = request.get("session")
    claimed = [p for p in (label, None if session is not None else image) if p is not None and uploads.claim(p)]
    try:
        model = request.get("model")
        if model not in models:
            raise HTTPException(status_code=404, detail=f"unknown model {model!r}; models: {sorted(models)}")
        if not isinstance(image, str) or not image:
            raise HTTPException(status_code=400, detail="image must be one image id (a string)")
        if session is not None:
            if not _session_image(session, image, sessions):
                raise HTTPException(status_code=404, detail="unknown session or session image")
        elif image in claimed:
            pass
        elif image in datastore.list_images():
            if os.path.lexists(image):  # MONAI Label would read a same-named file in its working folder
                request["image"] = datastore.get_image_uri(image)
        else:
            raise HTTPException(status_code=404, detail=f"unknown image id {image!r}")
    except BaseException:
        uploads.discard(*claimed)
        raise
    return claimed


def _session_image(session, image: str, sessions) -> bool:
    """The session named in the request exists and ``image`` is its image, in its folder."""
    if sessions is None or not isinstance(session, dict):
        return False
    name = session.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name) or ".." in name:
        return False
    info = sessions.get_session(name, update_ts=False)
    if info is None or info.image != image:
        return False
    folder = (Path(sessions.store_path) / name).resolve()
    path = Path(image)
    return not path.is_symlink() and path.resolve().parent == folder


def known(name, table: dict, what: str) -> None:
    if name not in table:
        raise HTTPException(status_code=404, detail=f"unknown {what} {name!r}; known: {sorted(table)}")


def training_preset(request: dict) -> dict:
    """``preset`` (if given) must name ``configs/training/<name>.json``: it becomes that file's
    absolute path, so no other file of the server is ever read as a preset (422 otherwise)."""
    preset = request.get("preset")
    if preset is None:
        return request
    available = sorted(p.stem for p in PRESETS.glob("*.json") if not p.is_symlink())
    if not isinstance(preset, str) or not NAME.fullmatch(preset) or ".." in preset or preset not in available:
        raise HTTPException(status_code=422, detail=f"no such training preset {str(preset)[:100]!r}: a preset is a "
                                                    f"name; known: {available}")
    return {**request, "preset": str(inside(PRESETS, f"{preset}.json", "training preset"))}


# --- sessions ------------------------------------------------------------------------------------

def safe_sessions(base):
    """MONAI Label's :class:`Sessions` unpacking a client's archive (``PUT /session/?uncompress=true``)
    with :mod:`tarfile`'s ``data`` filter: no member outside the session folder, no links out of
    it, no device files (plain ``shutil.unpack_archive`` honours ``../`` and absolute links)."""

    class SafeSessions(base):
        def add_session(self, data_file: str, expiry: int = 0, uncompress: bool = False, session_id=None):
            if not uncompress or os.path.isdir(data_file):
                return super().add_session(data_file, expiry, False, session_id)
            folder = tempfile.mkdtemp()
            try:
                if tarfile.is_tarfile(data_file):
                    with tarfile.open(data_file) as archive:
                        archive.extractall(folder, filter="data")
                else:
                    shutil.unpack_archive(data_file, folder)  # zipfile drops '..' and absolute names
            except Exception as err:  # tarfile.FilterError, zipfile.BadZipFile, shutil.ReadError, ...
                shutil.rmtree(folder, ignore_errors=True)
                raise HTTPException(status_code=422, detail=f"session archive refused: {err}") from err
            return super().add_session(folder, expiry, False, session_id)

    return SafeSessions
