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
