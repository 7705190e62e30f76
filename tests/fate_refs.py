"""FATE samples and references for tests/fate/filter-dnn.mak.

    python tests/fate_refs.py SAMPLES REFDIR    (FFMPEG names an ffmpeg)

Writes the models into SAMPLES/dnn-torch/ and, into REFDIR, each test's
framecrc reference with the frame checksums computed from PyTorch's output on
the same frames.  ffmpeg only decodes the source and writes the header lines:
it runs without dnn_processing.
"""

import os
import subprocess
import sys
import zlib

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models  # noqa: E402

SRC = "testsrc2=s=64x48:r=25:d=0.4,format="
W, H = 64, 48
TESTS = {  # test name: (pixel format, model, frames of its window, recurrent)
    "filter-dnn_processing-torch-rgb24": ("rgb24", "conv1x1", 1, False),
    "filter-dnn_processing-torch-yuv420p": ("yuv420p", "gray", 1, False),
    "filter-dnn_processing-torch-window": ("rgb24", "win_mean", 3, False),
    "filter-dnn_processing-torch-recurrent": ("rgb24", "rec_ema", 1, True),
}


def ffmpeg(fmt, args):
    cmd = [os.environ["FFMPEG"], "-nostdin", "-hide_banner", "-loglevel", "error",
           "-f", "lavfi", "-i", SRC + fmt, "-bitexact"] + args
    return subprocess.run(cmd, stdout=subprocess.PIPE, check=True).stdout


def quantize(y):
    return (y * 255).clamp(0, 255).round().to(torch.uint8)


def run_model(m, x, window=1, recurrent=False, layout="time", resets=()):
    """The model on the frames x: all at once; on the window around each
    frame, the edge frames repeated (stacked in channels with layout
    "channels"); or one after the other with the state carried, started
    afresh before the frames in resets."""
    if window == 1 and not recurrent:
        return m(x)
    half, state, out = window // 2, [], []
    for k in range(len(x)):
        idx = [min(max(k + j, 0), len(x) - 1) for j in range(-half, half + 1)]
        inp = x[idx].unsqueeze(0) if window > 1 else x[k:k + 1]
        if layout == "channels":
            inp = inp.flatten(1, 2)
        if k in resets:
            state = []
        if recurrent:
            y, state = m(inp, state)
        else:
            y = m(inp)
        out.append(y)
    return torch.cat(out)


def output_frames(fmt, model, raw, window=1, recurrent=False):
    m = torch.jit.load(model)
    if fmt == "rgb24":
        frames = np.frombuffer(raw, np.uint8).reshape(-1, H, W, 3)
        x = torch.from_numpy(frames.copy()).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            y = quantize(run_model(m, x, window, recurrent)).permute(0, 2, 3, 1).numpy()
        return [f.tobytes() for f in y]
    per = W * H * 3 // 2
    out = []
    for i in range(len(raw) // per):
        frame = raw[i * per:(i + 1) * per]
        luma = np.frombuffer(frame[:W * H], np.uint8).reshape(1, 1, H, W)
        with torch.no_grad():
            y = quantize(m(torch.from_numpy(luma.copy()).float() / 255))
        out.append(y.numpy().tobytes() + frame[W * H:])
    return out


def reference(fmt, model, window, recurrent):
    header = ffmpeg(fmt, ["-f", "framecrc", "-"]).decode()
    lines = [l for l in header.splitlines() if l.startswith("#")]
    frames = output_frames(fmt, model, ffmpeg(fmt, ["-f", "rawvideo", "-"]), window, recurrent)
    for i, data in enumerate(frames):
        # framecrc's Adler-32 starts from 0, not from zlib's 1
        lines.append("0, %10d, %10d, %8d, %8d, 0x%08x" % (i, i, 1, len(data), zlib.adler32(data, 0)))
    return "\n".join(lines) + "\n"


def main(samples, refdir):
    os.makedirs(os.path.join(samples, "dnn-torch"), exist_ok=True)
    models.main(os.path.join(samples, "dnn-torch"))
    os.makedirs(refdir, exist_ok=True)
    for name, (fmt, model, window, recurrent) in TESTS.items():
        ref = reference(fmt, os.path.join(samples, "dnn-torch", model + ".pt"), window, recurrent)
        with open(os.path.join(refdir, name), "w") as f:
            f.write(ref)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
