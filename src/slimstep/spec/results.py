"""The records an evaluation hands on, at the ground floor (imports nothing of slimstep's
but :mod:`slimstep.errors`): a result :class:`Row`, its :class:`Flag` badges, its
evaluation :class:`Note` lines and its :class:`InitCheck`.

Each is a frozen dataclass with ``from_dict`` / ``to_dict``: ``to_dict`` gives back
exactly the JSON ``results.json`` and a stage's ``result.json`` hold (the same keys,
in the same order), so files written before these records existed still load, and a
report renders the same from either. The report, the flags and the verdict read
attributes; the dicts stay the storage format.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from slimstep.errors import SlimstepError

#: Lower-is-better distances in order of preference: the first a row has is its headline.
HEADLINES = ("fd", "fid", "swd", "w2", "mmd")


def _need_mapping(what: str, d: Any) -> None:
    if not isinstance(d, Mapping):
        raise SlimstepError(f"a {what} must be a mapping of keys, not a {type(d).__name__}")


@dataclass(frozen=True)
class Flag:
    """What a reader must know about a row before trusting its number (:mod:`slimstep.flags`):
    ``id`` (``equals-init``, ``below-floor``, ...), its ``badge`` text, and the row's
    ``detail`` (the numbers behind it; "" when none)."""

    id: str
    badge: str
    detail: str = ""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Flag:
        _need_mapping("flag", d)
        return cls(id=d["id"], badge=d["badge"], detail=d.get("detail", ""))

    @classmethod
    def of(cls, f: Flag | Mapping[str, Any]) -> Flag:
        """A flag dict as a record (a record passes through)."""
        return f if isinstance(f, cls) else cls.from_dict(f)

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "badge": self.badge, "detail": self.detail}


@dataclass(frozen=True)
class Note:
    """One line of an evaluation's notes: what the reader should know about a number.
    ``kind`` says which note it is (``CLAMPED``, ``BELOW_FLOOR``, else ``TEXT``),
    ``values`` holds its numbers by name, ``text`` the sentence it reads as.

    Stored as ``{"kind", "text", **values}``. Notes written before this record (plain
    strings) load through :meth:`from_dict`, the one place that reads a note's text."""

    kind: str
    text: str
    values: Mapping[str, float] = field(default_factory=dict)

    #: sample values outside [-1, 1] were clamped; ``values["percent"]``: their share in %
    CLAMPED = "clamped"
    #: the headline distance is below the real/real floor (the row's flag says it too);
    #: ``values``: ``value``, ``floor``, ``copy_rate``, ``floor_copy_rate``
    BELOW_FLOOR = "below-floor"
    #: any other note: its text is all there is
    TEXT = "text"

    @classmethod
    def plain(cls, text: str) -> Note:
        return cls(cls.TEXT, text)

    @classmethod
    def clamped(cls, share: float) -> Note:
        """``share`` (a fraction) of the sample values were outside [-1, 1] and clamped."""
        percent = round(100 * share, 2)  # as the text shows it
        return cls(cls.CLAMPED, f"{percent:.2f}% of sample values were outside [-1, 1] and were clamped",
                   {"percent": percent})

    @classmethod
    def below_floor(cls, metric: str, value: float, floor: float, copy_rate: float, floor_copy_rate: float) -> Note:
        """The headline ``metric`` scored ``value``, below the real/real ``floor``."""
        return cls(cls.BELOW_FLOOR,
                   f"{metric.upper()} {value:.3g} is below the real/real floor {floor:.3g}: the samples are "
                   f"closer to the training split than held-out data is; copy_rate "
                   f"{copy_rate:.2f} (held-out data: {floor_copy_rate:.2f}) tells whether that is "
                   f"copying (docs/evaluation.md)",
                   {"value": value, "floor": floor, "copy_rate": copy_rate, "floor_copy_rate": floor_copy_rate})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | str) -> Note:
        if isinstance(d, str):
            return cls._from_old_text(d)
        _need_mapping("note", d)
        return cls(d["kind"], d["text"], {k: v for k, v in d.items() if k not in ("kind", "text")})

    # ---- notes written before this record: plain strings. The only place a note's text
    # is parsed; a string that matches neither sentence is plain text.
    _OLD_CLAMPED = re.compile(r"^([\d.]+)% of sample values were outside \[-1, 1\] and were clamped$")
    _OLD_BELOW = re.compile(r"^(FD|FID) \S+ is below the real/real floor")

    @classmethod
    def _from_old_text(cls, text: str) -> Note:
        m = cls._OLD_CLAMPED.match(text)
        if m:
            return cls(cls.CLAMPED, text, {"percent": float(m.group(1))})
        if cls._OLD_BELOW.match(text):
            return cls(cls.BELOW_FLOOR, text)
        return cls.plain(text)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "text": self.text, **self.values}

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class InitCheck:
    """How far a student's samples are from its initialisation's one-step samples from the
    same seeds (:func:`slimstep.flags.compare_to_init`): ``init`` names the initialisation,
    ``shift`` is the paired rms difference over the rms spread, ``metric`` / ``distance`` /
    ``floor`` the protocol distance and its real/real floor (None where the data set has
    none), ``equal`` whether the two are the same map. ``metric_moved``: set (True) when the
    samples are close but the row's score moved, so the flags do not call it equal."""

    init: str
    shift: float
    metric: str | None = None
    distance: float | None = None
    floor: float | None = None
    equal: bool = False
    metric_moved: bool | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InitCheck:
        _need_mapping("init check", d)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        out = {"init": self.init, "shift": self.shift, "metric": self.metric, "distance": self.distance,
               "floor": self.floor, "equal": self.equal}
        if self.metric_moved is not None:
            out["metric_moved"] = self.metric_moved
        return out


#: Row fields that hold records, and how one is read from its JSON.
_NESTED = {"flags": Flag.from_dict, "notes": Note.from_dict}


@dataclass(frozen=True)
class Row:
    """One scored model at one sampler on one data set: a row of ``results.json``
    (:func:`slimstep.run.run`) or a stage's ``result.json``.

    Every key a row may hold is a field; a field the row does not have is None (an empty
    mapping or tuple for the collections; a stored null stays None). ``keys`` is the row's keys in their stored
    order, and ``extra`` any key this record does not name, so :meth:`to_dict` gives the
    stored dict back unchanged. A Row built directly (``keys`` empty) writes every field
    that is not None, then ``extra``.
    """

    # what was scored
    name: str = ""
    stage: str | None = None
    kind: str | None = None  # "teacher", "distill", "screen"
    method: str | None = None
    teacher: str | None = None  # the root teacher's stage
    data: str | None = None
    # the protocol
    n: int | None = None
    seeds: list[int] | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)  # mean over seeds
    metrics_sd: Mapping[str, Any] = field(default_factory=dict)
    per_seed: list[Mapping[str, Any]] | None = None
    floor: Mapping[str, Any] = field(default_factory=dict)
    per_seed_floor: list[Mapping[str, Any]] | None = None
    floor_note: str | None = None
    notes: tuple[Note, ...] = ()
    sample_seconds: float | None = None
    failed_seeds: list[Mapping[str, Any]] | None = None  # {"seed", "error"} per seed not scored
    files: Mapping[str, str] = field(default_factory=dict)  # "samples", "picture"
    # the sampler and its cost
    curve: bool | None = None  # a point of the teacher's Euler curve
    reference: bool | None = None  # the teacher at its reference sampler
    nfe: int | None = None
    nfe_note: str | None = None
    params: int | None = None
    final_params: int | None = None
    macs: int | None = None
    samples_per_s: float | None = None
    latency_s: float | None = None
    train_s: float | None = None
    # over the teacher's reference row
    headline: str | None = None
    quality_ratio: float | None = None
    params_ratio: float | None = None
    speedup: float | None = None
    # what to know before trusting it
    init_check: InitCheck | None = None
    flags: tuple[Flag, ...] = ()
    # storage
    keys: tuple[str, ...] = field(default=(), compare=False, repr=False)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Row:
        _need_mapping("result row", d)
        names = _ROW_FIELDS
        values: dict[str, Any] = {}
        for k, v in d.items():
            if k not in names:
                continue
            if k in _NESTED and v is not None:
                v = tuple(_NESTED[k](x) for x in v)
            elif k == "init_check" and v is not None:
                v = InitCheck.from_dict(v)
            values[k] = v
        return cls(**values, keys=tuple(d), extra={k: v for k, v in d.items() if k not in names})

    @classmethod
    def of(cls, r: Row | Mapping[str, Any]) -> Row:
        """A row dict as a record (a record passes through)."""
        return r if isinstance(r, cls) else cls.from_dict(r)

    def to_dict(self) -> dict[str, Any]:
        keys = self.keys or (*(k for k in _ROW_FIELDS if getattr(self, k) is not None), *self.extra)
        out = {}
        for k in keys:
            if k not in _ROW_FIELDS:
                out[k] = self.extra[k]
                continue
            v = getattr(self, k)
            if k in _NESTED and v is not None:
                v = [x.to_dict() for x in v]
            elif isinstance(v, InitCheck):
                v = v.to_dict()
            out[k] = v
        return out

    @property
    def headline_key(self) -> str | None:
        """The row's headline metric: the first of :data:`HEADLINES` it has."""
        return next((k for k in HEADLINES if k in self.metrics), None)


_ROW_FIELDS = tuple(f.name for f in dataclasses.fields(Row) if f.name not in ("keys", "extra"))
