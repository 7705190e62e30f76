"""make demo: a x2 sharpening upscaler on a testsrc2 clip, through
ffmpeg -vf dnn_processing=dnn_backend=torch.

    python tools/demo.py OUTDIR      (FFMPEG names the ffmpeg to run)
"""

import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import models  # noqa: E402


def main(outdir):
    ffmpeg = os.environ["FFMPEG"]
    os.makedirs(outdir, exist_ok=True)
    model = os.path.join(outdir, "sharpen_x2.pt")
    models.build("sharpen").save(model)

    dnn = "dnn_processing=dnn_backend=torch:model=" + model
    clip = os.path.join(outdir, "sharpen_x2.y4m")
    side = os.path.join(outdir, "side_by_side.png")
    src = ["-f", "lavfi", "-i", "testsrc2=s=320x180:r=25:d=2"]
    base = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    subprocess.run(base + src + ["-vf", "format=rgb24," + dnn + ",format=yuv420p", clip],
                   check=True)
    # Input (nearest-neighbour x2, so the sizes match) beside the model's output.
    graph = ("format=rgb24,split[a][b];[a]scale=iw*2:ih*2:flags=neighbor[in];"
             "[b]" + dnn + "[out];[in][out]hstack")
    subprocess.run(base + src + ["-vf", graph, "-frames:v", "1", "-update", "1", side],
                   check=True)
    print("demo: ffmpeg -vf %s" % dnn)
    print("demo: clip (640x360, 50 frames): %s" % clip)
    print("demo: input | output, first frame: %s" % side)


if __name__ == "__main__":
    main(sys.argv[1])
