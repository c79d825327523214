"""What a `salt cache-latents` run is asked to do: one typed record, each default in one place.

The command's click options are generated from these fields (`cli` metadata: the help text and,
where the command line spells a value differently, how to read it), so the CLI, the Python API
(`run_cache(CacheJob(...))`) and the benchmarks cannot drift apart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

from salt.config import parse_arch_pairs
from salt.video.decoders import DECODERS

FORMATS = {"wds": ("wds",), "zarr": ("zarr",), "both": ("wds", "zarr")}
ENGINES = ("local", "ray")


def cli(help: str, *, flag: str | None = None, parse: Callable[[Any], Any] | None = None, **click_kwargs: Any) -> dict:
    """Field metadata for the generated click option: `flag` (default --field-name), `parse`
    (command-line value -> field value), `bounds` (click.IntRange / FloatRange keywords: checked
    before anything starts) and any click.option keyword (type, is_flag, ...)."""
    return {"cli": {"help": help, "flag": flag, "parse": parse, "click": click_kwargs}}


def _env_int(*names: str) -> int | None:
    for name in names:
        if os.environ.get(name):
            return int(os.environ[name])
    return None


def _formats_flag(formats: tuple[str, ...]) -> str:
    return next(name for name, value in FORMATS.items() if value == tuple(formats))


@dataclass
class CacheJob:
    teacher: str = field(
        metadata=cli(
            "Encoder checkpoint: SALT .pt/.safetensors, V-JEPA 1/2, "
            "VideoMAE, or a Hugging Face VideoMAE or V-JEPA 2 folder.",
            required=True,
            metavar="PATH",
        )
    )
    data: str = field(
        metadata=cli("CSV of 'path label' lines, a folder of videos, or make-shards output.", required=True)
    )
    out: str = field(metadata=cli("Cache folder, e.g. cache/NAME.", required=True))
    views: int = field(
        default=1,
        metadata=cli("Augmented views per video (a larger value later adds the missing ones).", bounds=dict(min=1)),
    )
    formats: tuple[str, ...] = field(
        default=("wds",),
        metadata=cli(
            "Storage format(s).",
            flag="--format",
            parse=lambda v: FORMATS[v],
            choices=tuple(FORMATS),
            shown=_formats_flag,
        ),
    )
    dtype: str = field(
        default="fp16",
        metadata=cli("Stored latent dtype (int8: per-channel scales).", choices=("fp16", "bf16", "int8")),
    )
    target_rank: int = field(
        default=0,
        metadata=cli(
            "> 0: store this many PCA coefficients per token of the layer-normalised latents (a basis stored once).",
            flag="--target-rank",
            bounds=dict(min=0),
        ),
    )
    basis_videos: int = field(
        default=64, metadata=cli("Videos (spread over the data) the --target-rank basis is fit on.", bounds=dict(min=1))
    )
    codec: str = field(
        default="blosc-zstd",
        metadata=cli("Compression of the latents.", choices=("blosc-zstd", "blosc-lz4", "zstd", "none")),
    )
    frames_codec: str = field(
        default="jpeg", metadata=cli("How the view's frames are stored.", choices=("jpeg", "png"))
    )
    jpeg_quality: int = field(
        default=90, metadata=cli("JPEG quality of the stored frames.", bounds=dict(min=1, max=100))
    )
    batch_size: int = field(default=16, metadata=cli("Views per teacher forward.", bounds=dict(min=1)))
    workers: int = field(default=2, metadata=cli("Decoding worker processes (local engine).", bounds=dict(min=0)))
    max_videos: int = field(default=0, metadata=cli("Use only the first N videos (0: all).", bounds=dict(min=0)))
    shard_videos: int = field(default=32, metadata=cli("Videos per shard.", bounds=dict(min=1)))
    seed: int = field(default=0, metadata=cli("Views are seeded by (seed, video, view)."))
    frame_step: int = field(default=4, metadata=cli("Frame step of the clips.", bounds=dict(min=1)))
    frames: int = field(default=0, metadata=cli("Frames per clip (0: the teacher's).", bounds=dict(min=0)))
    size: int = field(default=0, metadata=cli("Clip height and width (0: the teacher's).", bounds=dict(min=0)))
    precision: str = field(default="auto", metadata=cli("Teacher forward precision.", choices=("auto", "bf16", "fp32")))
    compile: bool = field(
        default=False,
        metadata=cli(
            "Run the teacher through torch.compile (static shapes; pays off on GPUs for long runs).", is_flag=True
        ),
    )
    decoder: str = field(
        default="pyav",
        metadata=cli(
            "Video decoder: pyav (bundled FFmpeg 8: every codec, AV1 included), or decord "
            "(pip install decord2; PyAV reads what it cannot). Recorded in the manifest.",
            choices=DECODERS,
        ),
    )
    decode_timeout: float = field(
        default=60.0,
        metadata=cli(
            "Seconds per video before its decoder is killed and the video skipped.", bounds=dict(min=0, min_open=True)
        ),
    )
    # 5 %: downloaded sets (Kinetics, SSv2) lose about 1-2 % of their videos to dead links and bad
    # files; a wrong folder, a wrong CSV or a broken decoder loses nearly all of them.
    max_skipped: float = field(
        default=0.05,
        metadata=cli(
            "Largest share of videos that may be skipped (unreadable, "
            "missing) before the run stops with the list (0..1).",
            bounds=dict(min=0, max=1),
        ),
    )
    eval_clips: int = field(
        default=0,
        metadata=cli("> 0: deterministic evaluation views (clips x spatial crops), as probes use.", bounds=dict(min=0)),
    )
    eval_spatial: int = field(
        default=0, metadata=cli("Spatial crops of the evaluation views (with --eval-clips).", bounds=dict(min=0))
    )
    arch: dict | None = field(
        default=None,
        metadata=cli(
            "Architecture facts weights cannot tell (e.g. num_heads=16).",
            flag="--arch",
            parse=parse_arch_pairs,
            multiple=True,
            metavar="KEY=VALUE",
            shown=lambda v: (),
        ),
    )
    checkpoint_key: str = field(
        default="",
        metadata=cli("State dict to read from a trainer checkpoint (default: target_encoder, else encoder)."),
    )
    engine: str = field(
        default="local",
        metadata=cli(
            "local: DataLoader workers on this machine; ray: Ray Data over a cluster (pip install 'salt-video[ray]').",
            choices=ENGINES,
        ),
    )
    ray_address: str = field(
        default="", metadata=cli("Ray cluster to join (e.g. head:6379 or auto); empty: start a local one.")
    )
    decode_cpus: int = field(
        default=0,
        metadata=cli(
            "Ray decode workers, one CPU each, anywhere in the cluster (0: every CPU the teacher workers leave).",
            bounds=dict(min=0),
        ),
    )
    teacher_workers: int = field(
        default=0,
        metadata=cli(
            "Ray teacher actors (0: one per GPU in the cluster, or one on CPU when it has none).", bounds=dict(min=0)
        ),
    )
    teacher_cpus: int = field(
        default=1, metadata=cli("CPUs of each Ray teacher actor on a cluster without GPUs.", bounds=dict(min=1))
    )
    rank: int = field(
        default=0,
        metadata=cli(
            "This writer's rank (default: $RANK or $SLURM_PROCID, else 0).",
            parse=lambda v: v if v is not None else (_env_int("RANK", "SLURM_PROCID") or 0),
            type=int,
            shown=lambda v: None,
        ),
    )
    world_size: int = field(
        default=1,
        metadata=cli(
            "Number of writers (default: $WORLD_SIZE or $SLURM_NTASKS, else 1).",
            parse=lambda v: v if v is not None else (_env_int("WORLD_SIZE", "SLURM_NTASKS") or 1),
            type=int,
            shown=lambda v: None,
        ),
    )
    overwrite: bool = field(default=False, metadata=cli("Replace a cache made with other settings.", is_flag=True))
    merge_only: bool = field(
        default=False, metadata=cli("Only write manifest.json if every shard is done.", flag="--merge", is_flag=True)
    )
    progress: bool = field(
        default=True,
        metadata=cli(
            "No progress bar.", flag="--no-progress", is_flag=True, parse=lambda v: not v, shown=lambda v: not v
        ),
    )
    stop_signals: str = field(
        default="SIGTERM,SIGINT,SIGUSR1",
        metadata=cli(
            "Signals (comma-separated) that stop the run after the shards being written, with exit status 75; "
            "rerunning the same command continues.",
        ),
    )
    command: str = ""  # the command line that made the cache (recorded in the manifest)

    def validate(self) -> None:
        from salt.runtime.preemption import parse_signals

        parse_signals(self.stop_signals.split(","))
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, {self.world_size})")
        if self.engine not in ENGINES:
            raise ValueError(f"engine {self.engine!r} is not one of {ENGINES}")
        if self.engine == "ray" and self.world_size != 1:
            raise ValueError(
                "--engine ray schedules the whole cache over its cluster: run one driver (world size 1), "
                f"not rank {self.rank} of {self.world_size}"
            )
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, not {self.jpeg_quality}")
        if self.decode_timeout <= 0:
            raise ValueError(f"decode_timeout must be more than 0 seconds, not {self.decode_timeout}")
        for name in ("views", "batch_size", "shard_videos", "teacher_cpus", "frame_step"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.basis_videos < 1:
            raise ValueError(f"basis_videos must be at least 1, not {self.basis_videos}")
        if not 0 <= self.max_skipped <= 1:
            raise ValueError(f"max_skipped must be a share between 0 and 1, not {self.max_skipped}")
        for name in (
            "workers",
            "max_videos",
            "decode_cpus",
            "teacher_workers",
            "target_rank",
            "frames",
            "size",
            "eval_clips",
            "eval_spatial",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, not {getattr(self, name)}")
