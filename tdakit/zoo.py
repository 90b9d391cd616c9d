"""The model zoo: the networks the presets, notebooks and benchmarks train.

``mlp`` (the paper's regression and MNIST models) and ``resnet9`` (the paper's CIFAR-10 model). Any other
``nn.Module`` works with tdakit as it is; these are only the ones it ships.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .errors import SettingError

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "softplus": nn.Softplus}


def mlp(in_features: int, hidden: Sequence[int] = (128, 128, 128), out_features: int = 1,
        activation: str = "relu") -> nn.Sequential:
    """A multilayer perceptron: Linear -> activation for each hidden width, then a Linear head.

    The paper's Concrete model is ``mlp(8, (128, 128, 128), 1)`` (~34k parameters). Smooth activations
    ("tanh", "gelu", "softplus") make finite-difference checks through long training runs well posed.
    """
    if activation not in ACTIVATIONS:
        raise SettingError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
        width = h
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)



class Residual(nn.Module):
    """x -> x + block(x) (the block ends in an in-place ReLU, whose output autograd keeps, so the sum is a
    new tensor)."""

    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class Scale(nn.Module):
    """Multiplies by a fixed factor (no parameters)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return x * self.factor


def conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 convolution (no bias) -> BatchNorm -> in-place ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


def resnet9(num_classes: int = 10, in_channels: int = 3, width: int = 64) -> nn.Sequential:
    """ResNet-9, the paper's CIFAR-10 model: widths (1, 2, 4, 8) x ``width``, two residual blocks, max
    pooling, a bias-free linear head scaled by 1/8. width=64 gives 6.57M parameters for 32x32 inputs; tests
    and CPU tutorials use a narrow one (width 8-16). Inputs [n, in_channels, H, W] with H, W divisible by 8.
    """
    w = (width, 2 * width, 4 * width, 8 * width)
    return nn.Sequential(
        conv_bn(in_channels, w[0]),
        conv_bn(w[0], w[1]), nn.MaxPool2d(2), Residual(conv_bn(w[1], w[1]), conv_bn(w[1], w[1])),
        conv_bn(w[1], w[2]), nn.MaxPool2d(2),
        conv_bn(w[2], w[3]), nn.MaxPool2d(2), Residual(conv_bn(w[3], w[3]), conv_bn(w[3], w[3])),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(w[3], num_classes, bias=False), Scale(0.125))
