"""make bench-gpu: the CUDA paths at 1080p, as ratios from one run.

    python bench/bench_gpu.py OUTDIR    (FFMPEG, UPSTREAM_FFMPEG, FORWARD, MODELS)

For each model: upstream with device=cuda (frames converted on the CPU and
copied both ways); ours with device=cuda on CPU frames; ours on CUDA frames
uploaded each by hwupload in the graph; ours on CUDA frames already on the
GPU (one frame uploaded, then repeated by the loop filter, so that neither
the CPU source nor the upload limits the figure); the last two also with
nireq=4:batch_size=4; and the bare forward() on GPU tensors at batch 1 and 4.
Writes OUTDIR/results-gpu.json.  Without a CUDA GPU, says so and exits 0.
"""

import json
import os
import subprocess
import sys
import time

import torch

from bench import FFMPEG, FORWARD, MODELS, UPSTREAM, find_fps, measure, models

FRAMES = int(os.environ.get("BENCH_FRAMES", "500"))

CASES = [
    ("conv1x1-1920x1080", "conv1x1", 1920, 1080),
    ("conv3-1920x1080", "conv3", 1920, 1080),
    ("upx2-960x540", "upx2", 960, 540),
    ("conv_heavy-1920x1080", "conv_heavy", 1920, 1080),
]
CUDA_DEVICE = ["-init_hw_device", "cuda=cu:0,primary_ctx=1", "-filter_hw_device", "cu"]
POOL = "async=1:nireq=4:batch_size=4"


def configs(model, w, h):
    """(impl, config, ffmpeg args) of each run."""
    one = "testsrc2=s=%dx%d:r=25,trim=end_frame=1" % (w, h)
    looped = one + ",loop=loop=-1:size=1"
    dnn = "dnn_processing=dnn_backend=torch:model=%s:device=cuda" % model
    runs = []
    for impl, binary in (("upstream", UPSTREAM), ("ours", FFMPEG)):
        runs.append((impl, "cpu frames", [binary, "-f", "lavfi", "-i", looped,
                                          "-vf", "format=rgb24," + dnn]))
    for extra in ("", ":" + POOL):
        runs.append(("ours", "cuda frames, hwupload each" + extra.replace(":", " "),
                     [FFMPEG] + CUDA_DEVICE + ["-f", "lavfi", "-i", looped, "-vf",
                                               "format=nv12,hwupload," + dnn + extra]))
        runs.append(("ours", "cuda frames on the gpu" + extra.replace(":", " "),
                     [FFMPEG] + CUDA_DEVICE + ["-f", "lavfi", "-i", one, "-vf",
                                               "format=nv12,hwupload,loop=loop=-1:size=1,"
                                               + dnn + extra]))
    # Half precision, on frames already on the GPU.
    for extra in (":precision=fp16", ":" + POOL + ":precision=fp16"):
        runs.append(("ours", "cuda frames on the gpu" + extra.replace(":", " "),
                     [FFMPEG] + CUDA_DEVICE + ["-f", "lavfi", "-i", one, "-vf",
                                               "format=nv12,hwupload,loop=loop=-1:size=1,"
                                               + dnn + extra]))
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


def tile_case():
    case, name, w, h, frames = TILE_CASE
    model = os.path.join(MODELS, name + ".pt")
    one = "testsrc2=s=%dx%d:r=25,trim=end_frame=1" % (w, h)
    rows = []
    print("\n%s, CUDA frames on the gpu" % case)
    for config in TILE_CONFIGS:
        vf = ("format=nv12,hwupload,loop=loop=-1:size=1,dnn_processing=dnn_backend=torch:"
              "model=%s:device=cuda:channels=3" % model) + (":" + config if config else "")
        cmd = [FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error"] + CUDA_DEVICE + \
            ["-f", "lavfi", "-i", one, "-vf", vf, "-frames:v", str(frames), "-f", "null", "-"]
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        peak = 0
        while p.poll() is None:
            peak = max(peak, gpu_memory_mib(p.pid))
            time.sleep(0.2)
        err = p.stderr.read().decode()
        row = {"case": case, "impl": "ours", "config": config or "default",
               "gpu_memory_mib": peak}
        if p.returncode:
            row["error"] = (err.strip().splitlines() or ["?"])[-1]
        print("  %-52s %6d MiB %s" % (row["config"], peak, row.get("error", "")))
        rows.append(row)
    return rows


def run_forward(model, w, h, batch):
    iterations = max(10, FRAMES // batch)
    out = subprocess.run([FORWARD, model, "3", str(h), str(w), str(batch), "1", "0",
                          str(iterations), "cuda"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True)
    return float(out.stdout.decode().strip().split("=")[1])


def main(outdir):
    if not torch.cuda.is_available():
        print("skipped: no GPU")
        return
    os.makedirs(outdir, exist_ok=True)
    models.main(MODELS)
    device = torch.cuda.get_device_name(0)
    print("%s, LibTorch %s, %d frames per run" % (device, torch.__version__, FRAMES))
    results = []
    for case, name, w, h in CASES:
        model = os.path.join(MODELS, name + ".pt")
        rows = []
        for impl, config, args in configs(model, w, h):
            fps, rss, error, _ = measure(args, FRAMES)
            row = {"case": case, "impl": impl, "config": config,
                   "fps": round(fps, 2) if fps else None, "peak_rss_kb": rss}
            if error:
                row["error"] = error
            rows.append(row)
        for batch in (1, 4):
            rows.append({"case": case, "impl": "forward", "config": "batch=%d" % batch,
                         "fps": round(run_forward(model, w, h, batch), 2)})
        results += rows
        report(case, rows)
    results += tile_case()
    path = os.path.join(outdir, "results-gpu.json")
    with open(path, "w") as f:
        json.dump({"device": device, "torch": torch.__version__, "frames": FRAMES,
                   "results": results}, f, indent=1)
    print("wrote %s" % path)


def report(case, rows):
    def fps(impl, config):
        return find_fps(rows, impl, config)

    print("\n%s" % case)
    print("  %-9s %-45s %9s" % ("impl", "config", "fps"))
    for r in rows:
        speed = "%9.2f" % r["fps"] if r["fps"] else "%9s" % "-"
        print("  %-9s %-45s %s %s" % (r["impl"], r["config"], speed, r.get("error", "")))
    up = fps("upstream", "cpu frames")
    on_gpu = [r for r in rows if r["config"].startswith("cuda frames on the gpu") and r["fps"]]
    if not on_gpu:
        return
    best = max(on_gpu, key=lambda r: r["fps"])
    if up:
        print("  best on the gpu (%s): %.2fx upstream device=cuda" % (best["config"], best["fps"] / up))
    for config, batch in (("cuda frames on the gpu", 1), ("cuda frames on the gpu " + POOL.replace(":", " "), 4)):
        ours, bare = fps("ours", config), fps("forward", "batch=%d" % batch)
        if ours and bare:
            print("  %s: %.2fx the bare forward at batch %d" % (config, ours / bare, batch))


if __name__ == "__main__":
    main(sys.argv[1])
