"""Imported by multiprocessing's fork server only (its preload, `salt.runtime.loader_workers`): the fork
server that starts a rank's DataLoader workers leaves a scheduler's stop signals alone.

Launchers signal whole process trees. A fork server that died of SIGTERM would orphan the
workers it forked, and PyTorch's worker watchdog, which checks a worker's parent, would end
them within seconds, in the middle of the rank's checkpoint. So the fork server ignores them,
and blocks them too: a forked worker starts with the signals blocked in every thread it will
have (a worker starts threads of its own before its init function runs), and takes them from
one thread of its own (`salt.runtime.loader_workers`). The fork server still exits with the process
that started it (its "alive" pipe closes)."""

import signal

from salt.runtime.preemption import STOP_SIGNAL_CANDIDATES, ignore_stop_signals

ignore_stop_signals()
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.Signals[name] for name in STOP_SIGNAL_CANDIDATES])
