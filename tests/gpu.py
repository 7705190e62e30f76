"""`make check-gpu`: the CUDA device against the CPU.  CPU frames with
device=cuda go to the GPU and back; CUDA frames (AV_PIX_FMT_CUDA, from
hwupload) stay there, and must give the frames of the CPU path, with no copy
between host and device.
"""

import ctypes
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import numpy as np

import models
from analytics import COLOR_NAMES, COLORED, detect, drawn, side_data
from harness import (FFMPEG, PACKAGES, SANITIZE, TMP, Skip, alone, as_frames, changing_stream,
                     check, expect_error, filter_frames, gpu_test, max_diff, model, process,
                     psnr, reference, run, source, test, test_tool, torch_filter, write)

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
    # The package on CUDA frames: the frames stay on the device.
    for fmt, cfg in (("rgb0", ""), ("nv12", ":channels=3:nireq=3")):
        want = samples(process(None, "96x64", 5, fmt, "dnn_processing=" +
                               torch_filter("conv1x1", cfg[1:])), fmt)
        got, log = cuda_process("96x64", 5, fmt, vf + cfg, loglevel="verbose")
        got = samples(got, fmt)
        check(got.size == want.size and max_diff(got, want) <= 1,
              "cuda package on %s CUDA frames: off the CPU frames" % fmt)
        check(copied_bytes(log) == 0, "cuda package on %s CUDA frames: frame data copied" % fmt)
    expect_error("dnn_processing=dnn_backend=torch:model=" + path, "compiled for cuda")
    cpu_path = os.path.join(TMP, "conv1x1_cpu.pt2")
    models.compile_package("conv1x1", (1, 3, 48, 64), (2, 3), cpu_path)
    expect_error("dnn_processing=dnn_backend=torch:model=%s:device=cuda" % cpu_path,
                 "compiled for cpu")


# Alone: torch.export and AOTInductor compile in this process, on the
# main thread, not beside the other tests' threads.
if PACKAGES:
    gpu_test(alone(cuda_package))


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
        # The cause at error level, the fix at verbose.
        rc, _, err = run(device + args + ["-f", "null", "-"], loglevel="verbose")
        check(rc != 0, "ffmpeg exited 0 with CUDA frames in a non-primary context")
        check("primary context" in err and "primary_ctx=1" in err,
              "the log lacks the cause or the fix:\n" + err[-2000:])


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
@alone
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


# --- producers and consumers that do not wait for the backend ---------------

# NVDEC in the device's primary context, its frames left on the GPU.
NVDEC = CUDA_DEVICE + ["-hwaccel", "cuda", "-hwaccel_device", "cu",
                       "-hwaccel_output_format", "cuda"]


CLIPS = threading.Lock()


def mpeg2_clip(size, frames):
    """An MPEG-2 clip of testsrc2 under temporal noise, so that each frame
    differs from the one before it everywhere; NVDEC writes its frames on
    FFmpeg's stream while the backend's requests run on theirs.  Made once,
    by the first of the tests that run at once to need it."""
    path = os.path.join(TMP, "clip-%s-%d.m2v" % (size, frames))
    with CLIPS:
        if not os.path.exists(path):
            encode_clip(path, size, frames)
    return path


def encode_clip(path, size, frames):
    rc, _, err = run(["-f", "lavfi", "-i", "testsrc2=s=%s:r=25" % size,
                      "-frames:v", str(frames), "-vf", "noise=alls=24:allf=t,format=yuv420p",
                      "-c:v", "mpeg2video", "-q:v", "2", "-g", "6", "-bf", "0", "-y", path])
    check(rc == 0, "could not encode the MPEG-2 clip: " + err[-2000:])


def decoded_nv12(decoder_args, clip, vf, w, h):
    """The clip through vf, as nv12 frames: an array of frames x bytes."""
    rc, out, err = run(decoder_args + ["-i", clip, "-vf", vf, "-f", "rawvideo", "-"])
    check(rc == 0, "ffmpeg failed (%d) on %s:\n%s" % (rc, vf, err[-3000:]))
    frame = w * h * 3 // 2
    check(len(out) % frame == 0, "%s: %d bytes, not whole %dx%d nv12 frames" % (vf, len(out), w, h))
    return np.frombuffer(out, np.uint8).reshape(-1, frame)


def each_in_its_place(got, want, what, limit=35):
    """Frame i of got is frame i of want (another decoder, another device):
    close to it and further from the frames before and after, which the
    clip's noise makes differ everywhere."""
    check(len(got) == len(want), "%s: %d frames, want %d" % (what, len(got), len(want)))
    for i in range(len(got)):
        own = psnr(got[i], want[i])
        check(own >= limit, "%s: frame %d at %.1f dB of the CPU path's" % (what, i, own))
        for j in (i - 1, i + 1):
            if 0 <= j < len(want):
                other = psnr(got[i], want[j])
                check(other < own - 6, "%s: frame %d is as close to frame %d (%.1f dB) as "
                      "to its own (%.1f dB)" % (what, i, j, other, own))


@gpu_test
def nvdec_frames_at_4k_through_requests_and_batches():
    """3840x2160 frames from NVDEC: nireq=4:batch_size=2 gives the frames of
    async=0 and those of the CPU path on the clip decoded in software, each
    in its place."""
    w, h, n = 3840, 2160, 12
    clip = mpeg2_clip("%dx%d" % (w, h), n)
    cpu = decoded_nv12([], clip, "format=nv12,dnn_processing=" +
                       torch_filter("conv3", "channels=3"), w, h)
    cuda = {}
    for cfg in ("async=0", "nireq=4:batch_size=2"):
        cuda[cfg] = decoded_nv12(NVDEC, clip, "dnn_processing=%s,hwdownload,format=nv12"
                                 % torch_filter("conv3", "device=cuda:channels=3:" + cfg), w, h)
    check(cuda["async=0"].shape == cuda["nireq=4:batch_size=2"].shape and
          max_diff(cuda["async=0"], cuda["nireq=4:batch_size=2"]) <= 1,
          "NVDEC frames: nireq=4:batch_size=2 off async=0")
    for cfg, frames in cuda.items():
        each_in_its_place(frames, cpu, "NVDEC frames with %s" % cfg)


@gpu_test
def nvdec_frames_through_windows_and_recurrent_models():
    # Windows hold NVDEC's frames over several requests; a recurrent state
    # stays on the device from one to the next.
    w, h, n = 640, 360, 12
    clip = mpeg2_clip("%dx%d" % (w, h), n)
    for name, extra in (("win_mean", "frames=5"), ("win_ema", "frames=3"),
                        ("rec_ema", "nireq=2"), ("win_first", "frames=3:batch_size=2")):
        opts = "channels=3:" + extra
        cpu = decoded_nv12([], clip, "format=nv12,dnn_processing=" + torch_filter(name, opts),
                           w, h)
        rc, out, err = run(NVDEC + ["-i", clip, "-vf", "dnn_processing=%s,hwdownload,format=nv12"
                                    % torch_filter(name, "device=cuda:" + opts),
                                    "-f", "rawvideo", "-"], loglevel="verbose")
        check(rc == 0, "%s %s on NVDEC frames failed:\n%s" % (name, extra, err[-2000:]))
        got = np.frombuffer(out, np.uint8).reshape(-1, w * h * 3 // 2)
        each_in_its_place(got, cpu, "%s %s on NVDEC frames" % (name, extra))
        check(copied_bytes(err) == 0, "%s %s: frame data copied" % (name, extra))


@gpu_test
def a_program_with_a_stream_of_its_own_gets_the_cpu_frames():
    """Through the API, a CUDA device whose stream is CU_STREAM_NON_BLOCKING
    (hwupload and hwdownload queue there, and it does not wait for the legacy
    stream) or the legacy one; the per-thread stream is refused."""
    size, n = "1280x720", 16
    rc, cpu, err = filter_frames(size, n, "nv12", "dnn_processing=" +
                                 torch_filter("conv3", "channels=3"))
    check(rc == 0 and len(cpu) == n * 1280 * 720 * 3 // 2, "the CPU path failed:\n" + err[-2000:])
    cpu = np.frombuffer(cpu, np.uint8)
    for stream in ("nonblocking", "legacy"):
        for cfg in ("nireq=4:batch_size=2", "async=0"):
            filters = "hwupload,dnn_processing=%s,hwdownload,format=nv12" % torch_filter(
                "conv3", "device=cuda:channels=3:" + cfg)
            rc, got, err = filter_frames(size, n, "nv12", filters, stream)
            check(rc == 0, "%s stream, %s: failed:\n%s" % (stream, cfg, err[-2000:]))
            got = np.frombuffer(got, np.uint8)
            check(got.size == cpu.size and max_diff(got, cpu) <= 1,
                  "%s stream, %s: off the CPU frames" % (stream, cfg))
    rc, _, err = filter_frames(size, 2, "nv12", "hwupload,dnn_processing=" +
                               torch_filter("conv3", "device=cuda:channels=3"), "per-thread")
    check(rc != 0 and "per-thread default stream" in err,
          "the per-thread default stream: exit %d:\n%s" % (rc, err[-2000:]))


# --- odd sizes, size changes ---------------------------------------------------

def planes(data, fmt, w, h):
    """Raw frames as lists of planes (rows x samples); P010's samples as
    10-bit values."""
    cw, ch = (w + 1) // 2, (h + 1) // 2
    layout = {"bgra": [(h, 4 * w)], "rgba": [(h, 4 * w)], "rgb0": [(h, 4 * w)],
              "yuv420p": [(h, w), (ch, cw), (ch, cw)], "nv12": [(h, w), (ch, 2 * cw)],
              "p010le": [(h, w), (ch, 2 * cw)]}[fmt]
    wide = 2 if fmt == "p010le" else 1
    frame = sum(r * c for r, c in layout) * wide
    check(len(data) % frame == 0, "%d bytes are no whole %dx%d %s frames" % (len(data), w, h, fmt))
    out = []
    for f in range(len(data) // frame):
        off, ps = f * frame, []
        for r, c in layout:
            a = np.frombuffer(data, np.uint8 if wide == 1 else "<u2", r * c, off)
            ps.append((a >> 6 if wide == 2 else a).reshape(r, c).astype(np.int32))
            off += r * c * wide
        out.append(ps)
    return out


@gpu_test
def cuda_frames_of_odd_sizes():
    """Odd widths and heights on the GPU against the CPU path.  The CPU
    frames go through the same upload and download: hwcontext_cuda copies
    the chroma of odd-height frames without its last row (height >> 1),
    in both directions, so the rows made from that row are not compared."""
    cases = [("97x65", name, fmt, extra) for name, fmt, extra in (
        ("upx2", "bgra", ""), ("mix1x1", "rgba", "channels=3"), ("gray", "nv12", ""),
        ("gray", "yuv420p", ""), ("gray", "p010le", ""), ("mix1x1", "yuv420p", "channels=3"),
        ("mix1x1", "nv12", "channels=3"), ("mix1x1", "p010le", "channels=3"))]
    # An odd width alone: every row compared.
    cases += [("97x64", "mix1x1", fmt, "channels=3") for fmt in ("yuv420p", "nv12")]
    for size, name, fmt, extra in cases:
        w, h = (int(v) for v in size.split("x"))
        scale = 2 if name == "upx2" else 1
        want, _ = cuda_process(size, 3, fmt, "hwdownload,format=%s,dnn_processing=%s,"
                               "hwupload" % (fmt, torch_filter(name, extra)))
        got, log = cuda_process(size, 3, fmt, "dnn_processing=" +
                                torch_filter(name, "device=cuda" + (":" + extra if extra else "")),
                                loglevel="verbose")
        what = "%s %s %s" % (name, fmt, size)
        a, b = planes(want, fmt, w * scale, h * scale), planes(got, fmt, w * scale, h * scale)
        check(len(a) == len(b) == 3, "%s: %d frames on the GPU, %d on the CPU"
              % (what, len(b), len(a)))
        # Rows that depend on the chroma row not copied: the last chroma
        # row; with a 3-channel model, the luma rows and the chroma row
        # above it that are converted with it.
        cut = [0] * 3
        if h % 2 and fmt in ("yuv420p", "nv12", "p010le"):
            cut = [2, 2, 2] if extra else [0, 1, 1]
        for fa, fb in zip(a, b):
            for i, (pa, pb) in enumerate(zip(fa, fb)):
                rows = pa.shape[0] - cut[i]
                check(max_diff(pa[:rows], pb[:rows]) <= 1, "%s: plane %d off the CPU path's"
                      % (what, i))
        check(copied_bytes(log) == 0, "%s: frame data copied" % what)


@gpu_test
def cuda_frames_when_the_stream_changes_size():
    """The CLI rebuilds the graph at each change of size and format, with
    the frames in flight on the GPU passed on (-drain_filter): the frames of
    the CPU path, none lost."""
    args = changing_stream()
    sizes = [(64, 48)] * 6 + [(80, 60)] * 3
    outs = []
    for vf in ("format=nv12,dnn_processing=" + torch_filter("gray"),
               "format=nv12,hwupload,dnn_processing=%s,hwdownload,format=nv12"
               % torch_filter("gray", "device=cuda:nireq=4:batch_size=2")):
        rc, out, err = run(CUDA_DEVICE + args + ["-vf", vf, "-f", "rawvideo", "-"])
        check(rc == 0, "%s failed:\n%s" % (vf, err[-2000:]))
        outs.append(out)
    want = sum(w * h * 3 // 2 for w, h in sizes)
    check(len(outs[0]) == len(outs[1]) == want, "%d bytes on the GPU, %d on the CPU, want %d"
          % (len(outs[1]), len(outs[0]), want))
    check(max_diff(np.frombuffer(outs[0], np.uint8), np.frombuffer(outs[1], np.uint8)) <= 1,
          "the GPU's frames are off the CPU's across the size changes")


# --- failures on the GPU ---------------------------------------------------------

@gpu_test
def gpu_failures_end_in_an_error():
    """A model that throws, runs out of memory or hits a device-side assert
    after 8 calls, with requests in flight: ffmpeg exits with an error that
    names the cause (run() fails on a crash or a hang), and the OOM is
    retried once after LibTorch's cache is emptied."""
    for name, words in (("fails_later", ("failed on purpose",)),
                        ("oom_later", ("Out of memory on cuda", "lower nireq",
                                       "running the model again")),
                        ("asserts_later", ("device-side assert",))):
        for cfg in ("nireq=4:batch_size=2", "async=0"):
            args = CUDA_DEVICE + source("320x240", 40, "nv12")
            args[-1] += ",hwupload,dnn_processing=%s,hwdownload,format=nv12" % torch_filter(
                name, "device=cuda:channels=3:" + cfg)
            rc, _, err = run(args + ["-f", "null", "-"], loglevel="verbose")
            check(rc != 0, "%s %s: exit 0" % (name, cfg))
            for w in words:
                check(w.lower() in err.lower(), "%s %s: the log lacks %r:\n%s"
                      % (name, cfg, w, err[-3000:]))
    # An output size that changes from call to call, on CUDA frames.
    args = CUDA_DEVICE + source("64x48", 6, "rgb0")
    args[-1] += ",hwupload,dnn_processing=" + torch_filter("taller", "device=cuda:async=0")
    rc, _, err = run(args + ["-f", "null", "-"], loglevel="verbose")
    check(rc != 0 and "must depend on the input size alone" in err,
          "a model whose output size changes: exit %d:\n%s" % (rc, err[-2000:]))


# --- what the driver and LibTorch see ---------------------------------------------

def driver_counts(args):
    """Run ffmpeg under tests/tools/cuda_copies (CUPTI, loaded by the driver):
    the host-device copies and kernels of the whole process, and the log."""
    out = os.path.join(TMP, "cuda-copies.txt")
    if os.path.exists(out):
        os.remove(out)
    rc, _, err = run(args, loglevel="verbose", env={
        "CUDA_INJECTION64_PATH": test_tool("cuda_copies.so"), "CUDA_COPIES_OUT": out})
    check(rc == 0, "ffmpeg failed (%d):\n%s" % (rc, err[-3000:]))
    check(os.path.exists(out), "the driver did not load the CUPTI counter")
    text = open(out).read().strip()
    check(not text.startswith("error="), "CUPTI could not count: " + text)
    counts = {k: int(v) for k, v in (f.split("=") for f in text.split())}
    check(counts["dropped"] == 0, "CUPTI dropped %d records" % counts["dropped"])
    return counts, err


@gpu_test
def the_driver_sees_no_frame_data_cross():
    """Host-device copies counted by the driver (CUPTI), not by the backend:
    its own count must agree where frames do cross (CPU frames with
    device=cuda), and CUDA frames must cross only as the graph asks
    (hwupload) or not at all (NVDEC), with CUDA kernels run for each frame,
    which a model quietly run on the CPU would not."""
    # CPU frames with device=cuda: the backend's count, and the driver's.
    w, h, n = 1280, 720, 6
    args = source("%dx%d" % (w, h), n, "rgb24")
    args[-1] += ",dnn_processing=" + torch_filter("conv3", "device=cuda")
    counts, log = driver_counts(args + ["-f", "null", "-"])
    frames = n * 3 * w * h * 4
    check(copied_bytes(log) == 2 * frames, "the backend counted %d bytes, want %d"
          % (copied_bytes(log), 2 * frames))
    check(counts["htod_bytes"] >= frames and counts["dtoh_bytes"] >= frames,
          "the driver saw %d bytes to the device and %d back, the backend %d each way"
          % (counts["htod_bytes"], counts["dtoh_bytes"], frames))
    slack = 8 << 20  # the model's weights, the probe, a flag per request
    # hwupload: exactly the uploaded frames go to the device, nothing back.
    w, h, n = 1920, 1080, 8
    args = CUDA_DEVICE + source("%dx%d" % (w, h), n, "nv12")
    args[-1] += ",hwupload,dnn_processing=" + torch_filter("conv3", "device=cuda:channels=3:"
                                                          "nireq=4:batch_size=2")
    counts, log = driver_counts(args + ["-f", "null", "-"])
    uploaded = n * w * h * 3 // 2
    check(uploaded <= counts["htod_bytes"] <= uploaded + slack and counts["dtoh_bytes"] <= slack,
          "hwupload of %d bytes: the driver saw %d to the device, %d back"
          % (uploaded, counts["htod_bytes"], counts["dtoh_bytes"]))
    check(counts["kernels"] >= n, "%d CUDA kernels for %d frames" % (counts["kernels"], n))
    # NVDEC at 4K: the compressed clip is all that goes to the device.
    w, h, n = 3840, 2160, 12
    clip = mpeg2_clip("%dx%d" % (w, h), n)
    counts, log = driver_counts(NVDEC + ["-i", clip, "-vf", "dnn_processing=" + torch_filter(
        "conv3", "device=cuda:channels=3:nireq=4:batch_size=2"), "-f", "null", "-"])
    check(counts["htod_bytes"] <= os.path.getsize(clip) + slack and counts["dtoh_bytes"] <= slack,
          "NVDEC: %d bytes to the device, %d back, for %d frames of %d bytes"
          % (counts["htod_bytes"], counts["dtoh_bytes"], n, w * h * 3 // 2))
    check(counts["kernels"] >= n, "NVDEC: %d CUDA kernels for %d frames" % (counts["kernels"], n))
    check(copied_bytes(log) == 0, "NVDEC: the backend counted frame data copied")


SYNC_WARNING = "called a synchronizing CUDA operation"


@gpu_test
def one_host_wait_per_request():
    """c10's sync-debug mode (tests/tools/sync_debug, preloaded) warns at
    every operation of LibTorch that makes the host wait, and the backend
    logs each warning: on CUDA frames there is one, the request's wait for
    its stream, per request (the NaN flags read, a byte each, count the
    requests).  Loading the model may wait too: two runs of different
    lengths are compared, so that only the per-frame waits are counted."""
    env = {"LD_PRELOAD": test_tool("sync_debug.so")}
    seen = []
    for n in (8, 24):
        args = CUDA_DEVICE + source("320x240", n, "nv12")
        args[-1] += ",hwupload,dnn_processing=%s,hwdownload,format=nv12" % torch_filter(
            "conv3", "device=cuda:channels=3:nireq=4:batch_size=2")
        # repeat+: every warning on its own line, none folded into "Last
        # message repeated".
        rc, _, err = run(args + ["-f", "null", "-"], loglevel="repeat+verbose", env=env)
        check(rc == 0, "ffmpeg failed (%d):\n%s" % (rc, err[-2000:]))
        requests = sum(int(m.group(1)) for m in FLAGS_READ.finditer(err))
        seen.append((err.count(SYNC_WARNING), requests))
    (waits0, req0), (waits1, req1) = seen
    check(req1 > req0, "requests counted: %d for 8 frames, %d for 24" % (req0, req1))
    check(waits1 - waits0 == req1 - req0,
          "%d host waits more for %d requests more (%d and %d waits in all)"
          % (waits1 - waits0, req1 - req0, waits0, waits1))


# --- the tools above, checked where there is no GPU too ------------------------

@test
def the_api_program_runs_filters_on_changing_frames():
    # filter_frames' frames: each its own, at odd sizes too; through the
    # torch backend with requests in flight, PyTorch's output on them.
    rc, raw, err = filter_frames("64x48", 5, "rgb24", "null")
    check(rc == 0, "filter_frames failed:\n" + err[-2000:])
    frames = as_frames(raw, 64, 48, 3)
    check(len(frames) == 5 and all(max_diff(frames[i], frames[i + 1]) > 64 for i in range(4)),
          "filter_frames does not give 5 frames that differ")
    rc, out, err = filter_frames("64x48", 5, "rgb24", "dnn_processing=" +
                                 torch_filter("affine", "nireq=3:batch_size=2"))
    check(rc == 0, "filter_frames with the torch backend failed:\n" + err[-2000:])
    check(max_diff(as_frames(out, 64, 48, 3), reference("affine", frames)) <= 1,
          "filter_frames with the torch backend: off PyTorch's frames")
    for fmt, size in (("yuv420p", 97 * 65 + 2 * 49 * 33), ("nv12", 97 * 65 + 98 * 33),
                      ("p010le", 2 * (97 * 65 + 98 * 33))):
        rc, out, err = filter_frames("97x65", 2, fmt, "null")
        check(rc == 0 and len(out) == 2 * size, "filter_frames, %s 97x65: exit %d, %d bytes"
              % (fmt, rc, len(out)))


@test
def the_sync_debug_preload_sets_libtorch_mode():
    if SANITIZE:
        raise Skip("a sanitizer's runtime must come first in the preload list")
    shim = test_tool("sync_debug.so")
    for mode, want in ((None, 1), ("error", 2)):
        env = dict(os.environ, LD_PRELOAD=shim)
        if mode:
            env["SYNC_DEBUG"] = mode
        p = subprocess.run([sys.executable, "-c", "import torch; "
                            "print(torch._C._cuda_get_sync_debug_mode())"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        got = p.stdout.decode().strip()
        check(got == str(want), "SYNC_DEBUG=%s: LibTorch's sync-debug mode is %r, want %d:\n%s"
              % (mode, got, want, p.stderr.decode()[-1000:]))
    # Preloaded into ffmpeg, on the CPU: nothing changes.
    args = source("64x48", 3)
    args[-1] += ",dnn_processing=" + torch_filter("conv3")
    rc, out, err = run(args + ["-f", "rawvideo", "-"], loglevel="warning",
                       env={"LD_PRELOAD": shim})
    check(rc == 0 and "LibTorch" not in err and
          out == process(None, "64x48", 3, "rgb24", "dnn_processing=" + torch_filter("conv3")),
          "ffmpeg with the sync-debug preload: exit %d:\n%s" % (rc, err[-2000:]))


@test
def the_cupti_counter_loads():
    # The driver loads it by name and calls InitializeInjection; without a
    # GPU only that it loads, with its CUPTI, can be checked.
    lib = ctypes.CDLL(test_tool("cuda_copies.so"))
    check(hasattr(lib, "InitializeInjection"), "cuda_copies.so lacks InitializeInjection")
