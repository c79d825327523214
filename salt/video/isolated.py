"""Decoding where a hang or a crash cannot take the run down.

decord ignores signals and can hang or segfault on broken files. An `IsolatedDecoder` runs a
decode function in a child Python process (plain `subprocess`, so it also works from inside
daemonic DataLoader workers, which may not fork multiprocessing children) and waits at most
`timeout` seconds per video. A hang or a crash kills the child, raises `VideoDecodeError`
naming the file, and the next call starts a fresh child.

Messages are length-prefixed pickles over the child's stdin/stdout; both ends are this
package, so nothing foreign is ever unpickled.
"""

from __future__ import annotations

import importlib
import os
import pickle
import select
import struct
import subprocess
import sys
import time
from typing import Any

from salt.errors import debugging
from salt.video.errors import VideoDecodeError
from salt.video.views import RENDER_IMPORTS

_HEADER = struct.Struct("<Q")
DEFAULT_DECODE = "salt.video.decode:decode_record_views"
STARTUP_TIMEOUT_S = 300.0


class IsolatedDecoder:
    """Call `function(*args)` in a child process with a timeout; one call at a time."""

    def __init__(
        self, function: str = DEFAULT_DECODE, timeout: float = 60.0, preload: tuple[str, ...] = RENDER_IMPORTS
    ):
        self.function = function
        self.timeout = timeout
        self.preload = preload  # modules the child imports before its first video (start-up, not decoding)
        self._child: subprocess.Popen | None = None

    def __call__(self, name: str, *args: Any) -> Any:
        child = self._ensure_child()
        try:
            _write_message(child.stdin, (self.function, args))
            status, payload = _read_message(child.stdout, time.monotonic() + self.timeout)
        except TimeoutError:
            self.close()
            raise VideoDecodeError(
                name, f"decoding took longer than {self.timeout:g} s; skipped (decoder restarted)"
            ) from None
        except (EOFError, BrokenPipeError, OSError):
            code = self._reap()
            raise VideoDecodeError(
                name, f"the decoder process died ({_describe_exit(code)}) on this file; skipped"
            ) from None
        if status == "ok":
            return payload
        kind, message = payload
        if kind == "VideoDecodeError":
            raise VideoDecodeError(name, message)
        raise VideoDecodeError(name, f"{kind}: {message}")

    def close(self) -> None:
        if self._child is not None:
            self._child.kill()
            self._child.wait()
            self._child = None

    def __enter__(self) -> "IsolatedDecoder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def _ensure_child(self) -> subprocess.Popen:
        if self._child is None or self._child.poll() is not None:
            env = dict(os.environ)
            # The child must import what the parent can (tests pass stub functions by name).
            env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
            env.setdefault("OMP_NUM_THREADS", "1")
            self._child = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from salt.video.isolated import _serve; _serve()",
                    self.function,
                    *self.preload,
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                # decord's and ffmpeg's own lines ("moov atom not found", "ERROR opening: …" with
                # its build path) repeat what the VideoDecodeError says; SALT_DEBUG=1 shows them.
                stderr=None if debugging() else subprocess.DEVNULL,
                env=env,
            )
            # Start-up (Python, numpy, decord, torch imports) can take seconds on a loaded machine; it
            # must not count against the first video's timeout, or a good video is skipped.
            try:
                status, payload = _read_message(self._child.stdout, time.monotonic() + STARTUP_TIMEOUT_S)
            except (TimeoutError, EOFError, OSError):
                code = self._child.poll()
                self.close()
                why = _describe_exit(code) if code is not None else f"no reply in {STARTUP_TIMEOUT_S:g} s"
                raise RuntimeError(f"the decoder process for {self.function} did not start ({why})") from None
            if status != "ready":
                self.close()
                raise RuntimeError(f"the decoder process cannot load {self.function}: {payload[0]}: {payload[1]}")
        return self._child

    def _reap(self) -> int | None:
        child, self._child = self._child, None
        if child is None:
            return None
        try:
            return child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.kill()
            return child.wait()


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit status"
    if code < 0:
        return f"killed by signal {-code}"
    return f"exit status {code}"


def _write_message(stream, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def _read_exactly(stream, size: int, deadline: float | None) -> bytes:
    fd = stream.fileno()
    chunks, remaining = [], size
    while remaining:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _read_message(stream, deadline: float | None) -> Any:
    (size,) = _HEADER.unpack(_read_exactly(stream, _HEADER.size, deadline))
    return pickle.loads(_read_exactly(stream, size, deadline))


def _serve() -> None:
    """Child side: read (function, args), answer ("ok", result) or ("error", (kind, message)).
    A scheduler's stop signal is for the owner, which ends this child when it is done."""
    from salt.runtime.preemption import ignore_stop_signals

    ignore_stop_signals()
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # stray prints must not corrupt the message stream
    functions: dict[str, Any] = {}
    try:  # load the function before saying ready: its imports are start-up, not decoding
        module_name, _, attr = sys.argv[1].partition(":")
        functions[sys.argv[1]] = getattr(importlib.import_module(module_name), attr)
        for preload in sys.argv[2:]:
            importlib.import_module(preload)
        _write_message(replies, ("ready", None))
    except Exception as err:
        _write_message(replies, ("error", (type(err).__name__, str(err))))
        return
    while True:
        try:
            function_name, args = _read_message(requests, None)
        except EOFError:
            return
        try:
            if function_name not in functions:
                module_name, _, attr = function_name.partition(":")
                functions[function_name] = getattr(importlib.import_module(module_name), attr)
            reply = ("ok", functions[function_name](*args))
        except Exception as err:
            reason = err.reason if isinstance(err, VideoDecodeError) else str(err)
            reply = ("error", (type(err).__name__, reason))
        _write_message(replies, reply)
