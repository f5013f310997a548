"""Models, created by name from a registry.

All models take images in [0, 1] of shape [B, C, H, W] and return logits [B, num_classes].
Any mean/std normalisation happens inside ``forward`` (``Normalize``), so epsilons are always in
pixel units.  Small models are for 28x28 inputs on a CPU; PreAct-ResNet-18 and WideResNet follow
the architectures of the robust-overfitting / AWP code for the paper profile.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn):
    """Decorator: make ``fn(num_classes, in_channels, **kw)`` creatable by its name."""
    MODELS[fn.__name__] = fn
    return fn


def create_model(name: str, num_classes: int = 10, in_channels: int = 1, **kw) -> nn.Module:
    """Instantiate a registered model; unknown names list the allowed ones."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; allowed: {sorted(MODELS)}")
    return MODELS[name](num_classes=num_classes, in_channels=in_channels, **kw)


class Normalize(nn.Module):
    """(x - mean) / std per channel, inside the model so attacks see [0, 1] inputs."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def _conv_bn(cin, cout, bn: bool):
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU(inplace=True))
    return layers


@register_model
def small_cnn(num_classes=10, in_channels=1, width=32, bn=False, image_size=28):
    """conv(w)-pool-conv(2w)-pool-fc128: the workhorse for 28x28 images (~0.4M params)."""
    feat = image_size // 4
    return nn.Sequential(
        *_conv_bn(in_channels, width, bn), nn.MaxPool2d(2),
        *_conv_bn(width, 2 * width, bn), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * width * feat * feat, 128), nn.ReLU(inplace=True),
        nn.Linear(128, num_classes))


@register_model
def vgg_mini_bn(num_classes=10, in_channels=1, widths=(16, 32, 64, 64, 128)):
    """Five conv+BN+ReLU layers with pooling, then global average pool and a linear head.

    Several conv layers with BatchNorm: the model for layer-wise analyses (pruning, features).
    """
    layers, cin = [], in_channels
    for i, w in enumerate(widths):
        layers += _conv_bn(cin, w, True)
        if i in (1, 3):
            layers.append(nn.MaxPool2d(2))
        cin = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(cin, num_classes))


@register_model
def mlp(num_classes=10, in_channels=1, hidden=(256, 128), image_size=28):
    """A fully connected network on flattened pixels."""
    layers, cin = [nn.Flatten()], in_channels * image_size * image_size
    for h in hidden:
        layers += [nn.Linear(cin, h), nn.ReLU(inplace=True)]
        cin = h
    return nn.Sequential(*layers, nn.Linear(cin, num_classes))


@register_model
def lenet(num_classes=10, in_channels=1, image_size=28):
    """LeNet-5 style: conv5(6)-pool-conv5(16)-pool-fc120-fc84."""
    feat = ((image_size - 4) // 2 - 4) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * feat * feat, 120), nn.ReLU(inplace=True),
        nn.Linear(120, 84), nn.ReLU(inplace=True), nn.Linear(84, num_classes))


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016), as in the robust-overfitting code."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = (nn.Conv2d(cin, cout, 1, stride, bias=False)
                         if stride != 1 or cin != cout else None)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        sc = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + sc


class PreActResNet(nn.Module):
    """PreAct-ResNet with ``blocks`` per stage; ``width`` scales the channels (64 = paper)."""

    def __init__(self, blocks=(2, 2, 2, 2), num_classes=10, in_channels=3, width=64,
                 mean=None, std=None):
        super().__init__()
        self.norm = Normalize(mean, std) if mean is not None else nn.Identity()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        stages, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2 ** i
            for j in range(n):
                stages.append(PreActBlock(cin, cout, 2 if (j == 0 and i > 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(cin)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x):
        out = self.layers(self.conv1(self.norm(x)))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1).flatten(1)
        return self.linear(out)


@register_model
def preact_resnet18(num_classes=10, in_channels=3, width=64, mean=None, std=None):
    """PreAct-ResNet-18; ``width=64`` is the paper's, 16 runs on a CPU."""
    return PreActResNet((2, 2, 2, 2), num_classes, in_channels, width, mean, std)


@register_model
def tiny_resnet(num_classes=10, in_channels=1, width=16):
    """Three PreAct stages with one block each: a small ResNet for 28x28 inputs."""
    return PreActResNet((1, 1, 1), num_classes, in_channels, width)


@register_model
def wide_resnet(num_classes=10, in_channels=3, depth=34, widen=10, mean=None, std=None):
    """WideResNet-depth-widen (Zagoruyko & Komodakis) built from the same pre-activation
    blocks; WRN-34-10 is the AWP paper's model."""
    if (depth - 4) % 6:
        raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
    n, widths = (depth - 4) // 6, [16, 16 * widen, 32 * widen, 64 * widen]
    layers, cin = [], widths[0]
    for i, w in enumerate(widths[1:]):
        for j in range(n):
            layers.append(PreActBlock(cin, w, (1 if i == 0 else 2) if j == 0 else 1))
            cin = w
    net = nn.Sequential(
        Normalize(mean, std) if mean is not None else nn.Identity(),
        nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), *layers,
        nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(cin, num_classes))
    return net


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
