"""`make check-gpu`: what runs on a CUDA device today, against the same run on
the CPU.  CPU frames with device=cuda go to the GPU and back; CUDA frames
(AV_PIX_FMT_CUDA) are not taken yet, so these tests do not cover them.
"""

import os

import numpy as np

import models
from analytics import detect, drawn, side_data
from harness import (TMP, check, expect_error, gpu_test, max_diff, model, process,
                     torch_filter)


def on_both(name, size, fmt, extra=""):
    """The frames of device=cpu and of device=cuda, as arrays."""
    out = []
    for device in ("cpu", "cuda"):
        opts = "device=" + device + (":" + extra if extra else "")
        data = process(None, size, 4, fmt, "dnn_processing=" + torch_filter(name, opts))
        out.append(np.frombuffer(data, np.uint8))
    return out


@gpu_test
def cuda_device_gives_the_cpu_frames():
    for name, size, fmt, extra in (("conv1x1", "96x64", "rgb24", ""),
                                   ("conv3", "160x90", "rgb24", ""),
                                   ("upx2", "80x48", "rgb24", ""),
                                   ("gray", "96x64", "yuv420p", ""),
                                   ("conv1x1", "96x64", "yuv420p", "channels=3"),
                                   ("conv1x1", "96x64", "p010le", "channels=3")):
        cpu, gpu = on_both(name, size, fmt, extra)
        check(cpu.size == gpu.size, "%s %s: %d bytes on cuda, %d on cpu"
              % (name, fmt, gpu.size, cpu.size))
        check(max_diff(cpu, gpu) <= 1, "%s %s: cuda off by %d from cpu"
              % (name, fmt, max_diff(cpu, gpu)))


@gpu_test
def cuda_requests_and_batches_give_identical_frames():
    vf = "dnn_processing=" + torch_filter("affine", "device=cuda:async=0:batch_size=1")
    base = process(None, "64x48", 23, "rgb24", vf)
    for cfg in ("async=1:nireq=4", "async=1:nireq=4:batch_size=4", "async=0:batch_size=3"):
        vf = "dnn_processing=" + torch_filter("affine", "device=cuda:" + cfg)
        check(process(None, "64x48", 23, "rgb24", vf) == base, "cuda %s differs" % cfg)


@gpu_test
def cuda_detect_gives_the_cpu_side_data():
    src = drawn("320x240", [(40, 60, 100, 90, "white")], frames=3)
    opts = "input_size=160x160:letterbox=1"
    cpu, _ = side_data(src, detect("det_yolov8", "yolov8", opts))
    gpu, _ = side_data(src, detect("det_yolov8", "yolov8", opts + ":device=cuda"))
    check(cpu and cpu == gpu, "cuda side data %s, cpu %s" % (gpu, cpu))


@gpu_test
def cuda_package():
    path = os.path.join(TMP, "conv1x1_cuda.pt2")
    models.compile_package("conv1x1", (1, 3, 48, 64), (2, 3), path, device="cuda")
    vf = "dnn_processing=dnn_backend=torch:model=%s:device=cuda" % path
    got = np.frombuffer(process(None, "96x64", 3, "rgb24", vf), np.uint8)
    want = np.frombuffer(process(None, "96x64", 3, "rgb24",
                                 "dnn_processing=" + torch_filter("conv1x1")), np.uint8)
    check(max_diff(got, want) <= 1, "cuda package off by %d" % max_diff(got, want))
    expect_error("dnn_processing=dnn_backend=torch:model=" + path, "compiled for cuda")
    expect_error("dnn_processing=dnn_backend=torch:model=%s:device=cuda"
                 % model("conv1x1").replace(".pt", "_dyn.pt2"), "compiled for cpu")
