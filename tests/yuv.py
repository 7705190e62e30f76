"""3-channel models on YUV frames (8-bit, and P010 with 10 bits): the backend
converts YUV to RGB with torch ops (the frame's matrix and range, chroma
interpolated linearly from where the frame's chroma_location sites it) and
back (chroma downscaled to its sites by a cubic), the conversion CUDA frames
will use; and packed RGB with a fourth byte.

References: swscale where it converts without subsampling (yuv444p), the
BT.601 / BT.709 formulas and the resampling written out in numpy below, and,
for the quality of the chroma, a smooth picture known in floating point,
against which ours must do at least as well as swscale's default.
"""

import numpy as np
import torch
import torch.nn.functional as F

import models
from harness import check, model, run, test, write

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


# Where chroma sample 0 lies, in luma samples, for 4:2:0 (scaled by
# 2^s - 1 for a subsampling of 2^s, as swscale does); center where the
# frame names no location.
SITING = {"center": (0.5, 0.5), "left": (0.0, 0.5), "topleft": (0.0, 0.0)}


def up_axis(c, axis, s, siting, n):
    """Chroma samples c at luma positions 0 .. n - 1 along axis: linear
    between the two nearest sites, the edge samples beyond the plane."""
    if not s:
        return c
    u = (np.arange(n) - siting * ((1 << s) - 1)) / (1 << s)
    f = np.floor(u)
    last = c.shape[axis] - 1
    lo = np.take(c, np.clip(f, 0, last).astype(int), axis)
    hi = np.take(c, np.clip(f + 1, 0, last).astype(int), axis)
    shape = [1] * c.ndim
    shape[axis] = n
    return lo + (hi - lo) * (u - f).reshape(shape)


def catmull_rom(x):
    x = np.abs(x)
    return np.where(x < 1, (1.5 * x - 2.5) * x * x + 1,
                    np.where(x < 2, ((-0.5 * x + 2.5) * x - 4) * x + 2, 0.0))


def down_axis(v, axis, s, siting):
    """Full-resolution values v at the chroma sites along axis: weighted by
    Catmull-Rom's cubic 4 chroma samples wide, centered on each site, the
    edge values beyond the frame."""
    if not s:
        return v
    n, step = v.shape[axis], 1 << s
    sites = np.arange(-(-n // step)) * step + siting * (step - 1)
    x = np.arange(-3 * step, n + 3 * step)
    w = catmull_rom((x[None, :] - sites[:, None]) / step)
    w /= w.sum(1, keepdims=True)
    vals = np.take(v, np.clip(x, 0, n - 1), axis)
    return np.moveaxis(np.tensordot(w, np.moveaxis(vals, axis, 0), (1, 0)), 0, axis)


def reference(data, fmt, matrix, full, mix, siting="center"):
    """YUV -> RGB -> mix (3 x 3) -> YUV in float64, rounded at the end."""
    kr, kb = MATRIX[matrix]
    kg = 1 - kr - kb
    unit, top = 1 << (depth(fmt) - 8), (1 << depth(fmt)) - 1
    ys, yo, cs = (top, 0.0, top) if full else (219.0 * unit, 16.0 * unit, 224.0 * unit)
    co = 1 << (depth(fmt) - 1)
    sw, sh = SUBSAMPLING[fmt]
    sx, sy = SITING[siting]
    y, u, v = planes(data, fmt)
    up = lambda c: up_axis(up_axis(c, 1, sh, sy, H), 2, sw, sx, W)
    luma, cb, cr = (y - yo) / ys, (up(u) - co) / cs, (up(v) - co) / cs
    rgb = np.stack([luma + 2 * (1 - kr) * cr,
                    luma - 2 * kb * (1 - kb) / kg * cb - 2 * kr * (1 - kr) / kg * cr,
                    luma + 2 * (1 - kb) * cb], 1).clip(0, 1)
    rgb = np.einsum("oc,nchw->nohw", np.array(mix), rgb).clip(0, 1)
    luma = kr * rgb[:, 0] + kg * rgb[:, 1] + kb * rgb[:, 2]
    chroma = [(rgb[:, 2] - luma) / (2 * (1 - kb)), (rgb[:, 0] - luma) / (2 * (1 - kr))]

    down = lambda c: down_axis(down_axis(c, 1, sh, sy), 2, sw, sx)
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
            for siting in ("center", "left", "topleft"):
                # Frames that name no location are sited at the centre.
                loc = "" if siting == "center" else "scale=out_chroma_loc=%s," % siting
                if matrix != "bt601" and siting != "center":
                    continue
                vf = "format=rgb24," + tag + loc + "format=" + fmt
                for name, mix in (("identity", IDENTITY), ("mix1x1", MIX1X1)):
                    src = frames(TESTSRC, vf, fmt)
                    got = planes(frames(TESTSRC, vf + "," + dnn(name), fmt), fmt)
                    want = reference(src, fmt, matrix, full, mix, siting)
                    for p, g, w in zip("YUV", got, want):
                        d = np.abs(g - w).max()
                        check(d <= 1, "%s %s %s%s %s: plane %s off by %d from the formulas"
                              % (name, fmt, matrix, " full" if full else "", siting, p, d))


@test
def rgb_model_on_yuv_frames_round_trip_and_swscale():
    # Inside the colour blocks (two chroma samples from their edges, where
    # resampling mixes the colours) the identity gives the frames back.
    inner = np.zeros((H, W), bool)
    for x, y, w, h in ((8, 8, 32, 24), (48, 16, 40, 40), (16, 40, 24, 16)):
        inner[y + 8:y + h - 8, x + 8:x + w - 8] = True
    for fmt in SUBSAMPLING:
        sw, sh = SUBSAMPLING[fmt]
        src = planes(frames(BLOCKS, "format=" + fmt, fmt), fmt)
        out = planes(frames(BLOCKS, "format=%s,%s" % (fmt, dnn("identity")), fmt), fmt)
        for p, a, b in zip("YUV", src, out):
            mask = inner if p == "Y" else inner[::1 << sh, ::1 << sw]
            d = np.abs(a - b)[:, mask].max()
            check(d <= 1, "%s: identity changes plane %s inside the blocks by %d" % (fmt, p, d))
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


# --- the quality of the chroma, against swscale ------------------------------

QW, QH = 192, 128


def smooth(x, y):
    """models.SMOOTH at luma positions x, y (arrays): R, G, B in [0, 1]."""
    return np.stack([0.5 + 0.35 * np.sin(2 * np.pi * (x / lx + y / ly) + ph)
                     for lx, ly, ph in models.SMOOTH])


def ycbcr(rgb):
    """BT.601 full-range Y, Cb, Cr as 8-bit codes / 255 (H.273: Cb, Cr are
    255 x the colour difference + 128)."""
    kr, kb = MATRIX["bt601"]
    luma = kr * rgb[0] + (1 - kr - kb) * rgb[1] + kb * rgb[2]
    return (luma, (rgb[2] - luma) / (2 * (1 - kb)) + 128 / 255.0,
            (rgb[0] - luma) / (2 * (1 - kr)) + 128 / 255.0)


def chroma_sites(siting):
    """Luma coordinates of the chroma samples of a QW x QH yuv420p frame."""
    sx, sy = SITING[siting]
    return np.meshgrid(np.arange(QW // 2) * 2 + sx, np.arange(QH // 2) * 2 + sy)


def psnr(a, b):
    return 10 * np.log10(1 / np.mean((np.asarray(a, float) - b) ** 2))


def full_range(siting):
    # The frames' range and siting, set on frames scale does not convert.
    return ("scale=in_range=pc:out_range=pc:in_chroma_loc=%s:out_chroma_loc=%s"
            % (siting, siting))


def run_raw(data, in_fmt, vf):
    path = write("chroma-%s.raw" % in_fmt, data)
    rc, out, err = run(["-f", "rawvideo", "-pix_fmt", in_fmt, "-s", "%dx%d" % (QW, QH),
                        "-i", path, "-vf", vf, "-f", "rawvideo", "-"])
    check(rc == 0, "ffmpeg failed on %s:\n%s" % (vf, err[-2000:]))
    return np.frombuffer(out, np.uint8)


@test
def chroma_into_the_model_is_at_least_swscale():
    # yuv420p frames sampled from the smooth picture where their chroma
    # sits; what the model gets in R and B (its output luma, through a model
    # that repeats that channel) against the picture, and what swscale's
    # default conversion to rgb24 gives.
    y, x = np.mgrid[0:QH, 0:QW].astype(float)
    luma = ycbcr(smooth(x, y))[0]
    for siting in ("center", "left"):
        _, cb, cr = ycbcr(smooth(*chroma_sites(siting)))
        q = lambda a: np.clip(np.round(a * 255), 0, 255).astype(np.uint8).tobytes()
        data = q(luma) + q(cb) + q(cr)
        truth = smooth(x, y)
        theirs = run_raw(data, "yuv420p", full_range(siting) + ",format=rgb24")
        theirs = theirs.reshape(QH, QW, 3).transpose(2, 0, 1) / 255.0
        for c, name in ((0, "repeat_red"), (2, "repeat_blue")):
            ours = run_raw(data, "yuv420p", full_range(siting) + "," + dnn(name))
            ours = ours[:QW * QH].reshape(QH, QW) / 255.0
            p_ours, p_theirs = psnr(ours, truth[c]), psnr(theirs[c], truth[c])
            check(p_ours >= p_theirs, "%s siting, %s into the model: PSNR %.2f dB, swscale "
                  "%.2f dB" % (siting, "RGB"[c], p_ours, p_theirs))


@test
def chroma_out_of_the_model_is_at_least_swscale():
    # The model paints the smooth picture (in 8-bit steps) into yuv420p
    # frames; swscale's default conversion gets the same picture as rgb24.
    # Both chroma planes against the picture's chroma at its sites.
    y, x = np.mgrid[0:QH, 0:QW].astype(float)
    picture = np.clip(np.round(smooth(x, y) * 255), 0, 255).astype(np.uint8)
    rgb = picture.transpose(1, 2, 0).tobytes()
    gray = np.full(QW * QH * 3 // 2, 128, np.uint8).tobytes()
    for siting in ("center", "left"):
        want = ycbcr(smooth(*chroma_sites(siting)))[1:]
        ours = run_raw(gray, "yuv420p", full_range(siting) + "," + dnn("smooth_picture"))
        theirs = run_raw(rgb, "rgb24", "scale=out_range=pc:out_chroma_loc=%s,format=yuv420p"
                         % siting)
        for i, name in enumerate(("Cb", "Cr")):
            plane = lambda d: d[QW * QH + i * QW * QH // 4:][:QW * QH // 4].reshape(
                QH // 2, QW // 2) / 255.0
            p_ours, p_theirs = psnr(plane(ours), want[i]), psnr(plane(theirs), want[i])
            check(p_ours >= p_theirs, "%s siting, %s out of the model: PSNR %.2f dB, swscale "
                  "%.2f dB" % (siting, name, p_ours, p_theirs))
