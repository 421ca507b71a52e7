"""The one exception type for mistakes a user can fix.

Entry points catch :class:`UserError` and print its message alone (no traceback), because the
message already says what is wrong and how to fix it.
"""


class UserError(Exception):
    """A problem with the user's configuration, data or environment, with the fix in its message."""


def find_user_error(exc: BaseException | None) -> UserError | None:
    """The :class:`UserError` behind ``exc``, also when a library wrapped it (Hydra's instantiate)."""
    while exc is not None:
        if isinstance(exc, UserError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None
