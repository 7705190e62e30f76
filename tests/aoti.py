"""AOTInductor packages (.pt2) beside their TorchScript twins.

The packages are compiled from the same test models by models.packages()
(the first run of the suite takes a minute or two for it); they must give
the same frames as the TorchScript models within 1 per sample.  Where the
LibTorch under test is older than 2.10, a package must be refused instead.
"""

import json
import os
import random
import shutil
import string
import tempfile
import zipfile

import torch

from harness import (MODELS, PACKAGES, TMP, as_frames, check, expect_error, max_diff,
                     model, process, run, source, test)


def package_test(fn):
    """A test of the packages, run where the LibTorch under test loads them."""
    return test(fn) if PACKAGES else fn


def package(name):
    return os.path.join(MODELS, name + ".pt2")


def torch_vf(path, extra=""):
    return "dnn_processing=dnn_backend=torch:model=" + path + (":" + extra if extra else "")


def same_as_twin(pt2, twin, size, frames, extra=""):
    w, h = map(int, size.split("x"))
    want = as_frames(process(None, size, frames, "rgb24", torch_vf(model(twin))), w, h, 3)
    got = as_frames(process(None, size, frames, "rgb24", torch_vf(package(pt2), extra)), w, h, 3)
    check(max_diff(got, want) <= 1, "%s %s %s: off by %d from its TorchScript twin"
          % (pt2, size, extra, max_diff(got, want)))


@package_test
def package_gives_the_frames_of_its_torchscript_twin():
    for size in ("64x48", "80x60", "42x18"):
        same_as_twin("conv1x1_dyn", "conv1x1", size, 3)
    same_as_twin("conv1x1_dyn", "conv1x1", "64x48", 7, "async=1:nireq=3")
    same_as_twin("conv1x1_static", "conv1x1", "64x48", 3)


@package_test
def package_with_a_dynamic_batch():
    # 11 frames: the last batch of 3 is padded to the 4 the package runs.
    for cfg in ("batch_size=4:async=0", "batch_size=4:async=1:nireq=2", "batch_size=2"):
        same_as_twin("conv1x1_batch", "conv1x1", "64x48", 11, cfg)


@package_test
def static_package_refuses_another_shape_at_load():
    # Another frame size runs in tiles (tests/tiles.py); another rank or
    # batch cannot.
    expect_error(torch_vf(package("conv1x1_static"), "frames=3"), "takes [1, 3, 48, 64]",
                 "gets [1, 3, 3, 48, 64]", size="64x48")
    expect_error(torch_vf(package("conv1x1_static"), "batch_size=2"), "batch_size", size="64x48")
    expect_error(torch_vf(package("conv1x1_batch")), "exported", size="64x48")


@package_test
def package_shapes_checked_without_the_environment():
    # The backend reads the shapes a package takes from the package; it
    # neither sets nor trusts AOTI_RUNTIME_CHECK_INPUTS, with which the
    # package itself would print to stderr, or read out of bounds with 0.
    saved = os.environ.get("AOTI_RUNTIME_CHECK_INPUTS")
    os.environ["AOTI_RUNTIME_CHECK_INPUTS"] = "0"
    try:
        args = source("64x48", 2, "rgb24")
        args[-1] += "," + torch_vf(package("conv1x1_static"), "frames=3")
        rc, _, err = run(args + ["-f", "null", "-"], loglevel="quiet")
        check(rc != 0, "a package ran on a shape it was not exported for")
        check(err.strip() == "", "-v quiet printed:\n" + err[-2000:])
        expect_error(torch_vf(package("conv1x1_static"), "frames=3"), "takes [1, 3, 48, 64]",
                     "gets [1, 3, 3, 48, 64]", size="64x48")
    finally:
        if saved is None:
            del os.environ["AOTI_RUNTIME_CHECK_INPUTS"]
        else:
            os.environ["AOTI_RUNTIME_CHECK_INPUTS"] = saved


@package_test
def package_detector_finds_the_drawn_box():
    for path in (model("det_boxes"), package("det_boxes_160")):
        args = ["-f", "lavfi", "-i", "color=c=black:s=320x240,drawbox=x=40:y=60:w=100:h=90:"
                "color=white:t=fill,trim=end_frame=2", "-vf",
                "format=rgb24,dnn_detect=dnn_backend=torch:model=%s:model_type=boxes:"
                "input_size=160x160:letterbox=1,showinfo" % path]
        rc, out, err = run(args + ["-f", "null", "-"], loglevel="info")
        check(rc == 0, err[-2000:])
        boxes = [l for l in err.splitlines() if "region: (40, 60) -> (140, 150)" in l]
        check(len(boxes) == 2, "%s: want the drawn box in both frames:\n%s" % (path, err[-2000:]))


def rewrite_package(src, dst, rename=None, edit=None):
    """Copy a package, duplicating its model under other names, or editing
    the contents of its files."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if edit:
                data = edit(item.filename, data)
            if rename and "/data/aotinductor/model/" in item.filename:
                for name in rename:
                    zout.writestr(item.filename.replace("/model/", "/%s/" % name), data)
            else:
                zout.writestr(item.filename, data)
    return dst


@package_test
def package_with_several_models():
    path = rewrite_package(package("conv1x1_static"), os.path.join(TMP, "two.pt2"),
                           rename=("first", "second"))
    expect_error(torch_vf(path), "several models", "first, second", "model_name")
    expect_error(torch_vf(path, "model_name=third"), "no model 'third'")
    got = process(None, "64x48", 2, "rgb24", torch_vf(path, "model_name=second"))
    ref = process(None, "64x48", 2, "rgb24", torch_vf(model("conv1x1")))
    check(max_diff(as_frames(got, 64, 48, 3), as_frames(ref, 64, 48, 3)) <= 1,
          "model_name=second does not run the model")


@package_test
def package_shapes_come_from_its_metadata():
    # Not from the generated C++, whose wording any PyTorch release may
    # change: a package whose sources are blank (LibTorch's loader still
    # wants their names) checks its shapes, and one without the metadata
    # key is refused.
    src = package("conv1x1_static")
    path = rewrite_package(src, os.path.join(TMP, "no_sources.pt2"),
                           edit=lambda name, data: b"" if name.endswith(".cpp") else data)
    got = process(None, "64x48", 2, "rgb24", torch_vf(path))
    ref = process(None, "64x48", 2, "rgb24", torch_vf(model("conv1x1")))
    check(max_diff(as_frames(got, 64, 48, 3), as_frames(ref, 64, 48, 3)) <= 1,
          "the package without its sources gives other frames")
    expect_error(torch_vf(path, "frames=3"), "takes [1, 3, 48, 64]", "gets [1, 3, 3, 48, 64]",
                 size="64x48")

    def forget_shapes(name, data):
        if name.endswith("wrapper_metadata.json"):
            meta = json.loads(data)
            check("dnn_input_shapes" in meta, "models.py wrote no dnn_input_shapes")
            del meta["dnn_input_shapes"]
            return json.dumps(meta).encode()
        return data
    path = rewrite_package(src, os.path.join(TMP, "no_shapes.pt2"), edit=forget_shapes)
    expect_error(torch_vf(path), "does not say which input shapes", "dnn_input_shapes")


@package_test
def package_for_another_device():
    def to_cuda(name, data):
        if name.endswith("wrapper_metadata.json"):
            return data.replace(b'"AOTI_DEVICE_KEY": "cpu"', b'"AOTI_DEVICE_KEY": "cuda"')
        return data
    path = rewrite_package(package("conv1x1_static"), os.path.join(TMP, "cuda.pt2"),
                           edit=to_cuda)
    expect_error(torch_vf(path), "compiled for cuda", "device=cuda")


@package_test
def broken_packages():
    data = open(package("conv1x1_dyn"), "rb").read()
    truncated = os.path.join(TMP, "truncated.pt2")
    with open(truncated, "wb") as f:
        f.write(data[:len(data) // 2])
    expect_error(torch_vf(truncated), "Could not load")
    foreign = os.path.join(TMP, "foreign.pt2")
    with zipfile.ZipFile(foreign, "w") as z:
        z.writestr("readme.txt", "not a model")
    expect_error(torch_vf(foreign), "Could not load")
    expect_error(torch_vf(package("tuple_static")), "list of 2 values")


@package_test
def package_entry_outside_its_folder_is_refused():
    escape = "/tmp/dnntest-escape-%d" % os.getpid()
    src = package("conv1x1_static")
    path = os.path.join(TMP, "escape.pt2")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zout:
        top = zin.namelist()[0].split("/")[0]
        for item in zin.infolist():
            zout.writestr(item.filename, zin.read(item.filename))
        zout.writestr(top + "/data/aotinductor/model/" + "../" * 16 + escape.lstrip("/"), b"x")
    expect_error(torch_vf(path), "outside its own folder")
    check(not os.path.exists(escape), "the package wrote " + escape)


@package_test
def package_without_a_compiled_library_is_refused():
    # LibTorch's loader compiles a package's C++ with the flags the package
    # gives: loading a model file must never run a compiler.
    src = package("conv1x1_static")
    path = os.path.join(TMP, "source_only.pt2")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            if not item.filename.endswith(".so"):
                zout.writestr(item.filename, zin.read(item.filename))
    expect_error(torch_vf(path), "no compiled library", "does not compile")


def loader_folders(library):
    """Folders under /tmp where LibTorch's loader extracted this library."""
    found = set()
    for entry in os.listdir("/tmp"):
        top = os.path.join("/tmp", entry)
        if len(entry) != 6 or not os.path.isdir(top) or os.path.islink(top):
            continue
        for sub in os.listdir(top):
            if os.path.exists(os.path.join(top, sub, "data", "aotinductor", "model", library)):
                found.add(top)
    return found


@package_test
def failed_package_load_leaves_no_folder_behind():
    # A library that does not load is found in a folder of the backend's
    # own, under TMPDIR, before LibTorch's loader (which would leave its
    # extraction folder behind) sees it; nothing else in /tmp is touched,
    # not even a folder that looks like the loader's (another process may
    # be loading the same package).
    src = package("conv1x1_static")
    library = [n for n in zipfile.ZipFile(src).namelist() if n.endswith(".so")][0]

    def break_library(name, data):
        return b"not a library" if name.endswith(".so") else data
    path = rewrite_package(src, os.path.join(TMP, "broken_library.pt2"), edit=break_library)
    while True:
        lookalike = "/tmp/" + "".join(random.choice(string.ascii_letters) for _ in range(6))
        if not os.path.exists(lookalike):
            break
    os.makedirs(os.path.join(lookalike, "pkg", "data", "aotinductor", "model"))
    open(os.path.join(lookalike, "pkg", "data", "aotinductor", "model",
                      os.path.basename(library)), "wb").close()
    tmpdir = tempfile.mkdtemp(dir=TMP)
    try:
        before = loader_folders(os.path.basename(library))
        os.environ["TMPDIR"] = tmpdir
        try:
            expect_error(torch_vf(path), "does not load here")
        finally:
            del os.environ["TMPDIR"]
        left = loader_folders(os.path.basename(library)) - before
        check(not left, "the failed load left %s behind" % sorted(left))
        check(os.listdir(tmpdir) == [], "the backend left %s in TMPDIR" % os.listdir(tmpdir))
        check(os.path.isdir(lookalike), "the backend removed %s, a folder it did not make"
              % lookalike)
    finally:
        shutil.rmtree(lookalike, ignore_errors=True)


def package_refused_by_an_older_libtorch():
    # An archive with a package's layout, written by PyTorch's own writer:
    # older PyTorch cannot compile one.
    path = os.path.join(TMP, "older.pt2")
    writer = torch._C.PyTorchFileWriter(path)
    data = b"not a library"
    writer.write_record("data/aotinductor/model/model.so", data, len(data))
    writer.write_end_of_file()
    expect_error(torch_vf(path), "AOTInductor package", "LibTorch 2.10 or later", "TorchScript")


if not PACKAGES:
    test(package_refused_by_an_older_libtorch)
