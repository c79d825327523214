"""The Ray engine (`--engine ray`): Ray Data streams the planned videos through CPU decode
workers anywhere in the cluster and GPU (or CPU) teacher actors, back to this driver, which
assembles and commits shards exactly as the local engine does.

    planned videos ──► decode actors (1 CPU each, any node; IsolatedDecoder, JPEG round trip)
                   ──► teacher actors (1 GPU each, or CPUs; batches of --batch-size)
                   ──► driver: ShardAssembler (atomic shard writes, done marks, manifest)

Ray restarts a killed actor and retries its task (Ray Data's default for actor pools); a view
that arrives twice is kept once by the assembler, and a killed driver resumes from the done
marks like any rank. The driver needs the output folder; workers need the videos (a shared file
system) and `salt-video` installed; the teacher's weights travel in Ray's object store.
"""

from __future__ import annotations

import json
import logging
import pickle
import socket
import time
from dataclasses import asdict

import numpy as np
import torch

from salt.cache_latents.local import decode_views
from salt.cache_latents.shards import CachePlan, ShardAssembler
from salt.cache_latents.teacher import TeacherForward
from salt.latents.errors import CacheWriteError
from salt.video.isolated import IsolatedDecoder
from salt.video.views import ViewConfig, ViewParams

MAX_BLOCKS = 4096  # input blocks (a retried task redoes one block); one video per block below this


def import_ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise CacheWriteError(
            "--engine ray needs Ray Data: pip install 'salt-video[ray]' (or use --engine local)"
        ) from None
    return ray


class DecodeVideo:
    """Ray Data actor: one planned video in, one row per view out (or one row naming the skip)."""

    def __init__(self, view: dict, frames_codec: str, quality: int, timeout: float):
        import ray

        self.view = ViewConfig(**view)
        self.frames_codec, self.quality = frames_codec, quality
        self.decoder = IsolatedDecoder(timeout=timeout)
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict) -> dict:
        rows = {
            name: [] for name in ("shard", "video", "view", "skipped", "params", "frames", "pixels", "node", "decode_s")
        }
        for shard, video, view_start, view_end, record in zip(
            batch["shard"], batch["video"], batch["view_start"], batch["view_end"], batch["record"]
        ):
            started = time.perf_counter()
            views = decode_views(
                self.decoder,
                pickle.loads(record),
                int(view_start),
                int(view_end),
                self.view,
                self.frames_codec,
                self.quality,
            )
            seconds = time.perf_counter() - started
            items = [None] if isinstance(views, str) else views
            for item in items:
                rows["shard"].append(int(shard))
                rows["video"].append(int(video))
                rows["view"].append(-1 if item is None else item["params"].view_index)
                rows["skipped"].append(views if item is None else "")
                rows["params"].append("" if item is None else json.dumps(item["params"].to_dict()))
                rows["frames"].append(b"" if item is None else pickle.dumps(item["encoded"]))
                rows["pixels"].append(b"" if item is None else np.ascontiguousarray(item["frames"]).tobytes())
                rows["node"].append(self.node)
                rows["decode_s"].append(seconds / len(items))
        return {
            name: np.array(values, dtype=object if name in ("frames", "pixels") else None)
            for name, values in rows.items()
        }


class TeacherActor:
    """Ray Data actor: the frozen teacher on its GPU (or CPUs); pixels in, float32 latents out."""

    def __init__(
        self, arch: dict, weights, precision: str, batch_size: int, frame_shape: tuple[int, ...], compile: bool = False
    ):
        import ray

        from salt.models import build_encoder

        if isinstance(weights, ray.ObjectRef):
            weights = ray.get(weights)
        encoder = build_encoder(arch)
        encoder.load_state_dict(weights, strict=True)  # the driver's own encoder: every key matches
        self.forward = TeacherForward(encoder, precision, batch_size, compile=compile)
        self.frame_shape = tuple(frame_shape)

    def __call__(self, batch: dict) -> dict:
        started = time.perf_counter()
        decoded = [i for i, skipped in enumerate(batch["skipped"]) if not skipped]
        latents = [b""] * len(batch["skipped"])
        if decoded:
            pixels = np.stack(
                [np.frombuffer(batch["pixels"][i], dtype=np.uint8).reshape(self.frame_shape) for i in decoded]
            )
            for i, tokens in zip(decoded, self.forward(pixels).numpy()):
                latents[i] = tokens.tobytes()
        batch = {name: values for name, values in batch.items() if name != "pixels"}
        batch["latents"] = np.array(latents, dtype=object)
        batch["teacher_s"] = np.full(len(latents), (time.perf_counter() - started) / max(len(latents), 1))
        return batch


def _connect(ray, address: str) -> bool:
    """Join the cluster at `address`, or start a local one; True when this call started Ray."""
    if ray.is_initialized():
        return False
    options = dict(log_to_driver=False, logging_level=logging.WARNING)
    if address:
        try:
            _check_reachable(address)  # ray.init retries an unreachable GCS for minutes
            ray.init(address=address, **options)
        except (ConnectionError, OSError, RuntimeError, ValueError) as err:
            causes = [err]
            while causes[-1].__cause__ is not None:
                causes.append(causes[-1].__cause__)
            reason = "; ".join(str(e).strip().splitlines()[-1][:300] for e in causes if str(e).strip())
            raise CacheWriteError(
                f"--ray-address {address}: no Ray cluster could be joined there ({reason}). Start "
                "one with `ray start --head` (and `ray start --address HEAD:PORT` on the other "
                "nodes); a cluster with token authentication needs RAY_AUTH_MODE=token and its "
                "token here too (docs/scale.md); or leave --ray-address empty to start a local one"
            ) from None
    else:
        # "local": a new instance even where `ray start` left an address behind (ray.init() would join that).
        # Ray runs its workers at nice 15; beside other busy processes they then get almost no CPU
        # (measured: decoders still in __init__ after 2 min beside two CPU-bound processes), so run
        # them at the priority the local engine's workers have.
        ray.init(address="local", include_dashboard=False, _system_config={"worker_niceness": 0}, **options)
    return True


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """A HOST:PORT address must accept a TCP connection (other forms, e.g. auto, Ray checks itself)."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ConnectionError(f"nothing listens at {host}:{port}: {err.strerror or err}") from None


def _resources(ray, plan: CachePlan) -> tuple[int, dict, int]:
    """(teacher actors, their resources, decode workers) for this cluster."""
    job = plan.job
    total = ray.cluster_resources()
    cpus, gpus = int(total.get("CPU", 0)), int(total.get("GPU", 0))
    teachers = job.teacher_workers or max(gpus, 1)
    teacher_resources = {"num_gpus": 1} if gpus else {"num_cpus": job.teacher_cpus}
    left = cpus - (0 if gpus else teachers * job.teacher_cpus)
    decoders = job.decode_cpus or left
    if (gpus and teachers > gpus) or decoders < 1 or decoders > left:
        raise CacheWriteError(
            f"the Ray cluster has {cpus} CPUs and {gpus} GPUs: not enough for {teachers} teacher actors "
            f"({'1 GPU' if gpus else f'{job.teacher_cpus} CPUs'} each) and {decoders or 'at least one'} decode workers "
            "(1 CPU each). Add nodes, or lower --teacher-workers, --teacher-cpus or --decode-cpus"
        )
    return teachers, teacher_resources, decoders


def run_ray(plan: CachePlan, assembler: ShardAssembler) -> None:
    ray = import_ray()
    job = plan.job
    started_ray = _connect(ray, job.ray_address)
    try:
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours is the one bar
        context.print_on_execution_start = False
        teachers, teacher_resources, decoders = _resources(ray, plan)
        dataset = _pipeline(ray, plan, decoders, teachers, teacher_resources)
        progress = _Progress(job, plan.planned_views, decoders, teachers)
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            if plan.stop.received:  # a scheduler's signal: the shards written are kept, the rest is redone
                break
            _assemble(batch, plan, assembler)
            progress.update(batch, assembler)
        progress.close()
    finally:
        if started_ray:
            ray.shutdown()


def _pipeline(ray, plan: CachePlan, decoders: int, teachers: int, teacher_resources: dict):
    """The plan's work as a Ray dataset: decode actors, then teacher actors, one row per video's views."""
    job = plan.job
    items = [
        {"shard": s, "video": v, "view_start": a, "view_end": b, "record": pickle.dumps(plan.records[v])}
        for s, v, a, b in plan.work()
    ]
    weights = ray.put({k: v.detach().cpu() for k, v in plan.encoder.state_dict().items()})
    decode = dict(
        view=asdict(plan.view), frames_codec=job.frames_codec, quality=job.jpeg_quality, timeout=job.decode_timeout
    )
    teacher = dict(
        arch=plan.arch,
        weights=weights,
        precision=job.precision,
        batch_size=job.batch_size,
        frame_shape=(plan.view.frames, plan.view.size, plan.view.size, 3),
        compile=job.compile,
    )
    return (
        ray.data.from_items(items, override_num_blocks=min(len(items), MAX_BLOCKS))
        .map_batches(
            DecodeVideo,
            batch_size=1,
            batch_format="numpy",
            num_cpus=1,
            compute=ray.data.ActorPoolStrategy(size=decoders),  # placed SPREAD (Ray Data's default): all nodes
            fn_constructor_kwargs=decode,
        )
        .map_batches(
            TeacherActor,
            batch_size=job.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=teachers),
            **teacher_resources,
            fn_constructor_kwargs=teacher,
        )
    )


def _assemble(batch: dict, plan: CachePlan, assembler: ShardAssembler) -> None:
    """Hand one batch of the teacher actors' rows to the shard assembler."""
    tokens_shape = (-1, plan.encoder.embed_dim)
    for i in range(len(batch["shard"])):
        shard, record = int(batch["shard"][i]), plan.records[int(batch["video"][i])]
        if batch["skipped"][i]:
            assembler.skip_video(shard, record, str(batch["skipped"][i]))
            continue
        latents = torch.from_numpy(np.frombuffer(batch["latents"][i], dtype=np.float32).reshape(tokens_shape).copy())
        assembler.add_view(
            shard,
            record,
            ViewParams.from_dict(json.loads(batch["params"][i])),
            pickle.loads(batch["frames"][i]),
            latents,
            where=str(batch["node"][i]),
        )


class _Progress:
    """One bar: views, views/s, and how busy the decode workers and teacher actors were."""

    def __init__(self, job, views: int, decoders: int, teachers: int):
        self.decoders, self.teachers = decoders, teachers
        self.decode_s = self.teacher_s = 0.0
        self.skipped = 0
        self.started = time.perf_counter()
        self.bar = None
        if job.progress:
            from tqdm import tqdm

            self.bar = tqdm(
                total=views,
                desc=f"cache (ray: {decoders} decoders, {teachers} teachers)",
                unit="view",
                dynamic_ncols=True,
                mininterval=1.0,
            )

    def update(self, batch: dict, assembler: ShardAssembler) -> None:
        self.decode_s += float(np.sum(batch["decode_s"]))
        self.teacher_s += float(np.sum(batch["teacher_s"]))
        skipped = sum(1 for s in batch["skipped"] if s)
        self.skipped += skipped
        if self.bar is not None:
            elapsed = max(time.perf_counter() - self.started, 1e-9)
            self.bar.update(len(batch["shard"]) - skipped)
            self.bar.set_postfix(
                {
                    "views/s": f"{self.bar.n / elapsed:.1f}",
                    "decode": f"{self.decode_s / (elapsed * self.decoders):.0%}",
                    "teacher": f"{self.teacher_s / (elapsed * self.teachers):.0%}",
                    "skipped videos": self.skipped,
                    "open shards": assembler.open_shards,
                },
                refresh=False,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
