"""The architecture registry (in the manner of timm's ``@register_model`` / ``create_model``).

Every model maps *raw* inputs to logits: a ``Normalize`` layer holding the train split's statistics
comes first, so the artifact, the ONNX file and the device all take pixels as stored.

Architectures are named by a spec string ``name[:key=value,...]``; list values use ``-``:
``mlp:hidden=1200-1200,dropout=0.2`` (the paper's teacher), ``mlp`` (2x800, the paper's student),
``cnn:width=8``, ``dsconv:width=0.5``.
"""

from __future__ import annotations

import contextlib
import functools
import contextvars
import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from edgekd.device import module_device
from edgekd.errors import ConfigError, ModelTooLargeError

_REGISTRY: dict[str, "ArchEntry"] = {}


@dataclass(frozen=True)
class ArchEntry:
    name: str
    builder: Callable[..., nn.Module]
    defaults: dict
    description: str


def register_model(name: str, *, description: str, **defaults):
    """Register ``builder(input_shape, num_classes, **options) -> nn.Module`` under ``name``; each option's
    default (an int, float, bool, text or tuple of ints) says how its value is read from ``name:key=value``.
    A name already registered is refused (an artifact of the built-in would be built by another model),
    as is one ``parse_arch`` could never reach."""
    if not isinstance(name, str) or not name or any(c in name for c in ":,= ") or name.startswith("py"):
        raise ConfigError(f"A model name is text without ':', ',', '=' or spaces and not starting with 'py' (the "
                          f"prefix of your own architectures). Got {name!r} instead.")
    odd = {k: v for k, v in defaults.items() if not isinstance(v, (int, float, str, tuple, list))}
    if odd:
        raise ConfigError(f"Option defaults of '{name}' are int, float, bool, text or tuples of ints, which say how a "
                          f"value is read. Got {odd!r} instead.")

    def wrap(builder):
        before = _REGISTRY[name].builder if name in _REGISTRY else builder
        same = (getattr(before, "__module__", None), getattr(before, "__qualname__", None)) == \
            (getattr(builder, "__module__", None), getattr(builder, "__qualname__", None))
        if not same:   # (the same definition run again, a notebook cell or a reload, replaces itself)
            raise ConfigError(f"A model named {name!r} is registered already ({_REGISTRY[name].description}); "
                              f"choose another name.")
        _REGISTRY[name] = ArchEntry(name, builder, defaults, description)
        return builder
    return wrap


def list_models() -> list[ArchEntry]:
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def is_user_arch(spec: str) -> bool:
    """Whether ``spec`` names your own code (``py:...``), read as ``parse_arch`` reads it: the one test of
    whether building it imports anything."""
    return spec.strip().startswith("py:")


def parse_arch(spec: str) -> tuple[str, dict]:
    """``"cnn:width=8"`` -> ``("cnn", {"width": 8})``, options checked against the registry;
    ``"py:package.module.factory:depth=3"`` -> ``("py:package.module.factory", {"depth": 3})`` (your own
    architecture: nothing is imported here)."""
    if is_user_arch(spec):
        return _parse_user_arch(spec.strip())
    name, _, rest = spec.strip().partition(":")
    if name not in _REGISTRY:
        raise ConfigError(f"Unknown architecture '{name}'; choose one of {', '.join(sorted(_REGISTRY))} (see 'edgekd models').")
    entry = _REGISTRY[name]
    options = dict(entry.defaults)
    given = set()
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"Option '{item}' of architecture '{name}' must look like key=value (e.g. "
                              f"{next(iter(entry.defaults), 'width')}=...); its options are "
                              f"{', '.join(f'{k}={_format_value(v)}' for k, v in entry.defaults.items())}.")
        if key in given:
            raise ConfigError(f"Option '{key}' of architecture '{name}' is given twice in '{spec}'; give it once.")
        given.add(key)
        if key not in entry.defaults:
            raise ConfigError(f"Unknown option '{item}' for architecture '{name}'; its options are "
                              f"{', '.join(f'{k}={_format_value(v)}' for k, v in entry.defaults.items())}.")
        options[key] = _parse_value(name, key, value, entry.defaults[key])
    return name, options


def format_arch(name: str, options: dict) -> str:
    return name + (":" + ",".join(f"{k}={_format_value(v)}" for k, v in options.items()) if options else "")


def _format_value(value) -> str:
    return "-".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _parse_value(arch: str, key: str, text: str, default):
    try:
        if isinstance(default, (list, tuple)):
            parts = text.split("-")
            # every part plain digits: "-5", "+5" or "5--5" are typos, not widths of 5
            if not all(part.isascii() and part.isdigit() for part in parts) or min(map(int, parts)) < 1:
                raise ValueError
            value = tuple(map(int, parts))
        elif isinstance(default, bool):   # (bool("false") is True)
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            value = text.lower() in ("true", "1")
        else:
            value = type(default)(text)
    except ValueError:
        raise ConfigError(f"Option '{key}' of '{arch}' must look like {_format_value(default)}. Got {text!r} instead.") from None
    if isinstance(value, float) and not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"Option '{key}' of '{arch}' must be a finite number >= 0. Got {text!r} instead.")
    if key == "dropout" and not 0 <= value < 1:
        raise ConfigError(f"Option 'dropout' of '{arch}' must be in [0, 1). Got {text!r} instead.")
    if key in ("width", "fc") and value <= 0:
        raise ConfigError(f"Option '{key}' of '{arch}' must be > 0. Got {text!r} instead.")
    high = _OPTION_BOUNDS.get((arch, key), _OPTION_BOUNDS.get(key))
    if high is not None and max(value if isinstance(value, tuple) else (value,)) > high:
        raise ConfigError(f"Option '{key}' of '{arch}' must be at most {high:g} (a bigger model would not fit in "
                          f"memory). Got {text!r} instead.")
    if isinstance(value, tuple) and len(value) > 64:
        raise ConfigError(f"Option '{key}' of '{arch}' may list at most 64 layers. Got {len(value)} instead.")
    return value


# upper bounds of the size options: far above any edge model, far below an allocation that hangs the machine
# (a "width" that multiplies channels, dsconv's, wrn's and mobilenetv2's, and a depth get bounds of their own)
_OPTION_BOUNDS = {"width": 4096, "fc": 65536, "hidden": 65536, ("dsconv", "width"): 64.0, ("wrn", "width"): 16,
                  ("mobilenetv2", "width"): 16.0, ("wrn", "depth"): 1000, ("resnet", "depth"): 1202}


def create_model(spec_or_name: str, input_shape, num_classes: int, *, mean=(0.0,), std=(1.0,), options: dict | None = None,
                 trusted: bool = True, for_training: bool = False) -> "EdgekdNet":
    """Build an architecture behind its input normalisation. A ``py:`` spec runs the user's code: it is
    imported only when ``trusted`` (a spec typed by the user is; one read from an artifact is not,
    unless the command runs with ``--trust-code``, see ``trust_code``). One that could not fit in this
    machine's memory is refused first (``for_training``: with its gradients and optimizer state)."""
    if options is None:
        name, options = parse_arch(spec_or_name)
    else:
        name, parsed = parse_arch(spec_or_name)
        options = {**parsed, **options}
    if is_user_arch(name):
        body = _build_user_arch(name, tuple(input_shape), num_classes, options, trusted=trusted or code_trusted(name))
        return EdgekdNet(body, tuple(input_shape), mean, std, user_arch=name)
    build = lambda: _REGISTRY[name].builder(tuple(input_shape), num_classes, **options)  # noqa: E731
    _check_fits_memory(format_arch(name, options), tuple(input_shape), build, for_training)
    return EdgekdNet(build(), tuple(input_shape), mean, std)


@contextlib.contextmanager
def seeded(seed: int):
    """torch's global generator seeded with ``seed`` within the block and put back after: a net built again under
    the seed it was built with for training draws the same random state (a buffer it does not save included)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _check_fits_memory(spec: str, input_shape: tuple, build, for_training: bool) -> None:
    """Refuse, before allocating, an architecture whose float32 weights would not fit in this machine's memory, or
    for training, whose weights, gradients and Adam's two moments (16 bytes a parameter) would not (each option has a
    bound, their product none: ``mlp:hidden=65536-65536``, or an ``mlp`` on 4096x4096 images, asked for tens of GB
    and failed after a minute, or was killed). Counted on the meta device."""
    if torch.get_default_device().type == "meta":
        return   # already counting shapes only
    with torch.device("meta"):
        parameters = sum(p.numel() for p in build().parameters())
    memory, per_parameter = host_memory_bytes(), 16 if for_training else 4
    if memory and per_parameter * parameters > memory:
        need = ("to train it (float32 weights, gradients and Adam's two moments)" if for_training
                else "for its float32 weights alone")
        raise ModelTooLargeError(f"Architecture '{spec}' on inputs of shape {input_shape} has {parameters / 1e9:.2f} G parameters: "
                          f"{per_parameter * parameters / 1e9:.1f} GB {need}, and this machine has {memory / 1e9:.1f} GB. "
                          f"Choose smaller options or inputs ('edgekd models --input-shape ...' lists the sizes), or a "
                          f"machine with more memory.")


@functools.lru_cache(maxsize=1)
def host_memory_bytes() -> int | None:
    """This machine's memory, or the container's limit where that is lower (cgroup v2 ``memory.max``, v1
    ``memory.limit_in_bytes``); None where neither can be read. Read once a process: every model built asks."""
    import os

    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        memory = None
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(limit).read().strip()
        except OSError:
            continue
        if text.isdigit():
            memory = min(memory, int(text)) if memory else int(text)
    return memory


# --- your own architecture: py:package.module.factory ------------------------------------------------

_TRUST_CODE = contextvars.ContextVar("edgekd_trust_code", default=False)


def code_trusted(name: str | None = None) -> bool:
    """Whether this command may import the ``py:`` code an artifact names (``--trust-code``), or, given the
    architecture's ``name``, that one's (``trust_code(only=...)``: a spec typed on this command line)."""
    value = _TRUST_CODE.get()
    if isinstance(value, frozenset):
        return name is not None and parse_arch(name)[0] in value
    return value


@contextlib.contextmanager
def trust_code(enabled: bool = True, *, only=None):
    """Within this block, artifacts that name ``py:`` code may import it (``--trust-code``); with ``only``, just
    the architectures it names (a command's own outputs, made from specs the user typed)."""
    token = _TRUST_CODE.set(frozenset(parse_arch(spec)[0] for spec in only) if only is not None else enabled)
    try:
        yield
    finally:
        _TRUST_CODE.reset(token)


def _parse_user_arch(spec: str) -> tuple[str, dict]:
    target, _, rest = spec[len("py:"):].partition(":")
    parts = target.split(".")
    if len(parts) < 2 or not all(part.isidentifier() for part in parts):
        raise ConfigError(f"A 'py:' architecture must name a factory as py:package.module.factory[:key=value,...]. "
                          f"Got {spec!r} instead.")
    options = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.isidentifier():
            raise ConfigError(f"Option '{item}' of '{spec}' must look like key=value.")
        if key in options:
            raise ConfigError(f"Option '{key}' is given twice in '{spec}'; give it once.")
        options[key] = _user_value(value)
    return "py:" + target, options


def _user_value(text: str):
    """int, float, '-'-separated ints (a tuple), true/false, else the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if "-" in text and all(part.isdigit() for part in text.split("-")):
        return tuple(int(part) for part in text.split("-"))
    return text


def _build_user_arch(name: str, input_shape, num_classes: int, options: dict, *, trusted: bool) -> nn.Module:
    import importlib

    module_name, _, factory_name = name[len("py:"):].rpartition(".")
    if not trusted:
        raise ConfigError(f"This artifact's architecture '{name}' is your own code: loading it would import "
                          f"'{module_name}' and run '{factory_name}'; pass --trust-code if you trust it.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"Architecture '{name}': cannot import '{module_name}' ({exc}); put it on PYTHONPATH or "
                          f"install its package.") from None
    except Exception as exc:   # the module itself fails as it is imported
        raise ConfigError(f"Architecture '{name}': importing '{module_name}' raised {type(exc).__name__}: "
                          f"{str(exc)[:160]}; fix that module.") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ConfigError(f"Architecture '{name}': '{module_name}' has no callable '{factory_name}'.")
    try:
        body = factory(tuple(input_shape), num_classes, **options)
    except Exception as exc:   # your code may refuse its options any way it likes: said in one line
        raise ConfigError(f"Architecture '{name}': {factory_name}(input_shape, num_classes, **options) raised "
                          f"{type(exc).__name__}: {str(exc)[:160]}; check its options.") from None
    if not isinstance(body, nn.Module):
        raise ConfigError(f"Architecture '{name}': {factory_name} must return a torch.nn.Module. "
                          f"Got {type(body).__name__} instead.")
    _check_user_forward(name, body, tuple(input_shape), num_classes)
    return body


def non_float32_dtypes(tensors) -> list[str]:
    """The floating dtypes other than float32 among ``tensors``, by name ("float64", "bfloat16"): what a net fed
    float32 cannot compute with, nor a float32 quantizer take."""
    return sorted({str(t.dtype).replace("torch.", "") for t in tensors if t.is_floating_point() and t.dtype != torch.float32})


def _check_user_forward(name: str, body: nn.Module, input_shape: tuple, num_classes: int) -> None:
    """One forward pass of two zero inputs, in eval mode (no BatchNorm statistics move): a module that cannot
    take the data's shape, or gives other than one score per class, is the user's code to fix, said before
    any training (it failed on the first batch as an internal error, or trained and was refused later)."""
    try:
        out = _forward_zeros(body, input_shape, 2)
    except Exception as exc:
        other = non_float32_dtypes(body.parameters())
        fix = (f"edgekd feeds it float32 and it holds {', '.join(other)} weights: build it in float32 (or cast its "
               f"input inside forward)" if other else f"make it take (batch, {', '.join(map(str, input_shape))}) inputs")
        raise ConfigError(f"Architecture '{name}' fails on inputs of shape {(2, *input_shape)} ({type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[-1][:160] if str(exc).strip() else ''}); {fix}.") from None
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != (2, num_classes):
        raise ConfigError(f"Architecture '{name}' must give one score per class, (batch, {num_classes}), on inputs of shape "
                          f"{(2, *input_shape)}. Got {shape} instead; end it in a layer with {num_classes} outputs.")


class Normalize(nn.Module):
    """(x - mean) / std per channel, with the statistics as buffers so they travel with the weights."""

    def __init__(self, input_shape, mean, std):
        super().__init__()
        shape = (1, len(mean)) + (1,) * (len(input_shape) - 1) if len(input_shape) > 1 else (1, 1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(shape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(shape))

    def forward(self, x):
        return (x - self.mean) / self.std


class EdgekdNet(nn.Module):
    """``body(normalize(x))``: raw inputs in, logits out."""

    def __init__(self, body: nn.Module, input_shape, mean, std, user_arch: str | None = None):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.normalize = Normalize(input_shape, mean, std)
        self.body = body
        self.user_arch = user_arch   # "py:..." when the body is your own code: its failures are said to be its own

    def forward(self, x):
        return self.body(self.normalize(x))


# --- architectures -----------------------------------------------------------------------------

@register_model("mlp", description="fully connected ReLU net (the paper's 2x1200 teacher / 2x800 student)",
                hidden=(800, 800), dropout=0.0)
def _mlp(input_shape, num_classes, *, hidden, dropout):
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU(inplace=True)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def require_image(arch: str, input_shape, min_side: int):
    if len(input_shape) != 3 or min(input_shape[1:]) < min_side:
        raise ConfigError(f"Architecture '{arch}' needs image inputs (C, H, W) of at least {min_side}x{min_side}. "
                          f"Got input shape {tuple(input_shape)} instead; use 'mlp' for vector data.")


def _conv_bn(cin, cout, *, stride=1, groups=1, kernel=3):
    return [nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


@register_model("cnn", description="4 conv+BN layers, 2 max-pools, FC, dropout (the README's teacher at width 32)",
                width=32, fc=256, dropout=0.3)
def _cnn(input_shape, num_classes, *, width, fc, dropout):
    require_image("cnn", input_shape, 4)
    channels, height, wide = input_shape
    w = int(width)
    features = nn.Sequential(
        *_conv_bn(channels, w), *_conv_bn(w, w), nn.MaxPool2d(2),
        *_conv_bn(w, 2 * w), *_conv_bn(2 * w, 2 * w), nn.MaxPool2d(2),
    )
    flat = 2 * w * (height // 4) * (wide // 4)
    return nn.Sequential(features, nn.Flatten(), nn.Linear(flat, fc), nn.ReLU(inplace=True),
                         nn.Dropout(dropout), nn.Linear(fc, num_classes))


@register_model("dsconv", description="mobile-style depthwise-separable CNN (MobileNet blocks, width multiplier)",
                width=1.0, dropout=0.1)
def _dsconv(input_shape, num_classes, *, width, dropout):
    require_image("dsconv", input_shape, 4)
    channels = input_shape[0]
    c = lambda n: max(4, int(round(n * width)))  # noqa: E731

    def separable(cin, cout, stride):
        return [*_conv_bn(cin, cin, stride=stride, groups=cin), *_conv_bn(cin, cout, kernel=1)]

    return nn.Sequential(
        *_conv_bn(channels, c(32)),
        *separable(c(32), c(64), 2),
        *separable(c(64), c(128), 2),
        *separable(c(128), c(128), 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c(128), num_classes),
    )


# --- cost ----------------------------------------------------------------------------------------

def output_layer(model: nn.Module, outputs: int, needed_by: str) -> tuple[str, nn.Linear]:
    """(name, layer) of the output layer: the ``nn.Linear`` whose output the model returns, found by running
    it once (the last one registered for a model without an ``input_shape``); it must give the ``outputs``
    scores and have a bias, else ``needed_by`` (the stage that edits it, and why) is refused in one line.
    A Linear inside the body (a squeeze-excitation's, or a gate registered after the head) is thus refused
    rather than edited."""
    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ConfigError(f"The architecture has no nn.Linear output layer; {needed_by}, so the architecture must end "
                          f"in an nn.Linear with a bias.")
    returned = _returning_linear(model, linears)
    if returned is False:
        raise ConfigError(f"The architecture's output is not an nn.Linear's (its scores are computed after the last "
                          f"Linear); {needed_by}, so the architecture must end in an nn.Linear with a bias.")
    name, layer = returned or linears[-1]
    if layer.out_features != outputs or layer.bias is None:
        got = f"{layer.in_features} -> {layer.out_features}" + ("" if layer.bias is not None else ", without a bias")
        raise ConfigError(f"The last nn.Linear of the architecture ('{name}', {got}) is not an output layer of {outputs} "
                          f"scores with a bias; {needed_by}, so the architecture must end in an nn.Linear with a bias.")
    return name, layer


def _returning_linear(model: nn.Module, linears):
    """The (name, Linear) whose output tensor ``model`` returns on two zero inputs; False when it returns
    none's; None when the model declares no ``input_shape`` to run it on."""
    shape = getattr(model, "input_shape", None)
    if shape is None:
        return None
    outputs, hooks = [], []   # the tensors themselves, kept alive: a freed one's id could be the output's
    for name, layer in linears:
        hooks.append(layer.register_forward_hook(lambda _m, _i, out, name=name: outputs.append((out, name))))
    try:
        out = _forward_zeros(model, shape, 2)
    finally:
        for hook in hooks:
            hook.remove()
    name = next((name for tensor, name in outputs if tensor is out), None)
    return (name, dict(linears)[name]) if name is not None else False


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape) -> int:
    """Multiply-accumulates of one forward pass on one sample: half the FLOPs that
    ``torch.utils.flop_counter`` counts in the matrix products and convolutions, so any module counts,
    not only the layer types edgekd knows. Counted with the fused paths off (oneDNN's LSTM, the attention "fast
    path" of eval mode, fused scaled-dot-product attention): the counter sees no matrix product inside those
    kernels, and an LSTM or a transformer layer counted 5-130x too few."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        torch.backends.mha.set_fastpath_enabled(False)
        with warnings.catch_warnings():   # setting oneDNN's flags warns about Intel GPUs' TF32, which is not ours
            warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
            with torch.backends.mkldnn.flags(enabled=False), sdpa_kernel(SDPBackend.MATH), \
                    FlopCounterMode(display=False) as counter:
                _forward_zeros(model, input_shape, 1)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return int(counter.get_total_flops() // 2)


def _forward_zeros(model: nn.Module, input_shape, batch: int):
    """``model`` on ``batch`` zero inputs of ``input_shape`` where it lives, in eval mode and without
    gradients (no BatchNorm statistics move), its training mode put back after."""
    training = model.training
    try:
        with torch.no_grad():
            return model.eval()(torch.zeros((batch, *input_shape), device=module_device(model)))
    finally:
        model.train(training)


# the KD literature's architectures (resnet, wrn, mobilenetv2) register themselves on import
from edgekd import kd_models  # noqa: E402,F401
