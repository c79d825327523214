"""The models' exception type (its own module, so that checkpoint and converters share it
without importing each other)."""

from salt.errors import UserError


class CheckpointError(UserError, ValueError):
    """A checkpoint cannot be read, is corrupt, or does not match the architecture."""


class ExportError(UserError, ValueError):
    """An encoder cannot be exported exactly, or the export's destination is taken."""
