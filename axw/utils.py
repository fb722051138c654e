"""Small helpers shared across the library."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import MISSING, asdict, fields


def exists(val):
    return val is not None


def default(val, d):
    return val if exists(val) else d


@contextmanager
def eval_mode(*modules):
    """Eval mode for the duration, then each module's own mode back, also when
    the body raises or a generator running inside it is closed early."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


def check_number(value, name: str, low=None, high=None, *, integer=False, low_open=False, high_open=False,
                 allowed: str | None = None):
    """Raise ValueError unless `value` is a finite real (an int when `integer`)
    within the bounds; the message says what is allowed."""
    import math
    import numbers

    kind = numbers.Integral if integer else numbers.Real
    ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        if allowed is None:
            lo = "" if low is None else ("(" if low_open else "[") + f"{low}, "
            hi = "" if high is None else f"{high}" + (")" if high_open else "]")
            what = "an integer" if integer else "a number"
            if low is not None and high is not None:
                allowed = f"{what} in {lo}{hi}"
            elif low is not None:
                allowed = f"{what} {'>' if low_open else '>='} {low}"
            elif high is not None:
                allowed = f"{what} {'<' if high_open else '<='} {high}"
            else:
                allowed = f"a finite {what}"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def check_flag(value, name: str) -> bool:
    """Raise ValueError unless `value` is True or False."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


class ConfigMixin:
    """Read access by key (`config["dim"]`), as the plain dicts configs once were."""

    def __getitem__(self, name: str):
        if name not in {f.name for f in fields(self)}:
            raise KeyError(name)
        return getattr(self, name)

    def to_dict(self) -> dict:
        return asdict(self)


def build_config(cls, args: tuple, kwargs: dict, owner: str):
    """A `cls` dataclass from a module's arguments: one instance of it, or its
    fields by position and by name. `cls.ALIASES` maps other libraries' names
    onto ours and `cls.NO_OPS` lists options accepted and ignored; any other
    unknown option is refused by name, before anything is built."""
    names = [f.name for f in fields(cls)]
    if args and isinstance(args[0], cls):
        if len(args) > 1 or kwargs:
            raise ValueError(f"{owner} takes a {cls.__name__} or keyword arguments, not both")
        return args[0]
    if len(args) > len(names):
        raise ValueError(f"{owner} takes at most {len(names)} positional arguments, got {len(args)}")
    given = dict(zip(names, args))
    for key, value in kwargs.items():
        if key in cls.NO_OPS:
            if value not in cls.NO_OPS[key]:
                raise ValueError(f"{owner}: {key} must be one of {cls.NO_OPS[key]}, got {value!r}")
            continue
        name = cls.ALIASES.get(key, key)
        if name in given:
            raise ValueError(f"{owner} got {name} twice" + (f" (as {key})" if key != name else ""))
        given[name] = value
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ValueError(
            f"{owner} does not implement the option{'s' * (len(unknown) > 1)} {', '.join(unknown)}; "
            f"it takes {', '.join(names + sorted(cls.ALIASES) + sorted(cls.NO_OPS))}"
        )
    required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
    missing = [n for n in required if n not in given]
    if missing:
        raise ValueError(f"{owner} needs {', '.join(missing)}")
    return cls(**given)
