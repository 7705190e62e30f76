"""Frame interpolation (dnn_processing interpolate=K): the frames between
each two, their count and timestamps, across cuts, against PyTorch on the
same pairs.
"""

import os

import numpy as np
import torch

from harness import (MODELS, PACKAGES, as_frames, check, expect_error, max_diff, model,
                     run, test)
from video import dnn, filter_frames, framemd5_lines, raw_input, size_change_input, to_tensor

W, H = 64, 48
CONFIGS = ["async=0", "nireq=1", "nireq=3", "batch_size=2", "nireq=3:batch_size=2"]


def multiples_of_12(n, seed):
    """Random frames whose samples are multiples of 12: the blend of two at
    j/K, K = 2, 3 or 4, is a whole number, so the frames between are exact."""
    rng = np.random.RandomState(seed)
    return (rng.randint(0, 22, (n, H, W, 3)) * 12).astype(np.uint8)


def blended(frames, k, cuts=()):
    """What interpolate=k gives with the blending model: each frame, then
    (1 - t) a + t b at t = j/k before the next, or a again where the next
    frame starts a cut."""
    out = []
    for i, b in enumerate(frames):
        if i:
            a = frames[i - 1].astype(np.float64)
            for j in range(1, k):
                out.append(a if i in cuts else np.round(a + j * (b - a) / k))
        out.append(b)
    return np.array(out).astype(np.uint8)


@test
def interpolation_gives_every_frame_between():
    n = 5
    frames = multiples_of_12(n, seed=21)
    inp = raw_input(frames, "pairs")
    for k in (2, 3, 4):
        want = blended(frames, k)
        for cfg in CONFIGS:
            got, pts = filter_frames(inp, dnn("blend", "interpolate=%d:%s" % (k, cfg)))
            check(len(got) == k * (n - 1) + 1, "K=%d %s: %d frames out of %d"
                  % (k, cfg, len(got), n))
            check(pts == list(range(k * (n - 1) + 1)), "K=%d %s: pts %s" % (k, cfg, pts))
            d = max_diff(got, want)
            check(d == 0, "K=%d %s: off by %d from (1 - t) a + t b" % (k, cfg, d))
    # One frame: nothing between, and the frame itself at the end.
    got, pts = filter_frames(raw_input(frames[:1], "one"), dnn("blend", "interpolate=4"))
    check(len(got) == 1 and pts == [0] and max_diff(got, frames[:1]) == 0,
          "one frame: %d frames, pts %s" % (len(got), pts))


@test
def interpolation_keeps_the_input_frames_and_exact_timestamps():
    # Variable frame rate: the frames between fall at j/K of each gap, in a
    # time base of K ticks for each of the input's; the input frames leave
    # untouched (their checksums), also on YUV frames.
    frames = multiples_of_12(5, seed=22)
    inp = raw_input(frames, "vfr")
    src = "format=yuv420p,setpts='N*N+N'"
    md5 = lambda lines: [l.split(",")[-1] for l in lines]
    base = framemd5_lines(inp + ["-fps_mode", "passthrough"], src)
    for k in (2, 3):
        rc, out, err = run(inp + ["-vf", src + "," + dnn("blend", "interpolate=%d" % k),
                                  "-fps_mode", "passthrough", "-f", "framemd5", "-"])
        check(rc == 0, err[-2000:])
        text = out.decode()
        check("#tb 0: 1/%d" % (25 * k) in text, "K=%d: time base:\n%s" % (k, text[:400]))
        lines = [l for l in text.splitlines() if not l.startswith("#")]
        pts = [int(l.split(",")[2]) for l in lines]
        dur = [int(l.split(",")[3]) for l in lines]
        p = [i * i + i for i in range(5)]
        want = [p[i] * k + j * (p[i + 1] - p[i]) for i in range(4) for j in range(k)] + [p[4] * k]
        check(pts == want, "K=%d: pts %s, not %s" % (k, pts, want))
        check(dur[:-1] == [b - a for a, b in zip(want, want[1:])],
              "K=%d: durations %s" % (k, dur))
        check(md5(lines)[::k] == md5(base), "K=%d: the input frames changed" % k)


@test
def interpolation_across_a_size_change_and_a_scene_cut():
    # At a size change the frames between repeat the last frame of the old
    # size, and leave at that size; the same with scene_reset=1 at a cut
    # that scdet marks.  Nothing is lost at either.
    n, k = 7, 3
    inp, scale, a, b = size_change_input(n, 3, seed=23)
    cut = len(a)
    for cfg in ("async=0", "nireq=3:batch_size=2"):
        rc, out, err = run(inp + ["-vf", scale + "," + dnn("blend", "interpolate=%d:%s" % (k, cfg)),
                                  "-f", "rawvideo", "-"])
        check(rc == 0, err[-2000:])
        small = k * cut * W * H * 3
        check(len(out) == small + (k * (n - cut - 1) + 1) * 80 * 60 * 3,
              "%s: %d bytes, not %d frames around the size change" % (cfg, len(out), k * (n - 1) + 1))
        got_a = as_frames(out[:small], W, H, 3)
        got_b = as_frames(out[small:], 80, 60, 3)
        want_a = np.concatenate([blended(a, k), np.repeat(a[-1:], k - 1, 0)])
        check(max_diff(got_a, want_a) <= 1, "%s: before the size change" % cfg)
        check(max_diff(got_b, blended(b, k)) <= 1, "%s: after the size change" % cfg)

    rng = np.random.RandomState(24)
    scenes = [rng.randint(1, 20, (1, H, W, 3)) * 12 for _ in range(2)]
    frames = np.concatenate([np.repeat(s, 3, 0) for s in scenes]).astype(np.uint8)
    frames[1] = frames[1] // 24 * 24
    inp = raw_input(frames, "cut")
    got, _ = filter_frames(inp, "scdet," + dnn("blend", "interpolate=2:scene_reset=1"))
    check(max_diff(got, blended(frames, 2, cuts=(3,))) == 0, "scene_reset: not a repeat at the cut")
    got, _ = filter_frames(inp, "scdet," + dnn("blend", "interpolate=2"))
    check(max_diff(got, blended(frames, 2)) == 0, "without scene_reset: not blended at the cut")


@test
def interpolation_on_yuv_frames_and_without_t():
    # A model without t makes the frame halfway; on YUV frames it gets the
    # pairs in RGB as a window of 3-channel frames does: the frames between
    # are those of a 3-frame window model taking the mean of its first two.
    frames = multiples_of_12(6, seed=25)
    inp = raw_input(frames, "yuvpairs")
    for fmt in ("yuv420p", "nv12", "rgba"):
        pre = "format=%s," % fmt
        mid = framemd5_lines(inp, pre + dnn("midpoint", "interpolate=2:batch_size=2"))
        blend = framemd5_lines(inp, pre + dnn("blend", "interpolate=2"))
        win = framemd5_lines(inp, pre + dnn("win_pair_mean", "frames=3:channels=3"))
        src = framemd5_lines(inp, pre.rstrip(","))
        h = lambda lines: [l.split(",")[-1] for l in lines]
        check(len(mid) == 11, "%s: %d frames" % (fmt, len(mid)))
        check(h(mid)[::2] == h(src), "%s: the input frames changed" % fmt)
        check(h(mid)[1::2] == h(win)[1:], "%s: not the frames a window makes" % fmt)
        check(h(blend) == h(mid), "%s: the blend at t = 1/2 is not the midpoint" % fmt)
    got, _ = filter_frames(inp, dnn("stacked_mean", "interpolate=2:window=channels"))
    check(max_diff(got, blended(frames, 2)) == 0, "window=channels: not the midpoints")


@test
def interpolation_refuses_what_it_cannot_do():
    expect_error(dnn("blend", "interpolate=1"), "interpolate=1", "2 or more")
    expect_error(dnn("midpoint", "interpolate=3"), "interpolate=2", "t: Tensor")
    expect_error(dnn("pair_up2", "interpolate=2"), "128x96", "size of the frames around")
    expect_error(dnn("blend", "interpolate=2:frames=3"), "pairs", "frames")
    expect_error(dnn("blend", "interpolate=2:tile_size=32x32"), "pairs", "tile_size")
    expect_error(dnn("rec_ema", "interpolate=2"), "recurrent")
    expect_error("format=yuv420p," + dnn("blend", "interpolate=2:channels=1"),
                 "1 channel", "format=gray")
    expect_error(dnn("blend", ""), "t: Tensor", "interpolate")


if PACKAGES:
    @test
    def interpolation_through_a_package():
        frames = multiples_of_12(4, seed=26)
        inp = raw_input(frames, "pkgpairs")
        path = os.path.join(MODELS, "blend_dyn.pt2")
        for cfg in ("interpolate=3", "interpolate=4:nireq=3"):
            got, pts = filter_frames(inp, "dnn_processing=dnn_backend=torch:model=%s:%s"
                                     % (path, cfg))
            k = int(cfg.split("=")[1].split(":")[0])
            check(max_diff(got, blended(frames, k)) == 0, "package %s: not the blend" % cfg)
            check(pts == list(range(k * 3 + 1)), "package %s: pts %s" % (cfg, pts))


@test
def ifnet_matches_a_pytorch_loop():
    # RIFE's IFNet (tests/models.py): the frames between from ffmpeg, batched
    # and on several requests, against the model called pair by pair.
    frames = np.random.RandomState(27).randint(0, 256, (4, H, W, 3)).astype(np.uint8)
    net = torch.jit.load(model("ifnet"))
    x = to_tensor(frames)
    for k, cfg in ((2, "batch_size=2:nireq=2"), (3, "async=0")):
        want = []
        with torch.no_grad():
            for i in range(len(frames) - 1):
                want.append(x[i:i + 1])
                for j in range(1, k):
                    want.append(net(torch.stack([x[i], x[i + 1]])[None],
                                    torch.tensor([j / k])))
        want.append(x[-1:])
        want = (torch.cat(want) * 255).clamp(0, 255).round().to(torch.uint8)
        want = want.permute(0, 2, 3, 1).numpy()
        got, pts = filter_frames(raw_input(frames, "ifnet"),
                                 dnn("ifnet", "interpolate=%d:%s" % (k, cfg)))
        check(pts == list(range(k * 3 + 1)), "K=%d: pts %s" % (k, pts))
        d = max_diff(got, want)
        check(d <= 1, "IFNet K=%d %s: off by %d against PyTorch" % (k, cfg, d))
