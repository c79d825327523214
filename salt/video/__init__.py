"""Video input: sources, decoding (isolated), replayable views, the synthetic data set."""

from salt.video.decode import VideoDecodeError, decode_views, open_reader, read_frames, replay_view
from salt.video.isolated import IsolatedDecoder
from salt.video.sources import VideoRecord, VideoSourceError, list_folder, load_records, read_csv
from salt.video.views import ViewConfig, ViewParams, render_view, sample_view, to_model_input

__all__ = [
    "IsolatedDecoder",
    "VideoDecodeError",
    "VideoRecord",
    "VideoSourceError",
    "ViewConfig",
    "ViewParams",
    "decode_views",
    "list_folder",
    "load_records",
    "open_reader",
    "read_csv",
    "read_frames",
    "render_view",
    "replay_view",
    "sample_view",
    "to_model_input",
]
