"""The `salt` command: the group, and every sub-command grouped by what users do with it:
`data` (synthetic set, shards, checks, sizes), `stages` (train-teacher, cache-latents,
compact-cache, train-student), `evaluation` (probe, export, reconstruct, inspect, report) and
`tools` (flops, reproduce, bench). Each command is a thin wrapper over one module; heavy
imports happen inside it, so `salt --help` and refusals stay quick. `run_cli` is the entry point."""

from __future__ import annotations

import click

from salt.cli import data, evaluation, stages, tools


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
    from salt.runtime.quiet_logs import quiet_third_party

    quiet_third_party()


for _module in (data, stages, evaluation, tools):
    for _command in _module.COMMANDS:
        main.add_command(_command)


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
