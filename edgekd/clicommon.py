"""Options shared by every command, TOML defaults, and the error-to-exit-code mapping."""

from __future__ import annotations

import errno
import functools
import json
import os
import sys
import traceback
import warnings
from pathlib import Path

import click

from edgekd.config import MAX_MIXUP, PRECISIONS, TrainConfig, defaults
from edgekd.validation import MAX_SEED, VAL_FRACTION, VAL_FRACTION_RANGE

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _load_toml_defaults(ctx: click.Context, _param, value):
    """``--config FILE.toml``: top-level keys and a ``[command]`` table supply defaults; flags override.

    Strict: a top-level key that no edgekd command has, an unknown key in the command's table, and a
    value of the wrong type (``epochs = 1.9``, ``teacher = 5``) are errors, never silently dropped or rounded.
    """
    if value is None:
        return None
    import tomllib

    path = Path(value)
    try:
        table = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise click.BadParameter(f"config file '{path}' not found; pass an existing TOML file.") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, IsADirectoryError) as exc:
        raise click.BadParameter(f"'{path}' is not valid TOML ({exc}); fix the file.") from None
    params = {p.name: p for p in ctx.command.params}
    known, _ = _all_option_names(ctx.find_root().command)
    _check_tables(path, table, ctx.find_root().command, "")
    for key, val in table.items():
        name = key.replace("-", "_")
        if not isinstance(val, dict) and name not in known:
            raise click.BadParameter(f"'{path}' sets '{key}', which is no option of any edgekd command; fix the "
                                     f"spelling or remove it (options of '{ctx.command_path}': {', '.join(sorted(params))}).")
    defaults = {}
    sections, node = [table], table
    for part in ctx.command_path.split()[1:]:  # [teacher.train] is the table of 'edgekd teacher train'
        node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            sections.append(node)
    for section in sections:
        for key, val in section.items():
            if isinstance(val, dict):
                continue
            name = key.replace("-", "_")
            if name in params:
                defaults[name] = _checked_toml_value(path, key, val, params[name])
            elif section is not table:
                raise click.BadParameter(f"'{path}' sets unknown option '{key}' for '{ctx.command_path}'; "
                                         f"known: {', '.join(sorted(params))}.")
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    ctx.meta["config_file"] = str(path)
    return value


def _check_tables(path: Path, table: dict, command, prefix: str) -> None:
    """Every table names a command where it stands: [distill], [teacher.train], [specialists.build];
    a [train] or [build] alone would never be read, so it is refused with the table meant."""
    commands = getattr(command, "commands", {})
    for key, val in table.items():
        if not isinstance(val, dict):
            continue
        name = f"{prefix}{key}"
        if key not in commands:
            meant = [f"{prefix}{group}.{key}" for group, sub in commands.items() if key in getattr(sub, "commands", {})]
            if meant:
                fix = f"did you mean [{meant[0]}]?"
            elif commands:
                fix = "tables here: " + ", ".join(f"[{prefix}{c}]" for c in sorted(commands)) + "."
            else:
                fix = f"[{prefix[:-1]}] takes options, not tables."
            raise click.BadParameter(f"'{path}' has a table [{name}], which no edgekd command reads; {fix}")
        _check_tables(path, val, commands[key], f"{name}.")


def _all_option_names(group) -> tuple[set, set]:
    """The option names of every command under ``group``, and every command and group name."""
    names, commands = set(), set()
    for name, command in getattr(group, "commands", {}).items():
        commands.add(name)
        names |= {p.name for p in command.params}
        sub_names, sub_commands = _all_option_names(command)
        names |= sub_names
        commands |= sub_commands
    return names, commands


def _checked_toml_value(path: Path, key: str, value, param: click.Parameter):
    """A TOML value of the option's type; no lossy conversion (an int option refuses 1.9)."""
    kind = param.type
    if getattr(param, "multiple", False):
        if not isinstance(value, list):
            raise click.BadParameter(f"'{path}': '{key}' must be a list. Got {value!r} instead.")
        return [_checked_toml_value(path, key, v, _Single(kind, param.name)) for v in value]
    if getattr(param, "is_flag", False) or isinstance(kind, click.types.BoolParamType):
        expected, ok = "true or false", isinstance(value, bool)
    elif isinstance(kind, click.types.IntParamType):
        expected, ok = "an integer", isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(kind, click.types.FloatParamType):
        expected, ok = "a number", isinstance(value, (int, float)) and not isinstance(value, bool)
    elif param.name in _NUMBERS_AS_TEXT and _is_number(value):
        return str(value)   # repr-exact: 1.0 stays a fraction ('1' would be a count), 1.2345678 keeps its digits
    elif param.name in _LISTS_AS_TEXT and isinstance(value, list) and value and all(map(_is_number, value)):
        return ",".join(map(str, value))
    elif param.name in _LISTS_AS_TEXT and value == []:
        raise click.BadParameter(f"'{path}': '{key}' must list at least one number. Got [] instead; leave '{key}' out "
                                 f"for the default.")
    else:
        expected, ok = "text (a quoted string)", isinstance(value, str)
        if param.name in _NUMBERS_AS_TEXT:
            expected = "a number or text (a quoted string)"
    if not ok:
        raise click.BadParameter(f"'{path}': '{key}' must be {expected}. Got {value!r} instead; fix the file.")
    return value


# text options whose value may be a number ('auto' or 2; '5000' or 0.5), or a comma-separated list of numbers:
# TOML's `temperature = 2` and `temperature_grid = [1, 2, 4]` mean what "--temperature 2" and "1,2,4" do
_LISTS_AS_TEXT = {"temperature_grid", "alpha_grid", "omit_classes", "keep", "batch_sizes", "threads", "clusters"}
_NUMBERS_AS_TEXT = {"temperature", "alpha", "views", "transfer_limit"} | _LISTS_AS_TEXT


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Single:
    """One element of a list-valued option, checked as the option's type."""

    def __init__(self, kind, name: str):
        self.type, self.name, self.multiple, self.is_flag = kind, name, False, False


DATA_PARALLEL_COMMANDS = ("edgekd teacher train", "edgekd distill")


def refuse_torchrun() -> None:
    """Under torchrun (WORLD_SIZE > 1) only the data-parallel commands run: any other ran whole on every
    rank, all on one GPU, the ranks racing on the same --out."""
    from edgekd.errors import ConfigError

    world = os.environ.get("WORLD_SIZE", "1")
    command = click.get_current_context().command_path
    if world.isdigit() and int(world) > 1 and command not in DATA_PARALLEL_COMMANDS:
        raise ConfigError(f"'{command}' runs in one process, but it was launched by torchrun with WORLD_SIZE={world}; "
                          f"run it without torchrun (only {' and '.join(repr(c) for c in DATA_PARALLEL_COMMANDS)} "
                          f"run data-parallel).")


class _Device(click.ParamType):
    """auto, cpu, cuda or cuda:N (``validation.check_device``: a choice list refused cuda:N)."""

    name = "auto|cpu|cuda[:N]"

    def convert(self, value, param, ctx):
        from edgekd.errors import ConfigError
        from edgekd.validation import check_device

        try:
            return check_device(value)
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)


DEVICE = _Device()


def common_options(func=None, *, device: bool = True):
    """--config, --seed, --device (unless ``device=False``: a command that runs nothing on a GPU offers none),
    --quiet, --debug for a command."""
    if func is None:
        return functools.partial(common_options, device=device)
    if device:
        func = click.option("--device", type=DEVICE, metavar="[auto|cpu|cuda|cuda:N]", default=defaults(TrainConfig)["device"],
                            show_default=True, help="auto (a GPU when one is visible), cpu, cuda or cuda:N.")(func)

    @click.option("--config", "config_file", type=click.Path(dir_okay=False), callback=_load_toml_defaults,
                  is_eager=True, expose_value=True, help="TOML file with defaults for any option (flags override).")
    @click.option("--seed", type=click.IntRange(min=0, max=MAX_SEED), default=defaults(TrainConfig)["seed"], show_default=True,
                  help="Random seed.")
    @click.option("--quiet", is_flag=True, help="No progress bars.")
    @click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
    @click.option("--trust-code", is_flag=True,
                  help="Let artifacts that name your own architecture (py:...) import and run that code.")
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        refuse_torchrun()
        if not kwargs.get("trust_code"):
            return func(*args, **kwargs)
        from edgekd.models import trust_code

        with trust_code(True):
            return func(*args, **kwargs)
    return wrapper


def data_options(func):
    @click.option("--data", default="digits", show_default=False,
                  help="digits | fashion-mnist[:DIR] | mnist[:DIR] | npz:PATH | imagefolder:DIR | "
                       "synthetic:classes=N,groups=G,dim=D,seed=S (generated); default: digits, except that commands "
                       "that score models (evaluate, bench, specialists regate) default to the data the models were made on")
    @click.option("--image-size", default=None, help="imagefolder: resize every image to HxW (default: the size they share).")
    @click.option("--channels", type=click.Choice(["1", "3"]), default=None,
                  help="imagefolder: grayscale or RGB (default: from the files).")
    @click.option("--test-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
                  help="imagefolder without a test/ folder: the share held out for test (default 0.2, fixed per folder).")
    @click.option("--train-limit", type=click.IntRange(min=1), default=None, help="Stratified subset of the train split.")
    @click.option("--val-fraction", type=click.FloatRange(*VAL_FRACTION_RANGE), default=VAL_FRACTION, show_default=True)
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


def register_stage_kinds() -> None:
    """Import the stage packages that serve artifact kinds (the specialist ensemble), so a teacher of
    that kind loads even where edgekd's entry points are not installed (a source checkout on PYTHONPATH)."""
    try:
        import specialists.combine  # noqa: F401  (registers "specialist-ensemble")
    except ImportError:
        pass


def data_spec(params: dict) -> str:
    """``--data`` with the image-folder flags folded in, so the spec an artifact records reloads the same data."""
    spec = params["data"]
    folder = [("size", params.get("image_size")), ("channels", params.get("channels")), ("test", params.get("test_fraction"))]
    given = [f"{key}={value}" for key, value in folder if value is not None]
    if given and not str(spec).startswith("imagefolder:"):
        raise click.BadParameter(f"--image-size, --channels and --test-fraction apply to 'imagefolder:DIR' data; "
                                 f"got --data {spec}.")
    in_spec = {option.partition("=")[0] for option in str(spec).split(",")[1:]}
    for (key, value), flag in zip(folder, ("--image-size", "--channels", "--test-fraction")):
        if value is not None and key in in_spec:   # two values for one setting: which one was meant is unknown
            raise click.BadParameter(f"{flag} sets what '{key}=' in --data {spec} already sets; give it once.")
    return ",".join([spec, *given])


def recorded_data(model) -> str | None:
    """The data spec an edgekd artifact (its manifest) or edgekd ONNX export (its metadata) was made on."""
    import json

    from edgekd.outputs import onnx_metadata

    path = Path(str(model))
    try:
        if (path / "manifest.json").is_file():
            spec = (json.loads((path / "manifest.json").read_text()).get("data") or {}).get("spec")
        elif path.suffix.lower() == ".onnx" and path.is_file():
            spec = (onnx_metadata(path) or {}).get("edgekd.data")
        else:
            spec = None
    except Exception:   # unreadable: the command's own loading says why
        return None
    return spec if isinstance(spec, str) and spec else None


def data_of_models(ctx: click.Context, params: dict, models) -> None:
    """Without --data, a command scoring models reads the data they were made on (all of them the same),
    not 'digits': a model scored on other data of the same size gave a number that meant nothing."""
    if ctx.get_parameter_source("data") is not click.core.ParameterSource.DEFAULT:
        return
    specs = {_comparable_spec(recorded_data(m)) for m in models if m is not None} - {None}
    if len(specs) > 1:
        raise click.BadParameter(f"the models were made on different data ({', '.join(sorted(specs))}); pass --data "
                                 f"to score them on one.", param_hint="'--data'")
    if specs:
        params["data"] = specs.pop()


def _comparable_spec(spec: str | None) -> str | None:
    """A recorded spec with its file or folder absolute (``edgekd.data.canonical_spec``): a model made before specs
    were recorded so, 'npz:d.npz', and one made since from it, 'npz:/work/d.npz', were made on the same data."""
    from edgekd.data import canonical_spec

    return canonical_spec(spec) if isinstance(spec, str) else spec


def load_data(params: dict):
    from edgekd.data import load_dataset

    return load_dataset(data_spec(params), val_fraction=params["val_fraction"], train_limit=params["train_limit"])


def show_progress(params: dict) -> bool:
    return not params.get("quiet") and sys.stderr.isatty()


def resolved_config(ctx: click.Context) -> dict:
    """The command line as resolved (flags + TOML defaults + built-in defaults), saved with artifacts."""
    params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in ctx.params.items() if k not in ("debug", "quiet")}
    return {"command": ctx.command_path, "params": params, "config_file": ctx.meta.get("config_file")}


def echo_json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


_DISK_ERRORS = {errno.ENOSPC: "the disk is full", errno.EROFS: "the file system is read-only",
                errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                errno.EDQUOT: "the disk quota is exceeded"}
# a path the user gave (--out, --cache-dir, EDGEKD_CACHE) that cannot be used: theirs to change, not a bug
_PATH_ERRORS = {errno.ENAMETOOLONG: "a name in it is too long", errno.ENOTDIR: "a part of it is not a folder",
                errno.ELOOP: "it has too many levels of symbolic links", errno.ENOENT: "a folder on it does not exist"}
EXIT_TERMINATED = 143


class _Terminated(BaseException):
    """SIGTERM outside a training loop (which checkpoints and stops by itself)."""


def _on_sigterm(_signum, _frame):
    raise _Terminated()


def _show_warning(message, category, filename, lineno, file=None, line=None):
    from edgekd.errors import EdgekdWarning

    if issubclass(category, EdgekdWarning):
        click.echo(f"warning: {message}", err=True)
    else:
        _DEFAULT_SHOWWARNING(message, category, filename, lineno, file, line)


_DEFAULT_SHOWWARNING = warnings.showwarning


def run_cli(cli: click.Group, argv=None) -> int:
    """Run ``cli``; return the exit code. User errors: one line, exit 2; ``--debug`` adds the traceback.

    A full or read-only disk is a user error too (one line, exit 2); SIGTERM anywhere in the command
    ends it with one line and exit 143 (a training run saves its checkpoint first and exits 130).
    """
    import signal
    import threading

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or bool(os.environ.get("EDGEKD_DEBUG"))
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    shown, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        return _run(cli, argv, debug)
    finally:
        warnings.showwarning = shown
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", None)   # click >= 8.2


def _run(cli: click.Group, argv: list, debug: bool) -> int:
    from edgekd.errors import EdgekdError

    _RUN_STORES_FROM[0] = len(_stores_opened())   # this command's run stores are those opened from here on
    try:
        cli.main(args=argv, prog_name="edgekd", standalone_mode=False)
        return 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        return EXIT_INTERRUPTED
    except click.ClickException as exc:
        if _NO_ARGS_IS_HELP is not None and isinstance(exc, _NO_ARGS_IS_HELP):   # 'edgekd', 'edgekd teacher': the help
            click.echo(exc.ctx.get_help())
            return 0
        if debug:
            traceback.print_exc()
        click.echo(f"error: {exc.format_message()}".replace("\n", " "), err=True)
        return EXIT_USER_ERROR
    except EdgekdError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"error: {with_flags(str(exc), cli, argv)}".replace("\n", " "), err=True)
        return getattr(exc, "exit_code", EXIT_USER_ERROR)
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        return EXIT_INTERRUPTED
    except _Terminated:
        resume = "; the run keeps its checkpoint: rerun with --resume" if _kept_checkpoint(argv) else ""
        click.echo(f"error: terminated by SIGTERM; nothing was replaced (outputs are written whole or not at all{resume})",
                   err=True)
        return EXIT_TERMINATED
    except OSError as exc:
        if exc.errno in _PATH_ERRORS and exc.filename:
            if debug:
                traceback.print_exc()
            click.echo(f"error: cannot use the path '{exc.filename}': {_PATH_ERRORS[exc.errno]} ({exc.strerror or exc}); "
                       f"nothing was replaced; choose another --out (or --cache-dir, EDGEKD_CACHE).", err=True)
            return EXIT_USER_ERROR
        if exc.errno not in _DISK_ERRORS:
            return _internal(exc, debug)
        if debug:
            traceback.print_exc()
        if exc.errno in (errno.EACCES, errno.EPERM) and _unreadable(exc.filename):   # an input, not an output
            click.echo(f"error: cannot read '{exc.filename}': {_DISK_ERRORS[exc.errno]}; nothing was replaced; make it "
                       f"readable (chmod) or run as a user who may read it.", err=True)
            return EXIT_USER_ERROR
        where = f" '{exc.filename}'" if exc.filename else ""
        click.echo(f"error: cannot write{where}: {_DISK_ERRORS[exc.errno]} ({exc.strerror or exc}); nothing was replaced; "
                   f"free some space or choose a writable --out (and --cache-dir).", err=True)
        return EXIT_USER_ERROR
    except Exception as exc:  # a bug: say so in one line unless --debug
        if _out_of_memory(exc):   # not a bug: a batch, model or split larger than the GPU
            if debug:
                traceback.print_exc()
            click.echo(f"error: the GPU ran out of memory ({str(exc).splitlines()[0][:160]}); "
                       f"{_out_of_memory_fix(cli, argv)}.", err=True)
            return EXIT_USER_ERROR
        if _host_out_of_memory(exc):   # nor a model, batch or data larger than the machine's memory
            if debug:
                traceback.print_exc()
            click.echo(f"error: this machine ran out of memory ({_allocation(exc)}); choose a smaller model, batch size "
                       f"or --train-limit, or a machine with more memory.", err=True)
            return EXIT_USER_ERROR
        return _internal(exc, debug)


def _out_of_memory_fix(cli: click.Group, argv: list) -> str:
    """What the command that ran out of GPU memory lets a user change: its own batch option where it has one,
    the CPU, and going on from a checkpoint it kept."""
    options = {o for p in _command(cli, argv).params for o in p.opts}
    batch = next((f"a smaller {o}" for o in ("--batch-size", "--batch-sizes") if o in options), None)
    if _kept_checkpoint(argv):
        return (f"rerun{' with ' + batch if batch else ''} and --overwrite, or go on from the kept checkpoint on the CPU "
                f"with --resume --device cpu")
    return f"rerun with {batch} or with --device cpu" if batch else "rerun with --device cpu"


def _out_of_memory(exc: Exception) -> bool:
    """torch's CUDA out-of-memory error, told without importing torch (a command that never loaded it
    cannot have raised it)."""
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, getattr(torch, "OutOfMemoryError", ()))


def _unreadable(path) -> bool:
    """Whether ``path`` exists but this process may not read it (a refused read, not a refused write)."""
    return bool(path) and os.path.lexists(path) and not os.access(path, os.R_OK)


def _host_out_of_memory(exc: Exception) -> bool:
    """An allocation in host memory that failed: Python's MemoryError, or torch's CPU allocator's RuntimeError."""
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "DefaultCPUAllocator: can't allocate memory"
                                            in str(exc))


def _allocation(exc: Exception) -> str:
    """The size torch says it tried to allocate ("you tried to allocate 17179869184 bytes"), or the error's first line."""
    import re

    found = re.search(r"tried to allocate (\d+) bytes", str(exc))
    if found:
        return f"{int(found.group(1)) / 1e9:.1f} GB asked for at once"
    return (str(exc).splitlines() or [type(exc).__name__])[0][:160] or type(exc).__name__


def refuse_resume_and_overwrite(params: dict) -> None:
    """One keeps what an interrupted run finished, the other starts over: both at once is refused."""
    from edgekd.errors import ConfigError

    if params.get("resume") and params.get("overwrite"):
        raise ConfigError("--resume keeps what the interrupted run finished and --overwrite starts over; pass one of "
                          "them. Got both.")


def cache_option_rules(params: dict) -> list:
    """--cache-dir and --refresh-cache do nothing with --no-cache (``refuse_unused`` rules)."""
    return [("cache_dir", not params["no_cache"], "without --no-cache"),
            ("refresh_cache", not params["no_cache"], "without --no-cache")]


def refuse_unused(rules) -> None:
    """Options typed on the command line that this run would not use are refused, never silently ignored.

    ``rules``: ``(option name, whether this run uses it, "with --x")``; a value from a ``--config`` file may
    be shared between runs and is not checked."""
    from edgekd.errors import ConfigError

    ctx = click.get_current_context()
    for name, used, when in rules:
        if used or ctx.get_parameter_source(name) is not click.core.ParameterSource.COMMANDLINE:
            continue
        option = next(p for p in ctx.command.params if p.name == name)
        flag = next((o for o in option.opts if o.startswith("--")), option.opts[0])
        raise ConfigError(f"{flag} applies only {when}, so this run would ignore it; leave {flag} out.")


# the commands that keep a checkpoint when stopped (the others, export and bench, start again)
_RESUMABLE = (("teacher", "train"), ("distill",), ("specialists", "build"), ("pipeline",))


def _resumable(argv: list) -> bool:
    words = [a for a in argv if not a.startswith("-")][:2]
    return any(tuple(words[:len(c)]) == c for c in _RESUMABLE)


_RUN_STORES_FROM = [0]   # how many run stores the process had opened when the running command began


def _stores_opened() -> tuple:
    """The run stores this process opened (none where edgekd.training, and torch with it, was never loaded)."""
    training = sys.modules.get("edgekd.training")
    return training.stores_opened() if training is not None else ()


def _kept_checkpoint(argv: list) -> bool:
    """Whether the stopped command left a checkpoint to resume from: a run store it opened (``--out`` from a
    ``--config`` file too), or, stopped before opening one, the store of its ``--out`` (``OUT.partial``; a
    pipeline's stages' ``OUT/STAGE.partial``) from the run before. A run stopped before its first has none."""
    if not _resumable(argv):
        return False
    given = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--out"] + [a[6:] for a in argv if a.startswith("--out=")]
    out = Path(given[-1]) if given else None
    stores = [*_stores_opened()[_RUN_STORES_FROM[0]:],
              *([out.with_name(out.name + ".partial"), *(out.glob("*.partial") if out.is_dir() else ())] if out else [])]
    if not any(store.is_dir() for store in stores):
        return False
    from edgekd.training import holds_checkpoint

    return any(holds_checkpoint(store) for store in stores)


def _command(cli: click.Group, argv: list) -> click.Command:
    """The (sub)command ``argv`` runs: 'teacher train ...' is ``teacher``'s ``train``."""
    command = cli
    for token in argv:
        if not isinstance(command, click.Group) or token not in command.commands:
            break
        command = command.commands[token]
    return command


def with_flags(message: str, cli: click.Group, argv: list) -> str:
    """``The 'batch_sizes' parameter`` becomes ``The 'batch_sizes' parameter (--batch-sizes)`` where the command
    run has that option: the library names its arguments, a command-line user needs the flag to change."""
    import re

    flags = {p.name: next((o for o in p.opts if o.startswith("--")), None) for p in _command(cli, argv).params
             if isinstance(p, click.Option)}

    def named(match):
        flag = flags.get(match.group(1))
        return f"{match.group(0)} ({flag})" if flag else match.group(0)

    return re.sub(r"The '(\w+)' parameter", named, message)


def _internal(exc: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    message = str(exc).replace("\n", " ")[:300]
    click.echo(f"error: internal error {exc.__class__.__name__}: {message} (rerun with --debug for the traceback and report it)", err=True)
    return 1


def train_options(train: TrainConfig):
    """The training loop's options, their defaults from ``train`` (the stage config's own TrainConfig)."""
    def decorate(func):
        @click.option("--epochs", type=click.IntRange(min=1), default=train.epochs, show_default=True)
        @click.option("--batch-size", type=click.IntRange(min=1), default=train.batch_size, show_default=True)
        @click.option("--lr", type=click.FloatRange(0, 10, min_open=True), default=train.lr, show_default=True,
                      help="Peak learning rate (AdamW, one-cycle), in (0, 10].")
        @click.option("--weight-decay", type=click.FloatRange(0, 10), default=train.weight_decay, show_default=True)
        @click.option("--patience", type=click.IntRange(min=0), default=train.patience, show_default=True,
                      help="Stop after this many epochs without val improvement (0: never).")
        @click.option("--jitter", type=click.IntRange(min=0), default=train.jitter, show_default=True,
                      help="Random shifts of up to this many pixels (the paper's input jitter); 0 = off.")
        @click.option("--mixup", type=click.FloatRange(0, MAX_MIXUP), default=train.mixup, show_default=True,
                      help="Mixup: blend each batch with a shuffled copy of itself, weight drawn from Beta(a, a), and "
                           "the labels alike; 0 = off. In distill the teacher runs online on every blend (function matching).")
        @click.option("--flip/--no-flip", default=train.flip, show_default=True,
                      help="Images only: mirror a random half of each batch left to right (for classes that keep their "
                           "name when mirrored: garments, animals; not digits or text). In distill the teacher judges the "
                           "mirrored image too (online, or cached on mirrored views).")
        @click.option("--precision", type=click.Choice(PRECISIONS), default=train.precision, show_default=True,
                      help="bf16 autocasts the forward pass and loss (weights and optimizer stay fp32).")
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            return func(*args, **kwargs)
        return wrapper
    return decorate


def make_train_config(params, **overrides):
    from edgekd.device import resolve_device

    device = str(resolve_device(params["device"]))   # (cuda:N keeps its N)
    fields = dict(epochs=params["epochs"], batch_size=params["batch_size"], lr=params["lr"],
                  weight_decay=params["weight_decay"], patience=params["patience"], jitter=params["jitter"],
                  seed=params["seed"], device=device, precision=params["precision"], mixup=params["mixup"],
                  flip=params["flip"])
    return TrainConfig(**{**fields, **overrides})
