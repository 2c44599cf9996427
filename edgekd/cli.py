"""The command line: parse, call the library, print, map errors to exit codes.

Heavy imports (torch, onnx, ...) happen inside the commands, so ``edgekd --help`` is instant.
Every ``EdgekdError`` becomes one line on stderr and exit code 2 (a traceback only with ``--debug``);
an interrupted training run exits with 130 after saving its checkpoint.
"""

from __future__ import annotations

import sys

import click

from edgekd.clicommon import EXIT_USER_ERROR, run_cli


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="edgekd")
def cli():
    """edgekd: distil a big teacher (or ensemble) into a small, fast student for edge devices.

    \b
    Typical flow:
      edgekd teacher train --data fashion-mnist --arch cnn --ensemble 3 --out runs/teacher
      edgekd distill --teacher runs/teacher --data fashion-mnist --student mlp --baseline --out runs/student
      edgekd evaluate runs/student --data fashion-mnist --json
      edgekd pipeline --out runs/demo        # the whole chain on the embedded 'digits' data
    """


def _register() -> None:
    from edgekd.commands import core

    cli.add_command(core.models_cmd)
    cli.add_command(core.teacher_group)
    cli.add_command(core.distill_cmd)
    cli.add_command(core.evaluate_cmd)
    cli.add_command(core.pipeline_cmd)
    for module_name, attr in (("edgekd.commands.specialists", "specialists_group"),
                              ("edgekd.commands.export", "export_cmd"),
                              ("edgekd.commands.bench", "bench_cmd"),
                              ("edgekd.commands.cache", "cache_group")):
        try:
            module = __import__(module_name, fromlist=[attr])
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        cli.add_command(getattr(module, attr))


_register()


def main(argv=None) -> None:
    sys.exit(run_cli(cli, argv))


__all__ = ["cli", "main", "EXIT_USER_ERROR"]
