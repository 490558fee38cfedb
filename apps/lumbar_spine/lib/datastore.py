"""A local datastore that refuses labels that cannot belong to their image.

MONAI Label's :class:`LocalDatastore` stores whatever file a client uploads as a label. Here a
label must be a readable NIfTI on its image's grid (same shape, same affine within 1e-3 mm)
holding only study label values (:data:`lumbarseg.tissues.STUDY_LABELS`); anything else is a
4xx with the reason, and the labels already stored stay as they were.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
from fastapi import HTTPException
from monailabel.datastore.local import LocalDatastore

from lumbarseg import tissues


class CheckedLocalDatastore(LocalDatastore):
    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict) -> str:
        image_path = self.get_image_uri(image_id)
        if not image_path:
            raise HTTPException(status_code=404, detail=f"unknown image id {image_id!r}")
        try:
            label = nib.load(label_filename)
            values = np.unique(np.asarray(label.dataobj))
        except Exception as err:  # nibabel raises many types for a file that is not NIfTI
            raise HTTPException(status_code=422, detail=f"label for {image_id!r} is not a readable NIfTI file: {err}")
        image = nib.load(image_path)
        if label.shape != image.shape[:3]:
            raise HTTPException(status_code=422, detail=f"label shape {label.shape} does not match image "
                                                        f"{image_id!r} shape {image.shape[:3]}")
        if not np.allclose(label.affine, image.affine, atol=1e-3):
            raise HTTPException(status_code=422, detail=f"label affine does not match image {image_id!r}: "
                                                        "the label is not on the image's grid")
        unknown = sorted(set(values.tolist()) - {0, *tissues.STUDY_LABELS})
        if unknown:
            raise HTTPException(status_code=422, detail=f"label values {unknown[:5]} are not in the app's label "
                                                        f"list (1..{len(tissues.STUDY_LABELS)})")
        return super().save_label(image_id, label_filename, label_tag, label_info)
