"""One exception type for bad user input, so the command line can print it without a traceback."""


class FresnetError(ValueError):
    """A user-facing error: the message says what was wrong, where, and how to fix it."""
