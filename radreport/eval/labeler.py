"""A rule-based CheXpert-style labeler for free-text chest X-ray reports.

It exists so clinical F1 and critical-finding sensitivity can be computed without a neural
labeler or NegBio's dependency parser: regular expressions find *mentions* of the 14
observations, then NegEx-style cues with a clause-bounded scope classify each mention, in
CheXpert's order:

1. phrases that state their own polarity ("the lungs are clear", "no acute osseous
   abnormality") keep it;
2. pre-negation uncertainty ("cannot exclude", "no new") makes a mention uncertain (-1)
   before a negation cue could claim it;
3. negation ("no", "without", "... is not seen", "heart size is normal") makes it 0;
4. uncertainty ("may", "possible", "likely", "concerning for", "X or Y", "versus") makes
   it -1; anything else is positive (1).

Choices that follow CheXpert rather than a looser reading, all uncertain (-1): "concerning
for", "likely" (so "likely reflects atelectasis"), "no new X", "X or Y" when not negated,
"vascular congestion" (Edema), "blunting of the costophrenic angle" (Pleural Effusion), a
heart-failure mention (Cardiomegaly), and a stable/unchanged heart or mediastinal contour.
"Consistent with" and "compatible with" stay positive. Because ``report_vector`` counts
uncertain as positive, these choices do not change binary evaluation.

Unlike the CheXpert labeler, bare "the heart" is not a Cardiomegaly mention (pacemaker
leads "in the right heart" would otherwise be cardiomegaly), and a report is closed under
``PARENT_LABEL`` the way ``label_vector`` closes ground truth.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise
from typing import Final, Literal

from radreport.data.labels import (
    CHEXPERT_LABELS,
    NEGATIVE,
    POSITIVE,
    UNCERTAIN,
    LabelVector,
    with_parents,
)

Direction = Literal["forward", "backward", "both"]

# Labels whose positive or uncertain mention means the study is not normal; support
# devices are not a pathology, and "No Finding" is derived, never mentioned.
PATHOLOGY_LABELS: Final[frozenset[str]] = frozenset(CHEXPERT_LABELS) - {
    "No Finding", "Support Devices"}

# Positive beats uncertain beats negative, for mentions of one label (CheXpert's rule).
_PRECEDENCE: Final[dict[int, int]] = {POSITIVE: 2, UNCERTAIN: 1, NEGATIVE: 0}

# Sections that describe why the study was done, not what it shows ("rule out pneumonia").
_SKIPPED_SECTIONS: Final[frozenset[str]] = frozenset({
    "indication", "clinical indication", "history", "clinical history", "reason for exam",
    "reason for examination", "comparison", "comparisons", "technique", "examination", "exam",
})


# --- mentions ------------------------------------------------------------------------------

@dataclass(frozen=True)
class MentionRule:
    """Phrases that mention ``labels``; ``fixed`` is the polarity the phrase itself states."""

    labels: tuple[str, ...]
    pattern: re.Pattern[str]
    fixed: int | None = None
    default: int = POSITIVE  # polarity when no cue applies (CheXpert: congestion is -1)
    stable_is_uncertain: bool = False  # "heart size is stable" says nothing about size
    implies_uncertain: tuple[str, ...] = ()  # heart failure: Cardiomegaly is -1


@dataclass(frozen=True)
class Mention:
    """One matched mention of one label, as character offsets into the sentence."""

    label: str
    start: int
    end: int
    rule: MentionRule


def _rule(labels: str | tuple[str, ...], *phrases: str, fixed: int | None = None,
          default: int = POSITIVE, stable_is_uncertain: bool = False,
          implies_uncertain: tuple[str, ...] = ()) -> MentionRule:
    names = (labels,) if isinstance(labels, str) else labels
    pattern = re.compile(r"\b(?:" + "|".join(phrases) + r")\b")
    return MentionRule(names, pattern, fixed, default, stable_is_uncertain, implies_uncertain)


_SIZE_STATE = (r"(?=\s+(?:is|are|appears?|remains?|was|looks?)\s+(?:[\w-]+\s+){0,2}?"
               r"(?:enlarged|large|widened|wide|normal|within|borderline|top|upper))")
_ANGLE = r"costophrenic (?:angles?|sulc(?:us|i))"

MENTION_RULES: Final[tuple[MentionRule, ...]] = (
    _rule("Cardiomegaly", r"cardiomegaly", r"cardiac enlargement",
          r"enlarge(?:d|ment of the) (?:heart|cardiac (?:silhouette|shadow|contour))"),
    _rule("Cardiomegaly", r"(?:heart|cardiac) (?:size|silhouette|shadow|contours?)",
          r"cardiac and mediastinal (?:silhouettes|contours)", r"heart" + _SIZE_STATE,
          stable_is_uncertain=True),
    _rule("Enlarged Cardiomediastinum",
          r"widen(?:ed|ing)(?: of the)?(?: superior| upper)? mediastinum",
          r"(?:cardio)?mediastinal (?:widening|enlargement)", r"mediastinum" + _SIZE_STATE),
    _rule("Enlarged Cardiomediastinum", r"cardiomediastinum",
          r"(?:cardio)?mediastinal(?: and hilar)? (?:silhouettes?|contours?|configuration)",
          stable_is_uncertain=True),
    _rule("Lung Opacity", r"opacit(?:y|ies)", r"opacifi\w*", r"infiltrat\w*",
          r"air-?space (?:disease|process)", r"ground[- ]glass", r"haziness",
          r"(?:retrocardiac|basilar|bibasilar|patchy|hazy|focal|airspace|parenchymal|linear)"
          r" densit(?:y|ies)",
          r"(?:interstitial|reticular|reticulonodular) (?:markings|pattern|prominence)"),
    _rule(("Lung Opacity", "Consolidation"),
          r"lungs?(?: fields?)? (?:are |is |remain |appear )?(?:otherwise |now |grossly )?"
          r"(?:well[- ]expanded and |hyperinflated but |hyperinflated and )?clear",
          r"clear lungs?", fixed=NEGATIVE),
    _rule("Lung Lesion", r"nodules?", r"nodular (?:opacit\w+|densit\w+)", r"mass(?:es)?",
          r"lesions?", r"neoplasms?", r"tumou?rs?", r"carcinomas?", r"malignanc(?:y|ies)"),
    _rule("Edema", r"edema"),
    _rule("Edema", r"(?:pulmonary )?vascular (?:congestion|engorgement|prominence)",
          r"pulmonary (?:venous )?congestion", r"cephalization", default=UNCERTAIN),
    _rule("Edema", r"(?:congestive )?heart failure", r"chf",
          implies_uncertain=("Cardiomegaly",)),
    _rule("Consolidation", r"consolidat\w*"),
    _rule("Pneumonia", r"(?:broncho)?pneumonias?", r"infections?",
          r"infectious(?: process(?:es)?)?"),
    _rule("Atelectasis", r"atelecta\w*", r"collapsed?"),
    _rule("Pneumothorax", r"(?:hydro)?pneumothora(?:x|ces)", r"ptx"),
    _rule("Pleural Effusion", r"effusions?", r"pleural fluid", r"hydrothorax"),
    _rule("Pleural Effusion", r"blunt(?:ing|ed) of the (?:[\w-]+ ){0,2}" + _ANGLE,
          r"blunted (?:[\w-]+ )?" + _ANGLE, _ANGLE + r" (?:is |are )?blunted", default=UNCERTAIN),
    _rule("Pleural Effusion", _ANGLE + r" (?:are|is|remain) (?:sharp|clear)", fixed=NEGATIVE),
    _rule("Pleural Other", r"pleural (?:thickening|plaques?|scar(?:ring)?|calcifications?|"
          r"fibrosis)", r"thickening of the pleura", r"fibrothorax",
          r"pleuro-?parenchymal (?:scar(?:ring)?|thickening)", r"apical (?:pleural )?cap(?:ping)?"),
    _rule("Fracture", r"fractur\w*"),
    _rule("Fracture", r"no (?:acute |displaced )*(?:osseous|bony|skeletal) (?:abnormalit(?:y|ies)"
          r"|injur(?:y|ies)|findings?)",
          r"(?:osseous|bony|skeletal) (?:structures|thorax) (?:is|are|appear|remain) "
          r"(?:grossly |otherwise )?(?:intact|unremarkable|normal)",
          r"bones are (?:grossly )?(?:intact|unremarkable)", fixed=NEGATIVE),
    _rule("Support Devices",
          r"(?:endotracheal|et|tracheostomy|trach|nasogastric|ng|orogastric|og|enteric|feeding"
          r"|gastric|chest|dobhoff|nasoenteric) tubes?", r"ett", r"tracheostomy",
          r"catheters?", r"picc(?: lines?)?",
          r"(?:central(?: venous)?|(?:internal )?jugular|ij|subclavian|femoral|arterial|dialysis"
          r"|swan[- ]ganz|midline|venous) (?:lines?|ports?)",
          r"port-?a-?cath", r"mediport", r"pacemakers?", r"pacers?", r"aicd", r"icd",
          r"defibrillators?", r"(?:pacer|pacemaker|pacing) (?:leads?|wires?)",
          r"sternotomy wires", r"sternal wires", r"median sternotomy",
          r"(?:surgical|vascular) clips",
          r"stents?", r"(?:prosthetic|mechanical) (?:heart |mitral |aortic )?valves?",
          r"valve replacement", r"(?:chest|pleural|surgical|mediastinal) drains?",
          r"intra-?aortic balloon pump", r"ventricular assist device", r"lvad",
          r"(?:support|monitoring) devices", r"lines and tubes", r"tubes and lines"),
)

# Kinds of device a sentence can name (Support Devices covers them all): the evaluation pairs
# a device sentence with a reference naming the same kind, and a fine grounding head has a
# map per kind, in this order.
DEVICE_KINDS: tuple[str, ...] = ("airway tube", "vascular catheter", "cardiac device")
DEVICE_WORDS: tuple[re.Pattern[str], ...] = (
    re.compile(r"\b(endotracheal|tracheostomy|trach|ett|et tube)\b"),
    re.compile(r"\b(catheters?|central venous|jugular|subclavian|picc|lines?|ports?)\b"),
    re.compile(r"\b(pacemakers?|pacers?|pacing|aicd|icd|defibrillators?|leads?)\b"),
)


def named_devices(text: str) -> tuple[int, ...]:
    """Indices into ``DEVICE_KINDS`` of the devices a sentence names, in that order."""
    lowered = text.lower()
    return tuple(i for i, words in enumerate(DEVICE_WORDS) if words.search(lowered))


# Phrases that contain a mention word but are not that observation.
UNMENTIONS: Final[dict[str, re.Pattern[str]]] = {
    "Pleural Effusion": re.compile(r"\b(?:pericardial|joint) effusions?\b"),
    "Lung Lesion": re.compile(
        r"\b(?:calcified (?:nodules?|granulomas?)|(?:osseous|bony|lytic|blastic|sclerotic|skin"
        r"|cutaneous) lesions?|mass effect)\b"),
    "Atelectasis": re.compile(r"\b(?:vertebral|compression) (?:body )?collapse\b"),
}


def find_mentions(sentence: str) -> list[Mention]:
    """Every mention in a lower-cased sentence, minus look-alikes (pericardial effusion)."""
    found: list[Mention] = []
    for rule in MENTION_RULES:
        for match in rule.pattern.finditer(sentence):
            found.extend(Mention(label, match.start(), match.end(), rule)
                         for label in rule.labels
                         if not _unmentioned(sentence, label, match.start(), match.end()))
    return sorted(found, key=lambda m: (m.start, m.end))


def _unmentioned(sentence: str, label: str, start: int, end: int) -> bool:
    pattern = UNMENTIONS.get(label)
    return pattern is not None and any(
        m.start() <= start and end <= m.end() for m in pattern.finditer(sentence))


# --- cues ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cue:
    """A trigger phrase whose scope runs ``direction`` for at most ``window`` words."""

    pattern: re.Pattern[str]
    direction: Direction
    window: int = 10


def _cue(direction: Direction, *phrases: str, window: int = 10) -> Cue:
    return Cue(re.compile(r"\b(?:" + "|".join(phrases) + r")\b"), direction, window)


_COPULA = r"(?:is|are|was|were|has been|have been|appears?|appear to be|remains?|looks?)"

# Checked before negation, so "cannot exclude" and "no new" are not read as negations.
PRE_NEGATION_UNCERTAINTY: Final[tuple[Cue, ...]] = (
    _cue("forward", r"no new", r"no evidence to rule out"),
    _cue("both", r"(?:can ?not|could not|may not) (?:be )?(?:exclude[ds]?|rule[ds]? out)",
         r"(?:is|are|was|were) not (?:entirely )?excluded", r"not (?:be )?excluded",
         r"difficult to exclude"),
)

NEGATION: Final[tuple[Cue, ...]] = (
    _cue("forward", r"no", r"not", r"without", r"absence of", r"negative for", r"free of",
         r"clear of", r"(?:interval )?resolution of", r"resolved", r"(?:interval )?removal of",
         r"rather than", r"neither", r"nor", r"never"),
    _cue("forward", r"normal", r"unremarkable", window=3),
    _cue("backward",
         _COPULA + r" (?:not|no longer) (?:seen|identified|present|appreciated|demonstrated"
         r"|evident|visible|noted|detected|enlarged|widened)",
         r"(?:is|are|was|were) absent",
         r"(?:has|have) (?:since |nearly |completely |almost |now )?(?:resolved|cleared|been "
         r"removed|been resolved)", r"(?:has been |have been |was |were )?removed",
         _COPULA + r" (?:otherwise |again |now |grossly |stably |currently )?(?:normal|"
         r"unremarkable|within normal limits|not enlarged)",
         r"within normal limits", r"normal in size", r"(?:at )?(?:the )?upper limits? of normal",
         r"resolved", window=6),
)

UNCERTAINTY: Final[tuple[Cue, ...]] = (
    _cue("forward", r"may", r"might", r"could", r"possible", r"possibly", r"probable",
         r"probably", r"(?:less |more |most )?likely", r"questionable", r"question of",
         r"suspicious for", r"suspected", r"suspect", r"suspicion (?:of|for)",
         r"concerning for", r"concern for", r"worrisome for", r"suggestive of", r"suggests?",
         r"suggesting", r"suggestion of", r"presumed", r"presumably", r"equivocal",
         r"borderline", r"differential diagnosis (?:includes?|of)", r"versus", r"vs",
         r"rule out", r"r/o", r"evaluate for", r"assess for", r"correlate clinically for",
         r"cannot be assessed", window=8),
    _cue("backward",
         _COPULA + r" (?:also |more |most )?(?:possible|likely|probable|suspected|questioned"
         r"|questionable|favored|borderline|a consideration|considered)",
         r"(?:not well|poorly|incompletely) (?:seen|visualized|evaluated|assessed)",
         r"(?:is|are) (?:partially |partly )?obscured", r"difficult to (?:assess|evaluate)",
         window=6),
)

# For heart and mediastinal contours only: "stable" compares with a prior, not a norm.
STABLE: Final[tuple[Cue, ...]] = (_cue("both", r"stable", r"unchanged", r"similar", window=3),)

# Phrases with a negation word that negate a change, not a finding ("no change in effusion").
PSEUDO_NEGATIONS: Final[re.Pattern[str]] = re.compile(
    r"\b(?:no (?:significant |substantial |interval |appreciable )?(?:change|increase|decrease|"
    r"worsening|improvement)|without (?:significant |interval )?change|not only)\b")

# Where a cue's scope ends: a new clause or a contrast.
TERMINATORS: Final[re.Pattern[str]] = re.compile(
    r"[;:]|\b(?:but|however|although|though|except|apart from|aside from|other than|which"
    r"|whereas|while)\b|,\s*with\b|\band (?:the|there|a|an)\b|,\s*(?:there|the)\b")

# "atelectasis or pneumonia", "effusion versus thickening": both sides are uncertain.
COORDINATION: Final[re.Pattern[str]] = re.compile(
    r"^\s*,?\s*(?:and/or|or|versus|vs)\s+(?:[\w-]+\s+){0,3}$")

_WORD = re.compile(r"[\w/'-]+")


def _cue_spans(sentence: str, cues: tuple[Cue, ...]) -> list[tuple[int, int, Cue]]:
    pseudo = [(m.start(), m.end()) for m in PSEUDO_NEGATIONS.finditer(sentence)]
    return [(m.start(), m.end(), cue) for cue in cues for m in cue.pattern.finditer(sentence)
            if not any(s <= m.start() < e for s, e in pseudo)]


def _in_scope(sentence: str, mention: Mention, start: int, end: int, cue: Cue) -> bool:
    """Is the mention within the cue's word window, with no clause boundary between them?"""
    if cue.direction in ("forward", "both") and end <= mention.start:
        gap = sentence[end:mention.start]
        if not TERMINATORS.search(gap) and len(_WORD.findall(gap)) <= cue.window:
            return True
    if cue.direction in ("backward", "both") and start >= mention.end:
        gap = sentence[mention.end:start]
        return ("," not in gap and not TERMINATORS.search(gap)
                and len(_WORD.findall(gap)) <= cue.window)
    return False


def _cued(sentence: str, mention: Mention, spans: list[tuple[int, int, Cue]]) -> bool:
    return any(_in_scope(sentence, mention, s, e, cue) for s, e, cue in spans)


def _coordinated(sentence: str, mentions: list[Mention]) -> set[Mention]:
    """Mentions joined to a neighbour by "or"/"versus": CheXpert calls both uncertain."""
    joined: set[Mention] = set()
    for a, b in pairwise(mentions):
        if a.end <= b.start and COORDINATION.match(sentence[a.end:b.start]):
            joined |= {a, b}
    return joined


# --- classification and aggregation --------------------------------------------------------

def merge(current: int | None, new: int) -> int:
    """Combine two values for one label: positive beats uncertain beats negative."""
    if current is None or _PRECEDENCE[new] > _PRECEDENCE[current]:
        return new
    return current


def normalize(text: str) -> str:
    """Lower-case, one space between words, and "vs." without its sentence-ending period."""
    text = re.sub(r"\s+", " ", text.lower()).strip()
    return re.sub(r"\bvs\.", "vs", text)


def label_sentence(text: str) -> LabelVector:
    """The labels one sentence mentions, each 1, 0 or -1; labels not mentioned are absent.

    No parent closure and no "No Finding" here: both are report-level conclusions.
    """
    sentence = normalize(text)
    mentions = find_mentions(sentence)
    if not mentions:
        return {}
    spans = {name: _cue_spans(sentence, cues) for name, cues in (
        ("pre", PRE_NEGATION_UNCERTAINTY), ("neg", NEGATION), ("unc", UNCERTAINTY),
        ("stable", STABLE))}
    coordinated = _coordinated(sentence, mentions)
    labels: LabelVector = {}
    for mention in mentions:
        value = _classify(sentence, mention, spans, mention in coordinated)
        labels[mention.label] = merge(labels.get(mention.label), value)
        if value != NEGATIVE:
            for implied in mention.rule.implies_uncertain:
                labels[implied] = merge(labels.get(implied), UNCERTAIN)
    return labels


def _classify(sentence: str, mention: Mention, spans: dict[str, list[tuple[int, int, Cue]]],
              coordinated: bool) -> int:
    """CheXpert's order: stated polarity, pre-negation uncertainty, negation, uncertainty."""
    rule = mention.rule
    if rule.fixed is not None:
        return rule.fixed
    if _cued(sentence, mention, spans["pre"]):
        return UNCERTAIN
    if _cued(sentence, mention, spans["neg"]):
        return NEGATIVE
    if (rule.default == UNCERTAIN or coordinated or _cued(sentence, mention, spans["unc"])
            or (rule.stable_is_uncertain and _cued(sentence, mention, spans["stable"]))):
        return UNCERTAIN
    return POSITIVE


def close_parents(labels: LabelVector) -> LabelVector:
    """Give each parent of a positive/uncertain label that value too (``with_parents``)."""
    closed = dict(labels)
    for label, value in labels.items():
        if value == NEGATIVE:
            continue
        for parent in with_parents({label}) - {label}:
            closed[parent] = merge(closed.get(parent), value)
    return closed


_SENTENCE_END = re.compile(r"[.?!](?=\s|$)|\n+")
_SECTION = re.compile(r"^\s*([a-z][a-z /]{1,40}):", re.MULTILINE)


def split_sentences(text: str) -> list[str]:
    """Sentences of the findings/impression; indication-like sections are dropped."""
    kept = []
    body = text.lower()
    bounds = [(m.start(), m.end(), m.group(1).strip()) for m in _SECTION.finditer(body)]
    if not bounds or bounds[0][0] > 0:
        kept.append(body[:bounds[0][0]] if bounds else body)
    for i, (_, end, name) in enumerate(bounds):
        stop = bounds[i + 1][0] if i + 1 < len(bounds) else len(body)
        if name not in _SKIPPED_SECTIONS:
            kept.append(body[end:stop])
    joined = re.sub(r"\bvs\.", "vs", "\n".join(kept))
    return [s.strip() for s in _SENTENCE_END.split(joined) if s.strip()]


def label_report(text: str) -> LabelVector:
    """CheXpert-style report labels: sentences merged, parents closed, No Finding derived.

    "No Finding" is 1 when no pathology is positive or uncertain (devices do not count) and
    absent otherwise, matching ``label_vector`` and CheXpert.
    """
    labels: LabelVector = {}
    for sentence in split_sentences(text):
        for label, value in label_sentence(sentence).items():
            labels[label] = merge(labels.get(label), value)
    labels = close_parents(labels)
    labels.pop("No Finding", None)
    if not any(labels.get(label) in (POSITIVE, UNCERTAIN) for label in PATHOLOGY_LABELS):
        labels["No Finding"] = POSITIVE
    return labels


def report_vector(text: str) -> LabelVector:
    """All 14 labels as 0/1 for evaluation against ``PhantomStudy.labels``.

    Uncertain counts as positive (CheXpert's "U-Ones"): a hedged finding is still one the
    report raises, which is what clinical F1 and critical-finding sensitivity should reward.
    Negative and not mentioned are both 0.
    """
    labels = label_report(text)
    return {label: int(labels.get(label) in (POSITIVE, UNCERTAIN)) for label in CHEXPERT_LABELS}
