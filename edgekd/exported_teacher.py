"""A teacher saved by ``torch.export.save`` (a ``.pt2`` archive): the successor of TorchScript, which torch
deprecates.

An ``ExportedProgram`` is a graph of ATen operators, its weights stored as raw bytes, so unlike a TorchScript
file it runs no code of the file's. ``torch.export.load`` can still unpickle: weights of tensor subclasses and
custom objects are pickles, and its sample inputs fall back to a full ``torch.load`` when the safe one fails.
``check_archive`` reads the archive's own JSON first and refuses every such entry, so what loads is graph
and bytes only (edgekd never unpickles a file).

The program gets the data's raw values as float (in its own float type), laid out as its input declares
(``(C, H, W)``, flat, or channels last); one exported with a fixed batch (``torch.export.export`` without
``dynamic_shapes`` fixes the example's) is fed chunks of that size, the last one padded.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import torch

from edgekd.artifacts import sha256_file
from edgekd.config import InputTransform
from edgekd.errors import TeacherError
from edgekd.teachers import OutputKind, Teacher, in_fixed_batches, scores_of, to_declared

FIX = "save it again with torch.export.save(torch.export.export(model.eval(), (example,)), PATH) from a plain module"


def check_archive(path: Path) -> None:
    """Refuse a ``.pt2`` whose loading would unpickle: the legacy zip format, weights or constants stored as
    pickles (tensor subclasses, custom or opaque objects) and sample inputs that ``torch.load`` cannot read
    with ``weights_only=True``. Raises ``TeacherError`` naming what was found."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            formats = [n for n in names if n.endswith("archive_format")]
            if not formats or archive.read(formats[0]).strip() != b"pt2":
                raise TeacherError(f"'{path}' is not a torch.export archive (no 'archive_format' pt2 entry); {FIX}.")
            pickled = [n for n in names if n.endswith(".pt") and ("/data/weights/" in n or "/data/constants/" in n)]
            for name in (n for n in names if n.endswith("_config.json") and "/data/" in n):
                entries = json.loads(archive.read(name)).get("config", {})
                pickled += [f"{name}: {key}" for key, entry in entries.items()
                            if entry.get("use_pickle") or not str(entry.get("path_name", "")).startswith(("weight_", "tensor_"))]
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
        self.declared = dims[1:]
        self.input_shape = tuple(self.declared) if None not in self.declared else None
        self._dtype = example.dtype if example.is_floating_point() else torch.float32
        self.program, self.transform, self.path = program, transform, path
        self.device = torch.device("cpu")
        self._net = program.module()
        self.fingerprint = hashlib.sha256(sha256_file(path).encode() + json.dumps(transform.__dict__).encode()).hexdigest()
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
                             f"torch.export teacher '{self.path}'").to(self._dtype)
        try:
            out = in_fixed_batches(self._net, inputs, self.fixed_batch)
        except torch.OutOfMemoryError:   # the GPU's to say (one line from the CLI)
            raise
        except Exception as exc:
            cause = [line for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
            raise TeacherError(f"torch.export teacher '{self.path}' failed on inputs of shape {tuple(inputs.shape[1:])} "
                               f"({cause[0][:160]}); pass data of the shape and type it expects.") from None
        return self._as_logits(scores_of(out, len(x), f"torch.export teacher '{self.path}'")).to(x.device)
