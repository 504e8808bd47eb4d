"""The one exception type for mistakes a user can make (bad path, bad field, bad option).

The CLI turns a `UserError` into one line on stderr and exit code 2; library callers can catch it.
"""


class UserError(Exception):
    """A problem with the user's input or options, reported as one line, never a traceback."""
