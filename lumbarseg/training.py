"""Training: the three plane networks on 2D slices, then the fusion on out-of-fold predictions.

Subjects come in three disjoint groups (``configs/data/split.json``): the plane networks learn
on ``train``; they then predict the ``fusion`` subjects, and the 3D fusion learns on those
predictions, never on predictions of the plane networks' own training subjects (the paper's
scheme); ``holdout`` subjects are never read here. Sets the split does not name are training
data. Phantoms are mixed in for the tissues no real set labels.

Everything is deterministic under the preset's seed. Checkpoints are written atomically after
every epoch and a rerun resumes where the last one stopped.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from lumbarseg import datasets, metrics, pipeline, planes, tissues
from lumbarseg.augment import paper_augmentations
from lumbarseg.config import ConfigError, read_config
from lumbarseg.io import manifest
from lumbarseg.io.study import StudyError
from lumbarseg.losses import PartialDiceCELoss
from lumbarseg.networks.fusion import fusion_net
from lumbarseg.networks.plane_net import plane_net

REPO = Path(__file__).resolve().parents[1]
SPLIT = REPO / "configs" / "data" / "split.json"
PRESETS = REPO / "configs" / "training"
GROUPS = ("train", "fusion", "holdout")
UNSEEN = "unseen"  # a subject of a split set that no group names (see group_of)
CACHE_VERSION = 3  # bump when datasets.prepare or save_volume changes what a cached volume holds
log = logging.getLogger("lumbarseg.train")


@dataclass(frozen=True)
class PhantomDraw:
    """How many phantoms join each training group: they carry the only labels of the tissues
    no real set labels."""

    train: int  # phantoms the plane networks train on
    fusion: int  # phantoms the fusion trains on
    seed: int  # phantom i of the train group is phantom.generate(seed + i); of the fusion group, seed + 100000 + i
    # Chance of a hernia at each disc from L1-L2 down (phantom.PhantomSpec.sample; 0.35 as
    # lumbarseg phantoms draws them): more hernias to learn the class from.
    hernia_probability: float = 0.35


@dataclass(frozen=True)
class OutOfFold:
    """The paper's k-fold scheme: the training subjects are dealt into ``folds`` folds by set
    (:func:`folds_by_set`); per fold, three planes trained from random weights with ``preset`` on
    the other folds predict this one, and the fusion learns on those predictions of every
    training subject besides the fusion group's."""

    folds: int
    preset: str  # training preset (configs/training/<name>.json) of the fold planes


@dataclass(frozen=True)
class FusionRecipe:
    """The fusion's own schedule: it trains on 3D patches of the plane networks' predictions."""

    epochs: int
    iterations_per_epoch: int
    patch: int  # cube edge, voxels
    batch_size: int
    learning_rate: float
    # Draw patches set by set (as the planes draw slices), not study by study.
    balance_sets: bool = False
    # The fusion's own cross-entropy class weights; None: the preset's. A class weighted hard
    # enough for the planes to learn it is over-drawn if the fusion weighs it as much: the
    # fusion then only has to calibrate it.
    class_weights: dict[str, float] | None = None
    # Weight of the squared distance of the fusion's weights from the planes' average (its
    # initial weights), added to the loss: a fusion learnt on a few studies stays near the
    # average instead of learning one study's quirks (issue 15: an active-learning round learnt
    # "sagittal body means disc" from one SPIDER study and lost the vertebrae on all the others).
    average_anchor: float = 0.0
    # Learn on the k-fold out-of-fold predictions of the training subjects too (None: only on
    # the fusion group); the fold planes and their predictions are kept in <out>/folds.
    out_of_fold: OutOfFold | None = None
    # Start from the planes' average even when fine-tuning (--init): a fusion relearnt on new
    # inputs (out_of_fold) rather than nudged from the one it replaces.
    restart: bool = False


@dataclass(frozen=True)
class TrainingPreset:
    """A training recipe, ``configs/training/<name>.json`` (:meth:`load`)."""

    model: str  # plane network preset (configs/models/<model>.json)
    spacing_mm: float  # isotropic resampling of every study
    input_size: int  # square training crop, pixels
    batch_size: int
    epochs: int
    iterations_per_epoch: int
    learning_rate: float
    weight_decay: float
    labelled_slice_fraction: float  # share of slices drawn among those with labels
    augment_probability: float
    phantoms: PhantomDraw
    fusion: FusionRecipe
    seed: int
    # How often a set is drawn relative to the others (default 1 each); phantoms carry the only
    # hernia, sacrum and spinous-process labels, so the lite preset draws them more often.
    set_weights: dict[str, float] = field(default_factory=dict)
    # Share of slices cut through a voxel of a class drawn uniformly among those the study
    # labels, crop placed around it (nnU-Net's foreground oversampling): small tissues such as a
    # hernia or the sacrum are otherwise too rare in random crops to be learnt.
    class_centred_fraction: float = 0.0
    # How often each class is the one a class-centred slice cuts through, relative to the others
    # a study labels (default 1 each): a phantom labels eight classes, so without it a hernia
    # centres about one class-centred slice in eight.
    centre_weights: dict[str, float] = field(default_factory=dict)
    # Cross-entropy weight of pixels surely of a class (default 1): tissues only phantoms label
    # (sacrum, spinous process: marrow like the bodies; hernia: tiny) are otherwise never learnt.
    class_weights: dict[str, float] = field(default_factory=dict)
    # 2.5D input (lumbarseg.planes.slice_context): a study's input slots that repeat its one
    # contrast carry the neighbouring slices; written to the weights folder's model.json.
    slice_context: bool = False
    # Add the Dice of each partial label's class group (SPIDER's whole vertebra: body, articular
    # or spinous process) to the plane networks' loss (losses.known_dice_loss): a round that
    # starts from studies labelling no bone surely learns the vertebrae from it (issue 15; the
    # fusion, given it too, lost the discs). Off in the shipped chain's presets, trained without it.
    partial_dice: bool = False

    def loss(self, network: str = "planes") -> PartialDiceCELoss:
        """The partial-label loss of the plane networks or the ``fusion``: cross-entropy weights
        per tissue class (the fusion's own when it has them), and the Dice of partial labels'
        class groups when ``partial_dice``."""
        weights = self.class_weights
        if network == "fusion" and self.fusion.class_weights is not None:
            weights = self.fusion.class_weights
        tensor = torch.tensor([float(weights.get(name, 1.0)) for name in tissues.TISSUE_NAMES]) if weights else None
        groups = []
        if self.partial_dice and network == "planes":
            groups = [[t.index for t in tissues.classes_of(name)] for name in tissues.PARTIAL]
        return PartialDiceCELoss(class_weights=tensor, groups=groups)

    @classmethod
    def load(cls, name_or_path: str | Path) -> "TrainingPreset":
        """A preset by name (``configs/training/<name>.json``) or JSON path; :class:`ConfigError`
        if there is none or it does not fit this class."""
        path = Path(name_or_path)
        if not path.is_file():
            path = PRESETS / f"{name_or_path}.json"
        if not path.is_file():
            known = sorted(p.stem for p in PRESETS.glob("*.json"))
            raise ConfigError(name_or_path, f"no such training preset; known: {known}")
        preset = read_config(cls, path)
        named = {"class_weights": preset.class_weights, "centre_weights": preset.centre_weights,
                 "fusion.class_weights": preset.fusion.class_weights or {}}
        for key, weights in named.items():
            unknown = set(weights) - set(tissues.TISSUE_NAMES)
            if unknown:
                raise ConfigError(path, f"{key} names unknown tissue(s) {sorted(unknown)}; tissues are {tissues.TISSUE_NAMES}")
        return preset


def load_split(path: Path = SPLIT) -> dict[str, dict[str, list[str]]]:
    return json.loads(path.read_text())["sets"]


def subject_unit(set_name: str, subject: str) -> str:
    """The subject a study belongs to: ivdm3seg crops (``A1_volume3``) are several per subject."""
    return subject.split("_")[0] if set_name == "ivdm3seg_crops" else subject


def groups_of(entry: manifest.ManifestEntry, split: dict) -> tuple[str, ...]:
    """Every group whose list names the manifest row's subject, in :data:`GROUPS` order; sets
    the split does not name train. A subject of a set the split names but not in any of its
    groups is ``unseen``: new studies from a known source (say, the evaluation subjects kept
    back from ../shared/data), never trained on, scored like holdout. A subject in both
    ``train`` and ``fusion`` trains the planes and the fusion, which then learns on the planes'
    in-sample predictions of it (active learning's rounds do this for a set's only labelled
    study; ``configs/data/split.json`` names each subject once)."""
    groups = split.get(entry.set)
    if groups is None:
        return ("train",)
    unit = subject_unit(entry.set, entry.subject)
    return tuple(g for g in GROUPS if unit in groups[g]) or (UNSEEN,)


def group_of(entry: manifest.ManifestEntry, split: dict) -> str:
    """``train``, ``fusion``, ``holdout`` or ``unseen``: the first of :func:`groups_of`."""
    return groups_of(entry, split)[0]


def _prepared_once(cache: Path, name: str, key: tuple, spacing: float, study) -> datasets.TrainingVolume:
    """``study()`` prepared at ``spacing`` mm, kept as ``cache/<name>_<hash>.npz`` (the hash of
    ``key``, the spacing and :data:`CACHE_VERSION`) and read from there when it exists."""
    digest = hashlib.sha256(repr((CACHE_VERSION, *key, spacing)).encode()).hexdigest()[:16]
    path = cache / f"{name}_{digest}.npz"
    if path.is_file():
        return datasets.load_volume(path)
    volume = datasets.prepare(study(), spacing)
    datasets.save_volume(volume, path)
    return volume


def _cached(entry: manifest.ManifestEntry, spacing: float, cache: Path) -> datasets.TrainingVolume:
    missing = [p for p in (entry.image, entry.label) if p and not p.is_file()]
    if missing:
        raise StudyError(missing[0], "file not found")
    stat = [(p.stat().st_size, p.stat().st_mtime_ns) for p in (entry.image, entry.label) if p]
    return _prepared_once(cache, f"{entry.set}_{entry.subject}",
                          (str(entry.image), stat, sorted(entry.structures.items())), spacing,
                          lambda: manifest.load_entry(entry))


@functools.cache
def _phantom_source() -> str:
    from lumbarseg import phantom

    return hashlib.sha256(Path(phantom.__file__).read_bytes()).hexdigest()


def _cached_phantom(seed: int, hernia_probability: float, spacing: float, cache: Path) -> datasets.TrainingVolume:
    """A preset's phantom, prepared once per cache folder: rendering one takes seconds, and runs that
    share a cache (the rounds of an active-learning simulation) draw the same seeds. The generator's
    source is part of the key, so a changed generator never serves a stale phantom."""
    from lumbarseg import phantom

    return _prepared_once(cache, f"phantom_{seed}", (_phantom_source(), seed, hernia_probability), spacing,
                          lambda: phantom.generate(seed, hernia_probability=hernia_probability))


def collect_volumes(data_dirs: list[Path], preset: TrainingPreset, cache: Path,
                    split: dict | None = None) -> dict[str, list[datasets.TrainingVolume]]:
    """Training and fusion volumes from data folders plus phantoms; holdout subjects are skipped."""
    cache.mkdir(parents=True, exist_ok=True)
    split = load_split() if split is None else split
    out: dict[str, list[datasets.TrainingVolume]] = {"train": [], "fusion": []}
    entries = [e for d in data_dirs for e in manifest.read_manifest(d)]
    unseen = [e.key for e in entries if group_of(e, split) == UNSEEN]
    if unseen:
        log.warning("not training on %d studies the split does not place (%s%s): add them to a group to use them",
                    len(unseen), ", ".join(unseen[:5]), ", ..." if len(unseen) > 5 else "")
    for entry in tqdm(entries, desc="preparing studies", unit="study"):
        groups = [g for g in groups_of(entry, split) if g in out]
        if groups:
            volume = _cached(entry, preset.spacing_mm, cache)
            for group in groups:
                out[group].append(volume)
    draw = preset.phantoms
    for group, count, offset in (("train", draw.train, 0), ("fusion", draw.fusion, 100_000)):
        for i in tqdm(range(count), desc=f"{group} phantoms", unit="phantom", disable=not count):
            out[group].append(_cached_phantom(draw.seed + offset + i, draw.hernia_probability,
                                              preset.spacing_mm, cache))
    if not out["train"]:
        raise StudyError(", ".join(map(str, data_dirs)), "no training studies")
    return out


def volumes_by_set(volumes: list[datasets.TrainingVolume]) -> dict[str, list[datasets.TrainingVolume]]:
    """Volumes grouped by their set (the first part of the key), in order."""
    groups: dict[str, list[datasets.TrainingVolume]] = {}
    for v in volumes:
        groups.setdefault(v.key.split("/")[0], []).append(v)
    return groups


def indices_by_set(volumes: list[datasets.TrainingVolume]) -> dict[str, list[int]]:
    """Indices into ``volumes`` grouped by their set (the first part of the key), in order."""
    sets: dict[str, list[int]] = {}
    for j, v in enumerate(volumes):
        sets.setdefault(v.key.split("/")[0], []).append(j)
    return sets


class _SetDraw:
    """Draws the index of a training study: a set (uniformly, or by the preset's
    ``set_weights``, so a 40-subject set does not drown a 5-subject one), then a study in it."""

    def __init__(self, volumes: list[datasets.TrainingVolume], preset: TrainingPreset):
        self.sets = indices_by_set(volumes)
        self.names = sorted(self.sets)
        weights = np.array([preset.set_weights.get(name, 1.0) for name in self.names], float)
        self.probabilities = weights / weights.sum() if preset.set_weights else None

    def __call__(self, rng: np.random.Generator) -> int:
        pool = self.sets[self.names[rng.choice(len(self.names), p=self.probabilities)]]
        return pool[rng.integers(len(pool))]


def _window(n: int, size: int, rng: np.random.Generator, keep: int | None = None) -> tuple[slice, slice]:
    """A random ``size``-long window over an axis of length ``n``: (source, destination) slices.
    Longer axes are cropped (around index ``keep`` when given); shorter ones are placed at a
    random offset in padding."""
    if n >= size:
        lo, hi = (0, n - size) if keep is None else (max(0, keep - size + 1), min(n - size, keep))
        start = int(rng.integers(lo, hi + 1))
        return slice(start, start + size), slice(0, size)
    before = int(rng.integers(0, size - n + 1))
    return slice(0, n), slice(before, before + n)


class SliceDataset(Dataset):
    """``iterations * batch_size`` random training slices of one plane for one epoch.

    Each item draws a study (:class:`_SetDraw`) and a slice: through a voxel of a randomly
    drawn labelled class (``class_centred_fraction``; the class by ``centre_weights``), else
    mostly among slices with labels;
    crops or pads it to the preset's input size, augments it, and returns ``image (3, S, S)``
    and ``allowed (K, S, S)``.
    Item ``i`` of epoch ``e`` is the same on every run.
    """

    def __init__(self, volumes: list[datasets.TrainingVolume], plane: str, preset: TrainingPreset, epoch: int):
        self.volumes = volumes
        self.draw = _SetDraw(volumes, preset)
        self.plane = plane
        self.preset = preset
        self.epoch = epoch
        axis = planes.NORMAL_AXIS[plane]
        other = tuple(a for a in range(3) if a != axis)
        self.labelled = {v.key: np.flatnonzero(((v.target > 0) & (v.target != datasets.IGNORE)).any(axis=other))
                         for v in volumes}
        self.augment = paper_augmentations(prob=preset.augment_probability)

    def __len__(self) -> int:
        return self.preset.iterations_per_epoch * self.preset.batch_size

    def _centre_class(self, volume: datasets.TrainingVolume, rng: np.random.Generator) -> int:
        classes = sorted(volume.class_voxels)
        if not self.preset.centre_weights:
            return int(rng.choice(classes))
        weights = np.array([self.preset.centre_weights.get(tissues.TISSUE_NAMES[k], 1.0) for k in classes])
        return int(rng.choice(classes, p=weights / weights.sum()))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.preset.seed, self.epoch, i, planes.PLANES.index(self.plane)])
        # Presets without set_weights or class_centred_fraction draw nothing for them, so their
        # random stream (and the weights trained with it) stays what it was before both existed.
        volume = self.volumes[self.draw(rng)]
        labelled = self.labelled[volume.key]
        axis = planes.NORMAL_AXIS[self.plane]
        keep = (None, None)
        if self.preset.class_centred_fraction and volume.class_voxels and rng.random() < self.preset.class_centred_fraction:
            voxels = volume.class_voxels[self._centre_class(volume, rng)]
            voxel = voxels[rng.integers(len(voxels))]
            index, keep = int(voxel[axis]), tuple(int(voxel[a]) for a in range(3) if a != axis)
        elif labelled.size and rng.random() < self.preset.labelled_slice_fraction:
            index = int(rng.choice(labelled))
        else:
            index = int(rng.integers(volume.shape[axis]))
        image, allowed = datasets.plane_slice(volume, self.plane, index, context=self.preset.slice_context)
        codes, table = datasets.encode_allowed(allowed)
        size = self.preset.input_size
        (src_h, dst_h), (src_w, dst_w) = (_window(n, size, rng, k) for n, k in zip(codes.shape, keep))
        crop = np.zeros((image.shape[0], size, size), np.float32)
        crop[:, dst_h, dst_w] = image[:, src_h, src_w]
        crop_codes = np.full((size, size), datasets.IGNORE, np.uint8)  # padding: nothing known
        crop_codes[dst_h, dst_w] = codes[src_h, src_w]
        self.augment.set_random_state(seed=int(rng.integers(2**31)))
        sample = self.augment({"image": crop, "label": crop_codes[None]})
        codes = np.asarray(sample["label"])[0].round().astype(np.int64)
        allowed = datasets.decode_allowed(np.clip(codes, 0, datasets.IGNORE), table)
        return torch.as_tensor(np.asarray(sample["image"]), dtype=torch.float32), torch.from_numpy(np.ascontiguousarray(allowed))


def _save_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def validation_dice(predict, volumes: list[datasets.TrainingVolume]) -> dict[str, float]:
    """Mean Dice per annotated class over validation volumes (``predict``: volume -> class map)."""
    scores: dict[str, list[float]] = {}
    for volume in volumes:
        annotated = {k for k, (lo, hi) in enumerate(volume.extent) if lo <= hi}
        z = np.arange(volume.shape[2])[None, None, :]
        for name, value in metrics.dice_per_class(predict(volume), volume.target, z, annotated).items():
            scores.setdefault(name, []).append(value)
    return {name: float(np.mean(v)) for name, v in sorted(scores.items())}


def _run_epochs(name: str, model: torch.nn.Module, make_loader, epochs: int, lr: float, weight_decay: float,
                validate, checkpoint: Path, loss_fn: PartialDiceCELoss, penalty=None) -> list[dict]:
    """The shared loop of plane and fusion training: AdamW, cosine schedule, the partial-label
    ``loss_fn`` plus ``penalty(model)`` when given, an atomic checkpoint and a log line per
    epoch; resumes from ``checkpoint``."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    history: list[dict] = []
    start = 0
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        history, start = state["history"], state["epoch"]
        log.info("%s: resuming after epoch %d", name, start)
    for epoch in range(start, epochs):
        model.train()
        losses = []
        began = time.perf_counter()
        for x, allowed in tqdm(make_loader(epoch), desc=f"{name} epoch {epoch + 1}/{epochs}", leave=False):
            optimizer.zero_grad()
            loss = loss_fn(model(x), allowed)
            if penalty is not None:
                loss = loss + penalty(model)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        scheduler.step()
        dice = validate(model)
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_dice": dice,
                        "seconds": time.perf_counter() - began})
        log.info("%s epoch %d/%d  loss %.4f  val Dice %s  (%.0f s)", name, epoch + 1, epochs, history[-1]["loss"],
                 " ".join(f"{k}={v:.3f}" for k, v in dice.items()), history[-1]["seconds"])
        _save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(),
                      "history": history, "epoch": epoch + 1}, checkpoint)
    return history


def network(name: str, preset: TrainingPreset, init: Path | None) -> torch.nn.Module:
    """A plane network or the fusion, seeded (initial weights and dropout), or starting from
    the weights folder ``init`` (fine-tuning)."""
    torch.manual_seed(preset.seed + (*planes.PLANES, "fusion").index(name))
    if name == "fusion":
        model = fusion_net(num_classes=tissues.NUM_TISSUES)
    else:
        model = plane_net(preset=preset.model, num_classes=tissues.NUM_TISSUES)
    if init is not None:
        model.load_state_dict(pipeline.load_state(Path(init) / f"{name}.pt"))
    return model


def train_plane(plane: str, volumes: dict[str, list[datasets.TrainingVolume]], preset: TrainingPreset,
                out: Path, init: Path | None = None) -> tuple[torch.nn.Module, list[dict]]:
    model = network(plane, preset, init)

    def loader(epoch: int) -> DataLoader:
        return DataLoader(SliceDataset(volumes["train"], plane, preset, epoch), batch_size=preset.batch_size)

    # Two studies per set keep the per-epoch check cheap; the fusion group, never the holdout.
    checks = [v for vs in volumes_by_set(volumes["fusion"]).values() for v in vs[:2]]

    def validate(m: torch.nn.Module) -> dict[str, float]:
        return validation_dice(lambda v: pipeline.predict_plane(m, v.image, plane, context=preset.slice_context)
                               .argmax(0), checks)

    history = _run_epochs(plane, model, loader, preset.epochs, preset.learning_rate, preset.weight_decay,
                          validate, out / "checkpoints" / f"{plane}.ckpt", preset.loss())
    return model, history


class PatchDataset(Dataset):
    """Random 3D patches of fusion inputs (out-of-fold plane probabilities + positions)."""

    def __init__(self, inputs: list[np.ndarray], volumes: list[datasets.TrainingVolume], preset: TrainingPreset, epoch: int):
        self.inputs, self.volumes, self.preset, self.epoch = inputs, volumes, preset, epoch
        self.draw = _SetDraw(volumes, preset) if preset.fusion.balance_sets else None

    def __len__(self) -> int:
        return self.preset.fusion.iterations_per_epoch * self.preset.fusion.batch_size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.preset.seed, self.epoch, i, 99])
        j = self.draw(rng) if self.draw else int(rng.integers(len(self.volumes)))
        volume, x = self.volumes[j], self.inputs[j]
        p = self.preset.fusion.patch
        src, dst = zip(*(_window(n, p, rng) for n in volume.shape))
        z = np.arange(volume.shape[2])[src[2]][None, None, :]
        patch = np.zeros((x.shape[0], p, p, p), np.float32)
        patch[(slice(None), *dst)] = x[(slice(None), *src)]
        allowed = np.ones((tissues.NUM_TISSUES, p, p, p), bool)  # padding: nothing known
        allowed[(slice(None), *dst)] = datasets.allowed_classes(volume.target[src], volume.extent, z, volume.region[src])
        return torch.from_numpy(patch), torch.from_numpy(allowed)


def fusion_inputs(plane_models: dict[str, torch.nn.Module], volumes: list[datasets.TrainingVolume],
                  spacing: float, *, context: bool = False) -> list[np.ndarray]:
    """Per volume (on a ``spacing`` mm grid), the fusion's input (float16) from the plane
    networks' predictions of it (``context``: 2.5D input)."""
    inputs = []
    for volume in tqdm(volumes, desc="out-of-fold plane predictions", unit="study"):
        probs = {p: pipeline.predict_plane(m, volume.image, p, context=context) for p, m in plane_models.items()}
        inputs.append(planes.fusion_input(probs, volume.shape, tissues.NUM_TISSUES, spacing=spacing).astype(np.float16))
    return inputs


def folds_by_set(volumes: list[datasets.TrainingVolume], n_folds: int) -> list[int]:
    """Fold of each volume: a set's subjects (crops of one subject together) dealt out in turn."""
    fold, dealt = [], {}
    for v in volumes:
        set_name, subject = v.key.split("/")
        units, unit = dealt.setdefault(set_name, {}), subject_unit(set_name, subject)
        fold.append(units.setdefault(unit, len(units) % n_folds))
    return fold


def out_of_fold_inputs(training: list[datasets.TrainingVolume], fusion_group: list[datasets.TrainingVolume],
                       preset: TrainingPreset, work: Path, n_folds: int, *, spacing: float,
                       context: bool) -> list[np.ndarray]:
    """Fusion inputs of every training volume, each predicted by planes trained (``preset``, from
    random weights, checked per epoch on the fusion group as in training) without its fold
    (:class:`OutOfFold`); a fold's checkpoints and predictions are kept in ``work/fold<f>`` so an
    interrupted run resumes and a finished fold is not trained again. ``spacing`` and
    ``context``: those of the planes the fusion will fuse, which the fold planes must share."""
    if (preset.spacing_mm, preset.slice_context) != (spacing, context):
        raise ConfigError(work, f"fold planes need the spacing ({spacing} mm) and slice_context ({context}) of the "
                                f"planes the fusion will fuse; their preset has {preset.spacing_mm} mm and "
                                f"{preset.slice_context}")
    fold = folds_by_set(training, n_folds)
    inputs: list[np.ndarray] = [np.empty(0)] * len(training)
    for f in range(n_folds):
        out = work / f"fold{f}"
        members = [j for j in range(len(training)) if fold[j] == f]
        saved = out / "inputs.npz"
        if saved.is_file():
            with np.load(saved) as arrays:
                predicted = [arrays[training[j].key] for j in members]
        else:
            (out / "checkpoints").mkdir(parents=True, exist_ok=True)
            rest = {"train": [v for v, g in zip(training, fold) if g != f], "fusion": fusion_group}
            models = {plane: train_plane(plane, rest, preset, out)[0] for plane in planes.PLANES}
            predicted = fusion_inputs(models, [training[j] for j in members], preset.spacing_mm,
                                      context=preset.slice_context)
            np.savez(saved, **{training[j].key: x for j, x in zip(members, predicted)})
        for j, x in zip(members, predicted):
            inputs[j] = x
    return inputs


def train_fusion(plane_models: dict[str, torch.nn.Module], volumes: dict[str, list[datasets.TrainingVolume]],
                 preset: TrainingPreset, out: Path, init: Path | None = None) -> tuple[torch.nn.Module, list[dict]]:
    """The fusion learns on the plane networks' predictions of the fusion group: subjects they
    never trained on, except those the split lists in both groups (:func:`groups_of`); with the
    preset's ``fusion.out_of_fold``, also on k-fold predictions of the training subjects."""
    if not volumes["fusion"]:
        raise StudyError(out, "no fusion-group studies: the fusion learns on out-of-fold predictions, so it needs "
                              "subjects the plane networks do not train on")
    inputs = fusion_inputs(plane_models, volumes["fusion"], preset.spacing_mm, context=preset.slice_context)
    learn_on = list(volumes["fusion"])
    oof = preset.fusion.out_of_fold
    if oof is not None:
        inputs += out_of_fold_inputs(volumes["train"], volumes["fusion"], TrainingPreset.load(oof.preset),
                                     out / "folds", oof.folds, spacing=preset.spacing_mm, context=preset.slice_context)
        learn_on += volumes["train"]
    return fit_fusion(inputs, learn_on, preset, out / "checkpoints" / "fusion.ckpt",
                      None if preset.fusion.restart else init)


def fit_fusion(inputs: list[np.ndarray], volumes: list[datasets.TrainingVolume], preset: TrainingPreset,
               checkpoint: Path, init: Path | None = None) -> tuple[torch.nn.Module, list[dict]]:
    """Train the fusion on precomputed inputs (:func:`fusion_inputs`) of ``volumes``."""
    model = network("fusion", preset, init)
    f = preset.fusion

    def loader(epoch: int) -> DataLoader:
        return DataLoader(PatchDataset(inputs, volumes, preset, epoch), batch_size=f.batch_size)

    # Two of its own training studies per set: a cheap sanity check, not a held-out score.
    checks = [j for js in indices_by_set(volumes).values() for j in js[:2]]

    def validate(m: torch.nn.Module) -> dict[str, float]:
        with torch.no_grad():
            m.eval()
            preds = {volumes[j].key: m(torch.from_numpy(inputs[j].astype(np.float32))[None])[0].argmax(0).numpy()
                     for j in checks}
        return validation_dice(lambda v: preds[v.key], [volumes[j] for j in checks])

    penalty = None
    if f.average_anchor:
        average = {n: w.detach().clone() for n, w in network("fusion", preset, None).named_parameters()}

        def penalty(m: torch.nn.Module) -> torch.Tensor:
            return f.average_anchor * sum(((w - average[n]) ** 2).sum() for n, w in m.named_parameters())

    history = _run_epochs("fusion", model, loader, f.epochs, f.learning_rate, preset.weight_decay,
                          validate, checkpoint, preset.loss("fusion"), penalty)
    return model, history


def plot_history(histories: dict[str, list[dict]], path: Path) -> None:
    """Learning curves: training loss and validation Dice per network."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(histories), figsize=(4 * len(histories), 6), squeeze=False)
    for col, (name, history) in enumerate(histories.items()):
        epochs = [h["epoch"] for h in history]
        axes[0, col].plot(epochs, [h["loss"] for h in history])
        axes[0, col].set_title(f"{name}: training loss")
        for cls in sorted({c for h in history for c in h["val_dice"]}):
            axes[1, col].plot(epochs, [h["val_dice"].get(cls, np.nan) for h in history], label=cls)
        axes[1, col].set_title(f"{name}: validation Dice")
        axes[1, col].set_ylim(0, 1)
        axes[1, col].set_xlabel("epoch")
        axes[1, col].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def train(preset: TrainingPreset, data_dirs: list[Path], out: Path, *, init: Path | None = None,
          networks: tuple[str, ...] = (*planes.PLANES, "fusion"), split: dict | None = None) -> Path:
    """Train and write the weights folder ``out/model``; returns its path.

    ``networks``: which of the three planes and ``fusion`` to train; the others are taken from
    ``init`` (a weights folder), which every trained network also starts from when given
    (fine-tuning). ``split``: subject groups per set, as in ``configs/data/split.json``."""
    unknown = set(networks) - {*planes.PLANES, "fusion"}
    if unknown or not networks:
        raise StudyError(out, f"cannot train {sorted(unknown) or 'nothing'}; networks are {(*planes.PLANES, 'fusion')}")
    if init is None and set(networks) != {*planes.PLANES, "fusion"}:
        raise StudyError(out, "training only some networks needs a weights folder (init) for the others")
    kept = set(planes.PLANES) - set(networks)
    if kept and pipeline.ModelInfo.load(init).slice_context != preset.slice_context:
        raise StudyError(out, f"preset slice_context={preset.slice_context} but the {', '.join(sorted(kept))} "
                              f"network(s) kept from {init} take slice_context={not preset.slice_context} input")
    out.mkdir(parents=True, exist_ok=True)
    (out / "checkpoints").mkdir(exist_ok=True)
    began = time.perf_counter()
    volumes = collect_volumes(data_dirs, preset, out / "cache", split)
    log.info("training on %d volumes, fusion on %d (sets: %s)", len(volumes["train"]), len(volumes["fusion"]),
             ", ".join(f"{s}={len(v)}" for s, v in volumes_by_set(volumes["train"]).items()))
    histories = {}
    plane_models = {}
    for plane in planes.PLANES:
        if plane in networks:
            plane_models[plane], histories[plane] = train_plane(plane, volumes, preset, out, init)
        else:
            plane_models[plane] = network(plane, preset, init)
    if "fusion" in networks:
        fusion, histories["fusion"] = train_fusion(plane_models, volumes, preset, out, init)
    else:
        fusion = network("fusion", preset, init)
    minutes = (time.perf_counter() - began) / 60
    info = {
        "preset": preset.model, "spacing_mm": preset.spacing_mm, "slice_context": preset.slice_context,
        "training": asdict(preset),
        "data": [str(d) for d in data_dirs], "split": str(SPLIT.relative_to(REPO)) if split is None else split,
        "initial_weights": None if init is None else str(init),
        "history": histories, "wall_minutes_this_run": round(minutes, 1),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
    }
    pipeline.save_model(out / "model", plane_models, fusion, info)
    plot_history(histories, out / "learning_curves.png")
    log.info("done in %.1f min: %s", minutes, out / "model")
    return out / "model"
