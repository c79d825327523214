"""Options shared by several `salt` commands: a dataclass's fields as options, the benchmarks'
results folder and clips."""

from __future__ import annotations

import click


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


# The benchmarks' shared options, each written once.
results_option = click.option(
    "--results", default="benchmarks/results", type=click.Path(file_okay=False), help="Folder of the JSON records."
)
clips_option = click.option(
    "--clips", default=None, help="CSV of videos made earlier (its first --videos): none is made."
)
