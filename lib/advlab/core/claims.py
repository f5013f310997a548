"""A paper's claims as records, with verdicts computed from measured numbers.

    claims = Claims("02_awp")
    claims.check("awp_shrinks_drop", "AWP shrinks the best-minus-last drop",
                 paper="AT 8.7 pts -> AWP 1.0 pts", measured=drop_awp - drop_at,
                 op="<", threshold=0.0, unit="pts")
    claims.save(out_dir)        # -> claims.json

The verdict is always computed by comparing ``measured`` with ``threshold`` through ``op``:
nothing is ever marked as holding by hand.
"""
from __future__ import annotations

import json
import math
import operator
from dataclasses import asdict, dataclass
from pathlib import Path

OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


@dataclass
class Claim:
    id: str
    statement: str
    paper: str          # the paper's statement / number, as text
    measured: float     # our number
    criterion: str      # e.g. "measured >= 0.6"
    holds: bool
    unit: str = ""
    note: str = ""


class Claims:
    """The claims of one notebook; ``check`` adds one, ``save`` writes ``claims.json``."""

    def __init__(self, stage: str):
        self.stage = stage
        self.items: list[Claim] = []

    def check(self, id: str, statement: str, paper: str, measured: float, op: str,
              threshold: float, unit: str = "", note: str = "") -> Claim:
        """Record a claim whose verdict is ``measured <op> threshold``.

        A NaN measurement never holds.
        """
        if op not in OPS:
            raise ValueError(f"unknown op {op!r}; allowed: {sorted(OPS)}")
        if any(c.id == id for c in self.items):
            raise ValueError(f"claim {id!r} recorded twice")
        measured = float(measured)
        holds = (not math.isnan(measured)) and bool(OPS[op](measured, threshold))
        claim = Claim(id, statement, paper, measured, f"measured {op} {threshold:g}", holds,
                      unit, note)
        self.items.append(claim)
        return claim

    @property
    def summary(self) -> dict:
        n = len(self.items)
        return {"stage": self.stage, "n": n, "holds": sum(c.holds for c in self.items)}

    def to_records(self) -> list[dict]:
        return [asdict(c) for c in self.items]

    def to_markdown(self) -> str:
        rows = ["| claim | paper | ours | criterion | verdict |", "|---|---|---|---|---|"]
        for c in self.items:
            rows.append(f"| {c.statement} | {c.paper} | {c.measured:.4g}{c.unit and ' ' + c.unit}"
                        f" | {c.criterion} | {'holds' if c.holds else '**does not hold**'} |")
        return "\n".join(rows)

    def _repr_markdown_(self):
        return self.to_markdown()

    def save(self, out_dir) -> Path:
        path = Path(out_dir) / "claims.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**self.summary, "claims": self.to_records()}, indent=2))
        return path


def load_all(outputs_dir) -> list[dict]:
    """Every ``outputs/*/claims.json`` as dicts, sorted by stage name (missing stages skipped)."""
    out = []
    for p in sorted(Path(outputs_dir).glob("*/claims.json")):
        out.append(json.loads(p.read_text()))
    return out
