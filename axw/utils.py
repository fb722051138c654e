"""Small helpers shared across the library."""

from __future__ import annotations

from contextlib import contextmanager


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
