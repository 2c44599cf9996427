"""``edgekd export``: an artifact -> a verified ONNX / ORT-format / ExecuTorch file (the library is ``export/``)."""

from __future__ import annotations

import click

from edgekd.clicommon import common_options, echo_json
from edgekd.config import defaults
from export.config import ORT_OPTIMIZATION_LEVELS, QUANT_FORMATS, QUANTIZE_MODES, ExportConfig

EXPORT = defaults(ExportConfig)   # every default below is the library's (export.config imports no torch)


@click.command("export")
@click.argument("model")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Output file: NAME.onnx, NAME.ort with --ort, NAME.pte with --executorch. A summary is written beside it as that file name plus .json (NAME.onnx.json).")
@click.option("--onnx", "onnx_format", is_flag=True, default=True,
              help="Export to ONNX (the default; --ort converts it further).")
@click.option("--ort", is_flag=True, help="Convert to the ORT format for onnxruntime mobile (--out NAME.ort).")
@click.option("--executorch", is_flag=True,
              help="Export an ExecuTorch program (.pte, XNNPACK) for Android/iOS instead of ONNX; needs edgekd[mobile].")
@click.option("--batch-size", type=int, default=EXPORT["batch_size"], show_default=True,
              help="--executorch: the program's fixed batch (its input is (batch, C*H*W) float32).")
@click.option("--ort-optimization", type=click.Choice(ORT_OPTIMIZATION_LEVELS), default=EXPORT["ort_optimization"],
              show_default=True,
              help="Graph optimizations saved into the .ort: extended fuses int8 QDQ pairs for the CPU provider (fast); "
                   "basic leaves them for a phone's NNAPI/CoreML/XNNPACK provider.")
@click.option("--quantize", type=click.Choice(QUANTIZE_MODES), default=EXPORT["quantize"],
              help="int8: static QDQ, per-channel, calibrated on --calibration-data; dynamic: int8 weights only.")
@click.option("--quant-format", type=click.Choice(QUANT_FORMATS), default=EXPORT["quant_format"], show_default=True,
              help="int8 as QuantizeLinear/DequantizeLinear pairs (qdq: onnxruntime, OpenVINO, tract) or as QLinear* "
                   "operators (qoperator: the form OpenCV DNN reads).")
@click.option("--calibration-data", default=None, help="Dataset spec whose train split calibrates --quantize int8 (default: the data the artifact records).")
@click.option("--calibration-size", type=int, default=EXPORT["calibration_size"], show_default=True, help="Calibration inputs (train split).")
@click.option("--opset", type=int, default=EXPORT["opset"], show_default=True, help="ONNX opset (18 or newer).")
@click.option("--atol", type=float, default=EXPORT["atol"], show_default=True,
              help="fp32 gate: absolute logit difference from PyTorch allowed on the val split, beyond the relative "
              "part and 4x PyTorch's own float32 rounding (float32 against float64) on those inputs.")
@click.option("--rtol", type=float, default=EXPORT["rtol"], show_default=True,
              help="fp32 gate: relative part of the tolerance, |diff| <= atol + rtol x |logit| (numpy.allclose).")
@click.option("--max-accuracy-drop", type=float, default=EXPORT["max_accuracy_drop"], show_default=True,
              help="int8 gate: test accuracy points the quantized model may lose.")
@click.option("--uint8-input", is_flag=True, help="The graph takes uint8 pixels (cast inside) instead of float32.")
@click.option("--data", default=None, help="Data for verification and accuracy (default: the artifact's own).")
@click.option("--val-fraction", type=float, default=None, help="Val split size (default: the artifact's).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@common_options(device=False)   # export traces and verifies on the CPU: no --device to offer
def export_cmd(model, out, onnx_format, ort, executorch, batch_size, ort_optimization, quantize, quant_format,
               calibration_data, calibration_size, opset, atol, rtol, max_accuracy_drop, uint8_input, data, val_fraction,
               overwrite, as_json, seed, **_common):
    """Export MODEL (an artifact folder: a student, a teacher or a teacher ensemble) to one verified file.

    \b
    The file is written only if it matches PyTorch on the val split (batch 1 and batch 64: every
    |logit diff| <= --atol + --rtol x |logit| + 4x PyTorch's own float32 rounding, and 100% top-1 agreement)
    or, quantized, loses at most --max-accuracy-drop test accuracy points; otherwise exit code 2 and
    nothing is written.
    \b
      edgekd export runs/student --onnx --out runs/export/student.onnx
      edgekd export runs/student --onnx --quantize int8 --calibration-data fashion-mnist --out runs/export/student.int8.onnx
      edgekd export runs/student --onnx --ort --out runs/export/student.ort
      edgekd export runs/teacher --onnx --out runs/export/ensemble.onnx
      edgekd export runs/student --executorch --quantize int8 --out runs/export/student.int8.pte
    """
    from edgekd.clicommon import refuse_unused, register_stage_kinds
    from export import export_executorch, export_onnx

    register_stage_kinds()
    refuse_unused([("onnx_format", not executorch, "without --executorch (which writes a .pte, not ONNX)"),
                   ("ort_optimization", ort, "with --ort"),
                   ("quant_format", quantize == "int8", "with --quantize int8"),
                   ("calibration_data", quantize == "int8", "with --quantize int8"),
                   ("calibration_size", quantize == "int8", "with --quantize int8"),
                   ("max_accuracy_drop", quantize is not None, "with --quantize"),
                   ("batch_size", executorch, "with --executorch (an ONNX file keeps a dynamic batch)"),
                   ("opset", not executorch, "to ONNX and ORT exports, not with --executorch")])
    config = ExportConfig(opset=opset, quantize=quantize, quant_format=quant_format, calibration_data=calibration_data,
                          calibration_size=calibration_size, ort=ort, ort_optimization=ort_optimization,
                          executorch=executorch, batch_size=batch_size, atol=atol, rtol=rtol, max_accuracy_drop=max_accuracy_drop,
                          uint8_input=uint8_input, data=data, val_fraction=val_fraction, seed=seed)
    from edgekd.outputs import output_lock

    with output_lock(out, make_parent=False):
        result = (export_executorch if executorch else export_onnx)(model, out, config, overwrite=overwrite)
    if as_json:
        echo_json(result.summary)
        return
    print_export(result)


def print_export(result) -> None:
    s = result.summary
    sizes = s["sizes_bytes"]
    opset = f", opset {result.opset}" if result.opset is not None else ""
    click.echo(f"exported {s['source']['description']} -> {result.path} ({result.format}, {result.precision}{opset}, "
               f"input {s['input']['dtype']} {s['input']['shape']}, {result.size_bytes:,} bytes)")
    v = s["verification"]
    click.echo(f"fp32 vs PyTorch on {v['data']} [val]: " + "; ".join(_parity(p) for p in v["fp32"]["parity"]))
    if "int8" in v:
        click.echo(f"{result.precision} vs PyTorch [val]: " + "; ".join(_parity(p) for p in v["int8"]["parity"]))
    if "ort" in v:
        click.echo("ORT format, loaded back [val]: " + "; ".join(_parity(p) for p in v["ort"]["parity"])
                   + f"; test accuracy {v['ort']['test_accuracy']:.4f}")
    line = f"test accuracy (n={v['n_test']}): fp32 {v['fp32']['test_accuracy']:.4f}"
    if "int8" in v:
        line += (f", {result.precision} {v['int8']['test_accuracy']:.4f} (drop {v['int8']['accuracy_drop_points']:.2f} "
                 f"points, gate {v['max_accuracy_drop']:g}); {sizes['int8_to_fp32_ratio']:.2f}x the size of the fp32 "
                 f"graph ({sizes.get('fp32_onnx', sizes.get('fp32_pte', 0)):,} bytes; both before metadata)")
    click.echo(line)
    t = s["seconds"]
    click.echo("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()) + f"; summary {result.summary_path}")


def _parity(p: dict) -> str:
    return (f"batch {p['batch_size']}: max |diff| {p['max_abs_diff']:.1e}, mean {p['mean_abs_diff']:.1e}, "
            f"top-1 agreement {100 * p['top1_agreement']:.2f}%")
