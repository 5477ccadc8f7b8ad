"""What of the library's ``logging`` reaches the terminal: the command line decides, the library only logs.

:func:`show_library_messages` gives the ``fresnet`` logger one handler (added once per process)
that prints INFO messages as they are and warnings as ``warning: ...`` on standard output (looked
up at each message, so a live progress bar that redirects it keeps them above the bar). Under
``torchrun`` only rank 0 prints them; the other ranks print errors only.
"""
from __future__ import annotations

import logging
import os
import sys


class _TerminalHandler(logging.StreamHandler):
    """A stream handler on whatever ``sys.stdout`` is when a message arrives."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ sets it; the property above wins
        pass


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        return message if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {message}"


def show_library_messages() -> None:
    logger = logging.getLogger("fresnet")
    if any(isinstance(h, _TerminalHandler) for h in logger.handlers):
        return
    handler = _TerminalHandler()
    handler.setFormatter(_Format())
    handler.setLevel(logging.INFO if os.environ.get("RANK", "0") == "0" else logging.ERROR)
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
