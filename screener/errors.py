"""Exception types raised by screener's library code.

Every error a user can cause (bad input files, a model that cannot be loaded, a missing optional
package) is one of these, with a message that says what went wrong and how to fix it. The CLI
turns them into a one-line message and exit code 2; library users can catch `ScreenerError`.
"""

from __future__ import annotations


class ScreenerError(Exception):
    """Base class of every error screener raises on purpose."""


def one_line(text: str) -> str:
    """`text` with control characters escaped (a newline becomes `\\n`), so a message that
    quotes data stays on one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class InputError(ScreenerError):
    """A data file (or one row of it) cannot be used.

    Carries the file, the line (or row) number and the field, so that the message points the
    user at the exact place to fix.
    """

    def __init__(
        self, message: str, *, source: str, line: int | None = None, field: str | None = None
    ) -> None:
        self.source = source
        self.line = line
        self.field = field
        where = source if line is None else f"{source}:{line}"
        if field is not None:
            where += f" [{field}]"
        super().__init__(one_line(f"{where}: {message}"))


class ModelLoadError(ScreenerError):
    """A model spec cannot be resolved or loaded."""


class MissingDependencyError(ScreenerError):
    """An optional package is needed for the requested feature; the message has the install
    command."""


class ConfigError(ScreenerError):
    """An argument or setting has an invalid value."""


class EndpointError(ScreenerError):
    """A model served over HTTP could not be reached or refused a request."""


class StoreError(ScreenerError):
    """A DuckDB file (the run store or a run's screen.duckdb) cannot be written."""


class RowError(ScreenerError):
    """One row cannot be used. Readers turn it into a `RejectedRow` (or, with the `fail`
    policy, an `InputError`); `field` names the part of the record at fault."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        reason = one_line(reason)
        super().__init__(reason)
        self.reason = reason
        self.field = field


class TraitPackError(ScreenerError):
    """A trait pack is missing, unreadable or breaks a rule of the pack format."""


class VectorFileError(ScreenerError):
    """A persona vector file is unreadable, invalid, or belongs to another model."""
