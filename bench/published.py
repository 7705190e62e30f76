"""make bench's published detector and classifier, with random weights, and
the Python loop a user writes today to run them on video.

    yolov8n(PATH, w, h)          Ultralytics YOLOv8n from its YAML, exported
                                 by Ultralytics' own TorchScript exporter
    fixed_boxes(PATH, boxes)     a detector that reports the same boxes on
                                 every frame, to feed a classifier
    mobilenet_v3_small(PATH)     torchvision's classifier, scripted

python_loop(...) reads the frames from an ffmpeg pipe and runs the model in
PyTorch with the same pre- and post-processing as the filters: the frame as
float RGB in [0, 1], resized with antialiased bilinear interpolation
(letterboxed in YOLO's gray for the detector), torchvision's NMS per class.

Needs bench/requirements.txt; nothing is downloaded but the packages.
"""

import os
import subprocess
import tempfile
import time

import numpy
import torch
import torch.nn as nn
import torch.nn.functional as F

GRAY = 114.0 / 255.0


def available():
    """None if the packages are there, else what is missing."""
    try:
        import torchvision  # noqa: F401
        import ultralytics  # noqa: F401
    except ImportError as e:
        return str(e)
    return None


def input_rect(fw, fh, iw, ih, letterbox):
    """dnn_input_rect() of libavfilter/dnn_interface.h."""
    w, h = iw, ih
    if letterbox:
        if iw * fh <= ih * fw:
            h = (fh * iw + fw // 2) // fw
        else:
            w = (fw * ih + fh // 2) // fh
        w, h = max(w, 1), max(h, 1)
    return (iw - w) // 2, (ih - h) // 2, w, h


def fit(src, iw, ih, letterbox):
    """src (3 x h x w, float) resized into a 1 x 3 x ih x iw model input."""
    x, y, w, h = input_rect(src.shape[2], src.shape[1], iw, ih, letterbox)
    out = torch.full((1, 3, ih, iw), GRAY) if (w, h) != (iw, ih) else torch.empty(1, 3, ih, iw)
    out[:, :, y:y + h, x:x + w] = F.interpolate(src[None], size=(h, w), mode="bilinear",
                                                align_corners=False, antialias=True)
    return out


def yolov8n(path, w, h, frame, boxes_wanted=8):
    """YOLOv8n for w x h input, with random weights made to detect
    something in frame (an H x W x 3 uint8 array): its batch norms take the
    statistics of the frame, without which the activations fade to nothing
    and every anchor scores the same, and its class biases are raised so that
    about boxes_wanted anchors pass the filter's default confidence of 0.5."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    from ultralytics import YOLO
    torch.manual_seed(0)
    yolo = YOLO("yolov8n.yaml")
    net = yolo.model.eval()
    head = net.model[-1]
    x = fit(torch.from_numpy(frame).permute(2, 0, 1).float() / 255, w, h, True)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None
        net.train()
        net(x)
        net.eval()
        scores = net(x)[0][0, 4:]
        logit = torch.logit(scores.flatten().topk(boxes_wanted).values[-1].double())
        for branch in head.cv3:
            branch[-1].bias += float(-logit) + 0.01
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            os.replace(yolo.export(format="torchscript", imgsz=(h, w)), path)
        finally:
            os.chdir(cwd)


class FixedBoxes(nn.Module):
    """A detector in the filter's boxes layout that finds the same boxes,
    given in model input pixels, in every frame of a batch."""

    def __init__(self, boxes):
        super().__init__()
        self.register_buffer("boxes", torch.tensor(
            [[x, y, x + w, y + h, 0.9, 0.0] for x, y, w, h in boxes]))

    def forward(self, x):
        return self.boxes.expand(x.size(0), -1, -1)


def fixed_boxes(path, boxes):
    torch.jit.script(FixedBoxes(boxes).eval()).save(path)


def mobilenet_v3_small(path):
    import torchvision
    torch.manual_seed(0)
    torch.jit.script(torchvision.models.mobilenet_v3_small().eval()).save(path)


def frames_of(ffmpeg, source, w, h, count):
    """The source's frames as H x W x 3 uint8 arrays, from an ffmpeg pipe."""
    p = subprocess.Popen([ffmpeg, "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", source,
                          "-frames:v", str(count), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         stdout=subprocess.PIPE)
    size = w * h * 3
    try:
        while True:
            buf = bytearray(p.stdout.read(size))
            if len(buf) < size:
                break
            yield numpy.frombuffer(buf, numpy.uint8).reshape(h, w, 3)
    finally:
        p.stdout.close()
        p.wait()


def detect(model, frame, iw, ih, confidence=0.5, iou=0.45, max_boxes=300):
    """The boxes of YOLOv8's raw head on frame, in frame pixels:
    [(x0, y0, x1, y1, class, score)], best first."""
    import torchvision
    fh, fw = frame.shape[:2]
    x0, y0, w, h = input_rect(fw, fh, iw, ih, True)
    out = model(fit(torch.from_numpy(frame).permute(2, 0, 1).float() / 255, iw, ih, True))
    out = out[0] if isinstance(out, (tuple, list)) else out
    head = out[0]
    score, cls = head[4:].max(0)
    keep = score > confidence
    cx, cy, bw, bh = head[:4, keep]
    xyxy = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
    score, cls = score[keep], cls[keep]
    order = score.argsort(descending=True)[:30000]
    xyxy, score, cls = xyxy[order], score[order], cls[order]
    kept = torchvision.ops.batched_nms(xyxy, score, cls, iou)[:max_boxes]
    sx, sy = fw / w, fh / h
    return [((float(b[0]) - x0) * sx, (float(b[1]) - y0) * sy, (float(b[2]) - x0) * sx,
             (float(b[3]) - y0) * sy, int(c), float(s))
            for b, c, s in zip(xyxy[kept], cls[kept], score[kept])]


def classify(model, frame, boxes, iw, ih):
    """Softmax top-1 (class, probability) of each box (x, y, w, h)."""
    src = torch.from_numpy(frame).permute(2, 0, 1).float() / 255
    crops = torch.cat([fit(src[:, y:y + h, x:x + w], iw, ih, False) for x, y, w, h in boxes])
    p = model(crops).softmax(1)
    conf, cls = p.max(1)
    return [(int(c), float(s)) for c, s in zip(cls, conf)]


def python_loop(ffmpeg, source, w, h, count, step):
    """Frames per second after the 10th frame of step(frame) over the
    source's frames read from an ffmpeg pipe, and the first frame's result."""
    torch.set_num_threads(os.cpu_count())
    first = None
    marks = []
    with torch.inference_mode():
        for i, frame in enumerate(frames_of(ffmpeg, source, w, h, count)):
            result = step(frame)
            if i == 0:
                first = result
            marks.append(time.monotonic())
    n = min(10, len(marks)) - 1
    if len(marks) - 1 <= n:
        return None, first
    return (len(marks) - 1 - n) / (marks[-1] - marks[n]), first
