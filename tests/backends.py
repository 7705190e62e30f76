"""The torch backend next to another one: a build with OpenVINO and LibTorch
(make check's ASSERT=2 build when ./configure found OpenVINO), as a
distribution would build it.

The backends' option classes share one namespace, in which the first option
of a name wins; and OpenVINO's paths through the code the backends share
(frames freed by the backend, failed inferences, dnn_detect's layouts) run
here on OpenVINO itself.  OpenVINO models are made with OpenVINO's Python
API: written op by op, or converted from the TorchScript test models.
"""

import os
import re

import numpy as np
import torch

from analytics import check_box, drawn, side_data
from harness import (FFMPEG, MODELS, Skip, as_frames, check, max_diff, model, process,
                     raw_frames, run, source, test, torch_filter)

OPENVINO_FFMPEG = os.environ.get("OPENVINO_FFMPEG", "")


def needs_openvino():
    if not OPENVINO_FFMPEG:
        raise Skip("no build with OpenVINO here (make check builds one when "
                   "./configure installed the openvino wheel)")
    try:
        import openvino  # noqa: F401
    except ImportError:
        raise Skip("the openvino Python package is not installed")


# The channel mix of the OpenVINO model: rows are outputs, unequal so that
# a swap of R and B shows.
MIX = np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.0, 0.3, 0.7]], np.float32)


def ov_mix(w, h):
    """A 1x1 convolution by MIX on a 1 x 3 x h x w input (OpenVINO's
    backend takes static shapes only)."""
    import openvino as ov
    import openvino.opset13 as ops
    path = os.path.join(MODELS, "ov_mix_%dx%d.xml" % (w, h))
    if not os.path.exists(path):
        x = ops.parameter([1, 3, h, w], np.float32, name="x")
        y = ops.convolution(x, ops.constant(MIX.reshape(3, 3, 1, 1)), [1, 1], [0, 0], [0, 0],
                            [1, 1])
        r = ops.result(y)
        r.output(0).get_tensor().set_names({"y"})
        ov.save_model(ov.Model([r], [x], "mix"), path)
    return path


def ov_detector(name, w, h, named=True):
    """The TorchScript test detector `name`, converted to OpenVINO for a
    frame of w x h (input x, output out; unnamed with named=False)."""
    import openvino as ov
    path = os.path.join(MODELS, "ov_%s_%dx%d%s.xml" % (name, w, h, "" if named else "_unnamed"))
    if not os.path.exists(path):
        m = ov.convert_model(torch.jit.load(model(name)), example_input=torch.zeros(1, 3, h, w),
                             input=[1, 3, h, w])
        if named:
            m.inputs[0].get_tensor().set_names({"x"})
            m.outputs[0].get_tensor().set_names({"out"})
        ov.save_model(m, path)
    return path


def ov_constant_boxes(boxes, w, h):
    """A detector that returns `boxes` whatever the frame: [1, N, len(box)]."""
    import openvino as ov
    import openvino.opset13 as ops
    cols = len(boxes[0])
    path = os.path.join(MODELS, "ov_const_%d_%dx%d.xml" % (cols, w, h))
    if not os.path.exists(path):
        x = ops.parameter([1, 3, h, w], np.float32, name="x")
        mean = ops.reduce_mean(x, ops.constant(np.array([1, 2, 3], np.int64)), keep_dims=True)
        zero = ops.multiply(ops.reshape(mean, ops.constant(np.array([1, 1, 1], np.int64)), False),
                            ops.constant(np.zeros((1, 1, 1), np.float32)))
        y = ops.add(ops.constant(np.array([boxes], np.float32)), zero)
        r = ops.result(y)
        r.output(0).get_tensor().set_names({"out"})
        ov.save_model(ov.Model([r], [x], "boxes"), path)
    return path


def ov_detect(path, layout, extra=""):
    # The converted detectors take [0, 1] NCHW like their TorchScript twins.
    vf = ("dnn_detect=dnn_backend=openvino:model=%s:input=x:output=out:model_type=%s:"
          "layout=nchw:scale=255" % (path, layout))
    return vf + (":" + extra if extra else "")


@test
def no_option_is_taken_by_another_backend():
    needs_openvino()
    for name in ("dnn_processing", "dnn_detect", "dnn_classify"):
        rc, out, err = run(["-h", "filter=" + name], OPENVINO_FFMPEG)
        text = out.decode()
        sections = dict(re.findall(r"^(\S+) AVOptions:\n((?:[ ].*\n)*)", text, re.M))
        for section in ("dnn_base", "dnn_openvino", "dnn_th"):
            check(section in sections, "-h filter=%s lists no %s options:\n%s"
                  % (name, section, text))
        owner = {}
        for section, body in sections.items():
            # Options are indented by 3 spaces, their named values by 5.
            for opt in re.findall(r"^   (\w+) ", body, re.M):
                check(opt not in owner, "%s: option %s is in both %s and %s: the first "
                      "hides the second" % (name, opt, owner.get(opt), section))
                owner[opt] = section
        # Every filter has a threads option of its own (AVFilterContext's).
        for section in ("dnn_base", "dnn_openvino", "dnn_th"):
            check("threads" not in re.findall(r"^   (\w+) ", sections[section], re.M),
                  "%s: threads in %s hides the filter's own threads" % (name, section))


def normalized_mix1x1(frames_hwc, mean, std):
    m = torch.jit.load(model("mix1x1"))
    with torch.no_grad():
        x = torch.from_numpy(frames_hwc.copy()).permute(0, 3, 1, 2).float() / 255
        x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        y = m(x)
    return (y * 255).clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@test
def torch_options_reach_torch_next_to_openvino():
    needs_openvino()
    opts = "batch_size=3:norm_mean=0.25&0.5&0.75:norm_std=0.5&0.5&0.5"
    src = as_frames(raw_frames("64x48", 7), 64, 48, 3)
    want = normalized_mix1x1(src, [0.25, 0.5, 0.75], [0.5, 0.5, 0.5])
    for binary in (FFMPEG, OPENVINO_FFMPEG):
        got = as_frames(process(binary, "64x48", 7, "rgb24",
                                "dnn_processing=" + torch_filter("mix1x1", opts)), 64, 48, 3)
        check(max_diff(got, want) <= 1, "%s: norm_mean/norm_std output off PyTorch by %d"
              % (binary, max_diff(got, want)))
    args = ["-f", "lavfi", "-i", "testsrc2=s=64x48", "-frames:v", "3", "-vf",
            "format=rgb24,dnn_processing=" + torch_filter("identity", opts)]
    rc, out, err = run(args + ["-f", "null", "-"], OPENVINO_FFMPEG, loglevel="verbose")
    check(rc == 0 and "batch size 3," in err,
          "batch_size=3 did not reach the torch backend (exit %d):\n%s" % (rc, err[-2000:]))


@test
def openvino_processes_frames_through_the_shared_code():
    needs_openvino()
    src = as_frames(raw_frames("64x48", 6), 64, 48, 3).astype(np.float32)
    want = np.clip(np.rint(np.einsum("oc,nhwc->nhwo", MIX, src)), 0, 255)
    path = ov_mix(64, 48)
    for cfg in ("async=0", "async=1", "async=1:nireq=3"):
        vf = ("dnn_processing=dnn_backend=openvino:model=%s:input=x:output=y:layout=nchw:%s"
              % (path, cfg))
        got = as_frames(process(OPENVINO_FFMPEG, "64x48", 6, "rgb24", vf), 64, 48, 3)
        check(len(got) == 6, "%s: %d frames out of 6" % (cfg, len(got)))
        check(max_diff(got, want) <= 1, "%s: OpenVINO output off by %d" % (cfg, max_diff(got, want)))


@test
def interpolate_is_refused_on_openvino():
    needs_openvino()
    vf = ("dnn_processing=dnn_backend=openvino:model=%s:input=x:output=y:interpolate=2"
          % ov_mix(64, 48))
    rc, out, err = run(source("64x48", 3, "rgb24") + ["-vf", vf, "-f", "null", "-"],
                       OPENVINO_FFMPEG)
    check(rc != 0 and "interpolate needs dnn_backend=torch" in err,
          "interpolate with OpenVINO: rc %d\n%s" % (rc, err[-2000:]))


@test
def openvino_detections_match_the_torch_twins():
    needs_openvino()
    rect = (30, 20, 50, 40)
    src = drawn("200x100", [rect + ("white",)], frames=3)
    for name, layout in (("det_boxes", "boxes"), ("det_yolov8", "yolov8")):
        path = ov_detector(name, 200, 100)
        want, _ = side_data(src, "dnn_detect=dnn_backend=torch:model=%s:model_type=%s"
                            % (model(name), layout))
        for cfg in ("async=0", "async=1"):
            got, _ = side_data(src, ov_detect(path, layout, cfg), binary=OPENVINO_FFMPEG)
            what = "openvino %s %s" % (layout, cfg)
            check(len(got) == 3 and len(want) == 3, "%s: %d frames, torch %d, want 3"
                  % (what, len(got), len(want)))
            for g, w in zip(got, want):
                check([b[4] for b in g] == [b[4] for b in w] and len(g) > 0,
                      "%s: labels %s, torch %s" % (what, [b[4] for b in g], [b[4] for b in w]))
                for gb, wb in zip(g, w):
                    check(abs(gb[5] - wb[5]) < 1e-3, "%s: confidence %s, torch %s"
                          % (what, gb[5], wb[5]))
                    check_box(gb, rect, what)


@test
def failed_openvino_inferences_end_the_stream():
    needs_openvino()
    # dnn_detect refuses [1, N, 5] for boxes in the completion callback.
    bad = ov_constant_boxes([[4, 4, 20, 20, 0.9], [30, 10, 60, 40, 0.8]], 64, 48)
    for cfg in ("async=0", "async=1", "async=1:nireq=3"):
        args = ["-f", "lavfi", "-i", "testsrc2=s=64x48:r=25", "-frames:v", "6", "-vf",
                "format=rgb24," + ov_detect(bad, "boxes", cfg)]
        rc, out, err = run(args + ["-f", "null", "-"], OPENVINO_FFMPEG, timeout=60)
        check(rc != 0, "%s: exit 0 after a failed inference:\n%s" % (cfg, err[-2000:]))
        check("needs [N, 6]" in err, "%s: the filter's reason is missing:\n%s" % (cfg, err[-2000:]))
    # A model OpenVINO cannot set up on the first frame.
    unnamed = ov_detector("det_boxes", 64, 48, named=False)
    args = ["-f", "lavfi", "-i", "testsrc2=s=64x48:r=25", "-frames:v", "3", "-vf",
            "format=rgb24,dnn_detect=dnn_backend=openvino:model=%s:model_type=boxes" % unnamed]
    rc, out, err = run(args + ["-f", "null", "-"], OPENVINO_FFMPEG, timeout=60)
    check(rc != 0 and "output port name" in err,
          "a model without output names: exit %d:\n%s" % (rc, err[-2000:]))
