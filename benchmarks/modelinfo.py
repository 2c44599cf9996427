"""What a benchmark needs to know about a model file before timing it: format, input shape,
file size, parameters and MACs.

- an edgekd artifact folder: size of its weight files; parameters and MACs from the manifest's
  metrics (or counted on the built module);
- an ``.onnx`` file: size of the file (and of its external data); MACs and parameters from the
  ``edgekd`` metadata the exporter writes, else counted on the graph (Conv, MatMul, Gemm and their
  quantized forms, after shape inference at batch 1; parameters = initializer elements);
- an ``.ort`` file: its own size; metadata read through onnxruntime, else the sibling ``.onnx``;
- a ``.pte`` file (ExecuTorch): its own size; input shape and fixed batch from the program; counts
  from the export summary beside it (``NAME.pte.json``) and the artifact it names.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from edgekd.errors import ConfigError
from edgekd.outputs import export_summary_of

# metadata_props keys that may carry the counts (the exporter's, then plain names)
_MAC_KEYS = ("edgekd.macs", "edgekd_macs", "macs")
_PARAM_KEYS = ("edgekd.parameters", "edgekd_parameters", "parameters")
_JSON_KEYS = ("edgekd", "edgekd.manifest", "edgekd.metadata")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: str
    format: str  # "artifact" | "onnx" | "ort" | "pte"
    description: str = ""
    input_shape: tuple[int, ...] | None = None  # without the batch dimension
    input_dtype: str = "float32"  # "float32" | "uint8" (an export that takes raw pixels as bytes)
    file_bytes: int | None = None
    parameters: int | None = None
    macs: int | None = None
    macs_source: str | None = None  # "manifest" | "counted" | "metadata" | "graph" | "source artifact"
    source_artifact: str | None = None  # an export's PyTorch original, when that folder is still there
    fixed_batch: int | None = None  # a program exported for one batch size only (.pte, an ONNX without a batch axis)
    int8: bool = False  # int8 kernels: its compute floor uses the measured int8 peak
    trained_with: dict | None = None  # the artifact's (an export's: its source artifact's) recorded command line


def model_format(path: str | Path) -> str:
    """The format of a model path, or a ``ConfigError`` saying what is accepted."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"Model '{path}' not found; pass an edgekd artifact folder, an .onnx, .ort or .pte file.")
    if path.is_dir():
        if not (path / "manifest.json").is_file():
            raise ConfigError(f"'{path}' is a folder but not an edgekd artifact (no manifest.json); "
                              f"pass an artifact folder, an .onnx or an .ort file.")
        return "artifact"
    suffix = path.suffix.lower()
    if suffix in (".onnx", ".ort", ".pte"):
        return suffix[1:]
    raise ConfigError(f"Model '{path}' has an unknown format {suffix or '(no suffix)'!r}; "
                      f"pass an edgekd artifact folder, an .onnx, .ort or .pte file.")


def parse_model_arg(arg: str) -> tuple[str | None, Path]:
    """``PATH`` or ``NAME=PATH`` (a name without a path separator)."""
    name, sep, rest = str(arg).partition("=")
    if sep and name and "/" not in name and not Path(arg).exists():
        if not rest:
            raise ConfigError(f"--model '{arg}' names a model but gives no path; pass NAME=PATH, e.g. {name}=runs/student.")
        return name, Path(rest)
    return None, Path(arg)


def parse_model_args(args) -> list[tuple[str | None, Path]]:
    """Each ``--model`` parsed; the same file or folder twice is refused (it would be timed twice, as two rows)."""
    parsed, seen = [parse_model_arg(a) for a in args], {}
    for arg, (_, path) in zip(args, parsed):
        key = path.resolve()
        if key in seen:
            raise ConfigError(f"--model '{arg}' is given twice (also as '{seen[key]}'); pass each model once.")
        seen[key] = arg
    return parsed


def unique_names(paths: list[Path], given: list[str | None]) -> list[str]:
    """Short labels: the given name, else the file or folder name, else ``parent/name`` when that clashes."""
    names = [g or p.name for g, p in zip(given, paths)]
    clashes = {n for n in names if names.count(n) > 1}     # counted before renaming, so every clashing one is renamed
    for i, (g, p) in enumerate(zip(given, paths)):
        if g is None and names[i] in clashes:
            names[i] = f"{p.resolve().parent.name}/{p.name}"   # resolved: 'runs/t1', not '/t1' for a bare 't1'
    seen = {}
    for i, n in enumerate(names):
        seen[n] = seen.get(n, 0) + 1
        if seen[n] > 1:
            names[i] = f"{n}#{seen[n]}"
    return names


def describe_model(path: str | Path, name: str) -> ModelInfo:
    """Size, parameters and MACs of a model; raises on an unreadable model (the harness records it)."""
    path = Path(path)
    fmt = model_format(path)
    if fmt == "artifact":
        return _describe_artifact(path, name)
    if fmt == "pte":
        return _describe_pte(path, name)
    return _describe_onnx(path, name, fmt)


def _describe_pte(path: Path, name: str) -> ModelInfo:
    """An ExecuTorch program: shape from the program itself, the rest from the export summary beside it."""
    import importlib.util

    from export.executorch_export import load_program, program_input

    summary = export_summary_of(path) or {}   # only the summary of this very program: its precision names the row
    if importlib.util.find_spec("executorch") is None:   # described from its summary; its rows say ExecuTorch is missing
        given = summary.get("input") if isinstance(summary.get("input"), dict) else {}
        shape = tuple(given.get("shape") or (None, None))
        dtype = given.get("dtype", "float32")
    else:
        shape, dtype = program_input(load_program(path))
    source = summary.get("source") if isinstance(summary.get("source"), dict) else {}
    counts = summary.get("counts") if isinstance(summary.get("counts"), dict) else {}   # recorded by the export
    found = counts if isinstance(counts.get("macs"), int) else _source_artifact_metrics(json.dumps(source)) if source else {}
    macs, params = found.get("macs"), found.get("parameters")
    precision = summary.get("precision", "")
    return ModelInfo(name=name, path=str(path), format="pte", description=f"PTE ({precision or 'ExecuTorch'})",
                     input_shape=tuple(shape[1:]) if all(shape) else None, input_dtype=dtype, file_bytes=path.stat().st_size,
                     parameters=params if isinstance(params, int) else None,
                     macs=macs if isinstance(macs, int) else None,
                     macs_source=("summary" if found is counts else "source artifact") if isinstance(macs, int) else None,
                     source_artifact=_source_artifact(json.dumps(source)) if source else None, fixed_batch=shape[0],
                     int8="int8" in precision, trained_with=_source_trained_with(json.dumps(source)) if source else None)


def _describe_artifact(path: Path, name: str) -> ModelInfo:
    from edgekd.artifacts import load_artifact

    artifact = load_artifact(path)
    artifact.check_code_trusted()   # a bench that could time nothing of it is refused, as evaluate and export refuse it
    manifest = artifact.manifest
    weights = [n for n in manifest.files if n.endswith(".safetensors")]
    size = sum(artifact.file(n).stat().st_size for n in weights)
    metrics = manifest.metrics
    params, macs, source = metrics.get("parameters"), metrics.get("macs"), "manifest"
    if params is None or macs is None:
        from edgekd.models import count_macs, count_parameters
        from edgekd.teachers import teacher_from_artifact

        module = teacher_from_artifact(artifact).module()
        if module is not None:
            params = params if params is not None else count_parameters(module)
            macs, source = (macs, source) if macs is not None else (count_macs(module, artifact.input_shape), "counted")
    members = manifest.members
    desc = f"{artifact.kind}: {len(members)} x {members[0].arch}" if members else artifact.kind
    return ModelInfo(name=name, path=str(path), format="artifact", description=desc,
                     input_shape=tuple(artifact.input_shape), file_bytes=size, parameters=params,
                     macs=macs, macs_source=source if macs is not None else None,
                     trained_with=_trained_with(dict(manifest.config), dict(metrics)))


def _describe_onnx(path: Path, name: str, fmt: str) -> ModelInfo:
    meta = _ort_metadata(path) if fmt == "ort" else {}
    proto = None
    graph_path = path if fmt == "onnx" else path.with_suffix(".onnx")
    size = path.stat().st_size
    input_shape, input_dtype, fixed_batch = None, "float32", None
    if graph_path.is_file() and (fmt == "onnx" or _same_export(meta, graph_path)):
        import onnx

        proto = onnx.load(str(graph_path), load_external_data=False)
        if fmt == "onnx":
            from edgekd.teachers import external_data_files   # (torch is imported only where a model is read)

            size += sum(f.stat().st_size for f in external_data_files(path, proto))
        input_shape = _declared_input_shape(proto)
        fixed_batch = _declared_batch(proto)
        input_dtype = "uint8" if proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8 else "float32"
        meta = {**{p.key: p.value for p in proto.metadata_props}, **meta}
    if fmt == "ort":   # its own input, whatever the graph beside it takes (an --uint8-input .ort beside a float .onnx)
        input_shape, input_dtype = _ort_input(path)
    macs, params, source = _counts_from_metadata(meta)
    found = _source_artifact_metrics(meta.get("edgekd.source")) if macs is None or params is None else {}
    if params is None and isinstance(found.get("parameters"), int):  # an int8 graph also stores scales
        params = found["parameters"]
    if proto is not None:
        if macs is None:
            macs, source = graph_macs(proto), "graph"
        if params is None:
            params = _initializer_elements(proto)
    if not macs and isinstance(found.get("macs"), int):  # an .ort file alone, or ops the graph count does not know
        macs, source = found["macs"], "source artifact"
    quantized = proto is not None and any(n.op_type in ("QuantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger",
                                                         "ConvInteger", "DynamicQuantizeLinear") for n in proto.graph.node)
    desc = f"{fmt.upper()}" + (" (int8)" if quantized else "")
    return ModelInfo(name=name, path=str(path), format=fmt, description=desc, input_shape=input_shape,
                     input_dtype=input_dtype, file_bytes=size, parameters=params, macs=macs,
                     macs_source=source if macs is not None else None, source_artifact=_source_artifact(meta.get("edgekd.source")),
                     int8=quantized or "int8" in str(meta.get("edgekd.precision", "")), fixed_batch=fixed_batch,
                     trained_with=_source_trained_with(meta.get("edgekd.source")))


def _same_export(ort_meta: dict, onnx_path: Path) -> bool:
    """Whether the ``.onnx`` beside an ``.ort`` is the same export in the other format (the same source
    artifact and precision): only then are its graph's counts and shapes the ``.ort``'s."""
    from edgekd.outputs import onnx_metadata

    props = onnx_metadata(onnx_path)
    if props is None:
        return False
    keys = ("edgekd.source", "edgekd.precision", "edgekd.input_dtype")
    return bool(ort_meta.get(keys[0])) and all(props.get(k) == ort_meta.get(k) for k in keys)


def _ort_metadata(path: Path) -> dict:
    try:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return dict(session.get_modelmeta().custom_metadata_map)
    except Exception:
        return {}


def _ort_input(path: Path):
    """Input shape (without batch) and dtype of a model, read through onnxruntime (for .ort files)."""
    try:
        import onnxruntime as ort

        declared = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0]
    except Exception:
        return None, "float32"
    shape = declared.shape[1:]
    return (tuple(shape) if shape and all(isinstance(d, int) for d in shape) else None,
            "uint8" if declared.type == "tensor(uint8)" else "float32")


def _counts_from_metadata(meta: dict):
    def as_int(value):
        try:
            return int(float(value))
        except (TypeError, ValueError):
            return None

    macs = next((as_int(meta[k]) for k in _MAC_KEYS if k in meta), None)
    params = next((as_int(meta[k]) for k in _PARAM_KEYS if k in meta), None)
    for key in _JSON_KEYS:
        if key in meta:
            try:
                blob = json.loads(meta[key])
            except (TypeError, ValueError):
                continue
            if isinstance(blob, dict):
                found = blob.get("metrics", blob)
                macs = macs if macs is not None else as_int(found.get("macs"))
                params = params if params is not None else as_int(found.get("parameters"))
    return macs, params, "metadata" if macs is not None else None


def _source_artifact(source_json) -> str | None:
    """The folder of the artifact an edgekd export came from, when it is still that very artifact: its
    manifest's sha256 is the one the export recorded. A folder retrained in place, or another artifact
    at the same relative path, is not the export's source (its counts and outputs would be another model's)."""
    from edgekd.artifacts import sha256_file

    try:
        recorded = json.loads(source_json)
        path, expected = Path(recorded["path"]), recorded["manifest_sha256"]
        return str(path) if sha256_file(path / "manifest.json") == expected else None
    except Exception:   # no source recorded, no folder, or no hash to check it against
        return None


def _trained_with(config: dict, metrics: dict) -> dict:
    """What a report keeps of how a model was made, so that a figure quoted beside it can be checked: the command
    line its manifest records (``config``) and its own test accuracy then."""
    return {"config": config, "test_accuracy": metrics.get("test_accuracy")}


def _source_trained_with(source_json) -> dict | None:
    """``_trained_with`` of the artifact an edgekd export came from, while that very artifact is still there."""
    path = _source_artifact(source_json)
    try:
        manifest = json.loads((Path(path) / "manifest.json").read_text()) if path else None
    except (OSError, ValueError):
        return None
    return _trained_with(manifest.get("config") or {}, manifest.get("metrics") or {}) if isinstance(manifest, dict) else None


def _source_artifact_metrics(source_json) -> dict:
    """The manifest metrics of the artifact an edgekd export came from (``_source_artifact``)."""
    path = _source_artifact(source_json)
    try:
        return json.loads((Path(path) / "manifest.json").read_text()).get("metrics", {}) if path else {}
    except (OSError, ValueError):
        return {}


def _declared_batch(proto) -> int | None:
    """The input's batch size when the exporter fixed it (a number, not a symbol), else None."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None


def _declared_input_shape(proto):
    dims = proto.graph.input[0].type.tensor_type.shape.dim[1:]
    shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    return shape if shape and all(d for d in shape) else None


def _initializer_elements(proto) -> int:
    """Weights stored in the graph: elements of every initializer with more than one element."""
    total = sum(math.prod(init.dims) for init in proto.graph.initializer if len(init.dims) and math.prod(init.dims) > 1)
    return int(total)


# compute operators graph_macs does not count: a graph holding one gets no count rather than a short one
_UNCOUNTED_OPS = {"ConvTranspose", "QLinearConvTranspose", "Einsum", "LSTM", "GRU", "RNN", "Attention", "MultiHeadAttention"}


def graph_macs(proto) -> int | None:
    """Multiply-accumulates per sample of Conv / MatMul / Gemm nodes (and their integer forms), counted on
    shapes inferred at batch size 1, or at the graph's own fixed batch and divided by it (constants inside
    such a graph keep that batch). ``None`` when a needed shape cannot be inferred or the graph holds a
    compute operator it does not count (``_UNCOUNTED_OPS``)."""
    import onnx

    if any(node.op_type in _UNCOUNTED_OPS for node in proto.graph.node):
        return None
    batch = _declared_batch(proto) or 1
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    del model.graph.value_info[:]
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims) and not dims[0].HasField("dim_value"):   # a symbolic batch: counted at 1
            dims[0].Clear()
            dims[0].dim_value = batch
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:
        return None
    shapes = {}
    for value in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    total = 0
    for node in model.graph.node:   # in topological order: a shape filled in here serves the nodes after it
        op = node.op_type
        if op in _SHAPE_KEEPING and node.output and node.output[0] not in shapes and node.input[0] in shapes:
            shapes[node.output[0]] = shapes[node.input[0]]   # what ONNX's inference cannot see past a contrib op
        if op not in ("Conv", "ConvInteger", "QLinearConv", "MatMul", "MatMulInteger", "QLinearMatMul", "Gemm", "QGemm"):
            continue
        weight_index = 3 if op.startswith("QLinear") or op == "QGemm" else 1
        a, w = shapes.get(node.input[0]), shapes.get(node.input[weight_index])
        if op in ("Gemm", "QGemm") and a is not None and w is not None:
            # (M, K) x (K, N), either transposed: counted from the operands, as QGemm (com.microsoft) has no
            # output shape in ONNX's inference
            attrs = {attr.name: attr.i for attr in node.attribute}
            m, k = (a[1], a[0]) if attrs.get("transA") else (a[0], a[1])
            n = w[0] if attrs.get("transB") else w[1]
            shapes.setdefault(node.output[0], [m, n])
            total += m * k * n
            continue
        out = shapes.get(node.output[0])
        if out is None or a is None or w is None:
            return None
        if op in ("Conv", "ConvInteger", "QLinearConv"):
            total += math.prod(out) * math.prod(w[1:])
        else:
            total += math.prod(out) * a[-1]
    return int(total) // batch


# ops whose output has their first input's shape (the ones a QOperator graph puts between two QGemms)
_SHAPE_KEEPING = frozenset({"QuantizeLinear", "DequantizeLinear", "Relu", "Clip", "Identity", "Cast", "QLinearLeakyRelu",
                            "QLinearSigmoid", "LeakyRelu", "Sigmoid"})
