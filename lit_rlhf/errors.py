"""Errors a user can fix: a bad option value, data file, model folder or checkpoint.

Every such error is a :class:`UserError` whose message names what is wrong (the file and row, the option, the field,
the checkpoint) and how to fix it. ``lit-rlhf`` prints it as one ``error:`` line and exits with status 2, without a
Python traceback; ``--debug`` (or ``LIT_RLHF_DEBUG=1``) shows the traceback too. Any other exception is a bug in
lit_rlhf or a library and keeps its traceback.
"""

from __future__ import annotations

import os

DEBUG_ENV = "LIT_RLHF_DEBUG"
"""Environment variable: set to ``1`` to see the traceback of a :class:`UserError`."""


class UserError(ValueError):
    """An error the user can fix; the message says what is wrong and how to fix it."""


class ConfigError(UserError):
    """An option value out of range or of the wrong kind (``--model.init_args.clip_range -0.2``)."""


def debug_requested() -> bool:
    """Whether ``LIT_RLHF_DEBUG`` asks for tracebacks of user errors."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
