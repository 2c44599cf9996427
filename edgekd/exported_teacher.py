"""A teacher saved by ``torch.export.save`` (a ``.pt2`` archive): the successor of TorchScript, which torch
deprecates.

An ``ExportedProgram`` is a graph of ATen operators, its weights stored as raw bytes, so unlike a TorchScript
file it runs no code of the file's. ``torch.export.load`` can still unpickle or load code: weights of tensor
subclasses and custom objects are pickles, its sample inputs fall back to a full ``torch.load`` when the safe one
fails, its legacy-format fallback unpickles, and it loads AOTInductor libraries. ``check_archive`` reads the
archive first and lets through only a program's own entries (``_ENTRIES``), so what loads is graph and bytes only
(edgekd never unpickles a file).

The program gets the data's raw values as float (in its own float type, or as bytes for a uint8 input), laid out
as its input declares (``(C, H, W)``, flat, or channels last), as a keyword when it was exported so; a fixed batch
(``torch.export.export`` without ``dynamic_shapes`` fixes the example's) or a bounded one is fed in chunks that
fit it, the last one padded.
"""
from __future__ import annotations

import io
import json
import logging
import re
import zipfile
from pathlib import Path

import torch

from edgekd.config import InputTransform
from edgekd.errors import TeacherError
from edgekd.teachers import OutputKind, Teacher, file_fingerprint, in_batches, scores_of, to_declared

FIX = "save it again with torch.export.save(torch.export.export(model.eval(), (example,)), PATH) from a plain module"


# every entry a torch.export.save archive of one program holds, under its one top-level folder: anything else (a
# second copy of a name, AOTInductor's shared libraries, the legacy format's pickles, torch.save entries) is refused
_ENTRIES = re.compile(r"(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
                      r"|models/model\.json|data/sample_inputs/model\.pt|data/weights/model_weights_config\.json"
                      r"|data/weights/weight_\d+|data/constants/model_constants_config\.json|data/constants/tensor_\d+"
                      r"|extra/[\w.-]+)")


def check_archive(path: Path) -> None:
    """Refuse a ``.pt2`` that loading could make run code: any entry but those ``torch.export.save`` writes for one
    program (``_ENTRIES``: no AOTInductor library, which torch would load, no legacy-format pickle, which its
    fallback reads), a name twice (Python's zipfile and torch's reader take different copies), weights or
    constants stored as pickles (tensor subclasses, custom or opaque objects), and sample inputs that ``torch.load``
    cannot read with ``weights_only=True`` (torch would read them again without). Raises ``TeacherError``."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            prefixes = {n.split("/", 1)[0] for n in names}
            if len(prefixes) != 1 or len(set(names)) != len(names):
                raise TeacherError(f"'{path}' is not a torch.export archive of one program (it holds "
                                   f"{'a name twice' if len(set(names)) != len(names) else 'several top-level folders'}); {FIX}.")
            prefix = prefixes.pop() + "/"
            foreign = [n for n in names if not (n.startswith(prefix) and _ENTRIES.fullmatch(n[len(prefix):]))
                       and not n.endswith("/")]
            if foreign:
                raise TeacherError(f"'{path}' holds '{foreign[0]}', which is not part of a torch.export program "
                                   f"(edgekd loads only the graph, its weights and constants); {FIX}.")
            if archive.read(prefix + "archive_format").strip() != b"pt2":
                raise TeacherError(f"'{path}' is not a torch.export archive (its 'archive_format' is not pt2); {FIX}.")
            pickled = []
            for name in (n for n in names if n.endswith("_config.json")):
                entries = json.loads(archive.read(name)).get("config", {})
                pickled += [f"{name[len(prefix):]}: {key}" for key, entry in entries.items()
                            if entry.get("use_pickle") or not re.fullmatch(r"(weight|tensor)_\d+", str(entry.get("path_name")))]
            if pickled:
                raise TeacherError(f"'{path}' stores {len(pickled)} entr{'y' if len(pickled) == 1 else 'ies'} as pickles "
                                   f"({pickled[0]}), which edgekd never loads; {FIX}.")
            for name in (n for n in names if "/data/sample_inputs/" in n):
                torch.load(io.BytesIO(archive.read(name)), weights_only=True)   # what torch would retry unsafely
    except TeacherError:
        raise
    except (OSError, zipfile.BadZipFile, ValueError, KeyError, AttributeError) as exc:
        raise TeacherError(f"'{path}' is not a readable torch.export archive ({str(exc)[:160]}); {FIX}.") from None
    except Exception as exc:   # torch.load's refusal (its UnpicklingError and kin)
        raise TeacherError(f"'{path}' holds sample inputs that only a full unpickling reads ({str(exc).splitlines()[0][:120]}), "
                           f"which edgekd never does; {FIX}.") from None


class ExportedProgramTeacher(Teacher):
    """A ``torch.export`` program (``.pt2``): runs where it is moved (``torch.export.passes.move_to_device_pass``)."""

    kind = "pt2"
    foreign = True

    def __init__(self, path: Path, *, transform: InputTransform):
        check_archive(path)
        try:
            with _quiet_torch_export():   # (its failure is logged with a traceback before it is raised: said once, here)
                program = torch.export.load(str(path))
        except Exception as exc:   # a graph of operators this torch does not have, a newer schema, ...
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TeacherError(f"'{path}' cannot be loaded by torch {torch.__version__} ({first[:200]}); {FIX} "
                               f"with this torch.") from None
        inputs = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in program.graph_signature.user_inputs]
        example = inputs[0].meta.get("val") if len(inputs) == 1 else None
        if not isinstance(example, torch.Tensor) or example.dim() < 2:
            raise TeacherError(f"torch.export teacher '{path}' takes {len(inputs)} inputs "
                               f"{'of ' + str(tuple(example.shape)) if isinstance(example, torch.Tensor) else ''}; "
                               f"edgekd feeds one (N, ...) tensor; export a module with one batched input.")
        dims = [d if isinstance(d, int) else None for d in example.shape]
        self.fixed_batch = dims[0]   # None: the batch is dynamic
        # the batch sizes the program takes: exactly its example's, or a dynamic dimension's range (Dim("b", max=32))
        self.batch_range = (dims[0], dims[0]) if dims[0] is not None else _range(program, example.shape[0])
        self.declared = dims[1:]
        self.input_shape = tuple(self.declared) if None not in self.declared else None
        self._uint8 = example.dtype == torch.uint8   # raw pixels as bytes, as an ONNX graph may take them
        self._dtype = example.dtype if example.is_floating_point() or self._uint8 else torch.float32
        args, kwargs = program.example_inputs or ((), {})
        self._keyword = next(iter(kwargs)) if not args and len(kwargs) == 1 else None   # exported as model(x=...)
        self.program, self.transform, self.path = program, transform, path
        self.device = torch.device("cpu")
        self._net = program.module()
        self.fingerprint = file_fingerprint(path, transform)
        self.description = f"torch.export '{path.name}'"
        self._as_logits = OutputKind(f"torch.export teacher '{path}'")

    def to(self, device) -> "ExportedProgramTeacher":
        device = torch.device(device)
        if device != self.device:
            from torch.export.passes import move_to_device_pass

            # the pass rewrites the devices written into the graph too (a plain .to() would leave those)
            self.program = move_to_device_pass(self.program, device)
            self._net, self.device = self.program.module(), device
        return self

    def _logits(self, x):
        inputs = to_declared(self.transform.apply(x.float().to(self.device)), self.declared,
                             f"torch.export teacher '{self.path}'")
        inputs = inputs.round().clamp(0, 255).to(torch.uint8) if self._uint8 else inputs.to(self._dtype)
        call = (lambda chunk: self._net(**{self._keyword: chunk})) if self._keyword else self._net
        run = lambda chunk: call(chunk.clone())  # noqa: E731  (a program that scales its input in place must not write into edgekd's rows)
        least, most = self.batch_range
        try:
            out = in_batches(run, inputs, most=most, least=least or 0)
        except torch.OutOfMemoryError:   # the GPU's to say (one line from the CLI)
            raise
        except Exception as exc:
            cause = [line for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
            raise TeacherError(f"torch.export teacher '{self.path}' failed on inputs of shape {tuple(inputs.shape[1:])} "
                               f"({cause[0][:160]}); pass data of the shape and type it expects.") from None
        return self._as_logits(scores_of(out, len(x), f"torch.export teacher '{self.path}'")).to(x.device)


def _range(program, size) -> tuple[int, int | None]:
    """(smallest, largest or None) batch a dynamic dimension ``size`` of ``program`` takes (its range constraint)."""
    for symbol, bounds in program.range_constraints.items():
        if str(symbol) == str(size):
            try:
                high = int(bounds.upper)
            except Exception:   # unbounded (sympy's int_oo converts to no int)
                high = None
            return int(bounds.lower), high if high is not None and high < 2 ** 31 else None
    return 0, None


class _quiet_torch_export:
    """Silences the ``torch.export`` logger for the block (a failed load logs its traceback before raising)."""

    def __enter__(self):
        self.logger = logging.getLogger("torch.export")
        self.disabled, self.logger.disabled = self.logger.disabled, True

    def __exit__(self, *exc):
        self.logger.disabled = self.disabled
