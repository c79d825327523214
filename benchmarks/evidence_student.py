"""One student run of the GPU evidence (section process2): `salt train-student` in this process,
its batches in windows replayed from memory (salt/tools/replayed_student.py: a window of WINDOW
steps from the cache, then the same WINDOW again from memory, ...), each metrics record stamped
with the wall-clock time (for the GPU sampler's window), then the device's peak memory written
to PEAK_JSON.

    python benchmarks/evidence_student.py PEAK_JSON WINDOW --config CONFIG [--set KEY=VALUE ...]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str]) -> None:
    peak_json, window, rest = Path(argv[0]), argv[1], argv[2:]
    import torch

    from salt.tools import replayed_student
    from salt.training import metrics

    write = metrics.MetricsLog.write

    def stamped(self, record: dict) -> None:
        write(self, {**record, "time": time.time()})

    metrics.MetricsLog.write = stamped
    try:
        replayed_student.main([window, *rest])
    finally:
        cuda = torch.cuda.is_available()
        peak = {
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
        }
        peak_json.write_text(json.dumps(peak))


if __name__ == "__main__":
    main(sys.argv[1:])
