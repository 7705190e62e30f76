"""`make check-gpu`: the CUDA device against the CPU.  CPU frames with
device=cuda go to the GPU and back; CUDA frames (AV_PIX_FMT_CUDA, from
hwupload) stay there, and must give the frames of the CPU path, with no copy
between host and device.
"""

import os
import re
import shutil
import subprocess
import threading
import time

import numpy as np

import models
from analytics import COLOR_NAMES, COLORED, detect, drawn, side_data
from harness import (FFMPEG, PACKAGES, TMP, check, expect_error, gpu_test, max_diff,
                     model, process, run, source, torch_filter, write)

# The device in its primary context, which LibTorch shares (see the README).
CUDA_DEVICE = ["-init_hw_device", "cuda=cu:0,primary_ctx=1", "-filter_hw_device", "cu"]
# sw_formats of CUDA frames, with the raw format ffmpeg writes them in.
CUDA_FORMATS = ("nv12", "p010le", "yuv420p", "yuv444p", "bgra", "rgba", "bgr0", "rgb0")
COPIED = re.compile(r"Host-device copies of frame data: (\d+) bytes")
FLAGS_READ = re.compile(r"of NaN checks: (\d+) bytes")


def cuda_process(size, frames, fmt, vf, loglevel="error"):
    """Frames uploaded, through vf on the GPU, downloaded: (raw output, log)."""
    args = source(size, frames, fmt)
    args[-1] += ",hwupload,%s,hwdownload,format=%s" % (vf, fmt)
    rc, out, err = run(CUDA_DEVICE + args + ["-f", "rawvideo", "-"], loglevel=loglevel)
    check(rc == 0, "ffmpeg failed (%d): %s" % (rc, err[-3000:]))
    return out, err


def copied_bytes(log):
    found = COPIED.findall(log)
    check(found, "no host-device byte count in the log:\n" + log[-2000:])
    return sum(int(n) for n in found)


def samples(data, fmt):
    """Raw frames as sample values: 10-bit ones for P010, bytes otherwise."""
    if fmt == "p010le":
        return np.frombuffer(data, np.uint16) >> 6
    return np.frombuffer(data, np.uint8)


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
    for name, size, fmt, extra in (("mix1x1", "96x64", "rgb24", ""),
                                   ("conv3", "160x90", "rgb24", ""),
                                   ("upx2", "80x48", "rgb24", ""),
                                   ("gray", "96x64", "yuv420p", ""),
                                   ("mix1x1", "96x64", "yuv420p", "channels=3"),
                                   ("mix1x1", "96x64", "p010le", "channels=3")):
        cpu, gpu = on_both(name, size, fmt, extra)
        check(cpu.size == gpu.size, "%s %s: %d bytes on cuda, %d on cpu"
              % (name, fmt, gpu.size, cpu.size))
        check(max_diff(cpu, gpu) <= 1, "%s %s: cuda off by %d from cpu"
              % (name, fmt, max_diff(cpu, gpu)))


@gpu_test
def cuda_tiles_give_the_whole_frame():
    # Tiles cut and put back on the GPU, on CUDA frames and on CPU frames
    # with device=cuda, against the whole frame on the CPU.
    whole = process(None, "134x90", 3, "yuv420p", "dnn_processing=" + torch_filter("upx2_5x5"))
    tiles = "tile_size=48x32:tile_overlap=3:batch_size=4"
    for vf, via_cuda in (("dnn_processing=" + torch_filter("upx2_5x5", "device=cuda:" + tiles),
                          False),
                         ("dnn_processing=" + torch_filter("upx2_5x5", "device=cuda:channels=3:"
                                                           + tiles), True)):
        if via_cuda:
            got, _ = cuda_process("134x90", 3, "yuv420p", vf)
        else:
            got = process(None, "134x90", 3, "yuv420p", vf)
        a, b = np.frombuffer(whole, np.uint8), np.frombuffer(got, np.uint8)
        check(a.size == b.size and max_diff(a, b) <= 1, "%s: tiles on the GPU off the whole "
              "frame by %s" % (vf, max_diff(a, b) if a.size == b.size else "a size"))


@gpu_test
def cuda_half_precision():
    # fp16 and bf16 on the GPU, on CUDA frames, against fp32 on the CPU.
    whole = np.frombuffer(process(None, "160x90", 3, "yuv420p",
                                  "dnn_processing=" + torch_filter("upx2_5x5")), np.uint8)
    for precision in ("fp16", "bf16"):
        got, _ = cuda_process("160x90", 3, "yuv420p", "dnn_processing=" + torch_filter(
            "upx2_5x5", "device=cuda:channels=3:precision=" + precision))
        got = np.frombuffer(got, np.uint8)
        mse = np.mean((got.astype(float) - whole.astype(float)) ** 2) if got.size == whole.size \
            else None
        check(mse is not None and (mse == 0 or 10 * np.log10(255.0 ** 2 / mse) >= 40),
              "precision=%s on the GPU: %s against fp32 on the CPU" % (
                  precision, "a size" if mse is None else "%.1f dB" % (10 * np.log10(255.0 ** 2 / mse))))


@gpu_test
def cuda_interpolation_gives_the_cpu_frames():
    # Frame interpolation on CUDA frames, the pairs converted on the GPU
    # in every slot, against CPU frames, where each frame is converted once.
    n, k = 6, 3
    cpu = process(None, "96x64", n, "yuv420p",
                  "dnn_processing=" + torch_filter("blend", "interpolate=%d" % k))
    for cfg in ("async=0", "nireq=3:batch_size=2"):
        got, log = cuda_process("96x64", n, "yuv420p", "dnn_processing=" + torch_filter(
            "blend", "device=cuda:interpolate=%d:%s" % (k, cfg)), loglevel="verbose")
        check(len(got) == len(cpu) == (k * (n - 1) + 1) * 96 * 64 * 3 // 2,
              "cuda %s: %d bytes, cpu %d" % (cfg, len(got), len(cpu)))
        d = np.abs(np.frombuffer(got, np.uint8).astype(int) -
                   np.frombuffer(cpu, np.uint8).astype(int)).max()
        check(d <= 1, "cuda %s: off by %d from the CPU frames" % (cfg, d))
        check(copied_bytes(log) == 0, "cuda %s: frame data copied" % cfg)


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


def cuda_package():
    path = os.path.join(TMP, "conv1x1_cuda.pt2")
    models.compile_package("conv1x1", (1, 3, 48, 64), (2, 3), path, device="cuda")
    vf = "dnn_processing=dnn_backend=torch:model=%s:device=cuda" % path
    got = np.frombuffer(process(None, "96x64", 3, "rgb24", vf), np.uint8)
    want = np.frombuffer(process(None, "96x64", 3, "rgb24",
                                 "dnn_processing=" + torch_filter("conv1x1")), np.uint8)
    check(max_diff(got, want) <= 1, "cuda package off by %d" % max_diff(got, want))
    expect_error("dnn_processing=dnn_backend=torch:model=" + path, "compiled for cuda")
    cpu_path = os.path.join(TMP, "conv1x1_cpu.pt2")
    models.compile_package("conv1x1", (1, 3, 48, 64), (2, 3), cpu_path)
    expect_error("dnn_processing=dnn_backend=torch:model=%s:device=cuda" % cpu_path,
                 "compiled for cpu")


if PACKAGES:
    gpu_test(cuda_package)


@gpu_test
def cuda_frames_give_the_cpu_frames_without_copies():
    """Every sw_format, 3- and 1-channel models, a resizing model: the CUDA
    path equals the CPU path within 1 sample and copies nothing."""
    cases = [("mix1x1", fmt, "channels=3") for fmt in CUDA_FORMATS]
    cases += [("gray", fmt, "") for fmt in ("nv12", "p010le", "yuv420p", "yuv444p")]
    cases += [("upx2", "nv12", ""), ("upx2", "bgra", ""), ("gray_up2", "yuv420p", ""), ("gray_up2", "p010le", "")]
    for name, fmt, extra in cases:
        opts = "device=cuda" + (":" + extra if extra else "")
        want = process(None, "96x64", 4, fmt,
                       "dnn_processing=" + torch_filter(name, extra))
        got, log = cuda_process("96x64", 4, fmt, "dnn_processing=" + torch_filter(name, opts),
                                loglevel="verbose")
        a, b = samples(want, fmt), samples(got, fmt)
        check(a.size == b.size, "%s on cuda %s: %d samples, cpu %d" % (name, fmt, b.size, a.size))
        check(max_diff(a, b) <= 1, "%s on cuda %s: off by %d from the cpu"
              % (name, fmt, max_diff(a, b)))
        check(copied_bytes(log) == 0, "%s on cuda %s: %d bytes copied between host "
              "and device" % (name, fmt, copied_bytes(log)))
        # One byte per request: the NaN flag, read once after its wait.
        flags = [int(m.group(1)) for m in FLAGS_READ.finditer(log)]
        check(flags == [4], "%s on cuda %s: NaN flags read %s, want one byte for "
              "each of the 4 requests" % (name, fmt, flags))


@gpu_test
def probed_channels_are_those_of_the_same_frames_in_memory():
    """Without channels=, a model that runs on 1 and on 3 channels takes the
    Y plane of YUV frames, on the GPU as in memory (the probe reads the
    frames context's sw_format, not AV_PIX_FMT_CUDA)."""
    for fmt in ("nv12", "yuv420p", "p010le"):
        want = process(None, "96x64", 3, fmt, "dnn_processing=" + torch_filter("identity"))
        got, log = cuda_process("96x64", 3, fmt, "dnn_processing=" +
                                torch_filter("identity", "device=cuda"), loglevel="verbose")
        check(samples(got, fmt).tobytes() == samples(want, fmt).tobytes(),
              "%s: the identity on CUDA frames changed them" % fmt)
        check("Probed model input: 1 channel," in log and "tried first for %s frames" % fmt in log,
              "%s: not probed as 1 channel for %s frames:\n%s" % (fmt, fmt, log[-2000:]))


@gpu_test
def nan_from_the_model_on_cuda_frames():
    for fmt, extra in (("nv12", ":channels=3"), ("bgra", "")):
        args = source("96x64", 3, fmt)
        args[-1] += ",hwupload,dnn_processing=" + torch_filter("nan", "device=cuda" + extra)
        rc, _, err = run(CUDA_DEVICE + args + ["-f", "null", "-"])
        check(rc != 0 and "returned NaN" in err, "%s: NaN not reported:\n%s" % (fmt, err[-2000:]))


@gpu_test
def cpu_frames_on_cuda_device_are_counted():
    args = source("96x64", 3, "rgb24")
    args[-1] += ",dnn_processing=" + torch_filter("conv1x1", "device=cuda")
    rc, _, err = run(args + ["-f", "null", "-"], loglevel="verbose")
    check(rc == 0, "ffmpeg failed: " + err[-2000:])
    # 3 frames of 3 x 64 x 96 floats, there and back.
    check(copied_bytes(err) == 2 * 3 * 3 * 64 * 96 * 4,
          "copied %d bytes for 3 frames" % copied_bytes(err))


@gpu_test
def cuda_frames_through_requests_and_batches():
    """Identical frames for the element-wise model; within 1 for the conv
    net, whose convolution may round differently at another batch size."""
    for name, limit in (("affine", 0), ("conv3", 1)):
        opts = "device=cuda:channels=3:"
        base, _ = cuda_process("64x48", 23, "nv12", "dnn_processing=" +
                               torch_filter(name, opts + "async=0:batch_size=1"))
        for cfg in ("async=1:nireq=4", "async=1:nireq=4:batch_size=4", "async=0:batch_size=3"):
            got, _ = cuda_process("64x48", 23, "nv12", "dnn_processing=" +
                                  torch_filter(name, opts + cfg))
            a, b = samples(base, "nv12"), samples(got, "nv12")
            check(a.size == b.size and max_diff(a, b) <= limit,
                  "%s on cuda frames with %s: off by more than %d from "
                  "async=0:batch_size=1" % (name, cfg, limit))


@gpu_test
def cuda_frames_in_another_context_are_refused():
    for device, upload in ((["-init_hw_device", "cuda=cu:0", "-filter_hw_device", "cu"],
                            "hwupload"), ([], "hwupload_cuda")):
        args = source("64x48", 3, "nv12")
        args[-1] += ",%s,dnn_processing=%s" % (upload, torch_filter("gray", "device=cuda"))
        rc, _, err = run(device + args + ["-f", "null", "-"])
        check(rc != 0, "ffmpeg exited 0 with CUDA frames in a non-primary context")
        check("primary_ctx=1" in err, "the error lacks the fix:\n" + err[-2000:])


def gpu_memory_mib(pid):
    """GPU memory of one process from nvidia-smi, or of the whole device
    where the process is not listed (as in a container)."""
    def query(what):
        return subprocess.run(["nvidia-smi", "--query-" + what, "--format=csv,noheader,nounits"],
                              stdout=subprocess.PIPE, text=True).stdout.splitlines()
    for line in query("compute-apps=pid,used_memory"):
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 2 and fields[0] == str(pid):
            return int(fields[1])
    used = query("gpu=memory.used")
    return int(used[0]) if used else None


@gpu_test
def cuda_frames_2000_at_1080p_with_flat_memory():
    check(shutil.which("nvidia-smi"), "nvidia-smi not found")
    vf = ("hwupload,dnn_processing=%s,hwdownload,format=nv12"
          % torch_filter("conv3", "device=cuda:channels=3:async=1:nireq=4:batch_size=4"))
    cmd = ([FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error"] + CUDA_DEVICE +
           ["-f", "lavfi", "-i", "color=c=0x336699:s=1920x1080:r=25", "-frames:v", "2000",
            "-vf", "format=nv12," + vf, "-f", "framemd5", "-"])
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    used = []

    def sample():
        while p.poll() is None:
            mib = gpu_memory_mib(p.pid)
            if mib is not None:
                used.append(mib)
            time.sleep(0.5)
    sampler = threading.Thread(target=sample)
    sampler.start()
    out, err = p.communicate(timeout=600)
    sampler.join()
    check(p.returncode == 0, "ffmpeg failed (%d): %s" % (p.returncode, err[-2000:]))
    nframes = sum(1 for line in out.splitlines() if line and not line.startswith("#"))
    check(nframes == 2000, "%d frames out of 2000" % nframes)
    check(len(used) >= 6, "too few GPU memory samples (%d) to judge" % len(used))
    # After the first third, the pools and LibTorch's cache are at their size.
    late = used[len(used) // 3:]
    check(max(late) - min(late) <= 64, "GPU memory grew from %d to %d MiB"
          % (min(late), max(late)))


@gpu_test
def cuda_frames_detect_and_classify_like_the_cpu():
    """dnn_detect and dnn_classify read CUDA frames where they lie: the side
    data equals that of the same frames in memory."""
    labels = write("colors.txt", "\n".join(COLOR_NAMES).encode() + b"\n")
    det = detect("det_colors", "boxes", "labels=" + labels)
    cls = "dnn_classify=dnn_backend=torch:model=%s:labels=%s:input_size=32x32" % (
        model("cls_color"), labels)
    for fmt in ("nv12", "yuv420p", "bgra"):
        src = drawn("320x240", COLORED, frames=3, fmt=fmt)
        cpu, _ = side_data(src, det + "," + cls)
        gpu, _ = side_data(CUDA_DEVICE + src, "hwupload,%s:device=cuda,%s:device=cuda,"
                           "hwdownload,format=%s" % (det, cls, fmt))
        check(len(cpu) == 3 and all(len(f) == 3 for f in cpu), "%s: cpu side data %s" % (fmt, cpu))
        check(same_side_data(gpu, cpu), "%s: side data on cuda frames %s, in memory %s"
              % (fmt, gpu, cpu))


def same_side_data(a, b):
    """Boxes and labels equal, confidences within 0.01: the GPU's float
    arithmetic may round differently."""
    def close(x, y):
        return abs(x - y) <= 0.01

    if len(a) != len(b):
        return False
    for fa, fb in zip(a, b):
        if len(fa) != len(fb):
            return False
        for ba, bb in zip(fa, fb):
            if ba[:5] != bb[:5] or not close(ba[5], bb[5]) or len(ba[6]) != len(bb[6]):
                return False
            if any(ca[0] != cb[0] or not close(ca[1], cb[1]) for ca, cb in zip(ba[6], bb[6])):
                return False
    return True


@gpu_test
def cuda_frames_through_windows_and_recurrent_models_without_copies():
    # Windows hold references to CUDA frames; a recurrent model's state stays
    # on the device: the frames of the CPU path, no frame data crossing.
    for name, extra in (("win_mean", "frames=5"), ("win_first", "frames=3:batch_size=2"),
                        ("rec_ema", "nireq=2"), ("rec_previous", ""),
                        ("win_ema", "frames=3")):
        opts = "device=cuda" + (":" + extra if extra else "")
        cpu = process(None, "64x48", 9, "rgb0", "dnn_processing=" + torch_filter(name, extra))
        gpu, log = cuda_process("64x48", 9, "rgb0", "dnn_processing=" + torch_filter(name, opts),
                                loglevel="verbose")
        check(len(gpu) == len(cpu), "%s %s: %d bytes on CUDA frames, %d on the CPU"
              % (name, extra, len(gpu), len(cpu)))
        check(max_diff(np.frombuffer(cpu, np.uint8), np.frombuffer(gpu, np.uint8)) <= 1,
              "%s %s: CUDA frames off from the CPU" % (name, extra))
        check(copied_bytes(log) == 0, "%s %s: %d bytes of frame data crossed"
              % (name, extra, copied_bytes(log)))
