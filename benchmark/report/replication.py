"""The "Replication" section of a dataset board: the COLO-TRIDE paper's claims, tested on the stored rows.

Nothing here is written by hand except the claims and the paper's own numbers (CUB, ResNet-18,
Tables 1–3 of ``../shared/docs/papers/colo-tride-paper.txt``). Every verdict is computed from the
entries' stored values (mean ± sample std over seeds):

(a) naive TRIDE collapses and COLO-TRIDE does not, with the paper's two collapse signatures kept
    apart (shrunk: spread relative to natural training; entangled: late separability), and how
    often COLO acted;
(b) the ERS order COLO-TRIDE > HM > ACT, pair by pair, by the board's ranking key (Strong ERS,
    :data:`benchmark.report.ranking.RANKING_KEY`): *holds*, *reversed* or *within noise* (the gap
    is within twice its standard error, Welch, from the seeds' sample std); and what the RobRank
    protocol alone (ERS (RobRank) of the standard 32-step run) would have concluded, said in words
    where it differs;
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

from ..shrinkage import SHRUNK_FRACTION
from ..telemetry import ENTANGLED_SEPARABILITY
from .ranking import PROTOCOL_KEY, RANKING_KEY, score_label

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


def _flags(summary: Summary | None, key: str) -> tuple[int, int]:
    """(seeds flagged, seeds where the verdict is known) of a per-cell 1/0 verdict (``shrunk``, ``entangled``)."""
    if summary is None:
        return 0, 0
    known = [v for v in getattr(summary, "values", {}).get(key, []) if math.isfinite(v)]
    return int(sum(v > 0 for v in known)), len(known)


def _flag_text(summary: Summary | None, key: str) -> str:
    flagged, known = _flags(summary, key)
    return f"{flagged}/{known}" if known else "?"


def _collapses(summary: Summary | None) -> tuple[bool, bool]:
    """(shrunk in some seed, entangled in some seed): the seed paper's two collapse signatures."""
    return _flags(summary, "shrunk")[0] > 0, _flags(summary, "entangled")[0] > 0


def _signatures(shrunk: bool, entangled: bool) -> str:
    named = [name for name, on in (("shrunk", shrunk), ("entangled", entangled)) if on]
    return " and ".join(named) if named else "no collapse"


COLLAPSE_ENTRIES = ("naive-tride", "colo-tride", "colo-tride-rel")


def collapse_claim(by_entry: Mapping[str, Summary]) -> Claim:
    """(a), with the paper's two collapse signatures kept apart: *shrunk* (the embeddings squeezed
    into a cap: clean gallery spread far below natural training's) and *entangled* (late-training
    separability about 0). The scale-free COLO ablation is shown when the board has it."""
    naive, colo = by_entry.get("naive-tride"), by_entry.get("colo-tride")
    rows = []
    for name in COLLAPSE_ENTRIES:
        s = by_entry.get(name)
        if s is None:
            if name != "colo-tride-rel":
                rows.append([name, "not run", "—", "—", "—", "—", "—", "—"])
            continue
        spread = s.mean.get("spread_vs_nt", math.nan)
        rows.append([name, _flag_text(s, "shrunk"), "—" if not math.isfinite(spread) else f"{100 * spread:.2f} %",
                     _flag_text(s, "entangled"), f"{_min_over_seeds(s, 'training:entangled_separability'):.3f}",
                     _share(s.mean.get("training:colo_acted_share", math.nan)),
                     _share(s.mean.get("training:would_flip_share", math.nan)),
                     f"{s.mean.get('training:clean_collapseness_max', math.nan):.3f}"])
    if naive is None or colo is None:
        verdict, detail = NOT_RUN, "naive-tride and colo-tride are both needed on this board."
    else:
        naive_shrunk, naive_entangled = _collapses(naive)
        colo_shrunk, colo_entangled = _collapses(colo)
        naive_collapses, colo_collapses = naive_shrunk or naive_entangled, colo_shrunk or colo_entangled
        acted = colo.mean.get("training:colo_acted_share", math.nan)
        verdict = REPRODUCED if naive_collapses and not colo_collapses else NOT_REPRODUCED
        parts = [f"naive TRIDE: shrunk in {_flag_text(naive, 'shrunk')} seeds, entangled in "
                 f"{_flag_text(naive, 'entangled')}",
                 f"COLO-TRIDE: shrunk in {_flag_text(colo, 'shrunk')}, entangled in {_flag_text(colo, 'entangled')}"]
        if naive_collapses and colo_collapses:
            parts.append(f"both collapse ({_signatures(naive_shrunk, naive_entangled)} / "
                         f"{_signatures(colo_shrunk, colo_entangled)}): COLO does not prevent it here")
        elif not naive_collapses:
            parts.append("naive TRIDE shows neither signature here")
        if math.isfinite(acted) and acted == 0:
            parts.append("COLO never acted: the clean collapseness never rose above 0 outside a warm-up, "
                         "so COLO-TRIDE trained exactly like naive TRIDE")
        elif math.isfinite(acted):
            parts.append(f"COLO acted on {_share(acted)} of the training steps")
        relative = by_entry.get("colo-tride-rel")
        if relative is not None:
            rel_shrunk, rel_entangled = _collapses(relative)
            rel_acted = relative.mean.get("training:colo_acted_share", math.nan)
            parts.append(f"the scale-free collapseness ablation (colo-tride-rel) acted on {_share(rel_acted)} of its "
                         f"steps and ended {_signatures(rel_shrunk, rel_entangled)}")
        detail = "; ".join(parts) + "."
    return Claim("a", "Naive TRIDE collapses, COLO-TRIDE does not", verdict, detail,
                 ["entry", "shrunk seeds", "spread vs NT", "entangled seeds", "min late separability",
                  "COLO acted", "clean C > 0", "max clean C"], rows)


def overall(verdicts: Sequence[str]) -> str:
    """One verdict for a chain of pairwise ones: holds only when every pair holds."""
    if all(v == HOLDS for v in verdicts):
        return HOLDS
    if NOT_RUN in verdicts:
        return NOT_RUN
    if any(v == REVERSED for v in verdicts):
        return REVERSED
    return NOISE


def protocol_difference(pairs: Sequence[tuple[str, str]], by_key: Sequence[str], by_protocol: Sequence[str],
                        key: str, protocol_key: str) -> str:
    """A sentence on what ``protocol_key`` (the RobRank protocol) alone concludes where it differs
    from ``key``; "" where it agrees on every pair."""
    differing = [f"{first} > {second} {protocol} (by {score_label(key)}: {verdict})"
                 for (first, second), verdict, protocol in zip(pairs, by_key, by_protocol)
                 if protocol != verdict and protocol != NOT_RUN]
    if not differing:
        return ""
    return (f" The RobRank protocol alone ({score_label(protocol_key)}, 32 fixed steps) would conclude otherwise: "
            + "; ".join(differing) + f", overall {overall(by_protocol)}.")


def order_claim(by_entry: Mapping[str, Summary], pairs: Sequence[tuple[str, str]], key: str, title: str,
                claim_key: str, protocol_key: str | None = None) -> Claim:
    """Pairwise order by ``key`` (the board's ranking key), and, in its own column and in words where
    it differs, what ``protocol_key`` (RobRank's ERS of the standard run) alone would have concluded."""
    rows, verdicts, protocol_verdicts = [], [], []
    for first, second in pairs:
        a, b = _stat(by_entry.get(first), key), _stat(by_entry.get(second), key)
        verdict = compare(a, b)
        verdicts.append(verdict)
        paper_a, paper_b = PAPER_ROWS.get(first, {}).get("ERS"), PAPER_ROWS.get(second, {}).get("ERS")
        paper = f"{paper_a} > {paper_b}" if paper_a is not None and paper_b is not None else "—"
        gap = "—" if a.n == 0 or b.n == 0 else f"{a.mean - b.mean:+.1f}"
        row = [f"{first} > {second}", a.text(), b.text(), gap, paper, verdict]
        if protocol_key:
            protocol = compare(_stat(by_entry.get(first), protocol_key), _stat(by_entry.get(second), protocol_key))
            protocol_verdicts.append(protocol)
            row.append(protocol)
        rows.append(row)
    verdict = overall(verdicts)
    detail = (f"Pairwise {_label(key)}, mean ± sample std over seeds; a gap within twice its standard error is "
              "within noise. Paper: CUB, ResNet-18 (Table 1/3), RobRank's ERS.")
    if protocol_key:
        detail += protocol_difference(pairs, verdicts, protocol_verdicts, key, protocol_key)
    headers = ["claim", f"first {_label(key)}", f"second {_label(key)}", "gap", "paper (CUB)", "verdict"]
    if protocol_key:
        headers.append(f"by {_label(protocol_key)} alone")
    return Claim(claim_key, title, verdict, detail, headers, rows)


def _label(key: str) -> str:
    return {"audit:ERS:strong": "Audit strong ERS"}.get(key) or score_label(key)


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


def ablation_claim(by_entry: Mapping[str, Summary], key: str = RANKING_KEY, protocol_key: str | None = None) -> Claim:
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
        shrunk, entangled = _collapses(s)
        collapsed = shrunk or entangled
        agrees = collapsed == bool(paper.get("collapses"))
        matches.append(agrees)
        outcome = _signatures(shrunk, entangled) + (" (as the paper)" if agrees else "")
        rows.append([label, _stat(s, "R@1").text(1, 100.0), _stat(s, key).text(), _stat(s, "ARS").text(),
                     _flag_text(s, "shrunk"), _flag_text(s, "entangled"),
                     f"{_min_over_seeds(s, 'training:entangled_separability'):.3f}", paper_text,
                     outcome if agrees else f"{outcome}: {NOT_REPRODUCED}"])
    order = [compare(_stat(by_entry.get(a), key), _stat(by_entry.get(b), key)) for a, b in ABLATION_ORDER]
    protocol = [compare(_stat(by_entry.get(a), protocol_key), _stat(by_entry.get(b), protocol_key))
                for a, b in ABLATION_ORDER] if protocol_key else []
    if missing:
        verdict = NOT_RUN
    elif all(matches) and all(v == HOLDS for v in order):
        verdict = REPRODUCED
    else:
        verdict = NOT_REPRODUCED
    detail = ("Collapse outcomes against the paper's Table 3 (naive variants collapse, COLO variants do not), "
              f"either signature counting as a collapse: shrunk (clean gallery spread below {100 * SHRUNK_FRACTION:.0f} % "
              f"of natural training's) or entangled (late separability ≤ {ENTANGLED_SEPARABILITY}); "
              f"{_label(key)} order COLO-TRIDE > COLO-CAP: {order[0]}; COLO-CAP > COLO-ANP: {order[1]}.")
    if protocol_key:
        detail += protocol_difference(ABLATION_ORDER, order, protocol, key, protocol_key)
    return Claim("d", "Ablations (Table 3)", verdict, detail,
                 ["row", "R@1", _label(key), "ARS", "shrunk", "entangled", "min late separability", "paper (CUB)",
                  "here"], rows)


def replication(summaries: Sequence[Summary], key: str = RANKING_KEY) -> Replication:
    """The four claims for one board, judged by the board's ranking ``key``; empty when the board
    has none of the paper's entries. The claims that rest on an ERS order (b, d) also say what the
    RobRank protocol alone (:data:`~benchmark.report.ranking.PROTOCOL_KEY`) concludes where it differs."""
    by_entry = {s.entry: s for s in summaries}
    if not any(name in by_entry for name in PAPER_ROWS):
        return Replication([])
    protocol = PROTOCOL_KEY if key != PROTOCOL_KEY else None
    return Replication([
        collapse_claim(by_entry),
        order_claim(by_entry, ERS_ORDER, key, "ERS order COLO-TRIDE > HM > ACT", "b", protocol),
        cost_claim(by_entry),
        ablation_claim(by_entry, key, protocol),
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
