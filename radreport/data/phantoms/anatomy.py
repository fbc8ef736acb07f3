"""Normal frontal chest anatomy: geometry sampled per patient, rendered as attenuation.

The picture is built the way a radiograph forms: each structure adds (bone, heart, soft
tissue) or removes (air in lungs and trachea) attenuation along the beam, and the detector
turns total attenuation into brightness. Findings later edit the same attenuation map, so a
pleural effusion hides the diaphragm and a pneumothorax loses its vessels, as on real films.

Image left is the patient's right (standard frontal display).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from radreport.data.phantoms.canvas import (
    Frame,
    Layer,
    Points,
    polygon_mask,
    smooth_noise,
    soften,
)


@dataclass
class Anatomy:
    """Sampled geometry of one patient, in normalised chest coordinates (see canvas.Frame)."""

    cx: float  # midline
    half_width: float  # rib cage inner half-width
    body_half_width: float
    apex_v: float  # lung apices
    dome_v: float  # top of the hemidiaphragm domes
    costophrenic_v: float  # lateral costophrenic angles
    right_dome_lift: float  # the right dome sits higher (liver)
    mediastinum_half: float
    heart_ratio: float  # cardiothoracic ratio
    heart_height: float
    heart_tilt_deg: float
    carina_v: float
    rib_spacing: float
    female: bool
    frame: Frame
    extras: dict[str, float] = field(default_factory=dict)

    @property
    def heart_width(self) -> float:
        return self.heart_ratio * 2.0 * self.half_width

    def hilum(self, side: str) -> tuple[float, float]:
        """Hilar point of a lung ('right' is image left)."""
        sign = -1.0 if side == "right" else 1.0
        return (self.cx + sign * (self.mediastinum_half + 0.05), self.carina_v + 0.07)

    def side_sign(self, side: str) -> float:
        return -1.0 if side == "right" else 1.0


def sample_anatomy(rng: np.random.Generator, size: int, *, heart_ratio: float | None = None,
                   mediastinum_scale: float = 1.0) -> Anatomy:
    """Draw one patient's habitus, positioning and inspiration."""
    inspiration = rng.uniform(0.88, 1.08)
    half_width = rng.uniform(0.33, 0.40)
    apex_v = rng.uniform(0.10, 0.15)
    dome_v = apex_v + 0.50 * inspiration + rng.uniform(-0.02, 0.02)
    frame = Frame(
        size=size,
        shift_u=rng.uniform(-0.025, 0.025),
        shift_v=rng.uniform(-0.02, 0.03),
        rotation_deg=rng.uniform(-3.5, 3.5),
    )
    return Anatomy(
        cx=0.5,
        half_width=half_width,
        body_half_width=half_width + rng.uniform(0.05, 0.10),
        apex_v=apex_v,
        dome_v=dome_v,
        costophrenic_v=dome_v + rng.uniform(0.08, 0.11),
        right_dome_lift=rng.uniform(0.01, 0.035),
        mediastinum_half=rng.uniform(0.045, 0.06) * mediastinum_scale,
        heart_ratio=heart_ratio if heart_ratio is not None else rng.uniform(0.38, 0.48),
        heart_height=rng.uniform(0.20, 0.24),
        heart_tilt_deg=rng.uniform(12.0, 25.0),
        carina_v=apex_v + rng.uniform(0.17, 0.21),
        rib_spacing=(dome_v - apex_v) / rng.uniform(8.6, 9.6),
        female=bool(rng.random() < 0.5),
        frame=frame,
    )


# --- geometry -----------------------------------------------------------------------------

def lung_outline(a: Anatomy, side: str, n: int = 48) -> Points:
    """Apex, lateral wall, costophrenic angle and diaphragm dome of one lung (before the
    heart and mediastinum are cut out of it)."""
    s = a.side_sign(side)
    lift = a.right_dome_lift if side == "right" else 0.0
    dome_v, cp_v = a.dome_v - lift, a.costophrenic_v - lift
    medial = a.mediastinum_half * 0.6
    pts: Points = []
    for i in range(n + 1):  # lateral wall, apex to costophrenic angle
        t = i / n
        reach = 0.25 + 0.75 * math.sin(0.5 * math.pi * min(1.0, t / 0.7)) ** 0.7
        pts.append((a.cx + s * a.half_width * reach, a.apex_v + t * (cp_v - a.apex_v)))
    for i in range(1, n + 1):  # dome, lateral to medial
        t = i / n
        u = a.cx + s * (a.half_width - t * (a.half_width - medial))
        v = cp_v - (cp_v - dome_v) * math.sin(math.pi * min(1.0, t * 0.9 + 0.1) ** 0.9)
        v = min(v + 0.04 * t**3, cp_v)
        pts.append((u, v))
    pts.append((a.cx + s * medial, a.apex_v + 0.06))
    pts.append((a.cx + s * a.half_width * 0.3, a.apex_v - 0.005))
    return pts


def heart_outline(a: Anatomy, n: int = 64) -> Points:
    """A tilted ellipse with its greater part to the patient's left, base on the diaphragm."""
    width = a.heart_width
    centre_u = a.cx + 0.16 * width
    centre_v = a.dome_v - 0.36 * a.heart_height
    tilt = math.radians(a.heart_tilt_deg)
    rx, ry = width / 2.0, a.heart_height / 2.0
    pts: Points = []
    for i in range(n):
        t = 2 * math.pi * i / n
        x, y = rx * math.cos(t), ry * math.sin(t)
        x *= 1.0 + 0.08 * math.cos(t)  # fuller left ventricle
        pts.append((centre_u + x * math.cos(tilt) - y * math.sin(tilt) * 0.4,
                    centre_v + x * math.sin(tilt) * 0.35 + y))
    return pts


def mediastinum_outline(a: Anatomy, n: int = 24) -> Points:
    """Superior mediastinum with the aortic knob on the patient's left."""
    top, bottom = 0.0, a.dome_v - 0.05
    knob_v = a.carina_v - 0.03
    knob = a.extras.get("aortic_knob", 0.03)
    left: Points = []
    right: Points = []
    for i in range(n + 1):
        v = top + (bottom - top) * i / n
        half = a.mediastinum_half * (0.85 + 0.3 * (v - top) / (bottom - top))
        bulge = knob * math.exp(-(((v - knob_v) / 0.04) ** 2))
        right.append((a.cx - half, v))
        left.append((a.cx + half + bulge, v))
    return right + left[::-1]


def rib_paths(a: Anatomy, side: str) -> list[tuple[Points, Points]]:
    """(posterior, anterior) centre lines of ten ribs on one side."""
    s = a.side_sign(side)
    ribs = []
    for k in range(10):
        v0 = a.apex_v - 0.03 + k * a.rib_spacing
        reach = a.half_width * (0.55 + 0.45 * min(1.0, (k + 1) / 4.0)) * 1.04
        posterior = []
        for i in range(17):
            t = i / 16
            posterior.append((a.cx + s * (0.04 + (reach - 0.04) * t),
                              v0 - 0.025 * math.sin(math.pi * t * 0.8) + 0.10 * t**3))
        end_u, end_v = posterior[-1]
        anterior = []
        for i in range(13):
            t = i / 12
            anterior.append((end_u - s * (reach - 0.12) * t * 0.85,
                             end_v + 0.03 + 0.11 * t - 0.03 * t * t))
        ribs.append((posterior, anterior))
    return ribs


def clavicle_path(a: Anatomy, side: str) -> Points:
    s = a.side_sign(side)
    pts = []
    for i in range(13):
        t = i / 12
        u = a.cx + s * (0.035 + t * (a.half_width * 1.1 - 0.035))
        v = a.apex_v - 0.005 - 0.05 * t + 0.012 * math.sin(2 * math.pi * t)
        pts.append((u, v))
    return pts


def body_outline(a: Anatomy, n: int = 40) -> Points:
    """Neck, shoulders and torso silhouette."""
    b = a.body_half_width
    top_v = -0.05
    shoulder_v = a.apex_v - 0.04
    pts: Points = [(a.cx - 0.09, top_v)]
    pts.append((a.cx - 0.10, shoulder_v - 0.05))
    for i in range(n + 1):
        t = i / n
        v = shoulder_v + t * (1.1 - shoulder_v)
        flank = 0.92 + 0.1 * math.sin(math.pi * min(1.0, t * 1.6)) ** 0.5
        u = a.cx - b * flank - 0.06 * (1 - t) ** 8
        pts.append((u, v))
    right = [(2 * a.cx - u, v) for u, v in pts[::-1]]
    return pts + right


def trachea_path(a: Anatomy) -> tuple[Points, Points, Points]:
    """Trachea down to the carina, then the two main bronchi."""
    trachea = [(a.cx + 0.004, -0.02), (a.cx + 0.002, a.carina_v)]
    right = [(a.cx, a.carina_v), (a.cx - 0.05, a.carina_v + 0.045)]
    left = [(a.cx, a.carina_v), (a.cx + 0.06, a.carina_v + 0.06)]
    return trachea, right, left


# --- rendering ----------------------------------------------------------------------------

@dataclass
class AnatomyRender:
    """Attenuation layers and masks of the normal anatomy, before findings and detector."""

    attenuation: np.ndarray
    masks: dict[str, np.ndarray]
    vessels: dict[str, np.ndarray]  # per-lung vascular attenuation (removable by findings)
    u: np.ndarray
    v: np.ndarray


def render_anatomy(rng: np.random.Generator, a: Anatomy) -> AnatomyRender:
    size = a.frame.size
    f = a.frame
    u, v = f.grid()

    body = polygon_mask(size, f.to_px(body_outline(a)))
    heart = polygon_mask(size, f.to_px(heart_outline(a)))
    mediastinum = polygon_mask(size, f.to_px(mediastinum_outline(a))) | heart
    lung_right = polygon_mask(size, f.to_px(lung_outline(a, "right"))) & ~mediastinum
    lung_left = polygon_mask(size, f.to_px(lung_outline(a, "left"))) & ~mediastinum
    lungs = lung_right | lung_left
    thorax = _thorax_mask(a, u, v) & body

    # Soft tissue: thicker centrally (an elliptical cross-section), breasts in women.
    across = np.clip(1.0 - ((u - a.cx) / a.body_half_width) ** 2, 0.0, 1.0)
    tissue = body * (0.35 + 0.65 * np.sqrt(across))
    if a.female:
        for s in (-1.0, 1.0):
            du = (u - (a.cx + s * a.half_width * 0.55)) / 0.17
            d = du**2 + ((v - (a.dome_v + 0.04)) / 0.12) ** 2
            tissue = tissue + 0.18 * np.clip(1 - d, 0, 1) ** 0.5 * body
    below_lungs = np.maximum.accumulate(lungs, axis=0) & ~lungs
    abdomen = body & (below_lungs | ((v > a.dome_v + 0.02) & ~lungs))
    abdomen_soft = soften(abdomen.astype(np.float32), f.px(0.01))

    lung_depth = soften(lungs.astype(np.float32), f.px(0.025))
    texture = 0.025 * smooth_noise(rng, size, f.px(0.02))
    # Organ edges share one blur; bone and vessels are left to the detector's own blur.
    organs = (0.05 * heart + 0.10 * mediastinum - 0.12 * _airway(a)
              + lungs * (texture - 0.36 * lung_depth))
    vessel_tree = Layer(size)
    for side in ("right", "left"):
        _draw_vessels(rng, a, side, vessel_tree)
    vessel_attenuation = vessel_tree.array()
    vessels = {"right": vessel_attenuation * lung_right, "left": vessel_attenuation * lung_left}
    attenuation = (
        0.45 * tissue
        + 0.12 * abdomen_soft
        + soften(organs, f.px(0.004))
        + _bones(a)
        + vessels["right"]
        + vessels["left"]
    ).astype(np.float32)

    masks = {
        "body": body,
        "chest": thorax,
        "lungs": lungs,
        "lung_right": lung_right,
        "lung_left": lung_left,
        "heart": heart,
        "mediastinum": mediastinum & ~heart,
    }
    return AnatomyRender(attenuation, masks, vessels, u, v)


def _thorax_mask(a: Anatomy, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The chest inside the ribs, apices to costophrenic angles: 'the whole chest'."""
    inside_width = np.abs(u - a.cx) <= a.half_width * 1.02
    return inside_width & (v >= a.apex_v - 0.03) & (v <= a.costophrenic_v + 0.01)


def _bones(a: Anatomy) -> np.ndarray:
    f = a.frame
    size = f.size
    layer = Layer(size)
    cortex = Layer(size)
    for side in ("right", "left"):
        for k, (posterior, anterior) in enumerate(rib_paths(a, side)):
            width = f.px(0.020 + 0.002 * min(k, 4) / 4)
            pp, ap = f.to_px(posterior), f.to_px(anterior)
            cortex.line(pp, width, 1.0)
            layer.line(pp, width * 0.6, 1.0)
            if k < 7:
                cortex.line(ap[:9], width * 0.8, 0.4)
        clav = f.to_px(clavicle_path(a, side))
        cortex.line(clav, f.px(0.026), 1.0)
        layer.line(clav, f.px(0.016), 1.0)
    spine = Layer(size)
    top = -0.05
    n_vert = int((1.1 - top) / 0.045) + 1
    for i in range(n_vert):
        v0 = top + i * 0.045
        body_pts = [(a.cx - 0.035, v0), (a.cx + 0.035, v0), (a.cx + 0.037, v0 + 0.037),
                    (a.cx - 0.037, v0 + 0.037)]
        spine.polygon(f.to_px(body_pts), 1.0)
        for s in (-1.0, 1.0):
            (px, py), = f.to_px([(a.cx + s * 0.024, v0 + 0.012)])
            cortex.ellipse(px, py, f.px(0.008), f.px(0.011), 0.5)
    return 0.13 * cortex.array() + 0.04 * layer.array() + 0.08 * spine.array()


def _airway(a: Anatomy) -> np.ndarray:
    f = a.frame
    layer = Layer(f.size)
    trachea, right, left = trachea_path(a)
    layer.line(f.to_px(trachea), f.px(0.032))
    layer.line(f.to_px(right), f.px(0.022))
    layer.line(f.to_px(left), f.px(0.02))
    return layer.array()


def _draw_vessels(rng: np.random.Generator, a: Anatomy, side: str, layer: Layer) -> None:
    """Branching pulmonary vessels fanning out from the hilum, tapering to the periphery."""
    f = a.frame
    hu, hv = a.hilum(side)
    s = a.side_sign(side)
    draws = iter(rng.random(4096).tolist())  # one call, not one per branch: this loop is hot
    stack: list[tuple[float, float, float, float, int]] = []
    for k in range(11):  # trunks fanning from upper to lower lobe
        angle = math.radians(-80 + k * 16 + 12 * next(draws) - 6)
        stack.append((hu, hv, angle, 0.007, 0))
    segments: list[tuple[Points, float, float]] = []
    while stack:
        u0, v0, angle, width, depth = stack.pop()
        length = (0.035 + 0.035 * next(draws)) * (0.85**depth)
        bend = angle + math.radians(30 * next(draws) - 15)
        um = u0 + s * math.cos(angle) * length * 0.5
        vm = v0 + math.sin(angle) * length * 0.5
        u1 = um + s * math.cos(bend) * length * 0.5
        v1 = vm + math.sin(bend) * length * 0.5
        segments.append(([(u0, v0), (um, vm), (u1, v1)], width, 0.07 * min(1.0, width / 0.005)))
        if depth < 4:
            for turn in (-1, 1):
                if next(draws) < 0.9:
                    spread = math.radians(12 + 18 * next(draws))
                    stack.append((u1, v1, bend + turn * spread,
                                  width * (0.62 + 0.16 * next(draws)), depth + 1))
    for points, width, value in segments:
        layer.line(f.to_px(points), max(1.0, f.px(width)), value, caps=False)
