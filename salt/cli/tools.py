"""`salt` commands around the pipeline: FLOPs, the claims chain, benchmarks."""

from __future__ import annotations

import click

from salt.cli.options import clips_option, results_option
from salt.config import override_option


@click.command("flops")
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
@click.option(
    "--teacher-set", multiple=True, metavar="KEY=VALUE", help="Override the teacher config.", callback=override_option
)
@click.option(
    "--student-set", multiple=True, metavar="KEY=VALUE", help="Override the student config.", callback=override_option
)
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
    from salt.tools.flops import format_plan, plan
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


@click.command("reproduce")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML (configs/reproduce/small.yaml).")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config value, e.g. out=runs/claims.",
    callback=override_option,
)
def reproduce_command(config_path, overrides) -> None:
    """The paper's claims at small scale: a resumable chain of runs and a claims table.

    Finished steps are kept; run the same command again to resume after a stop.

    Example: salt reproduce --config configs/reproduce/small.yaml
    """
    from salt.tools.claims import format_table
    from salt.tools.reproduce import reproduce

    click.echo(format_table(reproduce(config_path, list(overrides), click.echo)))


@click.group("bench")
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
@results_option
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    help="ray: also run the Ray engine on the same videos, beside the local one.",
)
@clips_option
def bench_cache_command(
    videos, views, arch, size, frames, workers, batch_size, seconds, results, engine, clips
) -> None:
    """cache-latents views/s vs. decode alone and teacher alone; bytes per view by dtype and codec.

    Example: salt bench cache --videos 8 --views 4
    """
    from salt.tools.bench import bench_cache, format_cache

    click.echo(
        format_cache(
            bench_cache(
                videos=videos,
                views=views,
                arch=arch,
                size=size,
                frames=frames,
                workers=workers,
                batch_size=batch_size,
                seconds=seconds,
                results_dir=results,
                engine=engine,
                clips=clips,
            )
        )
    )


@bench_group.command("student")
@click.option("--steps", default=40, help="Optimiser steps of each separate run (online teacher, worker counts, RSS).")
@click.option("--batch-size", default=16, help="Clips per step.")
@click.option("--repeats", default=3, help="Runs of paired cache / in-memory windows, each its own process.")
@click.option("--window", default=8, help="Steps per window; streamed and replayed windows alternate.")
@click.option("--pairs", default=8, help="Measured window pairs per run (after one warm-up pair).")
@click.option("--arch", default="vit_tiny", help="Student size (salt models lists them).")
@click.option("--predictor", default="128x4x4", help="Predictor WIDTHxDEPTHxHEADS.")
@click.option("--frames", default=16, help="Frames per clip.")
@click.option("--size", default=64, help="Clip height and width.")
@click.option(
    "--teachers", default="vit_tiny,vit_small", help="SMALL,LARGE: the two random teachers whose caches are read."
)
@click.option("--videos", default=24, help="Videos cached.")
@clips_option
@results_option
def bench_student_command(
    steps, batch_size, repeats, window, pairs, arch, predictor, frames, size, teachers, videos, clips, results
) -> None:
    """Student step time with cache / online-teacher / in-memory targets; the loader's CPU cost by
    part; data wait by workers; peak RSS.

    Example: salt bench student --steps 40
    """
    from salt.tools.bench_student import StudentSizes, bench_student, format_student

    try:
        width, depth, heads = (int(v) for v in predictor.split("x"))
        small, large = teachers.split(",")
    except ValueError:
        raise click.BadParameter("--predictor is WIDTHxDEPTHxHEADS (e.g. 384x12x12), --teachers SMALL,LARGE") from None
    sizes = StudentSizes(arch, (width, depth, heads), frames, size, (small, large), videos, clips)
    click.echo(format_student(bench_student(steps, batch_size, results, repeats, window, pairs, sizes)))


@bench_group.command("loader")
@click.option("--videos", default=8, help="Benchmark videos to make.")
@click.option("--seconds", default=10, help="Length of each 640x360 benchmark video.")
@click.option("--size", default=224, help="Clip height and width.")
@click.option("--samples", default=64, help="Samples drawn from each pipeline.")
@results_option
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
    from salt.tools.bench_loader import bench_loader, format_loader

    click.echo(format_loader(bench_loader(videos, seconds, size, samples, results, s3_url)))


@bench_group.command("scale")
@click.option(
    "--sizes",
    default="10000,100000,1000000,5312000",
    help="Samples of the fabricated caches (8 views a video, 64 samples a shard).",
)
@click.option("--real-up-to", default=1_000_000, help="Largest cache written with tars (beyond: commit marks only).")
@click.option("--verify-up-to", default=100_000, help="Largest cache verified in full.")
@click.option("--epoch-samples", default=100_000, help="Samples the loader-memory probe reads (an epoch, at most).")
@click.option("--workers", default=8, help="Loader workers of the memory probe's rank.")
@click.option("--s3", is_flag=True, help="Also on an S3-protocol server started on 127.0.0.1 (needs moto[server]).")
@click.option("--s3-up-to", default=5_312_000, help="Largest cache made on the S3 server.")
@click.option("--work", default="/tmp/salt-bench-scale", show_default=True, help="Scratch folder (caches are kept).")
@click.option("--picture", default="docs/scale_costs.png", show_default=True, help="The log-log picture.")
@click.option("--fresh", is_flag=True, help="Measure every row again (else rows kept in WORK/rows.jsonl are reused).")
@results_option
def bench_scale_command(**options) -> None:
    """A cache's costs against its size, 10^4 to 5.3 M samples: open, order, resume, merge,
    inspect, verify, basis fit, loader memory; growth exponents fitted on log-log.

    Example: salt bench scale --sizes 10000,100000 --s3
    """
    from salt.tools.bench_scale import ScaleSettings, bench_scale

    options["sizes"] = [int(float(n)) for n in options["sizes"].split(",")]
    bench_scale(ScaleSettings(**options))


@bench_group.command("feed")
@click.option("--samples", default=64, help="Views in each paper-geometry cache (fp16: 3.2 MB of latents each).")
@click.option("--work", default="/tmp/salt-bench-feed", show_default=True, help="Scratch folder (caches are kept).")
@results_option
def bench_feed_command(samples, work, results) -> None:
    """One loader core at the paper's geometry (1568 tokens x 1024, 16 JPEG frames of 224²):
    samples/s through the training loader and at the core's limit, beside a ViT-L student's rate.

    Example: salt bench feed --samples 64
    """
    from pathlib import Path

    from salt.tools.bench_feed import bench_feed

    bench_feed(Path(work), samples, results)


COMMANDS = [flops_command, reproduce_command, bench_group]
