"""A paper's claims as records, with verdicts computed from measured numbers and their
uncertainty.

    claims = Claims("02_awp")
    claims.check("awp_shrinks_drop", "AWP shrinks the best-minus-last drop",
                 paper="AT 8.7 pts -> AWP 1.0 pts", measured=drop_awp - drop_at,
                 op="<", threshold=0.0, unit="pts",
                 interval=seed_interval(per_seed_diffs), kind="headline")
    claims.not_run("trades_awp", "TRADES-AWP ...", paper="...", reason="trades: false")
    claims.save(out_dir)        # -> claims.json

The verdict is always computed by comparing ``measured`` with ``threshold`` through ``op``:
nothing is ever marked as holding by hand.  With an ``interval`` (lo, hi) around ``measured``:

- **holds** when the whole interval meets the criterion (clear of the bar),
- **does not hold** when the whole interval fails it (clear on the other side),
- **inconclusive** when the interval straddles the bar.

Without an interval the point estimate decides (the record says ``interval: null``, so a
reader sees that no uncertainty was attached).  A NaN measurement is inconclusive; a claim
that was not computed in this configuration is **not run**, with the reason.  ``kind`` says
what a claim is worth: a ``headline`` claim of the paper, a ``mechanism`` (a diagnostic of how
the method works) or a ``sanity`` check; the scorecard counts them separately.

Intervals: ``bootstrap_interval`` (over evaluation examples; Wilson's for an accuracy),
``paired_bootstrap_interval`` (a difference of two arms on the same examples: Newcombe's
interval for 0/1 outcomes, else a paired bootstrap), ``seed_interval``
(over training seeds).
"""
from __future__ import annotations

import json
import math
import operator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
KINDS = ("headline", "mechanism", "sanity")
VERDICTS = ("holds", "does not hold", "inconclusive", "not run")


@dataclass
class Claim:
    id: str
    statement: str
    paper: str          # the paper's statement / number, as text
    measured: float     # our number
    criterion: str      # e.g. "measured >= 0.6"
    holds: bool         # verdict == "holds"
    unit: str = ""
    note: str = ""
    verdict: str = ""   # one of VERDICTS
    kind: str = "headline"
    interval: list | None = None   # [lo, hi] around measured, or None
    interval_kind: str = ""        # e.g. "95% bootstrap over 500 images"

    def _repr_markdown_(self) -> str:
        """A cell that ends with ``claims.check(...)`` shows the verdict in one line."""
        return (f"**{self.statement}**: {format_verdict(self.verdict)} (ours "
                f"{format_measured(self)}, interval {format_interval(self)}; needed "
                f"{self.criterion})")


def verdict(measured: float, op: str, threshold: float, interval=None) -> str:
    """'holds', 'does not hold' or 'inconclusive' for ``measured <op> threshold`` (see the
    module docstring); ``interval`` is (lo, hi) or None."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; allowed: {sorted(OPS)}")
    if measured is None or math.isnan(measured):
        return "inconclusive"
    if interval is None:
        return "holds" if OPS[op](measured, threshold) else "does not hold"
    lo, hi = interval
    if math.isnan(lo) or math.isnan(hi):
        return "inconclusive"
    tol = 1e-9 * max(1.0, abs(measured))   # the same number computed in another order
    if not lo - tol <= measured <= hi + tol:
        raise ValueError(f"interval [{lo}, {hi}] does not contain the measured {measured}")
    ok_lo, ok_hi = OPS[op](lo, threshold), OPS[op](hi, threshold)
    if ok_lo and ok_hi:
        return "holds"
    if not ok_lo and not ok_hi:
        return "does not hold"
    return "inconclusive"


class Claims:
    """The claims of one notebook; ``check`` adds one, ``not_run`` records one that was not
    computed, ``save`` writes ``claims.json``.  ``expect(*ids)`` declares the claims a stage
    always reports: ``save`` records any of them never checked as not run."""

    def __init__(self, stage: str):
        self.stage = stage
        self.items: list[Claim] = []
        self.expected: list[str] = []

    def _add(self, claim: Claim) -> Claim:
        if any(c.id == claim.id for c in self.items):
            raise ValueError(f"claim {claim.id!r} recorded twice")
        if claim.kind not in KINDS:
            raise ValueError(f"claim {claim.id!r}: unknown kind {claim.kind!r}; allowed: {KINDS}")
        self.items.append(claim)
        return claim

    def check(self, id: str, statement: str, paper: str, measured: float, op: str,
              threshold: float, unit: str = "", note: str = "", interval=None,
              interval_kind: str = "", kind: str = "headline", caveat: str = "",
              uninformative: str = "") -> Claim:
        """Record a claim whose verdict is ``measured <op> threshold``, decided with its
        ``interval`` when one is given (see the module docstring).  ``caveat``: a failed
        check the claim rests on (e.g. gradient masking on its robust model); a claim that
        would hold becomes inconclusive, and the caveat joins the note.  ``uninformative``:
        why the measurement cannot decide either way (e.g. both arms at chance level); the
        claim is inconclusive whatever the number, and the reason joins the note."""
        measured = float(measured)
        iv = None if interval is None else [float(interval[0]), float(interval[1])]
        if iv is not None and any(math.isnan(b) for b in iv):  # e.g. too few examples
            iv = None
            note = f"{note}; no interval (not computable here)" if note else \
                "no interval (not computable here)"
        v = verdict(measured, op, threshold, iv)
        if caveat:
            note = f"{note}; caveat: {caveat}" if note else f"caveat: {caveat}"
            v = "inconclusive" if v == "holds" else v
        if uninformative:
            note = f"{note}; uninformative: {uninformative}" if note else \
                f"uninformative: {uninformative}"
            v = "inconclusive"
        return self._add(Claim(id, statement, paper, measured, f"measured {op} {threshold:g}",
                               v == "holds", unit, note, v, kind, iv, interval_kind))

    def not_run(self, id: str, statement: str, paper: str = "", reason: str = "",
                kind: str = "headline") -> Claim:
        """Record a claim this configuration did not compute (``reason`` says why), so it
        never silently drops out of the scorecard."""
        return self._add(Claim(id, statement, paper, float("nan"), "", False, "",
                               f"not run: {reason}", "not run", kind))

    def expect(self, *ids: str) -> None:
        """Declare claim ids this stage always reports (in every profile and configuration)."""
        self.expected.extend(ids)

    @property
    def summary(self) -> dict:
        """Counts: ``n``, ``holds`` (all kinds), and per verdict and per kind x verdict."""
        out = {"stage": self.stage, "n": len(self.items),
               "holds": sum(c.holds for c in self.items)}
        for v in VERDICTS:
            out[v.replace(" ", "_")] = sum(c.verdict == v for c in self.items)
        out["by_kind"] = {k: {v.replace(" ", "_"): sum(c.kind == k and c.verdict == v
                                                       for c in self.items) for v in VERDICTS}
                          for k in KINDS}
        return out

    def to_records(self) -> list[dict]:
        return [asdict(c) for c in self.items]

    def to_markdown(self) -> str:
        rows = ["| claim | kind | paper | ours | interval | criterion | verdict |",
                "|---|---|---|---|---|---|---|"]
        for c in self.items:
            rows.append(f"| {c.statement} | {c.kind} | {c.paper} | {format_measured(c)} | "
                        f"{format_interval(c)} | {c.criterion} | {format_verdict(c.verdict)} |")
        return "\n".join(rows)

    def _repr_markdown_(self):
        return self.to_markdown()

    def save(self, out_dir) -> Path:
        for cid in self.expected:
            if not any(c.id == cid for c in self.items):
                self.not_run(cid, cid, reason="not computed in this configuration")
        path = Path(out_dir) / "claims.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**self.summary, "claims": self.to_records()}, indent=2))
        return path


def format_measured(c) -> str:
    c = c if isinstance(c, dict) else asdict(c)
    unit = f" {c['unit']}" if c.get("unit") else ""
    return "—" if math.isnan(c["measured"]) else f"{c['measured']:.4g}{unit}"


def format_interval(c) -> str:
    c = c if isinstance(c, dict) else asdict(c)
    iv = c.get("interval")
    if not iv:
        return "none"
    kind = f" ({c['interval_kind']})" if c.get("interval_kind") else ""
    return f"[{iv[0]:.3g}, {iv[1]:.3g}]{kind}"


def format_verdict(v: str) -> str:
    return {"holds": "holds", "does not hold": "**does not hold**",
            "inconclusive": "*inconclusive*", "not run": "not run"}.get(v, v)


def load_all(results_dir) -> list[dict]:
    """Every ``<results_dir>/*/claims.json`` as dicts, sorted by stage name.  Records written
    before verdicts had states get them from their ``holds`` flag."""
    out = []
    for p in sorted(Path(results_dir).glob("*/claims.json")):
        blob = json.loads(p.read_text())
        for c in blob["claims"]:
            c.setdefault("verdict", "holds" if c["holds"] else "does not hold")
            c.setdefault("kind", "headline")
            c.setdefault("interval", None)
        out.append(blob)
    return out


# --------------------------------------------------------------------------- intervals
def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (an accuracy on n images).  Unlike a
    bootstrap it does not collapse to a point at 0/n or n/n."""
    from scipy import stats

    if n <= 0:
        raise ValueError("n must be positive")
    z = stats.norm.ppf(0.5 + level / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, min(p, centre - half))), float(min(1.0, max(p, centre + half)))


def bootstrap_interval(values, stat=np.mean, level: float = 0.95, n_boot: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` over the examples in ``values`` (a 1-D array).
    The mean of 0/1 values (per-image correctness: an accuracy) gets the Wilson interval
    instead, which stays honest at 0 or 100%."""
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or len(v) < 2:
        raise ValueError(f"need a 1-D array of at least 2 values, got shape {v.shape}")
    if stat is np.mean and np.isin(v, (0.0, 1.0)).all():
        return wilson_interval(int(v.sum()), len(v), level)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(v), size=(n_boot, len(v)))
    boots = np.array([stat(v[i]) for i in idx])
    a = (1 - level) / 2
    lo, hi = np.quantile(boots, [a, 1 - a])
    point = stat(v)
    return float(min(lo, point)), float(max(hi, point))


def paired_bootstrap_interval(a, b, level: float = 0.95, n_boot: int = 2000,
                              seed: int = 0) -> tuple[float, float]:
    """Interval of mean(a) - mean(b) for two arms measured on the same examples.

    Per-example 0/1 outcomes (correct or not, fooled or not) get Newcombe's interval for a
    difference of paired proportions (``paired_proportions_interval``); anything else a
    percentile bootstrap over examples, keeping the pairs.  (A difference of 0/1 outcomes is
    not itself a proportion, so the Wilson shortcut of ``bootstrap_interval`` never applies.)"""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired arms need the same examples: {a.shape} vs {b.shape}")
    if np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all():
        return paired_proportions_interval(a, b, level)
    d = a - b
    if d.ndim != 1 or len(d) < 2:
        raise ValueError(f"need a 1-D array of at least 2 values, got shape {d.shape}")
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(1)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    point = float(d.mean())
    return float(min(lo, point)), float(max(hi, point))


def two_sample_bootstrap_interval(a, b, level: float = 0.95, n_boot: int = 2000,
                                  seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(a) - mean(b) for two independent samples (e.g.
    per-image values on a training slice and on the test set: a generalisation gap), each
    resampled on its own.  ``a`` (n,), ``b`` (m,): 1-D arrays of at least 2 values each."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim != 1 or b.ndim != 1 or len(a) < 2 or len(b) < 2:
        raise ValueError(f"need two 1-D arrays of at least 2 values, got {a.shape}, {b.shape}")
    rng = np.random.default_rng(seed)
    boots = (a[rng.integers(0, len(a), size=(n_boot, len(a)))].mean(1)
             - b[rng.integers(0, len(b), size=(n_boot, len(b)))].mean(1))
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    point = float(a.mean() - b.mean())
    return float(min(lo, point)), float(max(hi, point))


def paired_proportions_interval(a, b, level: float = 0.95) -> tuple[float, float]:
    """Newcombe's (1998, method 10) interval of p_a - p_b for paired 0/1 outcomes: Wilson
    intervals of the two proportions combined with the correlation of the pairs.  Unlike a
    bootstrap it does not collapse to a point when no pair disagrees (two models right and
    wrong on exactly the same images on n examples still leave room for a difference)."""
    a, b = np.asarray(a).astype(bool), np.asarray(b).astype(bool)
    n = len(a)
    if n < 1 or a.shape != b.shape:
        raise ValueError("need two 0/1 arms of the same positive length")
    e, f = int((a & b).sum()), int((a & ~b).sum())
    g, h = int((~a & b).sum()), int((~a & ~b).sum())
    p1, p2 = (e + f) / n, (e + g) / n
    l1, u1 = wilson_interval(e + f, n, level)
    l2, u2 = wilson_interval(e + g, n, level)
    den = (e + f) * (g + h) * (e + g) * (f + h)
    phi = (e * h - f * g) / math.sqrt(den) if den else 0.0
    dl = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    du = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    d = p1 - p2
    return float(max(-1.0, d - dl)), float(min(1.0, d + du))


def seed_interval(values, level: float = 0.95) -> tuple[float, float] | None:
    """Student-t interval of the mean over training seeds; None for fewer than 2 seeds (one
    seed has no spread: the verdict then rests on the point estimate and says so)."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return None
    half = stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return float(v.mean() - half), float(v.mean() + half)


# --------------------------------------------------------------------------- scorecard
def tally(records: list[dict]) -> dict:
    """{kind: {verdict: count}} over the claims of ``records`` (``load_all``'s dicts), plus a
    ``total`` row."""
    out = {k: dict.fromkeys(VERDICTS, 0) for k in (*KINDS, "total")}
    for r in records:
        for c in r["claims"]:
            out[c.get("kind", "headline")][c["verdict"]] += 1
            out["total"][c["verdict"]] += 1
    return out


def needed(c: dict) -> str:
    """The bar a claim must clear, readable: ``> 0 pts`` from the criterion ``measured > 0``."""
    crit = c.get("criterion", "")
    bar = crit.replace("measured", "").strip()
    unit = f" {c['unit']}" if c.get("unit") else ""
    return f"{bar}{unit}" if bar else crit


def ours_with_interval(c: dict) -> str:
    """``0.612 [0.569, 0.654]`` (with the unit), or the bare number when no interval."""
    c = c if isinstance(c, dict) else asdict(c)
    if math.isnan(c["measured"]):
        return "—"
    unit = f" {c['unit']}" if c.get("unit") else ""
    iv = c.get("interval")
    return f"{c['measured']:.3g}{unit} [{iv[0]:.3g}, {iv[1]:.3g}]" if iv else \
        f"{c['measured']:.3g}{unit} (no interval)"


def scorecard_markdown(records: list[dict], profile: str, titles: dict | None = None,
                       link=None) -> str:
    """The scorecard as markdown a student can read: the tally by kind and verdict, then one
    section per paper (``titles``: stage -> heading; ``link``: stage -> URL of the notebook
    that explains the verdicts) with one row per claim: what the paper says, what we measured
    with its 95% interval, the bar it had to clear, and the verdict; notes and interval kinds
    follow the table, so the table stays narrow."""
    t = tally(records)
    md = ["| claims | " + " | ".join(VERDICTS) + " |", "|---|" + "---|" * len(VERDICTS)]
    md += [f"| {k} | " + " | ".join(str(t[k][v]) for v in VERDICTS) + " |"
           for k in (*KINDS, "total")]
    head = t["headline"]
    lines = [f"{head['holds']} of {sum(head.values())} headline claims hold, "
             f"{head['inconclusive']} inconclusive (profile: {profile}).", "",
             "A claim **holds** when its whole interval clears the bar, **does not hold** when "
             "its whole interval misses it, and is *inconclusive* when the interval straddles "
             "the bar. Headline claims are the paper's results; mechanisms are diagnostics of "
             "how a method works; sanity checks guard the measurement.", "", *md, ""]
    for r in records:
        stage = r["stage"]
        n_h = sum(c["verdict"] == "holds" for c in r["claims"])
        title = (titles or {}).get(stage, stage)
        lines += [f"## {stage}: {title}", "",
                  f"{n_h} of {len(r['claims'])} claims hold."
                  + (f" Why each verdict came out as it did: [the notebook]({link(stage)})."
                     if link else ""), "",
                  "| # | claim | kind | the paper | we measured [95% interval] | needed | verdict |",
                  "|---|---|---|---|---|---|---|"]
        notes = []
        for i, c in enumerate(r["claims"], 1):
            lines.append(f"| {i} | {c['statement']} | {c.get('kind', 'headline')} | "
                         f"{c['paper']} | {ours_with_interval(c)} | {needed(c)} | "
                         f"{format_verdict(c['verdict'])} |")
            extra = "; ".join(x for x in (c.get("interval_kind"), c.get("note")) if x)
            if extra:
                notes.append(f"{i}. {extra}")
        if notes:
            lines += ["", "Notes (interval, then details):", "", *notes]
        lines.append("")
    return "\n".join(lines)
