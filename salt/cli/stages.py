"""`salt` commands that run the stages: stage 1 (train-teacher), process 1 (cache-latents,
compact-cache) and process 2 (train-student)."""

from __future__ import annotations

import json

import click

from salt.cli.options import options_from, record_from_options
from salt.config import override_option


def _training_command(name: str, stage: str, config_dir: str):
    """`salt train-teacher` / `salt train-student`: the same options, one process."""

    example = f"salt {name} --config {config_dir}vit_tiny.yaml --set optim.steps=50"

    @click.command(
        name,
        help=f"{stage} in one process. For several, use `deepspeed --num_gpus N salt/{name.replace('-', '_')}.py`."
        f"\n\nExample: {example}",
    )
    @click.option(
        "--config", "config_path", required=True, type=click.Path(dir_okay=False), help=f"YAML config ({config_dir}…)."
    )
    @click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a config value, e.g. optim.steps=50.",
        callback=override_option,
    )
    @click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in run.out_dir.")
    def command(config_path, overrides, resume) -> None:
        from salt.config import load_config
        from salt.training.config import StudentConfig, TeacherConfig

        # A config that cannot load is refused in one line before timm and DeepSpeed are imported.
        load_config(TeacherConfig if name == "train-teacher" else StudentConfig, config_path, list(overrides))
        from salt.training.loop import describe
        from salt.training.student import run_student
        from salt.training.teacher import run_teacher

        run_stage = run_teacher if name == "train-teacher" else run_student
        click.echo(describe(run_stage(config_path, list(overrides), resume)))

    return command


train_teacher_command = _training_command(
    "train-teacher", "Stage 1: the pixel-reconstruction teacher", "configs/teacher/"
)
train_student_command = _training_command(
    "train-student", "Process 2 (stage 2): a student from a latent cache", "configs/student/"
)


def _cache_job_type():
    from salt.cache_latents.job import CacheJob

    return CacheJob


@click.command("cache-latents")
@options_from(_cache_job_type())
def cache_latents_command(**options) -> None:
    """Process 1: precompute teacher latents over augmented views into compressed shards.

    Example: salt cache-latents --teacher runs/teacher/teacher.pt --data data/syn/train.csv --out cache/syn --views 2
    """
    from salt.cache_latents import CacheJob
    from salt.runtime.invocation import command_line
    from salt.video.sources import load_records

    job = record_from_options(CacheJob, options, command=command_line())
    try:
        job.validate()
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    records = load_records(job.data)  # a bad list is refused here, before torch is imported
    from salt.cache_latents import run_cache

    manifest = run_cache(job, records)
    if manifest is None:
        click.echo(f"rank {job.rank}/{job.world_size}: shards done; manifest.json follows when every rank has finished")
    else:
        from salt.latents.storage import read_bytes

        summary = json.loads(read_bytes(manifest))
        skipped = summary["skipped"]
        click.echo(
            f"cache {job.out}: {summary['sample_count']} views of {summary['num_videos']} videos, "
            f"{len(skipped)} skipped; manifest {manifest}"
        )
        for entry in skipped[:5]:  # all of them are in the manifest
            click.echo(f"  skipped {entry['path']}: {entry['reason']}")
        if len(skipped) > 5:
            click.echo(f"  … and {len(skipped) - 5} more (manifest.json, 'skipped')")


@click.command("compact-cache")
@click.argument("source", metavar="CACHE", type=click.Path())
@click.option("--out", required=True, help="Folder (or object-store URL) of the compacted cache.")
@click.option(
    "--rank",
    default=0,
    show_default=True,
    help="Coefficients kept per token (PCA of the layer-normalised targets); 0: every channel, re-encoded only.",
)
@click.option(
    "--dtype", type=click.Choice(["int8", "fp16", "bf16"]), default="int8", help="Stored dtype of the targets."
)
@click.option(
    "--codec",
    type=click.Choice(["blosc-zstd", "blosc-lz4", "zstd", "none"]),
    default="blosc-zstd",
    help="Compression of the stored targets.",
)
@click.option(
    "--fit-samples", default=1024, help="Samples (all their tokens) the basis is fit on, spread over the cache."
)
@click.option(
    "--format",
    "format_",
    type=click.Choice(["wds", "zarr", "both"]),
    default="wds",
    help="Storage format(s) of the compacted cache.",
)
@click.option("--overwrite", is_flag=True, help="Replace an --out made with other settings.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def compact_cache_command(source, out, rank, dtype, codec, fit_samples, format_, overwrite, no_progress) -> None:
    """Shrink a cache without the teacher: low-rank targets (a basis stored once) and/or int8.

    Which rank: no compacted cache is shown to keep a student's accuracy (docs/results.md,
    "Smaller caches, decided?": undecided, the students' run-to-run spread is ~10 points, and
    every compacted student there probed below both fp16 ones). Keep the fp16 cache where a
    student must match; compact (int8 full rank: 0.57x the bytes; D/4: 0.18x, 2.9 TB for a
    Kinetics-710 ViT-L cache) only where storage forces it, and check against an fp16 student.

    Example: salt compact-cache cache/syn --out cache/syn_int8 --dtype int8
    """
    from salt.cache_latents.compact import CompactJob, compact_cache
    from salt.cache_latents.job import FORMATS
    from salt.latents import load_manifest
    from salt.runtime.invocation import command_line

    job = CompactJob(
        source=source,
        out=out,
        rank=rank,
        dtype=dtype,
        codec=codec,
        fit_samples=fit_samples,
        formats=FORMATS[format_],
        overwrite=overwrite,
        progress=not no_progress,
        command=command_line(),
    )
    manifest = load_manifest(compact_cache(job))
    latent_bytes, frame_bytes = manifest.bytes_per_view()
    kept = f"rank {manifest.target_rank} of {manifest.dim}" if manifest.target_rank else f"all {manifest.dim} channels"
    explained = f", {manifest.basis['explained']:.1%} of the target variance kept" if manifest.basis else ""
    click.echo(
        f"compacted {source} -> {out}: {manifest.sample_count} samples, {kept} in {manifest.latent_dtype}{explained}; "
        f"latents {latent_bytes / 1e3:.1f} kB/view, frames {frame_bytes / 1e3:.1f} kB/view"
    )


# Probes, exports and the tools (benchmarks, the claims chain, reports, FLOPs, looking inside


COMMANDS = [train_teacher_command, train_student_command, cache_latents_command, compact_cache_command]
