"""Video models through dnn_processing: temporal windows (frames=N) and
recurrent state, against PyTorch run on the same frames.

The frames are random, so that each differs from the next: a window or a
state that takes the wrong frame cannot give the right output.
"""

import os

import numpy as np
import torch

from fate_refs import run_model
from harness import (MODELS, PACKAGES, Skip, as_frames, check, expect_error, max_diff, model,
                     run, test, torch_filter, write)

W, H = 64, 48


def random_frames(n, seed=1, w=W, h=H):
    rng = np.random.RandomState(seed)
    return rng.randint(0, 256, (n, h, w, 3), dtype=np.uint8)


def raw_input(frames, name):
    """ffmpeg input arguments that read the frames, at 25 fps."""
    n, h, w, _ = frames.shape
    path = write(name + ".rgb", frames.tobytes())
    return ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "%dx%d" % (w, h), "-r", "25",
            "-i", path]


def filter_frames(inp, vf, out_w=W, out_h=H):
    """Run vf on the input; the output frames and their pts."""
    rc, out, err = run(inp + ["-vf", vf, "-f", "framemd5", "-"])
    check(rc == 0, "ffmpeg failed: %s\n%s" % (vf, err[-3000:]))
    pts = [int(l.split(",")[2]) for l in out.decode().splitlines() if not l.startswith("#")]
    rc, out, err = run(inp + ["-vf", vf, "-f", "rawvideo", "-"])
    check(rc == 0, "ffmpeg failed: %s\n%s" % (vf, err[-3000:]))
    return as_frames(out, out_w, out_h, 3), pts


def to_tensor(frames):
    return torch.from_numpy(frames.copy()).permute(0, 3, 1, 2).float() / 255


def quantize(y):
    return (y * 255).clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def reference(name, frames, window=1, layout="time", recurrent=False, resets=()):
    """PyTorch on the same frames: on the window around each frame, or in a
    loop with the state carried (fate_refs.run_model)."""
    with torch.no_grad():
        return quantize(run_model(torch.jit.load(model(name)), to_tensor(frames), window,
                                  recurrent, layout, resets))


def dnn(name, opts):
    return "dnn_processing=" + torch_filter(name, opts)


# --- temporal windows ----------------------------------------------------------

@test
def window_models_match_pytorch_at_both_ends():
    n = 9
    frames = random_frames(n)
    inp = raw_input(frames, "window")
    for name, opts, layout in (("win_mean", "frames=5", "time"),
                               ("win_mean", "frames=3", "time"),
                               ("win_first", "frames=5", "time"),
                               ("win_last", "frames=5", "time"),
                               ("stacked_first", "frames=3:window=channels", "channels"),
                               ("stacked_mean", "frames=7:window=channels", "channels")):
        got, pts = filter_frames(inp, dnn(name, opts))
        check(len(got) == n, "%s %s: %d frames out of %d" % (name, opts, len(got), n))
        check(pts == list(range(n)), "%s %s: pts %s" % (name, opts, pts))
        want = reference(name, frames, int(opts.split("=")[1].split(":")[0]), layout)
        d = max_diff(got, want)
        check(d <= 1, "%s %s: off by %d against PyTorch" % (name, opts, d))


@test
def window_pick_is_bitexact():
    # The oldest and newest frames of the window are the input frames
    # themselves: the window holds the right frames in the right order.
    n = 8
    frames = random_frames(n, seed=2)
    inp = raw_input(frames, "pick")
    got, _ = filter_frames(inp, dnn("win_first", "frames=5"))
    want = frames[[max(k - 2, 0) for k in range(n)]]
    check(np.array_equal(got, want), "win_first: not frame k-2 of the input")
    got, _ = filter_frames(inp, dnn("win_last", "frames=5"))
    want = frames[[min(k + 2, n - 1) for k in range(n)]]
    check(np.array_equal(got, want), "win_last: not frame k+2 of the input")


@test
def window_shorter_than_the_stream_and_single_frame():
    for n in (1, 2):
        frames = random_frames(n, seed=3)
        got, pts = filter_frames(raw_input(frames, "short%d" % n), dnn("win_mean", "frames=5"))
        check(len(got) == n and pts == list(range(n)), "%d frames: got %d" % (n, len(got)))
        check(max_diff(got, reference("win_mean", frames, 5)) <= 1,
              "%d frames: wrong output" % n)


@test
def window_is_normalized_frame_by_frame():
    n = 5
    frames = random_frames(n, seed=17)
    inp = raw_input(frames, "norm")
    mean, std = torch.tensor([0.25, 0.5, 0.75]).view(1, 3, 1, 1), 0.5
    x = (to_tensor(frames) - mean) / std
    for name, opts in (("win_first", "frames=3"), ("stacked_first", "frames=3:window=channels")):
        got, _ = filter_frames(inp, dnn(name, opts + ":norm_mean=0.25&0.5&0.75:norm_std=0.5"))
        want = quantize(x[[max(k - 1, 0) for k in range(n)]])
        check(max_diff(got, want) <= 1, "%s %s: not normalized per frame" % (name, opts))


SIZE_CHANGE = "scale=w='if(lt(n,%d),64,80)':h='if(lt(n,%d),48,60)':eval=frame"


def size_change_input(n, cut, seed):
    """Random frames that change size at frame cut, and the frames as the
    filter gets them: 64x48 before the cut and 80x60 from it."""
    frames = random_frames(n, seed=seed)
    inp = raw_input(frames, "resize%d" % seed)
    scale = SIZE_CHANGE % (cut, cut)
    rc, out, err = run(inp + ["-vf", scale, "-f", "rawvideo", "-"])
    check(rc == 0, err[-2000:])
    a, b = split_output(out, n)
    return inp, scale, a, b


def split_output(data, n):
    """n frames, 64x48 ones then 80x60 ones, as two arrays."""
    small, big = 64 * 48 * 3, 80 * 60 * 3
    cut, rest = divmod(n * big - len(data), big - small)
    check(rest == 0 and 0 < cut < n, "%d bytes: not %d frames with one size change"
          % (len(data), n))
    return (as_frames(data[:cut * small], 64, 48, 3),
            as_frames(data[cut * small:], 80, 60, 3))


@test
def window_restarts_at_a_size_change():
    n, cut = 11, 5
    inp, scale, a, b = size_change_input(n, cut, seed=4)
    for opts in ("frames=5", "frames=5:batch_size=3", "frames=3:async=0"):
        rc, out, err = run(inp + ["-vf", scale + "," + dnn("win_mean", opts), "-f", "rawvideo", "-"])
        check(rc == 0, err[-2000:])
        got = split_output(out, n)
        nf = int(opts.split("=")[1].split(":")[0])
        for g, s in zip(got, (a, b)):
            check(max_diff(g, reference("win_mean", s, nf)) <= 1,
                  "%s: wrong output around the size change" % opts)


def framemd5_lines(inp, vf):
    rc, out, err = run(inp + ["-vf", vf, "-f", "framemd5", "-"])
    check(rc == 0, "failed: %s\n%s" % (vf, err[-2000:]))
    return [l for l in out.decode().splitlines() if not l.startswith("#")]


def same_frames_in_every_config(inp, scale, n, name, opts, configs):
    """All n frames, and the same ones, with every configuration as with
    the first."""
    base = framemd5_lines(inp, scale + "," + dnn(name, opts + configs[0]))
    check(len(base) == n, "%d frames out of %d" % (len(base), n))
    for cfg in configs[1:]:
        got = framemd5_lines(inp, scale + "," + dnn(name, opts + cfg))
        check(got == base, "%s %s%s differs from %s" % (name, opts, cfg, configs[0]))


WINDOW_CONFIGS = ["async=0", "async=1:nireq=1", "async=1:nireq=2", "async=1:nireq=4",
                  "async=0:batch_size=2", "async=1:batch_size=3", "async=1:nireq=4:batch_size=4"]


@test
def window_requests_and_batches_give_identical_frames():
    n, cut = 23, 12
    inp, scale, _, _ = size_change_input(n, cut, seed=5)
    same_frames_in_every_config(inp, scale, n, "win_mean", "frames=5:", WINDOW_CONFIGS)


@test
def window_on_yuv_and_gray_frames():
    # The window takes the frames as the format gives them: the Y plane of
    # gray frames to a 1-channel model, YUV converted for a 3-channel one.
    n = 6
    frames = random_frames(n, seed=6)
    inp = raw_input(frames, "yuvwin")
    for fmt, opts in (("yuv420p", "channels=3"), ("gray", "")):
        base = framemd5_lines(inp, "format=%s,%s" % (fmt, dnn("win_first", "frames=3:" + opts)))
        shifted = framemd5_lines(inp, "format=%s,%s" % (fmt, dnn("identity", opts)))
        # win_first at frame k is frame k-1 (k >= 1): its hash is frame k-1's.
        check([l.split(",")[-1] for l in base[1:]] == [l.split(",")[-1] for l in shifted[:-1]],
              "%s: the window's oldest frame is not the frame before" % fmt)


@test
def window_errors_are_clear():
    expect_error(dnn("win_mean", "frames=4"), "frames=4", "odd")
    expect_error(dnn("conv1x1", "frames=3"), "frames=3", "B x 3 x C x H x W")
    expect_error("dnn_detect=dnn_backend=torch:model=%s:frames=3" % model("det_boxes"),
                 "frames applies to dnn_processing")


@test
def window_package_matches_torchscript():
    if not PACKAGES:
        raise Skip("this LibTorch loads no AOTInductor packages")
    n = 7
    frames = random_frames(n, seed=7)
    inp = raw_input(frames, "winpkg")
    pkg = "dnn_processing=dnn_backend=torch:model=%s:frames=5" % os.path.join(MODELS, "win_mean_dyn.pt2")
    got, pts = filter_frames(inp, pkg)
    check(pts == list(range(n)), "package: pts %s" % pts)
    check(max_diff(got, reference("win_mean", frames, 5)) <= 1, "package: wrong output")
    rc, _, err = run(inp + ["-vf", pkg.replace("frames=5", "frames=3"), "-f", "null", "-"])
    check(rc != 0 and "takes [1, 5, 3" in err, "package with frames=3: %s" % err[-1500:])


# --- recurrent models ----------------------------------------------------------

@test
def recurrent_model_matches_a_pytorch_loop():
    n = 10
    frames = random_frames(n, seed=8)
    inp = raw_input(frames, "ema")
    got, pts = filter_frames(inp, dnn("rec_ema", ""))
    check(pts == list(range(n)), "pts %s" % pts)
    check(max_diff(got, reference("rec_ema", frames, recurrent=True)) <= 1,
          "rec_ema: wrong output")


def counts(frames_out):
    """The counter model's output: one count per frame."""
    check(all((f == f.flat[0]).all() for f in frames_out), "counter frames not uniform")
    return [int(f.flat[0]) for f in frames_out]


@test
def recurrent_state_that_is_the_input_survives_the_next_frame():
    # The request's input tensor is filled again with a later frame while
    # the next step still needs the state: the backend keeps a copy.
    n = 40
    frames = random_frames(n, seed=15)
    inp = raw_input(frames, "previous")
    want = frames[[max(k - 1, 0) for k in range(n)]]
    for cfg in ("async=0", "nireq=2", "nireq=4"):
        got, _ = filter_frames(inp, dnn("rec_previous", cfg))
        check(np.array_equal(got, want), "rec_previous %s: not the frame before" % cfg)


@test
def recurrent_state_resets():
    n = 10
    frames = random_frames(n, seed=9)
    inp = raw_input(frames, "counter")
    got, _ = filter_frames(inp, dnn("rec_counter", ""))
    check(counts(got) == list(range(1, n + 1)), "no reset: %s" % counts(got))
    got, _ = filter_frames(inp, dnn("rec_counter", "reset_interval=4"))
    check(counts(got) == [1, 2, 3, 4, 1, 2, 3, 4, 1, 2], "reset_interval=4: %s" % counts(got))
    # A size change resets the state.
    n, cut = 9, 4
    inp, scale, _, _ = size_change_input(n, cut, seed=10)
    rc, out, err = run(inp + ["-vf", scale + "," + dnn("rec_counter", ""), "-f", "rawvideo", "-"])
    check(rc == 0, err[-2000:])
    a, b = split_output(out, n)
    check(counts(a) + counts(b) == list(range(1, len(a) + 1)) + list(range(1, len(b) + 1)),
          "size change: %s" % (counts(a) + counts(b)))


@test
def recurrent_state_resets_at_scene_changes():
    # Two scenes of five frames, each a still image with a little noise:
    # scdet marks the cut, and scene_reset starts the state afresh there.
    rng = np.random.RandomState(11)
    scenes = [rng.randint(0, 256, (1, H, W, 3)) for _ in range(2)]
    frames = np.concatenate([np.clip(s + rng.randint(-2, 3, (5, H, W, 3)), 0, 255)
                             for s in scenes]).astype(np.uint8)
    inp = raw_input(frames, "scenes")
    got, _ = filter_frames(inp, "scdet," + dnn("rec_counter", "scene_reset=1"))
    check(counts(got) == [1, 2, 3, 4, 5, 1, 2, 3, 4, 5], "scene_reset: %s" % counts(got))
    got, _ = filter_frames(inp, "scdet," + dnn("rec_counter", ""))
    check(counts(got) == list(range(1, 11)), "without scene_reset: %s" % counts(got))
    want = reference("rec_ema", frames, recurrent=True, resets=(5,))
    got, _ = filter_frames(inp, "scdet," + dnn("rec_ema", "scene_reset=1"))
    check(max_diff(got, want) <= 1, "rec_ema with scene_reset: wrong output")


@test
def recurrent_requests_give_identical_frames():
    n, cut = 17, 9
    inp, scale, _, _ = size_change_input(n, cut, seed=12)
    same_frames_in_every_config(inp, scale, n, "rec_ema", "",
                                ["async=0", "async=1:nireq=1", "async=1:nireq=2",
                                 "async=1:nireq=4"])


@test
def window_and_state_together():
    # The state goes through the windows in stream order: the moving
    # average of the windows' means.
    n = 9
    frames = random_frames(n, seed=13)
    inp = raw_input(frames, "both")
    want = reference("win_ema", frames, window=5, recurrent=True)
    for cfg in ("async=0", "nireq=3"):
        got, pts = filter_frames(inp, dnn("win_ema", "frames=5:" + cfg))
        check(pts == list(range(n)), "pts %s" % pts)
        check(max_diff(got, want) <= 1, "win_ema %s: wrong output" % cfg)


@test
def recurrent_errors_are_clear():
    expect_error(dnn("rec_grows", ""), "took 1 state tensors and returned 2")
    expect_error(dnn("rec_reshapes", ""), "state tensor 0 went from [1] to [2]")
    expect_error(dnn("rec_plain", ""), "returns (output, state)")
    expect_error(dnn("two_inputs", ""), "takes 2 inputs")
    expect_error(dnn("rec_ema", "batch_size=2"), "batch_size=1")
    for cfg in ("async=0", "async=1:nireq=1", "async=1:nireq=2", "async=1:nireq=4"):
        expect_error(dnn("rec_fails", cfg), "the fourth step fails", frames=12)


@test
def recurrent_package_matches_torchscript():
    # A package of two models, "first" and "next", as the README exports it.
    if not PACKAGES:
        raise Skip("this LibTorch loads no AOTInductor packages")
    n = 9
    frames = random_frames(n, seed=18)
    inp = raw_input(frames, "recpkg")
    path = os.path.join(MODELS, "rec_ema_dyn.pt2")
    want = reference("rec_ema", frames, recurrent=True)
    for cfg in ("", ":async=0", ":nireq=3"):
        got, pts = filter_frames(inp, "dnn_processing=dnn_backend=torch:model=" + path + cfg)
        check(pts == list(range(n)), "package%s: pts %s" % (cfg, pts))
        check(max_diff(got, want) <= 1, "package%s: not the PyTorch loop's frames" % cfg)
    expect_error("dnn_processing=dnn_backend=torch:model=%s:model_name=next" % path,
                 "takes 2 inputs", "'first' and 'next'")


@test
def fastdvdnet_matches_pytorch():
    n = 6
    frames = random_frames(n, seed=16)
    got, pts = filter_frames(raw_input(frames, "fastdvdnet"),
                             dnn("fastdvdnet", "frames=5:window=channels:batch_size=2"))
    check(pts == list(range(n)), "pts %s" % pts)
    d = max_diff(got, reference("fastdvdnet", frames, 5, "channels"))
    check(d <= 1, "FastDVDnet: off by %d against PyTorch" % d)


@test
def frvsr_matches_its_pytorch_loop():
    n = 5
    frames = random_frames(n, seed=14)
    got, pts = filter_frames(raw_input(frames, "frvsr"), dnn("frvsr", "nireq=2"), W * 4, H * 4)
    check(pts == list(range(n)), "pts %s" % pts)
    d = max_diff(got, reference("frvsr", frames, recurrent=True))
    check(d <= 1, "FRVSR: off by %d against its PyTorch loop" % d)
