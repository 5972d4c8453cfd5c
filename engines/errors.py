"""Errors that carry a message meant for the user: what went wrong, with which file or
parameter, and what to do about it."""


class VsrkitError(Exception):
    """Base class for errors whose message is shown to the user as is."""


class InputError(VsrkitError, ValueError):
    """A file or parameter the user gave cannot be used."""


class ModelNotFoundError(VsrkitError, FileNotFoundError):
    """A model file could not be found; the message lists where we looked."""


class MissingDependencyError(VsrkitError, ImportError):
    """An optional package a feature needs is not installed; the message says what to install."""
