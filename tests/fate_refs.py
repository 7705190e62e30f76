"""FATE samples and references for tests/fate/filter-dnn.mak.

    python tests/fate_refs.py SAMPLES REFDIR    (FFMPEG names an ffmpeg)

Writes the models into SAMPLES/dnn-torch/ and, into REFDIR, each test's
framecrc reference: for dnn_processing, the frame checksums computed from
PyTorch's output on the same frames; for dnn_detect, the frames with the
rectangle the source draws outlined by drawbox at its known place, as the
test outlines the box the detector finds.  ffmpeg runs without the DNN
filters: it decodes the source, draws and writes the header lines.
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
# At 25 fps testsrc2 repeats some 64x48 frames; a window test needs frames
# that all differ, or a window in the wrong order could give the same output.
DISTINCT_SRC = "testsrc2=s=64x48:r=10:d=1,format="
W, H = 64, 48
TESTS = {  # test name: (source, pixel format, model, frames of its window, recurrent)
    "filter-dnn_processing-torch-rgb24": (SRC, "rgb24", "conv1x1", 1, False),
    "filter-dnn_processing-torch-yuv420p": (SRC, "yuv420p", "gray", 1, False),
    "filter-dnn_processing-torch-window": (DISTINCT_SRC, "rgb24", "win_weighted", 3, False),
    "filter-dnn_processing-torch-recurrent": (SRC, "rgb24", "rec_ema", 1, True),
}
# frame interpolation: (source, model, K), rgb24 frames.
INTERPOLATE_TESTS = {
    "filter-dnn_processing-torch-interpolate": (DISTINCT_SRC, "blend", 3),
}
# dnn_detect: a white rectangle on black, (frame size, x, y, w, h, format).
DETECT_TESTS = {
    "filter-dnn_detect-torch-boxes": ("200x100", 30, 20, 50, 40, "rgb24"),
    "filter-dnn_detect-torch-yolov8-letterbox": ("320x240", 40, 60, 100, 90, "rgb24"),
    "filter-dnn_detect-torch-ssd-yuv420p": ("320x240", 40, 60, 100, 90, "yuv420p"),
}
# dnn_classify: red, green and blue rectangles on black, (x, y, w, h); the
# detector labels them by class index, the classifier by colour name.
CLASSIFY_SIZE = (320, 240)
CLASSIFY_RECTS = [(20, 20, 60, 40, "red"), (120, 40, 50, 50, "lime"), (200, 120, 80, 60, "blue")]
CLASSIFY_LABELS = ["red", "green", "blue"]


def ffmpeg(src, args):
    cmd = [os.environ["FFMPEG"], "-nostdin", "-hide_banner", "-loglevel", "error",
           "-f", "lavfi", "-i", src, "-bitexact"] + args
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


def reference(src, fmt, model, window, recurrent):
    header = ffmpeg(src + fmt, ["-f", "framecrc", "-"]).decode()
    lines = [l for l in header.splitlines() if l.startswith("#")]
    raw = ffmpeg(src + fmt, ["-f", "rawvideo", "-"])
    if window > 1:
        per = W * H * (3 if fmt == "rgb24" else 1.5)
        frames = [raw[int(i * per):int((i + 1) * per)] for i in range(int(len(raw) // per))]
        assert len(set(frames)) == len(frames), "the window test's source repeats frames"
    frames = output_frames(fmt, model, raw, window, recurrent)
    for i, data in enumerate(frames):
        # framecrc's Adler-32 starts from 0, not from zlib's 1
        lines.append("0, %10d, %10d, %8d, %8d, 0x%08x" % (i, i, 1, len(data), zlib.adler32(data, 0)))
    return "\n".join(lines) + "\n"


def interpolate_reference(src, model, k):
    """Each frame, then the model's frames at j/k of the way to the next,
    one pair at a time, in a time base of k ticks for each of the source's."""
    header = ffmpeg(src + "rgb24", ["-f", "framecrc", "-"]).decode()
    lines = []
    for l in header.splitlines():
        if l.startswith("#tb 0: "):
            num, den = map(int, l[len("#tb 0: "):].split("/"))
            l = "#tb 0: %d/%d" % (num, den * k) if num == 1 else None
            assert l, "the source's time base is not 1/N"
        if l.startswith("#"):
            lines.append(l)
    raw = ffmpeg(src + "rgb24", ["-f", "rawvideo", "-"])
    frames = np.frombuffer(raw, np.uint8).reshape(-1, H, W, 3)
    x = torch.from_numpy(frames.copy()).permute(0, 3, 1, 2).float() / 255
    m = torch.jit.load(model)
    out = []
    with torch.no_grad():
        for i in range(len(x)):
            out.append(x[i:i + 1])
            for j in range(1, k if i + 1 < len(x) else 1):
                out.append(m(torch.stack([x[i], x[i + 1]])[None], torch.tensor([j / k])))
    for i, y in enumerate(quantize(torch.cat(out)).permute(0, 2, 3, 1).numpy()):
        data = y.tobytes()
        lines.append("0, %10d, %10d, %8d, %8d, 0x%08x" % (i, i, 1, len(data), zlib.adler32(data, 0)))
    return "\n".join(lines) + "\n"


def detect_reference(size, x, y, w, h, fmt):
    """The drawn rectangle outlined where it is, by drawbox: what the test
    draws where the detector says it is."""
    src = ("color=c=black:s=%s:r=25:d=0.12,drawbox=x=%d:y=%d:w=%d:h=%d:color=white:t=fill,"
           "format=%s" % (size, x, y, w, h, fmt))
    return ffmpeg(src, ["-vf", "drawbox=x=%d:y=%d:w=%d:h=%d:color=red" % (x, y, w, h),
                        "-f", "framecrc", "-"]).decode()


def classify_reference(samples):
    """What showinfo prints of each frame's boxes: the detector and the
    classifier run by PyTorch on the frames, the classifier on each box
    resized to its 32x32 input."""
    w, h = CLASSIFY_SIZE
    src = "color=c=black:s=%dx%d:r=25:d=0.08" % (w, h)
    for x, y, bw, bh, c in CLASSIFY_RECTS:
        src += ",drawbox=x=%d:y=%d:w=%d:h=%d:color=%s:t=fill" % (x, y, bw, bh, c)
    raw = ffmpeg(src + ",format=rgb24", ["-f", "rawvideo", "-"])
    frames = torch.from_numpy(np.frombuffer(raw, np.uint8).copy()).view(-1, h, w, 3)
    detector = torch.jit.load(os.path.join(samples, "dnn-torch", "det_colors.pt"))
    classifier = torch.jit.load(os.path.join(samples, "dnn-torch", "cls_color.pt"))
    lines = []
    for frame in frames:
        x = frame.permute(2, 0, 1).unsqueeze(0).float() / 255
        boxes = [b for b in detector(x)[0].tolist() if b[4] > 0.5]
        for i, (x0, y0, x1, y1, score, cls) in enumerate(boxes):
            # corners in input pixels, the frame's here
            x0, y0, x1, y1 = (int(round(v)) for v in (x0, y0, x1, y1))
            crop = torch.nn.functional.interpolate(x[:, :, y0:y1, x0:x1], size=(32, 32),
                                                   mode="bilinear", antialias=True)
            p = classifier(crop).softmax(1)[0]
            lines.append("index: %d,\tregion: (%d, %d) -> (%d, %d), label: %d, confidence: "
                         "%d/10000." % (i, x0, y0, x1, y1, int(cls), round(score * 10000)))
            lines.append("\t\tclassify:  label: %s, confidence: %d/10000."
                         % (CLASSIFY_LABELS[int(p.argmax())], int(p.max() * 10000)))
    return "\n".join(lines) + "\n"


def main(samples, refdir):
    os.makedirs(os.path.join(samples, "dnn-torch"), exist_ok=True)
    models.main(os.path.join(samples, "dnn-torch"))
    os.makedirs(refdir, exist_ok=True)
    for name, (src, fmt, model, window, recurrent) in TESTS.items():
        ref = reference(src, fmt, os.path.join(samples, "dnn-torch", model + ".pt"), window,
                        recurrent)
        with open(os.path.join(refdir, name), "w") as f:
            f.write(ref)
    for name, (src, model, k) in INTERPOLATE_TESTS.items():
        with open(os.path.join(refdir, name), "w") as f:
            f.write(interpolate_reference(src, os.path.join(samples, "dnn-torch", model + ".pt"), k))
    for name, args in DETECT_TESTS.items():
        with open(os.path.join(refdir, name), "w") as f:
            f.write(detect_reference(*args))
    with open(os.path.join(samples, "dnn-torch", "colors.txt"), "w") as f:
        f.write("\n".join(CLASSIFY_LABELS) + "\n")
    with open(os.path.join(refdir, "filter-dnn_classify-torch-rgb24"), "w") as f:
        f.write(classify_reference(samples))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
