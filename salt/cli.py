"""The `salt` command. Each sub-command is a thin wrapper over one module."""

from __future__ import annotations

import json

import click

from salt.config import override_option
from salt.tools.commands import tool_commands


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="salt-video", prog_name="salt")
@click.option("--debug", is_flag=True, help="Show the full traceback of any error (also: SALT_DEBUG=1).")
def main(debug: bool) -> None:
    """SALT: video representation learning with a frozen teacher.

    \b
    A first run on the embedded synthetic set:
      salt make-synthetic --out data/syn --videos 64
      salt check-data data/syn/train.csv
    Every command has an example in its --help.
    """
    if debug:
        import os

        os.environ["SALT_DEBUG"] = "1"  # read where errors are turned into one line
    from salt.noise import quiet_third_party

    quiet_third_party()


@main.command("make-synthetic")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--videos", default=160, help="Number of videos (balanced over the classes).")
@click.option("--seed", default=0, help="Same seed, same data set.")
@click.option("--size", default=96, help="Video height and width in pixels (even).")
@click.option("--frames", default=16, help="Frames per clip the set is made for.")
@click.option("--frame-step", default=4, help="Frame step of the clips the set is made for.")
@click.option("--tubelet", default=2, help="Tubelet size of the models the set is made for.")
@click.option("--val-fraction", default=0.25, help="Share of videos in val.csv.")
@click.option("--motion", default=1.0, help="Scale of every class's motion per tubelet (shift, spin, zoom rate).")
@click.option("--waves", default=6, help="Sinusoids in each scene's texture.")
@click.option("--blobs", default=3, help="Soft blobs on each scene.")
@click.option(
    "--generator-version",
    "version",
    default=2,
    type=click.IntRange(1, 2),
    help="2: motion in screen space; 1: sets made before it (reproduced exactly).",
)
def make_synthetic_command(
    out, videos, seed, size, frames, frame_step, tubelet, val_fraction, motion, waves, blobs, version
) -> None:
    """Write a synthetic motion-classification set: videos/*.mp4, train.csv, val.csv.

    Example: salt make-synthetic --out data/syn --videos 64 --size 40 --frames 8
    """
    from salt.video.synthetic import SyntheticSpec, format_summary, make_synthetic

    spec = SyntheticSpec(
        videos=videos,
        seed=seed,
        size=size,
        frames=frames,
        frame_step=frame_step,
        tubelet=tubelet,
        val_fraction=val_fraction,
        motion=motion,
        waves=waves,
        blobs=blobs,
        version=version,
    )
    try:
        summary = make_synthetic(out, spec)
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    click.echo(format_summary(summary))
    click.echo(f"wrote {out}/train.csv, {out}/val.csv and {out}/synthetic.json")


@main.command("models")
@click.argument("pattern", default="*")
def models_command(pattern) -> None:
    """The registered encoder sizes (for --random-init, encoder.arch, --arch): name, parameters,
    width, depth, heads, positions. PATTERN filters names, as timm's list_models does.

    Example: salt models '*rope'
    """
    import fnmatch

    from salt.models import ARCHS, count_params

    names = [name for name in ARCHS if fnmatch.fnmatch(name, pattern)]
    if not names:
        raise click.UsageError(f"no size matches {pattern!r}; sizes: {', '.join(ARCHS)}")
    click.echo(f"{'name':16}{'params':>9}{'width':>7}{'depth':>7}{'heads':>7}{'mlp':>6}  positions")
    for name in names:
        a = ARCHS[name]
        click.echo(
            f"{name:16}{count_params(name) / 1e6:>8.1f}M{a['embed_dim']:>7}{a['depth']:>7}{a['num_heads']:>7}"
            f"{a['mlp_ratio']:>6.2f}  {a['pos_embed']}"
        )


@main.command("check-data")
@click.argument("data", metavar="DATA")
@click.option(
    "--workers",
    default=0,
    type=click.IntRange(min=0),
    show_default="0: one per core this process may use",
    help="Videos decoded at a time (each in its own process).",
)
@click.option(
    "--decode-timeout",
    default=60.0,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds per video before its decoder is killed and the video counted as failed.",
)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the report as JSON here.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def check_data_command(data, workers, decode_timeout, json_out, no_progress) -> None:
    """Decode every video of DATA (a CSV of 'path label' lines, a folder, or make-shards output)
    once: counts, frames, sizes, durations, labels per class, and every failure by file or line.
    Exit status 1 when any line is unusable.

    Example: salt check-data data/syn/train.csv
    """
    from pathlib import Path

    from salt.check_data import check_data, format_check

    report = check_data(data, workers, decode_timeout, not no_progress)
    click.echo(format_check(report))
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=1) + "\n")
    if report["failed"] or report["bad_lines"]:
        raise SystemExit(1)


@main.command("make-shards")
@click.option("--data", required=True, help="CSV of 'path label' lines, or a folder of videos.")
@click.option(
    "--out", required=True, help="Output folder (e.g. shards/NAME) or object-store URL (s3://bucket/shards/NAME)."
)
@click.option("--shard-size", default=256, help="Videos per tar shard.")
def make_shards_command(data, out, shard_size) -> None:
    """Pack videos (bytes untouched) and labels into tar shards that stream; `--data DIR` reads them.

    Example: salt make-shards --data data/syn/train.csv --out shards/syn_train
    """
    from salt.video.shards import make_shards

    index = make_shards(data, out, shard_size)
    videos = sum(len(shard["videos"]) for shard in index["shards"])
    click.echo(f"wrote {len(index['shards'])} shards with {videos} videos to {out} (index: {out}/videos.json)")


def _training_command(name: str, stage: str, config_dir: str):
    """`salt train-teacher` / `salt train-student`: the same options, one process."""

    example = f"salt {name} --config {config_dir}vit_tiny.yaml --set optim.steps=50"

    @main.command(
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


def options_from(record_type):
    """click options for every dataclass field with `cli` metadata (salt.cache_latents.job.cli):
    the field's name, help and default, so each default lives in one place."""
    import dataclasses

    def decorate(command):
        for field in reversed(dataclasses.fields(record_type)):
            spec = field.metadata.get("cli")
            if spec is None:
                continue
            kwargs = dict(spec["click"])
            shown = kwargs.pop("shown", None)
            if "choices" in kwargs:
                kwargs["type"] = click.Choice(kwargs.pop("choices"))
            if "bounds" in kwargs:  # out-of-range values are refused before any worker starts
                bounds = kwargs.pop("bounds")
                kwargs["type"] = (
                    click.FloatRange(**bounds) if isinstance(field.default, float) else click.IntRange(**bounds)
                )
            if field.default is not dataclasses.MISSING:
                kwargs["default"] = shown(field.default) if shown else field.default
                if kwargs["default"] == "":  # the help text says what an empty value means
                    kwargs["show_default"] = False
            flag = spec["flag"] or "--" + field.name.replace("_", "-")
            command = click.option(flag, field.name, help=spec["help"], **kwargs)(command)
        return command

    return decorate


def record_from_options(record_type, options: dict, **extra):
    """The dataclass from the generated options, each read by its field's `parse`."""
    import dataclasses

    values = {}
    for field in dataclasses.fields(record_type):
        spec = field.metadata.get("cli")
        if spec is not None:
            parse = spec["parse"]
            try:
                values[field.name] = parse(options[field.name]) if parse else options[field.name]
            except ValueError as err:
                raise click.BadParameter(
                    str(err), param_hint=spec["flag"] or "--" + field.name.replace("_", "-")
                ) from None
    return record_type(**values, **extra)


def _cache_job_type():
    from salt.cache_latents.job import CacheJob

    return CacheJob


@main.command("cache-latents")
@options_from(_cache_job_type())
def cache_latents_command(**options) -> None:
    """Process 1: precompute teacher latents over augmented views into compressed shards.

    Example: salt cache-latents --teacher runs/teacher/teacher.pt --data data/syn/train.csv --out cache/syn --views 2
    """
    from salt.cache_latents import CacheJob, command_line
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


@main.command("compact-cache")
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

    Example: salt compact-cache cache/syn --out cache/syn_r32 --rank 32
    """
    from salt.cache_latents.job import FORMATS, command_line
    from salt.compact_cache import CompactJob, compact_cache
    from salt.latents import load_manifest

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
# caches and teachers) are defined beside them, in salt/tools/commands.py.
for _tool in tool_commands():
    main.add_command(_tool)


def _command_name(ctx: click.Context | None) -> str:
    """`salt inspect`, however the program was started (`python -m salt.cli`, the script)."""
    names = []
    while ctx is not None and ctx.parent is not None:
        names.insert(0, ctx.info_name)
        ctx = ctx.parent
    return " ".join(["salt", *names])


def run_cli() -> None:
    """Entry point: bad input, click's usage errors included, becomes one line
    `error: <what> — <what to do>` (exit 1; 2 for a misused command line), not a traceback."""
    import sys

    from salt.errors import one_line_errors

    try:
        with one_line_errors():
            code = main(standalone_mode=False)
    except click.exceptions.UsageError as err:
        click.echo(f"error: {err.format_message()} — see `{_command_name(err.ctx)} --help`", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        sys.exit(1)
    except click.ClickException as err:
        click.echo(f"error: {err.format_message()}", err=True)
        sys.exit(err.exit_code)
    except BrokenPipeError:  # `salt models | head`: the reader left, as click's standalone mode allows
        sys.stdout = None
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    run_cli()
