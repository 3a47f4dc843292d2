"""Results: store and read what actors return."""

from .backend import ResultBackend
from .errors import CompositionCancelled, ResultError, ResultFailure, ResultMissing, ResultTimeout
from .middleware import Results

__all__ = [
    "CompositionCancelled",
    "ResultBackend",
    "ResultError",
    "ResultFailure",
    "ResultMissing",
    "ResultTimeout",
    "Results",
]
