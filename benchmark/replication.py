"""The "Replication" section of a dataset board: the COLO-TRIDE paper's claims, tested on the stored rows.

Nothing here is written by hand except the claims and the paper's own numbers (CUB, ResNet-18,
Tables 1–3 of ``../shared/docs/papers/colo-tride-paper.txt``). Every verdict is computed from the
entries' stored values (mean ± sample std over seeds):

(a) naive TRIDE collapses and COLO-TRIDE does not (collapsed seeds, minimum separability, how often
    COLO acted);
(b) the ERS order COLO-TRIDE > HM > ACT, pair by pair: *holds*, *reversed* or *within noise*
    (the gap is within twice its standard error, Welch, from the seeds' sample std);
(c) the training-cost ratio COLO-TRIDE : HM (the paper: about 470 : 550 min on CUB);
(d) the ablation rows of the paper's Table 3: naive AT, naive CAP, naive ANP, naive TRIDE
    (collapse expected) and COLO-ANP, COLO-CAP, COLO-TRIDE (no collapse; ERS order
    COLO-TRIDE > COLO-CAP > COLO-ANP).

"Not reproduced here" is a valid outcome and is printed as such; so is "not run" when an entry
is missing from the board.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

HOLDS, REVERSED, NOISE, NOT_RUN = "holds", "reversed", "within noise", "not run"
REPRODUCED, NOT_REPRODUCED = "reproduced", "not reproduced here"

# The paper's CUB numbers (Tables 1–3): R@1, ERS, averaged ARS, and whether it collapsed.
PAPER_ROWS: dict[str, dict[str, Any]] = {
    "act": {"R@1": 27.5, "ERS": 33.9, "ARS": 40.3, "collapses": False, "pgd": 32},
    "hm": {"R@1": 34.9, "ERS": 36.0, "ARS": 47.2, "collapses": False, "pgd": 32},
    "colo-tride": {"R@1": 34.9, "ERS": 38.7, "ARS": 51.6, "collapses": False, "pgd": 16},
    "colo-cap": {"R@1": 33.8, "ERS": 37.9, "ARS": 48.5, "collapses": False, "pgd": 16},
    "colo-anp": {"R@1": 34.2, "ERS": 34.0, "ARS": 47.8, "collapses": False, "pgd": 16},
    "naive-at": {"collapses": True}, "naive-cap": {"collapses": True}, "naive-anp": {"collapses": True},
    "naive-tride": {"collapses": True},
}
ABLATION_ROWS = (("naive-at", "Naive AT"), ("naive-cap", "Naive CAP"), ("naive-anp", "Naive ANP"),
                 ("naive-tride", "Naive TRIDE"), ("colo-anp", "COLO-ANP"), ("colo-cap", "COLO-CAP"),
                 ("colo-tride", "COLO-TRIDE"))
ERS_ORDER = (("colo-tride", "hm"), ("hm", "act"), ("colo-tride", "act"))
ABLATION_ORDER = (("colo-tride", "colo-cap"), ("colo-cap", "colo-anp"))
PAPER_COST_RATIO = 470.0 / 550.0  # COLO-TRIDE : HM training time on CUB, one GPU (paper §4)


class Summary(Protocol):
    """What the replication needs of an entry (``report.EntrySummary`` has it)."""

    entry: str
    n: int
    mean: dict[str, float]
    std: dict[str, float]
    count: dict[str, int]
    collapsed: int


@dataclass
class Stat:
    mean: float
    std: float
    n: int

    def text(self, decimals: int = 1, scale: float = 1.0) -> str:
        if self.n == 0 or not math.isfinite(self.mean):
            return "—"
        out = f"{self.mean * scale:.{decimals}f}"
        if self.n > 1 and math.isfinite(self.std):
            out += f" ± {self.std * scale:.{decimals}f}"
        return out


@dataclass
class Claim:
    """One claim of the paper and what this board says about it."""

    key: str  # a, b, c, d
    title: str
    verdict: str
    detail: str
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)


@dataclass
class Replication:
    claims: list[Claim]

    @property
    def empty(self) -> bool:
        return not self.claims


def _stat(summary: Summary | None, key: str) -> Stat:
    if summary is None:
        return Stat(math.nan, math.nan, 0)
    return Stat(summary.mean.get(key, math.nan), summary.std.get(key, math.nan), summary.count.get(key, 0))


def compare(first: Stat, second: Stat) -> str:
    """``holds`` (first > second beyond noise), ``reversed``, or ``within noise``.

    Noise is twice the standard error of the difference of the means (Welch) from the seeds'
    sample std; with a single seed on either side there is no estimate and the sign decides.
    """
    if first.n == 0 or second.n == 0 or not (math.isfinite(first.mean) and math.isfinite(second.mean)):
        return NOT_RUN
    gap = first.mean - second.mean
    if first.n > 1 and second.n > 1 and math.isfinite(first.std) and math.isfinite(second.std):
        noise = 2.0 * math.sqrt(first.std ** 2 / first.n + second.std ** 2 / second.n)
        if abs(gap) <= noise:
            return NOISE
    if gap == 0:
        return NOISE
    return HOLDS if gap > 0 else REVERSED


def _share(value: float) -> str:
    return "—" if not math.isfinite(value) else f"{100 * value:.1f} %"


def _min_over_seeds(summary: Summary | None, key: str) -> float:
    if summary is None:
        return math.nan
    per_seed = getattr(summary, "values", {}).get(key)
    if per_seed:
        finite = [v for v in per_seed if math.isfinite(v)]
        return min(finite) if finite else math.nan
    return summary.mean.get(key, math.nan)


def collapse_claim(by_entry: Mapping[str, Summary]) -> Claim:
    naive, colo = by_entry.get("naive-tride"), by_entry.get("colo-tride")
    rows = []
    for name in ("naive-tride", "colo-tride"):
        s = by_entry.get(name)
        if s is None:
            rows.append([name, "not run", "—", "—", "—", "—"])
            continue
        rows.append([name, f"{s.collapsed}/{s.n}", f"{_min_over_seeds(s, 'training:min_separability'):.3f}",
                     _share(s.mean.get("training:colo_acted_share", math.nan)),
                     _share(s.mean.get("training:would_flip_share", math.nan)),
                     f"{s.mean.get('training:clean_collapseness_max', math.nan):.3f}"])
    if naive is None or colo is None:
        verdict, detail = NOT_RUN, "naive-tride and colo-tride are both needed on this board."
    else:
        naive_collapses, colo_collapses = naive.collapsed > 0, colo.collapsed > 0
        acted = colo.mean.get("training:colo_acted_share", math.nan)
        if naive_collapses and not colo_collapses:
            verdict = REPRODUCED
            detail = (f"naive TRIDE collapsed in {naive.collapsed} of {naive.n} seeds, COLO-TRIDE in none; "
                      f"COLO acted on {_share(acted)} of COLO-TRIDE's training steps.")
        else:
            verdict = NOT_REPRODUCED
            parts = [f"naive TRIDE collapsed in {naive.collapsed} of {naive.n} seeds",
                     f"COLO-TRIDE in {colo.collapsed} of {colo.n}"]
            if math.isfinite(acted) and acted == 0:
                parts.append("COLO never acted: the clean collapseness never rose above 0 outside a warm-up, "
                             "so COLO-TRIDE trained exactly like naive TRIDE")
            elif math.isfinite(acted):
                parts.append(f"COLO acted on {_share(acted)} of the training steps")
            detail = "; ".join(parts) + "."
    return Claim("a", "Naive TRIDE collapses, COLO-TRIDE does not", verdict, detail,
                 ["entry", "collapsed seeds", "min separability", "COLO acted", "clean C > 0", "max clean C"], rows)


def order_claim(by_entry: Mapping[str, Summary], pairs: Sequence[tuple[str, str]], key: str, title: str,
                claim_key: str) -> Claim:
    rows, verdicts = [], []
    for first, second in pairs:
        a, b = _stat(by_entry.get(first), "ERS"), _stat(by_entry.get(second), "ERS")
        verdict = compare(a, b)
        verdicts.append(verdict)
        paper_a, paper_b = PAPER_ROWS.get(first, {}).get("ERS"), PAPER_ROWS.get(second, {}).get("ERS")
        paper = f"{paper_a} > {paper_b}" if paper_a is not None and paper_b is not None else "—"
        gap = "—" if a.n == 0 or b.n == 0 else f"{a.mean - b.mean:+.1f}"
        rows.append([f"{first} > {second}", a.text(), b.text(), gap, paper, verdict])
    if all(v == HOLDS for v in verdicts):
        verdict = HOLDS
    elif NOT_RUN in verdicts:
        verdict = NOT_RUN
    elif any(v == REVERSED for v in verdicts):
        verdict = REVERSED
    else:
        verdict = NOISE if all(v in (HOLDS, NOISE) for v in verdicts) else REVERSED
    detail = ("Pairwise ERS, mean ± sample std over seeds; a gap within twice its standard error is "
              "within noise. Paper: CUB, ResNet-18 (Table 1/3).")
    return Claim(claim_key, title, verdict, detail, ["claim", "first ERS", "second ERS", "gap", "paper (CUB)",
                                                     "verdict"], rows)


def cost_claim(by_entry: Mapping[str, Summary]) -> Claim:
    colo, hm = by_entry.get("colo-tride"), by_entry.get("hm")
    if colo is None or hm is None:
        return Claim("c", "COLO-TRIDE trains faster than HM", NOT_RUN, "colo-tride and hm are both needed.")
    colo_s, hm_s = _stat(colo, "train_seconds"), _stat(hm, "train_seconds")
    ratio = colo_s.mean / hm_s.mean if hm_s.mean else math.nan
    pgd = f"{colo.mean.get('train_pgd_steps', math.nan):.0f} vs {hm.mean.get('train_pgd_steps', math.nan):.0f}"
    verdict = HOLDS if math.isfinite(ratio) and ratio < 1 else (REVERSED if math.isfinite(ratio) else NOT_RUN)
    detail = (f"Training time COLO-TRIDE : HM = {colo_s.text(0)} s : {hm_s.text(0)} s = {ratio:.2f} "
              f"(PGD steps per batch {pgd}); the paper reports about {PAPER_COST_RATIO:.2f} "
              "(470 vs 550 minutes on CUB, one GPU).")
    return Claim("c", "COLO-TRIDE trains faster than HM", verdict, detail)


def ablation_claim(by_entry: Mapping[str, Summary]) -> Claim:
    rows = []
    matches, missing = [], []
    for name, label in ABLATION_ROWS:
        s = by_entry.get(name)
        paper = PAPER_ROWS.get(name, {})
        paper_text = "collapses" if paper.get("collapses") else \
            f"R@1 {paper['R@1']}, ERS {paper['ERS']}, ARS {paper['ARS']}, no collapse"
        if s is None:
            rows.append([label, "not run", "—", "—", "—", "—", paper_text, NOT_RUN])
            missing.append(name)
            continue
        collapsed = s.collapsed > 0
        agrees = collapsed == bool(paper.get("collapses"))
        matches.append(agrees)
        outcome = ("collapsed" if collapsed else "no collapse") + (" (as the paper)" if agrees else "")
        rows.append([label, _stat(s, "R@1").text(1, 100.0), _stat(s, "ERS").text(), _stat(s, "ARS").text(),
                     f"{s.collapsed}/{s.n}", f"{_min_over_seeds(s, 'training:min_separability'):.3f}", paper_text,
                     outcome if agrees else f"{outcome}: {NOT_REPRODUCED}"])
    order = [compare(_stat(by_entry.get(a), "ERS"), _stat(by_entry.get(b), "ERS")) for a, b in ABLATION_ORDER]
    if missing:
        verdict = NOT_RUN
    elif all(matches) and all(v == HOLDS for v in order):
        verdict = REPRODUCED
    else:
        verdict = NOT_REPRODUCED
    detail = ("Collapse outcomes against the paper's Table 3 (naive variants collapse, COLO variants do not); "
              f"ERS order COLO-TRIDE > COLO-CAP: {order[0]}; COLO-CAP > COLO-ANP: {order[1]}.")
    return Claim("d", "Ablations (Table 3)", verdict, detail,
                 ["row", "R@1", "ERS", "ARS", "collapsed", "min separability", "paper (CUB)", "here"], rows)


def replication(summaries: Sequence[Summary]) -> Replication:
    """The four claims for one board; empty when the board has none of the paper's entries."""
    by_entry = {s.entry: s for s in summaries}
    if not any(name in by_entry for name in PAPER_ROWS):
        return Replication([])
    return Replication([
        collapse_claim(by_entry),
        order_claim(by_entry, ERS_ORDER, "ERS", "ERS order COLO-TRIDE > HM > ACT", "b"),
        cost_claim(by_entry),
        ablation_claim(by_entry),
    ])


@dataclass
class ActivityRow:
    entry: str
    cells: list[str]
    never_acted: bool


ACTIVITY_COLUMNS = (
    ("training:colo_attack_share", "attacked"), ("training:colo_assist_share", "assisted"),
    ("training:colo_skip_share", "clean (no perturbation)"), ("training:colo_acted_share", "COLO acted"),
    ("training:would_flip_share", "clean C > 0"), ("training:perturbed_share", "perturbed"),
)


def colo_activity(summaries: Sequence[Summary]) -> list[ActivityRow]:
    """Per entry that logs COLO decisions (or, for the naive ablations and CA-TRIDE, where COLO would
    act): the share of training steps that attacked, assisted, or trained clean, and the clean C."""
    rows = []
    for s in summaries:
        if not math.isfinite(s.mean.get("training:would_flip_share", math.nan)):
            continue
        cells = [_share(s.mean.get(key, math.nan)) for key, _ in ACTIVITY_COLUMNS]
        cells.append(f"{s.mean.get('training:clean_collapseness_max', math.nan):.3f}")
        acted = s.mean.get("training:colo_acted_share", math.nan)
        colo_on = '"colo": true' in getattr(s, "defense_params", "")
        rows.append(ActivityRow(s.entry, cells, bool(colo_on and math.isfinite(acted) and acted == 0)))
    return rows
