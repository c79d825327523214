"""The command line a newcomer reads first: one command list, a version, an example in every
command's help, help text for every option, and the registered sizes."""

from __future__ import annotations

import click
from click.testing import CliRunner

from salt.cli import main
from salt.models import ARCHS


def commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def test_the_command_list_is_clicks_alone_and_there_is_a_version():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in main.commands:
        assert sum(line.split()[0] == name for line in result.output.splitlines() if line.strip()) == 1, name
    version = CliRunner().invoke(main, ["--version"])
    assert version.exit_code == 0 and version.output.startswith("salt, version ")


def test_every_command_has_an_example_and_every_option_help():
    for path, command in commands(main):
        result = CliRunner().invoke(main, [*path, "--help"])
        assert result.exit_code == 0 and "Example: salt " in result.output, path
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert param.help, (path, param.name)
        assert '[default: ""]' not in result.output, path


def test_models_lists_the_registered_sizes_and_filters_them():
    listed = CliRunner().invoke(main, ["models"])
    assert listed.exit_code == 0 and [line.split()[0] for line in listed.output.splitlines()[1:]] == list(ARCHS)
    rope = CliRunner().invoke(main, ["models", "*rope"])
    assert [line.split()[0] for line in rope.output.splitlines()[1:]] == [
        name for name in ARCHS if name.endswith("rope")
    ]


def test_third_party_startup_noise_is_dropped_and_real_warnings_kept(caplog, monkeypatch):
    import logging

    from salt.runtime.quiet_logs import quiet_third_party

    monkeypatch.delenv("SALT_DEBUG", raising=False)
    quiet_third_party()
    deepspeed = logging.getLogger("DeepSpeed")
    with caplog.at_level(logging.INFO):
        deepspeed.warning(
            "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it."
        )
        logging.getLogger("torch.utils.cpp_extension").warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr")
        deepspeed.warning("Your device does not support bf16: falling back")
    assert [record.getMessage() for record in caplog.records] == ["Your device does not support bf16: falling back"]
