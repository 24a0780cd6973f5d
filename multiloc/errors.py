"""Errors a user can cause.

The CLI prints a :class:`UserError` as one line on stderr and exits with code 2; anything else is a
bug and keeps its traceback.
"""


class UserError(Exception):
    """Something the user asked for cannot be done (unknown model, malformed YAML, bad option).

    The message is one sentence that says what was wrong and what to do instead.

    >>> raise UserError("unknown model 'sdx'; known: sd15, sdxl")
    Traceback (most recent call last):
    multiloc.errors.UserError: unknown model 'sdx'; known: sd15, sdxl
    """
