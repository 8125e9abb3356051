"""Typed errors of the library.

Every error that a user's input can cause (a bad file, bad data, a setting out of range, a model
the library cannot handle) is an :class:`InputError`. Entry points map these, and only these, to
"bad input" (the command line's exit code 2); any other exception is a bug in neuralcleanse or in
a framework and is reported as such. The messages are one line and never mention command-line
flags: the command line adds its own wording where it needs to.
"""

from __future__ import annotations


class NeuralCleanseError(Exception):
    """Base class of the errors neuralcleanse raises on purpose."""


class InputError(NeuralCleanseError, ValueError):
    """The user's input (model, data, file or setting) cannot be used; the message says why.

    A ``ValueError``, so code written against the ART interface that catches ``ValueError``
    keeps working.
    """


class InputTypeError(InputError, TypeError):
    """An input of the wrong kind (e.g. an unsupported model object); also a ``TypeError``."""


class LoadError(InputError):
    """A model or data file could not be used; the message says why and what to do."""


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its type name when it has none)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
