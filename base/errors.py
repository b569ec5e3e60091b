"""The base class of errors a user can act on (bad input, missing library, mismatching artifact).

The CLI prints these as one line instead of a traceback; everything else is a bug and keeps its
traceback. Domain errors also keep a standard base (ValueError, RuntimeError) for callers that
catch those.
"""

__all__ = ["WherevitError", "InvalidRequest"]


class WherevitError(Exception):
    """An error whose message tells the user what to fix."""


class InvalidRequest(WherevitError, ValueError):
    """An option, argument or input value that cannot be honoured (the message says which and why)."""
