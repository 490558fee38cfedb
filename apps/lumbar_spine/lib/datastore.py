"""A local datastore that stores only studies, and labels that belong to their image, inside
its folder.

MONAI Label's :class:`LocalDatastore` stores whatever a client uploads, under whatever name
and extension the client gives (``PUT /datastore/image?image=../x`` with an ``x.sh`` upload
wrote ``../x.sh``). Here (checks in :mod:`lib.guards`):

* an image id and a label tag are names, joined inside the studies folder and its
  ``labels/`` folder; a symbolic link there is never written through;
* an image is stored as NIfTI only once it loads as a study within the memory budgets (header
  first, then the network grid at the served model's spacing), and never over an image already
  stored under that id (409: its labels would no longer fit it);
* a label must be a NIfTI on its image's grid (same shape, same affine within 1e-3 mm), checked
  from the header before a voxel is read, holding only study label values
  (:data:`lumbarseg.tissues.STUDY_LABELS`).

Anything else is a 4xx with the reason, the refused upload is deleted, and the images and labels
already stored stay as they were.
"""

from __future__ import annotations

from typing import Callable

import nibabel as nib
import numpy as np
from fastapi import HTTPException
from monailabel.datastore.local import LocalDatastore

from lumbarseg import io, tissues
from lumbarseg.io.study import StudyError

from lib import guards

SLAB_VOXELS = 2**24  # label values are read this many voxels at a time (16 MiB as uint8)


class CheckedLocalDatastore(LocalDatastore):
    def __init__(self, *args, spacing: Callable[[], float] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._spacing = spacing  # the served model's grid spacing (mm), for the upload's grid budget

    def add_image(self, image_id: str, image_filename: str, image_info: dict) -> str:
        try:
            guards.check_name(image_id, "image id")
            suffix = guards.nifti_suffix(image_filename, "an image")
            guards.inside(self._datastore.image_path(), image_id + suffix, "image id")
            if image_id in self.list_images():
                raise HTTPException(status_code=409, detail=f"image id {image_id!r} is already stored; delete it "
                                                            "first or choose another id")
            guards.check_study(image_filename, self._spacing() if self._spacing else None, "the image")
            return super().add_image(image_id, image_filename, image_info)
        except BaseException:
            guards.discard_upload(image_filename)
            raise

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict) -> str:
        try:
            self._check_label(image_id, label_filename, label_tag or "final")
            return super().save_label(image_id, label_filename, label_tag, label_info)
        except BaseException:
            guards.discard_upload(label_filename)
            raise

    def _check_label(self, image_id: str, label_filename: str, tag: str) -> None:
        guards.check_name(tag, "label tag")
        image_path = self.get_image_uri(image_id) if isinstance(image_id, str) else ""
        if not image_path:
            raise HTTPException(status_code=404, detail=f"unknown image id {image_id!r}")
        suffix = guards.nifti_suffix(label_filename, "a label")
        folder = guards.inside(self._datastore.label_path(None), tag, "label tag")
        guards.inside(folder, image_id + suffix, "label", check=False)
        try:
            label = nib.load(label_filename)
            label_shape = label.shape
        except Exception as err:  # nibabel raises many types for a file that is not NIfTI
            raise HTTPException(status_code=422, detail=f"label for {image_id!r} is not a readable NIfTI file: "
                                                        f"{err}") from err
        try:
            # stored images passed the data checks when they were added: their header is enough here
            image_shape, _, image_affine, _ = io.check_header(image_path, data=False)
        except StudyError as err:
            raise HTTPException(status_code=422, detail=f"stored image {image_id!r} is not a readable study "
                                                        f"({guards.study_problem(err)}): it cannot be labelled") from err
        if len(label_shape) == 4 and label_shape[3] == 1:
            label_shape = label_shape[:3]
        if tuple(label_shape) != tuple(image_shape):
            raise HTTPException(status_code=422, detail=f"label shape {tuple(label_shape)} does not match image "
                                                        f"{image_id!r} shape {tuple(image_shape)}")
        if not np.allclose(label.affine, image_affine, atol=1e-3):
            raise HTTPException(status_code=422, detail=f"label affine does not match image {image_id!r}: "
                                                        "the label is not on the image's grid")
        try:
            io.check_header(label_filename, label)  # the gzip stream inflates to what the header says
            values = _label_values(label)
        except StudyError as err:
            raise HTTPException(status_code=422, detail=f"label for {image_id!r}: {guards.study_problem(err)}") from err
        except Exception as err:
            raise HTTPException(status_code=422, detail=f"label for {image_id!r} is not a readable NIfTI file: "
                                                        f"{err}") from err
        unknown = sorted(values - {0, *tissues.STUDY_LABELS})
        if unknown:
            raise HTTPException(status_code=422, detail=f"label values {unknown[:5]} are not in the app's label "
                                                        f"list (1..{len(tissues.STUDY_LABELS)})")


def _label_values(label: nib.Nifti1Image) -> set:
    """The distinct values of a label, read slab by slab (at most :data:`SLAB_VOXELS` voxels in
    memory); stops early once it holds more values than a label can."""
    shape = label.shape
    per = max(1, SLAB_VOXELS // max(1, shape[0] * shape[1]))
    values: set = set()
    for k in range(0, shape[2], per):
        values |= set(np.unique(np.asanyarray(label.dataobj[:, :, k:k + per])).tolist())
        if len(values) > len(tissues.STUDY_LABELS) + 1:
            break
    return values
