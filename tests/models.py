"""Deterministic TorchScript test models, generated, never downloaded.

    python tests/models.py DIR     writes every model below into DIR

The exact models (identity, inversion, power-of-two weights) give outputs
that float arithmetic computes without rounding, so they are compared
bit-exactly; the others are compared to PyTorch by PSNR.
"""

import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F


class Identity(nn.Module):
    def forward(self, x):
        return x


class Invert(nn.Module):
    """No parameters at all: upstream's backend crashes on such a model."""

    def forward(self, x):
        return 1.0 - x


class Affine(nn.Module):
    """Element-wise with one parameter: conversion cost dominates."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(0.5))

    def forward(self, x):
        return x * self.gain + 0.25


class Conv1x1(nn.Module):
    """Mixes the channels with power-of-two weights: exact."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([
                [0.5, 0.25, 0.25],
                [0.0, 1.0, 0.0],
                [0.25, 0.25, 0.5],
            ]).view(3, 3, 1, 1))

    def forward(self, x):
        return self.conv(x)


class Conv3(nn.Module):
    """A small 3-layer conv net with fixed pseudo-random weights."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        y = F.relu(self.c1(x))
        y = F.relu(self.c2(y))
        return x + 0.1 * torch.tanh(self.c3(y))


class UpscaleX2(nn.Module):
    """x2 upscaler: sub-pixel convolution on top of bilinear upsampling."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 12, 3, padding=1)

    def forward(self, x):
        base = F.interpolate(x, scale_factor=2.0, mode="bilinear",
                             align_corners=False)
        detail = F.pixel_shuffle(self.c2(F.relu(self.c1(x))), 2)
        return base + 0.1 * torch.tanh(detail)


class GrayInvert(nn.Module):
    """One input channel, one output channel; a 1x1 conv with weight -1."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(-1.0)
            self.conv.bias.fill_(1.0)

    def forward(self, x):
        return self.conv(x)


class Sharpen(nn.Module):
    """Demo: x2 upscale, then an unsharp mask that makes edges glow."""

    def __init__(self):
        super().__init__()
        k = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 5.0, -1.0], [0.0, -1.0, 0.0]])
        self.register_buffer("kernel", k.view(1, 1, 3, 3).repeat(3, 1, 1, 1))

    def forward(self, x):
        up = F.interpolate(x, scale_factor=2.0, mode="bicubic",
                           align_corners=False)
        return F.conv2d(up, self.kernel, padding=1, groups=3)


# Malformed models: each must end in a clear error, never a crash.

class Throws(nn.Module):
    """Wants 4 input channels: forward() throws on any frame."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        return self.conv(x)


class Returns3D(nn.Module):
    def forward(self, x):
        return x[0]


class ReturnsTuple(nn.Module):
    def forward(self, x):
        return x, x


class Returns2Channels(nn.Module):
    def forward(self, x):
        return x[:, :2]


class ReturnsNaN(nn.Module):
    def forward(self, x):
        return x * float("nan")


class ReturnsDict(nn.Module):
    def forward(self, x):
        return {"out": x}


class Returns5D(nn.Module):
    def forward(self, x):
        return x.unsqueeze(0)


MODELS = {
    "identity": Identity,
    "invert": Invert,
    "affine": Affine,
    "conv1x1": Conv1x1,
    "conv3": Conv3,
    "upx2": UpscaleX2,
    "gray": GrayInvert,
    "sharpen": Sharpen,
    "throws": Throws,
    "ret3d": Returns3D,
    "tuple": ReturnsTuple,
    "ret2ch": Returns2Channels,
    "nan": ReturnsNaN,
    "dict": ReturnsDict,
    "ret5d": Returns5D,
}


def build(name):
    torch.manual_seed(1234)
    model = MODELS[name]().eval()
    return torch.jit.script(model)


def main(outdir):
    os.makedirs(outdir, exist_ok=True)
    for name in MODELS:
        path = os.path.join(outdir, name + ".pt")
        build(name).save(path + ".tmp")
        os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main(sys.argv[1])
