"""The filter among others: what the filters around it hand it, or ask of
it, must not change its frames.  vflip hands out frames whose line sizes
are negative, to the filter before it and from the filter after it.
"""

import os
import re

from harness import ASSERT_FFMPEG, FFMPEG, TMP, check, model, run, test, torch_filter, write

W, H = 64, 48
# The formats the backend converts, each with a model it takes: 3-channel
# models on packed RGB and (converted) YUV, 1-channel ones on gray and luma.
FLIP_CASES = [(fmt, "upx2") for fmt in ("rgb24", "bgr24", "rgba", "bgra", "rgb0", "bgr0",
                                         "yuv420p", "yuv422p", "yuv444p", "nv12", "p010le")] + \
             [(fmt, "gray_up2") for fmt in ("gray", "yuv420p", "nv12", "p010le")] + \
             [("grayf32", "gray")]


def raw(args, what):
    rc, out, err = run(args + ["-f", "rawvideo", "-"])
    check(rc == 0, "%s failed (%d):\n%s" % (what, rc, err[-2000:]))
    return out


def raw_input(path, fmt, w, h):
    return ["-f", "rawvideo", "-pix_fmt", fmt, "-s", "%dx%d" % (w, h), "-i", path]


@test
def vflip_before_and_after_gives_the_flipped_frames():
    src = ["-f", "lavfi", "-i", "testsrc2=s=%dx%d" % (W, H), "-frames:v", "3"]
    for fmt, name in FLIP_CASES:
        dnn = "dnn_processing=dnn_backend=torch:model=" + model(name)
        out_w, out_h = (W, H) if name == "gray" else (2 * W, 2 * H)
        case = "%s, %s" % (fmt, name)

        # After: the filter writes into the flipped buffers vflip gives it.
        got = raw(src + ["-vf", "format=%s,%s,vflip" % (fmt, dnn)], case + ", vflip after")
        plain = write("plain.raw", raw(src + ["-vf", "format=%s,%s" % (fmt, dnn)], case))
        want = raw(raw_input(plain, fmt, out_w, out_h) + ["-vf", "vflip"], "vflip")
        check(got == want, "%s: vflip after the filter changes its frames" % case)

        # Before: the filter reads flipped frames; the same frames stored
        # top-down are the reference.
        got = raw(src + ["-vf", "format=%s,vflip,%s" % (fmt, dnn)], case + ", vflip before")
        flipped = write("flipped.raw", raw(src + ["-vf", "format=%s,vflip" % fmt], "vflip"))
        want = raw(raw_input(flipped, fmt, W, H) + ["-vf", dnn], case)
        check(got == want, "%s: vflip before the filter changes its frames" % case)


@test
def end_of_stream_keeps_the_input_duration():
    """With frames in flight at the end of the stream, the filter's EOF must
    come at the input's end: fps after it pads up to that time."""
    detect = "dnn_detect=dnn_backend=torch:model=%s:model_type=boxes" % model("det_boxes")
    classify = ("dnn_classify=dnn_backend=torch:input_size=32x32:model=%s:target=nothing"
                % model("cls_color"))
    filters = [("dnn_processing=dnn_backend=torch:model=%s:%s" % (model("conv3"), opts))
               for opts in ("async=1:nireq=4:batch_size=4", "async=1:nireq=2", "async=0")]
    filters += [detect + ":nireq=4:batch_size=4", classify + ":nireq=4"]
    for vf in filters:
        rc, out, err = run(["-f", "lavfi", "-i", "testsrc2=s=64x48:r=25:d=0.4",
                            "-vf", "format=rgb24,%s,fps=25" % vf, "-f", "framecrc", "-"])
        check(rc == 0, "%s failed:\n%s" % (vf, err[-2000:]))
        frames = [l for l in out.decode().splitlines() if not l.startswith("#")]
        check(len(frames) == 10, "%d frames out of fps=25 after 10 frames in: %s"
              % (len(frames), vf))


def sizes_after(args, vf, binary=None):
    """The size of each frame the filter sends, as showinfo after it sees it."""
    rc, out, err = run(args + ["-vf", vf + ",showinfo", "-f", "null", "-"], binary,
                       loglevel="info")
    check(rc == 0, "%s failed (%d):\n%s" % (vf, rc, err[-2000:]))
    return re.findall(r"\] n: *\d+ .* s:(\d+x\d+) ", err)


@test
def frames_leave_with_the_size_of_their_link():
    # A size change inside the graph, and one the CLI leaves to the graph
    # (-reinit_filter 0): the output link follows the model's output size
    # for the new input size, as scale's own does, and every frame has it
    # (the --assert-level=2 build aborts on a frame that does not).
    resize = "scale=w='if(lt(n,3),64,80)':h='if(lt(n,3),48,60)':eval=frame"
    src = ["-f", "lavfi", "-i", "testsrc2=s=64x48:r=25:d=0.24"]
    pattern = os.path.join(TMP, "sizes%d.png")
    for start, size in ((1, "64x48"), (4, "80x60")):
        rc, _, err = run(["-y", "-f", "lavfi", "-i", "testsrc2=s=%s:r=25" % size, "-frames:v", "3",
                          "-pix_fmt", "rgb24", "-start_number", str(start), pattern])
        check(rc == 0, "could not write the PNG frames: " + err)
    # (A filter that passes frames on as they come, format among them, would
    # trip the assertion on its own output link: scale follows the size.)
    pngs = ["-reinit_filter", "0", "-framerate", "25", "-i", pattern]
    for args, vf in ((src, "format=rgb24," + resize), (pngs, "scale=w=iw:h=ih:eval=frame")):
        want = ["%dx%d" % (2 * int(s.split("x")[0]), 2 * int(s.split("x")[1]))
                for s in sizes_after(args, vf)]
        check(len(set(want)) == 2, "the source does not change size: %s" % want)
        for cfg in ("", "async=0", "nireq=4:batch_size=4"):
            for binary in filter(None, (FFMPEG, ASSERT_FFMPEG)):
                got = sizes_after(args, vf + ",dnn_processing=" + torch_filter("upx2", cfg),
                                  binary)
                check(got == want, "%s, %s, %s: sizes %s, want %s"
                      % (binary, vf, cfg or "defaults", got, want))
    # A model whose output size changes from call to call is an error.
    rc, out, err = run(src + ["-vf", "format=rgb24,dnn_processing=" +
                              torch_filter("taller", "async=0"), "-f", "null", "-"],
                       loglevel="verbose")
    check(rc != 0 and "for that size before" in err and "must depend on the input size alone" in err,
          "exit %d, log:\n%s" % (rc, err[-2000:]))
