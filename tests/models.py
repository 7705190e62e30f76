"""Deterministic TorchScript test models, generated, never downloaded.

    python tests/models.py DIR     writes every model below into DIR

packages(DIR) compiles some of them into AOTInductor packages (.pt2);
export_onnx(NAME, PATH) exports one to ONNX for the benchmark's peer.

The exact models (identity, inversion, power-of-two weights) give outputs
that float arithmetic computes without rounding, so they are compared
bit-exactly; the others are compared to PyTorch by PSNR.
"""

import inspect
import math
import os
import sys
import warnings
from typing import List, Optional, Tuple

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


MIX1X1 = [[0.5, 0.25, 0.0], [0.0, 1.0, 0.0], [0.0, 0.5, 0.5]]


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


class Mix1x1(nn.Module):
    """Mixes the channels with power-of-two weights that tell R from B: a
    backend that swapped them on the way in and out would change the output
    (Conv1x1's weights are the same under that swap)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor(MIX1X1).view(3, 3, 1, 1))

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


class ConvBN(nn.Module):
    """Convolutions with batch norms of non-trivial statistics, which
    optimize=freeze folds into the convolutions (a different float result,
    the same frames within 1)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 3, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(3)
        with torch.no_grad():
            for bn in (self.bn1, self.bn2):
                n = bn.num_features
                bn.running_mean.copy_(torch.linspace(-0.2, 0.3, n))
                bn.running_var.copy_(torch.linspace(0.5, 2.0, n))
                bn.weight.copy_(torch.linspace(0.8, 1.2, n))
                bn.bias.copy_(torch.linspace(-0.1, 0.1, n))

    def forward(self, x):
        return x + 0.2 * torch.tanh(self.bn2(self.c2(F.relu(self.bn1(self.c1(x))))))


class RepeatChannel(nn.Module):
    """Channel k of the input in all three: on YUV frames the output luma is
    what the model got in that channel, chroma interpolation included."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x):
        return x[:, self.k:self.k + 1].expand(-1, 3, -1, -1).contiguous()


class RepeatRed(RepeatChannel):
    def __init__(self):
        super().__init__(0)


class RepeatBlue(RepeatChannel):
    def __init__(self):
        super().__init__(2)


# A smooth picture known in floating point, as SmoothPicture makes it:
# (wavelengths along x and y in pixels, phase) of the sine of R, G and B.
SMOOTH = ((37.0, 53.0, 0.0), (29.0, -41.0, 1.5), (47.0, 31.0, 1.0))


class SmoothPicture(nn.Module):
    """SMOOTH at the input's size, in 8-bit steps, whatever the input."""

    def forward(self, x):
        b, _, h, w = x.shape
        yy = torch.arange(h, dtype=torch.float64, device=x.device).view(h, 1)
        xx = torch.arange(w, dtype=torch.float64, device=x.device).view(1, w)
        planes = [0.5 + 0.35 * torch.sin(2 * math.pi * (xx / 37.0 + yy / 53.0)),
                  0.5 + 0.35 * torch.sin(2 * math.pi * (xx / 29.0 - yy / 41.0) + 1.5),
                  0.5 + 0.35 * torch.sin(2 * math.pi * (xx / 47.0 + yy / 31.0) + 1.0)]
        p = torch.stack(planes).mul(255).round().div(255).to(x.dtype)
        return p.unsqueeze(0).expand(b, -1, -1, -1).contiguous()


class ConvHeavy(nn.Module):
    """A heavier conv net for the GPU benchmark: 240 multiply-adds a pixel,
    about 1 GFLOP a 1080p frame."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        return x + 0.1 * torch.tanh(self.c2(F.relu(self.c1(x))))


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


class GrayInvertX2(nn.Module):
    """One channel in and out, inverted and doubled in size (nearest): exact."""

    def forward(self, x):
        return F.interpolate(1.0 - x, scale_factor=2.0, mode="nearest")


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


# Published architectures with random weights (nothing is downloaded): the
# benchmark's numbers must hold on networks it was not written for.

class Conv16(nn.Module):
    """Three 3x3 convolutions of 16 channels: the shape of small denoisers."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.c3 = nn.Conv2d(16, 3, 3, padding=1)

    def forward(self, x):
        return self.c3(F.relu(self.c2(F.relu(self.c1(x)))))


class Upscale5x5(nn.Module):
    """x2 sub-pixel upscaler: 3 to 32 channels 5x5, tanh, 32 to 12 3x3, pixel
    shuffle."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 32, 5, padding=2)
        self.c2 = nn.Conv2d(32, 12, 3, padding=1)

    def forward(self, x):
        return F.pixel_shuffle(self.c2(torch.tanh(self.c1(x))), 2)


class ESPCN(nn.Module):
    """ESPCN x3 (Shi et al., CVPR 2016) on RGB: 5x5 to 64, tanh, 3x3 to 32,
    tanh, 3x3 to 3 x 3^2 (linear, as in the paper), pixel shuffle."""

    def __init__(self, scale=3):
        super().__init__()
        self.c1 = nn.Conv2d(3, 64, 5, padding=2)
        self.c2 = nn.Conv2d(64, 32, 3, padding=1)
        self.c3 = nn.Conv2d(32, 3 * scale * scale, 3, padding=1)
        self.scale = scale

    def forward(self, x):
        y = torch.tanh(self.c2(torch.tanh(self.c1(x))))
        return F.pixel_shuffle(self.c3(y), self.scale)


class SRVGGNetCompact(nn.Module):
    """Real-ESRGAN's compact network (realesr-animevideov3's layout): 64
    features, 16 3x3 convolutions with PReLU, pixel shuffle x4 added to the
    nearest-neighbour upscaled input."""

    def __init__(self, num_feat=64, num_conv=16, upscale=4):
        super().__init__()
        layers = [nn.Conv2d(3, num_feat, 3, padding=1), nn.PReLU(num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, padding=1), nn.PReLU(num_feat)]
        layers += [nn.Conv2d(num_feat, 3 * upscale * upscale, 3, padding=1)]
        self.body = nn.Sequential(*layers)
        self.upsampler = nn.PixelShuffle(upscale)
        self.upscale = upscale

    def forward(self, x):
        base = F.interpolate(x, scale_factor=float(self.upscale), mode="nearest")
        return self.upsampler(self.body(x)) + base


# Malformed models: each must end in a clear error, never a crash.

class Throws(nn.Module):
    """Wants 4 input channels: forward() throws on any frame."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        return self.conv(x)


class FailsLater(nn.Module):
    """The identity for the first 8 calls (the channel probe's among them),
    then a failure on the device it runs on, with requests in flight: an
    exception; in OomLater, an allocation of 16 TiB; in AssertsLater, an
    index out of range, a device-side assert on CUDA (an exception on the
    CPU)."""

    KIND = 0

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.kind = self.KIND

    def forward(self, x):
        self.calls += 1
        if self.calls > 8:
            if self.kind == 0:
                raise RuntimeError("dnntest: the model failed on purpose")
            if self.kind == 1:
                return x + torch.empty([1 << 42], device=x.device)[:1].zero_()
            far = (x.sum() * 0 + 1e12).long().view(1)
            return x + x.flatten().index_select(0, far)
        return x


class OomLater(FailsLater):
    KIND = 1


class AssertsLater(FailsLater):
    KIND = 2


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


class NaNAtOneSample(nn.Module):
    """The input, with NaN at one sample of the last channel: a check that
    samples only part of the output misses it."""

    def forward(self, x):
        x = x.clone()
        x[:, -1, 5, 7] = float("nan")
        return x


class CropsOnePixel(nn.Module):
    """The input without its outer pixels: an output size that is no whole
    factor of the input's."""

    def forward(self, x):
        return x[:, :, 1:-1, 1:-1]


class TallerEveryOtherCall(nn.Module):
    """One row taller on every other call: an output size that depends on
    more than the input size."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls % 2 == 0:
            return F.pad(x, (0, 0, 0, 1))
        return x


class ReturnsDict(nn.Module):
    def forward(self, x):
        return {"out": x}


class ReturnsTwo(nn.Module):
    """A tuple of the inverted frame and the frame, as exported models that
    return auxiliary outputs do."""

    def forward(self, x):
        return 1.0 - x, x


class ReturnsTwoByName(nn.Module):
    def forward(self, x):
        return {"inverted": 1.0 - x, "out": x}


class Returns5D(nn.Module):
    def forward(self, x):
        return x.unsqueeze(0)


# Detectors and classifiers whose answers follow from the picture itself.

def bright_box(x: torch.Tensor, mask: torch.Tensor):
    """The box around the true pixels of mask (B x H x W), in input pixels,
    as x0, y0, x1, y1 columns of a B x 4 tensor, and whether there is one."""
    h, w = mask.shape[1], mask.shape[2]
    rows, cols = mask.any(2), mask.any(1)
    ry = torch.arange(h, device=x.device).unsqueeze(0)
    rx = torch.arange(w, device=x.device).unsqueeze(0)
    y0 = torch.where(rows, ry, torch.full_like(ry, h)).min(1).values
    y1 = torch.where(rows, ry, torch.full_like(ry, -1)).max(1).values + 1
    x0 = torch.where(cols, rx, torch.full_like(rx, w)).min(1).values
    x1 = torch.where(cols, rx, torch.full_like(rx, -1)).max(1).values + 1
    return torch.stack([x0, y0, x1, y1], 1).to(x.dtype), rows.any(1)


class DetectSSD(nn.Module):
    """The bright region as one SSD row: [B, 1, 1, 7], normalised, label 1."""

    def forward(self, x):
        box, _ = bright_box(x, x.mean(1) > 0.5)
        h, w = float(x.shape[2]), float(x.shape[3])
        b = x.shape[0]
        head = torch.tensor([0.0, 1.0, 0.9], dtype=x.dtype).expand(b, 3)
        norm = box / torch.tensor([w, h, w, h], dtype=x.dtype)
        return torch.cat([head, norm], 1).view(b, 1, 1, 7)


class DetectBoxes(nn.Module):
    """The bright region as post-NMS boxes: [B, 1, 6], score 0.9, class 1."""

    def forward(self, x):
        box, _ = bright_box(x, x.mean(1) > 0.5)
        tail = torch.tensor([0.9, 1.0], dtype=x.dtype).expand(x.shape[0], 2)
        return torch.cat([box, tail], 1).unsqueeze(1)


class DetectYolo(nn.Module):
    """The bright region as a raw YOLOv8 head [B, 4 + 2, 6]: the box for class
    1 (0.9), a copy shifted by one pixel (0.8, suppressed by NMS), the box for
    class 0 (0.7, kept: NMS is class-wise) and three under the threshold."""

    def forward(self, x):
        box, _ = bright_box(x, x.mean(1) > 0.5)
        cxcywh = torch.stack([(box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2,
                              box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]], 1)
        shifted = cxcywh + torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=x.dtype)
        scores = torch.tensor([[0.05, 0.05, 0.7, 0.1, 0.0, 0.1],
                               [0.9, 0.8, 0.05, 0.2, 0.0, 0.3]],
                              dtype=x.dtype).expand(x.shape[0], 2, 6)
        boxes = torch.stack([cxcywh, shifted, cxcywh, cxcywh, cxcywh, cxcywh], 2)
        return torch.cat([boxes, scores], 1)


class LeadingOne(nn.Module):
    """A detector's output with a dimension of 1 put in front: the shape
    OpenVINO's backend reports for a 3-D output ([1, 1, N, 6] for [1, N, 6]),
    whose missing dimensions it fills with 1 where the torch backend gives -1."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x).unsqueeze(1)


class DetectColors(nn.Module):
    """One box per pure colour (red, green, blue: class 0, 1, 2) present in
    the frame: [B, 3, 6] post-NMS boxes, score 0 for an absent colour."""

    def forward(self, x):
        rows = []
        for c in range(3):
            others = torch.cat([x[:, :c], x[:, c + 1:]], 1).max(1).values
            box, found = bright_box(x, (x[:, c] > 0.5) & (others < 0.3))
            score = found.to(x.dtype) * 0.9
            cls = torch.full_like(score, float(c))
            rows.append(torch.cat([box * found.to(x.dtype).unsqueeze(1),
                                   score.unsqueeze(1), cls.unsqueeze(1)], 1))
        return torch.stack(rows, 1)


class ClassifyColor(nn.Module):
    """Logits of red, green, blue from the mean colour of the crop."""

    def forward(self, x):
        return x.mean((2, 3)) * 10.0


class NmsFixed(nn.Module):
    """A raw YOLOv8 head with fixed anchors, whatever the frame: survivors of
    NMS are known (see tests)."""

    def forward(self, x):
        boxes = torch.tensor([
            # cx, cy, w, h in input pixels; class 0, class 1 scores
            [30.0, 30.0, 40.0, 40.0, 0.90, 0.00],    # A: kept
            [32.0, 32.0, 40.0, 40.0, 0.80, 0.00],    # B: IoU 0.82 with A, dropped
            [32.0, 32.0, 40.0, 40.0, 0.00, 0.70],    # C: class 1, kept
            [120.0, 120.0, 40.0, 40.0, 0.60, 0.00],  # D: far away, kept
            [50.0, 50.0, 40.0, 40.0, 0.85, 0.00],    # E: IoU 0.14 with A
            [120.0, 30.0, 40.0, 40.0, 0.30, 0.00],   # F: under the threshold
        ], dtype=x.dtype)
        return boxes.t().unsqueeze(0).expand(x.shape[0], 6, 6).contiguous()


class DetectMalformed(nn.Module):
    """[1, 5, 6] boxes: NaN score, negative width, negative class, an
    infinite corner, and one good box (10, 10) -> (30, 20)."""

    def forward(self, x):
        inf, nan = float("inf"), float("nan")
        return torch.tensor([[
            [0.0, 0.0, 10.0, 10.0, nan, 0.0],
            [20.0, 0.0, 10.0, 10.0, 0.9, 0.0],
            [0.0, 0.0, 10.0, 10.0, 0.9, -1.0],
            [0.0, 0.0, inf, 10.0, 0.9, 0.0],
            [10.0, 10.0, 30.0, 20.0, 0.9, 0.0],
        ]], dtype=x.dtype)


class DetectHostile(nn.Module):
    """[1, 5, 6] boxes whose numbers overflow where they are converted: a
    class of 2^31, scores of 1e30, -0.5 and 1.5, and one good box (10, 10) ->
    (30, 20) of class 1."""

    def forward(self, x):
        return torch.tensor([[
            [0.0, 0.0, 10.0, 10.0, 0.9, 2147483648.0],
            [0.0, 0.0, 10.0, 10.0, 1e30, 0.0],
            [0.0, 0.0, 10.0, 10.0, -0.5, 0.0],
            [0.0, 0.0, 10.0, 10.0, 1.5, 0.0],
            [10.0, 10.0, 30.0, 20.0, 0.9, 1.0],
        ]], dtype=x.dtype)


class DetectInPadding(nn.Module):
    """[1, 2, 6] boxes in 160x160 input pixels: one inside the top 20 rows,
    which letterboxing a 4:3 frame leaves as padding, and one in the picture,
    (40, 40) -> (80, 80)."""

    def forward(self, x):
        return torch.tensor([[
            [10.0, 0.0, 50.0, 10.0, 0.9, 0.0],
            [40.0, 40.0, 80.0, 80.0, 0.8, 0.0],
        ]], dtype=x.dtype)


class EndToEnd(nn.Module):
    """The end-to-end output of YOLOv10 and YOLO26: [1, 300, 6] boxes."""

    def forward(self, x):
        return torch.zeros(1, 300, 6, dtype=x.dtype)


class NmsMany(nn.Module):
    """A raw YOLOv8 head of one class and 40000 anchors: 30000 copies of box
    A (30, 30, 40, 40) scored 0.9, then 10000 of box D (120, 120, 40, 40)
    scored 0.6, which only NMS over more than 30000 candidates reaches."""

    def forward(self, x):
        a = torch.tensor([30.0, 30.0, 40.0, 40.0, 0.9], dtype=x.dtype)
        d = torch.tensor([120.0, 120.0, 40.0, 40.0, 0.6], dtype=x.dtype)
        return torch.cat([a.unsqueeze(1).expand(5, 30000),
                          d.unsqueeze(1).expand(5, 10000)], 1).unsqueeze(0).contiguous()


class Needs64(nn.Module):
    """Takes only sizes divisible by 64, as networks with several stride-2
    stages do; the identity otherwise."""

    def forward(self, x):
        if x.shape[2] % 64 != 0 or x.shape[3] % 64 != 0:
            raise RuntimeError("height and width must be multiples of 64")
        return x


class Warns(nn.Module):
    """The identity, with a warning from LibTorch on every call."""

    def forward(self, x):
        warnings.warn("dnntest: a warning from the model")
        return x


class Squash(nn.Module):
    """Maps normalised input, about [-2.2, 2.7] for ImageNet's mean and std,
    into [0, 1]."""

    def forward(self, x):
        return x * 0.1 + 0.5


class ViewsInput(nn.Module):
    """The identity through .view(), which needs a contiguous input."""

    def forward(self, x):
        b, c, h, w = x.shape
        return x.view(b, c * h * w).view(b, c, h, w)


class SumWeights(nn.Module):
    """The frame times the mean of a 3 x 5 x 7 weight of ones: the identity,
    reading every element of the weight."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3, 5, 7))

    def forward(self, x):
        return x * (self.w.sum() / 105.0)


_LIBRARY = []


def define_shift_op():
    """An operator that exists only in the process that scripts the model,
    as torchvision's are only where torchvision is imported: ffmpeg cannot
    load a model that calls it."""
    if not _LIBRARY:
        lib = torch.library.Library("dnntest", "DEF")
        lib.define("shift(Tensor x) -> Tensor")
        lib.impl("shift", lambda x: x + 1, "CPU")
        _LIBRARY.append(lib)


class UnknownOp(nn.Module):
    def __init__(self):
        super().__init__()
        define_shift_op()

    def forward(self, x):
        return torch.ops.dnntest.shift(x)


class FixedDetector(nn.Module):
    """A detector whose linear head takes 64 x 64 inputs only."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(3 * 64 * 64, 6)

    def forward(self, x):
        return self.head(x.flatten(1)).unsqueeze(1)


class Quantized(nn.Module):
    def forward(self, x):
        return torch.quantize_per_tensor(x, 0.01, 0, torch.quint8)


class Returns4Columns(nn.Module):
    def forward(self, x):
        return torch.zeros(1, 3, 4)


class ReturnsFlat(nn.Module):
    def forward(self, x):
        return torch.zeros(6)


# --- video models: temporal windows (frames=N) and recurrent state -----------

class WindowMean(nn.Module):
    """The mean of the N frames of a B x N x C x H x W window."""

    def forward(self, x):
        return x.mean(1)


class WindowWeighted(nn.Module):
    """The frames of a 3-frame window weighted by their place, the oldest
    most: a window put together in another order gives other frames."""

    def forward(self, x):
        return x[:, 0] * 0.625 + x[:, 1] * 0.25 + x[:, 2] * 0.125


class WindowPick(nn.Module):
    """Frame k of the window, as it came in: shows which frames the window
    holds, the edges too."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x):
        return x[:, self.k]


class WindowFirst(WindowPick):
    def __init__(self):
        super().__init__(0)


class WindowLast(WindowPick):
    """The newest frame of a 5-frame window."""

    def __init__(self):
        super().__init__(4)


class StackedFirst(nn.Module):
    """The oldest frame of a window stacked in channels, B x (N*3) x H x W."""

    def forward(self, x):
        return x[:, 0:3]


class StackedMean(nn.Module):
    """The mean of a window stacked in channels, any N."""

    def forward(self, x):
        return x.view(x.size(0), -1, 3, x.size(2), x.size(3)).mean(1)


class RecurrentEMA(nn.Module):
    """An exponential moving average kept in the state: s = (s + x) / 2,
    starting from the first frame; exact in float."""

    def forward(self, x, state: List[torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        s = x if len(state) == 0 else (state[0] + x) * 0.5
        return s, [s]


class WindowEMA(nn.Module):
    """A window and a state: the moving average of the windows' means."""

    def forward(self, x, state: List[torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        m = x.mean(1)
        s = m if len(state) == 0 else (state[0] + m) * 0.5
        return s, [s]


class RecurrentPrevious(nn.Module):
    """The frame before, kept in the state as it came in: the state is the
    input tensor itself."""

    def forward(self, x, state: List[torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        return (x if len(state) == 0 else state[0]), [x]


class RecurrentCounter(nn.Module):
    """Frames since the last reset, 1 on the first, as the sample value of
    every pixel: count / 255."""

    def forward(self, x, state: List[torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        n = torch.ones(1, device=x.device) if len(state) == 0 else state[0] + 1
        return torch.zeros_like(x) + n.view(1, 1, 1, 1) / 255, [n]


class RecurrentGrows(nn.Module):
    """Returns one more state tensor on every call."""

    def forward(self, x, state: List[torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        return x, state + [torch.zeros(1)]


class RecurrentReshapes(nn.Module):
    """A state whose shape grows on every call."""

    def forward(self, x, state: List[torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        s = torch.zeros(1) if len(state) == 0 else torch.cat([state[0], state[0]])
        return x, [s]


class RecurrentFails(nn.Module):
    """Fails on its fourth frame."""

    def forward(self, x, state: List[torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        n = torch.ones(1) if len(state) == 0 else state[0] + 1
        if bool(n.item() >= 4):
            raise RuntimeError("the fourth step fails")
        return x, [n]


class RecurrentPlain(nn.Module):
    """Returns a tensor where a recurrent model returns (output, state)."""

    def forward(self, x, state: List[torch.Tensor]) -> torch.Tensor:
        return x


class TwoInputs(nn.Module):
    """forward(x, y): neither a plain nor a recurrent model."""

    def forward(self, x, y):
        return x + y


def _conv(cin, cout):
    return nn.Conv2d(cin, cout, 3, padding=1)


def _stage(cin, cout, last):
    return nn.Sequential(_conv(cin, cout), nn.LeakyReLU(0.2), _conv(cout, cout),
                         nn.LeakyReLU(0.2), last)


class FNet(nn.Module):
    """FRVSR's flow network: three encoder stages (two 3x3 convolutions,
    leaky ReLU 0.2, 2x2 max pooling) of 32, 64, 128 channels, three decoder
    stages (two 3x3 convolutions, leaky ReLU, x2 bilinear upsampling) of 256,
    128, 64, then 3x3 to 32 and to 2 channels with tanh: the flow from the
    previous frame to this one, in [-1, 1] of the frame."""

    def __init__(self):
        super().__init__()
        up = lambda: nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False)
        self.net = nn.Sequential(
            _stage(6, 32, nn.MaxPool2d(2)), _stage(32, 64, nn.MaxPool2d(2)),
            _stage(64, 128, nn.MaxPool2d(2)), _stage(128, 256, up()),
            _stage(256, 128, up()), _stage(128, 64, up()),
            _conv(64, 32), nn.LeakyReLU(0.2), _conv(32, 2), nn.Tanh())

    def forward(self, x):
        return self.net(x)


class ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.a, self.b = _conv(c, c), _conv(c, c)

    def forward(self, x):
        return x + self.b(F.relu(self.a(x)))


class FRVSR(nn.Module):
    """Frame-recurrent video super-resolution, x4 (Sajjadi, Vemulapalli,
    Brown, CVPR 2018), in the backend's recurrent contract:
    forward(x, state) -> (y, state), state = [previous frame, previous
    output].  FNet estimates the flow between the frames; the previous
    output, warped by it, goes to low resolution by space-to-depth and with
    the frame into SRNet: a 3x3 convolution to 64 channels, ten residual
    blocks, two x2 transposed convolutions, a 3x3 convolution to RGB.  On the
    first frame the previous frame is the frame itself and the previous
    output black, as in the paper.  Frame sizes divisible by 8."""

    def __init__(self):
        super().__init__()
        self.fnet = FNet()
        self.srnet = nn.Sequential(
            _conv(3 + 3 * 16, 64), nn.ReLU(), *[ResBlock(64) for _ in range(10)],
            nn.ConvTranspose2d(64, 64, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(64, 64, 4, stride=2, padding=1), nn.ReLU(),
            _conv(64, 3), nn.Sigmoid())

    def warp(self, img, flow):
        b, _, h, w = img.shape
        ys = torch.linspace(-1.0, 1.0, h, device=img.device).view(1, h, 1).expand(b, h, w)
        xs = torch.linspace(-1.0, 1.0, w, device=img.device).view(1, 1, w).expand(b, h, w)
        grid = torch.stack([xs + flow[:, 0], ys + flow[:, 1]], 3)
        return F.grid_sample(img, grid, mode="bilinear", padding_mode="border",
                             align_corners=True)

    def forward(self, x, state: List[torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        b, _, h, w = x.shape
        if len(state) == 0:
            prev, prev_out = x, torch.zeros(b, 3, 4 * h, 4 * w, device=x.device)
        else:
            prev, prev_out = state[0], state[1]
        flow = self.fnet(torch.cat([x, prev], 1)) * 0.1
        flow = F.interpolate(flow, scale_factor=4.0, mode="bilinear", align_corners=False)
        warped = F.pixel_unshuffle(self.warp(prev_out, flow), 4)
        y = self.srnet(torch.cat([x, warped], 1))
        return y, [x, y]


def _cbr(cin, cout, stride=1, groups=1):
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, groups=groups, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU()]


class DenBlock(nn.Module):
    """FastDVDnet's denoising U-Net on three frames and a noise map: a
    grouped 3x3 convolution of each frame and the map to 30 channels, then to
    32; two stride-2 stages to 64 and 128 channels; two pixel-shuffle stages
    back, with skip connections by addition; the residual is subtracted from
    the middle frame."""

    def __init__(self):
        super().__init__()
        self.inc = nn.Sequential(*_cbr(3 * 4, 3 * 30, groups=3), *_cbr(90, 32))
        self.down0 = nn.Sequential(*_cbr(32, 64, 2), *_cbr(64, 64), *_cbr(64, 64))
        self.down1 = nn.Sequential(*_cbr(64, 128, 2), *_cbr(128, 128), *_cbr(128, 128))
        self.up2 = nn.Sequential(*_cbr(128, 128), *_cbr(128, 128),
                                 nn.Conv2d(128, 64 * 4, 3, padding=1, bias=False),
                                 nn.PixelShuffle(2))
        self.up1 = nn.Sequential(*_cbr(64, 64), *_cbr(64, 64),
                                 nn.Conv2d(64, 32 * 4, 3, padding=1, bias=False),
                                 nn.PixelShuffle(2))
        self.out = nn.Sequential(*_cbr(32, 32), nn.Conv2d(32, 3, 3, padding=1, bias=False))

    def forward(self, a, b, c, noise):
        x0 = self.inc(torch.cat([a, noise, b, noise, c, noise], 1))
        x1 = self.down0(x0)
        x2 = self.up2(self.down1(x1))
        x1 = self.up1(x1 + x2)
        return b - self.out(x0 + x1)


class FastDVDnet(nn.Module):
    """FastDVDnet (Tassano, Delon, Veit, CVPR 2020): five frames stacked in
    channels, N x 15 x H x W, as window=channels gives them; the first
    DenBlock denoises frames 0-2, 1-3 and 2-4, the second the three results.
    The noise level, an input of the published network, is fixed here at
    25/255.  Frame sizes divisible by 4."""

    def __init__(self):
        super().__init__()
        self.temp1 = DenBlock()
        self.temp2 = DenBlock()
        self.register_buffer("sigma", torch.tensor(25.0 / 255))

    def forward(self, x):
        f = [x[:, 3 * i:3 * i + 3] for i in range(5)]
        noise = torch.zeros_like(f[0][:, :1]) + self.sigma
        y0 = self.temp1(f[0], f[1], f[2], noise)
        y1 = self.temp1(f[1], f[2], f[3], noise)
        y2 = self.temp1(f[2], f[3], f[4], noise)
        return self.temp2(y0, y1, y2, noise)


# --- frame interpolation (interpolate=K): pairs B x 2 x C x H x W, times t of B --

class Blend(nn.Module):
    """(1 - t) a + t b: exact where the samples are multiples of K."""

    def forward(self, x, t):
        t = t.to(x.dtype).view(-1, 1, 1, 1)
        return x[:, 0] * (1 - t) + x[:, 1] * t


class Midpoint(nn.Module):
    """The mean of the pair, without t: the frame halfway only."""

    def forward(self, x):
        return x.mean(1)


class WindowPairMean(nn.Module):
    """The mean of the first two frames of a 3-frame window: the frame
    halfway between the one before and the center one."""

    def forward(self, x):
        return x[:, :2].mean(1)


class PairUpscale(nn.Module):
    """The midpoint at twice the size: not a frame between two."""

    def forward(self, x):
        return F.interpolate(x.mean(1), scale_factor=2.0, mode="nearest")


def _ifconv(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.LeakyReLU(0.2, True))


def warp(img, flow):
    """img sampled backward along flow (pixels), clamped at the borders."""
    b, _, h, w = img.shape
    gx = torch.linspace(-1.0, 1.0, w, dtype=img.dtype, device=img.device).view(1, 1, 1, w)
    gy = torch.linspace(-1.0, 1.0, h, dtype=img.dtype, device=img.device).view(1, 1, h, 1)
    grid = torch.cat([gx.expand(b, 1, h, w) + flow[:, 0:1] / ((w - 1.0) / 2.0),
                      gy.expand(b, 1, h, w) + flow[:, 1:2] / ((h - 1.0) / 2.0)], 1)
    return F.grid_sample(img, grid.permute(0, 2, 3, 1), mode="bilinear",
                         padding_mode="border", align_corners=True)


class IFBlock(nn.Module):
    """A stage of IFNet at 1/scale: two stride-2 convolutions, eight more
    with a skip around them, and a transposed convolution to the flows to
    both frames and the fusion mask, brought back to full size."""

    def __init__(self, cin, c):
        super().__init__()
        self.conv0 = nn.Sequential(_ifconv(cin, c // 2, 2), _ifconv(c // 2, c, 2))
        self.convblock = nn.Sequential(*[_ifconv(c, c) for _ in range(8)])
        self.lastconv = nn.ConvTranspose2d(c, 5, 4, 2, 1)
        with torch.no_grad():
            # Random weights: flows of a few pixels, not of the whole frame.
            self.lastconv.weight.mul_(0.05)

    def forward(self, x, flow: Optional[torch.Tensor], scale: float):
        x = F.interpolate(x, scale_factor=1.0 / scale, mode="bilinear", align_corners=False)
        if flow is not None:
            flow = F.interpolate(flow, scale_factor=1.0 / scale, mode="bilinear",
                                 align_corners=False) / scale
            x = torch.cat([x, flow], 1)
        x = self.conv0(x)
        x = self.convblock(x) + x
        out = F.interpolate(self.lastconv(x), scale_factor=scale * 2, mode="bilinear",
                            align_corners=False)
        return out[:, :4] * scale * 2, out[:, 4:5]


class IFNet(nn.Module):
    """RIFE's IFNet (Huang et al., ECCV 2022) as its 4.x releases lay it
    out: four IFBlocks at 1/8, 1/4, 1/2 and full scale with 192, 128, 96 and
    64 channels.  The first sees both frames and the time t as a plane; each
    next one the frames warped backward by the flows so far, t, the mask and
    the flows, and refines them; the frames warped to t are blended by the
    mask's sigmoid.  Frames are padded to a multiple of 32 by repeating
    their edges and the output cropped.  Random weights."""

    def __init__(self):
        super().__init__()
        self.block0 = IFBlock(7, 192)
        self.block1 = IFBlock(8 + 4, 128)
        self.block2 = IFBlock(8 + 4, 96)
        self.block3 = IFBlock(8 + 4, 64)

    def forward(self, x, t):
        h, w = x.shape[3], x.shape[4]
        pad = [0, (32 - w % 32) % 32, 0, (32 - h % 32) % 32]
        img0 = F.pad(x[:, 0], pad, mode="replicate")
        img1 = F.pad(x[:, 1], pad, mode="replicate")
        ts = t.to(x.dtype).view(-1, 1, 1, 1).expand(-1, 1, img0.shape[2], img0.shape[3])
        flow, mask = self.block0(torch.cat([img0, img1, ts], 1), None, 8.0)
        w0, w1 = warp(img0, flow[:, :2]), warp(img1, flow[:, 2:4])
        f, m = self.block1(torch.cat([w0, w1, ts, mask], 1), flow, 4.0)
        flow, mask = flow + f, mask + m
        w0, w1 = warp(img0, flow[:, :2]), warp(img1, flow[:, 2:4])
        f, m = self.block2(torch.cat([w0, w1, ts, mask], 1), flow, 2.0)
        flow, mask = flow + f, mask + m
        w0, w1 = warp(img0, flow[:, :2]), warp(img1, flow[:, 2:4])
        f, m = self.block3(torch.cat([w0, w1, ts, mask], 1), flow, 1.0)
        flow, mask = flow + f, mask + m
        w0, w1 = warp(img0, flow[:, :2]), warp(img1, flow[:, 2:4])
        m = torch.sigmoid(mask)
        return (w0 * m + w1 * (1 - m))[:, :, :h, :w]


MODELS = {
    "identity": Identity,
    "invert": Invert,
    "affine": Affine,
    "conv1x1": Conv1x1,
    "mix1x1": Mix1x1,
    "conv3": Conv3,
    "conv_bn": ConvBN,
    "repeat_red": RepeatRed,
    "repeat_blue": RepeatBlue,
    "smooth_picture": SmoothPicture,
    "upx2": UpscaleX2,
    "conv_heavy": ConvHeavy,
    "conv16": Conv16,
    "upx2_5x5": Upscale5x5,
    "espcn_x3": ESPCN,
    "realesr_compact_x4": SRVGGNetCompact,
    "gray": GrayInvert,
    "gray_up2": GrayInvertX2,
    "sharpen": Sharpen,
    "throws": Throws,
    "fails_later": FailsLater,
    "oom_later": OomLater,
    "asserts_later": AssertsLater,
    "ret3d": Returns3D,
    "tuple": ReturnsTuple,
    "ret2ch": Returns2Channels,
    "nan": ReturnsNaN,
    "nan_one": NaNAtOneSample,
    "taller": TallerEveryOtherCall,
    "crop1": CropsOnePixel,
    "dict": ReturnsDict,
    "two": ReturnsTwo,
    "two_by_name": ReturnsTwoByName,
    "ret5d": Returns5D,
    "det_ssd": DetectSSD,
    "det_boxes": DetectBoxes,
    "det_yolov8": DetectYolo,
    "det_boxes_1": lambda: LeadingOne(DetectBoxes()),
    "det_yolov8_1": lambda: LeadingOne(DetectYolo()),
    "det_colors": DetectColors,
    "cls_color": ClassifyColor,
    "nms_fixed": NmsFixed,
    "det_malformed": DetectMalformed,
    "det_hostile": DetectHostile,
    "det_in_padding": DetectInPadding,
    "end_to_end": EndToEnd,
    "nms_many": NmsMany,
    "unknown_op": UnknownOp,
    "needs64": Needs64,
    "warns": Warns,
    "sum_weights": SumWeights,
    "views_input": ViewsInput,
    "squash": Squash,
    "fixed_detector": FixedDetector,
    "quantized": Quantized,
    "ret4cols": Returns4Columns,
    "retflat": ReturnsFlat,
    "win_mean": WindowMean,
    "win_weighted": WindowWeighted,
    "win_first": WindowFirst,
    "win_last": WindowLast,
    "stacked_first": StackedFirst,
    "stacked_mean": StackedMean,
    "rec_ema": RecurrentEMA,
    "rec_counter": RecurrentCounter,
    "rec_previous": RecurrentPrevious,
    "win_ema": WindowEMA,
    "rec_grows": RecurrentGrows,
    "rec_reshapes": RecurrentReshapes,
    "rec_fails": RecurrentFails,
    "rec_plain": RecurrentPlain,
    "two_inputs": TwoInputs,
    "frvsr": FRVSR,
    "fastdvdnet": FastDVDnet,
    "blend": Blend,
    "midpoint": Midpoint,
    "win_pair_mean": WindowPairMean,
    "pair_up2": PairUpscale,
    "ifnet": IFNet,
}


def build(name):
    torch.manual_seed(1234)
    model = MODELS[name]().eval()
    return torch.jit.script(model)


# AOTInductor packages of some of the models above: (file, model, example
# input shape, dimensions exported as dynamic).  Batch 1 is specialised by
# torch.export, so a dynamic batch is exported from an example of 2 or more.
PACKAGES = [
    ("conv1x1_dyn", "conv1x1", (1, 3, 48, 64), (2, 3)),
    ("conv1x1_static", "conv1x1", (1, 3, 48, 64), ()),
    ("conv1x1_batch", "conv1x1", (4, 3, 48, 64), (0, 2, 3)),
    ("det_boxes_160", "det_boxes", (1, 3, 160, 160), ()),
    ("tuple_static", "tuple", (1, 3, 48, 64), ()),
    ("win_mean_dyn", "win_mean", (1, 5, 3, 48, 64), (3, 4)),
    # one frame size only: frames of other sizes run in tiles of it
    ("conv3_static", "conv3", (1, 3, 24, 32), ()),
    # compiled for float16 input and weights (precision=fp16)
    ("conv1x1_fp16", "conv1x1", (1, 3, 48, 64), (2, 3), torch.float16),
    # frame interpolation: pairs of frames and their times t
    ("blend_dyn", "blend", (1, 2, 3, 48, 64), (3, 4)),
]


def input_shapes(ep):
    """The README's metadata: the shapes an exported program's inputs take,
    as the backend reads them from the package ("dnn_input_shapes"): per
    input, each dimension N, or MIN-MAX (MIN- without a bound), inputs
    separated by ';'."""
    from torch.utils._sympy.numbers import int_oo
    user = set(ep.graph_signature.user_inputs)
    shapes = []
    for node in ep.graph.nodes:
        if node.op != "placeholder" or node.name not in user:
            continue
        dims = []
        for d in node.meta["val"].shape:
            if isinstance(d, int):
                dims.append(str(d))
            else:
                r = ep.range_constraints[d.node.expr]
                dims.append("%d-%s" % (int(r.lower), "" if r.upper is int_oo else int(r.upper)))
        shapes.append(",".join(dims))
    return ";".join(shapes)


def compile_package(net, shape, dynamic, path, device="cpu", dtype=torch.float32):
    """Export model net with an example input of shape, the dimensions in
    dynamic left free, and compile it for device and dtype into the package
    path: tens of seconds each."""
    torch.manual_seed(1234)
    model = MODELS[net]().eval().to(device, dtype)
    dims = {d: torch.export.Dim.DYNAMIC for d in dynamic}
    args, shapes = (torch.rand(shape, device=device, dtype=dtype),), {"x": dims}
    # A frame interpolation model takes the times of its frames too.
    if "t" in inspect.signature(model.forward).parameters:
        args += (torch.full(shape[:1], 0.5, device=device, dtype=dtype),)
        shapes["t"] = {0: dims[0]} if 0 in dims else None
    ep = torch.export.export(model, args, dynamic_shapes=shapes)
    torch._inductor.aoti_compile_and_package(
        ep, package_path=path + ".tmp.pt2",
        inductor_configs={"aot_inductor.metadata": {
            "dnn_input_shapes": input_shapes(ep),
            "dnn_input_dtype": str(dtype).replace("torch.", "")}})
    os.replace(path + ".tmp.pt2", path)


# Recurrent models as packages of two models, "first" exported from
# forward(x, []) and "next" from forward(x, state): (file, model, example
# input shape), height and width dynamic.
RECURRENT_PACKAGES = [
    ("rec_ema_dyn", "rec_ema", (1, 3, 48, 64)),
]


def compile_recurrent_package(net, shape, path):
    """The README's recipe for a recurrent model: both programs compiled and
    put in one package under the names the backend looks for."""
    from torch._inductor.package import package_aoti
    torch.manual_seed(1234)
    model = MODELS[net]().eval()
    x = torch.rand(shape)
    hw = {2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
    # Copies: a state that is the example input itself would be exported
    # as one input given twice.
    state = [t.clone() for t in model(x, [])[1]]
    files = {}
    for name, st in (("first", []), ("next", state)):
        ep = torch.export.export(model, (x, st), dynamic_shapes={"x": hw, "state": [hw] * len(st)})
        files[name] = torch._inductor.aot_compile(
            ep.module(), (x, st),
            options={"aot_inductor.package": True,
                     "aot_inductor.metadata": {"dnn_input_shapes": input_shapes(ep)}})
    package_aoti(path + ".tmp.pt2", files)
    os.replace(path + ".tmp.pt2", path)


def export_onnx(net, path):
    """Export model net to ONNX for FFmpeg's ONNX backend: input x, output y,
    height and width left free.  Needs the onnx package."""
    torch.manual_seed(1234)
    model = MODELS[net]().eval()
    # The TorchScript-based exporter (deprecated, still there in 2.11): the
    # torch.export-based one would also need the onnxscript package.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.rand(1, 3, 36, 64),), path + ".tmp",
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {2: "height", 3: "width"},
                                        "y": {2: "out_height", 3: "out_width"}},
                          dynamo=False)
    os.replace(path + ".tmp", path)


def packages(outdir):
    """Compile the packages that are missing or older than this file."""
    os.makedirs(outdir, exist_ok=True)
    for name, net, shape, dynamic, *dtype in PACKAGES:
        path = os.path.join(outdir, name + ".pt2")
        if not os.path.exists(path) or os.path.getmtime(path) < os.path.getmtime(__file__):
            compile_package(net, shape, dynamic, path, dtype=dtype[0] if dtype else torch.float32)
    for name, net, shape in RECURRENT_PACKAGES:
        path = os.path.join(outdir, name + ".pt2")
        if not os.path.exists(path) or os.path.getmtime(path) < os.path.getmtime(__file__):
            compile_recurrent_package(net, shape, path)


def main(outdir):
    os.makedirs(outdir, exist_ok=True)
    for name in MODELS:
        path = os.path.join(outdir, name + ".pt")
        build(name).save(path + ".tmp")
        os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main(sys.argv[1])
