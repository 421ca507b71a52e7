"""The one exception type for mistakes a user can fix.

Entry points catch :class:`UserError` and print its message alone (no traceback), because the
message already says what is wrong and how to fix it.
"""

import sys


class UserError(Exception):
    """A problem with the user's configuration, data or environment, with the fix in its message."""


def find_user_error(exc: BaseException | None) -> UserError | None:
    """The :class:`UserError` behind ``exc``, also when a library wrapped it (Hydra's instantiate)."""
    while exc is not None:
        if isinstance(exc, UserError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def report_user_error(prog: str, exc: BaseException) -> int:
    """For an entry point's ``except``: print the :class:`UserError` behind ``exc`` as
    ``prog: error: ...`` and return the exit code 2; anything else is raised again."""
    user_error = find_user_error(exc)
    if user_error is None:
        raise exc
    print(f"{prog}: error: {user_error}", file=sys.stderr, flush=True)
    return 2


def require_positive(value: object, key: str, integer: bool = True) -> None:
    """Raise a :class:`UserError` naming ``key`` unless ``value`` is a positive integer (or number)."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
        what = "a positive integer" if integer else "a positive number"
        raise UserError(f"{key} must be {what}, got {value!r}.")
