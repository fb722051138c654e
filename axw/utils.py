"""Small helpers shared across the library."""

from __future__ import annotations

from functools import wraps


def exists(val):
    return val is not None


def default(val, d):
    return val if exists(val) else d


def eval_mode(fn):
    """Run a module method in eval mode and restore the caller's mode after,
    also when the method raises or is a generator the caller stops early."""

    @wraps(fn)
    def inner(self, *args, **kwargs):
        was_training = self.training
        self.eval()
        try:
            return fn(self, *args, **kwargs)
        finally:
            self.train(was_training)

    return inner
