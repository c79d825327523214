"""A decoder that hangs on files named *hang*, run inside IsolatedDecoder's child process."""

import time
from pathlib import Path

from salt.video.decode import decode_record_views


def hang_on_marked(record, view_indices, cfg):
    if "hang" in Path(record.path).name:
        time.sleep(3600)
    return decode_record_views(record, view_indices, cfg)
