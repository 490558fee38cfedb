"""Synthetic lumbar spine MRI studies with ground truth for every tissue of the label schema.

The anatomy is continuous, in patient space (RAS, mm): a spine centreline with lordosis and
scoliosis, and around it, in local spine coordinates (``s`` along the spine from the sacrum's
top, upwards; ``a`` anterior of the body centres; ``l`` towards the patient's right), the
vertebral bodies T11-L5 (plus 0-2 unlabelled thoracic levels above), the discs between them,
the sacrum, the dural sac in the canal, articular processes, ligamenta flava, spinous
processes, and a torso of fat and muscle. Any grid -- a 3D volume, a sparse sagittal stack, an
axial stack tilted parallel to a disc -- is rendered by evaluating the model at its voxel
centres (:meth:`Phantom.labels_at`), so every acquisition of one phantom shows the same
anatomy.

Pathology with known truth: disc degeneration (height and T2 signal loss), herniations (disc
material pushed posteriorly into the canal, central / paracentral / foraminal, with top point
and height), and dural sac narrowing graded by cross-sectional area.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from lumbarseg import tissues
from lumbarseg.io.study import Series, Study
# Truth is graded with the thresholds the findings use (configs/findings.json, cited there).
from lumbarseg.measure import stenosis_grade

V = tissues.STUDY_VALUES
CONTRASTS = ("t2w", "t1w", "dixon_water", "dixon_fat", "dixon_in", "dixon_opp")
STENOSIS_AP_FACTOR = {"none": 1.0, "mild": 0.42, "moderate": 0.3, "severe": 0.19}

# Appearance classes (not labels): what a voxel looks like in MRI.
AIR, FAT, MUSCLE, SOFT, MARROW, NUCLEUS, ANNULUS, CSF, LIGAMENT, BONE = range(10)
# Relative signal per appearance class and contrast (T2: fluid bright; T1: fat bright; Dixon
# water/fat separate the two, in = water + fat, opp = |water - fat|).
_WATER = np.array([0.0, 0.06, 0.42, 0.5, 0.3, 0.85, 0.32, 0.95, 0.08, 0.05])
_FATSIG = np.array([0.0, 0.92, 0.05, 0.12, 0.45, 0.02, 0.03, 0.0, 0.02, 0.02])
SIGNAL = {
    "t2w": np.array([0.0, 0.72, 0.22, 0.4, 0.45, 0.92, 0.3, 1.0, 0.08, 0.05]),
    "t1w": np.array([0.0, 1.0, 0.35, 0.45, 0.72, 0.38, 0.3, 0.12, 0.08, 0.05]),
    "dixon_water": _WATER,
    "dixon_fat": _FATSIG,
    "dixon_in": _WATER + _FATSIG,
    "dixon_opp": np.abs(_WATER - _FATSIG),
}


@dataclass
class Hernia:
    level: str
    direction: str  # central, paracentral, foraminal
    side: str  # left, right (central: none)
    radii_mm: tuple[float, float, float]  # along s (half height), a (depth), l (half width)


@dataclass
class PhantomSpec:
    """Every random choice of one phantom; :meth:`sample` draws them from a seed."""

    seed: int
    modalities: tuple[str, ...]
    shape: tuple[int, int, int]  # (LR, AP, SI) voxels of the 3D volume
    spacing: tuple[float, float, float]  # mm
    axcodes: str  # stored orientation of the 3D volume, e.g. "RAS", "PIR"
    lordosis_deg: float
    scoliosis_deg: float
    extra_levels: int  # unlabelled thoracic discs (and bodies) above T11-T12
    body_heights: tuple[float, ...]  # mm, L5 upwards, 7 labelled + extra
    disc_heights: tuple[float, ...]  # mm, L5-S1 upwards
    degeneration: tuple[float, ...]  # 0..1 per disc, L5-S1 upwards
    hernias: tuple[Hernia, ...]
    stenosis: dict[str, str]  # disc level -> grade of narrowing applied
    body_half_depth: float
    body_half_width: float
    sac_half_ap: float
    sac_half_width: float
    noise: float  # Rician sigma, fraction of the brightest tissue
    bias: float  # amplitude of the smooth multiplicative bias field
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)  # patient position of the L5-S1 disc centre

    @classmethod
    def sample(cls, seed: int, **overrides) -> "PhantomSpec":
        rng = np.random.default_rng(seed)
        extra = int(overrides.pop("extra_discs", rng.choice([0, 0, 1, 2])))
        levels = len(tissues.DISC_LEVELS) + extra
        hernia_levels = overrides.pop("hernia_levels", None)
        hernia_probability = overrides.pop("hernia_probability", 0.35)  # per disc from L1-L2 down
        if hernia_levels is None:
            hernia_levels = [lv for lv in tissues.DISC_LEVELS[2:] if rng.random() < hernia_probability]
        hernias = []
        for level in hernia_levels:
            direction = str(rng.choice(["central", "paracentral", "foraminal"], p=[0.4, 0.4, 0.2]))
            hernias.append(Hernia(level, direction, "none" if direction == "central" else str(rng.choice(["left", "right"])),
                                  (float(rng.uniform(2.5, 4.5)), float(rng.uniform(3.0, 5.5)), float(rng.uniform(4.0, 7.0)))))
        stenosis = {lv: str(rng.choice(list(STENOSIS_AP_FACTOR), p=[0.6, 0.15, 0.15, 0.1])) for lv in tissues.DISC_LEVELS}
        count = int(rng.integers(1, 5))
        spacing_inplane = float(rng.uniform(0.9, 1.5))
        spec = cls(
            seed=seed,
            modalities=tuple(str(m) for m in rng.choice(CONTRASTS, size=count, replace=False)),
            shape=(int(rng.integers(36, 48)), 0, 0),  # completed below from the field of view
            spacing=(float(rng.uniform(1.0, 4.0)), spacing_inplane, spacing_inplane),
            axcodes=str(rng.choice(["RAS", "LPS", "PIR", "IPR", "SPL"])),
            lordosis_deg=float(rng.uniform(25, 55)),
            scoliosis_deg=float(rng.choice([0.0, rng.uniform(-12, 12)])),
            extra_levels=extra,
            body_heights=tuple(float(h) for h in rng.uniform(23, 28, levels)),
            disc_heights=tuple(float(h) for h in rng.uniform(8, 12, levels)),
            degeneration=tuple(float(d) for d in rng.choice([0.0, 0.0, 0.3, 0.7], size=levels)),
            hernias=tuple(hernias),
            stenosis=stenosis,
            body_half_depth=float(rng.uniform(14, 17)),
            body_half_width=float(rng.uniform(19, 23)),
            sac_half_ap=float(rng.uniform(7.0, 8.5)),
            sac_half_width=float(rng.uniform(9.0, 11.0)),
            noise=float(rng.uniform(0.02, 0.05)),
            bias=float(rng.uniform(0.05, 0.3)),
            origin=tuple(float(o) for o in rng.uniform(-10, 10, 3)),
        )
        fov = (float(rng.uniform(50, 80)), float(rng.uniform(180, 240)), float(rng.uniform(230, 290)) + 36 * extra)
        spec = replace(spec, **{k: v for k, v in overrides.items() if k != "shape" and k != "spacing"})
        spacing = overrides.get("spacing", spec.spacing)
        shape = overrides.get("shape", tuple(max(8, int(round(f / s))) for f, s in zip(fov, spacing)))
        return replace(spec, spacing=tuple(spacing), shape=tuple(shape), modalities=tuple(spec.modalities))


def study_seed(seed: int, index: int) -> int:
    """Seed of study ``index`` of a run started with ``seed`` (stable, independent streams)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


class Phantom:
    def __init__(self, spec: PhantomSpec):
        self.spec = spec
        levels = len(tissues.DISC_LEVELS) + spec.extra_levels
        # Along s: disc L5-S1 starts at 0 (sacrum top); discs and bodies alternate upwards.
        self.discs: list[tuple[float, float]] = []  # (bottom, top) in s, L5-S1 upwards
        self.bodies: list[tuple[float, float]] = []  # L5 upwards
        s = 0.0
        for i in range(levels):
            h = spec.disc_heights[i] * (1 - 0.35 * spec.degeneration[i])
            self.discs.append((s, s + h))
            s += h
            self.bodies.append((s, s + spec.body_heights[i]))
            s += spec.body_heights[i]
        self.length = s
        self.level_names = list(reversed(tissues.DISC_LEVELS)) + [None] * spec.extra_levels
        self.body_names = list(reversed(tissues.VERTEBRAE[:-1])) + [None] * spec.extra_levels
        self._centreline()

    # --- geometry -------------------------------------------------------------------------
    def _centreline(self) -> None:
        """Sample the spine curve: lordosis in the sagittal plane (the spine goes anterior then
        posterior going up), scoliosis in the coronal plane, the sacrum curving back below."""
        sp = self.spec
        s = np.arange(-70.0, self.length + 40.0, 0.5)
        half = np.deg2rad(sp.lordosis_deg) / 2
        # Sagittal tangent angle: forward-leaning at L5, upright mid-lumbar, leaning back at the
        # thoracolumbar junction and easing towards upright above; the sacrum tilts back below.
        phi = np.interp(s, [0, 100, 200, 320], [half, 0, -0.7 * half, -0.2 * half])
        phi = np.where(s < 0, phi + 0.012 * (-s), phi)
        psi = np.deg2rad(sp.scoliosis_deg) * np.sin(np.pi * np.clip(s / 180.0, 0, 1.5))
        tangent = np.stack([np.sin(psi), np.sin(phi), np.cos(phi) * np.cos(psi)], axis=1)
        tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
        points = np.cumsum(tangent * 0.5, axis=0)
        points -= np.array([np.interp(0.0, s, points[:, i]) for i in range(3)]) - np.asarray(sp.origin)
        self._s, self._points, self._tangent = s, points, tangent

    def frame(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Centre, tangent (superior), anterior and right unit vectors at spine positions s."""
        c = np.stack([np.interp(s, self._s, self._points[:, i]) for i in range(3)], axis=-1)
        t = np.stack([np.interp(s, self._s, self._tangent[:, i]) for i in range(3)], axis=-1)
        t /= np.linalg.norm(t, axis=-1, keepdims=True)
        ant = np.array([0.0, 1.0, 0.0]) - (t[..., 1:2]) * t
        ant /= np.linalg.norm(ant, axis=-1, keepdims=True)
        right = np.cross(ant, t)  # anterior x superior = +x, the patient's right in RAS
        return c, t, ant, right

    def local(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Spine coordinates (s, a, l) of patient points ``(N, 3)`` by Newton projection on the curve."""
        s = xyz[:, 2] - self.spec.origin[2]
        for _ in range(3):
            c, t, _, _ = self.frame(s)
            s = np.clip(s + np.einsum("ij,ij->i", xyz - c, t), self._s[0], self._s[-1])
        c, t, ant, right = self.frame(s)
        d = xyz - c
        return s, np.einsum("ij,ij->i", d, ant), np.einsum("ij,ij->i", d, right)

    # --- anatomy ----------------------------------------------------------------------------
    def _level_of(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per point: index of the nearest disc, its centre s and its half height."""
        centres = np.array([(b + t) / 2 for b, t in self.discs])
        halves = np.array([(t - b) / 2 for b, t in self.discs])
        index = _nearest(centres, s)
        return index, centres[index], halves[index]

    def evaluate(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Study label values and appearance classes at patient points ``(N, 3)``."""
        sp = self.spec
        s, a, l = self.local(np.asarray(xyz, dtype=np.float64))
        label = np.zeros(len(s), np.uint8)
        look = np.full(len(s), AIR, np.uint8)
        dv, wv = sp.body_half_depth, sp.body_half_width

        # Torso (in the axial plane of the spine): fat, muscle, abdomen, back muscles.
        torso = ((a - 25.0) / 115.0) ** 2 + (l / 150.0) ** 2 < 1
        look[torso] = FAT
        inner = ((a - 25.0) / 100.0) ** 2 + (l / 137.0) ** 2 < 1
        look[inner] = SOFT
        muscle = inner & (a < -dv - 8) & (np.abs(l) < 55) | inner & (np.abs(l) > 25) & (np.abs(l) < 45) & (np.abs(a) < 25)
        look[muscle] = MUSCLE

        section = (np.abs(a) / dv) ** 2.5 + (np.abs(l) / wv) ** 2.5  # body/disc cross-section
        index, centre, half = self._level_of(s)
        du = np.abs(s - centre)
        # The L5-S1 disc is a wedge: taller anteriorly.
        wedge = np.where(index == 0, 1 + 0.35 * np.clip(a / dv, -1, 1), 1.0)
        in_disc_slab = du < half * wedge

        bottoms, tops = np.array(self.bodies).T
        body_index = np.clip(np.searchsorted(bottoms, s, side="right") - 1, 0, len(bottoms) - 1)
        edge = np.minimum(s - bottoms[body_index], tops[body_index] - s)  # mm from the endplate
        bodies = (edge >= 0) & (section < 1 - 0.15 * np.clip(1 - edge / 2, 0, 1))  # rounded rims
        look[bodies] = MARROW
        body_values = np.array([V[n] if n else 0 for n in self.body_names], np.uint8)
        label[bodies] = body_values[body_index[bodies]]

        # Posterior elements, per vertebra: pedicles and lamina and the articular processes at
        # the facet joints (disc level), one class; spinous process, ligamentum flavum.
        canal_centre = -(dv + 11.0)
        arch_s = (s >= self.bodies[0][0] - 2) & (s <= self.bodies[-1][1])
        pedicle = arch_s & (np.abs(np.abs(l) - 11) < 4) & (a < -dv + 2) & (a > canal_centre) & ~in_disc_slab
        lamina = arch_s & (np.abs(a - (canal_centre - 11)) < 3) & (np.abs(l) < 14) & ~in_disc_slab
        look[pedicle | lamina] = BONE
        label[pedicle | lamina] = V["articular_process"]
        facet = ((du / (half + 6)) ** 2 + ((a - (canal_centre - 4)) / 5.5) ** 2 + ((np.abs(l) - 17) / 5.0) ** 2) < 1
        facet &= s > self.discs[0][0] - 4
        look[facet] = MARROW
        label[facet] = V["articular_process"]
        # Spinous process: from the lamina backwards and down, on the upper half of each body.
        depth = -(a - (canal_centre - 13))
        mids = (bottoms + tops) / 2 + 4
        shifted = s + 0.35 * depth  # pointing caudally
        spinous = (depth > 0) & (depth < 30) & (np.abs(shifted - mids[_nearest(mids, shifted)]) < 7) & (np.abs(l) < 3.5)
        look[spinous] = MARROW
        label[spinous] = V["spinous_process"]

        # Dural sac: an elliptic tube in the canal, narrowed at stenotic levels.
        factor = np.array([STENOSIS_AP_FACTOR[sp.stenosis.get(n, "none")] if n else 1.0 for n in self.level_names])
        narrowing = np.interp(du, [0, half.max() + 6, half.max() + 14], [1, 1, 0])  # smooth to normal
        ap = sp.sac_half_ap * (1 - (1 - factor[index]) * narrowing)
        sac = (((a - canal_centre) / ap) ** 2 + (l / sp.sac_half_width) ** 2) < 1
        sac &= s > -25
        flavum = (((a - canal_centre) / (sp.sac_half_ap + 3.5)) ** 2 + (l / (sp.sac_half_width + 3.5)) ** 2 < 1) & ~sac
        flavum &= (a < canal_centre - 3) & (du < half + 5) & (s > -2)
        look[flavum] = LIGAMENT
        label[flavum] = V["ligamentum_flavum"]
        look[sac] = CSF
        label[sac] = V["dural_sac"]

        # Discs: annulus ring around a nucleus; degeneration dims the nucleus.
        disc = in_disc_slab & (section < 1.08)
        degeneration = np.asarray(sp.degeneration)[index]
        look[disc] = ANNULUS
        nucleus = disc & (section < 0.45) & (du < 0.7 * half)
        look[nucleus] = NUCLEUS
        disc_values = np.array([V[n] if n else 0 for n in self.level_names], np.uint8)
        label[disc] = disc_values[index[disc]]
        self._degeneration = degeneration

        # Hernias: disc material through the posterior annulus into the canal. It looks like the
        # annulus it came through (T2 iso- to hypointense, as real protrusions do), so only its
        # shape tells it from the disc; a grey of its own sat halfway between the dural sac and
        # the dark band in front of it, which every partial-volume voxel there matches.
        hernia = self._hernia_mask(s, a, l, index) & ~disc
        look[hernia] = ANNULUS
        label[hernia] = V["hernia"]

        # Sacrum: below the L5-S1 disc, tapering downwards.
        taper = np.clip(1 + s / 90.0, 0.3, 1)
        sacrum = (s < self.discs[0][0]) & (s > -65) & ((np.abs(a + 3 * (1 - taper)) / (dv * taper)) ** 2.5 + (np.abs(l) / (wv * 1.2 * taper)) ** 2.5 < 1)
        look[sacrum] = MARROW
        label[sacrum] = V["sacrum"]
        return label, look

    def _hernia_mask(self, s: np.ndarray, a: np.ndarray, l: np.ndarray, index: np.ndarray) -> np.ndarray:
        mask = np.zeros(len(s), bool)
        for h in self.spec.hernias:
            centre_s, centre_a, centre_l = self._hernia_centre(h)
            rs, ra, rl = h.radii_mm
            mask |= ((s - centre_s) / rs) ** 2 + ((a - centre_a) / ra) ** 2 + ((l - centre_l) / rl) ** 2 < 1
        return mask

    def _hernia_centre(self, h: Hernia) -> tuple[float, float, float]:
        i = self.level_names.index(h.level)
        b, t = self.discs[i]
        offset = {"central": 0.0, "paracentral": 8.0, "foraminal": 16.0}[h.direction]
        side = {"right": 1.0, "left": -1.0, "none": 0.0}[h.side]
        # The disc's posterior contour at this lateral offset (same superellipse as in
        # evaluate); the hernia's anterior edge sits inside the annulus, so it touches its disc.
        sp = self.spec
        edge = -sp.body_half_depth * max(1.08 - (offset / sp.body_half_width) ** 2.5, 0.05) ** (1 / 2.5)
        return (b + t) / 2, edge - 0.6 * h.radii_mm[1], side * offset

    def labels_at(self, xyz: np.ndarray) -> np.ndarray:
        return self.evaluate(xyz)[0]

    # --- acquisition ------------------------------------------------------------------------
    def render(self, affine: np.ndarray, shape: tuple[int, int, int], description: str = "") -> Series:
        """The study on a grid: intensities per contrast (bias field, Rician noise) and labels."""
        ijk = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1).reshape(-1, 3)
        xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
        label, look = self.evaluate(xyz)
        rng = np.random.default_rng([self.spec.seed, 1])
        signal = dict(SIGNAL)
        # Degenerated nuclei lose T2 / water signal.
        loss = 1 - 0.6 * self._degeneration
        bias = 1 + self.spec.bias * np.tanh((xyz - xyz.mean(axis=0)) @ rng.normal(size=3) / 150.0)
        channels = []
        for contrast in self.spec.modalities:
            values = signal[contrast][look] * rng.uniform(0.9, 1.1)
            if contrast in ("t2w", "dixon_water", "dixon_in"):
                values = np.where(look == NUCLEUS, values * loss, values)
            values = values * bias
            sigma = self.spec.noise
            noisy = np.hypot(values + rng.normal(0, sigma, values.shape), rng.normal(0, sigma, values.shape))
            channels.append((noisy * 1000).astype(np.float32).reshape(shape))
        return Series(np.stack(channels), np.asarray(affine, np.float64), tuple(self.spec.modalities), description,
                      label.reshape(shape), meta={"phantom_seed": self.spec.seed})

    def volume_affine(self) -> np.ndarray:
        """The 3D volume's grid: the spec's shape and spacing centred on the spine, stored in
        the spec's orientation."""
        sp = self.spec
        ras = np.diag([*sp.spacing, 1.0])
        centre = np.asarray(sp.origin) + np.array([0.0, -15.0, self.length / 2 - 25])
        ras[:3, 3] = centre - ras[:3, :3] @ ((np.asarray(sp.shape) - 1) / 2)
        return _reorient_affine(ras, sp.shape, sp.axcodes)

    def stored_shape(self) -> tuple[int, int, int]:
        import nibabel as nib

        ornt = nib.orientations.axcodes2ornt(self.spec.axcodes)
        return tuple(self.spec.shape[int(axis)] for axis in ornt[:, 0])  # type: ignore[return-value]

    # --- truth ------------------------------------------------------------------------------
    def truth(self) -> dict:
        """Ground truth per disc level (JSON-serialisable)."""
        sp = self.spec
        discs = []
        hernias = {h.level: h for h in sp.hernias}
        for i, name in enumerate(self.level_names):
            if not name:
                continue
            b, t = self.discs[i]
            c, tangent, ant, right = (v[0] for v in self.frame(np.array([(b + t) / 2])))
            entry = {"level": name, "label_value": V[name], "center_mm": c.round(2).tolist(),
                     "normal": tangent.round(4).tolist(), "height_mm": round(t - b, 2),
                     "degeneration": sp.degeneration[i], "hernia": {"present": False}}
            if name in hernias:
                h = hernias[name]
                cs, ca, cl = self._hernia_centre(h)
                cc, _, a_dir, r_dir = (v[0] for v in self.frame(np.array([cs])))
                top = cc + (ca - h.radii_mm[1]) * a_dir + cl * r_dir  # the most posterior point
                rs, ra, rl = h.radii_mm
                entry["hernia"] = {"present": True, "direction": h.direction, "side": h.side,
                                   "top_point_mm": top.round(2).tolist(), "height_mm": round(2 * rs, 2),
                                   "volume_mm3": round(4 / 3 * np.pi * rs * ra * rl, 1)}
            area, ap = self._sac_section(c, ant, right)
            entry["stenosis"] = {"grade": stenosis_grade(area), "dural_sac_area_mm2": round(area, 1),
                                 "ap_diameter_mm": round(ap, 2)}
            discs.append(entry)
        return {"seed": sp.seed, "spec": _jsonable(asdict(sp)), "extra_discs": sp.extra_levels, "discs": discs}

    def _sac_section(self, centre: np.ndarray, ant: np.ndarray, right: np.ndarray) -> tuple[float, float]:
        """Dural sac area (mm^2) and AP diameter (mm) in the plane through the disc centre
        perpendicular to the spine, measured on a 0.2 mm grid of the model itself."""
        step = 0.2
        u = np.arange(-45, 0, step)  # posterior of the body centre
        v = np.arange(-20, 20, step)
        uu, vv = np.meshgrid(u, v, indexing="ij")
        points = centre + uu.reshape(-1, 1) * ant + vv.reshape(-1, 1) * right
        sac = (self.labels_at(points) == V["dural_sac"]).reshape(uu.shape)
        ap = float(sac.any(axis=1).sum() * step)
        return float(sac.sum() * step * step), ap


def _nearest(sorted_centres: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Index of the nearest of ``sorted_centres`` for each of ``x``."""
    right = np.clip(np.searchsorted(sorted_centres, x), 1, len(sorted_centres) - 1)
    left = right - 1
    return np.where(np.abs(x - sorted_centres[left]) <= np.abs(sorted_centres[right] - x), left, right)


def _reorient_affine(ras: np.ndarray, ras_shape: tuple[int, int, int], axcodes: str) -> np.ndarray:
    """Affine of the same grid stored with axes ``axcodes`` instead of RAS."""
    import nibabel as nib

    to_target = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt(axcodes))
    return ras @ nib.orientations.inv_ornt_aff(to_target, ras_shape)


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def generate(seed: int, **overrides) -> Study:
    """One 3D phantom study (a single volume series with its label map)."""
    phantom = Phantom(PhantomSpec.sample(seed, **overrides))
    series = phantom.render(phantom.volume_affine(), phantom.stored_shape(), "volume")
    series.meta["truth"] = phantom.truth()
    present = sorted(int(v) for v in np.unique(series.label) if v)
    return Study([series], {v: tissues.STUDY_LABELS[v] for v in present}, subject=f"phantom_{seed}", set="phantom")


def clinical_study(seed: int, **overrides) -> Study:
    """The clinical layout of the same phantom: a sparse sagittal stack (4 mm slices) and one
    axial stack per labelled disc, tilted parallel to that disc."""
    phantom = Phantom(PhantomSpec.sample(seed, **overrides))
    rng = np.random.default_rng([seed, 2])
    centre = np.asarray(phantom.spec.origin) + np.array([0.0, -15.0, phantom.length / 2 - 20])
    # Sagittal: slices along x (left to right), rows along -z (head at the top), columns along -y.
    n_sag, thickness, pixel = int(rng.integers(11, 16)), float(rng.uniform(3.5, 4.5)), float(rng.uniform(0.7, 0.9))
    size = int(280 / pixel)
    cols = np.array([0.0, -pixel, 0.0])  # i: anterior -> posterior
    rows = np.array([0.0, 0.0, -pixel])  # j: superior -> inferior
    normal = np.array([thickness, 0.0, 0.0])
    affine = np.eye(4)
    affine[:3, :3] = np.stack([cols, rows, normal], axis=1)
    affine[:3, 3] = centre - affine[:3, :3] @ np.array([(size - 1) / 2, (size - 1) / 2, (n_sag - 1) / 2])
    series = [phantom.render(affine, (size, size, n_sag), "sag")]
    for i, name in enumerate(phantom.level_names):
        if not name:
            continue
        b, t = phantom.discs[i]
        c, tangent, ant, right = (v[0] for v in phantom.frame(np.array([(b + t) / 2])))
        n_ax, ax_thick, ax_pixel = int(rng.integers(3, 6)), 4.0, float(rng.uniform(0.7, 0.9))
        ax_size = int(180 / ax_pixel)
        # Axial: i towards the patient's left (-right), j posterior (-anterior), k superior.
        a = np.eye(4)
        a[:3, :3] = np.stack([-right * ax_pixel, -ant * ax_pixel, tangent * ax_thick], axis=1)
        a[:3, 3] = c - a[:3, :3] @ np.array([(ax_size - 1) / 2, (ax_size - 1) / 2 - 15 / ax_pixel, (n_ax - 1) / 2])
        series.append(phantom.render(a, (ax_size, ax_size, n_ax), f"ax_{name}"))
    present = sorted({int(v) for s in series for v in np.unique(s.label) if v})
    study = Study(series, {v: tissues.STUDY_LABELS[v] for v in present}, subject=f"phantom_{seed}", set="phantom")
    series[0].meta["truth"] = phantom.truth()
    return study


def write_phantoms(out: str | Path, count: int, seed: int, **overrides) -> Path:
    """Write ``count`` studies (image, label, truth JSON) and a ``manifest.csv`` in ``out``."""
    from lumbarseg.io.manifest import ManifestEntry, write_manifest
    from lumbarseg.io.nifti import save_series

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(count):
        study = generate(study_seed(seed, i), **overrides)
        series = study.primary
        image, label = out / f"{study.subject}_image.nii.gz", out / f"{study.subject}_label.nii.gz"
        save_series(series, image, label)
        (out / f"{study.subject}_truth.json").write_text(json.dumps(series.meta["truth"], indent=1))
        entries.append(ManifestEntry(study.set, study.subject, image, label, series.modalities, study.structures))
    return write_manifest(out, entries)
