"""Train tasks: fine-tune the served model on the datastore's final labels, then serve the result.

``/train/<plane>`` fine-tunes that plane network on every labelled study and keeps the other
networks; ``/train/lumbar_spine`` fine-tunes the three planes on most studies and then the
fusion on the planes' out-of-fold predictions of the rest (one study in four, at least one),
as :func:`lumbarseg.training.train` does with the shared data.

A run works in ``<app>/model/runs/<timestamp>/``, starting from the served weights. Only a run
that finishes is published (:meth:`lib.backend.ServedModel.publish`: exported to Triton and
loaded first with that backend); a run that fails or is stopped leaves the served model as it
was. MONAI Label runs each train request in its own process, so the server stays responsive.

Multi-contrast studies: each study's channels are counted from its NIfTI header and named as
the infer tasks name them (``mr0``, ``mr1``, ... in file order: the datastore keeps no contrast
names), so training and inference feed the same channels to the networks' input slots
(:func:`lumbarseg.modalities.select_channels`). There is no ``modality`` option: names that the
infer tasks did not also use would train the networks on other channels than they are served.

Multi-GPU: MONAI Label's ``multi_gpu`` request option is accepted and recorded; the CPU preset
here trains on one device. On a GPU machine pass a GPU training preset (``preset``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import nibabel as nib
from fastapi import HTTPException
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask

from lumbarseg import tissues
from lumbarseg.io import manifest, nifti
from lumbarseg.config import ConfigError
from lumbarseg.training import TrainingPreset, train

from lib.backend import ServedModel

log = logging.getLogger(__name__)
DATA_SET = "datastore"


def channel_count(image: Path) -> int:
    """Image channels of a NIfTI study, from its header (no voxel is read)."""
    if not nifti.is_nifti(image):
        raise HTTPException(status_code=422, detail=f"{image.name}: training reads NIfTI studies only")
    try:
        shape = nib.load(str(image)).shape
    except Exception as err:  # nibabel raises many types for a file that is not NIfTI
        raise HTTPException(status_code=422, detail=f"{image.name}: not a readable NIfTI file ({err})") from err
    if len(shape) == 5 and shape[3] == 1:
        shape = shape[:3] + shape[4:]
    return int(shape[3]) if len(shape) == 4 else 1


def study_modalities(image: Path) -> tuple[str, ...]:
    """The channel names of ``image``: what :func:`lumbarseg.io.load_study` calls its channels
    when given no names, as the infer tasks load studies (``mr0``, ``mr1``, ...)."""
    return tuple(f"mr{i}" for i in range(channel_count(image)))


def datastore_folder(datastore: Datastore, folder: Path) -> Path:
    """The datastore's final labels as a data folder (``manifest.csv`` + links to the files);
    label values are the app's (:data:`lumbarseg.tissues.STUDY_LABELS`); channels named by
    :func:`study_modalities`."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for n, item in enumerate(datastore.datalist()):
        names = study_modalities(Path(item["image"]))
        links = []
        for key in ("image", "label"):
            source = Path(item[key])
            link = folder / f"{n:04d}_{key}{''.join(source.suffixes)}"
            link.unlink(missing_ok=True)
            link.symlink_to(source.resolve())
            links.append(link)
        entries.append(manifest.ManifestEntry(DATA_SET, f"{n:04d}", links[0], links[1], names,
                                              dict(tissues.STUDY_LABELS)))
    return manifest.write_manifest(folder, entries).parent


def out_of_fold_split(subjects: list[str], fusion_share: int = 4) -> dict:
    """Every ``fusion_share``-th subject (at least one) for the fusion, the rest for the planes."""
    fusion = subjects[fusion_share - 1 :: fusion_share] or subjects[-1:]
    return {DATA_SET: {"train": [s for s in subjects if s not in fusion], "fusion": fusion, "holdout": []}}


class Retrain(TrainTask):
    def __init__(self, model: ServedModel, runs: Path, *, networks: tuple[str, ...], preset: str = "finetune"):
        name = "all three planes, then the fusion" if "fusion" in networks else f"the {networks[0]} network"
        super().__init__(f"Fine-tune {name} on the datastore's final labels, then serve the new model")
        self.model = model
        self.runs = Path(runs)
        self.networks = networks
        self.preset = preset

    def config(self) -> dict:
        return {"preset": self.preset, "multi_gpu": False}  # no "modality": see the module doc

    def __call__(self, request, datastore: Datastore) -> dict:
        # Fine-tuning keeps the served model's network preset, spacing and input, whatever the preset says.
        served = self.model.segmenter().info
        try:
            preset = replace(TrainingPreset.load(request.get("preset", self.preset)), model=served.preset,
                             spacing_mm=served.spacing_mm, slice_context=served.slice_context)
        except ConfigError as err:
            raise HTTPException(status_code=422, detail=str(err)) from err
        labelled = datastore.datalist()
        needed = 2 if "fusion" in self.networks else 1
        if len(labelled) < needed:
            raise HTTPException(status_code=422, detail=f"{len(labelled)} final label(s) in the datastore; training "
                                                        f"{', '.join(self.networks)} needs at least {needed}")
        version = time.strftime("%Y%m%d-%H%M%S")
        run = self.runs / version
        data = datastore_folder(datastore, run / "data")
        subjects = [e.subject for e in manifest.read_manifest(data)]
        split = out_of_fold_split(subjects) if "fusion" in self.networks else \
            {DATA_SET: {"train": subjects, "fusion": [], "holdout": []}}
        log.info("training %s on %d labelled studies in %s", self.networks, len(subjects), run)
        weights = train(preset, [data], run, init=self.model.folder, networks=self.networks, split=split)
        self.model.publish(weights, version)
        return {"model_version": version, "networks": list(self.networks), "studies": len(subjects),
                "weights": str(weights), "multi_gpu": bool(request.get("multi_gpu", False))}

