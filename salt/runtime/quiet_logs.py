"""Third-party start-up lines that bury the project's own: dropped by exact text, so every
other warning (DeepSpeed's real ones included) still shows. `SALT_DEBUG=1` keeps them all."""

from __future__ import annotations

import logging

# logger name -> starts of messages that say nothing a user can act on
STARTUP_NOISE = {
    "DeepSpeed": ("Setting accelerator to CPU", "Setting ds_accelerator to"),
    "torch.utils.cpp_extension": ("No CUDA runtime is found",),
}


class _DropStartupNoise(logging.Filter):
    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


def quiet_third_party() -> None:
    """Install the filters (before DeepSpeed or torch's extension loader log anything)."""
    from salt.errors import debugging

    if debugging():
        return
    for name, starts in STARTUP_NOISE.items():
        logger = logging.getLogger(name)  # the same object the library configures later
        if not any(isinstance(f, _DropStartupNoise) for f in logger.filters):
            logger.addFilter(_DropStartupNoise(starts))
