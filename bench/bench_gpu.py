"""make bench-gpu: the CUDA paths at 1080p and 4K, as ratios from one run.

    python bench/bench_gpu.py OUTDIR    (FFMPEG, UPSTREAM_FFMPEG, FORWARD, MODELS)

For each case: upstream with device=cuda (frames converted on the CPU and
copied both ways); ours with device=cuda on CPU frames; ours on frames that
NVDEC decodes from an MPEG-2 clip (encoded first, looped); ours on CUDA
frames already on the GPU (one frame uploaded, then repeated by the loop
filter, so that neither a source nor a copy limits the figure) with nireq 1
and 4 times batch_size 1 and 4, and in fp16; and the bare forward() on GPU
tensors at batch 1 and 4, the limit each is compared with.  Then the GPU
memory of an x2 upscaler on 4K frames, whole and in tiles.  The cases run
most telling first, and OUTDIR/results-gpu.json is written after each, so
that a run stopped by a time limit keeps what it measured.  Without a CUDA
GPU, says so, lists the runs it would make and exits 0.
"""

import json
import os
import subprocess
import sys
import time

import torch

from bench import FFMPEG, FORWARD, MODELS, UPSTREAM, find_fps, measure, models

FRAMES = int(os.environ.get("BENCH_FRAMES", "200"))
CUDA_DEVICE = ["-init_hw_device", "cuda=cu:0,primary_ctx=1", "-filter_hw_device", "cu"]
NVDEC = CUDA_DEVICE + ["-hwaccel", "cuda", "-hwaccel_device", "cu",
                       "-hwaccel_output_format", "cuda"]
POOL = "nireq=4:batch_size=4"
# (case, model, width, height, request set-ups on GPU frames)
GRID = ["nireq=1:batch_size=1", "nireq=4:batch_size=1", "nireq=1:batch_size=4", POOL]
CASES = [
    ("conv_heavy-3840x2160", "conv_heavy", 3840, 2160, GRID),
    ("conv3-3840x2160", "conv3", 3840, 2160, ["nireq=1:batch_size=1", POOL]),
    ("conv_heavy-1920x1080", "conv_heavy", 1920, 1080, GRID),
]


def frames_for(w, h, on_cpu):
    """Frames a run measures: fewer at 4K, and fewer again where the CPU
    converts each frame (upstream's path runs at a few frames a second)."""
    n = FRAMES if w * h <= 1920 * 1080 else FRAMES // 2
    return max(20, n // 4 if on_cpu else n)


def label(config):
    return config.replace(":", " ")


def clip_path(outdir, w, h):
    return os.path.join(outdir, "clip-%dx%d.m2v" % (w, h))


def make_clip(outdir, w, h):
    """An MPEG-2 clip of 50 frames for NVDEC, encoded on the CPU."""
    path = clip_path(outdir, w, h)
    if not os.path.exists(path):
        subprocess.run([FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", "-f", "lavfi",
                        "-i", "testsrc2=s=%dx%d:r=25" % (w, h), "-frames:v", "50",
                        "-c:v", "mpeg2video", "-q:v", "3", "-g", "12", "-y", path], check=True)
    return path


def configs(outdir, model, w, h, grid):
    """(impl, config, ffmpeg args, frames) of each run."""
    one = "testsrc2=s=%dx%d:r=25,trim=end_frame=1" % (w, h)
    looped = one + ",loop=loop=-1:size=1"
    dnn = "dnn_processing=dnn_backend=torch:model=%s:device=cuda" % model
    on_gpu = ["-f", "lavfi", "-i", one, "-vf", "format=nv12,hwupload,loop=loop=-1:size=1,"
              + dnn + ":channels=3:"]
    runs = []
    for impl, binary in (("upstream", UPSTREAM), ("ours", FFMPEG)):
        runs.append((impl, "cpu frames", [binary, "-f", "lavfi", "-i", looped,
                                          "-vf", "format=rgb24," + dnn], frames_for(w, h, True)))
    runs.append(("ours", "nvdec frames " + label(POOL),
                 [FFMPEG] + NVDEC + ["-stream_loop", "-1", "-i", clip_path(outdir, w, h),
                                     "-vf", dnn + ":channels=3:" + POOL], frames_for(w, h, False)))
    for cfg in grid + [POOL + ":precision=fp16"]:
        args = list(on_gpu)
        args[-1] += cfg
        runs.append(("ours", "cuda frames on the gpu " + label(cfg), [FFMPEG] + CUDA_DEVICE + args,
                     frames_for(w, h, False)))
    return runs


# Tiles on the GPU: GPU memory (nvidia-smi's used_memory of the ffmpeg
# process, polled) of the x2 5x5 upscaler on 3840x2160 CUDA frames, whole
# and in tiles, in fp32 and fp16.
TILE_CASE = ("tiles-upx2_5x5-3840x2160", "upx2_5x5", 3840, 2160, 10)
TILE_CONFIGS = ["", "tile_size=512x512:tile_overlap=8", "precision=fp16",
                "tile_size=512x512:tile_overlap=8:precision=fp16"]


def gpu_memory_mib(pid):
    """The GPU memory nvidia-smi reports for the process, in MiB, or 0."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                              "--format=csv,noheader,nounits"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, timeout=10).stdout.decode()
    except (OSError, subprocess.TimeoutExpired):
        return 0
    for line in out.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 2 and fields[0] == str(pid) and fields[1].isdigit():
            return int(fields[1])
    return 0


def tile_runs():
    case, name, w, h, frames = TILE_CASE
    model = os.path.join(MODELS, name + ".pt")
    one = "testsrc2=s=%dx%d:r=25,trim=end_frame=1" % (w, h)
    for config in TILE_CONFIGS:
        vf = ("format=nv12,hwupload,loop=loop=-1:size=1,dnn_processing=dnn_backend=torch:"
              "model=%s:device=cuda:channels=3" % model) + (":" + config if config else "")
        yield config or "default", [FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error"] + \
            CUDA_DEVICE + ["-f", "lavfi", "-i", one, "-vf", vf, "-frames:v", str(frames),
                           "-f", "null", "-"]


def tile_case():
    case = TILE_CASE[0]
    rows = []
    print("\n%s, CUDA frames on the gpu" % case)
    for config, cmd in tile_runs():
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        peak = 0
        while p.poll() is None:
            peak = max(peak, gpu_memory_mib(p.pid))
            time.sleep(0.2)
        err = p.stderr.read().decode()
        row = {"case": case, "impl": "ours", "config": config, "gpu_memory_mib": peak}
        if p.returncode:
            row["error"] = (err.strip().splitlines() or ["?"])[-1]
        print("  %-52s %6d MiB %s" % (row["config"], peak, row.get("error", "")))
        rows.append(row)
    return rows


def run_forward(model, w, h, batch):
    iterations = max(10, frames_for(w, h, False) // batch)
    out = subprocess.run([FORWARD, model, "3", str(h), str(w), str(batch), "1", "0",
                          str(iterations), "cuda"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True)
    return float(out.stdout.decode().strip().split("=")[1])


def list_runs(outdir):
    """The command lines, for a look without a GPU."""
    models.main(MODELS)
    for case, name, w, h, grid in CASES:
        model = os.path.join(MODELS, name + ".pt")
        print(case)
        for impl, config, args, frames in configs(outdir, model, w, h, grid):
            print("  %-8s %-55s %4d frames: %s" % (impl, config, frames, " ".join(args)))
        for batch in (1, 4):
            print("  forward  batch=%d" % batch)
    for config, cmd in tile_runs():
        print("%s %s: %s" % (TILE_CASE[0], config, " ".join(cmd)))


def main(outdir):
    if not torch.cuda.is_available():
        print("skipped: no GPU; the runs it would make:")
        list_runs(outdir)
        return
    os.makedirs(outdir, exist_ok=True)
    models.main(MODELS)
    device = torch.cuda.get_device_name(0)
    print("%s, LibTorch %s, %d frames per run on GPU frames at 1080p" %
          (device, torch.__version__, FRAMES))
    path = os.path.join(outdir, "results-gpu.json")
    results = []

    def save():
        with open(path, "w") as f:
            json.dump({"device": device, "torch": torch.__version__, "frames": FRAMES,
                       "results": results}, f, indent=1)

    for case, name, w, h, grid in CASES:
        model = os.path.join(MODELS, name + ".pt")
        make_clip(outdir, w, h)
        rows = []
        for impl, config, args, frames in configs(outdir, model, w, h, grid):
            fps, rss, error, _ = measure(args, frames)
            row = {"case": case, "impl": impl, "config": config, "frames": frames,
                   "fps": round(fps, 2) if fps else None, "peak_rss_kb": rss}
            if error:
                row["error"] = error
            rows.append(row)
        for batch in (1, 4):
            rows.append({"case": case, "impl": "forward", "config": "batch=%d" % batch,
                         "fps": round(run_forward(model, w, h, batch), 2)})
        results += rows
        save()
        report(case, rows)
    results += tile_case()
    save()
    print("wrote %s" % path)


def report(case, rows):
    def fps(impl, config):
        return find_fps(rows, impl, config)

    print("\n%s" % case)
    print("  %-9s %-50s %9s" % ("impl", "config", "fps"))
    for r in rows:
        speed = "%9.2f" % r["fps"] if r["fps"] else "%9s" % "-"
        print("  %-9s %-50s %s %s" % (r["impl"], r["config"], speed, r.get("error", "")))
    up = fps("upstream", "cpu frames")
    on_gpu = [r for r in rows if r["config"].startswith("cuda frames on the gpu") and r["fps"]]
    if not on_gpu:
        return
    best = max(on_gpu, key=lambda r: r["fps"])
    if up:
        print("  best on the gpu (%s): %.2fx upstream device=cuda" % (best["config"], best["fps"] / up))
    for r in on_gpu:
        batch = 4 if "batch_size=4" in r["config"] else 1
        bare = fps("forward", "batch=%d" % batch)
        if bare:
            print("  %s: %.2fx the bare forward at batch %d" % (r["config"], r["fps"] / bare, batch))


if __name__ == "__main__":
    main(sys.argv[1])
