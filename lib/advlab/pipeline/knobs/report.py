"""Knobs of 99_report (the reproduction scorecard)."""
from ..schema import List, Text

KNOBS = {
    "stages": List(Text()),   # empty = every results/*/claims.json found
}
