"""The command line that started this process, as a shell would read it back (recorded in what
a command writes: a cache's manifest, a compacted cache's)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]])
