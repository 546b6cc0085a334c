"""Errors that reach the user as one clear line (the CLI prints them without a traceback)."""


class LCKDError(Exception):
    """Base class of the project's user-facing errors."""


class InputError(LCKDError):
    """An input file or folder is unusable; the message names it and says why."""


class ModelFileError(LCKDError):
    """A model file is missing, not ours, unsafe or inconsistent; the message names it."""


class OutputError(LCKDError):
    """An output cannot be written where asked, or would replace an input; the message names it."""
