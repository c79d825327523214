"""One error policy for every entry point (`salt …` and `deepspeed salt/train_*.py`): errors
that describe bad input become one line, `error: <what> — <what to do>`, exit status 1 (2 for
a misused command line); anything else is a bug and keeps its traceback. `SALT_DEBUG=1` (or
`salt --debug`) keeps every traceback."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

# botocore's errors by name: a missing or wrong account and an unreachable endpoint are the
# user's to fix, and naming them here keeps botocore an optional import.
STORE_ERRORS = {
    "NoCredentialsError": "no credentials for the object store — set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
    "(or a profile), or use a local path",
    "PartialCredentialsError": "incomplete credentials for the object store — set both AWS_ACCESS_KEY_ID and "
    "AWS_SECRET_ACCESS_KEY",
    "EndpointConnectionError": "the object store cannot be reached — check FSSPEC_S3_ENDPOINT_URL / the network, or "
    "use a local path",
    "ConnectTimeoutError": "the object store did not answer — check FSSPEC_S3_ENDPOINT_URL / the network",
    "NoSuchBucket": "the bucket does not exist — create it or fix the URL",
}


def user_errors() -> tuple[type[Exception], ...]:
    """Errors that describe bad input (a missing file, a corrupt cache, a wrong checkpoint, …)."""
    from salt.latents import CacheError
    from salt.latents.errors import CacheWriteError
    from salt.models.errors import CheckpointError, ExportError
    from salt.tools.reproduce_chain import ReproduceError
    from salt.training.errors import TrainingError
    from salt.video import VideoDecodeError, VideoSourceError

    return (
        CacheError,
        CacheWriteError,
        CheckpointError,
        ExportError,
        ReproduceError,
        TrainingError,
        VideoDecodeError,
        VideoSourceError,
    )


def debugging() -> bool:
    return os.environ.get("SALT_DEBUG", "") not in ("", "0")


def one_line(err: BaseException) -> str | None:
    """The one line for a user error; None for a bug (which keeps its traceback)."""
    from salt.config import ConfigError

    if isinstance(err, ConfigError) or isinstance(err, user_errors()):
        return f"error: {err}"
    if isinstance(err, PermissionError):
        return (
            f"error: permission denied: {err.filename or err} — choose "
            "a folder you can write to, or change its permissions"
        )
    for cause in _chain(err):
        for kind in type(cause).__mro__:
            if kind.__name__ in STORE_ERRORS:
                return f"error: {STORE_ERRORS[kind.__name__]} ({cause})"
    return None


def _chain(err: BaseException) -> Iterator[BaseException]:
    """The error and what caused it (s3fs and fsspec wrap botocore's errors)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn a user error into `SystemExit("error: …")` (exit status 1, no traceback)."""
    try:
        yield
    except Exception as err:
        line = None if debugging() else one_line(err)
        if line is None:
            raise
        raise SystemExit(line) from None
