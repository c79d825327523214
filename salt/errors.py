"""One error policy for every entry point (`salt …` and `deepspeed salt/train_*.py`): errors
that describe bad input become one line that says what to do; anything else is a bug and keeps
its traceback."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


def user_errors() -> tuple[type[Exception], ...]:
    """Errors that describe bad input (a missing file, a corrupt cache, a wrong checkpoint, …)."""
    from salt.latents import CacheError
    from salt.latents.errors import CacheWriteError
    from salt.models.errors import CheckpointError, ExportError
    from salt.reproduce import ReproduceError
    from salt.training.errors import TrainingError
    from salt.video import VideoDecodeError, VideoSourceError

    return (CacheError, CacheWriteError, CheckpointError, ExportError, ReproduceError, TrainingError, VideoDecodeError, VideoSourceError)


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn a user error into `SystemExit("error: …")` (exit status 1, no traceback)."""
    from salt.config import ConfigError

    try:
        yield
    except ConfigError as err:
        raise SystemExit(f"config error: {err}") from None
    except Exception as err:
        if isinstance(err, user_errors()):
            raise SystemExit(f"error: {err}") from None
        raise
