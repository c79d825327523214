"""The `salt` command. Each sub-command is a thin wrapper over one module."""

from __future__ import annotations

import json

import click


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
    "--workers", default=4, type=click.IntRange(min=1), help="Videos decoded at a time (each in its own process)."
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
        "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value, e.g. optim.steps=50."
    )
    @click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in run.out_dir.")
    def command(config_path, overrides, resume) -> None:
        from salt.training.loop import describe
        from salt.training.student import run_student
        from salt.training.teacher import run_teacher

        run_stage = run_teacher if name == "train-teacher" else run_student
        click.echo(describe(run_stage(config_path, list(overrides), resume)))

    return command


train_teacher_command = _training_command(
    "train-teacher", "Stage 1: the pixel-reconstruction teacher", "configs/teacher/"
)
train_student_command = _training_command("train-student", "Stage 2: a student from a latent cache", "configs/student/")


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
    """Precompute teacher latents over augmented views into compressed shards.

    Example: salt cache-latents --teacher runs/teacher/teacher.pt --data data/syn/train.csv --out cache/syn --views 2
    """
    from salt.cache_latents import CacheJob, command_line, run_cache

    job = record_from_options(CacheJob, options, command=command_line())
    try:
        job.validate()
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    manifest = run_cache(job)
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
        source, out, rank, dtype, codec, fit_samples, FORMATS[format_], overwrite, not no_progress, command_line()
    )
    manifest = load_manifest(compact_cache(job))
    kept = f"rank {manifest.target_rank} of {manifest.dim}" if manifest.target_rank else f"all {manifest.dim} channels"
    explained = f", {manifest.basis['explained']:.1%} of the target variance kept" if manifest.basis else ""
    click.echo(
        f"compacted {source} -> {out}: {manifest.sample_count} samples, {kept} in {manifest.latent_dtype}{explained}; "
        f"latents {manifest.latent_bytes / max(manifest.sample_count, 1) / 1e3:.1f} kB/view, "
        f"frames {manifest.frame_bytes / max(manifest.sample_count, 1) / 1e3:.1f} kB/view"
    )


@main.command("probe")
@click.option(
    "--encoder",
    type=click.Path(),
    help="Encoder checkpoint (SALT .pt/.safetensors, V-JEPA 1/2, VideoMAE, Hugging Face VideoMAE or V-JEPA 2 folder).",
)
@click.option(
    "--checkpoint-key",
    default="",
    show_default=False,
    help="State dict to read from a trainer checkpoint (default: target_encoder, else encoder).",
)
@click.option("--random-init", help="Probe a randomly initialised encoder of this size instead (the floor).")
@click.option(
    "--train", "train_data", required=True, help="Labelled training videos (CSV, folder, shards: a path or URL)."
)
@click.option("--val", "val_data", required=True, help="Labelled validation videos.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML (configs/probe/default.yaml).")
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a probe config value, e.g. epochs=5."
)
@click.option("--arch", "arch_pairs", multiple=True, metavar="KEY=VALUE", help="Architecture facts (e.g. img_size=64).")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the results as JSON here.")
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False),
    help="Keep the stored token maps here (default: a temporary folder); a later probe with the same folder "
    "reuses them.",
)
@click.option(
    "--protocol",
    type=click.Choice(["attentive", "linear"]),
    default=None,
    help="attentive (the paper's) or linear (mean-pooled tokens, MAE's protocol); default: the config's.",
)
@click.option(
    "--allow-missing",
    is_flag=True,
    help="Probe the videos that decode and record the others under 'skipped' (default: refuse a split with any).",
)
@click.option(
    "--max-videos", default=0, type=click.IntRange(min=0), help="Use only the first N videos of each split (0: all)."
)
@click.option("--no-progress", is_flag=True, help="No progress bars (none either when stderr is not a terminal).")
def probe_command(
    encoder,
    checkpoint_key,
    random_init,
    train_data,
    val_data,
    config_path,
    overrides,
    arch_pairs,
    out,
    work_dir,
    protocol,
    allow_missing,
    max_videos,
    no_progress,
) -> None:
    """Frozen probe: token maps computed once, an lr x wd grid of heads, multi-view evaluation.

    Example: salt probe --encoder runs/student/student.pt --train data/syn/train.csv --val data/syn/val.csv
    --out probe.json
    """
    from salt.cache_latents.job import parse_arch_pairs
    from salt.config import load_config
    from salt.probe import ProbeConfig, ProbeData, format_probe, run_probe, save_report

    if bool(encoder) == bool(random_init):
        raise click.UsageError("give exactly one of --encoder and --random-init")
    cfg = load_config(ProbeConfig, config_path, list(overrides) + ([f"protocol={protocol}"] if protocol else []))
    report = run_probe(
        encoder,
        random_init,
        train_data,
        val_data,
        cfg,
        work_dir,
        parse_arch_pairs(arch_pairs),
        checkpoint_key,
        ProbeData(allow_missing, max_videos, not no_progress and click.get_text_stream("stderr").isatty()),
    )
    click.echo(format_probe(report))
    if out:
        save_report(report, out)
        click.echo(f"wrote {out}")


@main.command("export")
@click.argument("encoder", metavar="ENCODER", type=click.Path(exists=True))
@click.option(
    "--out",
    required=True,
    type=click.Path(),
    help="New folder for config.json, model.safetensors, salt_export.json, README.md.",
)
@click.option(
    "--arch",
    "arch_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Architecture facts the checkpoint cannot tell (e.g. num_heads=16).",
)
@click.option(
    "--checkpoint-key",
    default="",
    show_default=False,
    help="State dict to read from a trainer checkpoint (default: target_encoder, else encoder).",
)
def export_command(encoder, out, arch_pairs, checkpoint_key) -> None:
    """Write ENCODER (anything `salt probe --encoder` reads) as a transformers folder that
    `AutoModel.from_pretrained(OUT)` loads without SALT: RoPE -> VJEPA2Model, sincos1d -> VideoMAEModel.

    Example: salt export runs/student/student.pt --out exports/student_hf
    """
    from salt.cache_latents.job import parse_arch_pairs
    from salt.hf_export import export_encoder

    try:
        arch = parse_arch_pairs(arch_pairs)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--arch") from None
    record = export_encoder(encoder, out, arch, checkpoint_key or None)
    arch = record["arch"]
    click.echo(
        f"wrote {out}: {record['transformers_class']}, {record['tokens']} tokens x {record['embed_dim']} per clip "
        f"of {arch['num_frames']}x{arch['img_size']}x{arch['img_size']}; how to feed it: {out}/README.md"
    )


@main.command("flops")
@click.option(
    "--teacher-config", type=click.Path(exists=True, dir_okay=False), help="Stage-1 config (omit for V-JEPA / EMA)."
)
@click.option("--student-config", required=True, type=click.Path(exists=True, dir_okay=False), help="Stage-2 config.")
@click.option("--teacher-steps", default=0, help="Stage-1 optimiser steps (0: no teacher stage).")
@click.option("--student-steps", required=True, type=int, help="Stage-2 optimiser steps.")
@click.option(
    "--batch",
    type=int,
    default=None,
    help="Global batch of both stages (default: each config's micro-batch x grad_accum x --gpus).",
)
@click.option("--gpus", default=1, help="Data-parallel ranks, for the default global batch.")
@click.option(
    "--targets", type=click.Choice(["cache", "teacher", "ema"]), default=None, help="Override the student's targets."
)
@click.option("--views", default=8, help="Cached views per video (targets: cache).")
@click.option("--videos", default=660_000, help="Videos in the cache (default: about Kinetics-710).")
@click.option("--teacher-set", multiple=True, metavar="KEY=VALUE", help="Override the teacher config.")
@click.option("--student-set", multiple=True, metavar="KEY=VALUE", help="Override the student config.")
def flops_command(
    teacher_config,
    student_config,
    teacher_steps,
    student_steps,
    batch,
    gpus,
    targets,
    views,
    videos,
    teacher_set,
    student_set,
) -> None:
    """FLOPs per stage counted the paper's way (6ND trained, 2ND frozen) and by torch's counter.

    Example: salt flops --teacher-config configs/teacher/vit_base.yaml --student-config configs/student/vit_base.yaml
    --teacher-steps 20000 --student-steps 40000
    """
    from salt.config import load_config
    from salt.flops import format_plan, plan
    from salt.training.config import StudentConfig, TeacherConfig

    teacher = load_config(TeacherConfig, teacher_config, list(teacher_set)) if teacher_config else None
    student = load_config(
        StudentConfig, student_config, list(student_set) + ([f"targets={targets}"] if targets else [])
    )
    teacher_batch = batch or (teacher.data.batch_size * teacher.optim.grad_accum * gpus if teacher else 0)
    student_batch = batch or student.data.batch_size * student.optim.grad_accum * gpus
    click.echo(
        format_plan(plan(teacher, student, teacher_steps, student_steps, teacher_batch, student_batch, views, videos))
    )


@main.command("report")
@click.option(
    "--teacher-run",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Folder of the stage-1 run (run.out_dir of salt train-teacher).",
)
@click.option(
    "--cache", required=True, type=click.Path(exists=True, file_okay=False), help="The latent cache the student read."
)
@click.option(
    "--student-run",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Folder of the stage-2 run (run.out_dir of salt train-student).",
)
@click.option(
    "--probe", "probes", multiple=True, type=click.Path(exists=True, dir_okay=False), help="Probe JSON (repeatable)."
)
@click.option(
    "--curves", type=click.Path(dir_okay=False), help="Also draw both runs' loss and baseline curves into this PNG."
)
def report_command(teacher_run, cache, student_run, probes, curves) -> None:
    """Loss beside its trivial baseline per stage, probe accuracies, cache size, time and FLOPs.

    Example: salt report --teacher-run runs/teacher_tiny --cache cache/demo --student-run runs/student_tiny
    --probe p.json
    """
    from salt.report import loss_curves, pipeline_report

    try:
        click.echo(pipeline_report(teacher_run, cache, student_run, list(probes)))
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    if curves:
        loss_curves({"stage 1": teacher_run, "stage 2": student_run}, curves)
        click.echo(f"wrote {curves}")


@main.command("reproduce")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML (configs/reproduce/small.yaml).")
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value, e.g. out=runs/claims."
)
def reproduce_command(config_path, overrides) -> None:
    """The paper's claims at small scale: a resumable chain of runs and a claims table.

    Finished steps are kept; run the same command again to resume after a stop.

    Example: salt reproduce --config configs/reproduce/small.yaml
    """
    from salt.claims import format_table
    from salt.reproduce import reproduce

    click.echo(format_table(reproduce(config_path, list(overrides), click.echo)))


@main.group("bench")
def bench_group() -> None:
    """Benchmarks: tables on stdout, JSON records under benchmarks/results/.

    Example: salt bench cache --videos 8 --views 4
    """


@bench_group.command("cache")
@click.option("--videos", default=8, help="Benchmark videos to make.")
@click.option("--views", default=4, help="Views cached per video.")
@click.option("--arch", default="vit_tiny", help="Teacher size (salt models lists them).")
@click.option("--size", default=64, help="Clip height and width.")
@click.option("--frames", default=16, help="Frames per clip.")
@click.option("--workers", default=2, help="Decoding worker processes.")
@click.option("--batch-size", default=16, help="Views per teacher forward.")
@click.option("--seconds", default=4, help="Length of each 640x360 benchmark video.")
@click.option(
    "--results", default="benchmarks/results", type=click.Path(file_okay=False), help="Folder of the JSON records."
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    help="ray: also run the Ray engine on the same videos, beside the local one.",
)
def bench_cache_command(videos, views, arch, size, frames, workers, batch_size, seconds, results, engine) -> None:
    """cache-latents views/s vs. decode alone and teacher alone; bytes per view by dtype and codec.

    Example: salt bench cache --videos 8 --views 4
    """
    from salt.bench import bench_cache, format_cache

    click.echo(
        format_cache(bench_cache(videos, views, arch, size, frames, workers, batch_size, seconds, results, engine))
    )


@bench_group.command("student")
@click.option("--steps", default=40, help="Optimiser steps of each separate run (online teacher, worker counts, RSS).")
@click.option("--batch-size", default=16, help="Clips per step.")
@click.option("--repeats", default=3, help="Runs of paired cache / in-memory windows, each its own process.")
@click.option("--window", default=8, help="Steps per window; streamed and replayed windows alternate.")
@click.option("--pairs", default=8, help="Measured window pairs per run (after one warm-up pair).")
@click.option(
    "--results", default="benchmarks/results", type=click.Path(file_okay=False), help="Folder of the JSON records."
)
def bench_student_command(steps, batch_size, repeats, window, pairs, results) -> None:
    """Student step time with cache / online-teacher / in-memory targets; the loader's CPU cost by
    part; data wait by workers; peak RSS.

    Example: salt bench student --steps 40
    """
    from salt.bench import bench_student, format_student

    click.echo(format_student(bench_student(steps, batch_size, results, repeats, window, pairs)))


@main.command("reconstruct")
@click.argument("run_dir", metavar="RUN", type=click.Path(file_okay=False))
@click.option(
    "--data", required=True, help="CSV of 'path label' lines (e.g. the val split); its first videos are shown."
)
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="PNG to write (e.g. runs/inspect/reconstruction.png)."
)
@click.option("--clips", default=4, type=click.IntRange(1, 16), help="Videos shown, three rows each.")
@click.option("--mask-index", default=0, help="Which of the run's mask configurations hides the tubelets.")
@click.option("--seed", default=0, help="Seed of the masks.")
def reconstruct_command(run_dir, data, out, clips, mask_index, seed) -> None:
    """A stage-1 teacher's reconstructions: masked input, prediction and truth, frame by frame.

    RUN is the folder of a `salt train-teacher` run (its config.yaml and checkpoints/).
    Example: salt reconstruct runs/teacher_tiny --data data/synthetic/val.csv --out runs/inspect/reconstruction.png
    """
    from salt.reconstruction import reconstruction_picture

    shown = reconstruction_picture(run_dir, data, out, clips, mask_index, seed)
    click.echo(
        f"wrote {out}: {shown['clips']} clips from {run_dir} ({shown['checkpoint']}); masked-token loss "
        f"{shown['loss']:.4f} vs {shown['baseline_loss']:.4f} predicting zeros"
    )


@main.command("inspect")
@click.argument("cache_path", metavar="CACHE", type=click.Path())
@click.option("--verify", "run_verify", is_flag=True, help="Check every shard and sample; exit code 1 on any problem.")
@click.option(
    "--pictures", type=click.Path(file_okay=False), help="Write PNGs (samples and statistics) into this folder."
)
@click.option("--samples", default=64, help="Samples for the statistics (evenly spaced over the keys; 0: none).")
@click.option("--compare", type=click.Path(), help="Another cache of the same views: compare targets key by key.")
@click.option(
    "--format",
    "format_",
    type=click.Choice(["auto", "wds", "zarr"]),
    default="auto",
    help="Which stored format to read.",
)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the report as JSON here.")
def inspect_command(cache_path, run_verify, pictures, samples, compare, format_, json_out) -> None:
    """Describe a latent cache: manifest, integrity, target statistics, comparison, pictures.

    Example: salt inspect cache/syn --verify --pictures runs/inspect
    """
    from pathlib import Path

    from salt.inspection import format_report, inspect_cache

    report = inspect_cache(cache_path, format_, samples, run_verify, compare, pictures)
    click.echo(format_report(report))
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=1) + "\n")
    if report.get("problems"):
        raise SystemExit(1)


@bench_group.command("loader")
@click.option("--videos", default=8, help="Benchmark videos to make.")
@click.option("--seconds", default=10, help="Length of each 640x360 benchmark video.")
@click.option("--size", default=224, help="Clip height and width.")
@click.option("--samples", default=64, help="Samples drawn from each pipeline.")
@click.option(
    "--results", default="benchmarks/results", type=click.Path(file_okay=False), help="Folder of the JSON records."
)
@click.option(
    "--s3",
    "s3_url",
    metavar="URL",
    help="Also read the cache from this empty object-store folder (s3://bucket/dir; "
    "endpoint and credentials from the environment, as s3fs reads them); deleted after. benchmarks/loader_s3.sh "
    "runs it against a local S3-protocol server.",
)
def bench_loader_command(videos, seconds, size, samples, results, s3_url) -> None:
    """Samples/s per worker: the student's cache reader vs. V-JEPA-style online decoding.

    Example: salt bench loader --videos 8 --size 112
    """
    from salt.bench import bench_loader, format_loader

    click.echo(format_loader(bench_loader(videos, seconds, size, samples, results, s3_url)))


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
