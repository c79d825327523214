"""The one error every decoder raises for a video it cannot read (its own module, so that the
decoders and the view layer above them share it without importing each other)."""

from __future__ import annotations

import os
from pathlib import Path

from salt.errors import UserError


class VideoDecodeError(UserError, RuntimeError):
    """A video that cannot be decoded: missing, empty, broken, not a video, or hung."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


def check_file(path: str | os.PathLike, name: str) -> None:
    """Raise `VideoDecodeError` for a local file that is missing or empty: no decoder needed to say so."""
    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(name, "file not found; check the path in the data list")
    if path.stat().st_size == 0:
        raise VideoDecodeError(name, "empty file (0 bytes); remove it from the data list or replace it")


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__
