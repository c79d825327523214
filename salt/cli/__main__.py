"""`python -m salt.cli …`, as the `salt` script."""

from salt.cli import run_cli

run_cli()
