"""Errors the workbench raises on bad input or a failed edit.

Every error says *where* the problem is: a data error names the file, the record index and the
field; a config error names the option and lists the valid values. Researchers feed the
workbench their own data; a bare KeyError from deep inside a loader wastes their afternoon.
"""
from __future__ import annotations

from collections.abc import Iterable


class WorkbenchError(Exception):
    """Base class: anything the workbench raises on purpose."""


class ConfigError(WorkbenchError, ValueError):
    """A bad configuration value or an unknown option."""

    @classmethod
    def bad_choice(cls, option: str, value, valid: Iterable) -> "ConfigError":
        valid = ", ".join(repr(v) for v in valid)
        return cls(f"{option}={value!r} is not valid; choose one of: {valid}")


class DataError(WorkbenchError, ValueError):
    """A malformed benchmark file or record."""

    def __init__(self, message: str, file=None, record: int | None = None, field: str | None = None):
        self.file, self.record, self.field = file, record, field
        where = []
        if file is not None:
            where.append(f"file {file}")
        if record is not None:
            where.append(f"record {record}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class DataNotFound(WorkbenchError, FileNotFoundError):
    """A benchmark file that is on none of the search paths."""


class EditError(WorkbenchError, RuntimeError):
    """An edit that failed (NaN loss, ...). The model has been restored when this is raised."""


class ResourceError(WorkbenchError, MemoryError):
    """An edit or a load that cannot fit in the memory of this machine."""


class OverwriteWarning(UserWarning):
    """Edits made in one call that can overwrite each other (a depth-first schedule given more requests
    than one batch): `wb.edit(..., sequential=True)` says that is intended."""


class FormatWarning(UserWarning):
    """A model asked in another prompt format (chat template or plain) than its edit was trained in."""


class CappedWarning(UserWarning):
    """A reference answer longer than the generation budget: its recall cannot reach 1."""
