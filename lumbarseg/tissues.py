"""The label schema: tissue classes, disc levels, vertebrae, label values and colours.

Two encodings, both defined here and nowhere else:

* **Tissue classes** (``TISSUES``): what a network predicts per voxel, one channel per class.
  These are the tissues of the paper's Table 7 plus the sacrum, which the level naming needs.
* **Study labels** (``STUDY_LABELS``): what a label map written by this project holds (phantom
  ground truth, the served segmentation, DICOM-SEG segments): each disc and vertebral body is its
  own value named by level; the other tissues keep one value each. A study label name maps to
  its tissue class with :func:`tissue_of`.

Label maps from elsewhere (the shared data sets) come with their own value -> name table (the
manifest's ``structures`` column); names are the same vocabulary, so :func:`tissue_of` reads
them too. Two names other sets use are not one of our classes as such (SPIDER's):
``spinal_canal`` is an alias (:data:`ALIASES`) and ``vertebra`` a *partial* label
(:data:`PARTIAL`): the voxel is one of several classes, :func:`classes_of` says which.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tissue:
    index: int  # channel of the network output
    name: str  # machine name, as in manifests and JSON
    title: str  # for people: viewers, reports
    color: tuple[int, int, int]  # RGB, 0..255


TISSUES: tuple[Tissue, ...] = (
    Tissue(0, "background", "Background", (0, 0, 0)),
    Tissue(1, "disc", "Intervertebral disc", (80, 200, 255)),
    Tissue(2, "hernia", "Disc herniation", (255, 60, 60)),
    Tissue(3, "dural_sac", "Dural sac", (255, 230, 80)),
    Tissue(4, "vertebral_body", "Vertebral body", (240, 240, 200)),
    # The neural arch but its spinous process: articular processes, pedicles and laminae (one
    # class, so SPIDER's whole-vertebra label leaves no bone to call background; the name stays).
    Tissue(5, "articular_process", "Articular process, pedicle or lamina", (180, 120, 255)),
    Tissue(6, "ligamentum_flavum", "Ligamentum flavum", (255, 160, 40)),
    Tissue(7, "spinous_process", "Spinous process", (120, 220, 120)),
    Tissue(8, "sacrum", "Sacrum", (200, 170, 130)),
)
# Label value of a pixel whose class is not annotated (unnamed structures, augmentation
# padding): losses allow every class there and metrics skip it.
IGNORE = 255

TISSUE_NAMES: tuple[str, ...] = tuple(t.name for t in TISSUES)
NUM_TISSUES = len(TISSUES)

# Cranial to caudal. The seven discs of the IVDM3Seg / paper labelling.
DISC_LEVELS: tuple[str, ...] = ("T11-T12", "T12-L1", "L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1")
VERTEBRAE: tuple[str, ...] = ("T11", "T12", "L1", "L2", "L3", "L4", "L5", "S1")


def _study_labels() -> dict[int, str]:
    # Contiguous values 1..N, so a viewer's label *list* (OHIF's MONAI Label panel takes a list
    # and numbers it from 1) is this table in value order, with no second encoding.
    names = ["dural_sac", "hernia", "articular_process", "ligamentum_flavum", "spinous_process",
             "sacrum",  # S1 is the sacrum's top body; it is labelled "sacrum", not as a vertebra
             # A disc or body whose level is not known (a prediction before level naming, or an
             # extra disc above T11), then each by level, caudal last.
             "disc", *DISC_LEVELS, "vertebral_body", *VERTEBRAE[:-1]]
    return {value: name for value, name in enumerate(names, start=1)}


STUDY_LABELS: dict[int, str] = _study_labels()
STUDY_VALUES: dict[str, int] = {name: value for value, name in STUDY_LABELS.items()}


# Another set's name for one of our classes. SPIDER's spinal canal label is the T2-bright
# content of the thecal sac, bounded by the dura: the paper's dural sac, the area stenosis is
# graded on (the bony canal around it, with fat and ligamentum flavum, is not what it labels).
ALIASES: dict[str, str] = {"spinal_canal": "dural_sac"}
# Names that cover several classes: a voxel so labelled is one of them, not which one. SPIDER's
# whole vertebra is body, articular and spinous processes, and the pedicles and laminae, which
# the articular_process class holds (in phantoms too): every vertebra voxel is bone of a class.
PARTIAL: dict[str, tuple[str, ...]] = {
    "vertebra": ("vertebral_body", "articular_process", "spinous_process"),
}
# In tissue-class maps (training targets, scored truth) a partial name gets a value after the
# classes: the voxel is one of PARTIAL[name].
PARTIAL_CODES: dict[str, int] = {name: NUM_TISSUES + i for i, name in enumerate(PARTIAL)}


def tissue_of(name: str) -> Tissue:
    """The tissue class a structure name denotes: a class name (or :data:`ALIASES`), a disc
    level or a vertebra by level. Partial names (:data:`PARTIAL`) denote no single class."""
    if name in PARTIAL:
        raise KeyError(f"{name!r} covers several tissue classes {PARTIAL[name]}; use classes_of")
    name = ALIASES.get(name, name)
    if name in DISC_LEVELS:
        return TISSUES[1]
    if name == "S1":
        return TISSUES[8]
    if name in VERTEBRAE:
        return TISSUES[4]
    for tissue in TISSUES:
        if tissue.name == name:
            return tissue
    raise KeyError(f"unknown structure name {name!r}; expected a tissue class, disc level or vertebra")


def classes_of(name: str) -> tuple[Tissue, ...]:
    """The tissue classes a structure name allows: one for a class, level or alias, several for
    a partial name."""
    if name in PARTIAL:
        return tuple(TISSUES[TISSUE_NAMES.index(n)] for n in PARTIAL[name])
    return (tissue_of(name),)


def is_known_structure(name: str) -> bool:
    try:
        classes_of(name)
    except KeyError:
        return False
    return True


def parse_structures(text: str) -> dict[int, str]:
    """Parse a manifest ``structures`` cell, ``'1=L5-S1;2=L4-L5'`` -> ``{1: 'L5-S1', 2: 'L4-L5'}``."""
    table: dict[int, str] = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        value, sep, name = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise ValueError(f"bad structures entry {item!r}; expected 'value=name'")
        name = name.strip()
        if not is_known_structure(name):
            raise ValueError(f"unknown structure name {name!r} in {text!r}")
        table[int(value)] = name
    return table


def format_structures(table: dict[int, str]) -> str:
    """Inverse of :func:`parse_structures`."""
    return ";".join(f"{value}={name}" for value, name in sorted(table.items()))


def study_label_color(name: str) -> tuple[int, int, int]:
    return tissue_of(name).color
