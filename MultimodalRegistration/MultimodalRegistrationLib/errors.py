"""Exceptions with one-line messages meant for users (the CLI prints them without a traceback)."""


class MMRegError(Exception):
    """Base class of every error the tool reports to a user."""


class InputError(MMRegError):
    """An input file or parameter is unusable (missing, wrong shape, wrong grid, ...)."""


class CheckpointError(MMRegError):
    """A translator checkpoint is missing, tampered with, or not one of ours."""


class RegistrationError(MMRegError):
    """The registration could not run (e.g. no subset overlaps the fixed field of view)."""
