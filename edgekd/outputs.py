"""What a command may write: the one check every writer goes through before anything is written.

Rules (issue 10, "nothing the user had is ever lost"):

- ``--overwrite`` replaces only something edgekd wrote, recognised by its contents: an artifact folder
  (``manifest.json`` of format ``edgekd.artifact``, and nothing in it that the manifest does not list),
  a benchmark report folder (``report.json`` of format ``edgekd.bench`` and its rendered files), a
  pipeline folder (its stage folders, each an edgekd output), an export (``NAME.onnx`` with the
  summary ``NAME.onnx.json`` that edgekd writes beside it);
- never an input of the command (a teacher, the data, calibration data, ``--from``) nor a folder that
  contains one, nor ``/``, the home folder, the current folder or one of its parents, nor a symbolic
  link (edgekd does not write through links);
- a new output inside an input artifact's folder is allowed as long as it replaces nothing its
  manifest lists (``edgekd export runs/student --out runs/student/student.onnx``: keep exports beside it);
- ``--resume`` replaces an existing output only when the interrupted run it continues (``OUT.partial``)
  exists.

Temporary and backup names carry the process id and a random part (``tempfile.mkdtemp``) and the
suffixes below; those of a process that no longer runs (a ``kill -9``) are removed by the next writer.
A lock file beside the output (``fcntl.flock``) refuses a second writer of the same output.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Iterable

from edgekd.errors import EdgekdError
from edgekd.manifest import FORMAT

TEMP_SUFFIX = ".edgekd-tmp"
OLD_SUFFIX = ".edgekd-old"
LOCK_SUFFIX = ".edgekd-lock"
REPORT_FILES = ("report.json", "report.md", "latency.png", "pareto.png")
PIPELINE_ARTIFACTS = ("teacher", "specialists", "student")
PIPELINE_FILES = ("summary.md", "summary.json", "pipeline.json")
PIPELINE_SUMMARY_HEADER = b"# edgekd pipeline on "   # the first line edgekd.pipeline.render_summary writes
KINDS = ("artifact", "report", "pipeline", "export")


class OutputError(EdgekdError):
    """An output path that edgekd must not write (an input, a user's folder, the root, ...)."""


# --- recognising edgekd's own outputs -------------------------------------------------------------

def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def artifact_files(folder: str | Path) -> set[str] | None:
    """The relative names an artifact folder's manifests list (its own and its nested artifacts'),
    the manifests included; ``None`` when ``folder`` is not an edgekd artifact."""
    folder = Path(folder)
    manifest = _read_json(folder / "manifest.json")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        return None
    names = {"manifest.json"}
    for name in manifest["files"]:
        names.add(str(name))
        if str(name).endswith("/manifest.json"):
            sub = str(name)[: -len("/manifest.json")]
            for nested in artifact_files(folder / sub) or ():
                names.add(f"{sub}/{nested}")
    return names


def export_summary_of(model: str | Path) -> dict | None:
    """The export summary beside ``model`` (``NAME.json``) when it describes that very file: its
    ``model_sha256`` matches the file's (a summary from before the hash was recorded is taken as it is).
    ``None`` when there is none, it is not edgekd's, or it belongs to another model: an export renames its
    summary into place before its model, so an export cut between the two leaves the old model beside
    the new summary, which this refuses to pair."""
    from edgekd.artifacts import sha256_file

    model = Path(model)
    path = model.with_name(model.name + ".json")
    if not is_export_summary(path) or not model.is_file():
        return None
    summary = _read_json(path)
    recorded = summary.get("model_sha256")
    return summary if recorded is None or recorded == sha256_file(model) else None


def is_export_summary(path: str | Path) -> bool:
    """``NAME.onnx.json`` (or ``.ort.json``, ``.pte.json``) as ``edgekd export`` writes it."""
    data = _read_json(Path(path)) if Path(path).is_file() else None
    return isinstance(data, dict) and {"model", "format", "source", "verification"} <= set(data) \
        and isinstance(data.get("source"), dict) and "fingerprint" in data["source"]


def own_export(model: str | Path) -> bool:
    """``model`` (and the summary beside it) are edgekd's to replace: the summary is an export summary and the
    file is the one it describes (same sha256), or is missing, or is the export that summary replaced (an
    export cut between renaming its summary and its model leaves the previous export beside the new
    summary). A user's file put in place of an export, or an export edited since, is not."""
    model = Path(model)
    if not is_export_summary(model.with_name(model.name + ".json")):
        return False
    return not model.exists() or export_summary_of(model) is not None or _replaced_by_its_summary(model)


def replaced_sha256(out: str | Path) -> str | None:
    """The sha256 of the export an export is about to replace (recorded in the new summary: an export cut
    between renaming its summary and its model leaves that file beside the new summary, still edgekd's)."""
    from edgekd.artifacts import sha256_file

    return sha256_file(out) if Path(out).is_file() else None


def _replaced_by_its_summary(model: Path) -> bool:
    """The previous export, left beside the summary of one cut before its model was renamed in: its hash is
    the one that summary recorded as replaced (a file edited in place since, keeping edgekd's metadata, is not)."""
    from edgekd.artifacts import sha256_file

    summary = _read_json(model.with_name(model.name + ".json"))
    recorded = summary.get("replaces_sha256") if isinstance(summary, dict) else None
    return isinstance(recorded, str) and model.is_file() and recorded == sha256_file(model)


def onnx_metadata(path: str | Path) -> dict | None:
    """An ``.onnx`` file's ``metadata_props`` as text (the graph read without its external weights), or
    ``None`` when it cannot be read."""
    try:
        import onnx

        return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception:
        return None


def is_report_folder(folder: str | Path) -> bool:
    data = _read_json(Path(folder) / "report.json")
    return isinstance(data, dict) and data.get("format") == "edgekd.bench"


def _own_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith((TEMP_SUFFIX, OLD_SUFFIX, LOCK_SUFFIX))


def _in_own_temp(name: str) -> bool:
    """``name`` (a path inside an output) is, or lies in, an edgekd temporary, backup or lock: an export
    killed mid-write leaves ``.NAME.PID-RANDOM.edgekd-tmp/model.fp32.onnx``, edgekd's whole."""
    return any(_own_temp(part) for part in Path(name).parts)


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir() or p.is_symlink())


def foreign_entries(folder: str | Path, kind: str) -> list[str] | None:
    """Files in ``folder`` that an edgekd output of ``kind`` does not hold (``[]``: all edgekd's);
    ``None`` when ``folder`` is not an edgekd output of that kind at all."""
    folder = Path(folder)
    if kind == "artifact":
        listed = artifact_files(folder)
        if listed is None:
            return None
        return [name for name in _files(folder) if name not in listed and not _in_own_temp(name)]
    if kind == "report":
        if not is_report_folder(folder):
            return None
        return [name for name in _files(folder) if name not in REPORT_FILES and not _in_own_temp(name)]
    if kind == "pipeline":
        return _pipeline_foreign(folder)
    raise ValueError(kind)


def _export_folder_foreign(folder: Path) -> list[str]:
    foreign = []
    for name in _files(folder):
        path = folder / name
        if "/" in name or _in_own_temp(name):
            foreign += [] if _in_own_temp(name) else [name]
        elif path.suffix in (".onnx", ".ort", ".pte") and own_export(path):
            continue
        elif name.endswith((".onnx.json", ".ort.json", ".pte.json")) and own_export(path.with_name(path.stem)):
            continue
        else:
            foreign.append(name)
    return foreign


def _own_pipeline_file(path: Path) -> bool:
    """summary.md, summary.json or pipeline.json as ``edgekd pipeline`` writes them (by content, not by name)."""
    if path.name == "summary.md":
        with open(path, "rb") as handle:
            return handle.read(len(PIPELINE_SUMMARY_HEADER)) == PIPELINE_SUMMARY_HEADER
    data = _read_json(path)
    if path.name == "summary.json":
        return isinstance(data, dict) and data.get("format") == "edgekd.pipeline"
    return isinstance(data, dict) and "config" in data and set(data) <= {"config", "data", "teacher", "stages"}


def _pipeline_foreign(folder: Path) -> list[str] | None:
    """A pipeline folder: summary files, stage artifacts, an export folder, a bench report, the logit
    cache and run stores; anything else (or a stage folder that is not edgekd's) is foreign."""
    foreign, known = [], 0
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if _own_temp(name):
            continue
        if entry.is_symlink():
            foreign.append(name)
        elif name in PIPELINE_FILES and entry.is_file():
            if not _own_pipeline_file(entry):
                foreign.append(name)   # a user's own summary.md is theirs, whatever its name
                continue
            known += 1
        elif name in PIPELINE_ARTIFACTS and entry.is_dir():
            inner = foreign_entries(entry, "artifact")
            foreign += [name] if inner is None else [f"{name}/{n}" for n in inner]
            known += 1
        elif name.endswith(".partial") and name[: -len(".partial")] in PIPELINE_ARTIFACTS and entry.is_dir():
            continue
        elif name == "export" and entry.is_dir():
            foreign += [f"export/{n}" for n in _export_folder_foreign(entry)]
        elif name == "bench" and entry.is_dir():
            inner = foreign_entries(entry, "report") if any(entry.iterdir()) else []
            foreign += [name] if inner is None else [f"bench/{n}" for n in inner]
        elif name == "cache" and entry.is_dir():
            foreign += [f"cache/{n}" for n in _files(entry) if not n.endswith(".safetensors") and not n.endswith(".tmp")]
        else:
            foreign.append(name)
    summary = _read_json(folder / "summary.json")
    if not known and not (isinstance(summary, dict) and summary.get("format") == "edgekd.pipeline"):
        return None if foreign else []
    return foreign


# --- inputs ---------------------------------------------------------------------------------------

def data_paths(spec: str | None) -> list[Path]:
    """The files or folders a dataset spec reads (``npz:PATH``, ``mnist:DIR``, the default IDX folders)."""
    if not spec:
        return []
    name, _, arg = str(spec).partition(":")
    if name == "npz" and arg:
        return [Path(arg)]
    if name == "imagefolder" and arg:
        return [Path(arg.split(",")[0])]
    if name in ("mnist", "fashion-mnist"):
        if arg:
            return [Path(arg)]
        found = [Path("/usr/share/datasets") / name]
        if os.environ.get("EDGEKD_DATA"):
            found.append(Path(os.environ["EDGEKD_DATA"]) / name)
        return found
    return []


def _resolve(path: Path) -> Path:
    return Path(os.path.abspath(path)).resolve()


# --- the check ------------------------------------------------------------------------------------

def check_output(out: str | Path, *, kind: str, overwrite: bool = False, resume: bool = False,
                 inputs: Iterable[str | Path | None] = (), in_place: str | Path | None = None,
                 data: Iterable[str | Path] = ()) -> Path:
    """Raise ``OutputError`` unless writing ``out`` (an output of ``kind``) loses nothing of the user's.

    ``inputs`` are the paths the command reads; ``data`` the files and folders of its dataset
    (``data_paths``), inside which nothing may be written; ``in_place`` names the one input the command
    may replace by design (``specialists regate SPEC --out SPEC --overwrite``), read whole before writing.
    """
    if kind not in KINDS:
        raise ValueError(kind)
    out = Path(out)
    restore_interrupted_swap(out)   # the one change a check makes: a lost artifact is back before it is judged
    resolved = _resolve(out)
    what = "file" if kind == "export" else "folder"
    _refuse_special(out, resolved)
    if out.is_symlink():
        raise OutputError(f"Output '{out}' is a symbolic link (to '{os.readlink(out)}'); edgekd does not write through "
                          f"links; pass the real path or a new name with --out.")
    _check_data(out, resolved, data)
    same_as_input = _check_inputs(out, resolved, kind, [*inputs, *data], in_place)
    _check_enclosing(out, resolved, kind)
    if kind == "export":
        _check_file_output(out, overwrite)
        return out
    if out.exists() and not out.is_dir():
        raise OutputError(f"Output path '{out}' exists and is not a folder; choose another --out.")
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent   # missing parent folders are created when the output is written
    if not ancestor.is_dir():
        raise OutputError(f"Output folder '{out}' cannot be created: '{ancestor}' is a file; choose another --out.")
    if not out.is_dir() or not any(out.iterdir()):
        return out
    if same_as_input and not overwrite:
        raise OutputError(f"Writing to '{out}' replaces the input it was read from; pass --overwrite or choose another --out.")
    store = out.with_name(out.name + ".partial")
    if not overwrite:
        if not resume:
            raise OutputError(f"Output {what} '{out}' already exists and is not empty; pass --overwrite (edgekd replaces "
                              f"only its own outputs) or choose another --out.")
        if kind != "pipeline" and not store.is_dir():
            raise OutputError(f"--resume found no interrupted run to continue ('{store}' does not exist) and "
                              f"'{out}' already exists; it is kept: pass --overwrite to replace it or choose another --out.")
    foreign = foreign_entries(out, kind)
    label = {"artifact": "artifact folder (no manifest.json written by edgekd)", "report": "benchmark report folder "
             "(no report.json written by 'edgekd bench')", "pipeline": "pipeline folder"}[kind]
    if foreign is None:
        raise OutputError(f"Output folder '{out}' is not an edgekd {label}; edgekd replaces only what it wrote; "
                          f"move your files or choose another --out.")
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        what = "its manifest does not list (exports of it or files of yours)" if kind == "artifact" else \
            "that edgekd did not write as part of it"
        raise OutputError(f"Output folder '{out}' holds {len(foreign)} file(s) {what} ({shown}); replacing it would "
                          f"delete them; move them out (exports belong beside the folder, e.g. runs/export/) or choose "
                          f"another --out.")
    return out


def _refuse_special(out: Path, resolved: Path) -> None:
    cwd = Path.cwd().resolve()
    home = _resolve(Path.home())
    if resolved == Path(resolved.anchor):
        why = "the root folder"
    elif resolved == home:
        why = "your home folder"
    elif resolved == cwd or resolved in cwd.parents:
        why = "the current folder or one of its parents"
    else:
        return
    raise OutputError(f"Output '{out}' is {why}; edgekd writes only to a folder of its own: pass a new name with --out "
                      f"(e.g. --out runs/NAME).")


def _check_data(out: Path, resolved: Path, data) -> None:
    """An output inside a data folder would become part of the data (under train/, a class)."""
    for given in data:
        if _resolve(Path(given)) in resolved.parents and Path(given).is_dir():
            raise OutputError(f"Output '{out}' is inside '{given}', a data folder this command reads; writing there "
                              f"would change the data; choose an --out outside it.")


def _check_inputs(out: Path, resolved: Path, kind: str, inputs, in_place) -> bool:
    """Refuse an output that is, contains, or replaces part of an input; True when ``out`` is ``in_place``."""
    same = in_place is not None and _resolve(Path(in_place)) == resolved
    for given in inputs:
        if given is None or str(given) == "":
            continue
        source = _resolve(Path(given))
        if source == resolved and same:
            continue
        if source == resolved or resolved in source.parents:
            role = "is" if source == resolved else "contains"
            raise OutputError(f"Output '{out}' {role} '{given}', an input of this command; writing it would destroy "
                              f"the input; choose another --out.")
    return same


def _check_enclosing(out: Path, resolved: Path, kind: str) -> None:
    """Refuse an output that would replace a file an enclosing artifact lists (its nested baseline, its
    weights): the artifact's hashes would no longer match and it would not load. Any artifact above
    ``out`` counts, an input of the command or not."""
    for folder in resolved.parents:
        listed = artifact_files(folder)
        if not listed:
            continue
        rel = resolved.relative_to(folder).as_posix()
        names = [rel] + ([rel + ".json"] if kind == "export" else [])
        hit = [n for n in sorted(listed) if any(n == r or n.startswith(r + "/") for r in names)]
        if hit:
            raise OutputError(f"Output '{out}' would replace '{hit[0]}' of the artifact '{folder}', which would then no "
                              f"longer load; choose another --out (a new name inside that folder is fine).")


def export_summary_path(out: str | Path) -> Path:
    """``OUT.json``, the summary an export writes beside ``OUT``; an ``out`` that names no file is refused."""
    out = Path(out)
    if out.name in ("", ".", ".."):   # ('' and '/' end in no name: with_name raised a ValueError, an internal error)
        raise OutputError(f"Output '{out}' names no file; give a file name such as student.onnx.")
    return out.with_name(out.name + ".json")


def _check_file_output(out: Path, overwrite: bool) -> None:
    summary = export_summary_path(out)
    if not out.parent.is_dir():
        raise OutputError(f"The folder '{out.parent}' of output '{out}' does not exist; create it first or choose another --out.")
    if out.is_dir():
        raise OutputError(f"Output path '{out}' is a folder; give a file name.")
    if summary.is_symlink() or (summary.exists() and not summary.is_file()):
        raise OutputError(f"The export's summary '{summary}' exists and is not a plain file; move it or choose another --out.")
    if not out.exists() and not summary.exists():
        return
    ours = own_export(out)
    if not overwrite and ours:
        existing = out if out.exists() else summary
        raise OutputError(f"Output file '{existing}' already exists; pass --overwrite or choose another --out.")
    if not ours:   # checked first without --overwrite too: advising it would only lead to this refusal
        why = (f"it is not the file its summary '{summary.name}' describes" if is_export_summary(summary)
               else f"no edgekd summary '{summary.name}' beside it" if out.exists() else "it is not an edgekd export summary")
        raise OutputError(f"'{out if out.exists() else summary}' was not written by 'edgekd export' ({why}); "
                          f"--overwrite replaces only edgekd's exports; choose another --out.")


# --- temporary names, stale leftovers, locks -------------------------------------------------------

def usual_mode(folder: bool) -> int:
    """The mode a plain ``open``/``mkdir`` would give under the user's umask: ``tempfile`` makes its files
    0600 and folders 0700, which renamed into place would hide artifacts from a serving user or group."""
    mask = os.umask(0o022)   # read by setting it; put back at once
    os.umask(mask)
    return (0o777 if folder else 0o666) & ~mask


def temp_folder(out: str | Path, suffix: str = TEMP_SUFFIX) -> Path:
    """A new, unique hidden folder beside ``out`` (``.NAME.PID-RANDOM.edgekd-tmp``), held (``hold``) until
    ``release``: ``scratch_folder`` does both."""
    import tempfile

    out = Path(out)
    clean_stale(out)
    folder = hold(Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}-", suffix=suffix, dir=out.parent)))
    folder.chmod(usual_mode(folder=True))
    return folder


@contextlib.contextmanager
def scratch_folder(out: str | Path):
    """``temp_folder(out)`` for the block; on leaving it, whatever of it is still there is removed (a folder
    renamed into place meanwhile is not) and let go."""
    folder = temp_folder(out)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        release(folder)


# the paths this process holds a flock on, each with its fd: temporaries it writes (``hold``, shared) and the
# output locks it holds (``output_lock``, exclusive)
_HELD: dict[str, int] = {}


def hold(path: str | Path) -> Path:
    """Mark the temporary ``path`` (a folder, or a file, made empty here when missing) as this process's while it
    writes it: ``made_here``, and a shared ``flock`` on it until ``release``. A process of another pid
    namespace (a container sharing the folder), to which the pid in its name means nothing, then reads it as
    live (``left_behind``). Where flock is not to be had (some network file systems) the pid rules stand alone."""
    path = made_here(Path(path))
    release(path)
    try:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | (0 if path.is_dir() else os.O_CREAT)
        fd = os.open(path, flags, 0o666)
    except OSError:
        return path
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:
        os.close(fd)
        return path
    _HELD[os.path.abspath(path)] = fd
    return path


def release(path: str | Path) -> None:
    """Let go of ``hold(path)`` (after renaming the temporary into place or removing it)."""
    fd = _HELD.pop(os.path.abspath(path), None)
    if fd is not None:
        os.close(fd)


@contextlib.contextmanager
def holding(path: str | Path):
    """``hold(path)`` for the block."""
    try:
        yield hold(path)
    finally:
        release(path)


def is_held(path: str | Path) -> bool:
    """Whether a process holds a ``flock`` on ``path`` (this one: ``hold``; another: an exclusive lock cannot be
    had at once, and is let go at once where it can)."""
    if os.path.abspath(path) in _HELD:
        return True
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)   # (non-blocking: a FIFO of that name must not hang us)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


# the temporaries this process made: in a container every job is pid 1, so a name with this process's pid
# may be the leftover of the job before it (it looked alive for ever: never removed, its backup never restored),
# or, in a cache two containers share, a temporary the other one is writing: one not made here is stale
# only once nothing in it has changed for IDLE_SECONDS (a write in progress keeps changing it)
_MADE_HERE: set[str] = set()
IDLE_SECONDS = 3600


def made_here(path: Path) -> Path:
    """Record ``path``, a temporary named with this process's pid, as this process's own; returns it."""
    _MADE_HERE.add(os.path.abspath(path))
    return path


def left_behind(pid: int, path: Path) -> bool:
    """Whether the temporary ``path``, named with its writer's ``pid``, was left by a process that is gone:
    no process holds it (``hold``), and ``pid`` does not run, or it is this process's pid on a path this
    process did not make (``made_here``) and unchanged for ``IDLE_SECONDS``."""
    if is_held(path):   # a writer in another container: its pid names another process here, or none
        return False
    if pid == os.getpid():
        return os.path.abspath(path) not in _MADE_HERE and _idle(path) >= IDLE_SECONDS
    return not pid_alive(pid)


def _idle(path: Path) -> float:
    """Seconds since ``path`` (and, for a folder, anything in it) last changed."""
    import time

    try:
        newest = max([path.lstat().st_mtime, *(p.lstat().st_mtime for p in path.rglob("*"))] if path.is_dir()
                     else [path.lstat().st_mtime])
    except OSError:   # gone meanwhile: nothing to remove
        return 0.0
    return time.time() - newest


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def clean_stale(out: str | Path) -> list[Path]:
    """Remove the temporary and backup folders edgekd left beside ``out`` in a process that died. A process
    killed between moving the old ``out`` aside and renaming the new one in left no ``out`` at all: the
    backup is put back as ``out`` (the state before that run), not removed with the rest."""
    out = Path(out)
    if written_elsewhere(out):
        return []
    restore_interrupted_swap(out)
    removed = []
    for entry in _stale_entries(out):
        shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def restore_interrupted_swap(out: Path) -> Path | None:
    """Where ``out`` is missing and a dead process's backup of it is beside it, the backup becomes ``out``
    again (done before ``out`` is checked, so a run is told of the artifact before it trains)."""
    if out.exists() or out.is_symlink() or written_elsewhere(out):
        return None
    backups = [e for e in _stale_entries(out) if e.name.endswith(OLD_SUFFIX) and e.is_dir()]
    if not backups:
        return None
    newest = max(backups, key=lambda e: e.stat().st_mtime_ns)
    with contextlib.suppress(OSError):   # another process put it back first
        os.replace(newest, out)
        return out
    return None


def _stale_entries(out: Path) -> list[Path]:
    """Temporary and backup entries beside ``out`` whose process is dead."""
    if not out.parent.is_dir():
        return []
    prefix, stale = f".{out.name}.", []
    for entry in out.parent.iterdir():
        name = entry.name
        if not (name.startswith(prefix) and name.endswith((TEMP_SUFFIX, OLD_SUFFIX))):
            continue
        pid_text = name[len(prefix):].partition("-")[0]
        if pid_text.isdigit() and left_behind(int(pid_text), entry) and not entry.is_symlink():
            stale.append(entry)
    return stale


@contextlib.contextmanager
def output_lock(out: str | Path, *, make_parent: bool = True):
    """Hold an exclusive lock on ``out`` (a ``.NAME.edgekd-lock`` file beside it) while writing it.

    A second writer of the same output is refused at once. Under torchrun only rank 0 locks.
    """
    out = Path(out)
    if os.environ.get("RANK", "0") != "0" or (not make_parent and not out.parent.is_dir()):
        yield   # (an export's folder must exist: the export refuses a missing one, writing nothing)
        return
    try:   # the writer would create a missing parent anyway: created now, so that the lock beside it exists too
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"Cannot create the folder '{out.parent}' of output '{out}' ({exc.strerror or exc}); choose "
                          f"another --out.") from None
    lock = _lock_path(out)
    _HELD[os.path.abspath(lock)] = _locked(lock, out)   # (held here: not another writer's, for written_elsewhere)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()
        release(lock)


def _lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}{LOCK_SUFFIX}"


def written_elsewhere(out: Path) -> bool:
    """Whether another process holds ``output_lock(out)``: it is writing ``out``, and what is beside it (its
    temporaries, the old artifact it set aside a moment ago) is its own, whatever pid their names carry."""
    lock = _lock_path(Path(out))
    return os.path.abspath(lock) not in _HELD and is_held(lock)


def _locked(lock: Path, out: Path) -> int:
    """An fd holding ``flock`` on the file now at ``lock``. A holder removes the file as it finishes: a file
    opened just before that and locked after is no longer the lock (a third command would make and lock a new
    one beside), so the lock is taken again on the file the path names. A lock held for a moment only (``is_held``
    probing it from another process) is waited out: five tries 20 ms apart before the command is refused."""
    import time

    tries = 0
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            tries += 1
            busy = exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)
            if busy and tries < 5:
                time.sleep(0.02)
                continue
            if busy:
                raise OutputError(f"Another edgekd command is writing '{out}' (lock '{lock}' is held); wait for it to "
                                  f"finish or choose another --out.") from None
            raise
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)
