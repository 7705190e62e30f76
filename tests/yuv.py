"""3-channel models on YUV frames (8-bit, and P010 with 10 bits): the backend
converts YUV to RGB with torch ops (the frame's matrix and range, chroma
repeated over its block) and back (chroma the mean of its block), the
conversion CUDA frames will use; and packed RGB with a fourth byte.

References: swscale where it converts without subsampling (yuv444p), and
elsewhere the BT.601 / BT.709 formulas written out in numpy below.
"""

import numpy as np
import torch
import torch.nn.functional as F

import models
from harness import check, model, run, test

W, H = 96, 64
# Colour blocks on block boundaries of every subsampling, so that the
# chroma of a block is one colour, and testsrc2 for everything in between.
BLOCKS = ("color=c=0x204060:s=%dx%d,drawbox=x=8:y=8:w=32:h=24:color=0xc03020:t=fill,"
          "drawbox=x=48:y=16:w=40:h=40:color=0x30b050:t=fill,"
          "drawbox=x=16:y=40:w=24:h=16:color=0xe0e0f0:t=fill" % (W, H))
TESTSRC = "testsrc2=s=%dx%d" % (W, H)
SUBSAMPLING = {"yuv420p": (1, 1), "yuv422p": (1, 0), "yuv444p": (0, 0),
               "yuv410p": (2, 2), "yuv411p": (2, 0), "nv12": (1, 1), "p010le": (1, 1)}
SEMIPLANAR = ("nv12", "p010le")


def depth(fmt):
    return 10 if fmt == "p010le" else 8
MATRIX = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722), "bt2020": (0.2627, 0.0593),
          "smpte240m": (0.212, 0.087)}


def frames(src, vf, fmt="", n=2):
    """The samples of n frames of format fmt; P010's 10-bit values from the
    top of their 16 bits."""
    rc, out, err = run(["-f", "lavfi", "-i", src + ",trim=end_frame=%d" % n, "-vf", vf,
                        "-f", "rawvideo", "-"])
    check(rc == 0, "ffmpeg failed on %s:\n%s" % (vf, err[-2000:]))
    if fmt == "p010le":
        return np.frombuffer(out, "<u2").astype(np.int32) >> 6
    return np.frombuffer(out, np.uint8).astype(np.int32)


def planes(data, fmt, n=2, w=W, h=H):
    """Y, U, V of n frames of w x h as n x h x w arrays."""
    sw, sh = SUBSAMPLING[fmt]
    cw, ch = -(-w >> sw), -(-h >> sh)
    data = data.reshape(n, -1)
    y = data[:, :w * h].reshape(n, h, w)
    c = data[:, w * h:]
    if fmt in SEMIPLANAR:
        uv = c.reshape(n, ch, cw, 2)
        return y, uv[..., 0], uv[..., 1]
    return y, c[:, :cw * ch].reshape(n, ch, cw), c[:, cw * ch:].reshape(n, ch, cw)


def reference(data, fmt, matrix, full, mix):
    """YUV -> RGB -> mix (3 x 3) -> YUV in float64, rounded at the end."""
    kr, kb = MATRIX[matrix]
    kg = 1 - kr - kb
    unit, top = 1 << (depth(fmt) - 8), (1 << depth(fmt)) - 1
    ys, yo, cs = (top, 0.0, top) if full else (219.0 * unit, 16.0 * unit, 224.0 * unit)
    co = 1 << (depth(fmt) - 1)
    sw, sh = SUBSAMPLING[fmt]
    y, u, v = planes(data, fmt)
    up = lambda c: np.repeat(np.repeat(c, 1 << sh, 1), 1 << sw, 2)[:, :H, :W]
    luma, cb, cr = (y - yo) / ys, (up(u) - co) / cs, (up(v) - co) / cs
    rgb = np.stack([luma + 2 * (1 - kr) * cr,
                    luma - 2 * kb * (1 - kb) / kg * cb - 2 * kr * (1 - kr) / kg * cr,
                    luma + 2 * (1 - kb) * cb], 1).clip(0, 1)
    rgb = np.einsum("oc,nchw->nohw", np.array(mix), rgb).clip(0, 1)
    luma = kr * rgb[:, 0] + kg * rgb[:, 1] + kb * rgb[:, 2]
    chroma = [(rgb[:, 2] - luma) / (2 * (1 - kb)), (rgb[:, 0] - luma) / (2 * (1 - kr))]

    def down(c):
        bw, bh = 1 << sw, 1 << sh
        ph, pw = -H % bh, -W % bw
        c = np.pad(c, ((0, 0), (0, ph), (0, pw)), constant_values=np.nan)
        n, h, w = c.shape
        return np.nanmean(c.reshape(n, h // bh, bh, w // bw, bw), (2, 4))
    q = lambda a: np.clip(np.round(a), 0, top).astype(np.int32)
    return q(luma * ys + yo), q(down(chroma[0]) * cs + co), q(down(chroma[1]) * cs + co)


MIX1X1 = models.MIX1X1
IDENTITY = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]


def dnn(name):
    return "dnn_processing=dnn_backend=torch:channels=3:model=" + model(name)


@test
def rgb_model_on_yuv_frames_matches_the_formulas():
    for fmt in SUBSAMPLING:
        for tag, matrix, full in (("", "bt601", False),
                                  ("scale=out_color_matrix=bt709:out_range=pc,", "bt709", True),
                                  ("scale=out_color_matrix=bt2020:out_range=tv,", "bt2020", False),
                                  ("scale=out_color_matrix=smpte240m:out_range=tv,", "smpte240m",
                                   False)):
            vf = "format=rgb24," + tag + "format=" + fmt
            for name, mix in (("identity", IDENTITY), ("mix1x1", MIX1X1)):
                src = frames(TESTSRC, vf, fmt)
                got = planes(frames(TESTSRC, vf + "," + dnn(name), fmt), fmt)
                want = reference(src, fmt, matrix, full, mix)
                for p, g, w in zip("YUV", got, want):
                    d = np.abs(g - w).max()
                    check(d <= 1, "%s %s %s%s: plane %s off by %d from the %s formulas"
                          % (name, fmt, matrix, " full" if full else "", p, d, matrix))


@test
def rgb_model_on_yuv_frames_round_trip_and_swscale():
    for fmt in SUBSAMPLING:
        src = frames(BLOCKS, "format=" + fmt, fmt)
        out = frames(BLOCKS, "format=%s,%s" % (fmt, dnn("identity")), fmt)
        check(np.abs(out - src).max() <= 1, "%s: identity changes the frames by %d"
              % (fmt, np.abs(out - src).max()))
    # Without subsampling swscale is a reference: to RGB, the model, back.
    ours = frames(TESTSRC, "format=yuv444p," + dnn("mix1x1"))
    theirs = frames(TESTSRC, "format=yuv444p,format=rgb24,%s,format=yuv444p"
                    % dnn("mix1x1").replace(":channels=3", ""))
    check(np.abs(ours - theirs).max() <= 1, "yuv444p: off by %d from swscale"
          % np.abs(ours - theirs).max())


@test
def gray_model_on_p010_takes_10_bits():
    src = frames(TESTSRC, "format=p010le", "p010le")
    out = frames(TESTSRC, "format=p010le,dnn_processing=dnn_backend=torch:model=" + model("gray"),
                 "p010le")
    (ys, us, vs), (yo, uo, vo) = planes(src, "p010le"), planes(out, "p010le")
    check(np.array_equal(yo, 1023 - ys), "p010: Y is not 1023 - Y")
    check(np.array_equal(uo, us) and np.array_equal(vo, vs), "p010: chroma changed")


@test
def packed_rgb_with_a_fourth_byte():
    """RGBA, BGRA, RGB0, BGR0: the colour bytes in memory order through the
    exact 1x1 conv (computed here in numpy), and the fourth byte kept."""
    src = "color=c=0x20406080:s=%dx%d,drawbox=x=8:y=8:w=40:h=24:color=0xc0302040:t=fill" % (W, H)
    for fmt in ("rgba", "bgra", "rgb0", "bgr0"):
        inp = frames(src, "format=" + fmt).reshape(2, H, W, 4)
        out = frames(src, "format=%s,dnn_processing=dnn_backend=torch:model=%s"
                     % (fmt, model("mix1x1"))).reshape(2, H, W, 4)
        mix = np.array(MIX1X1)
        want = np.clip(np.round(np.einsum("oc,nhwc->nhwo", mix, inp[..., :3] / 255.0) * 255), 0, 255)
        check(np.abs(out[..., :3] - want).max() == 0, "%s: colour differs from the 1x1 conv" % fmt)
        check(np.array_equal(out[..., 3], inp[..., 3]), "%s: fourth byte not kept" % fmt)


@test
def gray_upscaler_resizes_the_chroma_bicubically():
    """A 1-channel model that doubles the size writes Y; the backend resizes
    the chroma itself (as it must on CUDA frames), bicubically."""
    for fmt in ("yuv420p", "nv12", "p010le", "yuv444p"):
        top = (1 << depth(fmt)) - 1
        src = planes(frames(TESTSRC, "format=" + fmt, fmt), fmt)
        vf = "format=%s,dnn_processing=dnn_backend=torch:model=%s" % (fmt, model("gray_up2"))
        out = planes(frames(TESTSRC, vf, fmt), fmt, w=2 * W, h=2 * H)
        want_y = np.repeat(np.repeat(top - src[0], 2, 1), 2, 2)
        check(np.array_equal(out[0], want_y), "%s: Y is not the inverted, doubled Y" % fmt)
        for p, s_, o in zip("UV", src[1:], out[1:]):
            c = torch.from_numpy(s_.astype(np.float32)).unsqueeze(1)
            want = F.interpolate(c, size=o.shape[1:], mode="bicubic", align_corners=False)
            want = want.squeeze(1).round().clamp(0, top).numpy().astype(np.int32)
            d = np.abs(o - want).max()
            check(d <= 1, "%s: plane %s off by %d from bicubic resizing" % (fmt, p, d))
