"""Stopping on a scheduler's signal: finish the work in flight, save it, exit 75 (resumable).

Clusters end a job with a signal and a grace period: SLURM sends SIGTERM (or the signal of
`--signal`) and SIGKILL after its KillWait; Kubernetes SIGTERM, then SIGKILL after
`terminationGracePeriodSeconds`; a terminal's Ctrl-C is SIGINT. Inside a `StopSignals` block
those signals only set a flag, which the work loop reads where it can stop cleanly (after an
optimiser step, between shards); it saves, then raises `Interrupted`, which every entry point
turns into one line and exit status 75 (EX_TEMPFAIL, "try again"): distinct from success (0)
and failure (1), so a requeue script can test for it. A second signal while saving changes
nothing (the flag is set once); only SIGKILL can cut the save short, and the checkpoint commit
is built to survive that.

Helper processes (decoder children `ignore_stop_signals`; loader workers obey only their owner,
salt/runtime/loader_workers.py) leave these signals to their owner: launchers signal whole process
trees, and a helper that died on SIGTERM would take its owner down before it could save.
"""

from __future__ import annotations

import signal
import threading

from salt.errors import Interrupted

EXIT_RESUMABLE = Interrupted.exit_status  # sysexits.h EX_TEMPFAIL: interrupted after saving; rerun to continue
DEFAULT_STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")
STOP_SIGNAL_CANDIDATES = (*DEFAULT_STOP_SIGNALS, "SIGUSR2")  # what helper processes leave to their owner


def parse_signals(names) -> list[signal.Signals]:
    """Signal names (SIGTERM, TERM, …) as signals; an unknown or uncatchable name raises ValueError."""
    found = []
    for name in names:
        full = str(name).upper() if str(name).upper().startswith("SIG") else f"SIG{str(name).upper()}"
        if full in ("SIGKILL", "SIGSTOP") or not hasattr(signal, full) or full.startswith("SIG_"):
            raise ValueError(
                f"{name!r} is not a signal a run can catch — use names like SIGTERM, SIGINT, SIGUSR1, SIGUSR2"
            )
        found.append(signal.Signals[full])
    return found


class StopSignals:
    """While active, the signals in `names` set `received` (the first one's name) instead of
    ending the process. Installed from the main thread only (Python's rule); elsewhere it is inert."""

    def __init__(self, names=DEFAULT_STOP_SIGNALS):
        self.signals = parse_signals(names)
        self.received: str | None = None
        self._previous: dict[signal.Signals, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _note(self, signum: int, frame) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name

    @property
    def code(self) -> int:
        """The received signal's number (0: none): what ranks reduce to agree on stopping."""
        return int(signal.Signals[self.received]) if self.received else 0


def signal_name(code: int) -> str:
    return signal.Signals(code).name


def ignore_stop_signals() -> None:
    """In a helper process: let its owner decide when it stops (see the module docstring)."""
    for name in STOP_SIGNAL_CANDIDATES:
        signal.signal(signal.Signals[name], signal.SIG_IGN)
