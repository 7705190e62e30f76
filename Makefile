# Builds FFmpeg 9.0.2 with the rewritten LibTorch backend (build/ffmpeg), the
# pristine release against the same LibTorch (build/upstream/ffmpeg), and runs
# the tests, the demo and the benchmarks.  ./configure writes build/config.mk;
# every target runs it with defaults when it is missing.

B := build
-include $(B)/config.mk

PRISTINE := $(B)/ffmpeg-$(FFMPEG_VERSION)
SRC      := $(B)/src
# SANITIZE=address|thread, and ASSERT=2 (FFmpeg's --assert-level, whose
# av_assert1 checks that every frame has its link's size and format), build
# a separate variant in its own folder.  The ASSERT variant also enables
# OpenVINO when ./configure found it, as a distribution's build would.
SANITIZE ?=
ASSERT   ?=
VARIANT  := ours$(if $(SANITIZE),-$(SANITIZE))$(if $(ASSERT),-assert$(ASSERT))
OBJ      := $(B)/$(VARIANT)
FFMPEG   := $(OBJ)/ffmpeg
UPSTREAM := $(B)/upstream/ffmpeg
# make bench's peer: the pristine release with FFmpeg's own ONNX Runtime
# backend, when ./configure was given --onnxruntime.
ONNX_PEER := $(if $(ONNXRUNTIME_INCLUDE),$(B)/onnx/ffmpeg)
JOBS     ?= $(shell nproc)

# The series are the source of truth: patches/series lists the DNN series'
# patches, in git format-patch form, and patches/fftools/series the ffmpeg
# CLI's; git am applies both, in that order, to the pristine release in the
# git tree $(SRC), where they are worked on as commits (README, Development).
STACK := $(addprefix patches/,$(shell grep -v '^\#' patches/series 2>/dev/null)) \
         $(addprefix patches/fftools/,$(shell grep -v '^\#' patches/fftools/series 2>/dev/null))

FF_FILTERS := dnn_processing dnn_detect dnn_classify testsrc2 color drawbox \
              format scale showinfo metadata null hstack loop setpts trim \
              crop pad split scdet vflip fps
FF_CUDA_FILTERS := hwupload_cuda hwupload hwdownload noise
# make check-gpu's asynchronous producer: an MPEG-2 clip encoded by the
# tests, decoded by NVDEC.
FF_CUDA_CODECS = --enable-nvdec --enable-hwaccel=mpeg2_nvdec \
    --enable-encoder=mpeg2video --enable-decoder=mpeg2video \
    --enable-muxer=mpeg2video --enable-demuxer=mpegvideo --enable-parser=mpegvideo
FF_COMMON = --disable-everything --disable-autodetect --disable-doc \
    --disable-ffplay --disable-ffprobe --disable-stripping \
    --enable-avdevice --enable-indev=lavfi \
    --enable-filter=$(subst $() ,$(comma),$(FF_FILTERS)$(if $(filter yes,$(CUDA_FRAMES)), $(FF_CUDA_FILTERS))) \
    --enable-muxer=null,framecrc,framemd5,rawvideo,image2,yuv4mpegpipe \
    --enable-demuxer=rawvideo,image2,yuv4mpegpipe \
    --enable-encoder=rawvideo,png,wrapped_avframe,pcm_s16le \
    --enable-decoder=rawvideo,png,wrapped_avframe --enable-parser=png \
    --enable-protocol=file,pipe --enable-zlib \
    $(if $(filter yes,$(CUDA_FRAMES)),--enable-ffnvcodec --enable-cuda $(FF_CUDA_CODECS) --pkg-config=$(PKG_CONFIG)) \
    $(if $(filter no,$(X86ASM)),--disable-x86asm) \
    $(if $(SANITIZE),--toolchain=gcc-$(SAN_TOOLCHAIN_$(SANITIZE))) \
    $(if $(ASSERT),--assert-level=$(ASSERT) $(if $(OPENVINO_PC),--enable-libopenvino))
# LibTorch of the old libstdc++ ABI needs the code that calls it built so.
TORCH_ABI_FLAG = $(if $(filter 0,$(TORCH_CXX11_ABI)),-D_GLIBCXX_USE_CXX11_ABI=0)
FF_CONFIG = $(FF_COMMON) --enable-libtorch \
    --extra-cxxflags='-I$(LIBTORCH)/include -I$(LIBTORCH)/include/torch/csrc/api/include$(if $(CUDA_INCLUDE), -I$(CUDA_INCLUDE)) $(TORCH_ABI_FLAG)' \
    --extra-ldflags='-L$(LIBTORCH)/lib -Wl,-rpath,$(LIBTORCH)/lib'
# Our builds are test builds: the backend throws where the tests ask it to
# (DNN_TORCH_TEST_THROW), to show that no exception leaves it.
FF_TEST_HOOKS = --extra-cxxflags=-DDNN_TORCH_TEST_THROW
# The peer loads no LibTorch, so that its memory is its own.
FF_CONFIG_ONNX = $(FF_COMMON) --enable-libonnxruntime --extra-cflags='-I$(ONNXRUNTIME_INCLUDE)' \
    --extra-ldflags='-L$(ONNXRUNTIME_LIB) -Wl,-rpath,$(ONNXRUNTIME_LIB)'
comma := ,
SAN_TOOLCHAIN_address := asan
SAN_TOOLCHAIN_thread  := tsan
FF_ENV = PKG_CONFIG_PATH=$(subst $() ,:,$(strip $(FFNVCODEC_PC) $(OPENVINO_PC)))$${PKG_CONFIG_PATH:+:$$PKG_CONFIG_PATH}

.PHONY: all upstream onnx-peer check check-gpu test-tools demo bench bench-gpu series series-check werror-check debian-check clean distclean FORCE

all: $(FFMPEG)

$(B)/config.mk:
	./configure

# --- trees --------------------------------------------------------------------

$(PRISTINE)/.stamp: | $(B)/config.mk
	rm -rf $(PRISTINE)
	tar -C $(B) --no-same-owner -xf $(FFMPEG_TARBALL)
	touch $@

# The tree we build: the stack applied with git am, again whenever
# patches/ changes.  Only files whose content changes are rewritten, and
# commits or changes in $(SRC) that patches/ lacks are never overwritten.
$(SRC)/.git/stack-head: patches/series patches/fftools/series $(STACK) $(PRISTINE)/.stamp
	sh tools/stack.sh apply $(PRISTINE) $(SRC)

.PHONY: tree tree-reset patches
tree: $(SRC)/.git/stack-head

# Drops what $(SRC) holds beyond patches/ and applies the stack again.
tree-reset: $(PRISTINE)/.stamp
	FORCE=1 sh tools/stack.sh apply $(PRISTINE) $(SRC)

# Writes the commits of $(SRC) back into patches/.
patches:
	sh tools/stack.sh export $(SRC)

TREE := $(SRC)/.git/stack-head

# --- builds -------------------------------------------------------------------

# FFmpeg's configure runs once per tree; changes in $(SRC), edited there or
# applied from patches/, only rebuild what depends on them.  FFmpeg's own build does not relink when
# only the link flags change, so a reconfigured tree drops its binaries.
$(OBJ)/ffbuild/config.mak: $(SRC)/configure $(B)/config.mk | $(TREE)
	mkdir -p $(OBJ)
	cd $(OBJ) && $(FF_ENV) $(CURDIR)/$(SRC)/configure $(FF_CONFIG) $(FF_TEST_HOOKS) > configure.log 2>&1 || \
	    { tail -n 20 configure.log; echo "FFmpeg configure failed: see $(OBJ)/configure.log"; exit 1; }
	rm -f $(OBJ)/ffmpeg $(OBJ)/ffmpeg_g

$(SRC)/configure: $(TREE)

$(FFMPEG): $(OBJ)/ffbuild/config.mak $(TREE) FORCE
	$(MAKE) -C $(OBJ) -j$(JOBS) ffmpeg

upstream: $(UPSTREAM)

$(B)/upstream/ffbuild/config.mak: $(PRISTINE)/.stamp $(B)/config.mk
	mkdir -p $(B)/upstream
	cd $(B)/upstream && $(FF_ENV) $(CURDIR)/$(PRISTINE)/configure $(FF_CONFIG) > configure.log 2>&1 || \
	    { tail -n 20 configure.log; echo "FFmpeg configure failed: see $(B)/upstream/configure.log"; exit 1; }
	rm -f $(B)/upstream/ffmpeg $(B)/upstream/ffmpeg_g

$(UPSTREAM): $(B)/upstream/ffbuild/config.mak FORCE
	$(MAKE) -C $(B)/upstream -j$(JOBS) ffmpeg

onnx-peer: $(ONNX_PEER)

$(B)/onnx/ffbuild/config.mak: $(PRISTINE)/.stamp $(B)/config.mk
	mkdir -p $(B)/onnx
	cd $(B)/onnx && $(FF_ENV) $(CURDIR)/$(PRISTINE)/configure $(FF_CONFIG_ONNX) > configure.log 2>&1 || \
	    { tail -n 20 configure.log; echo "FFmpeg configure failed: see $(B)/onnx/configure.log"; exit 1; }
	rm -f $(B)/onnx/ffmpeg $(B)/onnx/ffmpeg_g

$(B)/onnx/ffmpeg: $(B)/onnx/ffbuild/config.mak FORCE
	$(MAKE) -C $(B)/onnx -j$(JOBS) ffmpeg

# The classical peer of frame interpolation: the release's minterpolate.
MINTERPOLATE := $(B)/minterpolate/ffmpeg
$(B)/minterpolate/ffbuild/config.mak: $(PRISTINE)/.stamp $(B)/config.mk
	mkdir -p $(B)/minterpolate
	cd $(B)/minterpolate && $(CURDIR)/$(PRISTINE)/configure --disable-everything \
	    --disable-autodetect --disable-doc --disable-ffplay --disable-ffprobe \
	    --enable-avdevice --enable-indev=lavfi --enable-muxer=null \
	    --enable-encoder=wrapped_avframe --enable-decoder=wrapped_avframe --enable-protocol=pipe \
	    --enable-filter=minterpolate,testsrc2,format,loop,trim,null > configure.log 2>&1 || \
	    { tail -n 20 configure.log; echo "FFmpeg configure failed: see $(B)/minterpolate/configure.log"; exit 1; }

$(MINTERPOLATE): $(B)/minterpolate/ffbuild/config.mak
	$(MAKE) -C $(B)/minterpolate -j$(JOBS) ffmpeg

FORCE:

# --- tests, demo, benchmarks -------------------------------------------------

TEST_ENV = FFMPEG=$(CURDIR)/$(FFMPEG) UPSTREAM_FFMPEG=$(CURDIR)/$(UPSTREAM) FFMPEG_SRC=$(CURDIR)/$(SRC) \
           SANITIZE=$(SANITIZE) MODELS=$(CURDIR)/$(B)/models TEST_TOOLS=$(CURDIR)/$(TOOLS_DIR) \
           LIBTORCH_VERSION=$(TORCH_VERSION)

# tests/tools: a program that runs filters through the API, on a CUDA
# stream of its choosing; c10's sync-debug mode, preloaded; and a counter of
# host-device copies and kernels that the CUDA driver loads (CUPTI).  The
# last two need LibTorch's CUDA and CUPTI's headers (pip installs them
# beside torch; a CUDA toolkit has them too).
TOOLS_DIR := $(OBJ)/test-tools
CUPTI_INCLUDE := $(firstword $(patsubst %/cupti.h,%,$(wildcard $(CUDA_INCLUDE)/cupti.h \
    $(CUDA_INCLUDE)/../extras/CUPTI/include/cupti.h)))
CUPTI_LIB := $(firstword $(wildcard $(CUDA_INCLUDE)/../lib/libcupti.so* \
    $(CUDA_INCLUDE)/../lib64/libcupti.so* $(CUDA_INCLUDE)/../extras/CUPTI/lib64/libcupti.so*))
TEST_TOOLS := $(TOOLS_DIR)/filter_frames \
    $(if $(filter yes,$(TORCH_CUDA)),$(TOOLS_DIR)/sync_debug.so \
        $(if $(and $(CUPTI_INCLUDE),$(CUPTI_LIB)),$(TOOLS_DIR)/cuda_copies.so))

# The pipeline tests also run on an ASSERT=2 build of the same tree, and the
# OpenVINO tests on it when it has OpenVINO.
ASSERT_FFMPEG := $(B)/ours-assert2/ffmpeg
SECOND_BUILD_ENV = ASSERT_FFMPEG=$(CURDIR)/$(ASSERT_FFMPEG) \
    $(if $(OPENVINO_PC),OPENVINO_FFMPEG=$(CURDIR)/$(ASSERT_FFMPEG))

check: $(FFMPEG) $(if $(SANITIZE)$(ASSERT),,$(UPSTREAM)) $(TEST_TOOLS)
	$(if $(SANITIZE)$(ASSERT),,$(MAKE) ASSERT=2 all)
	$(TEST_ENV) $(if $(SANITIZE)$(ASSERT),,$(SECOND_BUILD_ENV)) $(PYTHON) tests/run.py

# TEST_JOBS=N runs N CUDA tests at a time.
check-gpu: $(FFMPEG) $(TEST_TOOLS)
	$(TEST_ENV) $(PYTHON) tests/run.py --gpu $(if $(TEST_JOBS),--jobs=$(TEST_JOBS))

test-tools: $(TEST_TOOLS)

$(TOOLS_DIR)/filter_frames: tests/tools/filter_frames.c tests/tools/link.mak $(FFMPEG)
	mkdir -p $(@D)
	$(MAKE) -s -C $(OBJ) -f $(CURDIR)/tests/tools/link.mak \
	    PROG_SRC=$(CURDIR)/$< PROG=$(CURDIR)/$@

$(TOOLS_DIR)/sync_debug.so: tests/tools/sync_debug.cpp $(B)/config.mk
	mkdir -p $(@D)
	$(CXX) -O2 -std=c++17 -shared -fPIC $(TORCH_ABI_FLAG) -o $@ $< \
	    -I$(LIBTORCH)/include -I$(CUDA_INCLUDE)

$(TOOLS_DIR)/cuda_copies.so: tests/tools/cuda_copies.c $(B)/config.mk
	mkdir -p $(@D)
	$(CC) -O2 -shared -fPIC -o $@ $< -I$(CUPTI_INCLUDE) $(CUPTI_LIB) \
	    -Wl,-rpath,$(abspath $(dir $(CUPTI_LIB))) -ldl -lpthread

demo: $(FFMPEG)
	FFMPEG=$(CURDIR)/$(FFMPEG) $(PYTHON) tools/demo.py $(B)/demo

bench: $(FFMPEG) $(UPSTREAM) $(ONNX_PEER) $(MINTERPOLATE) $(B)/bench/forward $(B)/bench/.packages
	$(TEST_ENV) FORWARD=$(CURDIR)/$(B)/bench/forward MINTERPOLATE_FFMPEG=$(CURDIR)/$(MINTERPOLATE) \
	    ONNX_FFMPEG=$(if $(ONNX_PEER),$(CURDIR)/$(ONNX_PEER)) $(PYTHON) bench/bench.py $(B)/bench

bench-gpu: $(FFMPEG) $(UPSTREAM) $(B)/bench/forward
	$(TEST_ENV) FORWARD=$(CURDIR)/$(B)/bench/forward $(PYTHON) bench/bench_gpu.py $(B)/bench

# The dnn_detect and dnn_classify cases' packages, pinned, installed with the
# torch the tests use; without them the bench runs the other cases.
$(B)/bench/.packages: bench/requirements.txt $(B)/config.mk
	mkdir -p $(B)/bench
	$(PYTHON) -m pip install -q "torch==$(TORCH_VERSION)" -r bench/requirements.txt || \
	    echo "bench: could not install bench/requirements.txt; dnn_detect/dnn_classify cases skipped"
	touch $@

$(B)/bench/forward: bench/forward.cpp $(B)/config.mk
	mkdir -p $(B)/bench
	$(CXX) -O2 -std=c++17 $(TORCH_ABI_FLAG) -o $@ $< \
	    -I$(LIBTORCH)/include -I$(LIBTORCH)/include/torch/csrc/api/include \
	    -L$(LIBTORCH)/lib -Wl,-rpath,$(LIBTORCH)/lib -ltorch -ltorch_cpu -lc10 \
	    $(if $(filter yes,$(TORCH_CUDA)),-Wl$(comma)--no-as-needed -ltorch_cuda -lc10_cuda)

series: $(TREE)
	sh tools/stack.sh mail $(SRC) $(B)/series

# Every commit of the stack, built in turn (incrementally) in a worktree of
# $(SRC), and the FATE tests that exist at that commit run, so that each
# commit builds and passes its tests on its own.
series-check: $(TREE) $(B)/fate-suite/.stamp
	SAMPLES=$(CURDIR)/$(B)/fate-suite FROM=$(SERIES_FROM) sh tools/series-check.sh $(SRC) $(B)/series-check \
	    "$(FF_ENV)" $(FF_CONFIG)

# The series' DNN code compiled again with -Werror (LibTorch's headers as
# system headers), CUDA path included when ./configure enabled CUDA frames.
werror-check: $(FFMPEG)
	sh tools/werror-check.sh $(OBJ) $(if $(filter yes,$(CUDA_FRAMES)),cuda)

# A distribution build: the stack against Debian 13's libtorch-dev, in a
# Debian 13 root made with debootstrap (needs root).
debian-check: $(B)/fate-suite/.stamp
	FILTERS="$(FF_FILTERS)" sh tools/debian-check.sh $(B)/debian $(FFMPEG_TARBALL) $(B)/fate-suite

# The FATE samples of the DNN tests (their references are in the stack).
$(B)/fate-suite/.stamp: tests/fate_refs.py tests/models.py $(UPSTREAM)
	FFMPEG=$(CURDIR)/$(UPSTREAM) $(PYTHON) tests/fate_refs.py $(B)/fate-suite $(B)/fate-suite-ref
	touch $@

clean:
	rm -rf $(SRC) $(B)/ours $(B)/ours-* $(B)/upstream $(B)/onnx $(B)/minterpolate $(B)/series $(B)/series-check $(B)/fate-suite $(B)/fate-suite-ref $(B)/demo $(B)/bench $(B)/models

distclean:
	rm -rf $(B)
