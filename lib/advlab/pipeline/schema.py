"""The vocabulary of knob declarations: each knob of ``params.yaml`` is declared once, with its
type and its range or choices, in ``advlab/pipeline/knobs/<section>.py``::

    KNOBS = {
        "eps": Float(0, 1, doc="Linf budget in pixel units"),
        "epochs": Int(1),
        "arch": Choice(MODEL),                 # a registry name
        "gammas": List(Float(0, 1), min_len=1),
        "deep_arch": Choice(MODEL, null=True),
    }

``check(values, knobs, where)`` raises ``ParamsError`` naming the key and what is allowed, for
an unknown key, a missing key, a wrong type or a value out of range.  It runs before any work:
in the runner (on the merged params) and again in ``notebook.setup`` (on what the notebook
holds, so a hand edit of the parameters cell is checked too).

Registry names (``MODEL``, ``DATASET``) are looked up lazily in ``advlab.core``: the pipeline
layer imports no training code at import time.
"""
from __future__ import annotations


class ParamsError(ValueError):
    """A bad parameter: the message names the key and what is allowed."""


MODEL = "<model registry>"
DATASET = "<dataset registry>"


def _registry(name):
    if name == MODEL:
        from ..core.models import MODELS
        return sorted(MODELS)
    if name == DATASET:
        from ..core.data import DATASETS
        return sorted(DATASETS)
    return None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class Knob:
    """A declaration: ``check(value)`` returns None when the value is allowed, else a phrase
    saying what is allowed.  ``null``: None is allowed too; ``doc``: a note for readers."""

    def __init__(self, null: bool = False, doc: str = ""):
        self.null, self.doc = null, doc

    def check(self, v):
        if v is None:
            return None if self.null else f"must not be null; allowed: {self.allowed()}"
        return None if self.ok(v) else f"must be {self.allowed()}; got {v!r}"

    def ok(self, v) -> bool:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    def allowed(self) -> str:
        return self.describe() + (" or null" if self.null else "")

    def describe(self) -> str:  # pragma: no cover - every subclass overrides
        raise NotImplementedError


def _interval(lo, hi, open_hi=False) -> str:
    return f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{')' if open_hi else ']'}"


class Int(Knob):
    """An integer in [lo, hi] (either bound optional)."""

    def __init__(self, lo=None, hi=None, **kw):
        super().__init__(**kw)
        self.lo, self.hi = lo, hi

    def describe(self):
        return f"an integer in {_interval(self.lo, self.hi)}"

    def ok(self, v):
        return _is_int(v) and (self.lo is None or v >= self.lo) and \
            (self.hi is None or v <= self.hi)


class Float(Knob):
    """A number in [lo, hi]; ``open_hi`` excludes hi (e.g. a sparsity in [0, 1))."""

    def __init__(self, lo=None, hi=None, open_hi=False, **kw):
        super().__init__(**kw)
        self.lo, self.hi, self.open_hi = lo, hi, open_hi

    def describe(self):
        return f"a number in {_interval(self.lo, self.hi, self.open_hi)}"

    def ok(self, v):
        return _is_num(v) and (self.lo is None or v >= self.lo) and \
            (self.hi is None or (v < self.hi if self.open_hi else v <= self.hi))


class Bool(Knob):
    def describe(self):
        return "true or false"

    def ok(self, v):
        return isinstance(v, bool)


class Text(Knob):
    """Any string (a name the notebook resolves itself, e.g. a checkpoint name)."""

    def describe(self):
        return "a string"

    def ok(self, v):
        return isinstance(v, str)


class Choice(Knob):
    """One of ``options`` (values, or the name of a registry: MODEL, DATASET)."""

    def __init__(self, *options, **kw):
        super().__init__(**kw)
        self.options = options[0] if len(options) == 1 and options[0] in (MODEL, DATASET) \
            else options

    def values(self):
        return _registry(self.options) if isinstance(self.options, str) else list(self.options)

    def describe(self):
        return f"one of {self.values()}"

    def ok(self, v):
        return v in self.values()


class List(Knob):
    """A list whose items all satisfy ``item``, with at least ``min_len`` items."""

    def __init__(self, item: Knob, min_len: int = 0, **kw):
        super().__init__(**kw)
        self.item, self.min_len = item, min_len

    def describe(self):
        return f"a list (at least {self.min_len} items) of {self.item.allowed()}"

    def check(self, v):
        p = super().check(v)
        if p or v is None:
            return p
        for i, e in enumerate(v):
            p = self.item.check(e)
            if p:
                return f"item {i}: {p}"
        return None

    def ok(self, v):
        return isinstance(v, list) and len(v) >= self.min_len


class Mapping(Knob):
    """A mapping (e.g. keyword arguments of a model); ``keys`` restricts its keys."""

    def __init__(self, keys: Knob | None = None, **kw):
        super().__init__(**kw)
        self.keys = keys

    def describe(self):
        return "a mapping" + (f" with keys {self.keys.allowed()}" if self.keys else "")

    def ok(self, v):
        return isinstance(v, dict) and (self.keys is None or
                                        all(self.keys.check(k) is None for k in v))


class OneOf(Knob):
    """Any of several declarations (e.g. ``OneOf(Choice('scale', 'auto'), Float(0))``)."""

    def __init__(self, *options: Knob, **kw):
        super().__init__(**kw)
        self.options = options

    def describe(self):
        return " or ".join(o.allowed() for o in self.options)

    def ok(self, v):
        return any(o.check(v) is None for o in self.options)


class Size(Int):
    """A number of examples per class drawn from a dataset split: an integer >= ``lo`` (null
    allowed with ``null=True``, meaning "all of them" / "all that remain").

    - ``split``: ``"train"`` or ``"test"``, the split of the dataset it draws from;
    - ``disjoint``: knobs drawn from the same split *disjointly* with this one (e.g. a training
      subset drawn outside the validation subset): their sum must fit the split;
    - ``within``: knobs whose own draw this one is a subset of (e.g. an AutoAttack subset of
      the evaluation subset): it cannot exceed any of them;
    - ``dataset``: the knob naming the dataset it draws from (default ``dataset``).

    ``check_sizes`` checks a stage's ``Size`` knobs against the dataset's per-class counts
    before any work (``notebook.setup``)."""

    def __init__(self, split: str | None = None, disjoint=(), within=(), dataset="dataset",
                 lo=1, **kw):
        super().__init__(lo, **kw)
        if split not in ("train", "test", None) or (split is None and not within):
            raise ValueError("Size needs split='train' or 'test' (or within= another size)")
        self.split, self.dataset = split, dataset
        self.disjoint = (disjoint,) if isinstance(disjoint, str) else tuple(disjoint)
        self.within = (within,) if isinstance(within, str) else tuple(within)

    def describe(self):
        what = f"an integer in {_interval(self.lo, self.hi)} (per class"
        if self.split:
            what += f", drawn from the {self.split} split"
        if self.disjoint:
            what += f" disjointly with {', '.join(self.disjoint)}"
        if self.within:
            what += f", within {' and '.join(self.within)}"
        return what + ")"


SPLIT_NAMES = {"train": "training", "test": "test"}


def check_sizes(values: dict, knobs: dict[str, Knob], counts) -> dict:
    """Check every ``Size`` knob of ``values`` against the dataset it draws from.

    ``counts(dataset, split)`` returns the number of examples of the dataset split's smallest
    class (every knob draws that many of *every* class).  Raises ``ParamsError`` naming every
    size that does not fit, the dataset, and the largest value that fits.  Returns the largest
    value that fits for each ``Size`` knob."""
    sizes = {k: kn for k, kn in knobs.items() if isinstance(kn, Size) and k in values}
    bounds, problems = {}, []
    cache = {}

    def per_class(k):
        kn = sizes[k]
        key = (values.get(kn.dataset), kn.split)
        if key not in cache:
            cache[key] = counts(*key)
        return cache[key]

    for k, kn in sizes.items():
        v = values[k]
        if kn.split:
            n = per_class(k)
            others = [o for o in kn.disjoint if values.get(o) is not None]
            room = n - sum(int(values[o]) for o in others)
            bounds[k] = room
            where = (f"dataset {values.get(kn.dataset)!r} has {n} {SPLIT_NAMES[kn.split]} "
                     f"images per class")
            if v is not None and v > room:
                taken = " + ".join(f"{o} ({values[o]})" for o in others)
                if others:
                    problems.append(f"{k} ({v}) + {taken} are drawn disjointly from the same "
                                    f"split and need {v + n - room}, but {where}: the largest "
                                    f"{k} that fits is {room}")
                else:
                    problems.append(f"{k} ({v}): {where}; the largest value that fits is {n}")
            elif v is None and others and room < 1:
                problems.append(f"{k} (null: all that remain) gets nothing: {where} and "
                                f"{' + '.join(others)} take them all")
    for k, kn in sizes.items():
        v = values[k]
        for o in kn.within:
            cap = values.get(o)
            if cap is None and not kn.split:  # within "all of them": that knob's own bound
                cap = bounds.get(o)
            if cap is None or v is None:
                continue
            bounds[k] = min(bounds.get(k, cap), cap)
            if v > cap:
                problems.append(f"{k} ({v}) is drawn from {o}'s examples ({cap} per class on "
                                f"dataset {values.get(kn.dataset)!r}): the largest value that "
                                f"fits is {cap}")
    if problems:
        raise ParamsError("sizes that do not fit the dataset (nothing was run): "
                          + "; ".join(problems))
    return bounds


# Knobs several sections share, declared once (one evaluation vocabulary across papers).
AUTOATTACK = {
    "aa_version": Choice("lite", "standard"),   # lite = APGD-CE + APGD-T, labelled as such
    "aa_n_per_class": Size(within="n_eval_per_class"),  # a subset of the evaluation set
    "aa_iter": Int(1),
    "aa_targets": Int(1, 9),
}


def check(values: dict, knobs: dict[str, Knob], where: str = "") -> dict:
    """Check every value of ``values`` against its declaration in ``knobs``.

    Raises ``ParamsError`` for an undeclared key (naming the known ones), a declared key that
    is missing, or a value its declaration does not allow.  Returns ``values`` unchanged.
    """
    unknown = sorted(set(values) - set(knobs))
    if unknown:
        raise ParamsError(f"{where}{unknown[0]}: unknown parameter; known: {sorted(knobs)}")
    missing = sorted(set(knobs) - set(values))
    if missing:
        raise ParamsError(f"{where}{missing[0]}: missing (declared, but no value given)")
    for k, knob in knobs.items():
        p = knob.check(values[k])
        if p:
            raise ParamsError(f"{where}{k}: {p}")
    return values
