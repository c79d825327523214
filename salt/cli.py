"""The `salt` command. Each sub-command is a thin wrapper over one module."""

from __future__ import annotations

import click

from salt.config import ConfigError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def main() -> None:
    """SALT: video representation learning with a frozen teacher.

    \b
    make-synthetic  write the embedded synthetic data set (mp4 + CSV)
    make-shards     pack videos and labels into WebDataset tar shards
    train-teacher   stage 1: pixel-reconstruction teacher (also under `deepspeed`)
    """


@main.command("make-synthetic")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--videos", default=160, help="Number of videos (balanced over the classes).")
@click.option("--seed", default=0, help="Same seed, same data set.")
@click.option("--size", default=96, help="Video height and width in pixels (even).")
@click.option("--frames", default=16, help="Frames per clip the set is made for.")
@click.option("--frame-step", default=4, help="Frame step of the clips the set is made for.")
@click.option("--tubelet", default=2, help="Tubelet size of the models the set is made for.")
@click.option("--val-fraction", default=0.25, help="Share of videos in val.csv.")
def make_synthetic_command(out, videos, seed, size, frames, frame_step, tubelet, val_fraction) -> None:
    """Write a synthetic motion-classification set: videos/*.mp4, train.csv, val.csv."""
    from salt.video.synthetic import SyntheticSpec, format_summary, make_synthetic

    spec = SyntheticSpec(
        videos=videos, seed=seed, size=size, frames=frames, frame_step=frame_step, tubelet=tubelet, val_fraction=val_fraction
    )
    try:
        summary = make_synthetic(out, spec)
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    click.echo(format_summary(summary))
    click.echo(f"wrote {out}/train.csv, {out}/val.csv and {out}/synthetic.json")


@main.command("make-shards")
@click.option("--data", required=True, type=click.Path(exists=True), help="CSV of 'path label' lines, or a folder of videos.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder, e.g. shards/NAME.")
@click.option("--shard-size", default=256, help="Videos per tar shard.")
def make_shards_command(data, out, shard_size) -> None:
    """Pack videos (bytes untouched) and labels into tar shards that stream; `--data DIR` reads them."""
    from salt.video.shards import make_shards

    index = make_shards(data, out, shard_size)
    videos = sum(len(shard["videos"]) for shard in index["shards"])
    click.echo(f"wrote {len(index['shards'])} shards with {videos} videos to {out} (index: {out}/videos.json)")


@main.command("train-teacher")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="YAML config (configs/teacher/…).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value, e.g. optim.steps=50.")
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in run.out_dir.")
def train_teacher_command(config_path, overrides, resume) -> None:
    """Stage 1 in one process. For several, use `deepspeed --num_gpus N salt/train_teacher.py`."""
    from salt.training.teacher import run_teacher

    result = run_teacher(config_path, list(overrides), resume)
    if result.export_path is not None:
        click.echo(f"exported {result.export_path}")
    else:
        click.echo(f"stopped after step {result.step} (run.stop_at); continue with --resume")


def run_cli() -> None:
    """Entry point that turns config errors into one clear line instead of a traceback."""
    try:
        main(standalone_mode=True)
    except ConfigError as err:
        raise SystemExit(f"config error: {err}") from None


if __name__ == "__main__":
    run_cli()
