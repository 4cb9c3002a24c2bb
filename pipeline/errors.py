"""Errors the command line reports as a message (no traceback) with a non-zero exit code."""

from __future__ import annotations


class MatshiftError(RuntimeError):
    """An expected failure: bad input, a changed source file, a missing upstream output.

    The message must name the offending input (file, row, formula, key) and say what to do.
    """


class SourceChangedError(MatshiftError):
    """A source file whose sha256 no longer matches the one recorded in the manifest."""


class MissingInputError(MatshiftError):
    """An upstream output a stage needs is missing or unreadable."""
