"""Radiologist-style reports whose every sentence knows the image region it speaks of.

FINDINGS follow the order a radiologist dictates (lines and tubes, lungs, pleura, heart and
mediastinum, bones), each positive finding in one of several phrasings, then pertinent
negatives for what is absent. IMPRESSION ranks the positives by urgency. A positive
sentence's region is the union of its findings' masks; a negative or global sentence gets
the anatomy it is about (both lungs, heart, mediastinum or the whole chest), never a lesion.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from radreport.data.labels import NEGATIVE, POSITIVE
from radreport.data.phantoms.study import Finding, Section, Sentence

TOKEN_PATTERN = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    """Words and punctuation marks, the way report lengths are usually counted."""
    return len(TOKEN_PATTERN.findall(text))


@dataclass
class Draft:
    """A sentence before its mask is resolved."""

    text: str
    section: Section
    finding_indices: tuple[int, ...]
    region: str
    mentions: dict[str, int]


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _the(location: str) -> str:
    return location if location.startswith("both ") else f"the {location}"


# --- positive phrasings ------------------------------------------------------------------

def _effusion_text(rng: np.random.Generator, group: list[Finding]) -> str:
    if len(group) == 2:
        sizes = {f.severity for f in group}
        size = group[0].severity if len(sizes) == 1 else "small to moderate"
        return _pick(rng, [f"{_cap(str(size))} bilateral pleural effusions.",
                           f"There are {size} bilateral pleural effusions.",
                           f"Bilateral {size} pleural effusions are present."])
    f = group[0]
    return _pick(rng, [f"{_cap(str(f.severity))} {f.side} pleural effusion.",
                       f"There is a {f.severity} {f.side} pleural effusion.",
                       f"A {f.severity} {f.side} pleural effusion is present, with blunting "
                       f"of the {f.side} costophrenic angle."])


def _positive_text(rng: np.random.Generator, f: Finding) -> str:
    k = f.kind
    if k == "cardiomegaly":
        return _pick(rng, [f"The heart is {f.severity}ly enlarged.",
                           f"There is {f.severity} cardiomegaly.",
                           f"{_cap(str(f.severity))} enlargement of the cardiac silhouette."])
    if k == "enlarged_cardiomediastinum":
        return _pick(rng, ["The mediastinum is widened.",
                           "The cardiomediastinal silhouette is enlarged.",
                           "There is widening of the superior mediastinum."])
    if k == "pneumothorax":
        return _pick(rng, [f"There is a {f.severity} {f.side} pneumothorax.",
                           f"{_cap(str(f.severity))} {f.side} pneumothorax is present.",
                           f"A {f.severity} {f.side} pneumothorax is seen, with a visible "
                           "pleural line."])
    if k == "consolidation":
        if "Pneumonia" in f.labels:
            return _pick(rng, [f"{_cap(str(f.severity))} consolidation in the {f.location}, "
                               "consistent with pneumonia.",
                               f"There is {f.severity} consolidation in the {f.location} "
                               "concerning for pneumonia.",
                               f"Airspace consolidation in the {f.location} compatible with "
                               "pneumonia."])
        return _pick(rng, [f"{_cap(str(f.severity))} consolidation in the {f.location}.",
                           f"There is {f.severity} airspace consolidation in the {f.location}.",
                           f"Focal consolidation is present in the {f.location}."])
    if k in ("nodule", "mass"):
        return _pick(rng, [f"There is a {f.size_cm} cm {k} in the {f.location}.",
                           f"A {f.size_cm} cm {k} is seen in the {f.location}.",
                           f"{_cap(k)} in the {f.location} measuring {f.size_cm} cm."])
    if k == "atelectasis":
        where = _the(str(f.location))
        return _pick(rng, [f"{_cap(str(f.severity))} atelectasis at {where}.",
                           f"There is {f.severity} atelectasis at {where}.",
                           f"Linear opacity at {where} likely reflects atelectasis."])
    if k == "edema":
        return _pick(rng, [f"There is {f.severity} pulmonary edema.",
                           f"{_cap(str(f.severity))} interstitial pulmonary edema.",
                           f"Perihilar opacities consistent with {f.severity} pulmonary edema."])
    if k == "rib_fracture":
        where = str(f.location)
        return _pick(rng, [f"There is a {f.severity} fracture of the {where}.",
                           f"{_cap(str(f.severity))} fracture of the {where}.",
                           f"A {f.severity} {where} fracture is seen."])
    if k == "ett":
        cm = f.attributes.get("tip_cm_above_carina")
        return _pick(rng, [f"Endotracheal tube terminates {cm} cm above the carina.",
                           f"The endotracheal tube tip is {cm} cm above the carina.",
                           f"Endotracheal tube in place with tip {cm} cm above the carina."])
    if k == "central_line":
        access = f.attributes.get("access")
        return _pick(rng, [f"{_cap(str(f.side))} {access} central venous catheter terminates in "
                           "the superior vena cava.",
                           f"A {f.side} {access} line is seen with tip in the superior vena "
                           "cava.",
                           f"{_cap(str(f.side))} {access} catheter tip projects over the "
                           "superior vena cava."])
    if k == "pacemaker":
        return _pick(rng, ["Left chest wall pacemaker with leads in the right atrium and right "
                           "ventricle.",
                           "A left-sided pacemaker is present with leads terminating in the "
                           "right heart.",
                           "Dual-lead cardiac pacemaker projects over the left chest wall."])
    if k == "pleural_thickening":
        return _pick(rng, [f"Pleural thickening along the {f.location}.",
                           f"There is {f.side} lateral pleural thickening.",
                           f"Mild pleural thickening is noted along the {f.side} chest wall."])
    raise ValueError(f"no phrasing for finding kind {k!r}")


def _impression_text(rng: np.random.Generator, group: list[Finding]) -> str:
    f = group[0]
    k = f.kind
    if k == "pleural_effusion":
        return ("Bilateral pleural effusions." if len(group) == 2
                else f"{_cap(str(f.severity))} {f.side} pleural effusion.")
    short = {
        "cardiomegaly": "Cardiomegaly.",
        "enlarged_cardiomediastinum": "Widened mediastinum; correlate clinically.",
        "pneumothorax": f"{_cap(str(f.severity))} {f.side} pneumothorax.",
        "consolidation": (f"{_cap(str(f.location))} consolidation consistent with pneumonia."
                          if "Pneumonia" in f.labels
                          else f"{_cap(str(f.location))} consolidation."),
        "nodule": f"{f.size_cm} cm {f.location} nodule; recommend CT for further evaluation.",
        "mass": f"{f.size_cm} cm {f.location} mass; recommend CT for further evaluation.",
        "atelectasis": f"Atelectasis at {_the(str(f.location))}.",
        "edema": f"{_cap(str(f.severity))} pulmonary edema.",
        "rib_fracture": f"{_cap(str(f.location))} fracture.",
        "ett": "Endotracheal tube in satisfactory position." if f.severity == "appropriate"
        else "Endotracheal tube is low; consider withdrawal by 2 cm.",
        "central_line": "Central venous catheter in satisfactory position.",
        "pacemaker": "Pacemaker in place.",
        "pleural_thickening": f"{_cap(str(f.side))} pleural thickening.",
    }
    return short[k]


# --- assembly ------------------------------------------------------------------------------

# Dictation order within FINDINGS, and urgency order within IMPRESSION.
FINDINGS_ORDER = ("ett", "central_line", "pacemaker", "consolidation", "nodule", "mass",
                  "edema", "atelectasis", "pleural_effusion", "pneumothorax",
                  "pleural_thickening", "cardiomegaly", "enlarged_cardiomediastinum",
                  "rib_fracture")
IMPRESSION_ORDER = ("pneumothorax", "ett", "mass", "consolidation", "nodule", "edema",
                    "pleural_effusion", "rib_fracture", "enlarged_cardiomediastinum",
                    "cardiomegaly", "atelectasis", "central_line", "pacemaker",
                    "pleural_thickening")


def _groups(findings: list[Finding], order: Sequence[str]) -> list[list[int]]:
    """Finding indices grouped per sentence: bilateral effusions share one."""
    groups: list[list[int]] = []
    for kind in order:
        idx = [i for i, f in enumerate(findings) if f.kind == kind]
        if kind == "pleural_effusion" and len(idx) == 2:
            groups.append(idx)
        else:
            groups.extend([i] for i in idx)
    return groups


def _mentions(findings: list[Finding], idx: Sequence[int]) -> dict[str, int]:
    return {label: POSITIVE for i in idx for label in findings[i].labels}


NEGATIVES: tuple[tuple[frozenset[str], str, tuple[str, ...], tuple[str, ...]], ...] = (
    # (kinds whose presence suppresses it, region, labels stated negative, phrasings)
    (frozenset({"consolidation", "edema", "nodule", "mass", "atelectasis"}), "lungs",
     ("Consolidation", "Lung Opacity"),
     ("The lungs are clear.", "The lungs are clear without focal consolidation.")),
    (frozenset({"consolidation"}), "lungs", ("Consolidation",),
     ("No focal airspace consolidation.", "No focal consolidation is seen.",
      "No focal consolidation.")),
    (frozenset({"nodule", "mass"}), "lungs", ("Lung Lesion",),
     ("No suspicious pulmonary nodule or mass.", "No focal pulmonary nodule or mass is "
      "identified.")),
    (frozenset({"edema"}), "lungs", ("Edema",),
     ("No pulmonary edema.", "There is no pulmonary vascular congestion or edema.")),
    (frozenset({"pleural_effusion"}), "lungs", ("Pleural Effusion",),
     ("No pleural effusion.", "There is no pleural effusion.")),
    (frozenset({"pneumothorax"}), "lungs", ("Pneumothorax",),
     ("No pneumothorax.", "There is no pneumothorax.")),
    (frozenset({"cardiomegaly"}), "heart", ("Cardiomegaly",),
     ("Heart size is normal.", "The heart is normal in size.", "Cardiac size is within normal "
      "limits.")),
    (frozenset({"enlarged_cardiomediastinum"}), "mediastinum", ("Enlarged Cardiomediastinum",),
     ("The mediastinal contours are normal.", "Mediastinal and hilar contours are "
      "unremarkable.")),
    (frozenset({"rib_fracture"}), "chest", ("Fracture",),
     ("No acute osseous abnormality.", "The osseous structures are intact.", "No displaced rib "
      "fracture.")),
)


def _negative_drafts(rng: np.random.Generator, present: set[str]) -> list[Draft]:
    drafts: list[Draft] = []
    said: set[str] = set()
    for suppress, region, labels, phrasings in NEGATIVES:
        if present & suppress or said & set(labels):
            continue
        if labels == ("Consolidation",) and not present & {"edema", "nodule", "mass",
                                                           "atelectasis"}:
            continue  # "The lungs are clear" already said it
        drafts.append(Draft(_pick(rng, phrasings), "findings", (), region,
                            dict.fromkeys(labels, NEGATIVE)))
        said |= set(labels)
    return drafts


def _merge_effusion_pneumothorax(drafts: list[Draft], rng: np.random.Generator) -> list[Draft]:
    """Say "No pleural effusion or pneumothorax." as radiologists do, most of the time."""
    eff = next((d for d in drafts if d.mentions == {"Pleural Effusion": NEGATIVE}), None)
    ptx = next((d for d in drafts if d.mentions == {"Pneumothorax": NEGATIVE}), None)
    if eff is None or ptx is None or rng.random() < 0.3:
        return drafts
    merged = Draft("No pleural effusion or pneumothorax.", "findings", (), "lungs",
                   {"Pleural Effusion": NEGATIVE, "Pneumothorax": NEGATIVE})
    out = [d for d in drafts if d is not eff and d is not ptx]
    out.insert(drafts.index(eff), merged)  # the effusion negative comes first (NEGATIVES order)
    return out


def write_report(rng: np.random.Generator, findings: list[Finding],
                 anatomy_masks: dict[str, np.ndarray]) -> list[Sentence]:
    """All sentences of the report, FINDINGS then IMPRESSION, with their regions resolved."""
    present = {f.kind for f in findings}
    positives = [Draft(_effusion_text(rng, [findings[i] for i in g])
                       if findings[g[0]].kind == "pleural_effusion"
                       else _positive_text(rng, findings[g[0]]),
                       "findings", tuple(g), "lesion", _mentions(findings, g))
                 for g in _groups(findings, FINDINGS_ORDER)]
    devices = [d for d in positives if findings[d.finding_indices[0]].kind in
               ("ett", "central_line", "pacemaker")]
    others = [d for d in positives if d not in devices]
    negatives = _merge_effusion_pneumothorax(_negative_drafts(rng, present), rng)
    body = devices + _interleave(others, negatives)
    body += _fillers(rng, body)
    impression = [Draft(_impression_text(rng, [findings[i] for i in g]), "impression",
                        tuple(g), "lesion", _mentions(findings, g))
                  for g in _groups(findings, IMPRESSION_ORDER)[:4]]
    if not impression or all(findings[d.finding_indices[0]].kind in
                             ("ett", "central_line", "pacemaker") for d in impression):
        impression.append(Draft(_pick(rng, ["No acute cardiopulmonary process.",
                                            "No acute cardiopulmonary abnormality."]),
                                "impression", (), "chest", {"No Finding": POSITIVE}))
    return [_resolve(d, findings, anatomy_masks) for d in body + impression]


# Global statements radiologists add to short reports; they state no CheXpert label.
FILLERS: tuple[tuple[str, str], ...] = (
    ("The visualized upper abdomen is unremarkable.", "chest"),
    ("The soft tissues are unremarkable.", "chest"),
    ("Both hemidiaphragms are well defined.", "lungs"),
)
MIN_FINDINGS_TOKENS = 45


def _fillers(rng: np.random.Generator, body: list[Draft]) -> list[Draft]:
    """Pad a terse FINDINGS section so reports are as long as real ones (50+ tokens)."""
    tokens = sum(count_tokens(d.text) for d in body)
    extra: list[Draft] = []
    for i in rng.permutation(len(FILLERS)):
        if tokens >= MIN_FINDINGS_TOKENS:
            break
        text, region = FILLERS[int(i)]
        extra.append(Draft(text, "findings", (), region, {}))
        tokens += count_tokens(text)
    return extra


def _interleave(positives: list[Draft], negatives: list[Draft]) -> list[Draft]:
    """Lungs, pleura, heart, bones: each positive sits where its negative would have."""
    order = ("lungs", "heart", "mediastinum", "chest")
    keyed: list[tuple[int, int, Draft]] = []
    for n, d in enumerate(negatives):
        keyed.append((order.index(d.region), 100 + n, d))
    for n, d in enumerate(positives):
        keyed.append((_positive_rank(d), n, d))
    return [d for _, _, d in sorted(keyed, key=lambda t: (t[0], t[1]))]


def _positive_rank(d: Draft) -> int:
    labels = set(d.mentions)
    if "Cardiomegaly" in labels:
        return 1
    if "Enlarged Cardiomediastinum" in labels:
        return 2
    if "Fracture" in labels:
        return 3
    return 0


def _resolve(d: Draft, findings: list[Finding], anatomy: dict[str, np.ndarray]) -> Sentence:
    if d.finding_indices:
        mask = np.zeros_like(findings[d.finding_indices[0]].mask)
        for i in d.finding_indices:
            mask |= findings[i].mask
        region = "lesion"
    else:
        mask = anatomy[d.region].copy()
        region = d.region
    return Sentence(text=d.text, section=d.section, finding_indices=d.finding_indices,
                    region=region, mask=mask, mentions=d.mentions)
