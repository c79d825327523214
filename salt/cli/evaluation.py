"""`salt` commands that look at what was trained: frozen probes, exports to transformers, the
teacher's reconstructions, a cache's inspection, the pipeline report."""

from __future__ import annotations

import json
import sys

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
    from salt.config import load_config, parse_arch_pairs
    from salt.evaluation.probe import ProbeConfig, ProbeData, format_probe, run_probe, save_report

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
        which=ProbeData(allow_missing, max_videos, not no_progress and sys.stderr.isatty()),
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
    from salt.config import parse_arch_pairs
    from salt.export.hf_export import export_encoder

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
    from salt.evaluation.reconstruction import reconstruction_picture

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
@click.option(
    "--verify-shards",
    default=0,
    type=click.IntRange(min=0),
    help="With --verify: check only this many shards, evenly spread (0: all; a quick look at a large cache).",
)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the report as JSON here.")
def inspect_command(cache_path, run_verify, pictures, samples, compare, format_, verify_shards, json_out) -> None:
    """Describe a latent cache: manifest, integrity, target statistics, comparison, pictures.

    Example: salt inspect cache/syn --verify --pictures runs/inspect
    """
    from pathlib import Path

    from salt.tools.inspection import format_report, inspect_cache

    report = inspect_cache(cache_path, format_, samples, run_verify, compare, pictures, verify_shards)
    click.echo(format_report(report))
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=1) + "\n")
    if report.get("problems"):
        raise SystemExit(1)


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


@click.command("score-student")
@click.argument("run", metavar="RUN", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--cache",
    "cache_path",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="A full-rank cache of the same teacher and geometry, of videos the student never saw.",
)
@click.option("--batches", default=16, type=click.IntRange(min=1), help="Micro-batches scored (a fixed set).")
@click.option("--batch-size", default=32, type=click.IntRange(min=1), help="Samples per micro-batch.")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the score as JSON here.")
def score_student_command(run, cache_path, batches, batch_size, out) -> None:
    """The share of CACHE's target variance a trained student's predictions explain at masked
    tokens (its newest committed checkpoint; the run's masks from a fixed seed).

    Example: salt score-student runs/student --cache cache/heldout_fp16
    """
    from pathlib import Path

    from salt.evaluation.target_score import score_student

    score = score_student(run, cache_path, batches, batch_size)
    click.echo(
        f"{score['run']} ({score['checkpoint']}) on {score['cache']}: explains {score['explained_variance']:.2%} "
        f"of the target variance over {score['samples']} samples; loss {score['loss']:.4f} "
        f"(predicting the mean target: {score['baseline_loss']:.4f})"
    )
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(score, indent=1) + "\n")


COMMANDS = [probe_command, export_command, reconstruct_command, inspect_command, report_command, score_student_command]
