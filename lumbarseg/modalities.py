"""MRI contrast names: one vocabulary for manifests, loaders, phantoms and channel selection.

Files in the wild name Dixon outputs in several ways (IVDM3Seg: ``fat``, ``inn``, ``opp``,
``wat``); :func:`normalize` maps them onto the names below so the rest of the code sees one name
per contrast.
"""

from __future__ import annotations

MODALITIES: tuple[str, ...] = (
    "t2w",
    "t1w",
    "stir",
    "dixon_water",
    "dixon_fat",
    "dixon_in",
    "dixon_opp",
)

_ALIASES = {
    "t2": "t2w",
    "t1": "t1w",
    "water": "dixon_water",
    "wat": "dixon_water",
    "fat": "dixon_fat",
    "inn": "dixon_in",
    "in": "dixon_in",
    "inphase": "dixon_in",
    "opp": "dixon_opp",
    "out": "dixon_opp",
    "opposed": "dixon_opp",
}


def normalize(name: str) -> str:
    """Canonical contrast name; unknown names are kept (lower-cased), not rejected, so studies
    from other protocols still load."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    return _ALIASES.get(key, key)


# The network's three input slots, after the paper's "3 most useful modalities": a fluid-bright
# contrast first (CSF and discs bright: the structures segmented), a fat-bright one second, then
# whatever else the study has. Fixed slots keep a channel's meaning stable across protocols.
SLOTS: tuple[tuple[str, ...], ...] = (
    ("t2w", "dixon_water", "stir", "dixon_in"),
    ("t1w", "dixon_fat", "dixon_in"),
    ("dixon_opp", "dixon_in", "stir", "dixon_water"),
)


def select_channels(names: tuple[str, ...] | list[str]) -> list[int]:
    """Indices of ``names`` feeding the three input slots.

    Each slot takes the first contrast of its preference list the study has and no earlier slot
    took; a slot left empty takes the first channel not yet used (unknown contrasts included);
    when none is left it repeats the first filled slot. Never fails for a non-empty study.
    """
    if not names:
        raise ValueError("a study needs at least one image channel")
    names = [normalize(n) for n in names]
    chosen: list[int | None] = []
    for prefs in SLOTS:
        chosen.append(next((names.index(p) for p in prefs if p in names and names.index(p) not in chosen), None))
    unused = [i for i in range(len(names)) if i not in chosen]
    chosen = [c if c is not None else (unused.pop(0) if unused else None) for c in chosen]
    fallback = next(c for c in chosen if c is not None)
    return [fallback if c is None else c for c in chosen]
