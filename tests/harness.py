"""What the tests share: running ffmpeg (failing on a crash, a hang or a
sanitizer report), the generated models and frames, and PyTorch as the
reference.  Environment (set by the Makefile): FFMPEG, UPSTREAM_FFMPEG,
MODELS, SANITIZE.
"""

import os
import re
import subprocess
import tempfile

import numpy as np
import torch

FFMPEG = os.environ["FFMPEG"]
UPSTREAM = os.environ.get("UPSTREAM_FFMPEG", "")
# The same tree built with --assert-level=2, where libavfilter asserts that
# each frame has its link's size and format (make check builds it).
ASSERT_FFMPEG = os.environ.get("ASSERT_FFMPEG", "")
MODELS = os.environ["MODELS"]
# tests/tools built by the Makefile: an API program, a sync-debug preload
# and a CUPTI counter of host-device copies.
TEST_TOOLS = os.environ.get("TEST_TOOLS", "")
SANITIZE = os.environ.get("SANITIZE", "")
TMP = tempfile.mkdtemp(prefix="dnn-torch-tests-")
TIMEOUT = 600 if SANITIZE else 180
# The LibTorch under test, as its headers say (the Makefile passes it); the
# backend loads AOTInductor packages from 2.10 on.
LIBTORCH_VERSION = tuple(int(n) for n in (os.environ.get("LIBTORCH_VERSION") or
                                           torch.__version__).split("+")[0].split(".")[:2])
PACKAGES = LIBTORCH_VERSION >= (2, 10)

TESTS = []
GPU_TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


def gpu_test(fn):
    """A test for `make check-gpu`, run only where CUDA is available."""
    GPU_TESTS.append(fn)
    return fn


def alone(fn):
    """A test that must not run beside others with --jobs (it measures the
    whole device, or compiles with torch in this process)."""
    fn.alone = True
    return fn


class Failure(Exception):
    pass


class Skip(Exception):
    """What a test needs is not here: counted as skipped, never as passed."""


def check(cond, msg):
    if not cond:
        raise Failure(msg)


# --- running ffmpeg ------------------------------------------------------

SANITIZER_REPORT = re.compile(r"(AddressSanitizer|LeakSanitizer|ThreadSanitizer|"
                              r"UndefinedBehaviorSanitizer|runtime error:)")


def sanitizer_env():
    env = dict(os.environ)
    supp = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sanitizers")
    env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0"
    env["LSAN_OPTIONS"] = "suppressions=%s/lsan.supp:print_suppressions=0" % supp
    env["TSAN_OPTIONS"] = "suppressions=%s/tsan.supp:halt_on_error=0:second_deadlock_stack=1" % supp
    return env


def run_checked(cmd, timeout=TIMEOUT, env=None):
    """Run a program (env: variables added to the environment); fail on a
    crash, a hang or a sanitizer report.  (exit status, stdout, stderr)"""
    full_env = sanitizer_env()
    full_env.update(env or {})
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=timeout, env=full_env)
    except subprocess.TimeoutExpired:
        raise Failure("hang: no exit after %d s: %s" % (timeout, " ".join(cmd)))
    err = p.stderr.decode(errors="replace")
    check(p.returncode >= 0, "killed by signal %d (crash): %s\n%s"
          % (-p.returncode, " ".join(cmd), err[-2000:]))
    check(not SANITIZER_REPORT.search(err), "sanitizer report:\n" + err[-6000:])
    return p.returncode, p.stdout, err


def run(args, binary=None, timeout=TIMEOUT, loglevel="error", env=None):
    """Run ffmpeg, as run_checked() does."""
    cmd = [binary or FFMPEG, "-nostdin", "-hide_banner", "-loglevel", loglevel] + args
    return run_checked(cmd, timeout, env)


def test_tool(name):
    """The path of a tests/tools build; a Skip where the Makefile could not
    build it here (the CUPTI counter needs CUPTI's headers)."""
    path = os.path.join(TEST_TOOLS, name)
    if not TEST_TOOLS or not os.path.exists(path):
        raise Skip("%s is not built (see the Makefile's tests/tools rules)" % name)
    return path


def filter_frames(size, frames, fmt, filters, stream="none"):
    """tests/tools/filter_frames: the filters run through the API on
    generated frames; (exit status, raw output, log)."""
    return run_checked([test_tool("filter_frames"), size, str(frames), fmt, filters, stream])


def model(name):
    return os.path.join(MODELS, name + ".pt")


def torch_filter(name, extra=""):
    opts = "dnn_backend=torch:model=" + model(name)
    return opts + (":" + extra if extra else "")


def source(size, frames, fmt="rgb24", rate=25):
    """testsrc2's frames at size.  testsrc2 rounds an odd width or height
    down to even: those are cropped from the next even size instead."""
    w, h = (int(v) for v in size.split("x"))
    src = "testsrc2=s=%dx%d:r=%d" % (w + w % 2, h + h % 2, rate)
    if w % 2 or h % 2:
        src += ",crop=%d:%d:0:0:exact=1" % (w, h)
    return ["-f", "lavfi", "-i", src, "-frames:v", str(frames), "-vf", "format=" + fmt]


def raw_frames(size, frames, fmt="rgb24"):
    """The frames testsrc2 gives, as the filter will see them."""
    rc, out, err = run(source(size, frames, fmt) + ["-f", "rawvideo", "-"])
    check(rc == 0, "source failed: " + err)
    return out


def process(binary, size, frames, fmt, vf, extra_out=()):
    args = source(size, frames, fmt)
    args[-1] += "," + vf
    rc, out, err = run(args + list(extra_out) + ["-f", "rawvideo", "-"], binary)
    check(rc == 0, "ffmpeg failed (%d): %s" % (rc, err[-3000:]))
    return out


def as_frames(data, w, h, channels, dtype=np.uint8):
    arr = np.frombuffer(data, dtype=dtype)
    per = w * h * channels
    check(arr.size % per == 0, "output size %d is not a whole number of %dx%dx%d frames"
          % (arr.size, w, h, channels))
    return arr.reshape(-1, h, w, channels)


def reference(name, frames_hwc):
    """PyTorch on the same frames: uint8 N x H x W x C -> uint8 output."""
    m = torch.jit.load(model(name))
    with torch.no_grad():
        x = torch.from_numpy(frames_hwc.copy()).permute(0, 3, 1, 2).float() / 255
        y = m(x)
    q = (y * 255).clamp(0, 255).round().to(torch.uint8)
    return q.permute(0, 2, 3, 1).numpy()


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def max_diff(a, b):
    check(a.shape == b.shape, "shape %s != %s" % (a.shape, b.shape))
    return int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max())


def expect_error(vf, *words, size="64x48", frames=3, fmt="rgb24", extra=()):
    """ffmpeg fails on vf, and its log at -v verbose holds the words: the
    error states the cause, and what to do about it is logged at verbose."""
    args = source(size, frames, fmt)
    args[-1] += "," + vf
    rc, out, err = run(args + list(extra) + ["-f", "null", "-"], loglevel="verbose")
    check(rc != 0, "ffmpeg exited 0 on bad input (%s)" % vf)
    for w in words:
        check(w.lower() in err.lower(), "message lacks %r:\n%s" % (w, err[-2000:]))


def write(name, data):
    path = os.path.join(TMP, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def changing_stream(drain=True):
    """Nine PNG frames whose format and size change (rgb24 64x48, gray,
    rgba 80x60): the ffmpeg CLI rebuilds the filter graph at each change,
    as for HLS and DASH streams, after passing on the frames the graph
    holds with -drain_filter (the CLI series)."""
    pattern = os.path.join(TMP, "changing%d.png")
    for start, size, fmt in ((1, "64x48", "rgb24"), (4, "64x48", "gray"), (7, "80x60", "rgba")):
        rc, _, err = run(["-y", "-f", "lavfi", "-i", "testsrc2=s=%s:r=25" % size, "-frames:v", "3",
                          "-pix_fmt", fmt, "-start_number", str(start), pattern])
        check(rc == 0, "could not write the PNG frames: " + err)
    return ["-drain_filter", "1" if drain else "0", "-framerate", "25", "-i", pattern]
