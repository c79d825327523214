"""The sub-commands of `salt` around the two processes (salt/cli.py adds them to the group):
frozen probes, exports to transformers, FLOPs, reports, the claims chain, benchmarks, the
teacher's reconstructions and the cache's inspection."""

from __future__ import annotations

import json

import click

from salt.config import override_option


@click.command("probe")
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
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a probe config value, e.g. epochs=5.",
    callback=override_option,
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
        encoder=encoder,
        random_init=random_init,
        train_data=train_data,
        val_data=val_data,
        cfg=cfg,
        work_dir=work_dir,
        arch=parse_arch_pairs(arch_pairs),
        checkpoint_key=checkpoint_key,
        which=ProbeData(allow_missing, max_videos, not no_progress and click.get_text_stream("stderr").isatty()),
    )
    click.echo(format_probe(report))
    if out:
        save_report(report, out)
        click.echo(f"wrote {out}")


@click.command("export")
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
@click.option(
    "--frame-step",
    type=click.IntRange(min=1),
    default=None,
    help="Frame step of the clips the encoder was trained on, written into salt_export.json and README.md "
    "(default: what the source records; SALT checkpoints and runs do).",
)
def export_command(encoder, out, arch_pairs, checkpoint_key, frame_step) -> None:
    """Write ENCODER as a transformers folder that `AutoModel.from_pretrained(OUT)` (and
    `AutoVideoProcessor.from_pretrained(OUT)`) load without SALT: RoPE -> VJEPA2Model, sincos1d ->
    VideoMAEModel. ENCODER: anything `salt probe --encoder` reads, or a training run folder (its
    newest committed checkpoint's encoder), one of its checkpoints/stepN folders, or a file in one.

    Example: salt export runs/student_tiny --out exports/student_hf
    """
    from salt.cache_latents.job import parse_arch_pairs
    from salt.hf_export import export_encoder

    try:
        arch = parse_arch_pairs(arch_pairs)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--arch") from None
    record = export_encoder(encoder, out, arch, checkpoint_key or None, frame_step)
    arch = record["arch"]
    click.echo(
        f"wrote {out}: {record['transformers_class']}, {record['tokens']} tokens x {record['embed_dim']} per clip "
        f"of {arch['num_frames']}x{arch['img_size']}x{arch['img_size']} from {record['source']}; "
        f"from a video file to its tokens: {out}/README.md"
    )


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


@click.command("report")
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
    from salt.tools.report import loss_curves, pipeline_report

    try:
        click.echo(pipeline_report(teacher_run, cache, student_run, list(probes)))
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    if curves:
        loss_curves({"stage 1": teacher_run, "stage 2": student_run}, curves)
        click.echo(f"wrote {curves}")


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
@click.option(
    "--results", default="benchmarks/results", type=click.Path(file_okay=False), help="Folder of the JSON records."
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    help="ray: also run the Ray engine on the same videos, beside the local one.",
)
@click.option("--clips", default=None, help="CSV of videos made earlier (its first --videos): none is made.")
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
@click.option("--clips", default=None, help="CSV of videos made earlier (its first --videos): none is made.")
@click.option(
    "--results", default="benchmarks/results", type=click.Path(file_okay=False), help="Folder of the JSON records."
)
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


@click.command("reconstruct")
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


@click.command("inspect")
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

    from salt.tools.inspection import format_report, inspect_cache

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
    from salt.tools.bench_loader import bench_loader, format_loader

    click.echo(format_loader(bench_loader(videos, seconds, size, samples, results, s3_url)))


def tool_commands() -> list[click.Command]:
    return [
        probe_command,
        export_command,
        flops_command,
        report_command,
        reproduce_command,
        bench_group,
        reconstruct_command,
        inspect_command,
    ]
