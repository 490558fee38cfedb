"""Findings into the PACS: for a study of a DICOMweb datastore (Orthanc), each infer's DICOM-SEG
and findings SR (written by ``lib.transforms.transforms.DicomFindingsd``) are stored beside the
study by STOW-RS, so OHIF's study browser lists them and any DICOM viewer reads them.

An automatic SEG in the PACS must not pass for a reviewed label: MONAI Label's DICOMweb
datastore counts every SEG that references a series as that series' label, so active learning
would skip every study the model has segmented and training would learn the model's own answer.
:func:`reviewed_labels_only` makes the datastore skip SEGs with lumbarseg's series description
(:data:`lumbarseg.io.dicom.SEG_DESCRIPTION`); a label saved by an annotator (MONAI Label's
``save_label``, OHIF's export) carries another.
"""

from __future__ import annotations

import logging
import os

from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.utils.dicom import dicom_web_upload_dcm
from pydicom.dataset import Dataset

from lumbarseg.io.dicom import SEG_DESCRIPTION

log = logging.getLogger(__name__)


def dicom_series(datastore: DICOMWebDatastore, image_id: str) -> str:
    """The series' DICOM folder in the datastore's cache, downloaded first if need be: the infer
    reads it (lumbarseg.io), not MONAI Label's NIfTI conversion, so that the report's slices and
    points are the instances the SR references."""
    datastore.get_image_uri(image_id)  # downloads, converts and registers the image
    return os.path.join(datastore._datastore.image_path(), image_id)  # where MONAI Label caches it


def store_findings(result: dict, datastore: DICOMWebDatastore) -> None:
    """Upload the SEG and SR files named in ``result["params"]["dicom"]`` to the datastore's
    DICOMweb server and replace them there by their series UIDs; the files are deleted either
    way. A failed upload is reported in the result, not raised: the segmentation still stands."""
    params = result.get("params") or {}
    files = params.get("dicom")
    if not files or "error" in files:  # nothing was written; the reason, if any, stays in the result
        return
    try:
        params["dicom"] = {f"{kind}_series_uid": dicom_web_upload_dcm(path, datastore._client)
                           for kind, path in files.items()}
    except Exception as err:  # dicomweb-client raises requests' and its own errors
        log.warning("storing the findings of %s failed: %s", result.get("label"), err)
        params["dicom"] = {"error": f"storing in the PACS failed: {type(err).__name__}: {err}"}
    finally:
        for path in files.values():
            if os.path.exists(path):
                os.unlink(path)


def reviewed_labels_only(cls: type[DICOMWebDatastore]) -> type[DICOMWebDatastore]:
    """``cls`` whose labelled images are those with a SEG that lumbarseg did not write."""

    class ReviewedLabels(cls):
        def get_labeled_images(self, label_tag=None, labels=None) -> list[str]:
            images = set(self.list_images())
            labelled = []
            for found in self._client.search_for_series(search_filters={"Modality": "SEG"}):
                seg = Dataset.from_json(found)
                if str(seg.get("SeriesDescription", "")) == SEG_DESCRIPTION:
                    continue
                meta = Dataset.from_json(self._client.retrieve_series_metadata(
                    str(seg.StudyInstanceUID), str(seg.SeriesInstanceUID))[0])
                if meta.get("ReferencedSeriesSequence"):
                    series = str(meta.ReferencedSeriesSequence[0].SeriesInstanceUID)
                    if series in images:
                        labelled.append(series)
            return labelled

    ReviewedLabels.__name__ = ReviewedLabels.__qualname__ = f"ReviewedLabels{cls.__name__}"
    return ReviewedLabels
