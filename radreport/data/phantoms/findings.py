"""Abnormalities and devices: which ones a study has, and how each is drawn with its exact mask.

Findings are sampled as clinical scenarios (heart failure, pneumonia, ICU patient, trauma,
oncology follow-up, ...) so that they co-occur as on real worklists, then rendered onto the
attenuation map of the normal anatomy. Every renderer returns the :class:`Finding` with the
pixel mask of exactly what it changed, which is what makes grounding measurable.

Lobes on a frontal film are approximated by height within each lung (upper lobe at the top,
middle lobe or lingula in the middle, lower lobe at the base); good enough for phantoms, and
stated here so nobody mistakes it for anatomy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from radreport.data.phantoms.anatomy import Anatomy, AnatomyRender, lung_outline, rib_paths
from radreport.data.phantoms.canvas import Layer, Points, disk_mask, polygon_mask, soften
from radreport.data.phantoms.study import Finding, Side, mask_box

SIDES: tuple[str, str] = ("right", "left")

# Scenario prevalence (fractions of studies) and, per scenario, finding kinds with their
# probability. Roughly the mix of an inpatient chest X-ray worklist.
SCENARIOS: dict[str, tuple[float, dict[str, float]]] = {
    "normal": (0.28, {}),
    "heart_failure": (0.11, {"cardiomegaly": 0.9, "edema": 0.85, "effusion_bilateral": 0.55,
                             "enlarged_cardiomediastinum": 0.15}),
    "pneumonia": (0.12, {"consolidation": 1.0, "effusion_parapneumonic": 0.25,
                         "atelectasis": 0.15}),
    "icu": (0.10, {"ett": 0.9, "central_line": 0.85, "atelectasis": 0.5,
                   "effusion_bilateral": 0.3, "edema": 0.25}),
    "trauma": (0.07, {"rib_fracture": 0.95, "pneumothorax_trauma": 0.5}),
    "oncology": (0.10, {"lesion": 1.0, "effusion_unilateral": 0.25}),
    "pacemaker": (0.06, {"pacemaker": 1.0, "cardiomegaly": 0.55, "effusion_bilateral": 0.15}),
    "pneumothorax": (0.05, {"pneumothorax": 1.0}),
    "effusion": (0.06, {"effusion_unilateral": 1.0, "atelectasis": 0.35}),
    "mediastinal": (0.03, {"enlarged_cardiomediastinum": 1.0}),
    "pleural_other": (0.02, {"pleural_thickening": 1.0}),
}
# A little independent noise on top of scenarios, so no finding is perfectly predicted by
# another.
EXTRA_FINDINGS: dict[str, float] = {"lesion": 0.03, "atelectasis": 0.04, "rib_fracture": 0.02,
                                    "central_line": 0.02, "cardiomegaly": 0.03}


@dataclass(frozen=True)
class Plan:
    """What a study will show, decided before any drawing (anatomy depends on some of it)."""

    scenario: str
    kinds: tuple[str, ...]
    heart_ratio: float | None
    mediastinum_scale: float


def plan_findings(rng: np.random.Generator) -> Plan:
    names = list(SCENARIOS)
    weights = np.array([SCENARIOS[n][0] for n in names])
    scenario = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    kinds = [k for k, p in SCENARIOS[scenario][1].items() if rng.random() < p]
    if scenario != "normal":
        kinds += [k for k, p in EXTRA_FINDINGS.items() if rng.random() < p and k not in kinds]
    if scenario != "normal" and not kinds:  # every abnormal scenario shows its lead finding
        kinds = [next(iter(SCENARIOS[scenario][1]))]
    heart_ratio = rng.uniform(0.55, 0.68) if "cardiomegaly" in kinds else None
    mediastinum_scale = rng.uniform(1.6, 2.1) if "enlarged_cardiomediastinum" in kinds else 1.0
    return Plan(scenario, tuple(kinds), heart_ratio, mediastinum_scale)


class FindingCanvas:
    """The study being drawn: anatomy, its attenuation map, and helpers shared by renderers."""

    def __init__(self, rng: np.random.Generator, anatomy: Anatomy, render: AnatomyRender,
                 pixel_spacing_mm: float) -> None:
        self.rng = rng
        self.a = anatomy
        self.r = render
        self.size = anatomy.frame.size
        self.pixel_spacing_mm = pixel_spacing_mm
        self.attenuation = render.attenuation
        self.findings: list[Finding] = []
        self.effusion_sides: set[str] = set()
        self.pneumothorax_sides: set[str] = set()

    # geometry helpers
    def cm(self, centimetres: float) -> float:
        """A length in normalised units."""
        return centimetres * 10.0 / (self.pixel_spacing_mm * self.size)

    def lung(self, side: str) -> np.ndarray:
        return self.r.masks[f"lung_{side}"]

    def height_fraction(self, side: str) -> np.ndarray:
        """0 at the lung apex, 1 at the costophrenic angle, per pixel."""
        lift = self.a.right_dome_lift if side == "right" else 0.0
        return (self.r.v - self.a.apex_v) / (self.a.costophrenic_v - lift - self.a.apex_v)

    def add(self, delta: np.ndarray) -> None:
        self.attenuation += delta.astype(np.float32)

    def record(self, kind: str, labels: tuple[str, ...], mask: np.ndarray, *,
               side: str | None = None, location: str | None = None,
               severity: str | None = None, size_cm: float | None = None,
               **attributes: str | float | int) -> Finding | None:
        box = mask_box(mask)
        if box is None:  # drawn entirely off the film: nothing to report
            return None
        finding = Finding(kind=kind, labels=labels, side=_side(side), location=location,
                          severity=severity, size_cm=size_cm, mask=mask, box=box,
                          attributes=dict(attributes))
        self.findings.append(finding)
        return finding


def _side(side: str | None) -> Side | None:
    if side in ("left", "right", "bilateral"):
        return side  # type: ignore[return-value]
    return None


# --- lobes and zones -----------------------------------------------------------------------

LOBES: dict[str, tuple[tuple[str, float, float], ...]] = {
    "right": (("right upper lobe", 0.0, 0.40), ("right middle lobe", 0.40, 0.68),
              ("right lower lobe", 0.68, 1.1)),
    "left": (("left upper lobe", 0.0, 0.45), ("lingula", 0.45, 0.70),
             ("left lower lobe", 0.70, 1.1)),
}
ZONES: tuple[tuple[str, float, float], ...] = (("upper", 0.0, 0.34), ("mid", 0.34, 0.67),
                                               ("lower", 0.67, 1.1))


def lobe_mask(c: FindingCanvas, side: str, lobe: str) -> np.ndarray:
    t = c.height_fraction(side)
    for name, lo, hi in LOBES[side]:
        if name == lobe:
            return c.lung(side) & (t >= lo) & (t < hi)
    raise ValueError(f"unknown lobe {lobe!r} for side {side!r}")


def zone_of(c: FindingCanvas, side: str, v_fraction: float) -> str:
    """Radiographic zone (upper/mid/lower thirds of the lung height), e.g. 'left mid zone'."""
    for name, lo, hi in ZONES:
        if lo <= v_fraction < hi:
            return f"{side} {name} zone"
    return f"{side} lower zone"


def _pick_point(c: FindingCanvas, region: np.ndarray, radius_px: float,
                tries: int = 25) -> tuple[float, float] | None:
    """A pixel of ``region`` whose disk of ``radius_px`` lies (almost) inside the lungs."""
    ys, xs = np.nonzero(region)
    if ys.size == 0:
        return None
    lungs = c.r.masks["lungs"]
    for _ in range(tries):
        i = int(c.rng.integers(ys.size))
        x, y = float(xs[i]), float(ys[i])
        disk = disk_mask(c.size, x, y, radius_px)
        if (disk & ~lungs).sum() <= 0.15 * disk.sum():
            return x, y
    return None


def _blob(c: FindingCanvas, x: float, y: float, radius_px: float, lobes: int) -> np.ndarray:
    """Soft lobulated opacity (0..1) around a point."""
    layer = Layer(c.size)
    layer.ellipse(x, y, radius_px, radius_px * c.rng.uniform(0.85, 1.1))
    for _ in range(lobes):
        ang = c.rng.uniform(0, 2 * math.pi)
        off = radius_px * c.rng.uniform(0.3, 0.6)
        layer.ellipse(x + off * math.cos(ang), y + off * math.sin(ang),
                      radius_px * c.rng.uniform(0.45, 0.7), radius_px * c.rng.uniform(0.45, 0.7))
    return soften(layer.array(), max(1.0, radius_px * 0.12))


# --- renderers -----------------------------------------------------------------------------

def render_cardiomegaly(c: FindingCanvas) -> None:
    ratio = c.a.heart_ratio
    severity = "mild" if ratio < 0.58 else "moderate" if ratio < 0.63 else "severe"
    c.record("cardiomegaly", ("Cardiomegaly",), c.r.masks["heart"].copy(), severity=severity,
             cardiothoracic_ratio=round(ratio, 2))


def render_enlarged_cardiomediastinum(c: FindingCanvas) -> None:
    upper = c.r.masks["mediastinum"] & (c.r.v < c.a.carina_v + 0.06) & (c.r.v > c.a.apex_v - 0.04)
    c.add(0.05 * soften(upper.astype(np.float32), c.size * 0.004))
    c.record("enlarged_cardiomediastinum", ("Enlarged Cardiomediastinum",), upper,
             location="superior mediastinum")


def render_effusion(c: FindingCanvas, side: str, severity: str | None = None) -> None:
    severity = severity or str(c.rng.choice(["small", "moderate", "large"], p=[0.5, 0.35, 0.15]))
    level = {"small": c.rng.uniform(0.80, 0.86), "moderate": c.rng.uniform(0.62, 0.72),
             "large": c.rng.uniform(0.38, 0.50)}[severity]
    s = c.a.side_sign(side)
    lateral = np.clip(s * (c.r.u - c.a.cx) / c.a.half_width, 0.0, 1.0)
    t = c.height_fraction(side)
    meniscus = level - 0.14 * lateral**2  # fluid climbs the lateral chest wall
    fluid = c.lung(side) & (t > meniscus)
    depth = np.clip((t - meniscus) / 0.12, 0.0, 1.0)
    c.add(0.34 * soften((fluid * (0.5 + 0.5 * depth)).astype(np.float32), c.size * 0.006))
    c.effusion_sides.add(side)
    c.record("pleural_effusion", ("Pleural Effusion",), fluid, side=side, severity=severity,
             location=f"{side} pleural space")


def render_pneumothorax(c: FindingCanvas, side: str) -> None:
    severity = str(c.rng.choice(["small", "moderate", "large"], p=[0.5, 0.3, 0.2]))
    keep = {"small": c.rng.uniform(0.86, 0.9), "moderate": c.rng.uniform(0.7, 0.78),
            "large": c.rng.uniform(0.5, 0.6)}[severity]
    hu, hv = c.a.hilum(side)
    collapsed: Points = []
    for u, v in lung_outline(c.a, side):
        cu = hu + (u - hu) * keep
        cv = hv + (v - hv) * keep if v < hv else v - (v - hv) * (1 - keep) * 0.3
        collapsed.append((cu, cv))
    lung_px = c.a.frame.to_px(collapsed)
    inner = polygon_mask(c.size, lung_px)
    air = c.lung(side) & ~inner
    if air.sum() == 0:
        return
    c.attenuation -= c.r.vessels[side] * air  # no lung markings beyond the pleural line
    c.add(-0.07 * soften(air.astype(np.float32), c.size * 0.003))
    collapsed_lung = c.lung(side) & inner  # the deflated lung is denser
    c.add(0.05 * (1.0 - keep) / 0.5 * soften(collapsed_lung.astype(np.float32), c.size * 0.006))
    pleural_line = Layer(c.size)
    pleural_line.line(lung_px, max(1.0, c.size * 0.003), caps=False)
    c.add(0.08 * pleural_line.array() * c.lung(side))
    c.pneumothorax_sides.add(side)
    c.record("pneumothorax", ("Pneumothorax",), air, side=side, severity=severity,
             location=f"{side} apex" if severity == "small" else f"{side} hemithorax")


def render_consolidation(c: FindingCanvas, pneumonia: bool) -> None:
    side = str(c.rng.choice(SIDES, p=[0.55, 0.45]))
    lobe = str(c.rng.choice([n for n, _, _ in LOBES[side]], p=[0.3, 0.25, 0.45]))
    severity = str(c.rng.choice(["patchy", "dense"]))
    radius = c.size * c.rng.uniform(0.05, 0.09)
    region = lobe_mask(c, side, lobe)
    point = _pick_point(c, region & _eroded(c, region), c.size * 0.03)
    if point is None:
        return
    opacity = _blob(c, point[0], point[1], radius, lobes=4) * region
    mask = opacity > 0.35
    bronchi = Layer(c.size)
    for _ in range(3):
        ang = c.rng.uniform(0, 2 * math.pi)
        bronchi.line([point, (point[0] + radius * 0.8 * math.cos(ang),
                              point[1] + radius * 0.8 * math.sin(ang))],
                     max(1.0, c.size * 0.004), caps=False)
    c.add(0.24 * opacity - 0.07 * bronchi.array() * mask)
    labels = ("Pneumonia", "Consolidation", "Lung Opacity") if pneumonia else (
        "Consolidation", "Lung Opacity")
    c.record("consolidation", labels, mask, side=side, location=lobe, severity=severity)


def _eroded(c: FindingCanvas, region: np.ndarray) -> np.ndarray:
    """Shrink a region by a few percent of the film so blobs start well inside it."""
    return soften(region.astype(np.float32), c.size * 0.015) > 0.8


def render_atelectasis(c: FindingCanvas) -> None:
    bilateral = c.rng.random() < 0.3
    sides = list(SIDES) if bilateral else [str(c.rng.choice(SIDES))]
    mask = np.zeros((c.size, c.size), dtype=bool)
    layer = Layer(c.size)
    for side in sides:
        s = c.a.side_sign(side)
        hu, _ = c.a.hilum(side)
        v0 = c.a.dome_v - c.rng.uniform(0.03, 0.07)
        u0 = hu + s * c.rng.uniform(0.04, 0.08)
        length = c.rng.uniform(0.09, 0.15)
        tilt = c.rng.uniform(-0.03, 0.03)
        pts = c.a.frame.to_px([(u0, v0), (u0 + s * length, v0 + tilt)])
        band = Layer(c.size)
        band.line(pts, c.size * 0.016)
        mask |= band.mask() & c.lung(side)
        layer.line(pts, c.size * 0.011)
    c.add(0.16 * soften(layer.array(), c.size * 0.004) * c.r.masks["lungs"])
    severity = str(c.rng.choice(["minimal", "mild", "subsegmental"]))
    side_word = "bilateral" if bilateral else sides[0]
    location = "both lung bases" if bilateral else f"{sides[0]} lung base"
    c.record("atelectasis", ("Atelectasis", "Lung Opacity"), mask, side=side_word,
             location=location, severity=severity)


def render_edema(c: FindingCanvas) -> None:
    severity = str(c.rng.choice(["mild", "moderate", "severe"], p=[0.45, 0.35, 0.2]))
    amplitude = {"mild": 0.07, "moderate": 0.12, "severe": 0.2}[severity]
    haze = np.zeros((c.size, c.size), dtype=np.float32)
    for side in SIDES:
        hu, hv = c.a.hilum(side)
        d2 = ((c.r.u - hu) / 0.16) ** 2 + ((c.r.v - hv) / 0.2) ** 2
        haze += np.exp(-d2).astype(np.float32)
    haze *= c.r.masks["lungs"]
    if severity != "mild":  # Kerley B lines at the lateral bases
        lines = Layer(c.size)
        for side in SIDES:
            s = c.a.side_sign(side)
            for k in range(5):
                v = c.a.dome_v - 0.02 - 0.018 * k
                u = c.a.cx + s * c.a.half_width * 0.93
                lines.line(c.a.frame.to_px([(u, v), (u - s * 0.035, v)]), 1.0, caps=False)
        haze += 0.6 * lines.array() * c.r.masks["lungs"]
    c.add(amplitude * haze)
    mask = (haze > 0.35) & c.r.masks["lungs"]
    c.record("edema", ("Edema", "Lung Opacity"), mask, side="bilateral",
             location="perihilar", severity=severity)


def render_lesion(c: FindingCanvas) -> None:
    is_mass = c.rng.random() < 0.3
    size_cm = round(float(c.rng.uniform(3.2, 6.0) if is_mass else c.rng.uniform(0.8, 2.8)), 1)
    side = str(c.rng.choice(SIDES))
    lobe = str(c.rng.choice([n for n, _, _ in LOBES[side]], p=[0.5, 0.2, 0.3]))
    radius_px = c.cm(size_cm) * c.size / 2.0
    point = _pick_point(c, lobe_mask(c, side, lobe), radius_px)
    if point is None:
        return
    opacity = _blob(c, point[0], point[1], radius_px, lobes=3 if is_mass else 0)
    c.add((0.22 if is_mass else 0.16) * opacity)
    mask = opacity > 0.5
    kind = "mass" if is_mass else "nodule"
    x, y = int(point[0]), int(point[1])
    zone = zone_of(c, side, float(c.height_fraction(side)[y, x]))
    c.record(kind, ("Lung Lesion", "Lung Opacity"), mask, side=side, location=lobe,
             size_cm=size_cm, severity="large" if is_mass else "small", zone=zone)


def render_rib_fracture(c: FindingCanvas, side: str) -> None:
    k = int(c.rng.integers(3, 9))
    posterior, _ = rib_paths(c.a, side)[k]
    i = int(c.rng.integers(9, 15))
    (x0, y0), (x1, y1) = c.a.frame.to_px([posterior[i], posterior[i + 1]])
    dx, dy = x1 - x0, y1 - y0
    norm = math.hypot(dx, dy) or 1.0
    nx, ny = -dy / norm, dx / norm
    half = c.size * 0.02
    gap = Layer(c.size)
    gap.line([(x0 - nx * half, y0 - ny * half), (x0 + nx * half, y0 + ny * half)],
             max(1.0, c.size * 0.004), caps=False)
    c.add(-0.12 * gap.array())
    displaced = bool(c.rng.random() < 0.4)
    if displaced:
        step = Layer(c.size)
        step.line([(x0, y0), (x0 + dx * 1.5, y0 + dy * 1.5 + c.size * 0.006)],
                  c.size * 0.012, caps=False)
        c.add(0.06 * step.array())
    mask = disk_mask(c.size, x0, y0, c.size * 0.03)
    ordinal = _ordinal(k + 1)
    c.record("rib_fracture", ("Fracture",), mask, side=side, location=f"{side} {ordinal} rib",
             severity="displaced" if displaced else "nondisplaced", rib=k + 1)


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 < 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _device_line(c: FindingCanvas, points: Points, width: float, value: float,
                 mask_width: float) -> np.ndarray:
    px = c.a.frame.to_px(points)
    layer = Layer(c.size)
    layer.line(px, max(1.0, c.size * width), caps=False)
    c.add(value * layer.array())
    wide = Layer(c.size)
    wide.line(px, c.size * mask_width)
    return wide.mask()


def render_ett(c: FindingCanvas) -> None:
    tip_cm = round(float(c.rng.uniform(2.5, 6.5)), 1)
    tip_v = c.a.carina_v - c.cm(tip_cm)
    path = [(c.a.cx + 0.004, -0.05), (c.a.cx + 0.003, tip_v)]
    _device_line(c, path, 0.012, 0.05, 0.0)
    mask = _device_line(c, path, 0.003, 0.18, 0.03)
    c.record("ett", ("Support Devices",), mask, location="trachea",
             severity="appropriate" if tip_cm >= 3.0 else "low", tip_cm_above_carina=tip_cm)


def render_central_line(c: FindingCanvas) -> None:
    side = str(c.rng.choice(SIDES, p=[0.7, 0.3]))
    s = c.a.side_sign(side)
    jugular = bool(c.rng.random() < 0.6)
    start = (c.a.cx + s * 0.06, -0.05) if jugular else (c.a.cx + s * c.a.half_width, c.a.apex_v)
    tip = (c.a.cx - 0.03, c.a.carina_v + c.rng.uniform(0.02, 0.09))
    mid = (c.a.cx + s * 0.045, c.a.apex_v + 0.03)
    path = [start, mid, (c.a.cx - 0.035, c.a.carina_v - 0.04), tip]
    mask = _device_line(c, path, 0.0035, 0.16, 0.025)
    access = "internal jugular" if jugular else "subclavian"
    c.record("central_line", ("Support Devices",), mask, side=side,
             location="superior vena cava", access=access)


def render_pacemaker(c: FindingCanvas) -> None:
    gu, gv = c.a.cx + c.a.half_width * 0.62, c.a.apex_v + 0.05
    layer = Layer(c.size)
    box = c.a.frame.to_px([(gu - 0.04, gv - 0.025), (gu + 0.04, gv - 0.025),
                           (gu + 0.04, gv + 0.025), (gu - 0.04, gv + 0.025)])
    layer.polygon(box)
    c.add(0.5 * layer.array())
    mask = layer.mask()
    heart_v = c.a.dome_v - 0.35 * c.a.heart_height
    leads = [[(gu, gv), (c.a.cx + 0.03, c.a.apex_v + 0.06), (c.a.cx - 0.02, c.a.carina_v + 0.05),
              (c.a.cx + 0.02, heart_v + 0.02 * k)] for k in range(2)]
    for lead in leads:
        mask |= _device_line(c, lead, 0.003, 0.17, 0.025)
    c.record("pacemaker", ("Support Devices",), mask, side="left",
             location="left chest wall", leads=2)


def render_pleural_thickening(c: FindingCanvas) -> None:
    side = str(c.rng.choice(SIDES))
    s = c.a.side_sign(side)
    pts = [(c.a.cx + s * c.a.half_width * 0.99, c.a.apex_v + 0.02 + 0.35 * t)
           for t in np.linspace(0.0, 1.0, 8)]
    px = c.a.frame.to_px(pts)
    layer = Layer(c.size)
    layer.line(px, c.size * 0.02, caps=False)
    mask = layer.mask() & c.lung(side)
    c.add(0.13 * soften(layer.array(), c.size * 0.004) * c.lung(side))
    c.record("pleural_thickening", ("Pleural Other",), mask, side=side,
             location=f"{side} lateral pleura")


def render_plan(c: FindingCanvas, plan: Plan) -> list[Finding]:
    """Draw every planned finding in radiographic order: organs, parenchyma, pleura, bone,
    then devices on top."""
    rng = c.rng
    kinds = set(plan.kinds)
    steps: list[Callable[[], None]] = []
    if "cardiomegaly" in kinds:
        steps.append(lambda: render_cardiomegaly(c))
    if "enlarged_cardiomediastinum" in kinds:
        steps.append(lambda: render_enlarged_cardiomediastinum(c))
    if "consolidation" in kinds:
        steps.append(lambda: render_consolidation(c, pneumonia=rng.random() < 0.7))
    if "lesion" in kinds:
        steps.append(lambda: render_lesion(c))
    if "edema" in kinds:
        steps.append(lambda: render_edema(c))
    if "atelectasis" in kinds:
        steps.append(lambda: render_atelectasis(c))
    steps += _pleural_steps(c, kinds)
    if "pleural_thickening" in kinds:
        steps.append(lambda: render_pleural_thickening(c))
    if "rib_fracture" in kinds:
        side = str(rng.choice(SIDES))
        steps.append(lambda: render_rib_fracture(c, side))
        if "pneumothorax_trauma" in kinds:
            steps.append(lambda: render_pneumothorax(c, side))
    for kind, renderer in (("ett", render_ett), ("central_line", render_central_line),
                           ("pacemaker", render_pacemaker)):
        if kind in kinds:
            steps.append(lambda r=renderer: r(c))  # type: ignore[misc]
    base = c.rng
    for n, step in enumerate(steps):
        # One stream per finding, so what one draws (which can depend on the image size)
        # never shifts the next: the same seed gives the same findings at every size.
        c.rng = np.random.default_rng([int(base.integers(2**31)), n])
        step()
    c.rng = base
    return c.findings


def _pleural_steps(c: FindingCanvas, kinds: set[str]) -> list[Callable[[], None]]:
    rng = c.rng
    steps: list[Callable[[], None]] = []
    effusion_sides: list[str] = []
    if "effusion_bilateral" in kinds:
        effusion_sides = list(SIDES)
    elif kinds & {"effusion_unilateral", "effusion_parapneumonic"}:
        effusion_sides = [str(rng.choice(SIDES))]
    severity = str(rng.choice(["small", "moderate"], p=[0.65, 0.35])) if (
        "effusion_bilateral" in kinds or "effusion_parapneumonic" in kinds) else None
    for side in effusion_sides:
        steps.append(lambda s=side: render_effusion(c, s, severity))  # type: ignore[misc]
    if "pneumothorax" in kinds:
        free = [s for s in SIDES if s not in effusion_sides] or list(SIDES)
        side = str(rng.choice(free))
        steps.append(lambda: render_pneumothorax(c, side))
    return steps
