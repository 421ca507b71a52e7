"""The one exception type for mistakes a user can fix.

Entry points catch :class:`UserError` and print its message alone (no traceback), because the
message already says what is wrong and how to fix it.
"""


class UserError(Exception):
    """A problem with the user's configuration, data or environment, with the fix in its message."""
