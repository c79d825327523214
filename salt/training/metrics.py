"""What the loop measures and reports: FLOPs once, a window of step statistics (averaged over
ranks), JSONL records and the progress bar on rank 0, and the bad-video limit."""

from __future__ import annotations

import json
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from salt.training.errors import TrainingError


def measure_flops(objective, batch) -> tuple[float, float]:
    """Forward FLOPs of the trained parts and of the frozen target computation, once.

    `forward` includes making the targets; `frozen_forward` is that part alone."""
    from torch.utils.flop_counter import FlopCounterMode

    # With autograd on: the counter's module hooks expect it (its graph is dropped unused).
    with FlopCounterMode(display=False) as total:
        objective(batch)
    with torch.no_grad(), FlopCounterMode(display=False) as frozen:
        objective.frozen_forward(batch)
    return float(total.get_total_flops() - frozen.get_total_flops()), float(frozen.get_total_flops())


class FlopCount:
    """FLOPs of the whole run, counted from step 0 (a resumed run reports the whole run's): the
    forward measured once, on the first micro-batch; backward costs about twice the forward;
    frozen parts (targets) run forward only."""

    def __init__(self, micro_batches_per_step: int, start_step: int):
        self.scale, self.start_step = micro_batches_per_step, start_step  # micro-batches: grad_accum × ranks
        self.per_step: dict[str, float] | None = None
        self.total = {"trained": 0.0, "frozen": 0.0}

    def measure_once(self, objective, batch) -> None:
        if self.per_step is None:
            trained, frozen = measure_flops(objective, batch)
            self.per_step = {"trained": 3 * trained * self.scale, "frozen": frozen * self.scale}
            self.total = {source: flops * self.start_step for source, flops in self.per_step.items()}

    def add_step(self) -> None:
        for source, flops in self.per_step.items():
            self.total[source] += flops


@dataclass
class Window:
    """Statistics of the steps since the last logged record."""

    seconds: float = 0.0  # wall time of the steps
    wait: float = 0.0  # of which waiting for the loader
    samples: int = 0  # clips, all ranks
    # One per micro-batch, kept as (device) tensors: read in one go when the record is made,
    # so a step does not wait for its own results.
    losses: list[torch.Tensor] = field(default_factory=list)
    metrics: dict[str, list[torch.Tensor | float]] = field(default_factory=dict)

    def timed(self, fetch, *args):
        """fetch(*args), its time counted as waiting for the loader."""
        started = time.perf_counter()
        try:
            return fetch(*args)
        finally:
            self.wait += time.perf_counter() - started

    def add(self, loss: torch.Tensor, metrics: dict[str, torch.Tensor | float], samples: int) -> None:
        self.losses.append(loss.detach())
        for key, value in metrics.items():
            self.metrics.setdefault(key, []).append(value)
        self.samples += samples

    def _means(self) -> dict[str, float]:
        series = {"loss": self.losses, **self.metrics}
        values = [
            torch.as_tensor(v, dtype=torch.float32, device="cpu") if not isinstance(v, torch.Tensor) else v.float()
            for vs in series.values()
            for v in vs
        ]
        if not values:
            return {}
        flat = torch.stack([v.to(values[0].device).reshape(()) for v in values])
        if dist.is_initialized() and dist.get_world_size() > 1:  # the global batch's numbers, on any number of ranks
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat /= dist.get_world_size()
        flat = flat.tolist()  # the one sync
        means, start = {}, 0
        for key, vs in series.items():
            means[key] = sum(flat[start : start + len(vs)]) / len(vs) if vs else float("nan")
            start += len(vs)
        return means

    def record(
        self, step: int, lr: float, wd: float, grad_norm, grad_accum: int, flops: dict, bad_videos: int
    ) -> dict[str, Any]:
        seconds = max(self.seconds, 1e-9)
        means = self._means()
        record = {
            "step": step,
            "loss": means.get("loss", float("nan")),
            "lr": lr,
            "wd": wd,
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "samples_per_s": self.samples / seconds,
            "steps_per_s": len(self.losses) / seconds / max(1, grad_accum),
            "data_wait_share": self.wait / seconds,
            "flops": flops["trained"] + flops["frozen"],
            "flops_trained": flops["trained"],  # student/encoder + predictor, forward and backward
            "flops_frozen": flops["frozen"],  # target computation: online teacher or EMA encoder
            "bad_videos": bad_videos,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # this process (Linux: KiB)
        }
        for key in self.metrics:
            record[key] = means[key]
        return record


class MetricsLog:
    """JSONL metrics on rank 0. A resumed run continues the same file; records past the step
    it resumes from (written after the last checkpoint, about to be redone) are dropped first,
    so the file never holds a step twice."""

    def __init__(self, path: Path, enabled: bool, tensorboard: bool, start_step: int = 0):
        self.enabled = enabled
        if enabled and path.exists():
            kept = []
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut off by a kill
                    continue
                if record.get("step", 0) <= start_step:
                    kept.append(line)
            partial = path.with_name(path.name + ".partial")
            try:
                partial.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
                os.replace(partial, path)
            finally:
                partial.unlink(missing_ok=True)
        self.file = open(path, "a", encoding="utf-8") if enabled else None
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise TrainingError(
                    "run.tensorboard is on but tensorboard is not installed: pip install tensorboard"
                ) from err
            self.writer = SummaryWriter(str(path.parent / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.writer is not None:
            self.writer.close()


class BadVideos:
    """Videos the loader could not decode (with the first reason); more than `limit` stops the run."""

    def __init__(self, limit: int):
        self.limit = limit
        self.videos: dict[str, str] = {}

    def add(self, skipped: list[tuple[str, str]]) -> None:
        for video, reason in skipped:
            self.videos.setdefault(video, reason)
        if len(self.videos) > self.limit:
            raise TrainingError(
                f"{len(self.videos)} videos could not be decoded (limit data.max_bad_videos={self.limit}); "
                f"first: {next(iter(self.videos.items()))}. Fix the data list or raise the limit."
            )


class Report:
    """metrics.jsonl (rank 0) and the progress bar. A record that cannot be written (a full
    disk) is held in `failure` for the ranks to stop together at the end of the step."""

    def __init__(self, run, rank: int, start_step: int, steps: int):
        path = Path(run.out_dir) / "metrics.jsonl"
        self.failure: OSError | None = None
        try:
            self.log = MetricsLog(path, enabled=rank == 0, tensorboard=run.tensorboard, start_step=start_step)
        except OSError as err:
            self.failure, self.log = err, MetricsLog(path, enabled=False, tensorboard=False)
        self.progress = _progress_bar(run, rank, start_step, steps)
        self.started = time.perf_counter()

    def write(self, record: dict) -> None:
        record["elapsed_s"] = time.perf_counter() - self.started  # wall time of this invocation
        try:
            self.log.write(record)
        except OSError as err:
            self.failure = err
        if self.progress is not None:
            postfix = {
                "loss": f"{record['loss']:.4f}",
                "sps": f"{record['samples_per_s']:.1f}",
                "wait": f"{record['data_wait_share']:.0%}",
            }
            self.progress.set_postfix(postfix)

    def step_done(self) -> None:
        if self.progress is not None:
            self.progress.update(1)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        self.log.close()


def _progress_bar(run, rank: int, start: int, total: int):
    if rank != 0 or not run.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="train", dynamic_ncols=True)
