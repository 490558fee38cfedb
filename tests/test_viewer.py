"""The viewer end to end, for real: Orthanc (Debian packages, configs/orthanc.json) holding a phantom
study in the clinical DICOM layout and the real sample patient (samples/spider_57, written as
DICOM); the MONAI Label app reading them through DICOMweb; OHIF (``/ohif/monai-label``, bundled
with MONAI Label) in headless Chromium running ``lumbar_spine`` auto-segmentation on the real
study, the app storing the SEG and the findings SR beside it, OHIF listing the SR and showing its
per-level measurements in the basic viewer's SR view, and OHIF's own DICOM-SEG export; and the REST contract 3D Slicer's MONAI Label module uses, on the same DICOMweb
datastore, through ``monailabel.client``.

Untrained lite networks (or ``weights/lite`` when present): the segments are junk, the plumbing
is not. ``LUMBARSEG_UPDATE_DOCS=1`` also writes the screenshots to ``docs/ohif_lumbar_spine.png`` and
``docs/ohif_findings_sr.png``.
"""

from __future__ import annotations

import io as _io
import os
import re
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from lumbarseg import tissues, viewer
from lumbarseg.io.sr import read_findings_sr

from conftest import REPO, free_port, untrained_weights
from servers import Server, require_viewer_packages

pytestmark = pytest.mark.slow

SCHEMA = set(tissues.STUDY_LABELS.values())
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
DOCS_SCREENSHOT = REPO / "docs" / "ohif_lumbar_spine.png"
DOCS_SR_SCREENSHOT = REPO / "docs" / "ohif_findings_sr.png"
SEGMENTS_JS = """() => {
  const s = window.services.segmentationService;
  const vol = s.getLabelmapVolume('1');
  const names = {};
  for (const g of s.getSegmentations()) for (const x of Object.values(g.segments)) names[x.segmentIndex] = x.label;
  const counts = {};
  let dims = null, origin = null, direction = null;
  if (vol) {
    const d = vol.voxelManager.getCompleteScalarDataArray();
    for (let i = 0; i < d.length; i++) if (d[i]) counts[d[i]] = (counts[d[i]] || 0) + 1;
    dims = Array.from(vol.dimensions); origin = Array.from(vol.origin); direction = Array.from(vol.direction);
  }
  return {names, counts, dims, origin, direction};
}"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Orthanc with one phantom study and the real sample patient, and the app reading them
    through DICOMweb."""
    require_viewer_packages()
    root = tmp_path_factory.mktemp("viewer")
    (folder,) = viewer.write_phantom_dicom(root / "dicom", 1, seed=5)
    real = viewer.nifti_as_dicom(REPO / "samples" / "spider_57" / "57_t2.nii.gz", root / "dicom")
    orthanc = viewer.Orthanc(root / "orthanc", port=free_port())
    server = None
    try:
        orthanc.start()
        study_uid, real_uid = orthanc.upload(folder, real)
        shipped = REPO / "weights" / "lite"
        weights = shipped if (shipped / "model.json").is_file() else untrained_weights(root / "weights", spacing=4.0)
        server = Server(root / "app", orthanc.dicomweb, {}, weights)
        yield {"orthanc": orthanc, "server": server, "study": study_uid, "folder": folder, "root": root,
               "real": real_uid, "real_folder": real}
    finally:
        if server is not None:
            server.stop()
        orthanc.stop()


def _sagittal_series_uid(folder: Path) -> str:
    """The sagittal series of a study folder (a phantom's ``*_sag_*``; the sample's only series)."""
    series = [d for d in folder.iterdir() if d.is_dir()]
    (sag,) = [d for d in series if "_sag_" in d.name] if len(series) > 1 else series
    return str(pydicom.dcmread(next(sag.glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID)


def _nrrd(body: bytes) -> tuple[dict[str, str], np.ndarray]:
    """Header fields and raw voxels of an uncompressed uint8 NRRD (what OHIF asks for)."""
    head, _, data = body.partition(b"\n\n")
    fields = dict(line.split(": ", 1) for line in head.decode().splitlines()[1:] if ": " in line)
    assert fields["encoding"] == "raw" and fields["type"] in ("unsigned char", "uint8", "uchar"), fields
    return fields, np.frombuffer(data, np.uint8)


def _stored(orthanc: viewer.Orthanc, study_uid: str, modality: str = "SEG") -> dict[str, pydicom.Dataset]:
    """Every SEG (or SR) instance of the study as stored in Orthanc, by SeriesInstanceUID (Orthanc REST)."""
    import urllib.request

    out = {}
    for series in orthanc.get("/series?expand"):
        tags = series["MainDicomTags"]
        if tags.get("Modality") != modality or series["ParentStudy"] not in {
                s["ID"] for s in orthanc.get("/studies?expand") if s["MainDicomTags"]["StudyInstanceUID"] == study_uid}:
            continue
        instance = series["Instances"][0]
        with urllib.request.urlopen(f"{orthanc.url}/instances/{instance}/file", timeout=30) as r:
            out[tags["SeriesInstanceUID"]] = pydicom.dcmread(_io.BytesIO(r.read()))
    return out


def _referenced_series(seg: pydicom.Dataset) -> str:
    return str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)


def test_ohif_runs_lumbar_spine_auto_segmentation_and_stores_the_seg_in_orthanc(stack, tmp_path):
    try:
        from playwright.sync_api import sync_playwright  # drives the system Chromium; downloads nothing
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("CI needs playwright (the test extras) for the browser test")
        pytest.skip("playwright not installed (pip install playwright)")
    orthanc, server, study_uid = stack["orthanc"], stack["server"], stack["real"]  # the real patient
    sagittal = _sagittal_series_uid(stack["real_folder"])
    segs_before = set(_stored(orthanc, study_uid))
    url = f"{server.url}/ohif/monai-label?StudyInstanceUIDs={study_uid}"
    console: list[str] = []
    with sync_playwright() as p:
        # OHIF's panel reads the server URL from this cookie (default: the page's host, port 8000)
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=viewer.chromium_binary(), headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 860})
        try:
            context.add_cookies([{"name": "MONAILABEL_SERVER_URL", "value": f"{server.url}/",
                                  "url": server.url}])
            page = context.new_page()
            page.on("console", lambda m: console.append(f"{m.type}: {m.text[:300]}"))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.goto(url)
            page.wait_for_selector(".cornerstone-canvas", timeout=180_000)  # the study is in the viewports
            banner = page.get_by_text("Confirm and Hide")
            if banner.count():
                banner.click()

            # MONAI Label panel: connect, Auto-Segmentation tab, model lumbar_spine, Run
            page.locator(".settingsTable button.actionButton").click()
            page.get_by_text("Auto-Segmentation", exact=True).click(timeout=60_000)
            tab = page.locator("div.tab", has=page.get_by_text("Auto-Segmentation", exact=True))
            assert "lumbar_spine" in [o.strip() for o in tab.locator("select option").all_inner_texts()]
            tab.locator("select").select_option("lumbar_spine")
            with page.expect_response(lambda r: "/infer/lumbar_spine" in r.url, timeout=900_000) as response:
                tab.locator("button.actionButton").click()
            assert response.value.status == 200, "\n".join(console[-30:])
            assert f"image={sagittal}" in response.value.url  # the sagittal stack is in the active viewport
            header, voxels = _nrrd(response.value.body())
            page.get_by_text("Running Segmentation - Successful").wait_for(timeout=60_000)

            # the label map is in OHIF's segmentation, on the volume's grid, with the schema's names
            deadline = time.monotonic() + 60
            while True:
                seen = page.evaluate(SEGMENTS_JS)
                if seen["counts"] or time.monotonic() > deadline:
                    break
                page.wait_for_timeout(500)
            names = {int(k): v for k, v in seen["names"].items()}
            assert set(names.values()) == SCHEMA  # L4-L5, dural_sac, ... as OHIF segments
            assert seen["dims"] == [int(v) for v in header["sizes"].split()]
            origin = [float(v) for v in re.findall(r"[-\d.e+]+", header["space origin"])]
            np.testing.assert_allclose(seen["origin"], origin, atol=1e-2)
            axes = np.array([[float(v) for v in re.findall(r"[-\d.e+]+", d)]
                             for d in re.findall(r"\(([^)]*)\)", header["space directions"])])
            axes /= np.linalg.norm(axes, axis=1, keepdims=True)
            np.testing.assert_allclose(np.reshape(seen["direction"], (3, 3)), axes, atol=1e-3)
            # OHIF renumbers by name; each model value's voxels land on the segment of that name
            model_counts = {tissues.STUDY_LABELS[v]: int(n) for v, n in zip(*np.unique(voxels, return_counts=True)) if v}
            ohif_counts = {names[int(k)]: n for k, n in seen["counts"].items()}
            assert ohif_counts == model_counts and ohif_counts

            shot = tmp_path / "ohif_lumbar_spine.png"
            page.screenshot(path=str(shot))
            if os.environ.get("LUMBARSEG_UPDATE_DOCS"):
                _save_docs_screenshot(shot)

            # the app stored its SEG and the findings SR beside the study: OHIF lists the SR
            auto_segs = {uid: ds for uid, ds in _stored(orthanc, study_uid).items() if uid not in segs_before}
            (auto_seg,) = auto_segs.values()
            (sr,) = _stored(orthanc, study_uid, "SR").values()
            sr_file = tmp_path / "findings_sr.dcm"
            sr.save_as(str(sr_file))
            levels = read_findings_sr(sr_file)["levels"]
            assert levels and {lv["segment"]["sop_instance_uid"] for lv in levels} == {str(auto_seg.SOPInstanceUID)}
            assert {lv["level"] for lv in levels} <= {str(x.SegmentLabel) for x in auto_seg.SegmentSequence}
            segs_before = set(_stored(orthanc, study_uid))  # OHIF's own export next

            # store: OHIF's "Export DICOM SEG" command (the monai-label mode's layout has no
            # segmentation panel to click it in), its "Create Report" dialog, STOW-RS through the
            # server's /proxy/dicom to Orthanc
            page.evaluate("""() => { window.commandsManager.runCommand('storeSegmentation',
                {segmentationId: '1', dataSource: window.extensionManager.getActiveDataSource()[0]}); }""")
            dialog = page.get_by_text("Create Report")
            dialog.wait_for(timeout=30_000)
            page.get_by_text("Enter the report name", exact=True).locator("xpath=following-sibling::input").fill(
                "lumbarseg auto-segmentation")
            with page.expect_response(lambda r: r.request.method == "POST" and "/proxy/dicom/" in r.url,
                                      timeout=60_000) as stow:
                page.get_by_role("button", name="Save").click()
            assert stow.value.status == 200, stow.value.text()[:500]

            # reopened, the study browser lists the app's SR beside the SEGs (the monai-label
            # mode has no SR viewport: its SR opens in OHIF's basic viewer, next)
            page.goto(url)
            page.wait_for_selector(".cornerstone-canvas", timeout=180_000)
            page.get_by_text("lumbarseg findings").first.wait_for(timeout=60_000)

            # OHIF's basic viewer opens the SR: each level's measurements beside its disc centre
            page.goto(f"{server.url}/ohif/viewer?StudyInstanceUIDs={study_uid}")
            page.wait_for_selector(".cornerstone-canvas", timeout=180_000)
            page.get_by_text("lumbarseg findings").first.dblclick()
            shown = _sr_view_levels(page, len(levels))
            assert set(shown) == {lv["level"] for lv in levels}, shown
            for lv in levels:
                assert f"Volume: {lv['disc_volume_mm3']:.2f} mm3" in shown[lv["level"]]
                if lv["dural_sac"]:
                    assert f"Area: {lv['dural_sac']['area_mm2']:.2f} mm2" in shown[lv["level"]]
                    assert f"Diameter: {lv['dural_sac']['ap_diameter_mm']:.2f} mm" in shown[lv["level"]]
            page.screenshot(path=str(tmp_path / "ohif_sr_view.png"))
            if os.environ.get("LUMBARSEG_UPDATE_DOCS"):
                _save_docs_screenshot(tmp_path / "ohif_sr_view.png", DOCS_SR_SCREENSHOT)
        except Exception:
            (tmp_path / "console.log").write_text("\n".join(console))
            page.screenshot(path=str(tmp_path / "failure.png"))
            raise
        finally:
            context.close()

    segs = _stored(orthanc, study_uid)
    new = [segs[uid] for uid in set(segs) - segs_before]
    assert len(new) == 1, f"expected one new SEG series in Orthanc, found {len(new)}"
    seg = new[0]
    assert seg.Modality == "SEG" and _referenced_series(seg) == sagittal
    labels = {str(s.SegmentLabel) for s in seg.SegmentSequence}
    assert labels and labels <= SCHEMA
    assert set(model_counts) <= labels
    assert any(s["0020000D"]["Value"][0] == study_uid for s in orthanc.series("SEG"))  # and DICOMweb sees it


def _sr_view_levels(page, count: int) -> dict[str, str]:
    """Level -> the text OHIF's SR view draws beside that level's point ("Volume: ... mm3 ...
    Level of L4/L5 intervertebral disc"), stepping through the SR's measurements with the
    viewport's next-measurement arrow (a level on another slice is drawn only there)."""
    page.locator("svg text", has_text="intervertebral disc").first.wait_for(timeout=60_000)
    shown: dict[str, str] = {}
    arrows = page.locator("div.pointer-events-auto.right-viewport-scrollbar div.cursor-pointer")
    for _ in range(count + 1):
        for text in page.locator("svg text").all_text_contents():
            found = re.search(r"Level of (\S+)/(\S+) intervertebral disc", text)
            if found:
                shown[f"{found[1]}-{found[2]}"] = text
        if len(shown) == count:
            break
        arrows.nth(1).click()  # (previous, next, ...): next
        page.wait_for_timeout(1000)
    return shown


def _save_docs_screenshot(shot: Path, target: Path = DOCS_SCREENSHOT, limit: int = 300_000) -> None:
    """A docs screenshot, as a palette PNG when that is what keeps it under ``limit``."""
    from PIL import Image

    target.parent.mkdir(exist_ok=True)
    image = Image.open(shot).convert("RGB")
    for colours in (256, 128, 64):
        image.quantize(colours).save(target, optimize=True)
        if target.stat().st_size < limit:
            return
    target.unlink()
    pytest.fail(f"screenshot over {limit} bytes even with 64 colours")


def test_slicer_rest_contract_on_the_dicomweb_datastore(stack, tmp_path):
    """What 3D Slicer's MONAI Label module does, on studies that live in Orthanc: /info/,
    /datastore/, /activelearning/, /infer/, /datastore/label (tag final -> DICOM-SEG into Orthanc
    via dcmqi), /train/ status."""
    from monailabel.client import MONAILabelClient
    import nibabel as nib
    import SimpleITK as sitk

    orthanc, server, study_uid = stack["orthanc"], stack["server"], stack["study"]
    sagittal = _sagittal_series_uid(stack["folder"])
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))

    info = client.info()
    assert next(iter(info["models"])) == "lumbar_spine" and info["labels"] == list(tissues.STUDY_LABELS.values())
    series = {s["0020000E"]["Value"][0] for s in orthanc.series("MR")}
    assert server.get("/datastore/?output=stats")[1]["total"] == len(series)  # every MR series is an image
    assert set(client.datastore()["objects"]) <= series  # ids are SeriesInstanceUIDs (those fetched so far)
    assert client.next_sample("random", {})["id"] in series

    completed = server.get("/datastore/?output=stats")[1]["completed"]
    label_file, params = client.infer("lumbar_spine", sagittal, {})
    # the app stored its SEG and the findings SR in Orthanc; the SR reads back as the JSON report
    stored = params["dicom"]
    srs = _stored(orthanc, study_uid, "SR")
    assert stored["sr_series_uid"] in srs and stored["seg_series_uid"] in _stored(orthanc, study_uid)
    srs[stored["sr_series_uid"]].save_as(str(tmp_path / "sr.dcm"))
    back = {lv["level"]: lv for lv in read_findings_sr(tmp_path / "sr.dcm")["levels"]}
    named = {lv["level"]: lv for lv in params["report"]["levels"] if lv["level"]}
    assert set(back) == set(named)
    for name, level in named.items():
        assert back[name]["herniation"]["present"] == level["herniation"]["present"]
        assert back[name]["disc_volume_mm3"] == pytest.approx(level["disc_volume_mm3"])
        assert (back[name]["dural_sac"] is None) == (level["dural_sac"] is None)
    assert server.get("/datastore/?output=stats")[1]["completed"] == completed  # a model's SEG is not a label
    reader = sitk.ImageSeriesReader()
    sag_dir = next(d for d in stack["folder"].iterdir() if "_sag_" in d.name)
    image = sitk.ReadImage(reader.GetGDCMSeriesFileNames(str(sag_dir)))
    label = np.asarray(nib.load(label_file).dataobj)
    assert label.shape == image.GetSize()
    assert params["report"]["schema"].startswith("lumbarseg.findings/")

    present = [int(v) for v in np.unique(label) if v]
    assert present, "the untrained model labelled nothing; nothing to store"
    label_info = [{"name": tissues.STUDY_LABELS[v], "color": list(tissues.study_label_color(tissues.STUDY_LABELS[v])),
                   "model_name": "lumbar_spine"} for v in present]  # one entry per value present, ascending
    before = set(_stored(orthanc, study_uid))
    result = client.save_label(sagittal, label_file, tag="final", params={"label_info": label_info})
    assert result["image"] == sagittal
    segs = _stored(orthanc, study_uid)
    new = [segs[uid] for uid in set(segs) - before]
    assert len(new) == 1 and _referenced_series(new[0]) == sagittal
    assert [str(s.SegmentLabel) for s in new[0].SegmentSequence] == [i["name"] for i in label_info]
    assert sagittal in {o for o, obj in client.datastore()["objects"].items() if obj.get("labels", {}).get("final")}

    assert client.train_status(check_if_running=True) is False  # Slicer polls this; nothing is training
    status, body = server.get("/train/")  # the last run's details; none yet is a 404 with the reason, not a 500
    assert status == 404 and "No Train Tasks" in body["detail"]
