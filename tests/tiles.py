"""dnn_processing on tiles (tile_size, tile_overlap): with an overlap of at
least the model's receptive radius, the frames of the whole frame run at
once, against PyTorch on whole frames.

The frames are random and of odd sizes that the tiles do not divide, so that
a seam, a tile put in the wrong place or an edge tile cut short shows.
"""

import torch
import torch.nn.functional as F

from aoti import package, package_test
from harness import as_frames, check, expect_error, max_diff, model, run, test, torch_filter
from video import quantize, random_frames, raw_input, reference, to_tensor

W, H = 67, 45


def tiled(inp, name, opts, w, h, fmt=None, path=None):
    """The frames out of dnn_processing, as rgb24."""
    vf = ("format=%s," % fmt if fmt else "") + "dnn_processing=dnn_backend=torch:model=" + \
        (path or model(name)) + (":" + opts if opts else "") + ",format=rgb24"
    rc, out, err = run(inp + ["-vf", vf, "-f", "rawvideo", "-"])
    check(rc == 0, "ffmpeg failed: %s\n%s" % (vf, err[-3000:]))
    return as_frames(out, w, h, 3)


@test
def tiles_give_the_frames_of_the_whole_frame():
    # conv3: three 3x3 convolutions, a receptive radius of 3 pixels; the
    # x2 upscaler: 5x5 then 3x3, 3 input pixels.
    frames = random_frames(3, seed=7, w=W, h=H)
    inp = raw_input(frames, "tiles")
    for name, scale, configs in (
            ("conv3", 1, ("tile_size=24x16:tile_overlap=3",
                          "tile_size=20x20:tile_overlap=4:batch_size=3",
                          "tile_size=16x16:tile_overlap=3:nireq=3:batch_size=2",
                          "tile_size=67x1:tile_overlap=3:batch_size=8",
                          "tile_size=200x200")),
            ("upx2_5x5", 2, ("tile_size=24x16:tile_overlap=3",
                             "tile_size=32x32:tile_overlap=5:async=0:batch_size=4"))):
        want = reference(name, frames)
        for cfg in configs:
            got = tiled(inp, name, cfg, W * scale, H * scale)
            check(len(got) == len(frames), "%s %s: %d frames out of %d"
                  % (name, cfg, len(got), len(frames)))
            d = max_diff(got, want)
            check(d <= 1, "%s %s: off PyTorch on whole frames by %d" % (name, cfg, d))


@test
def tiles_with_too_little_overlap_show_their_seams():
    # The test above can see a seam: with less context than the receptive
    # radius, the tiles' outputs differ from the whole frame's.
    frames = random_frames(2, seed=8, w=W, h=H)
    got = tiled(raw_input(frames, "seams"), "conv3", "tile_size=24x16:tile_overlap=1", W, H)
    check(max_diff(got, reference("conv3", frames)) > 1,
          "tile_overlap=1 under a 3-pixel receptive radius gave the whole frame's output")


@test
def tiles_of_yuv_and_other_formats():
    # On CPU frames the tiles' output is converted into the frame a band of
    # rows at a time, with margins for the chroma's filter: the frame must
    # be the one the whole output gives, also with bands of 1 row, a model
    # that writes Y only, an alpha byte and 10-bit samples.
    frames = random_frames(3, seed=9, w=W, h=H)
    inp = raw_input(frames, "tiles-yuv")
    for name, scale, fmt, cfg in (
            ("conv3", 1, "yuv420p", "tile_size=24x16:tile_overlap=3:batch_size=2"),
            ("conv3", 1, "yuv420p", "tile_size=67x1:tile_overlap=3:batch_size=8"),
            ("conv3", 1, "nv12", "tile_size=24x16:tile_overlap=3"),
            ("conv3", 1, "yuv444p", "tile_size=24x16:tile_overlap=3"),
            ("conv3", 1, "p010le", "tile_size=24x16:tile_overlap=3"),
            ("conv3", 1, "rgba", "tile_size=24x16:tile_overlap=3"),
            ("upx2_5x5", 2, "yuv420p", "tile_size=20x12:tile_overlap=3:batch_size=3"),
            ("gray", 1, "yuv420p", "tile_size=24x16")):
        whole = tiled(inp, name, "", W * scale, H * scale, fmt)
        got = tiled(inp, name, cfg, W * scale, H * scale, fmt)
        check(max_diff(got, whole) <= 1, "%s %s %s: tiles off the whole frame by %d"
              % (name, fmt, cfg, max_diff(got, whole)))
    expect_error("dnn_processing=" + torch_filter("nan_one", "tile_size=16x16"), "NaN",
                 fmt="yuv420p")


@test
def tiles_of_temporal_windows():
    # Every frame of a window is cut at the same place.
    frames = random_frames(7, seed=10, w=W, h=H)
    inp = raw_input(frames, "tiles-window")
    for name, opts, layout in (("win_mean", "frames=3", "time"),
                               ("stacked_mean", "frames=3:window=channels", "channels")):
        want = reference(name, frames, 3, layout)
        got = tiled(inp, name, opts + ":tile_size=24x16:batch_size=2", W, H)
        check(max_diff(got, want) <= 1, "%s with tiles: off PyTorch by %d"
              % (name, max_diff(got, want)))


@test
def tiles_refused_where_they_cannot_work():
    expect_error("dnn_processing=" + torch_filter("rec_ema", "tile_size=32x32"),
                 "recurrent", "tile_size")
    expect_error("dnn_processing=" + torch_filter("crop1", "tile_size=32x32:tile_overlap=2"),
                 "whole factor")
    expect_error("dnn_detect=dnn_backend=torch:model_type=boxes:tile_size=32x32:model="
                 + model("det_boxes"), "tile_size applies to dnn_processing")


@package_test
def tiles_through_packages():
    # A package with a dynamic size runs the tiles; one with a fixed batch
    # of 4 gets its last batch of tiles padded.
    frames = random_frames(3, seed=11, w=W, h=H)
    inp = raw_input(frames, "tiles-pt2")
    want = reference("conv1x1", frames)
    for pt2, cfg in (("conv1x1_dyn", "tile_size=24x16"),
                     ("conv1x1_batch", "tile_size=24x16:batch_size=4"),
                     ("conv1x1_batch", "tile_size=16x16:batch_size=4:async=0")):
        got = tiled(inp, None, cfg, W, H, path=package(pt2))
        check(max_diff(got, want) <= 1, "%s %s: off PyTorch by %d"
              % (pt2, cfg, max_diff(got, want)))


@package_test
def fixed_size_packages_run_any_frame_in_tiles():
    # A package exported for 32x24 frames only runs larger ones in tiles of
    # its size (with the context the option gives) and smaller ones padded
    # to it by reflection and cropped back, instead of being refused.
    pt2 = package("conv3_static")
    frames = random_frames(3, seed=12, w=W, h=H)
    inp = raw_input(frames, "fixed")
    for cfg in ("tile_overlap=3", "tile_overlap=4:nireq=2", "tile_overlap=3:async=0"):
        got = tiled(inp, None, cfg, W, H, path=pt2)
        check(max_diff(got, reference("conv3", frames)) <= 1, "%s %s: off PyTorch on whole "
              "frames by %d" % (pt2, cfg, max_diff(got, reference("conv3", frames))))
    small = random_frames(2, seed=13, w=20, h=15)
    got = tiled(raw_input(small, "fixed-small"), None, "", 20, 15, path=pt2)
    x = F.pad(to_tensor(small), (0, 12, 0, 9), mode="reflect")
    with torch.no_grad():
        want = quantize(torch.jit.load(model("conv3"))(x)[:, :, :15, :20])
    check(max_diff(got, want) <= 1, "20x15 frames padded to 32x24: off PyTorch by %d"
          % max_diff(got, want))
    expect_error("dnn_processing=dnn_backend=torch:tile_size=30x30:model=" + pt2,
                 "32x24 input only", "unset tile_size")
    expect_error("dnn_processing=dnn_backend=torch:tile_overlap=12:model=" + pt2,
                 "leaves nothing")


@test
def tiles_into_frames_with_negative_line_sizes():
    # vflip after the filter hands it output frames whose rows run upwards,
    # before it input frames so: the bands are written by line size.
    frames = random_frames(2, seed=14, w=W, h=H)
    inp = raw_input(frames, "tiles-vflip")
    for fmt in ("yuv420p", "rgb24", "nv12"):
        for before, after in (("", ",vflip"), ("vflip,", "")):
            outs = []
            for cfg in ("", ":tile_size=24x16:tile_overlap=3"):
                vf = "format=%s,%sdnn_processing=%s%s,format=rgb24" % (
                    fmt, before, torch_filter("conv3"), cfg + after)
                rc, out, err = run(inp + ["-vf", vf, "-f", "rawvideo", "-"])
                check(rc == 0, "ffmpeg failed: %s\n%s" % (vf, err[-3000:]))
                outs.append(as_frames(out, W, H, 3))
            check(max_diff(outs[0], outs[1]) <= 1, "%s %s: tiles off the whole frame by %d"
                  % (fmt, before or after, max_diff(outs[0], outs[1])))
