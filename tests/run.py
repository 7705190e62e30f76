"""The test suite behind `make check`: runs build/ours/ffmpeg on generated
models and frames, checks it against PyTorch run directly on the same frames
and against the pristine upstream build, and ends with `N passed, N failed`.

Arguments: names (or substrings) of tests to run; --gpu runs the CUDA tests;
--jobs=N runs N tests at a time (make check-gpu TEST_JOBS=N).
"""

import concurrent.futures
import os
import re
import subprocess
import sys
import time
import traceback

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models  # noqa: E402
from harness import *  # noqa: E402,F401,F403

# --- dnn_processing basics ---------------------------------------------------

@test
def help_lists_torch_options():
    rc, out, err = run(["-h", "filter=dnn_processing"])
    text = out.decode()
    check(rc == 0, "-h filter=dnn_processing failed:\n" + err[-2000:])
    # Each under the class that owns it, with its help text.
    sections = dict(re.findall(r"^(\S+) AVOptions:\n((?:[ ].*\n)*)", text, re.M))
    want = {"dnn_processing": ("torch",),
            "dnn_base": ("nireq", "async", "batch_size", "device", "device_id"),
            "dnn_th": ("optimize", "channels", "threads_per_request", "norm_mean", "norm_std",
                       "model_name", "frames", "window")}
    for section, opts in want.items():
        check(section in sections, "no %s section in -h filter=dnn_processing:\n%s"
              % (section, text))
        for opt in opts:
            line = re.search(r"^ +%s +<?\w*>? +\S+ +(.+)$" % opt, sections[section], re.M)
            check(line and len(line.group(1)) > 10, "%s: option %s without its help text"
                  % (section, opt))


@test
def identity_gives_rgb24_back_bitexact():
    src = raw_frames("96x64", 5)
    out = process(FFMPEG, "96x64", 5, "rgb24", "dnn_processing=" + torch_filter("identity"))
    check(out == src, "identity model changed the frames")


@test
def identity_is_bitexact_at_odd_sizes():
    # Rows of an odd number of pixels, which vector code gets wrong first.
    for fmt in ("rgb24", "bgr24", "rgba", "bgr0", "gray"):
        for size in ("37x23", "17x3", "2x2"):
            src = raw_frames(size, 2, fmt)
            out = process(FFMPEG, size, 2, fmt, "dnn_processing=" + torch_filter("identity"))
            check(out == src, "identity changed %s frames of %s" % (fmt, size))


def compare_to_pytorch(name, size="96x64", frames=4, fmt="rgb24", scale=1, exact=True):
    w, h = map(int, size.split("x"))
    src = as_frames(raw_frames(size, frames, fmt), w, h, 3)
    out = process(FFMPEG, size, frames, fmt, "dnn_processing=" + torch_filter(name))
    got = as_frames(out, w * scale, h * scale, 3)
    want = reference(name, src)
    if exact:
        check(max_diff(got, want) == 0, "%s: not bit-exact against PyTorch (max diff %d)"
              % (name, max_diff(got, want)))
    else:
        # PSNR alone would let a column of edge pixels off by 10 pass.
        p, d = psnr(got, want), max_diff(got, want)
        check(p >= 50 and d <= 1, "%s: PSNR %.1f dB and max diff %d against PyTorch, "
              "want >= 50 and <= 1" % (name, p, d))


@test
def exact_models_match_pytorch_bitexact():
    for name in ("invert", "affine", "conv1x1"):
        compare_to_pytorch(name)
    compare_to_pytorch("mix1x1", fmt="bgr24")


@test
def conv_net_matches_pytorch():
    compare_to_pytorch("conv3", size="160x90", exact=False)


@test
def upscaler_doubles_size_and_matches_pytorch():
    compare_to_pytorch("upx2", size="80x48", scale=2, exact=False)


@test
def published_architectures_match_pytorch():
    # Random weights: what matters is that every layer runs as in PyTorch
    # and that sub-pixel outputs land where the model put them.
    for name, size, scale in (("conv16", "96x64", 1), ("upx2_5x5", "64x48", 2),
                              ("espcn_x3", "48x32", 3), ("realesr_compact_x4", "40x24", 4)):
        compare_to_pytorch(name, size=size, frames=2, scale=scale, exact=False)


@test
def cuda_library_is_loaded_only_for_a_cuda_model():
    # ffmpeg is not linked with libtorch_cuda (the CUDA libraries it pulls
    # in cost every run 0.14 s and 350 MiB with PyPI's LibTorch); the
    # backend loads it for device=cuda.  Where LibTorch has CUDA and the
    # machine no GPU, the error then says so rather than "no CUDA support".
    args = source("64x48", 1)
    args[-1] += ",dnn_processing=" + torch_filter("identity")
    env = dict(sanitizer_env(), LD_DEBUG="files")
    err = subprocess.run([FFMPEG, "-nostdin", "-loglevel", "error"] + args + ["-f", "null", "-"],
                         stderr=subprocess.PIPE, env=env).stderr.decode(errors="replace")
    check("calling init" in err, "LD_DEBUG=files reports nothing here")
    check("libtorch_cuda" not in err, "a CPU model loaded libtorch_cuda")
    if torch.version.cuda and not torch.cuda.is_available():
        expect_error("dnn_processing=" + torch_filter("identity", "device=cuda"),
                     "sees no CUDA device")


# LibTorch's process-wide settings, reported when ffmpeg calls them.
PROCESS_WIDE_SHIM = r"""
#include <dlfcn.h>
#include <stdio.h>
#define REPORT(name, mangled, params, args)                          \
    void mangled params                                               \
    {                                                                 \
        void (*next) params = (void (*) params)dlsym(RTLD_NEXT, #mangled); \
        fprintf(stderr, "process-wide: %s\n", name);                  \
        next args;                                                    \
    }
REPORT("c10::SetCPUAllocator", _ZN3c1015SetCPUAllocatorEPNS_9AllocatorEh,
       (void *allocator, unsigned char priority), (allocator, priority))
REPORT("at::set_num_threads", _ZN2at15set_num_threadsEi, (int n), (n))
REPORT("at::set_num_interop_threads", _ZN2at23set_num_interop_threadsEi, (int n), (n))
"""


@test
def nothing_is_set_for_the_whole_process():
    # LibTorch's CPU allocator and thread counts are the process's: an
    # application that hosts libavfilter and PyTorch shares them.  Sanitizer
    # runtimes must come first among the preloaded libraries: not run there.
    if SANITIZE:
        raise Skip("a sanitizer runtime must come first among preloaded libraries")
    src, shim = os.path.join(TMP, "shim.c"), os.path.join(TMP, "process_wide.so")
    with open(src, "w") as f:
        f.write(PROCESS_WIDE_SHIM)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", shim, src, "-ldl"], check=True)
    env = dict(os.environ, LD_PRELOAD=shim)
    for cfg in ("", "async=0", "nireq=3:threads_per_request=2", "batch_size=2"):
        args = source("64x48", 4)
        args[-1] += ",dnn_processing=" + torch_filter("conv3", cfg)
        p = subprocess.run([FFMPEG, "-nostdin", "-loglevel", "error"] + args + ["-f", "null", "-"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                           timeout=TIMEOUT)
        err = p.stderr.decode(errors="replace")
        check(p.returncode == 0, "ffmpeg failed:\n" + err[-2000:])
        check("process-wide" not in err, "%s: the backend called %s" % (
            cfg or "defaults", ", ".join(sorted(set(l.split(": ", 1)[1] for l in err.splitlines()
                                                    if l.startswith("process-wide"))))))


@test
def gray_model_takes_the_y_plane():
    w, h, n = 96, 64, 3
    for fmt in ("gray", "yuv420p", "yuv444p", "nv12"):
        src = raw_frames("96x64", n, fmt)
        out = process(FFMPEG, "96x64", n, fmt, "dnn_processing=" + torch_filter("gray"))
        check(len(out) == len(src), "%s: output size %d != input %d" % (fmt, len(out), len(src)))
        per = len(src) // n
        for i in range(n):
            y_in = np.frombuffer(src[i * per:i * per + w * h], np.uint8)
            y_out = np.frombuffer(out[i * per:i * per + w * h], np.uint8)
            check(np.array_equal(y_out, 255 - y_in), "%s: Y plane is not inverted" % fmt)
            check(out[i * per + w * h:(i + 1) * per] == src[i * per + w * h:(i + 1) * per],
                  "%s: chroma changed" % fmt)


@test
def grayf32_is_taken_as_float():
    n = 2
    src = np.frombuffer(raw_frames("64x48", n, "grayf32"), np.float32)
    out = np.frombuffer(process(FFMPEG, "64x48", n, "grayf32",
                                "dnn_processing=" + torch_filter("gray")), np.float32)
    check(np.allclose(out, 1.0 - src, atol=1e-6), "grayf32: output is not 1 - input")


@test
def agrees_with_upstream():
    # Upstream always claims 3 input channels, so it rejects gray and YUV.
    check(os.path.exists(UPSTREAM), "no upstream build at " + UPSTREAM)
    for name, fmt, size in (("conv1x1", "rgb24", "96x64"), ("affine", "bgr24", "96x64"),
                            ("conv3", "rgb24", "96x64"), ("upx2", "rgb24", "64x48")):
        vf = "dnn_processing=" + torch_filter(name)
        ours = process(FFMPEG, size, 3, fmt, vf)
        theirs = process(UPSTREAM, size, 3, fmt, vf + ":async=0")
        a, b = np.frombuffer(ours, np.uint8), np.frombuffer(theirs, np.uint8)
        check(a.shape == b.shape, "%s/%s: %d bytes, upstream %d" % (name, fmt, a.size, b.size))
        check(max_diff(a, b) <= 1, "%s/%s: differs from upstream by %d" % (name, fmt, max_diff(a, b)))


# --- bad input -----------------------------------------------------------

@test
def missing_model_file():
    expect_error("dnn_processing=dnn_backend=torch:model=/nonexistent/m.pt",
                 "/nonexistent/m.pt", "No such file")


@test
def empty_model_file():
    path = write("empty.pt", b"")
    expect_error("dnn_processing=dnn_backend=torch:model=" + path, "Could not load", "zip")


@test
def truncated_model_file():
    data = open(model("conv3"), "rb").read()
    path = write("truncated.pt", data[:len(data) // 2])
    expect_error("dnn_processing=dnn_backend=torch:model=" + path, "Could not load")


@test
def text_file_named_pt():
    path = write("text.pt", b"this is not a model\n")
    expect_error("dnn_processing=dnn_backend=torch:model=" + path, "Could not load", "zip")


@test
def load_failure_reason_that_starts_with_a_newline():
    # As for an Ultralytics export with nms=True, which calls torchvision::nms.
    expect_error("dnn_processing=" + torch_filter("unknown_op"),
                 "Could not load", "Unknown builtin op: dnntest::shift")


@test
def channels_probed_at_the_frame_size():
    # A probe on 32x32 zeros made this model run "neither on 1 nor on 3 channels".
    src = raw_frames("128x64", 2)
    out = process(FFMPEG, "128x64", 2, "rgb24", "dnn_processing=" + torch_filter("needs64"))
    check(out == src, "the identity at 128x64 changed the frames")


@test
def model_that_needs_contiguous_input_gets_it():
    # Batches are channels-last (the frames' pixel order, and faster
    # convolutions); a model that views its input falls back to contiguous.
    src = raw_frames("64x48", 3)
    args = source("64x48", 3, "rgb24")
    args[-1] += ",dnn_processing=" + torch_filter("views_input")
    rc, out, err = run(args + ["-f", "rawvideo", "-"], loglevel="verbose")
    check(rc == 0 and out == src, "the identity through .view() failed or changed the frames:\n"
          + err[-2000:])
    check("does not run on channels-last input" in err, "no word of the fallback:\n" + err[-2000:])


@test
def channel_choice_follows_the_frame_format():
    for fmt, want in (("yuv420p", "1 channel,"), ("nv12", "1 channel,"), ("gray", "1 channel,"),
                      ("rgb24", "3 channels,"), ("bgr0", "3 channels,")):
        args = source("64x48", 1, fmt)
        args[-1] += ",dnn_processing=" + torch_filter("identity")
        rc, out, err = run(args + ["-f", "null", "-"], loglevel="verbose")
        check(rc == 0, "%s: ffmpeg failed:\n%s" % (fmt, err[-2000:]))
        line = [l for l in err.splitlines() if "Probed model input" in l]
        check(line and want in line[0] and "for %s frames" % fmt in line[0],
              "%s: want %s tried first for %s frames, got %s" % (fmt, want, fmt, line))


@test
def check_gpu_without_a_gpu_says_that_nothing_ran():
    if torch.cuda.is_available():
        raise Skip("there is a GPU")
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--gpu"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=TIMEOUT)
    last = p.stdout.decode().strip().splitlines()[-1]
    check(p.returncode == 0 and last == "0 passed, 0 failed, %d skipped: no GPU" % len(GPU_TESTS),
          "make check-gpu without a GPU ends with %r" % last)


def most_threads(args, env):
    """The most threads the ffmpeg process had at once, sampled from /proc."""
    p = subprocess.Popen([FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error"] + args,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env=dict(sanitizer_env(), **env))
    most, deadline = 0, time.monotonic() + TIMEOUT
    while p.poll() is None:
        if time.monotonic() > deadline:
            p.kill()
            p.wait()
            raise Failure("hang: no exit after %d s: %s" % (TIMEOUT, " ".join(args)))
        try:
            most = max(most, len(os.listdir("/proc/%d/task" % p.pid)))
        except OSError:
            pass
        time.sleep(0.005)
    err = p.stderr.read().decode(errors="replace")
    check(p.returncode == 0, "ffmpeg failed:\n" + err[-2000:])
    return most


@test
def threads_are_the_requests_own():
    # Each filter's count is its own: no warning, no conflict.
    args = source("64x48", 2)
    args[-1] += ",dnn_processing=%s,dnn_processing=%s" % (
        torch_filter("identity", "threads_per_request=1"),
        torch_filter("identity", "threads_per_request=2"))
    rc, out, err = run(args + ["-f", "null", "-"], loglevel="warning")
    check(rc == 0 and "thread" not in err.lower(),
          "two thread counts: exit %d, log:\n%s" % (rc, err[-2000:]))
    # The default leaves the process's own count alone: OMP_NUM_THREADS=1
    # runs LibTorch's work on the filter's thread alone, 2 adds a worker.
    args = source("640x360", 60)
    args[-1] += ",dnn_processing=" + torch_filter("conv16", "async=0")
    args += ["-f", "null", "-"]
    one, two = most_threads(args, {"OMP_NUM_THREADS": "1"}), most_threads(args, {"OMP_NUM_THREADS": "2"})
    check(one < two, "OMP_NUM_THREADS=1 and 2 give %d and %d threads: the backend "
          "sets its own count" % (one, two))


@test
def libtorch_warnings_go_through_the_log():
    args = source("64x48", 2)
    args[-1] += ",dnn_processing=" + torch_filter("warns")
    rc, out, err = run(args + ["-f", "null", "-"], loglevel="warning")
    check(rc == 0, "ffmpeg failed:\n" + err[-2000:])
    lines = [l for l in err.splitlines() if "dnntest: a warning" in l]
    check(lines and all("] LibTorch: dnntest: a warning from the model" in l for l in lines),
          "LibTorch's warning is not in the log:\n" + err[-2000:])
    rc, out, err = run(args + ["-f", "null", "-"], loglevel="quiet")
    check(rc == 0 and err.strip() == "", "-v quiet is not quiet:\n" + err[-2000:])


def frame_hashes(args, vf):
    rc, out, err = run(args + ["-vf", vf, "-f", "framemd5", "-"])
    check(rc == 0, "ffmpeg failed (%d) on %s:\n%s" % (rc, vf, err[-2000:]))
    return [(l.split(",")[2].strip(), l.split(",")[-1].strip())
            for l in out.decode().splitlines() if l and not l.startswith("#")]


@test
def no_frame_lost_when_the_graph_is_rebuilt_mid_stream():
    args = changing_stream()
    want = frame_hashes(args, "format=rgb24")
    check(len(want) == 9, "the source gives %d frames, not 9" % len(want))
    for cfg in ("", "async=0", "async=0:batch_size=2", "async=1:nireq=1",
                "nireq=4:batch_size=4", "nireq=2:batch_size=3"):
        got = frame_hashes(args, "format=rgb24,dnn_processing=" + torch_filter("identity", cfg))
        check(got == want, "%s: %d frames out of 9, or other frames: %s" % (cfg or "defaults", len(got), got))
    # Without -drain_filter the CLI frees the frames held at each rebuild:
    # batches of 4 never fill with 3 frames a graph, so only the last
    # graph's, sent on at EOF, come out.
    got = frame_hashes(changing_stream(drain=False),
                       "format=rgb24,dnn_processing=" + torch_filter("identity", "nireq=4:batch_size=4"))
    check(got == want[6:], "without -drain_filter: %d frames out of 9, not the last 3" % len(got))
    for cfg in ("nireq=4:batch_size=4", "async=0:batch_size=2"):
        vf = "dnn_detect=dnn_backend=torch:model_type=boxes:model=%s:%s" % (model("det_boxes"), cfg)
        got = frame_hashes(args, "format=rgb24," + vf)
        check(len(got) == 9, "dnn_detect %s: %d frames out of 9" % (cfg, len(got)))
    # Frame interpolation: each graph ends with its last frame, 2 x 2 + 1
    # frames of each three, the input frames among them as they came.
    for cfg in ("interpolate=2", "interpolate=2:async=0:batch_size=2"):
        got = frame_hashes(args, "format=rgb24,dnn_processing=" + torch_filter("blend", cfg))
        kept = [got[i][1] for i in (0, 2, 4, 5, 7, 9, 10, 12, 14) if i < len(got)]
        check(len(got) == 15 and kept == [h for _, h in want],
              "%s: %d frames out of 15, or the input frames changed: %s" % (cfg, len(got), got))


def expect_model_error(path, *words):
    expect_error("dnn_processing=dnn_backend=torch:model=" + path, *words)


@test
def errors_state_the_cause_and_leave_advice_to_verbose():
    """FFmpeg's style: an error states its cause in one line; what to do
    about it is logged at verbose, so that -v error shows the cause alone."""
    weights = os.path.join(TMP, "weights_only.pth")
    torch.save(models.MODELS["conv3"]().eval().state_dict(), weights)
    cases = (
        ("dnn_processing=dnn_backend=torch:model=" + weights,
         "holds weights, not a program", "Export the model"),
        ("dnn_processing=" + torch_filter("conv3", "channels=2"),
         "channels=2 is not supported", "Use 1 or 3"),
        ("dnn_processing=" + torch_filter("win_first", "frames=2"),
         "frames=2 is even", "Use an odd number"),
        ("dnn_processing=" + torch_filter("conv3", "norm_mean=0.5&0.5:norm_std=0.2"),
         "norm_mean has 2 values and norm_std 1", "Give one value, or one per channel"),
    )
    for vf, cause, advice in cases:
        args = source("64x48", 2)
        args[-1] += "," + vf
        for level, shown in (("error", False), ("verbose", True)):
            rc, out, err = run(args + ["-f", "null", "-"], loglevel=level)
            lines = [l for l in err.splitlines() if cause in l]
            check(rc != 0 and len(lines) == 1,
                  "-v %s: %s: exit %d, the cause %r in %d lines:\n%s"
                  % (level, vf, rc, cause, len(lines), err[-2000:]))
            check((advice in err) == shown, "-v %s: %s: the advice %r is%s in the log:\n%s"
                  % (level, vf, advice, "" if not shown else " not", err[-2000:]))


@test
def weights_saved_with_torch_save_are_named_as_such():
    net = models.MODELS["conv3"]().eval()
    for name, obj in (("state_dict.pth", net.state_dict()), ("checkpoint.pt", {"model": net})):
        path = os.path.join(TMP, name)
        torch.save(obj, path)
        expect_model_error(path, "torch.save", "weights, not a program")


@test
def exported_program_is_named_as_such():
    path = os.path.join(TMP, "exported.pt2")
    net = models.MODELS["conv1x1"]().eval()
    torch.export.save(torch.export.export(net, (torch.rand(1, 3, 8, 8),)), path)
    expect_model_error(path, "torch.export.save", "aoti_compile_and_package")


@test
def onnx_file_is_named_as_such():
    # The start of an ONNX protobuf: ir_version 8, then the producer name.
    path = write("model.onnx", b"\x08\x08\x12\x07pytorch")
    expect_model_error(path, "ONNX model", "dnn_backend=onnx")


@test
def directory_fifo_and_device_are_refused_without_opening():
    fifo = os.path.join(TMP, "model.fifo")
    if not os.path.exists(fifo):
        os.mkfifo(fifo)
    expect_model_error(TMP, "a directory")
    # Opening a FIFO for reading blocks until a writer comes: run() fails on a hang.
    expect_model_error(fifo, "a FIFO")
    expect_model_error("/dev/zero", "a FIFO, socket or device")


@test
def tensor_larger_than_its_storage_is_refused():
    # A TorchScript archive whose tensor claims 3 x 5 x 112 elements over the
    # 3 x 5 x 7 it stores: the first forward would read past the storage.
    import zipfile
    src = zipfile.ZipFile(model("sum_weights"))
    path = os.path.join(TMP, "oversized.pt")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for name in src.namelist():
            data = src.read(name)
            if name.endswith("/data.pkl"):
                check(data.count(b"(K\x03K\x05K\x07t") == 1, "no size tuple to change")
                data = data.replace(b"(K\x03K\x05K\x07t", b"(K\x03K\x05Kpt")
            dst.writestr(name, data)
    expect_model_error(path, "malformed", "'w'", "[3, 5, 112]", "420 bytes")


@test
def model_without_model_option():
    expect_error("dnn_processing=dnn_backend=torch", "model file")


@test
def forward_throws_on_channel_mismatch():
    expect_error("dnn_processing=" + torch_filter("throws"), "4 channels")
    expect_error("dnn_processing=" + torch_filter("throws", "channels=3"), "4 channels")


@test
def rgb_model_on_gray_frames():
    expect_error("dnn_processing=" + torch_filter("conv3"), "does not match", fmt="gray")


@test
def wrong_output_rank():
    expect_error("dnn_processing=" + torch_filter("ret3d"), "3-D")
    expect_error("dnn_processing=" + torch_filter("ret5d"), "5-D")


@test
def output_not_a_tensor():
    expect_error("dnn_processing=" + torch_filter("tuple"), "Tuple")
    expect_error("dnn_processing=" + torch_filter("dict"), "Dict")


@test
def output_option_picks_from_a_tuple_or_dict():
    src = np.frombuffer(raw_frames("64x48", 2), np.uint8)
    for name, key, want in (("two", "1", src), ("two", "0", 255 - src),
                            ("two_by_name", "out", src), ("two_by_name", "inverted", 255 - src)):
        got = np.frombuffer(process(FFMPEG, "64x48", 2, "rgb24", "dnn_processing=" +
                                    torch_filter(name, "output=" + key)), np.uint8)
        check(got.shape == want.shape and max_diff(got, want) == 0,
              "%s output=%s: not the element it names" % (name, key))


@test
def output_option_that_cannot_be_honoured():
    expect_error("dnn_processing=" + torch_filter("two", "output=2"), "tuple of 2 values", "0 to 1")
    expect_error("dnn_processing=" + torch_filter("two_by_name", "output=nope"),
                 "no such key", "inverted, out")
    expect_error("dnn_processing=" + torch_filter("identity", "output=0"),
                 "picks from a tuple, list or dict")
    expect_error("dnn_processing=" + torch_filter("two", "output=0&1"), "one output")


@test
def device_id_is_the_index_of_the_device():
    # As the ONNX backend takes it: device=cuda:device_id=1 is cuda:1.
    expect_error("dnn_processing=" + torch_filter("identity", "device_id=1"),
                 "device_id=1 names a GPU", "device=cuda")
    expect_error("dnn_processing=" + torch_filter("identity", "device=cuda\\\\:0:device_id=1"),
                 "device=cuda:0 and device_id=1 name different devices")
    if torch.version.cuda and not torch.cuda.is_available():
        expect_error("dnn_processing=" + torch_filter("identity", "device=cuda:device_id=1"),
                     "device=cuda:1:", "sees no CUDA device")
        expect_error("dnn_processing=" + torch_filter("identity", "device=cuda\\\\:1:device_id=1"),
                     "device=cuda:1:", "sees no CUDA device")


@test
def xpu_device_without_an_xpu():
    expect_error("dnn_processing=" + torch_filter("identity", "device=xpu"), "no XPU device")


IMAGENET = "norm_mean=0.485&0.456&0.406:norm_std=0.229&0.224&0.225"


@test
def mean_and_std_normalise_the_input_as_torchvision_does():
    frames = as_frames(raw_frames("64x48", 3), 64, 48, 3)
    x = torch.from_numpy(frames.copy()).permute(0, 3, 1, 2).float() / 255
    # What torchvision.transforms.Normalize computes.
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    y = models.MODELS["squash"]()((x - mean) / std)
    want = (y * 255).clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for cfg in (IMAGENET, IMAGENET + ":async=0:batch_size=2"):
        got = as_frames(process(FFMPEG, "64x48", 3, "rgb24", "dnn_processing=" +
                                torch_filter("squash", cfg)), 64, 48, 3)
        check(max_diff(got, want) <= 1, "%s: differs from PyTorch by %d" % (cfg, max_diff(got, want)))
    # One value serves every channel.
    y = models.MODELS["squash"]()((x - 0.5) / 0.25)
    want = (y * 255).clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    got = as_frames(process(FFMPEG, "64x48", 3, "rgb24", "dnn_processing=" +
                            torch_filter("squash", "norm_mean=0.5:norm_std=0.25")), 64, 48, 3)
    check(max_diff(got, want) <= 1, "one mean and std: differs by %d" % max_diff(got, want))


@test
def mean_and_std_of_the_wrong_length():
    expect_error("dnn_processing=" + torch_filter("squash", "norm_mean=0.5&0.5"),
                 "norm_mean has 2 values", "3 channels")
    expect_error("dnn_processing=" + torch_filter("gray", "norm_std=0.5&0.5&0.5"),
                 "norm_std 3", "model takes 1 channel\n", fmt="gray")


@test
def two_channel_output_for_rgb():
    expect_error("dnn_processing=" + torch_filter("ret2ch"), "2 channels")


@test
def nan_output():
    expect_error("dnn_processing=" + torch_filter("nan"), "NaN")


@test
def nan_at_one_sample_in_every_conversion():
    # Packed 8-bit, RGB into YUV planes, 1 channel into Y, and ATen's path
    # for deep and float formats each look for NaN their own way.
    for fmt in ("rgb24", "bgr0", "yuv420p", "nv12", "gray", "p010le", "grayf32"):
        expect_error("dnn_processing=" + torch_filter("nan_one"), "NaN", fmt=fmt)


@test
def cuda_device_without_gpu():
    if torch.cuda.is_available():
        raise Skip("there is a GPU")
    expect_error("dnn_processing=" + torch_filter("identity") + ":device=cuda", "CUDA")


@test
def unknown_device():
    expect_error("dnn_processing=" + torch_filter("identity") + ":device=tpu",
                 "invalid device 'tpu'", "expected one of cpu, cuda")


@test
def zero_frames():
    path = write("zero.rgb", b"")
    rc, out, err = run(["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "64x48", "-i", path,
                        "-vf", "dnn_processing=" + torch_filter("conv3"),
                        "-f", "rawvideo", "-"], loglevel="warning")
    check(rc == 0, "zero frames: exit %d:\n%s" % (rc, err[-2000:]))
    check(out == b"", "output from zero frames")
    check("Output file is empty" in err and "dnn" not in err.lower(),
          "zero frames: want only ffmpeg's empty-output warning:\n" + err[-2000:])


# --- size changes, requests and batches ------------------------------------

RESIZE = "scale=w='if(lt(n,%d),64,80)':h='if(lt(n,%d),48,60)':eval=frame"


def resized_frames(n, cut, fmt="rgb24"):
    """Input frames with a size change at frame `cut`, and their sizes."""
    args = source("64x48", n, fmt)
    args[-1] += "," + RESIZE % (cut, cut)
    rc, data, err = run(args + ["-f", "rawvideo", "-"])
    check(rc == 0, err)
    return data


def split_sizes(data, n, channels=3):
    """Split n rgb frames into the leading 64x48 ones and the 80x60 rest."""
    small, big = 64 * 48 * channels, 80 * 60 * channels
    cut, rest = divmod(n * big - len(data), big - small)
    check(rest == 0 and 0 < cut < n,
          "got %d bytes, not %d frames with one size change" % (len(data), n))
    a = as_frames(data[:cut * small], 64, 48, channels)
    b = as_frames(data[cut * small:], 80, 60, channels)
    return a, b


@test
def frame_size_change_mid_stream():
    n, cut = 12, 5
    src = split_sizes(resized_frames(n, cut), n)
    args = source("64x48", n)
    args[-1] += "," + RESIZE % (cut, cut) + ",dnn_processing=" + torch_filter("conv1x1")
    rc, out, err = run(args + ["-f", "rawvideo", "-"])
    check(rc == 0, "size change failed: " + err[-2000:])
    got = split_sizes(out, n)
    for g, s in zip(got, src):
        check(max_diff(g, reference("conv1x1", s)) == 0, "wrong output after the size change")


def framemd5(vf, n, fmt="rgb24", binary=None):
    args = source("64x48", n, fmt)
    args[-1] += "," + RESIZE % (n // 2, n // 2) + "," + vf
    rc, out, err = run(args + ["-f", "framemd5", "-"], binary)
    check(rc == 0, "failed: %s\n%s" % (vf, err[-2000:]))
    lines = [l for l in out.decode().splitlines() if not l.startswith("#")]
    check(len(lines) == n, "%d frames out of %d (%s)" % (len(lines), n, vf))
    return lines


CONFIGS = ["async=0", "async=1:nireq=1", "async=1:nireq=2", "async=1:nireq=5"] + \
    ["async=%d:batch_size=%d" % (a, b) for a in (0, 1) for b in (2, 3, 4, 8)] + \
    ["async=1:nireq=5:batch_size=3"]


@test
def requests_and_batches_give_identical_frames():
    n = 103
    for name in ("affine", "conv1x1"):
        base = framemd5("dnn_processing=" + torch_filter(name, "async=0:batch_size=1"), n)
        for cfg in CONFIGS:
            got = framemd5("dnn_processing=" + torch_filter(name, cfg), n)
            check(got == base, "%s with %s differs from async=0" % (name, cfg))


@test
def batched_conv_net_within_one():
    n, cut = 21, 10
    src = split_sizes(resized_frames(n, cut), n)
    for cfg in ("async=0:batch_size=4", "async=1:nireq=2:batch_size=3"):
        args = source("64x48", n)
        args[-1] += "," + RESIZE % (cut, cut) + ",dnn_processing=" + torch_filter("conv3", cfg)
        rc, out, err = run(args + ["-f", "rawvideo", "-"])
        check(rc == 0, err[-2000:])
        for g, s in zip(split_sizes(out, n), src):
            check(max_diff(g, reference("conv3", s)) <= 1, "%s: off by more than 1" % cfg)


@test
def failure_in_flight_is_an_error():
    for cfg in ("async=1:nireq=2", "async=1:nireq=4:batch_size=4", "async=0:batch_size=3"):
        expect_error("dnn_processing=" + torch_filter("nan", cfg), "NaN", frames=10)


@test
def model_failing_mid_stream_with_requests_in_flight():
    # The 9th call fails, after the channel probe's: an error, whatever
    # is queued behind it.
    for name, cause in (("fails_later", "failed on purpose"), ("asserts_later", "out of range")):
        for cfg in ("nireq=4:batch_size=2", "async=0"):
            expect_error("dnn_processing=" + torch_filter(name, cfg), "The model failed on an "
                         "input of shape", cause, frames=40)


@test
def stop_with_requests_in_flight():
    args = source("64x48", 50)
    args[-1] += ",dnn_processing=" + torch_filter("conv3", "async=1:nireq=4:batch_size=4")
    rc, out, err = run(args + ["-frames:v", "7", "-f", "framemd5", "-"])
    check(rc == 0, err[-2000:])
    frames = [l for l in out.decode().splitlines() if not l.startswith("#")]
    check(len(frames) == 7, "%d frames, want 7" % len(frames))


@test
def broken_pipe_with_requests_in_flight():
    args = source("320x240", 200)
    args[-1] += ",dnn_processing=" + torch_filter("conv3", "async=1:nireq=4:batch_size=4")
    p = subprocess.Popen([FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error"] + args +
                         ["-f", "rawvideo", "-"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=sanitizer_env())
    p.stdout.read(320 * 240 * 3 * 5)
    p.stdout.close()
    try:
        # -loglevel error keeps stderr far below a pipe's buffer: wait first.
        rc = p.wait(timeout=TIMEOUT)
        err = p.stderr.read().decode(errors="replace")
    except subprocess.TimeoutExpired:
        p.kill()
        raise Failure("hang after the reader went away")
    check(rc > 0, "exit status %d after a broken pipe, want an error" % rc)
    check(not SANITIZER_REPORT.search(err), "sanitizer report:\n" + err[-6000:])


# Where the backend's test build throws (DNN_TORCH_TEST_THROW), and whether
# the stream must fail: an exception while freeing the model or logging a
# warning costs no frame.
THROW_POINTS = (("load", True), ("get_input", True), ("get_output", True),
                ("execute", True), ("request", True), ("completion", True),
                ("flush", True), ("warning", False), ("free", False))


@test
def no_exception_leaves_the_backend():
    for point, fails in THROW_POINTS:
        name = "warns" if point == "warning" else "conv3"
        for cfg in ("async=1:nireq=2", "async=0"):
            os.environ["DNN_TORCH_TEST_THROW"] = point
            try:
                rc, out, err = run(["-f", "lavfi", "-i", "testsrc2=s=64x48:d=0.2", "-vf",
                                    "format=rgb24,dnn_processing=" + torch_filter(name, cfg),
                                    "-f", "null", "-"])
            finally:
                del os.environ["DNN_TORCH_TEST_THROW"]
            what = "an exception at %s (%s)" % (point, cfg)
            check("unexpected error in" in err.lower() and
                  "test exception at " + point in err,
                  "%s: no message naming it:\n%s" % (what, err[-2000:]))
            check((rc != 0) == fails, "%s: exit status %d" % (what, rc))


@test
def optimize_levels_agree():
    # Batch norms that freezing folds into the convolutions: each level runs
    # (freeze without falling back) and stays within 1 of PyTorch.
    src = as_frames(raw_frames("64x48", 4), 64, 48, 3)
    want = reference("conv_bn", src)
    for level in ("0", "1", "2", "none", "graph", "freeze"):
        args = source("64x48", 4)
        args[-1] += ",dnn_processing=" + torch_filter("conv_bn", "optimize=" + level)
        rc, out, err = run(args + ["-f", "rawvideo", "-"], loglevel="warning")
        check(rc == 0 and not err.strip(), "optimize=%s: exit %d, log:\n%s"
              % (level, rc, err[-2000:]))
        got = as_frames(out, 64, 48, 3)
        check(max_diff(got, want) <= 1, "optimize=%s: off PyTorch by %d"
              % (level, max_diff(got, want)))


@test
def fate_tests_pass_against_pytorch_references():
    top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    samples, refs = os.path.join(TMP, "fate-suite"), os.path.join(TMP, "fate-ref")
    env = dict(os.environ, FFMPEG=UPSTREAM if os.path.exists(UPSTREAM) else FFMPEG)
    subprocess.run([sys.executable, os.path.join(top, "tests", "fate_refs.py"), samples, refs],
                   env=env, check=True)
    for name in os.listdir(refs):
        with open(os.path.join(refs, name)) as a, \
                open(os.path.join(os.environ["FFMPEG_SRC"], "tests", "ref", "fate", name)) as b:
            check(a.read() == b.read(), "tests/ref/fate/%s in the stack is not PyTorch's "
                  "output; regenerate it with tests/fate_refs.py" % name)
    build = os.path.dirname(FFMPEG)
    targets = ["fate-filter-dnn_processing-torch", "fate-filter-dnn_detect-torch",
               "fate-filter-dnn_classify-torch"]
    # FATE's ffmpeg runs get the sanitizer settings the other tests' runs get.
    p = subprocess.run(["make", "-C", build] + targets + ["SAMPLES=" + samples],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=TIMEOUT * 3,
                       env=sanitizer_env())
    out = p.stdout.decode()
    check(p.returncode == 0, "make %s failed:\n%s" % (" ".join(targets), out[-3000:]))
    ran = set(re.findall(r"^TEST +(\S+)", out, re.M))
    # The batch tests share the references of the tests they repeat.
    want = set(os.listdir(refs)) | {"filter-dnn_processing-torch-rgb24-batch",
                                     "filter-dnn_classify-torch-rgb24-batch"}
    missing = sorted(want - ran)
    check(not missing, "FATE did not run %s:\n%s" % (", ".join(missing), out[-3000:]))


# --- driver ----------------------------------------------------------------

import analytics  # noqa: E402,F401  (registers the dnn_detect and dnn_classify tests)
import aoti  # noqa: E402,F401  (registers the AOTInductor package tests)
import yuv  # noqa: E402,F401  (registers the tests of 3-channel models on YUV frames)
import video  # noqa: E402,F401  (registers the tests of temporal windows and recurrent models)
import pipelines  # noqa: E402,F401  (registers the tests of the filters around the backend)
import backends  # noqa: E402,F401  (registers the tests of a build with OpenVINO too)
import tiles  # noqa: E402,F401  (registers the tests of dnn_processing on tiles)
import precision  # noqa: E402,F401  (registers the tests of the precision option)
import interpolate  # noqa: E402,F401  (registers the tests of frame interpolation)


import gpu  # noqa: E402,F401  (registers the CUDA tests of make check-gpu)


def run_one(t):
    """Run a test: (outcome, report line)."""
    try:
        t()
    except Skip as e:
        return "skip", "skip %s: %s" % (t.__name__, e)
    except Failure as e:
        return "fail", "FAIL %s: %s" % (t.__name__, e)
    except Exception:
        return "fail", "FAIL %s:\n%s" % (t.__name__, traceback.format_exc())
    return "pass", "ok   %s" % t.__name__


def run_tests(tests, jobs=1):
    """Run the tests, jobs at a time (each runs its own ffmpeg processes),
    then those that must run alone, and print a line for each as it ends."""
    outcomes = {"pass": [], "fail": [], "skip": []}

    def note(t, result):
        outcomes[result[0]].append(t.__name__)
        print(result[1], flush=True)

    together = [t for t in tests if jobs > 1 and not getattr(t, "alone", False)]
    if together:
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            running = {pool.submit(run_one, t): t for t in together}
            for done in concurrent.futures.as_completed(running):
                note(running[done], done.result())
    for t in tests:
        if t not in together:
            note(t, run_one(t))
    if outcomes["skip"]:
        print("%d skipped: %s" % (len(outcomes["skip"]), ", ".join(outcomes["skip"])))
    print("%d passed, %d failed" % (len(outcomes["pass"]), len(outcomes["fail"])))
    return 1 if outcomes["fail"] else 0


def listed_gpus():
    """The GPUs nvidia-smi lists, whatever torch makes of them."""
    try:
        p = subprocess.run(["nvidia-smi", "-L"], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [l for l in p.stdout.decode(errors="replace").splitlines() if l.startswith("GPU ")]


def main():
    jobs = [int(a.split("=", 1)[1]) for a in sys.argv[1:] if a.startswith("--jobs=")]
    argv = [a for a in sys.argv[1:] if a != "--gpu" and not a.startswith("--jobs=")]
    on_gpu = "--gpu" in sys.argv[1:]
    if on_gpu and not torch.cuda.is_available():
        gpus = listed_gpus()
        if gpus:
            # A GPU this torch cannot use is a broken setup, not a skip.
            print("FAIL the machine has %s, and torch %s cannot use it (CUDA %s)"
                  % ("; ".join(gpus), torch.__version__, torch.version.cuda))
            print("0 passed, 1 failed")
            sys.exit(1)
        # Nothing ran: the summary says so, so that it is not read as a pass.
        print("0 passed, 0 failed, %d skipped: no GPU" % len(GPU_TESTS))
        sys.exit(0)
    os.makedirs(MODELS, exist_ok=True)
    models.main(MODELS)
    # The GPU tests compile the packages they run themselves, for CUDA.
    if PACKAGES and not on_gpu:
        models.packages(MODELS)
    tests = GPU_TESTS if on_gpu else TESTS
    sys.exit(run_tests([t for t in tests if not argv or any(a in t.__name__ for a in argv)],
                       jobs[-1] if jobs else 1))


if __name__ == "__main__":
    main()
