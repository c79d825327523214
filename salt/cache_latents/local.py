"""The local engine: DataLoader workers on this machine decode, the teacher runs in this process.

Each worker decodes a video once for all its views (inside an `IsolatedDecoder`, so a hang or a
crash skips the video instead of the run), JPEG round-trips the frames (the teacher sees exactly
what a student will decode), and the teacher runs on batches of `batch_size` views while the
shard writer thread compresses and writes finished shards.
"""

from __future__ import annotations

import time

import numpy as np
from torch.utils.data import Dataset

from salt.cache_latents.merge import TooManySkipped
from salt.cache_latents.shards import CachePlan, ShardAssembler
from salt.cache_latents.teacher import TeacherForward
from salt.latents import roundtrip_frames
from salt.runtime.loader_workers import close_workers, owned_loader
from salt.video.errors import VideoDecodeError
from salt.video.isolated import IsolatedDecoder
from salt.video.sources import VideoRecord
from salt.video.views import ViewConfig


def decode_views(
    decoder: IsolatedDecoder,
    record: VideoRecord,
    view_start: int,
    view_end: int,
    view: ViewConfig,
    frames_codec: str,
    quality: int,
) -> list[dict] | str:
    """The views of one video, each {"params", "encoded" (stored bytes), "frames" (decoded again)}; or the skip "
    "reason."""
    try:
        views = decoder(record.name, record, list(range(view_start, view_end)), view)
    except VideoDecodeError as err:
        return err.reason
    decoded = []
    for frames, params in views:
        encoded, frames_again = roundtrip_frames(frames, frames_codec, quality)
        decoded.append({"params": params, "encoded": encoded, "frames": frames_again})
    return decoded


class VideoViews(Dataset):
    """Item i: the views of one planned video, JPEG round-tripped, or the reason it was skipped."""

    def __init__(self, plan: CachePlan):
        self.work = plan.work()
        self.records = plan.records
        self.view = plan.view
        self.frames_codec, self.quality, self.timeout = (
            plan.job.frames_codec,
            plan.job.jpeg_quality,
            plan.job.decode_timeout,
        )
        self._decoder: IsolatedDecoder | None = None

    def __len__(self) -> int:
        return len(self.work)

    def __getitem__(self, index: int) -> dict:
        shard_index, video, view_start, view_end = self.work[index]
        if self._decoder is None:
            self._decoder = IsolatedDecoder(timeout=self.timeout)
        views = decode_views(
            self._decoder, self.records[video], view_start, view_end, self.view, self.frames_codec, self.quality
        )
        return {"shard": shard_index, "video": video, "views": views}


def run_local(plan: CachePlan, assembler: ShardAssembler) -> None:
    job = plan.job
    workers = job.workers
    loader = owned_loader(VideoViews(plan), workers, batch_size=None, prefetch_factor=4 if workers else None)
    teacher = TeacherForward(plan.encoder, job.precision, job.batch_size, compile=job.compile)
    batch: list[tuple[int, VideoRecord, dict]] = []

    def flush() -> None:
        if batch:
            latents = teacher(np.stack([item["frames"] for _, _, item in batch]))
            for (shard_index, record, item), tokens in zip(batch, latents):
                assembler.add_view(shard_index, record, item["params"], item["encoded"], tokens)
            batch.clear()

    progress = _progress(job, len(loader), plan.planned_views)
    views_done, decodable, skipped, started = 0, 0, [], time.perf_counter()
    allowed = job.max_skipped * len(plan.records)  # of the whole data: more here and the run cannot pass
    batches = iter(loader)
    try:
        for item in batches:
            if plan.stop.received:  # a scheduler's signal: what is decoded is kept, the rest is redone
                break
            record = plan.records[item["video"]]
            # Once the run cannot pass, the teacher stops and the rest is only decoded, to name every
            # unusable video in one go (not one per rerun).
            failing = len(skipped) > allowed
            if isinstance(item["views"], str):
                if not failing:
                    assembler.skip_video(item["shard"], record, item["views"])
                skipped.append({"path": record.name, "reason": item["views"]})
            elif not failing:
                for view_item in item["views"]:
                    batch.append((item["shard"], record, view_item))
                    if len(batch) >= job.batch_size:
                        flush()
                views_done += len(item["views"])
            else:
                decodable += len(item["views"])
            if progress is not None:
                progress.update(1)
                done_per_s = views_done / max(time.perf_counter() - started, 1e-9)
                progress.set_postfix({"views/s": f"{done_per_s:.1f}", "skipped": len(skipped)}, refresh=False)
        if len(skipped) > allowed:  # (views that decode count: the stop, not the data, left them uncached)
            raise TooManySkipped(skipped, len(plan.records), job.max_skipped, views_done + decodable)
        flush()
    finally:
        close_workers(batches)
        if progress is not None:
            progress.close()  # before any error line: the line must not land inside the bar


def _progress(job, videos: int, views: int):
    if not job.progress:
        return None
    from tqdm import tqdm

    return tqdm(
        total=videos,
        desc=f"cache rank {job.rank}/{job.world_size} ({views} views)",
        unit="video",
        dynamic_ncols=True,
        mininterval=1.0,
    )
