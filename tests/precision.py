"""precision=fp16|bf16: the model's parameters and input in that type,
against PyTorch running the same model in the same type, and against fp32.
"""

import numpy as np
import torch

from aoti import package, package_test
from harness import check, expect_error, max_diff, model, test
from tiles import tiled
from video import quantize, random_frames, raw_input, reference, to_tensor

W, H = 67, 45
TYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def reference_in(name, frames, dtype):
    """PyTorch with the model and its input in dtype, the output back in
    floats."""
    net = torch.jit.load(model(name))
    net.to(dtype)
    with torch.no_grad():
        return quantize(net(to_tensor(frames).to(dtype)).float())


@test
def half_precision_matches_pytorch_in_that_type():
    frames = random_frames(3, seed=21, w=W, h=H)
    inp = raw_input(frames, "precision")
    for name, scale in (("conv3", 1), ("upx2_5x5", 2)):
        full = reference(name, frames)
        for precision, dtype in TYPES.items():
            got = tiled(inp, name, "precision=" + precision, W * scale, H * scale)
            want = reference_in(name, frames, dtype)
            check(max_diff(got, want) <= 1, "%s precision=%s: off PyTorch in %s by %d"
                  % (name, precision, dtype, max_diff(got, want)))
            check(psnr(got, full) >= 40, "%s precision=%s: %.1f dB against fp32"
                  % (name, precision, psnr(got, full)))
        # The option reaches the model: its output is not fp32's.
        if name == "upx2_5x5":
            check(max_diff(tiled(inp, name, "precision=bf16", W * 2, H * 2), full) > 0,
                  "precision=bf16 gave the frames of fp32")


@test
def half_precision_with_tiles_yuv_and_batches():
    frames = random_frames(4, seed=22, w=W, h=H)
    inp = raw_input(frames, "precision-tiles")
    want = tiled(inp, "upx2_5x5", "precision=fp16", W * 2, H * 2, "yuv420p")
    for cfg in ("precision=fp16:tile_size=24x16:tile_overlap=3:batch_size=3",
                "precision=fp16:batch_size=2:nireq=3"):
        got = tiled(inp, "upx2_5x5", cfg, W * 2, H * 2, "yuv420p")
        check(max_diff(got, want) <= 1, "%s: off the whole frames in fp16 by %d"
              % (cfg, max_diff(got, want)))


@package_test
def packages_run_in_the_type_they_were_compiled_for():
    frames = random_frames(3, seed=23, w=W, h=H)
    inp = raw_input(frames, "precision-pt2")
    got = tiled(inp, None, "precision=fp16", W, H, path=package("conv1x1_fp16"))
    want = reference_in("conv1x1", frames, torch.float16)
    check(max_diff(got, want) <= 1, "fp16 package: off PyTorch in float16 by %d"
          % max_diff(got, want))
    expect_error("dnn_processing=dnn_backend=torch:model=" + package("conv1x1_fp16"),
                 "compiled for float16", "precision=fp16")
    expect_error("dnn_processing=dnn_backend=torch:precision=bf16:model=" +
                 package("conv1x1_dyn"), "compiled for float32", "precision=fp32")
