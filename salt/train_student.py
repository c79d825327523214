"""`deepspeed [--num_gpus N] salt/train_student.py --config …`: a thin entry point.

The launcher puts this file's folder (salt/) first on sys.path; swap it for the repository
root so `salt` is imported as the package and nothing in salt/ shadows another module.
"""

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)

from salt.training.student import main  # noqa: E402

if __name__ == "__main__":
    main()
