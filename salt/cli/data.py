"""`salt` commands about data: the synthetic set, video shards, checking a data list, the model sizes."""

from __future__ import annotations

import json

import click

from salt.video.decoders import DECODERS, DEFAULT_DECODER


@click.command("make-synthetic")
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


@click.command("models")
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


@click.command("check-data")
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
@click.option(
    "--decoder",
    default=DEFAULT_DECODER,
    type=click.Choice(DECODERS),
    show_default=True,
    help="Video decoder (salt/video/decoders.py); decord needs pip install decord2.",
)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the report as JSON here.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def check_data_command(data, workers, decode_timeout, decoder, json_out, no_progress) -> None:
    """Decode every video of DATA (a CSV of 'path label' lines, a folder, or make-shards output)
    once: counts, frames, sizes, durations, labels per class, and every failure by file or line.
    Exit status 1 when any line is unusable.

    Example: salt check-data data/syn/train.csv
    """
    from pathlib import Path

    from salt.video.check_data import check_data, format_check

    report = check_data(data, workers, decode_timeout, not no_progress, decoder)
    click.echo(format_check(report))
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=1) + "\n")
    if report["failed"] or report["bad_lines"]:
        raise SystemExit(1)


@click.command("make-shards")
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


COMMANDS = [make_synthetic_command, models_command, check_data_command, make_shards_command]
