"""make bench: ours against pristine upstream against the bare forward() of
the same model, on the CPU, as ratios from one run.

    python bench/bench.py OUTDIR    (FFMPEG, UPSTREAM_FFMPEG, FORWARD, MODELS,
                                     ONNX_FFMPEG: optional)

The peer, when ONNX_FFMPEG names an FFmpeg built with its own ONNX Runtime
backend, runs the same models exported to ONNX.  The dnn_detect and
dnn_classify cases (bench/published.py) and the video models (a window of
five frames, a recurrent model) run against the same model in a Python
loop instead: FFmpeg 9.0.2 runs none of them.

Frames per second are taken from ffmpeg's own progress reports, between the
10th frame and the last, so that loading the model does not count; time to
first frame is from the start of the process to the first progress report
that counts a frame.  Peak RSS is the process's own high-water mark (VmHWM).
Writes OUTDIR/results.json.
"""

import json
import os
import subprocess
import sys
import time

import numpy

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import harness  # noqa: E402
import models  # noqa: E402
import published  # noqa: E402

FFMPEG = os.environ["FFMPEG"]
UPSTREAM = os.environ["UPSTREAM_FFMPEG"]
FORWARD = os.environ["FORWARD"]
MODELS = os.environ["MODELS"]
ONNX = os.environ.get("ONNX_FFMPEG")
# BENCH_SCALE scales every case's frame count (0.25 for a quick look);
# BENCH_CASES, a comma-separated list of model names, picks cases.
SCALE = float(os.environ.get("BENCH_SCALE", "1"))
PICK = [c for c in os.environ.get("BENCH_CASES", "").split(",") if c]
THREADS = os.cpu_count()

# (case, model, width, height, frames).  Besides the three models written
# for this bench, published architectures with random weights
# (tests/models.py), at sizes where a 2-core machine runs a case in about
# 10 seconds.
CASES = [
    ("conv3-640x360", "conv3", 640, 360, 200),
    ("affine-1920x1080", "affine", 1920, 1080, 200),
    ("upx2-960x540", "upx2", 960, 540, 200),
    ("conv16-640x360", "conv16", 640, 360, 120),
    ("upx2_5x5-960x540", "upx2_5x5", 960, 540, 60),
    ("espcn_x3-320x180", "espcn_x3", 320, 180, 60),
    ("realesr_compact_x4-160x90", "realesr_compact_x4", 160, 90, 30),
]
UPSTREAM_CONFIGS = ["async=0", "async=1"]
OURS_CONFIGS = ["", "async=0", "async=1:nireq=1", "async=1:nireq=2", "async=1:nireq=4",
                "batch_size=2", "batch_size=4", "async=1:nireq=4:batch_size=4",
                "optimize=freeze", "async=0:optimize=freeze"]
# The same model as an AOTInductor package, compiled for the case's size.
PACKAGE_CONFIGS = ["", "async=0"]
# The limit's runs do not fault their memory in again at every call: glibc
# keeps freed memory when told so, which only the process's owner can do
# for ffmpeg (README, Benchmarks: what it is worth there).
NO_UNMAP = "glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296:" \
           "glibc.malloc.arena_max=1"


# dnn_detect and dnn_classify on published architectures, against the same
# TorchScript model in a Python loop over an ffmpeg pipe (FFmpeg 9.0.2 runs
# neither filter on its torch or ONNX backend): YOLOv8n letterboxed to
# 640x640, and torchvision's MobileNetV3-Small on four boxes of each frame,
# which a detector that always finds them (model_type=boxes) puts there.
DETECT_SIZE = (1280, 720)
DETECT_FRAMES = 30
YOLO_INPUT = (640, 640)
CLASSIFY_FRAMES = 150
# The boxes in the fixed detector's 128x72 input, ten times that in the frame.
CLASSIFY_BOXES = [(10, 10, 30, 40), (50, 20, 25, 25), (80, 30, 40, 35), (20, 45, 30, 20)]
ANALYTICS_CONFIGS = ["", "async=0", "batch_size=2"]


# Video models (tests/models.py, random weights) against the same model in a
# Python loop over an ffmpeg pipe: FastDVDnet on 5-frame windows stacked in
# channels, and FRVSR, x4, carrying its state.  FFmpeg 9.0.2 runs neither.
# (case, model, width, height, frames, options, kind)
VIDEO_CASES = [
    ("fastdvdnet-5-frames-160x96", "fastdvdnet", 160, 96, 30, "frames=5:window=channels", "window"),
    ("frvsr-x4-64x48", "frvsr", 64, 48, 30, "", "recurrent"),
]
VIDEO_CONFIGS = {"window": ["", "async=0", "batch_size=2"],
                 "recurrent": ["", "async=0", "nireq=3"]}


# Tiles (tile_size) against whole frames: the peak RSS of a few 3840x2160
# frames through the two-layer x2 conv net, whose activations for a whole
# frame take gigabytes, and its speed at 1280x720.
# (case, model, width, height, frames, options)
TILE_CASES = [
    ("tiles-upx2_5x5-3840x2160", "upx2_5x5", 3840, 2160, 3, "tile_size=512x512:tile_overlap=8"),
    ("tiles-upx2_5x5-1280x720", "upx2_5x5", 1280, 720, 24, "tile_size=256x256:tile_overlap=8"),
]
TILE_CONFIGS = ["", "async=0", "batch_size=4"]
# precision on the CPU: the x2 conv net at 960x540 in each type.
PRECISION_CASE = ("precision-upx2_5x5-960x540", "upx2_5x5", 960, 540, 30)
PRECISION_CONFIGS = ["", "precision=bf16", "precision=fp16"]


# Frame interpolation: RIFE's IFNet (tests/models.py, random weights)
# doubling 25 fps at 640x360 on moving frames, against the same model in a
# Python loop over an ffmpeg pipe, the model's bare forward() on a pair (the
# limit), and FFmpeg's classical minterpolate (motion-compensated) at the
# same output rate; output frames per second.
INTERPOLATE_CASE = ("interpolate-ifnet-640x360", "ifnet", 640, 360, 72)
INTERPOLATE_CONFIGS = ["interpolate=2", "interpolate=2:async=0", "interpolate=2:batch_size=2"]
MINTERPOLATE = os.environ.get("MINTERPOLATE_FFMPEG", "")

# FFmpeg's ONNX backend has no async mode and takes the tensor names.
ONNX_CONFIG = "async=0:input=x:output=y"


def stale(path, source):
    """Whether path, made by the code in source, is missing or older than it."""
    return not os.path.exists(path) or os.path.getmtime(path) < os.path.getmtime(source)


def run_ffmpeg(binary, model, w, h, config, frames, backend="torch"):
    vf = "format=rgb24,dnn_processing=dnn_backend=%s:model=%s" % (backend, model)
    if config:
        vf += ":" + config
    return measure([binary, "-f", "lavfi", "-i", source(w, h), "-vf", vf], frames)


def source(w, h):
    """One RGB frame, converted once and repeated: the source costs nothing
    next to the filter."""
    return "testsrc2=s=%dx%d:r=25,format=rgb24,trim=end_frame=1,loop=loop=-1:size=1" % (w, h)


def start_cost(binary):
    """Seconds and peak KiB of a 1-frame job through no DNN filter: what
    linking the binary's DNN runtime costs every ffmpeg run."""
    best = None
    for _ in range(5):
        t = time.monotonic()
        _, rss, error, _ = measure([binary, "-f", "lavfi", "-i", source(64, 48), "-vf", "null"], 1)
        t = time.monotonic() - t
        if error:
            return None, rss
        best = min(best or t, t)
    return best, rss


def high_water_kb(pid):
    """The process's peak resident set so far (VmHWM), in KiB, or 0 once it
    is gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(args, frames):
    """Run ffmpeg with args (inputs and filters) for frames frames to the null
    muxer: (fps after the 10th frame, peak RSS in KiB, error or None, seconds
    to the first frame).

    The peak is read from /proc while ffmpeg runs, at each progress report
    (the last comes after the last frame): the rusage of wait4 would not do,
    since Linux carries the maximum RSS of a process across exec, so a child
    of this Python process, which holds torch, would report at least the
    parent's size."""
    cmd = [args[0], "-nostdin", "-hide_banner", "-loglevel", "error"] + args[1:] + \
        ["-frames:v", str(frames), "-progress", "pipe:1", "-stats_period", "0.05",
         "-f", "null", "-"]
    start = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = last = ttff = None
    rss = 0
    for line in p.stdout:
        line = line.decode().strip()
        if line.startswith("frame="):
            n, t = int(line[6:]), time.monotonic()
            if ttff is None and n >= 1:
                ttff = t - start
            if first is None and n >= min(10, frames):
                first = (n, t)
            last = (n, t)
        rss = max(rss, high_water_kb(p.pid))
    err = p.stderr.read().decode()
    _, status, _ = os.wait4(p.pid, 0)
    if os.WIFSIGNALED(status):
        return None, rss, "killed by signal %d" % os.WTERMSIG(status), ttff
    if status != 0 or not first or last[0] != frames:
        return None, rss, "failed: " + (err.strip().splitlines() or ["?"])[-1], ttff
    if last[1] <= first[1]:
        return None, rss, None, ttff
    return (last[0] - first[0]) / (last[1] - first[1]), rss, None, ttff


def peer_difference(model, onnx_model, w, h):
    """The largest difference of one sample between our first frame and the
    peer's, None if either run fails: a peer that computed something else
    would not be a peer."""
    size = "%dx%d" % (w, h)
    try:
        ours = harness.process(FFMPEG, size, 1, "rgb24", "dnn_processing=dnn_backend=torch:"
                               "model=%s:async=0" % model)
        peer = harness.process(ONNX, size, 1, "rgb24", "dnn_processing=dnn_backend=onnx:"
                               "model=%s:%s" % (onnx_model, ONNX_CONFIG))
        return harness.max_diff(numpy.frombuffer(ours, numpy.uint8),
                                numpy.frombuffer(peer, numpy.uint8))
    except harness.Failure:
        return None


def run_forward(model, w, h, frames, batch, threads=THREADS, layout="contiguous", streams=1,
                optimize=0):
    iterations = max(3, frames // (4 * batch * streams))
    out = subprocess.run([FORWARD, model, "3", str(h), str(w), str(batch), str(threads),
                          str(optimize), str(iterations), "cpu", layout, str(streams)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True,
                         env=dict(os.environ, GLIBC_TUNABLES=NO_UNMAP))
    return float(out.stdout.decode().strip().split("=")[1])


# The limit is the best bare forward() over what the filter may do: the
# input's layout, all threads on one call or one thread on each of several
# calls at once (requests in flight), and the model as it is or frozen
# (optimize=freeze).
LIMIT_SETUPS = [(layout, threads, THREADS // threads, optimize)
                for optimize in (0, 2)
                for layout in ("contiguous", "channels_last")
                for threads in sorted({THREADS, 1})]


def row_of(case, impl, config, result):
    fps, rss, error, ttff = result
    row = {"case": case, "impl": impl, "config": config or "default",
           "fps": round(fps, 2) if fps else None, "peak_rss_kb": rss,
           "ttff_s": round(ttff, 3) if ttff else None}
    if error:
        row["error"] = error
    return row


def main(outdir):
    os.makedirs(outdir, exist_ok=True)
    os.makedirs(MODELS, exist_ok=True)
    models.main(MODELS)
    results = []
    print("LibTorch CPU, %d threads%s" % (
        THREADS, "" if ONNX else "; no ONNX peer (./configure --onnxruntime=PATH)"))
    print("\nstart: a 1-frame job through no DNN filter (best of 5)")
    for impl, binary in (("ours", FFMPEG), ("upstream", UPSTREAM), ("onnx peer", ONNX)):
        if binary:
            t, rss = start_cost(binary)
            results.append({"case": "start", "impl": impl, "config": "-vf null",
                            "wall_s": round(t, 3) if t else None, "peak_rss_kb": rss})
            print("  %-12s %s s, %.0f MiB" % (impl, "%.3f" % t if t else "failed", rss / 1024))
    for case, name, w, h, frames in CASES:
        if PICK and name not in PICK:
            continue
        frames = max(12, int(frames * SCALE))
        model = os.path.join(MODELS, name + ".pt")
        rows = []
        for impl, binary, configs in (("upstream", UPSTREAM, UPSTREAM_CONFIGS),
                                      ("ours", FFMPEG, OURS_CONFIGS)):
            for config in configs:
                rows.append(row_of(case, impl, config,
                                   run_ffmpeg(binary, model, w, h, config, frames)))
        package = os.path.join(MODELS, "bench-%s.pt2" % case) if harness.PACKAGES else None
        if package and stale(package, models.__file__):
            models.compile_package(name, (1, 3, h, w), (), package)
        for config in PACKAGE_CONFIGS if package else ():
            rows.append(row_of(case, "ours .pt2", config,
                               run_ffmpeg(FFMPEG, package, w, h, config, frames)))
        if ONNX:
            onnx_model = os.path.join(MODELS, name + ".onnx")
            if stale(onnx_model, models.__file__):
                models.export_onnx(name, onnx_model)
            fps, rss, error, ttff = run_ffmpeg(ONNX, onnx_model, w, h, ONNX_CONFIG, frames, "onnx")
            diff = peer_difference(model, onnx_model, w, h)
            if diff is None or diff > 1:
                error = "its output is not ours (largest difference %s)" % diff
            rows.append(row_of(case, "onnx peer", "async=0",
                               (None if error else fps, rss, error, ttff)))
        for layout, threads, streams, optimize in LIMIT_SETUPS:
            rows.append({"case": case, "impl": "forward",
                         "config": "batch=1:%s:threads=%d:streams=%d:optimize=%d" % (
                             layout, threads, streams, optimize),
                         "fps": round(run_forward(model, w, h, frames, 1, threads, layout,
                                                  streams, optimize), 2),
                         "peak_rss_kb": None})
        rows.append({"case": case, "impl": "forward",
                     "config": "batch=4:contiguous:threads=%d:streams=1" % THREADS,
                     "fps": round(run_forward(model, w, h, frames, 4), 2), "peak_rss_kb": None})
        if package:
            rows.append({"case": case, "impl": "forward .pt2",
                         "config": "batch=1:threads=%d" % THREADS,
                         "fps": round(run_forward(package, w, h, frames, 1), 2), "peak_rss_kb": None})
        results += rows
        report(case, rows)
    results += analytics_cases()
    results += video_cases()
    results += tile_cases()
    results += precision_case()
    results += interpolate_case()
    with open(os.path.join(outdir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print("wrote %s" % os.path.join(outdir, "results.json"))


def analytics_cases():
    picked = [n for n in ("yolov8n", "mobilenet_v3_small") if not PICK or n in PICK]
    if not picked:
        return []
    missing = published.available()
    if missing:
        print("\nno dnn_detect/dnn_classify cases: %s (make bench installs "
              "bench/requirements.txt into configure's virtualenv)" % missing)
        return []
    import torch
    from analytics import side_data
    w, h = DETECT_SIZE
    src = source(w, h)
    frame = next(published.frames_of(FFMPEG, src, w, h, 1))
    rows = []
    if "yolov8n" in picked:
        case, frames = "yolov8n-%dx%d" % DETECT_SIZE, max(12, int(DETECT_FRAMES * SCALE))
        path = os.path.join(MODELS, "bench-yolov8n.torchscript")
        if stale(path, published.__file__):
            published.yolov8n(path, YOLO_INPUT[0], YOLO_INPUT[1], frame)
        vf = "dnn_detect=dnn_backend=torch:model=%s:model_type=yolov8:input_size=%dx%d:" \
             "letterbox=1" % ((path,) + YOLO_INPUT)
        net = torch.jit.load(path)
        ref = lambda f: published.detect(net, f, *YOLO_INPUT)  # noqa: E731
        got = [b[:4] for b in side_data(["-f", "lavfi", "-i", src, "-frames:v", "1", "-vf",
                                         "format=rgb24"], vf)[0][0]]
        rows += analytics_case(case, vf, ref, frames, w, h, compare_boxes(got, reference(ref, frame), w, h))
    if "mobilenet_v3_small" in picked:
        case = "mobilenet_v3_small-4-boxes-%dx%d" % DETECT_SIZE
        frames = max(12, int(CLASSIFY_FRAMES * SCALE))
        boxes_path = os.path.join(MODELS, "bench-fixed-boxes.pt")
        path = os.path.join(MODELS, "bench-mobilenet_v3_small.pt")
        published.fixed_boxes(boxes_path, CLASSIFY_BOXES)
        if stale(path, published.__file__):
            published.mobilenet_v3_small(path)
        vf = "dnn_detect=dnn_backend=torch:model=%s:model_type=boxes:input_size=128x72:" \
             "confidence=0,dnn_classify=dnn_backend=torch:model=%s:input_size=224x224:" \
             "confidence=0" % (boxes_path, path)
        net = torch.jit.load(path)
        boxes = [tuple(10 * v for v in b) for b in CLASSIFY_BOXES]
        ref = lambda f: published.classify(net, f, boxes, 224, 224)  # noqa: E731
        got = [b[6][0] for b in side_data(["-f", "lavfi", "-i", src, "-frames:v", "1", "-vf",
                                           "format=rgb24"], vf)[0][0]]
        rows += analytics_case(case, vf, ref, frames, w, h, compare_classes(got, reference(ref, frame)))
    return rows


def video_loop(src, w, h, count, path, kind, window):
    """Frames per second after the 10th frame of the model over the source's
    frames from an ffmpeg pipe, as a user writes it: each frame a tensor, the
    last `window` of them stacked in channels (the first repeated at the
    start) or the state carried, the output back to 8-bit frames."""
    import torch
    net = torch.jit.load(path)
    torch.set_num_threads(THREADS)
    recent, state, marks = [], [], []
    with torch.inference_mode():
        for frame in published.frames_of(FFMPEG, src, w, h, count):
            x = torch.from_numpy(frame).permute(2, 0, 1).unsqueeze(0).float() / 255
            if kind == "window":
                recent = (recent or [x] * window)[1:] + [x]
                y = net(torch.cat(recent, 1))
            else:
                y, state = net(x, state)
            (y * 255).clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
            marks.append(time.monotonic())
    n = min(10, len(marks)) - 1
    return (len(marks) - 1 - n) / (marks[-1] - marks[n]) if len(marks) - 1 > n else None


def video_cases():
    rows = []
    for case, name, w, h, frames, options, kind in VIDEO_CASES:
        if PICK and name not in PICK:
            continue
        frames = max(12, int(frames * SCALE))
        path = os.path.join(MODELS, name + ".pt")
        case_rows = []
        for config in VIDEO_CONFIGS[kind]:
            opts = ":".join(o for o in (options, config) if o)
            case_rows.append(row_of(case, "ours", config or "default",
                                    run_ffmpeg(FFMPEG, path, w, h, opts, frames)))
        window = int(options.split("frames=")[1].split(":")[0]) if "frames=" in options else 1
        case_rows.append(row_of(case, "python loop", "torch.jit.load, inference_mode",
                                (video_loop(source(w, h), w, h, frames, path, kind, window),
                                 None, None, None)))
        print("\n%s (%s)" % (case, options or "recurrent"))
        for r in case_rows:
            print("  %-12s %-38s %8s %s" % (r["impl"], r["config"],
                                            "%.2f" % r["fps"] if r["fps"] else "-",
                                            r.get("error", "")))
        loop, ours = case_rows[-1]["fps"], [r for r in case_rows if r["impl"] == "ours" and r["fps"]]
        if loop and ours:
            best = max(ours, key=lambda r: r["fps"])
            print("  ours default / python loop: %s; best ours (%s) / python loop: %.2fx" % (
                "%.2fx" % (case_rows[0]["fps"] / loop) if case_rows[0]["fps"] else "n/a",
                best["config"], best["fps"] / loop))
        rows += case_rows
    return rows


def tile_cases():
    rows = []
    for case, name, w, h, frames, tiles in TILE_CASES:
        if PICK and "tiles" not in PICK and name not in PICK:
            continue
        path = os.path.join(MODELS, name + ".pt")
        print("\n%s (%s)" % (case, tiles))
        for config in TILE_CONFIGS:
            whole = row_of(case, "ours", config or "default",
                           run_ffmpeg(FFMPEG, path, w, h, config, frames))
            tiled = row_of(case, "ours tiles", ":".join(c for c in (tiles, config) if c),
                           run_ffmpeg(FFMPEG, path, w, h, ":".join(c for c in (tiles, config) if c),
                                      frames))
            for r in (whole, tiled):
                print("  %-10s %-52s %8s fps %6.0f MiB %s" % (
                    r["impl"], r["config"], "%.2f" % r["fps"] if r["fps"] else "-",
                    r["peak_rss_kb"] / 1024, r.get("error", "")))
            if whole["peak_rss_kb"] and tiled["peak_rss_kb"]:
                print("  peak RSS, tiles / whole frames: %.2f" % (
                    tiled["peak_rss_kb"] / whole["peak_rss_kb"]))
            rows += [whole, tiled]
    return rows


def precision_case():
    case, name, w, h, frames = PRECISION_CASE
    if PICK and "precision" not in PICK and name not in PICK:
        return []
    frames = max(12, int(frames * SCALE))
    path = os.path.join(MODELS, name + ".pt")
    print("\n%s" % case)
    rows = []
    for config in PRECISION_CONFIGS:
        r = row_of(case, "ours", config or "default", run_ffmpeg(FFMPEG, path, w, h, config, frames))
        print("  %-16s %8s fps %6.0f MiB %s" % (r["config"], "%.2f" % r["fps"] if r["fps"] else "-",
                                              r["peak_rss_kb"] / 1024, r.get("error", "")))
        rows.append(r)
    return rows


def interpolate_loop(src, w, h, count, path):
    """Output frames per second after the 10th of the model doubling the
    frame rate of the source's frames from an ffmpeg pipe, as a user writes
    it: each frame, then the model's on the pair it ends, back to 8 bits."""
    import torch
    net = torch.jit.load(path)
    torch.set_num_threads(THREADS)
    prev, marks = None, []
    with torch.inference_mode():
        for frame in published.frames_of(FFMPEG, src, w, h, count):
            x = torch.from_numpy(frame).permute(2, 0, 1).float() / 255
            if prev is not None:
                y = net(torch.stack([prev, x])[None], torch.tensor([0.5]))
                (y * 255).clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
                marks.append(time.monotonic())
            frame.tobytes()
            marks.append(time.monotonic())
            prev = x
    n = min(10, len(marks)) - 1
    return (len(marks) - 1 - n) / (marks[-1] - marks[n]) if len(marks) - 1 > n else None


def interpolate_forward(path, w, h, calls, threads, streams):
    """Pairs per second of the model's bare forward() on one converted pair,
    called calls times on each of streams Python threads of threads
    LibTorch threads each, after three calls each to warm up: the limit of
    the frames between."""
    import threading
    import torch
    net = torch.jit.load(path)
    x, t = torch.rand(1, 2, 3, h, w), torch.tensor([0.5])
    ready = threading.Barrier(streams + 1)

    def run():
        torch.set_num_threads(threads)
        with torch.inference_mode():
            for _ in range(3):
                net(x, t)
            ready.wait()
            for _ in range(calls):
                net(x, t)

    workers = [threading.Thread(target=run) for _ in range(streams)]
    for th in workers:
        th.start()
    ready.wait()
    start = time.monotonic()
    for th in workers:
        th.join()
    return streams * calls / (time.monotonic() - start)


def interpolate_case():
    case, name, w, h, frames = INTERPOLATE_CASE
    if PICK and "interpolate" not in PICK and name not in PICK:
        return []
    frames = max(12, int(frames * SCALE))
    path = os.path.join(MODELS, name + ".pt")
    src = "testsrc2=s=%dx%d:r=25" % (w, h)
    rows = []
    for config in INTERPOLATE_CONFIGS:
        vf = "format=rgb24,dnn_processing=dnn_backend=torch:model=%s:%s" % (path, config)
        rows.append(row_of(case, "ours", config, measure([FFMPEG, "-f", "lavfi", "-i", src,
                                                          "-vf", vf], frames)))
    rows.append(row_of(case, "python loop", "torch.jit.load, inference_mode",
                       (interpolate_loop(src, w, h, frames // 2 + 1, path), None, None, None)))
    # Half the output frames are the model's; the others pass through.
    for threads, streams in ((THREADS, 1), (1, THREADS)):
        rows.append({"case": case, "impl": "forward",
                     "config": "pair, threads=%d, streams=%d" % (threads, streams),
                     "fps": round(2 * interpolate_forward(path, w, h, max(6, frames // 4),
                                                          threads, streams), 2),
                     "peak_rss_kb": None})
    if MINTERPOLATE:
        rows.append(row_of(case, "minterpolate", "mi_mode=mci (9.0.2)", measure(
            [MINTERPOLATE, "-f", "lavfi", "-i", src, "-vf",
             "format=yuv420p,minterpolate=fps=50:mi_mode=mci"], frames)))
    print("\n%s (x2, output frames per second)" % case)
    for r in rows:
        print("  %-12s %-38s %8s %s" % (r["impl"], r["config"],
                                        "%.2f" % r["fps"] if r["fps"] else "-", r.get("error", "")))
    ours, loop = rows[0]["fps"], find_fps(rows, "python loop", "torch.jit.load, inference_mode")
    limit = max([r["fps"] for r in rows if r["impl"] == "forward" and r["fps"]] or [None])
    if ours and loop and limit:
        print("  ours default / python loop: %.2fx; / forward limit: %.2f" % (ours / loop, ours / limit))
    return rows


def reference(step, frame):
    import torch
    with torch.inference_mode():
        return step(frame)


def compare_boxes(got, want, w, h):
    """None when ours found PyTorch's boxes, clipped to the w x h frame, within
    2 pixels, else why not."""
    want = [(round(min(max(b[0], 0), w)), round(min(max(b[1], 0), h)),
             round(min(max(b[2], 0), w)), round(min(max(b[3], 0), h))) for b in want]
    want = [b for b in want if b[2] > b[0] and b[3] > b[1]]
    if len(got) != len(want) or any(max(abs(a - b) for a, b in zip(g, w)) > 2
                                    for g, w in zip(sorted(got), sorted(want))):
        return "its boxes %s are not PyTorch's %s" % (got, want)
    return None


def compare_classes(got, want):
    """None when ours gave each box PyTorch's class and probability within
    1e-3 (classes are labelled by index without a labels file), else why not."""
    if len(got) != len(want) or any(label != str(c) or abs(conf - p) > 1e-3
                                    for (label, conf), (c, p) in zip(got, want)):
        return "its classes %s are not PyTorch's %s" % (got, want)
    return None


def analytics_case(case, vf, step, frames, w, h, mismatch):
    src = source(w, h)
    rows = []
    for config in ANALYTICS_CONFIGS:
        # config goes to each DNN filter of the chain
        chain = ",".join(f + ":" + config if config else f for f in vf.split(","))
        fps, rss, error, ttff = measure([FFMPEG, "-f", "lavfi", "-i", src, "-vf",
                                         "format=rgb24," + chain], frames)
        rows.append(row_of(case, "ours", config, (None if mismatch else fps, rss,
                                                  mismatch or error, ttff)))
    fps, _ = published.python_loop(FFMPEG, src, w, h, frames, step)
    rows.append(row_of(case, "python loop", "torch.jit.load, inference_mode",
                       (fps, None, None, None)))
    print("\n%s" % case)
    for r in rows:
        print("  %-12s %-38s %8s %s" % (r["impl"], r["config"],
                                        "%.2f" % r["fps"] if r["fps"] else "-",
                                        r.get("error", "")))
    loop = rows[-1]["fps"]
    ours = [r for r in rows if r["impl"] == "ours" and r["fps"]]
    if loop and ours:
        best = max(ours, key=lambda r: r["fps"])
        print("  ours default / python loop: %s; best ours (%s) / python loop: %.2fx" % (
            "%.2fx" % (rows[0]["fps"] / loop) if rows[0]["fps"] else "n/a",
            best["config"], best["fps"] / loop))
    return rows


def find_fps(rows, impl, config):
    """The fps of the row of impl and config, None if absent or failed."""
    for r in rows:
        if r["impl"] == impl and r["config"] == config:
            return r["fps"]
    return None


def report(case, rows):
    def fps(impl, config):
        return find_fps(rows, impl, config)

    ours = [r for r in rows if r["impl"].startswith("ours") and r["fps"]]
    best = max(ours, key=lambda r: r["fps"]) if ours else None
    up0, up1 = fps("upstream", "async=0"), fps("upstream", "async=1")
    limits = [r for r in rows if r["impl"] == "forward" and r["fps"] and
              r["config"].startswith("batch=1:")]
    limit = max(limits, key=lambda r: r["fps"]) if limits else None
    fwd = limit["fps"] if limit else None
    print("\n%s" % case)
    print("  %-12s %-38s %8s %10s %8s" % ("impl", "config", "fps", "peak MiB", "TTFF s"))
    for r in rows:
        rss = "%10.0f" % (r["peak_rss_kb"] / 1024) if r["peak_rss_kb"] else "%10s" % "-"
        speed = "%8.2f" % r["fps"] if r["fps"] else "%8s" % "-"
        ttff = "%8.2f" % r["ttff_s"] if r.get("ttff_s") else "%8s" % "-"
        print("  %-12s %-38s %s %s %s %s" % (r["impl"], r["config"], speed, rss, ttff,
                                            r.get("error", "")))
    if best and up0 and fwd:
        print("  best ours (%s %s): %.2fx upstream async=0, %s upstream async=1, "
              "%.2fx the limit (bare forward, %s)" % (
                  best["impl"], best["config"], best["fps"] / up0,
                  "%.2fx" % (best["fps"] / up1) if up1 else "n/a (it failed)",
                  best["fps"] / fwd, limit["config"]))
        d1, d0 = fps("ours", "default"), fps("ours", "async=0")
        if d1 and d0:
            print("  ours default / ours async=0: %.2fx" % (d1 / d0))
    peer = [r for r in rows if r["impl"] == "onnx peer" and r["fps"]]
    if best and peer:
        print("  best ours / ONNX peer: %.2fx; ours default / ONNX peer: %.2fx" % (
            best["fps"] / peer[0]["fps"], (fps("ours", "default") or 0) / peer[0]["fps"]))


if __name__ == "__main__":
    main(sys.argv[1])
