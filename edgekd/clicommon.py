"""Options shared by every command, TOML defaults, and the error-to-exit-code mapping."""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from pathlib import Path

import click

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _load_toml_defaults(ctx: click.Context, _param, value):
    """``--config FILE.toml``: top-level keys and a ``[command]`` table supply defaults; flags override."""
    if value is None:
        return None
    import tomllib

    path = Path(value)
    try:
        table = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise click.BadParameter(f"config file '{path}' not found; pass an existing TOML file.") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"'{path}' is not valid TOML ({exc}); fix the file.") from None
    names = {p.name for p in ctx.command.params}
    defaults = {}
    sections, node = [table], table
    for part in ctx.command_path.split()[1:]:  # [teacher.train] is the table of 'edgekd teacher train'
        node = node.get(part, {}) if isinstance(node, dict) else {}
        sections.append(node)
    for section in sections:
        for key, val in section.items():
            if isinstance(val, dict):
                continue
            name = key.replace("-", "_")
            if name in names:
                defaults[name] = val
            elif section is not table:
                raise click.BadParameter(f"'{path}' sets unknown option '{key}' for '{ctx.command_path}'; "
                                         f"known: {', '.join(sorted(names))}.")
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    ctx.meta["config_file"] = str(path)
    return value


def common_options(func):
    """--config, --seed, --device, --quiet, --debug for a command."""
    @click.option("--config", "config_file", type=click.Path(dir_okay=False), callback=_load_toml_defaults,
                  is_eager=True, expose_value=True, help="TOML file with defaults for any option (flags override).")
    @click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Random seed.")
    @click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
    @click.option("--quiet", is_flag=True, help="No progress bars.")
    @click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)
    return wrapper


def data_options(func):
    @click.option("--data", default="digits", show_default=True,
                  help="digits | fashion-mnist[:DIR] | mnist[:DIR] | npz:PATH")
    @click.option("--train-limit", type=click.IntRange(min=1), default=None, help="Stratified subset of the train split.")
    @click.option("--val-fraction", type=click.FloatRange(0.01, 0.5), default=0.1, show_default=True)
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)
    return wrapper


def cache_options(func):
    """--cache-dir, --no-cache, --refresh-cache for commands that read teacher logits."""
    @click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                  help="Teacher-logit cache (default $EDGEKD_CACHE or ~/.cache/edgekd).")
    @click.option("--no-cache", is_flag=True, help="Do not read or write the logit cache.")
    @click.option("--refresh-cache", is_flag=True, help="Recompute the teacher logits and replace the cached ones.")
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)
    return wrapper


def load_data(params: dict):
    from edgekd.data import load_dataset

    return load_dataset(params["data"], val_fraction=params["val_fraction"], train_limit=params["train_limit"])


def show_progress(params: dict) -> bool:
    return not params.get("quiet") and sys.stderr.isatty()


def resolved_config(ctx: click.Context) -> dict:
    """The command line as resolved (flags + TOML defaults + built-in defaults), saved with artifacts."""
    params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in ctx.params.items() if k not in ("debug", "quiet")}
    return {"command": ctx.command_path, "params": params, "config_file": ctx.meta.get("config_file")}


def echo_json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def run_cli(cli: click.Group, argv=None) -> int:
    """Run ``cli``; return the exit code. User errors: one line, exit 2; ``--debug`` adds the traceback."""
    from edgekd.errors import EdgekdError

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or bool(os.environ.get("EDGEKD_DEBUG"))
    try:
        cli.main(args=argv, prog_name="edgekd", standalone_mode=False)
        return 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        return EXIT_INTERRUPTED
    except click.ClickException as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"error: {exc.format_message()}".replace("\n", " "), err=True)
        return EXIT_USER_ERROR
    except EdgekdError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"error: {exc}".replace("\n", " "), err=True)
        return getattr(exc, "exit_code", EXIT_USER_ERROR)
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: say so in one line unless --debug
        if debug:
            traceback.print_exc()
        click.echo(f"error: internal error {exc.__class__.__name__}: {exc} (rerun with --debug for the traceback and report it)", err=True)
        return 1
