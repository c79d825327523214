"""`salt cache-latents`: process 1. The frozen teacher's latents over augmented views, stored once.

For each video, K views are decoded in one pass (DataLoader workers, each with a contained
decoder), their frames JPEG-encoded and decoded again (the teacher sees exactly what a student
will decode), the teacher runs in batches on the full clips, and a writer thread compresses and
writes whole shards while the next batch runs.

Work is planned in shards: fixed blocks of `shard_videos` videos × a range of views. A shard is
written atomically and then marked done (`done/<shard>.json`); a killed run, started again with
the same command, redoes only shards without a mark. A larger `--views` or more videos adds
shards for what is missing and never touches the old ones. Rank r of W takes the video blocks
b ≡ r (mod W); when every planned shard is done, `manifest.json` is written (the merge).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import shlex
import shutil
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from salt.latents import (
    FRAME_EXT,
    EncodedSample,
    LatentCodec,
    Manifest,
    ShardId,
    ShardRecord,
    ZarrCacheWriter,
    frames_decoder_id,
    roundtrip_frames,
    sample_key,
    write_json_atomic,
    write_wds_shard,
)
from salt.latents.errors import CacheWriteError
from salt.models import fingerprint, load_encoder
from salt.video.decode import VideoDecodeError
from salt.video.isolated import IsolatedDecoder
from salt.video.sources import VideoRecord, load_records
from salt.video.views import IMAGENET_MEAN, IMAGENET_STD, ViewConfig, to_model_input

SETTINGS = "cache_settings.json"  # what a cache was made with; a rerun must match it
CODECS = {
    "blosc-zstd": {"id": "blosc", "cname": "zstd", "clevel": 3, "shuffle": 1},
    "blosc-lz4": {"id": "blosc", "cname": "lz4", "clevel": 5, "shuffle": 1},
    "zstd": {"id": "zstd", "level": 3},
    "none": None,
}


@dataclass
class CacheJob:
    teacher: str
    data: str
    out: str
    views: int = 1
    formats: tuple[str, ...] = ("wds",)
    dtype: str = "fp16"
    codec: str = "blosc-zstd"
    frames_codec: str = "jpeg"
    jpeg_quality: int = 90
    batch_size: int = 16
    workers: int = 2
    max_videos: int = 0
    shard_videos: int = 32
    seed: int = 0
    frame_step: int = 4
    frames: int = 0  # 0: the teacher's
    size: int = 0  # 0: the teacher's
    precision: str = "auto"
    decode_timeout: float = 60.0
    eval_clips: int = 0  # > 0: deterministic evaluation views (clips × spatial crops), as probes use
    eval_spatial: int = 0
    arch: dict | None = None
    checkpoint_key: str = ""  # the state dict of a trainer checkpoint holding several ("": the loader's default)
    rank: int = 0
    world_size: int = 1
    overwrite: bool = False
    merge_only: bool = False
    progress: bool = True
    command: str = ""


# ----------------------------------------------------------------------------- planning

def plan_missing(num_videos: int, views: int, shard_videos: int, done: list[ShardId]) -> list[ShardId]:
    """Rectangles (videos × views) not yet covered, inside fixed blocks of `shard_videos` videos."""
    covered = np.zeros(num_videos, dtype=np.int64)  # views done per video, a prefix 0..covered
    for shard in done:
        end = min(shard.video_end, num_videos)
        covered[shard.video_start : end] = np.maximum(covered[shard.video_start : end], shard.view_end)
    missing = []
    for block_start in range(0, num_videos, shard_videos):
        block_end = min(block_start + shard_videos, num_videos)
        run_start = block_start
        for video in range(block_start, block_end + 1):
            if video == block_end or covered[video] != covered[run_start]:
                if covered[run_start] < views:
                    missing.append(ShardId(run_start, video, int(covered[run_start]), views))
                run_start = video
    return missing


def rank_of(shard: ShardId, shard_videos: int, world_size: int) -> int:
    """Ranks own whole video blocks, so the split never depends on who finished what."""
    return (shard.video_start // shard_videos) % world_size


# ----------------------------------------------------------------------------- locking

class OutputLock:
    """One live writer per (output, rank): a lock file with host and pid; a dead owner's is taken over."""

    def __init__(self, path: Path):
        self.path = path
        self.held = False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None or self._alive(owner):
                    who = f"pid {owner['pid']} on {owner['host']}" if owner else "an unknown process"
                    raise CacheWriteError(
                        f"{self.path}: another salt cache-latents ({who}) is writing this output; wait for it, "
                        f"or delete the lock file if that process is gone"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its owner died on this host
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            self.held = True
            return
        raise CacheWriteError(f"{self.path}: could not take the lock")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def _owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None  # a lock being written right now, or garbage: treated as live for safety

    @staticmethod
    def _alive(owner: dict) -> bool:
        if owner.get("host") != socket.gethostname():
            return True  # cannot check another host's processes: assume alive
        try:
            os.kill(int(owner["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


# ----------------------------------------------------------------------------- decoding workers

class VideoViews(Dataset):
    """Item i: the views of one video of the planned shards, JPEG round-tripped, or a skip."""

    def __init__(self, items: list[tuple[int, VideoRecord, tuple[int, int]]], view: ViewConfig, frames_codec: str,
                 quality: int, decode_timeout: float):
        self.items = items
        self.view = view
        self.frames_codec = frames_codec
        self.quality = quality
        self.decode_timeout = decode_timeout
        self._decoder: IsolatedDecoder | None = None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        shard_index, record, (view_start, view_end) = self.items[index]
        if self._decoder is None:
            self._decoder = IsolatedDecoder(timeout=self.decode_timeout)
        result = {"shard": shard_index, "record": record, "views": []}
        try:
            views = self._decoder(record.name, record, list(range(view_start, view_end)), self.view)
        except VideoDecodeError as err:
            result["skipped"] = err.reason
            return result
        for frames, params in views:
            # The teacher sees the decoded JPEGs: exactly what a student will decode.
            encoded, decoded = roundtrip_frames(frames, self.frames_codec, self.quality)
            result["views"].append({"params": params, "encoded": encoded, "frames": decoded})
        return result


# ----------------------------------------------------------------------------- the command

def run_cache(job: CacheJob) -> Path | None:
    """Fill the cache for this rank; returns the manifest path once every rank is done."""
    out = Path(job.out)
    encoder, arch = load_encoder(job.teacher, job.arch, job.checkpoint_key or None)
    teacher_fingerprint = fingerprint(encoder.state_dict())
    # One GPU per rank on a node: torchrun sets LOCAL_RANK, srun SLURM_LOCALID.
    local = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")))
    device = torch.device("cuda", local % torch.cuda.device_count()) if torch.cuda.is_available() else torch.device("cpu")
    encoder = encoder.float().eval().requires_grad_(False).to(device)
    view = ViewConfig(
        frames=job.frames or arch["num_frames"], frame_step=job.frame_step, size=job.size or arch["img_size"], seed=job.seed,
        eval_clips=job.eval_clips, eval_spatial=job.eval_spatial,
    )
    view.validate()
    grid = encoder.grid(view.frames, view.size, view.size)
    records = load_records(job.data)
    if job.max_videos:
        records = records[: job.max_videos]
    codec = LatentCodec(job.dtype, CODECS[job.codec])
    settings = {
        "teacher_fingerprint": teacher_fingerprint,
        "teacher_arch": arch,
        "view": asdict(view),
        "dtype": job.dtype,
        "compressor": codec.compressor,
        "frames_codec": job.frames_codec,
        "jpeg_quality": job.jpeg_quality,
        "formats": sorted(job.formats),
        "shard_videos": job.shard_videos,
        "data": str(job.data),
    }
    settings = json.loads(json.dumps(settings))  # plain JSON types, as a saved copy reads back
    lock = OutputLock(out / "locks" / f"rank{job.rank}-of-{job.world_size}.lock")
    lock.acquire()
    try:
        _check_settings(out, settings, job.overwrite)
        done = _done_shards(out)
        missing = plan_missing(len(records), job.views, job.shard_videos, [d for d, _ in done])
        mine = [s for s in missing if rank_of(s, job.shard_videos, job.world_size) == job.rank]
        if mine and not job.merge_only:
            zarr_writer = None
            if "zarr" in job.formats:
                with _file_lock(out / "locks" / "zarr.lock"):  # ranks create or grow the store one at a time
                    zarr_writer = ZarrCacheWriter.open(
                        out / "cache.zarr", num_videos=len(records), views=job.views, grid_tokens=int(np.prod(grid)),
                        dim=encoder.embed_dim, stored_dtype=job.dtype, compressor=codec.compressor,
                        frames_per_clip=view.frames, videos_per_shard=job.shard_videos,
                    )
            _write_shards(job, out, mine, records, view, encoder, codec, zarr_writer, device)
        return _merge(job, out, settings, records, grid, encoder.embed_dim, view, arch)
    finally:
        lock.release()


def _write_shards(job, out, shards, records, view, encoder, codec, zarr_writer, device: torch.device) -> None:
    items = [(i, records[v], (s.view_start, s.view_end)) for i, s in enumerate(shards) for v in range(s.video_start, s.video_end)]
    loader = DataLoader(
        VideoViews(items, view, job.frames_codec, job.jpeg_quality, job.decode_timeout),
        batch_size=None, num_workers=job.workers, prefetch_factor=4 if job.workers else None,
        multiprocessing_context="forkserver" if job.workers else None,
    )
    precision = _precision(job.precision)
    pending: dict[int, dict] = {i: {"samples": [], "skipped": [], "videos_left": s.video_end - s.video_start} for i, s in enumerate(shards)}
    batch: list[tuple[int, VideoRecord, dict]] = []
    writes: list[concurrent.futures.Future] = []
    progress = _progress(job, len(items), sum((s.video_end - s.video_start) * (s.view_end - s.view_start) for s in shards))
    views_done, skipped, started = 0, 0, time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as writer:

        def flush_batch() -> None:
            if not batch:
                return
            clips = torch.from_numpy(np.stack([v["frames"] for _, _, v in batch])).to(device, non_blocking=True)
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                latents = encoder(to_model_input(clips)).float().cpu()
            for (shard_index, record, view_item), tokens in zip(batch, latents):
                pending[shard_index]["samples"].append((record, view_item, tokens))
            batch.clear()

        def finish_ready() -> None:
            for future in writes:
                if future.done():
                    future.result()  # a failed write (e.g. a full disk) stops the run now, not at the end
            for index in sorted(pending):
                state = pending[index]
                if state["videos_left"] == 0 and not any(i == index for i, _, _ in batch):
                    del pending[index]
                    writes.append(writer.submit(_store_shard, out, shards[index], state, codec, zarr_writer, job))

        for item in loader:
            index = item["shard"]
            if "skipped" in item:
                pending[index]["skipped"].append({"video": item["record"].video_id, "path": item["record"].name, "reason": item["skipped"]})
            for view_item in item["views"]:
                batch.append((index, item["record"], view_item))
                if len(batch) >= job.batch_size:
                    flush_batch()
            pending[index]["videos_left"] -= 1
            finish_ready()
            views_done += len(item["views"])
            skipped += "skipped" in item
            if progress is not None:
                progress.update(1)
                rate = views_done / max(time.perf_counter() - started, 1e-9)
                progress.set_postfix({"views/s": f"{rate:.1f}", "skipped": skipped}, refresh=False)
        flush_batch()
        finish_ready()
        for future in writes:
            future.result()  # re-raise a writer's error here
    if progress is not None:
        progress.close()


def _store_shard(out: Path, shard: ShardId, state: dict, codec: LatentCodec, zarr_writer, job: CacheJob) -> None:
    """Encode and write one shard in every format, then mark it done (the commit point)."""
    encoded, zarr_samples = [], []
    for record, view_item, tokens in state["samples"]:
        params = view_item["params"]
        meta = {"video": record.video_id, "view": params.view_index, "source": record.name, "label": record.label,
                "view_params": params.to_dict()}
        stored = codec.to_stored(tokens)
        encoded.append(EncodedSample(key=sample_key(record.video_id, params.view_index), frames=view_item["encoded"],
                                     frame_ext=FRAME_EXT[job.frames_codec], latents=codec.encode(stored), meta=meta))
        zarr_samples.append((record.video_id, params.view_index, stored, view_item["encoded"], meta))
    try:
        wds_files = write_wds_shard(out / "wds", shard, encoded) if "wds" in job.formats else None
        zarr_bytes = None
        if zarr_writer is not None:
            # A shard that starts inside a Zarr shard (videos added later) shares it with a done one.
            zarr_bytes = zarr_writer.write_shard(shard, zarr_samples, allow_partial_zarr_shard=shard.video_start % job.shard_videos != 0)
    except OSError as err:  # a full disk, a lost mount: the shard is not marked done, so a rerun redoes it
        raise CacheWriteError(
            f"{out}: writing shard {shard.name} failed: {err.strerror or err}. Its partial tar was removed and it is not "
            "marked done; free space (or fix the disk) and run the same command again: finished shards are kept."
        ) from err
    record = ShardRecord.for_shard(shard, len(encoded), wds_bytes=wds_files.bytes if wds_files else None,
                                   wds_sha256=wds_files.sha256 if wds_files else None, zarr_bytes=zarr_bytes)
    done = {"record": asdict(record), "skipped": state["skipped"],
            "latent_bytes": sum(len(b) for e in encoded for b in e.latents.values()),
            "frame_bytes": sum(len(f) for e in encoded for f in e.frames)}
    write_json_atomic(out / "done" / f"{shard.name}.json", done)


def _merge(job: CacheJob, out: Path, settings: dict, records, grid, dim: int, view: ViewConfig, arch: dict) -> Path | None:
    """Write manifest.json when every planned shard is done (by whichever rank gets here last)."""
    done = _done_shards(out)
    if plan_missing(len(records), job.views, job.shard_videos, [shard for shard, _ in done]):
        return None
    done.sort(key=lambda d: (d[0].view_start, d[0].video_start))
    skipped = {entry["video"]: entry for _, d in done for entry in d["skipped"]}
    manifest = Manifest(
        teacher={"fingerprint": settings["teacher_fingerprint"], "arch": arch, "source": str(job.teacher),
                 "checkpoint_key": job.checkpoint_key},
        grid=tuple(grid), dim=dim,
        geometry={"frames": view.frames, "frame_step": view.frame_step, "size": view.size, "patch": arch["patch_size"],
                  "tubelet": arch["tubelet_size"]},
        input_mean=IMAGENET_MEAN, input_std=IMAGENET_STD, frames_codec=job.frames_codec, jpeg_quality=job.jpeg_quality,
        frames_decoder=frames_decoder_id(), views=job.views, latent_dtype=job.dtype, compressor=settings["compressor"],
        formats=settings["formats"], num_videos=len(records), shards=[ShardRecord(**d["record"]) for _, d in done],
        skipped=[skipped[v] for v in sorted(skipped)], sample_count=sum(d["record"]["samples"] for _, d in done),
        latent_bytes=sum(d["latent_bytes"] for _, d in done), frame_bytes=sum(d["frame_bytes"] for _, d in done),
        command=job.command, seed=job.seed, view_config=asdict(view),
    )
    manifest.validate(str(out / "manifest.json"))
    write_json_atomic(out / "manifest.json", manifest.to_json())
    return out / "manifest.json"


def _done_shards(out: Path) -> list[tuple[ShardId, dict]]:
    done = []
    for path in sorted((out / "done").glob("*.json")):
        entry = json.loads(path.read_text())
        done.append((ShardRecord(**entry["record"]).shard_id, entry))
    return done


@contextlib.contextmanager
def _file_lock(path: Path):
    """An advisory lock between processes on this machine (held while the block runs)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check_settings(out: Path, settings: dict, overwrite: bool) -> None:
    path = out / SETTINGS
    if path.is_file():
        saved = json.loads(path.read_text())
        changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
        if changed and not overwrite:
            details = "; ".join(f"{k}: cache {saved.get(k)!r}, now {settings.get(k)!r}" for k in changed)
            raise CacheWriteError(
                f"{out} holds a cache made with other settings ({details}). Use another --out, or --overwrite to replace it."
            )
        if changed:
            for child in ("wds", "cache.zarr", "done", "manifest.json"):
                target = out / child
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
    write_json_atomic(path, settings)


def _precision(precision: str) -> str:
    from salt.precision import resolve_precision

    return resolve_precision(precision)


def _progress(job: CacheJob, videos: int, views: int):
    if not job.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=videos, desc=f"cache rank {job.rank}/{job.world_size} ({views} views)", unit="video",
                dynamic_ncols=True, mininterval=1.0)


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]])
