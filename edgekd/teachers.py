"""Anything that maps inputs to logits can teach.

- an edgekd artifact folder: one model, an ensemble (mean of logits by default, or
  ``log(mean(softmax))`` with ``combine="probs"``), or a specialist ensemble;
- an ONNX file from any framework, run by onnxruntime (``output`` picks one of several outputs;
  probability outputs become log-probabilities);
- a ``torch.export`` program saved as ``.pt2`` (``edgekd.exported_teacher``: a graph, checked to hold no pickle);
- a TorchScript file. **TorchScript runs code from the file: only load files you trust.** (torch deprecates
  TorchScript; ``.pt2`` is its successor.)

Foreign teachers (ONNX, .pt2, TorchScript) receive the dataset's raw values as float32, reshaped to the
input shape they declare (flattened if they want vectors); ``InputTransform`` gives them a scale,
mean and std instead: ``x' = (x * scale - mean) / std``.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import os
from pathlib import Path

import torch
from torch import nn

from edgekd.artifacts import Artifact, is_artifact, load_artifact, sha256_file
from edgekd.config import COMBINE_RULES
from edgekd.data import as_float, check_split_matches, fill_rows, inference_rows, same_layout
from edgekd.device import module_device
from edgekd.config import InputTransform  # noqa: F401  (defined with the other configs, imported from here)
from edgekd.errors import ConfigError, EdgekdWarning, TeacherError

# Artifact kinds whose teacher a stage package builds (``register_teacher_kind``); an installed
# package names its module under this entry-point group, so the core never imports a stage by name.
ENTRY_POINT_GROUP = "edgekd.teacher_kinds"
_TEACHER_KINDS: dict = {}


def register_teacher_kind(kind: str):
    """Decorator: ``loader(artifact) -> Teacher`` serves artifacts of ``kind`` (as ``@register_model``)."""
    def wrap(loader):
        _TEACHER_KINDS[kind] = loader
        return loader
    return wrap


def teacher_kinds() -> list[str]:
    """Artifact kinds a teacher can be built from: the core's and every registered one."""
    _load_entry_points()
    return ["model", "ensemble", *sorted(_TEACHER_KINDS)]


def _load_entry_points(kind: str | None = None) -> None:
    from importlib.metadata import entry_points

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if (kind is None or entry.name == kind) and entry.name not in _TEACHER_KINDS:
            entry.load()   # importing the module registers its kind


class EnsembleModule(nn.Module):
    """Members combined as the paper's ensembles are (Hinton et al. 2015, section 3): the arithmetic mean of
    the members' logits, z = (1/M) sum_m z_m, or of their probabilities, returned as log-probabilities,
    log((1/M) sum_m softmax(z_m)), so that the output is again a valid logit vector.

    Distillation then softens the ensemble's output at T: for the mean of logits that is the normalised
    geometric mean of the members' softened distributions at any T; for the mean of probabilities it
    is (mean_m p_m)^(1/T) renormalised, which equals the mean of the softened members only at T = 1
    (the two differ by about 0.01 in total variation at T = 2-4 for small ensembles)."""

    def __init__(self, members: list[nn.Module], combine: str = "logits"):
        super().__init__()
        if combine not in COMBINE_RULES:
            raise TeacherError(f"The 'combine' parameter must be one of {', '.join(COMBINE_RULES)}. Got {combine!r} instead.")
        self.members = nn.ModuleList(members)
        self.combine = combine

    def forward(self, x):
        # elementwise, with no reduction over a members axis: converters that drop the batch axis (pnnx for
        # ncnn) turned such a reduction into none, and an ensemble's ncnn output was its members side by side
        return combine_outputs([member(x) for member in self.members], self.combine)


def combine_outputs(outs: list[torch.Tensor], combine: str) -> torch.Tensor:
    """The members' logits ``outs`` combined as ``EnsembleModule`` combines them (``combine``: "logits" or "probs")."""
    if len(outs) == 1:
        return outs[0]
    if combine == "logits":
        return functools.reduce(torch.add, outs) / len(outs)
    log_probs = [torch.log_softmax(z, dim=-1) for z in outs]
    return functools.reduce(torch.logaddexp, log_probs) - math.log(len(outs))


class Teacher:
    """A source of logits for raw inputs. Subclasses set the attributes and implement ``_logits``."""

    kind: str = "teacher"
    classes: tuple[str, ...] | None = None
    input_shape: tuple[int, ...] | None = None
    fingerprint: str = ""
    description: str = ""
    trained_on: dict | None = None   # the data it was trained on, split as it was (an artifact's or export's record)
    foreign: bool = False   # a file of another framework's (ONNX, TorchScript, torch.export): fed raw values

    def module(self) -> nn.Module | None:
        """A torch module with the same function, where there is one (for online use, bench, export)."""
        return None

    def to(self, device) -> "Teacher":
        return self

    @torch.no_grad()
    def logits(self, x: torch.Tensor, *, batch_size: int | None = None) -> torch.Tensor:
        """float32 logits of raw inputs ``x``, returned on ``x``'s device (computed where the teacher lives), fed
        ``batch_size`` rows at a time (default: ``inference_rows``, at most 1024)."""
        batch_size = batch_size or inference_rows(x, 1024)
        logits = fill_rows(lambda r: self._logits(as_float(x[r])), 0, len(x), batch_size, device=x.device)
        return logits if logits is not None else torch.zeros((0, self.num_outputs(x)), device=x.device)

    def num_outputs(self, x: torch.Tensor) -> int:
        return int(self._logits(as_float(x[:1])).shape[-1])

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def teacher_files(teacher: Teacher) -> list[Path]:
    """What a teacher was read from (its artifact folder, or its ``.onnx``/TorchScript file): inputs an
    output must never replace."""
    artifact = getattr(teacher, "artifact", None)
    path = artifact.path if artifact is not None else getattr(teacher, "path", None)
    return [Path(path)] if path is not None else []


class ModuleTeacher(Teacher):
    """A teacher backed by a torch module (edgekd artifacts)."""

    def __init__(self, net: nn.Module, *, kind: str, classes, input_shape, fingerprint: str, description: str,
                 artifact: Artifact | None = None):
        self.net = net.eval()
        self.kind, self.classes, self.input_shape = kind, tuple(classes), tuple(input_shape)
        self.fingerprint, self.description, self.artifact = fingerprint, description, artifact
        self.device = module_device(self.net)
        self._nhwc = None   # the channels_last inference copy, made on first use (see _logits)

    def module(self) -> nn.Module:
        return self.net

    def to(self, device):
        self.device = torch.device(device)
        self.net.to(self.device)
        self._nhwc = None
        return self

    def _logits(self, x):
        # asynchronous only towards a GPU: a copy into host memory must land before the CPU reads it
        inputs = x.reshape(len(x), *self.input_shape).to(self.device, non_blocking=self.device.type == "cuda")
        net = self.channels_last_net() if inputs.dim() == 4 and self.device.type == "cpu" else None
        if net is not None:
            return net(inputs.contiguous(memory_format=torch.channels_last)).float().to(x.device)
        return self.net(inputs).float().to(x.device)

    def channels_last_net(self) -> nn.Module | None:
        """A channels_last (NHWC) copy of a convolutional net, for CPU inference only: oneDNN's
        convolutions run faster on NHWC than on NCHW (measured in benchmarks/results/teacher_inference.md).
        A copy, because channels_last parameters are not contiguous (safetensors refuses them) and
        ``self.net`` is what is saved, exported and benchmarked. None for nets without convolutions, and for
        one that fails or answers differently on NHWC input (a user's net that flattens with ``view``)."""
        if self._nhwc is None:
            convolutional = any(isinstance(m, nn.Conv2d) for m in self.net.modules())
            nhwc = copy.deepcopy(self.net).to(memory_format=torch.channels_last).eval() if convolutional else None
            self._nhwc = nhwc if nhwc is not None and _same_on_nhwc(self.net, nhwc, self.input_shape, self.device) else False
        return self._nhwc or None


@torch.no_grad()
def _same_on_nhwc(net: nn.Module, nhwc: nn.Module, input_shape, device) -> bool:
    """Whether ``nhwc`` (``net`` in channels_last) runs, and gives ``net``'s logits, on two seeded random
    images: a layout is a speed choice, never one that may break or change a net it was not written for."""
    x = torch.rand((2, *input_shape), generator=torch.Generator().manual_seed(0)).to(device)
    try:
        got = nhwc(x.contiguous(memory_format=torch.channels_last)).float()
    except Exception:   # noqa: BLE001 (any failure of the user's code on this layout means: not this layout)
        return False
    want = net(x).float()
    return got.shape == want.shape and bool((got - want).abs().max() <= 1e-3 * (1 + want.abs().max()))


class OnnxTeacher(Teacher):
    """An ONNX model run by onnxruntime on the CPU."""

    kind = "onnx"
    foreign = True

    def __init__(self, path: Path, *, output: str | None, transform: InputTransform):
        import onnxruntime as ort

        try:
            options = ort.SessionOptions()
            options.log_severity_level = 3
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise TeacherError(f"'{path}' is not a loadable ONNX model ({str(exc).splitlines()[0][:200]}); export it again.") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise TeacherError(f"ONNX teacher '{path}' has {len(inputs)} inputs; edgekd feeds one input tensor.")
        self.input_name = inputs[0].name
        # edgekd's own --uint8-input exports (and other quantized front ends) take raw bytes
        self.uint8_input = inputs[0].type == "tensor(uint8)"
        self.input_dtype = _ONNX_FLOATS.get(inputs[0].type, "float32")   # a float64 or float16 graph is fed its own
        self.declared = [d if isinstance(d, int) else None for d in (inputs[0].shape or [None])[1:]]
        # an exporter that fixed the batch (often 1) is fed chunks of that size, the last one padded
        batch = inputs[0].shape[0] if inputs[0].shape else None
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
        outputs = self.session.get_outputs()
        names = [o.name for o in outputs]
        if output is None:
            floats = [o.name for o in outputs if o.type == "tensor(float)" and len(o.shape) == 2]
            output = floats[0] if floats else names[0]
        elif output not in names:
            raise TeacherError(f"ONNX teacher '{path}' has no output '{output}'; choose one of {', '.join(names)}.")
        self.output = output
        # named when the output taken has the wrong number of classes (check_teacher_fits)
        self.output_choices = [f"'{o.name}' {tuple(o.shape)}" for o in outputs] if len(outputs) > 1 else []
        self.transform = transform
        known = self.declared and all(d is not None for d in self.declared)   # an input of unknown rank declares none
        self.input_shape = tuple(self.declared) if known else None
        # the weights an exporter keeps in files beside the graph (torch's NAME.onnx.data) are the teacher too
        files = [sha256_file(f) for f in [path, *external_data_files(path)]]
        digest = hashlib.sha256("".join(files).encode() + json.dumps([output, transform.__dict__]).encode())
        self.fingerprint = digest.hexdigest()
        self.description = f"ONNX '{path.name}' (output '{output}')"
        self.path = path
        self._as_logits = OutputKind(f"ONNX teacher '{path}'")
        self.classes, self.trained_on = _export_record(self.session, output)

    def _feed(self, x: torch.Tensor):
        x = self.transform.apply(x.float().cpu())   # onnxruntime runs on the host
        x = to_declared(x, self.declared, f"ONNX teacher '{self.path}'")
        if self.uint8_input:
            return x.round().clamp(0, 255).to(torch.uint8).numpy()
        return x.numpy().astype(self.input_dtype, copy=False)

    def _logits(self, x):
        import numpy as np

        try:
            out = self._run(self._feed(x))
        except TeacherError:
            raise
        except Exception as exc:
            raise TeacherError(f"ONNX teacher '{self.path}' failed on the data ({str(exc).splitlines()[0][:200]}); "
                               f"check its input shape and --teacher-scale/--teacher-mean/--teacher-std.") from None
        if not isinstance(out, np.ndarray) or out.ndim != 2 or out.dtype.kind != "f":
            raise TeacherError(f"ONNX teacher output '{self.output}' must be a float (N, classes) tensor; "
                               f"pick another with --teacher-output (a classifier's 'probabilities', with zipmap off).")
        if len(out) != len(x):
            raise TeacherError(f"ONNX teacher output '{self.output}' has {len(out)} rows for a batch of {len(x)} inputs; "
                               f"a teacher must give one row of class scores per input; export it with a batch dimension.")
        return self._as_logits(torch.from_numpy(np.array(out, dtype=np.float32))).to(x.device)

    def _run(self, feed):
        size = self.fixed_batch
        return in_batches(lambda chunk: self.session.run([self.output], {self.input_name: chunk})[0], feed,
                          most=size, least=size or 0)


def in_batches(run, feed, *, most: int | None = None, least: int = 0):
    """``run(feed)``, or for a graph whose batch is bounded (exported with a fixed batch: ``most == least``, or a
    bounded dynamic one), ``run`` on chunks of at most ``most`` rows, each padded up to ``least`` with copies of its
    first row whose outputs are dropped (``feed``: a numpy array or a tensor)."""
    import numpy as np

    if (most is None or len(feed) <= most) and len(feed) >= least:
        return run(feed)
    cat = np.concatenate if isinstance(feed, np.ndarray) else torch.cat
    step, outs = most or len(feed), []
    for start in range(0, len(feed), step):
        chunk = feed[start:start + step]
        short = max(0, least - len(chunk))
        out = run(cat([chunk] + [chunk[:1]] * short) if short else chunk)
        if not hasattr(out, "shape") or len(out) != len(chunk) + short:
            return out   # not one row per input: reported by the caller's checks
        outs.append(out[:len(chunk)])
    return cat(outs)


_ONNX_FLOATS = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16"}


def external_data_files(path: Path, proto=None) -> list[Path]:
    """The files an ONNX graph keeps its tensors in beside it (``external_data`` locations), sorted;
    ``proto``: the graph already loaded (without its external data)."""
    import onnx

    path = Path(path)
    try:
        proto = proto if proto is not None else onnx.load(str(path), load_external_data=False)
    except Exception:   # loadable by onnxruntime but not by onnx: no external data to name
        return []
    found = {entry.value for init in proto.graph.initializer for entry in init.external_data if entry.key == "location"}
    return sorted(path.parent / name for name in found if (path.parent / name).is_file())


def _export_record(session, output: str) -> tuple[tuple[str, ...] | None, dict | None]:
    """The classes and training data (spec, split seed, val and test rows) an edgekd export records in its
    metadata, for its own output: the checks an artifact meets (class order, split) apply to its export too.
    (None, None) for a file of another exporter."""
    props = session.get_modelmeta().custom_metadata_map
    try:
        classes = json.loads(props["edgekd.classes"]) if output == props.get("edgekd.output_name") else None
        trained_on = json.loads(props.get("edgekd.trained_on", "null"))
    except (KeyError, ValueError):
        return None, None
    classes = tuple(map(str, classes)) if isinstance(classes, list) else None
    return classes, trained_on if isinstance(trained_on, dict) and classes else None


def _channels_last(declared, have) -> bool:
    """A graph declaring (H, W, C) for (C, H, W) data, as TensorFlow's exporters do (``None``: any size)."""
    return len(have) == 3 and len(declared) == 3 and all(d is None or d == h for d, h in zip(declared, (*have[1:], have[0])))


def to_declared(x: torch.Tensor, declared: list, what: str) -> torch.Tensor:
    """The data (N, C, H, W) as the graph declares its input: as it is when every known size matches (a
    dynamic height and width too); channels last when it declares (H, W, C), as TensorFlow's exporters do;
    else read flat into the declared shape (a flat MLP), never a reshape that would scramble an image."""
    have = tuple(x.shape[1:])
    if not declared or (len(declared) == len(have) and all(d is None or d == h for d, h in zip(declared, have))):
        return x
    if _channels_last(declared, have):
        return x.permute(0, 2, 3, 1).contiguous()   # (C, H, W) -> (H, W, C)
    known = [d for d in declared if d is not None]
    if declared.count(None) <= 1 and (None in declared or math.prod(known) == math.prod(have)) and \
            same_layout(declared, have):   # a flat or single-channel view of the same values
        return x.reshape(len(x), *[d if d is not None else -1 for d in declared])
    raise TeacherError(f"{what} wants inputs of shape {tuple(declared)} but the data has {have}; pass data "
                       f"of the teacher's shape (channels first, (C, H, W), or the graph's own layout).")


class TorchScriptTeacher(Teacher):
    """A TorchScript module. Loading it runs code from the file: trust the file."""

    kind = "torchscript"
    foreign = True

    def __init__(self, path: Path, *, transform: InputTransform):
        try:
            self.net = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as exc:
            if _pickled_torch_save(path):
                raise TeacherError(f"'{path}' was written by torch.save (a pickled state dict or module), not TorchScript; "
                                   f"edgekd never unpickles a file. Save the model with torch.jit.save(torch.jit.script(model), "
                                   f"PATH), or export it to ONNX.") from None
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TeacherError(f"'{path}' is not a loadable TorchScript file ({first[:200]}); save it with torch.jit.save.") from None
        self.transform = transform
        self.fingerprint = file_fingerprint(path, transform)
        self.description = f"TorchScript '{path.name}'"
        self.path = path
        self.device, self._ran = torch.device("cpu"), False
        self._flatten: bool | None = None
        self._image_error: Exception | None = None   # why images failed, told if flat rows fail too
        self._as_logits = OutputKind(f"TorchScript teacher '{path}'")
        # fed its own float type, as an ONNX teacher is (a float64 module fails on float32 inputs)
        floats = (t.dtype for t in (*self.net.parameters(), *self.net.buffers()) if t.is_floating_point())
        self._dtype = next(floats, torch.float32)

    def to(self, device) -> "TorchScriptTeacher":
        """Moves the module, as an artifact teacher moves: an online teacher on the GPU beside its student."""
        device = torch.device(device)
        if device != self.device:
            self.net, self.device, self._ran, self._flatten = self.net.to(device), device, False, None
            self._image_error = None
        return self

    def _logits(self, x):
        inputs = self.transform.apply(x.float().to(self.device)).to(self._dtype)
        try:
            out = self._run(inputs)
        except TeacherError:
            if self._ran or self.device.type == "cpu":
                raise
            # a graph traced with its devices written in (torch.jit.trace of code that makes CPU tensors) runs only
            # where it was traced: the first batch tells, and the teacher goes back to the host for good
            import warnings

            warnings.warn(f"TorchScript teacher '{self.path}' does not run on {self.device}; it runs on the CPU "
                          f"(script it without fixed devices to run it on the GPU).", EdgekdWarning, stacklevel=3)
            self.to("cpu")
            out = self._run(self.transform.apply(x.float().cpu()).to(self._dtype))
        self._ran = True
        return out.to(x.device)

    def _run(self, x):
        # each call on its own copy: a model that scales its input in place (``x /= 255``) must not write into
        # edgekd's rows, nor see its first call's writes when it is retried flattened
        if self._flatten is None:
            try:
                out = self.net(x.clone())
            except torch.OutOfMemoryError:   # the GPU's to say (one line from the CLI), not a flat model's
                raise
            except Exception as exc:   # a call that fails on images: a flat model, tried once on the flattened rows
                self._flatten, self._image_error = True, exc
            else:   # (only the model's own call: an error of edgekd's in reading its output is no reason to flatten)
                self._flatten = False
                return self._as_logits(self._checked(out, len(x)))
        try:
            out = self.net((x.reshape(len(x), -1) if self._flatten else x).clone())
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:   # flat rows failing too: the images' error is the one to tell (an RGB model on gray)
            exc = self._image_error or exc
            raise TeacherError(f"TorchScript teacher '{self.path}' failed on inputs of shape {tuple(x.shape[1:])} "
                               f"({_cause(exc)[:160]}); pass data of the shape and type it expects.") from None
        self._image_error = None   # flat rows run: a later failure is theirs
        return self._as_logits(self._checked(out, len(x)))

    def _checked(self, out, n: int) -> torch.Tensor:
        return scores_of(out, n, f"TorchScript teacher '{self.path}'")


def scores_of(out, n: int, what: str) -> torch.Tensor:
    """One float row of class scores per input, as every teacher gives; anything else is one clear error."""
    if not torch.is_tensor(out) or out.dim() != 2 or len(out) != n or not out.is_floating_point():
        got = f"a {out.dtype} tensor of shape {tuple(out.shape)}" if torch.is_tensor(out) else f"a {type(out).__name__}"
        raise TeacherError(f"{what} returns {got} for {n} inputs; a teacher returns one (N, classes) tensor of class "
                           f"scores (floats); save a wrapper that returns only that.")
    return out.float()


def file_fingerprint(path: Path, transform: InputTransform) -> str:
    """A teacher file's identity for caches: the sha256 of its bytes and of the transform its inputs get."""
    return hashlib.sha256(sha256_file(path).encode() + json.dumps(transform.__dict__).encode()).hexdigest()


def _cause(exc: Exception) -> str:
    """The line that says why: TorchScript's interpreter opens every error with "The following operation failed
    in the TorchScript interpreter." and ends it with the exception raised inside."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _pickled_torch_save(path: Path) -> bool:
    """A torch.save archive: a zip holding a pickle (``data.pkl``) but none of TorchScript's ``code/``."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.endswith("/data.pkl") or n == "data.pkl" for n in names) and not any("/code/" in n for n in names)


class OutputKind:
    """Whether a foreign teacher's outputs are probabilities (non-negative rows summing to 1: taken as
    log-probabilities) or logits, decided once, on its first non-empty output, for every later batch: a
    per-batch test could read one teacher both ways. Outputs all in [0, 1] whose rows do not sum to 1
    (independent sigmoids) are said once in a warning; they are read as logits."""

    def __init__(self, where: str):
        self.where, self.probabilities = where, None

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        if self.probabilities is None and out.numel():
            sums = out.sum(-1)   # (on the output's device: a teacher on the GPU answers there)
            sums_to_one = torch.allclose(sums, torch.ones_like(sums), atol=1e-3)
            self.probabilities = bool(out.min() >= 0) and sums_to_one
            if not self.probabilities and out.min() >= 0 and out.max() <= 1:
                import warnings

                warnings.warn(f"{self.where}'s outputs all lie in [0, 1] but its rows do not sum to 1 (independent "
                              f"sigmoids?); they are read as logits, which softens the targets; export the scores "
                              f"before the sigmoid.", EdgekdWarning, stacklevel=4)
        if not self.probabilities:
            return out
        out = out.float() if torch.finfo(out.dtype).bits < 32 else out   # float16's floor (6e-5) is not small
        # the smallest normal float, not 1e-12: a confident teacher gives many wrong classes less than 1e-12, and a
        # floor there would make them one value and lose the ranking distillation passes on
        return out.clamp_min(torch.finfo(out.dtype).tiny).log()


def source_path(model, role: str = "model") -> Path:
    """Where a stage that reads files (specialists, export, bench) reads ``model`` from: a path as given, or the
    artifact folder or file a loaded ``Teacher`` came from."""
    if isinstance(model, (str, Path)):
        return Path(model)
    files = teacher_files(model) if isinstance(model, Teacher) else []
    if files:
        return files[0]
    raise ConfigError(f"The '{role}' parameter must be the path of an artifact folder (or a Teacher loaded from one). "
                      f"Got {type(model).__name__} instead.")


def as_teacher(teacher, role: str = "teacher") -> "Teacher":
    """A ``Teacher`` as given, or one loaded from a path (``load_teacher``): a stage called from Python takes either."""
    if isinstance(teacher, Teacher):
        return teacher
    if isinstance(teacher, (str, Path)):
        return load_teacher(teacher, role=role.capitalize())
    raise ConfigError(f"The '{role}' parameter must be a Teacher (edgekd.teachers.load_teacher) or the path of an artifact "
                      f"folder, .onnx, .pt2 or TorchScript file. Got {type(teacher).__name__} instead.")


def load_teacher(spec: str | Path, *, combine: str | None = None, output: str | None = None,
                 transform: InputTransform | None = None, role: str = "Teacher") -> Teacher:
    """Load a teacher from an artifact folder, an ``.onnx`` file, a ``torch.export`` ``.pt2`` file
    (``edgekd.exported_teacher``) or a TorchScript file (``role`` names
    it in errors: "Teacher", "Model")."""
    path = Path(spec)
    transform = transform or InputTransform()
    if not path.exists():   # a writer killed between moving the old artifact aside and renaming the new one in
        from edgekd.outputs import restore_interrupted_swap

        restore_interrupted_swap(path)   # its backup is put back (a dead process's only), as its next writer would
    if path.is_dir():
        if not is_artifact(path):
            raise TeacherError(f"'{path}' is a folder but not an edgekd artifact (no manifest.json); pass an artifact folder, an .onnx, a .pt2 or a TorchScript file.")
        return teacher_from_artifact(load_artifact(path), combine=combine)
    if not path.exists():
        raise TeacherError(f"{role} '{path}' not found; pass an edgekd artifact folder, an .onnx, .pt2 or TorchScript file.")
    if not os.access(path, os.R_OK):   # (onnxruntime said only "system error number 13")
        raise TeacherError(f"{role} '{path}' cannot be read (permission denied); make it readable (chmod) or run as a "
                           f"user who may read it.")
    if path.suffix.lower() == ".onnx":
        return OnnxTeacher(path, output=output, transform=transform)
    if path.suffix.lower() == ".pt2":
        from edgekd.exported_teacher import ExportedProgramTeacher

        return ExportedProgramTeacher(path, transform=transform)
    if path.suffix.lower() in (".pt", ".pth", ".ts", ".torchscript", ".jit"):
        return TorchScriptTeacher(path, transform=transform)
    raise TeacherError(f"'{path}' is not a teacher: expected an artifact folder, a .onnx file, a torch.export .pt2 file "
                       f"or a TorchScript file (.pt, .ts).")


def teacher_from_artifact(artifact: Artifact, *, combine: str | None = None, members: list | None = None) -> Teacher:
    """The teacher an artifact is (``members``: its member models already built, so they are not built twice)."""
    if artifact.kind not in ("model", "ensemble"):
        if combine is not None:   # its own rule combines its members (a specialist ensemble: the paper's KL solve)
            raise TeacherError(f"The 'combine' parameter sets how an ensemble's members are averaged; "
                               f"'{artifact.path}' is a '{artifact.kind}' artifact, which combines its members by its "
                               f"own rule. Got combine={combine!r} instead; leave --combine out.")
        if artifact.kind not in _TEACHER_KINDS:
            _load_entry_points(artifact.kind)
        if artifact.kind not in _TEACHER_KINDS:
            raise TeacherError(f"Artifact '{artifact.path}' is of kind '{artifact.kind}', which no loaded package serves; "
                               f"choose one of {', '.join(teacher_kinds())}, or import the package that registers it.")
        return _TEACHER_KINDS[artifact.kind](artifact)
    combine = combine or artifact.manifest.combine
    net = EnsembleModule(artifact.build_members() if members is None else members, combine)
    n = len(artifact.manifest.members)
    desc = f"{artifact.kind} '{artifact.path}' ({n} × {artifact.manifest.members[0].arch}" + (f", mean of {combine})" if n > 1 else ")")
    fingerprint = hashlib.sha256((artifact.fingerprint + combine).encode()).hexdigest()
    return ModuleTeacher(net, kind=artifact.kind, classes=artifact.classes, input_shape=artifact.input_shape,
                         fingerprint=fingerprint, description=desc, artifact=artifact)


def _reads(teacher: Teacher, shape) -> bool:
    """Whether ``teacher`` takes data of ``shape`` as it is laid out: the same layout (``same_layout``), or,
    for an ONNX graph that declares (H, W, C) as TensorFlow's exporters do, the data's channels moved last
    (``to_declared`` does that)."""
    shape = tuple(shape)
    return same_layout(teacher.input_shape, shape) or (teacher.foreign and _channels_last(tuple(teacher.input_shape), shape))


def check_teacher_fits(teacher: Teacher, dataset, *, name: str = "Teacher", splits=("val", "test")) -> int:
    """The teacher's input shape and number of classes must match the dataset's; an artifact trained on the
    same data must meet it split as it was (``check_split_matches``, for ``splits``)."""
    artifact = getattr(teacher, "artifact", None)
    recorded = artifact.manifest.data if artifact is not None else teacher.trained_on   # an edgekd export records it
    if recorded:
        check_split_matches(recorded, dataset, name, splits)
    if teacher.input_shape is not None and not _reads(teacher, dataset.input_shape):
        raise TeacherError(f"{name} takes inputs of shape {tuple(teacher.input_shape)} but dataset '{dataset.spec}' has "
                           f"{tuple(dataset.input_shape)}; pass a dataset of the teacher's input shape.")
    n_out = teacher.num_outputs(dataset.x_val[:1])
    if n_out != dataset.num_classes:
        choices = getattr(teacher, "output_choices", [])
        fix = (f"take another of its outputs with --teacher-output ({', '.join(choices)}) or pass a dataset with its classes"
               if choices else "pass a dataset with the teacher's classes")
        raise TeacherError(f"{name} has {n_out} outputs but dataset '{dataset.spec}' has {dataset.num_classes} classes; {fix}.")
    _check_class_names(teacher.classes, tuple(dataset.classes), dataset.spec, name)
    if teacher.foreign:   # a file of any framework: exported in eval mode?
        probe = dataset.x_val[:8]
        first, again = teacher.logits(probe), teacher.logits(probe)
        if not torch.allclose(first, again, atol=1e-4, rtol=1e-4, equal_nan=True):   # NaN: said by evaluate
            raise TeacherError(f"{name} '{teacher.path}' gives other outputs on a second run over the same inputs (largest "
                               f"difference {float((first - again).abs().max()):.3g}): dropout or batch statistics left on; "
                               f"export or trace it in eval mode.")
        alone = teacher.logits(probe[:1])   # batch statistics give the same answer twice, but not alone and in a batch
        if not torch.allclose(alone, first[:1], atol=1e-3, rtol=1e-3, equal_nan=True):
            raise TeacherError(f"{name} '{teacher.path}' gives an input other outputs alone than in a batch of 8 (largest "
                               f"difference {float((alone - first[:1]).abs().max()):.3g}): batch statistics (BatchNorm in "
                               f"training mode) left on; export or trace it in eval mode.")
    return n_out


def _check_class_names(mine, theirs: tuple, spec: str, name: str) -> None:
    """Outputs are matched to labels by position: the same names in another order would pair every class
    with the wrong output (refused); other names mean other data, unless either side is only numbered
    (an npz without names, an ONNX model), which is said once as a warning."""
    if not mine or tuple(mine) == theirs:
        return
    shown = lambda names: ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")  # noqa: E731
    if sorted(mine) == sorted(theirs):
        raise TeacherError(f"{name}'s classes are those of dataset '{spec}' in another order ({shown(mine)} vs {shown(theirs)}), "
                           f"so each label would meet another class's output; pass the data with the classes in the "
                           f"{name.lower()}'s order.")
    numbered = lambda names: all(c == str(i) for i, c in enumerate(names))  # noqa: E731
    if not numbered(mine) and not numbered(theirs):
        import warnings

        warnings.warn(f"{name}'s classes ({shown(tuple(mine))}) are not those of dataset '{spec}' ({shown(theirs)}); its outputs "
                      f"are matched to the labels by position. Pass the data it was trained on unless that is meant.",
                      EdgekdWarning, stacklevel=3)
