"""User-facing errors.

Anything raised as `CrosscoderUserError` is bad input the user can fix; the CLI prints
its message on one line and exits non-zero, with no traceback.
"""

from __future__ import annotations


class CrosscoderUserError(ValueError):
    """Bad input: a config key, a cache, a model pair, a checkpoint. The message names
    the problem and the fix."""


class DataError(CrosscoderUserError):
    """Bad data met while streaming (NaN/inf, shape drift). Raised mid-run, after the
    runner has saved a checkpoint so no work is lost."""
