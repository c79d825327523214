"""One error policy for every entry point (`salt …` and `deepspeed salt/train_*.py`): errors
that describe bad input become one line, `error: <what> — <what to do>`, exit status 1 (2 for
a misused command line); a run stopped by a signal after saving, its line and exit status 75;
anything else is a bug and keeps its traceback. `SALT_DEBUG=1` (or `salt --debug`) keeps every
traceback.

The family: every error that describes bad input subclasses `UserError` (config, checkpoints,
exports, videos, training runs, locks, the claims chain). The cache contract (`salt/latents/`)
imports nothing else from `salt`, so its errors carry the family's mark instead
(`user_error = True`, what `is_user_error` reads). This module imports nothing from `salt`: any
module may raise these without importing what sits above it.
"""

from __future__ import annotations

import errno
import os
import sys
from contextlib import contextmanager
from typing import Iterator


class UserError(Exception):
    """Bad input a user can fix: its message says what and what to do. `every_rank`: raised
    alike on every rank of a run, so rank 0 alone prints it."""

    user_error = True
    every_rank = False


class Interrupted(UserError):
    """The work stopped on a signal after saving what it had done: one line, exit status 75."""

    exit_status = 75  # sysexits.h EX_TEMPFAIL: rerun to continue
    every_rank = True


def is_user_error(err: BaseException) -> bool:
    return getattr(err, "user_error", False) is True


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


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# What a collective raises on the ranks that are left when another rank's process has ended.
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


class NoSpaceLeft(OSError):
    """No space left on the device while writing `path`; for writers whose own error does not
    say so (torch's checkpoint writer raises a RuntimeError with a file offset). `every_rank`:
    raised alike on every rank of a run, so rank 0 alone prints it."""

    def __init__(self, path, every_rank: bool = False):
        super().__init__(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        self.every_rank = every_rank


def no_space(err: BaseException) -> OSError | None:
    """The full-disk error in `err`'s chain, if that is what `err` is."""
    for cause in _chain(err):
        if isinstance(cause, OSError) and cause.errno in NO_SPACE:
            return cause
    return None


def debugging() -> bool:
    return os.environ.get("SALT_DEBUG", "") not in ("", "0")


def one_line(err: BaseException) -> str | None:
    """The one line for a user error; None for a bug (which keeps its traceback)."""
    if is_user_error(err):
        return f"error: {err}"
    full = no_space(err)
    if full is not None:
        where = full.filename or "a file"
        return f"error: no space left on device writing {where} — free space or choose another folder"
    if isinstance(err, PermissionError):
        return (
            f"error: permission denied: {err.filename or err} — choose "
            "a folder you can write to, or change its permissions"
        )
    for cause in _chain(err):
        for kind in type(cause).__mro__:
            if kind.__name__ in STORE_ERRORS:
                return f"error: {STORE_ERRORS[kind.__name__]} ({cause})"
    if isinstance(err, RuntimeError) and any(text in str(err) for text in PEER_GONE) and "RANK" in os.environ:
        return (
            f"error: rank {os.environ['RANK']} stopped because another rank of the run ended (its own lines "
            "say why; a killed rank prints none) — fix that cause, then rerun with --resume"
        )
    return None


def _chain(err: BaseException) -> Iterator[BaseException]:
    """The error and what caused it (s3fs and fsspec wrap botocore's errors)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _printed_here(err: BaseException) -> bool:
    """An error every rank raises alike is printed by rank 0 alone."""
    return not getattr(err, "every_rank", False) or os.environ.get("RANK", "0") == "0"


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn a user error into `SystemExit("error: …")` (exit status 1, no traceback); a run
    stopped by a signal after saving (`Interrupted`) into its line and exit status 75."""
    try:
        yield
    except Interrupted as err:
        if _printed_here(err):
            print(err, file=sys.stderr, flush=True)
        raise SystemExit(err.exit_status) from None
    except KeyboardInterrupt:  # Ctrl-C before a stage's handlers were in place: nothing to save yet
        if debugging():
            raise
        print("interrupted (nothing was saved: the work had not started)", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    except Exception as err:
        line = None if debugging() else one_line(err)
        if line is None:
            raise
        if not _printed_here(err):
            raise SystemExit(1) from None
        raise SystemExit(line) from None
