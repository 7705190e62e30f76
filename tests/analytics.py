"""dnn_detect and dnn_classify on the torch backend.

The frames are drawn with color + drawbox, so the right answer is known from
the picture: the test detectors (tests/models.py) find the drawn rectangles
with tensor ops and report them in each output layout; the side data, read
back through showinfo, must give the drawn rectangles within 1 pixel.
"""

import re

from harness import check, expect_error, model, run, test, write

BOX = re.compile(r"index: (\d+),\s+region: \((-?\d+), (-?\d+)\) -> \((-?\d+), (-?\d+)\), "
                 r"label: (.*?), confidence: (-?\d+)/(\d+)\.")
CLASSIFIED = re.compile(r"classify:\s+label: (.*?), confidence: (-?\d+)/(\d+)\.")
FRAME = re.compile(r"\] n:\s*(\d+) ")


def drawn(size, boxes, frames=1, fmt="rgb24", background="black"):
    """A lavfi source of frames with filled rectangles (x, y, w, h, colour)."""
    g = "color=c=%s:s=%s:r=25" % (background, size)
    for x, y, w, h, c in boxes:
        g += ",drawbox=x=%d:y=%d:w=%d:h=%d:color=%s:t=fill" % (x, y, w, h, c)
    # The filters may run ahead of -frames:v: end the source itself.
    g += ",trim=end_frame=%d" % frames
    return ["-f", "lavfi", "-i", g, "-vf", "format=" + fmt]


def side_data(args, vf, expect_ok=True, binary=None):
    """Run vf,showinfo; return per frame a list of (x0, y0, x1, y1, label,
    confidence, [(class label, confidence)]), and ffmpeg's log."""
    args = list(args)
    args[-1] += "," + vf + ",showinfo"
    rc, out, err = run(args + ["-f", "null", "-"], binary, loglevel="info")
    if expect_ok:
        check(rc == 0, "ffmpeg failed (%d) on %s:\n%s" % (rc, vf, err[-3000:]))
    frames = []
    for line in err.splitlines():
        if FRAME.search(line):
            frames.append([])
        m = BOX.search(line)
        if m:
            check(frames, "boxes before the first frame")
            x0, y0, x1, y1 = (int(v) for v in m.group(2, 3, 4, 5))
            conf = int(m.group(7)) / int(m.group(8))
            frames[-1].append([x0, y0, x1, y1, m.group(6), conf, []])
        m = CLASSIFIED.search(line)
        if m:
            check(frames and frames[-1], "a classification without a box")
            frames[-1][-1][6].append((m.group(1), int(m.group(2)) / int(m.group(3))))
    return frames, err


def detect(name, model_type, extra=""):
    vf = "dnn_detect=dnn_backend=torch:model=%s:model_type=%s" % (model(name), model_type)
    return vf + (":" + extra if extra else "")


def check_box(got, want, what):
    x, y, w, h = want
    corners = (x, y, x + w, y + h)
    check(all(abs(a - b) <= 1 for a, b in zip(got[:4], corners)),
          "%s: box %s, drawn %s" % (what, tuple(got[:4]), corners))


@test
def help_lists_the_detect_and_classify_options():
    for name, opts in (("dnn_detect", ("torch", "boxes", "yolov8", "iou", "max_boxes",
                                        "input_size", "letterbox")),
                       ("dnn_classify", ("torch", "target", "input_size"))):
        rc, out, err = run(["-h", "filter=" + name])
        for opt in opts:
            check(opt in out.decode(), "%s missing from -h filter=%s" % (opt, name))


# The rectangles sit where the resize maps them to whole input pixels, so
# that a box is found to the pixel; letterbox and stretch both map it back.
GEOMETRIES = [
    # frame, rectangle, input_size and letterbox options
    ("200x100", (30, 20, 50, 40), ""),
    ("320x240", (40, 60, 100, 90), "input_size=160x160"),
    ("320x240", (40, 60, 100, 90), "input_size=160x160:letterbox=1"),
    ("256x144", (64, 36, 80, 40), "input_size=128x128:letterbox=1"),
    ("144x256", (36, 64, 40, 80), "input_size=128x128:letterbox=1"),
]


@test
def detect_finds_the_drawn_box_in_each_layout():
    for size, rect, opts in GEOMETRIES:
        src = drawn(size, [rect + ("white",)], frames=2)
        for name, layout in (("det_ssd", "ssd"), ("det_boxes", "boxes"), ("det_yolov8", "yolov8")):
            frames, _ = side_data(src, detect(name, layout, opts))
            what = "%s %s %s" % (layout, size, opts or "frame size")
            check(len(frames) == 2, "%s: %d frames out of 2" % (what, len(frames)))
            for boxes in frames:
                # yolov8: NMS drops the shifted copy, keeps class 0's box.
                want = [("1", 0.9)] + ([("0", 0.7)] if layout == "yolov8" else [])
                check([(b[4], b[5]) for b in boxes] == want,
                      "%s: labels and scores %s, want %s" % (what, [b[4:6] for b in boxes], want))
                for b in boxes:
                    check_box(b, rect, what)


@test
def detect_on_yuv_and_gray_frames():
    rect = (40, 60, 100, 90)
    for fmt in ("yuv420p", "nv12", "yuv444p", "p010le", "gray", "rgba", "bgr0"):
        frames, _ = side_data(drawn("320x240", [rect + ("white",)], fmt=fmt),
                              detect("det_boxes", "boxes", "input_size=160x160:letterbox=1"))
        check(len(frames) == 1 and len(frames[0]) == 1, "%s: %s" % (fmt, frames))
        check_box(frames[0][0], rect, fmt)


@test
def detect_labels_file_and_confidence():
    labels = write("labels.txt", b"background\nbright\n")
    src = drawn("200x100", [(30, 20, 50, 40, "white")])
    frames, _ = side_data(src, detect("det_boxes", "boxes", "labels=" + labels))
    check([b[4] for b in frames[0]] == ["bright"], "labels file not used: %s" % frames)
    frames, _ = side_data(src, detect("det_boxes", "boxes", "confidence=0.95"))
    check(frames[0] == [], "a box under the confidence threshold was kept: %s" % frames)


def nms_boxes(extra=""):
    frames, _ = side_data(drawn("200x200", []), detect("nms_fixed", "yolov8", extra))
    check(len(frames) == 1, "%d frames" % len(frames))
    return [(b[4], b[5], tuple(b[:4])) for b in frames[0]]


A = ("0", 0.9, (10, 10, 50, 50))
C = ("1", 0.7, (12, 12, 52, 52))
D = ("0", 0.6, (100, 100, 140, 140))
E = ("0", 0.85, (30, 30, 70, 70))


@test
def yolov8_nms_keeps_the_known_survivors():
    got = nms_boxes()
    check(got == [A, E, C, D], "iou=0.45: %s, want %s" % (got, [A, E, C, D]))
    got = nms_boxes("iou=0.1")
    check(got == [A, C, D], "iou=0.1: %s, want %s" % (got, [A, C, D]))
    got = nms_boxes("max_boxes=2")
    check(got == [A, E], "max_boxes=2: %s, want %s" % (got, [A, E]))


@test
def detect_requests_and_batches_give_the_same_side_data():
    # A rectangle that moves through the picture, and out of it at the end.
    args = ["-f", "lavfi", "-i", "color=c=black:s=400x300:r=25,drawbox=x=150:y=100:w=60:"
            "h=40:color=white:t=fill,crop=w=160:h=120:x=n*9:y=n*5,trim=end_frame=23",
            "-vf", "format=rgb24"]
    for common in ("", "input_size=96x96:letterbox=1:"):
        base, _ = side_data(args, detect("det_yolov8", "yolov8", common + "async=0:batch_size=1"))
        check(len(base) == 23 and len(set(str(b) for b in base)) > 10,
              "not 23 frames of moving detections: %s" % base)
        for cfg in ("async=1:nireq=2", "async=0:batch_size=4", "async=1:nireq=3:batch_size=5"):
            got, _ = side_data(args, detect("det_yolov8", "yolov8", common + cfg))
            check(got == base, "%s%s gives other side data than batch_size=1" % (common, cfg))


COLORED = [(20, 20, 60, 40, "red"), (120, 40, 50, 50, "lime"), (200, 120, 80, 60, "blue")]
COLOR_NAMES = ["red", "green", "blue"]


def classify_run(fmt="rgb24", extra="", detect_extra=""):
    labels = write("colors.txt", "\n".join(COLOR_NAMES).encode() + b"\n")
    vf = detect("det_colors", "boxes", "labels=%s%s" % (labels, detect_extra))
    vf += ",dnn_classify=dnn_backend=torch:model=%s:labels=%s:input_size=32x32" % (
        model("cls_color"), labels)
    frames, _ = side_data(drawn("320x240", COLORED, frames=3, fmt=fmt), vf + (":" + extra if extra else ""))
    check(len(frames) == 3, "%d frames out of 3" % len(frames))
    return frames


# The model is promised R, G, B whatever the order of the bytes in memory.
COLOUR_FORMATS = ("rgb24", "yuv420p", "bgr24", "bgra", "bgr0", "rgba", "rgb0")


@test
def classify_labels_each_box_by_its_colour():
    for fmt in COLOUR_FORMATS:
        for boxes in classify_run(fmt):
            check(len(boxes) == 3, "%s: %d boxes, want 3" % (fmt, len(boxes)))
            for b, (x, y, w, h, _), name in zip(sorted(boxes, key=lambda b: b[0]), COLORED, COLOR_NAMES):
                check_box(b, (x, y, w, h), fmt + " " + name)
                check(b[4] == name, "%s: detected %s where %s was drawn" % (fmt, b[4], name))
                check(len(b[6]) == 1 and b[6][0][0] == name and b[6][0][1] > 0.99,
                      "%s: %s box classified as %s" % (fmt, name, b[6]))


@test
def classify_target_and_batches():
    for boxes in classify_run(extra="target=green"):
        for b in boxes:
            want = 1 if b[4] == "green" else 0
            check(len(b[6]) == want, "target=green: %s box has %s" % (b[4], b[6]))
    base = classify_run()
    for cfg in ("async=1:nireq=2:batch_size=2", "async=0:batch_size=4"):
        check(classify_run(extra=cfg) == base, "dnn_classify with %s differs" % cfg)


# --- malformed detector output and bad options ----------------------------

@test
def malformed_boxes_are_dropped_with_a_warning():
    frames, err = side_data(drawn("64x48", []), detect("det_malformed", "boxes"))
    check(len(frames) == 1 and [tuple(b[:4]) for b in frames[0]] == [(10, 10, 30, 20)],
          "want only the good box: %s" % frames)
    check("Dropped 4 malformed boxes" in err, "no warning for the malformed boxes:\n" + err[-2000:])


@test
def overflowing_classes_and_scores_are_malformed():
    # A class of 2^31 once became INT_MIN and indexed the labels with it.
    labels = write("two_labels.txt", b"a\nb\n")
    for extra in ("", ":labels=" + labels):
        frames, err = side_data(drawn("64x48", []), detect("det_hostile", "boxes") + extra)
        check(len(frames) == 1 and [(tuple(b[:4]), b[4], b[5]) for b in frames[0]] ==
              [((10, 10, 30, 20), "b" if extra else "1", 0.9)],
              "want only the good box%s: %s" % (extra, frames))
        check("Dropped 4 malformed boxes" in err, "no warning:\n" + err[-2000:])


@test
def detect_reads_the_leading_ones_of_other_backends():
    # OpenVINO's backend gives a 3-D output as [1, 1, N, 6]: the shared
    # parsers read it as the torch backend's [1, N, 6].
    rect = (40, 60, 100, 90)
    src = drawn("320x240", [rect + ("white",)])
    for name, layout in (("det_boxes", "boxes"), ("det_yolov8", "yolov8")):
        want, _ = side_data(src, detect(name, layout, "input_size=160x160:letterbox=1"))
        got, _ = side_data(src, detect(name + "_1", layout, "input_size=160x160:letterbox=1"))
        check(got == want and len(want) == 1 and want[0],
              "%s: %s with a leading 1, %s without" % (layout, got, want))
        check_box(got[0][0], rect, layout)


@test
def boxes_in_the_letterbox_padding_are_dropped():
    frames, _ = side_data(drawn("320x240", []),
                          detect("det_in_padding", "boxes", "input_size=160x160:letterbox=1"))
    check(len(frames) == 1 and [tuple(b[:4]) for b in frames[0]] == [(80, 40, 160, 120)],
          "want only the box in the picture: %s" % frames)


@test
def nms_takes_the_best_30000_candidates():
    frames, _ = side_data(drawn("200x200", []), detect("nms_many", "yolov8"))
    check(len(frames) == 1 and [tuple(b[:4]) for b in frames[0]] == [(10, 10, 50, 50)],
          "want box A alone, box D ranked beyond the candidates: %s" % frames)
    # Fewer boxes kept, fewer candidates: 100 for each.
    frames, _ = side_data(drawn("200x200", []), detect("nms_many", "yolov8", "max_boxes=1"))
    check(len(frames) == 1 and len(frames[0]) == 1, "max_boxes=1: %s" % frames)


def detect_error(name, layout, *words, opts="", fmt="rgb24"):
    expect_error(detect(name, layout, opts), *words, fmt=fmt)


# Outputs that do not fit the chosen layout, or are no tensor at all: each
# a test of its own, a clear error naming the cause.
DETECT_ERRORS = {
    "too_few_columns_for_boxes": ("ret4cols", "boxes", ("boxes needs", "[1, 3, 4]")),
    "too_few_rows_for_yolov8": ("ret4cols", "yolov8", ("yolov8 needs", "[1, 3, 4]")),
    "boxes_given_to_ssd": ("det_boxes", "ssd", ("ssd needs", "[1, 1, 6]")),
    "rank_1_for_boxes": ("retflat", "boxes", ("boxes needs", "[6]")),
    "ssd_given_to_yolov8": ("det_ssd", "yolov8", ("yolov8 needs", "[1, 1, 1, 7]")),
    "end_to_end_given_to_yolov8": ("end_to_end", "yolov8", ("fewer anchors (6) than rows (300)",
                                                            "model_type=boxes")),
    "rank_5": ("ret5d", "boxes", ("at most 4 dimensions",)),
    "tuple_output": ("tuple", "boxes", ("tuple of 2 values", "single tensor")),
    "forward_throws": ("throws", "boxes", ("4 channels",)),
}


def register_detect_error(name, net, layout, words):
    def case():
        detect_error(net, layout, *words)
    case.__name__ = "detect_error_" + name
    test(case)


for _name, (_net, _layout, _words) in DETECT_ERRORS.items():
    register_detect_error(_name, _net, _layout, _words)


@test
def batch_without_batch_dimension():
    detect_error("det_malformed", "boxes", "first one the batch", opts="batch_size=2")


@test
def classifier_that_never_ran_says_why():
    classify = ",dnn_classify=dnn_backend=torch:input_size=32x32:model=" + model("cls_color")
    _, err = side_data(drawn("320x240", COLORED), classify.lstrip(","))
    check("classified nothing" in err and "put dnn_detect before it" in err,
          "no warning without boxes:\n" + err[-2000:])
    _, err = side_data(drawn("320x240", COLORED), detect("det_colors", "boxes") + classify +
                       ":target=nothing")
    check("classified nothing" in err and "target" in err, "no warning for target:\n" + err[-2000:])
    _, err = side_data(drawn("320x240", COLORED), detect("det_colors", "boxes") + classify)
    check("classified nothing" not in err, "a warning though boxes were classified")


@test
def fixed_size_detector_without_input_size():
    detect_error("fixed_detector", "boxes", "input_size=WxH", "exported for one input size")


@test
def quantized_output():
    expect_error("dnn_processing=dnn_backend=torch:model=" + model("quantized"), "quantized",
                 "dequantize()")


@test
def classifier_errors():
    vf = detect("det_colors", "boxes") + ",dnn_classify=dnn_backend=torch:model=%s" % model("cls_color")
    expect_error(vf, "input_size", size="320x240")
    src = drawn("320x240", COLORED, fmt="rgb24")
    src[-1] += "," + detect("det_colors", "boxes") + \
        ",dnn_classify=dnn_backend=torch:input_size=16x16:model=" + model("nan")
    rc, out, err = run(src + ["-f", "null", "-"])
    check(rc != 0 and "NaN" in err, "NaN scores not reported:\n" + err[-2000:])


@test
def bad_detect_options():
    detect_error("det_boxes", "boxes", "letterbox needs input_size", opts="letterbox=1")
    detect_error("det_boxes", "yolo", "ssd, boxes or yolov8")
    detect_error("gray", "boxes", "format=gray")
    # input_size and letterbox are options of dnn_detect and dnn_classify.
    expect_error("dnn_processing=dnn_backend=torch:model=%s:input_size=32x32" % model("identity"),
                 "Option not found")
