"""The KD literature's benchmark architectures, as the CRD / RepDistiller code defines them (Tian et
al., "Contrastive Representation Distillation", ICLR 2020), registered in ``edgekd.models``:

- ``resnet``: the CIFAR ResNet (He et al. 2016, section 4.2): a 3x3 stem, three stages of basic
  blocks with (depth - 2) / 6 blocks each, channels ``stem-stage1-stage2-stage3``, global average
  pooling, a linear head. ``resnet8x4`` and ``resnet32x4`` (depth 8 / 32, channels 32-64-128-256)
  are the student and teacher of the CIFAR-100 KD tables (1.23 M and 7.43 M parameters).
- ``wrn``: the wide ResNet (Zagoruyko & Komodakis 2016): pre-activation basic blocks, (depth - 4) / 6
  per stage, channels 16-16k-32k-64k; ``wrn:depth=40,width=2`` is the 2.26 M-parameter teacher.
- ``mobilenetv2``: MobileNetV2 (Sandler et al. 2018) with the CIFAR strides RepDistiller uses
  (``mobile_half`` is ``width=0.5``), inverted residual blocks, expansion 6.

Every one takes any input channels and sizes of at least 28x28 (pooling is adaptive).
"""

from __future__ import annotations

from torch import nn

from edgekd.errors import ConfigError
from edgekd.models import register_model, require_image


def _bn_relu(channels):
    return [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the input (a 1x1 conv-BN when the shape changes), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), *_bn_relu(cout),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


@register_model("resnet", description="CIFAR ResNet (CRD/RepDistiller): depth 6n+2, channels stem-s1-s2-s3",
                depth=8, channels=(16, 16, 32, 64))
def _resnet(input_shape, num_classes, *, depth, channels):
    require_image("resnet", input_shape, 28)
    if (depth - 2) % 6 or depth < 8 or len(channels) != 4:
        raise ConfigError(f"Architecture 'resnet' needs depth = 6n + 2 (8, 14, 20, 32, 56, ...) and 4 channel counts "
                          f"(stem-stage1-stage2-stage3). Got depth={depth}, channels={'-'.join(map(str, channels))} instead.")
    blocks, layers, cin = (depth - 2) // 6, [], channels[0]
    for stage, cout in enumerate(channels[1:]):
        for index in range(blocks):
            layers.append(BasicBlock(cin, cout, 2 if stage and not index else 1))
            cin = cout
    return nn.Sequential(nn.Conv2d(input_shape[0], channels[0], 3, 1, 1, bias=False), *_bn_relu(channels[0]), *layers,
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))


@register_model("resnet8x4", description="resnet:depth=8,channels=32-64-128-256 (the CIFAR-100 KD student)")
def _resnet8x4(input_shape, num_classes):
    return _resnet(input_shape, num_classes, depth=8, channels=(32, 64, 128, 256))


@register_model("resnet32x4", description="resnet:depth=32,channels=32-64-128-256 (the CIFAR-100 KD teacher)")
def _resnet32x4(input_shape, num_classes):
    return _resnet(input_shape, num_classes, depth=32, channels=(32, 64, 128, 256))


class WideBlock(nn.Module):
    """Pre-activation: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus the input (a 1x1 conv of the activated
    input when the shape changes), as in the WRN reference code."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.pre = nn.Sequential(*_bn_relu(cin))
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), *_bn_relu(cout),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False))
        self.shortcut = None if cin == cout and stride == 1 else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        activated = self.pre(x)
        return self.body(activated) + (x if self.shortcut is None else self.shortcut(activated))


@register_model("wrn", description="wide ResNet (Zagoruyko & Komodakis): depth 6n+4, widening factor", depth=16, width=2)
def _wrn(input_shape, num_classes, *, depth, width):
    require_image("wrn", input_shape, 28)
    if (depth - 4) % 6 or depth < 10:
        raise ConfigError(f"Architecture 'wrn' needs depth = 6n + 4 (10, 16, 22, 28, 40, ...). Got depth={depth} instead.")
    blocks, cin, layers = (depth - 4) // 6, 16, []
    for stage, cout in enumerate((16 * width, 32 * width, 64 * width)):
        for index in range(blocks):
            layers.append(WideBlock(cin, cout, 2 if stage and not index else 1))
            cin = cout
    return nn.Sequential(nn.Conv2d(input_shape[0], 16, 3, 1, 1, bias=False), *layers, *_bn_relu(cin),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))


class InvertedResidual(nn.Module):
    """1x1 expand - 3x3 depthwise - 1x1 linear projection; the input added when the shape stays."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.residual = stride == 1 and cin == cout
        self.body = nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
                                  nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
                                  nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
                                  nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


# (expansion, channels, blocks, stride) per stage, with RepDistiller's CIFAR strides
_MOBILENETV2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


@register_model("mobilenetv2", description="MobileNetV2 (CIFAR strides; width=0.5 is RepDistiller's mobile_half)", width=1.0)
def _mobilenetv2(input_shape, num_classes, *, width):
    require_image("mobilenetv2", input_shape, 28)
    scaled = lambda c: max(8, int(c * width))  # noqa: E731
    cin = scaled(32)
    layers = [nn.Conv2d(input_shape[0], cin, 3, 2, 1, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(inplace=True)]
    for expand, channels, blocks, stride in _MOBILENETV2_STAGES:
        for index in range(blocks):
            layers.append(InvertedResidual(cin, scaled(channels), stride if index == 0 else 1, expand))
            cin = scaled(channels)
    last = 1280 if width <= 1.0 else int(1280 * width)
    return nn.Sequential(*layers, nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6(inplace=True),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(last, num_classes))
