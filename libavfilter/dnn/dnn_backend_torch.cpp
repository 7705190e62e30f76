/*
 * Copyright (c) 2024
 *
 * This file is part of FFmpeg.
 *
 * FFmpeg is free software; you can redistribute it and/or
 * modify it under the terms of the GNU Lesser General Public
 * License as published by the Free Software Foundation; either
 * version 2.1 of the License, or (at your option) any later version.
 *
 * FFmpeg is distributed in the hope that it will be useful,
 * but WITHOUT ANY WARRANTY; without even the implied warranty of
 * MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.  See the GNU
 * Lesser General Public License for more details.
 *
 * You should have received a copy of the GNU Lesser General Public
 * License along with FFmpeg; if not, write to the Free Software
 * Foundation, Inc., 51 Franklin Street, Fifth Floor, Boston, MA 02110-1301 USA
 */

/**
 * @file
 * DNN LibTorch backend: TorchScript models and AOTInductor packages run
 * through a pool of requests, optionally on batches of frames, for
 * dnn_processing, dnn_detect and dnn_classify.
 *
 * Frames become tensors by wrapping each plane where it lies with
 * torch::from_blob() and converting with torch ops into a persistent batch
 * tensor; outputs go back the same way.  Every call into LibTorch is made
 * inside a try block: a failure is logged with LibTorch's own reason and
 * reaches the filter as an error, never as an exception or an abort.
 */

#include <sys/stat.h>

#include <dirent.h>
#include <ftw.h>
#include <unistd.h>
/* Where dlopen() exists, configure links neither libtorch_cuda nor libtorch
 * and load_torch_library_th() loads them when a model needs them. */
#if __has_include(<dlfcn.h>)
#include <dlfcn.h>
#define TH_LOAD_ON_DEMAND 1
#else
#define TH_LOAD_ON_DEMAND 0
#endif
/* dl_iterate_phdr() finds the folder of libtorch_cpu among loaded objects. */
#if TH_LOAD_ON_DEMAND && __has_include(<link.h>)
#include <link.h>
#define TH_LOADED_OBJECTS 1
#else
#define TH_LOADED_OBJECTS 0
#endif

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

extern "C" {
#include "config.h"
}

#include <ATen/Parallel.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/cuda.h>
#include <torch/nn/functional/upsampling.h>
#include <torch/script.h>
#include <torch/version.h>
#define TH_LIBTORCH_AT_LEAST(major, minor) \
    (TORCH_VERSION_MAJOR > (major) ||      \
     (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))
/* AOTInductor packages need the package loader of LibTorch 2.10: its device
 * index and its metadata reader.  Older LibTorch runs TorchScript only. */
#if TH_LIBTORCH_AT_LEAST(2, 10)
#define TH_PACKAGES 1
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#else
#define TH_PACKAGES 0
#endif
/* The host tensor cache needs the allocator interface of LibTorch 2.4 (the
 * oldest checked: non-const allocate(), copy_data()). */
#define TH_HOST_CACHE TH_LIBTORCH_AT_LEAST(2, 4)
#if TH_HOST_CACHE
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#endif
/* CUDA frames need LibTorch 2.4, the oldest checked with this code. */
#define TH_CUDA_FRAMES (HAVE_LIBTORCH_CUDA && TH_LIBTORCH_AT_LEAST(2, 4))
#if TH_CUDA_FRAMES
/* Only what c10_cuda exports: the CUDA runtime is not linked directly. */
#include <c10/core/StreamGuard.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#endif

extern "C" {
#include "dnn_backend_common.h"
#include "libavutil/avassert.h"
#include "libavutil/avstring.h"
#include "libavutil/cpu.h"
#include "libavutil/csp.h"
#include "libavutil/detection_bbox.h"
#include "libavutil/hwcontext.h"
#include "libavutil/intreadwrite.h"
#include "libavutil/mem.h"
#include "libavutil/opt.h"
#include "libavutil/pixdesc.h"
#include "libavutil/thread.h"
#include "queue.h"
#if TH_CUDA_FRAMES
#include "dnn_cuda.h"
#endif
}

/* Everything but ff_dnn_backend_torch is private to this file: classes too,
 * whose member functions would otherwise be global symbols. */
namespace {

/**
 * Size of the zero input that probes the model's input channel count when
 * neither input_size nor the filter's input link gives one.
 */
#define TH_PROBE_SIZE 32
#define TH_MAX_BATCH  64
/** Padding of a letterboxed model input: the gray YOLO models train with. */
#define TH_LETTERBOX_GRAY (114.0 / 255.0)

class THNet;
typedef struct THRequestItem THRequestItem;

typedef struct THModel {
    DNNModel model;
    DnnContext *ctx;
    THNet *net;
    torch::Device *device;
    /** Input channels of the model: 1 or 3; 0 until known. */
    int nb_channels;
    /**
     * Whether the model gets its input channels-last (NHWC in memory): the
     * frames' own pixel order, and LibTorch's CPU convolutions run 1.5 to 3.5
     * times as fast on it.  Off for packages, compiled for the strides of
     * their example, and for models that fail on it (a .view() of the
     * input); see probe_layout_th().
     */
    int channels_last;
    /** Whether probe_channels_th() has run. */
    int probed;
    /**
     * The probe's input size and the output shape it gave (rank 0 if none),
     * so that get_output need not run the model again on the same input.
     */
    int probe_width, probe_height;
    int probe_rank;
    int64_t probe_shape[8];
    /**
     * The requests: all nb_requests of them, and the idle ones, nb_idle, as
     * a stack.  Giving one back takes no allocation, so every request comes
     * back whatever happened to its inference; request_back (with mutex)
     * wakes whoever waits for one.
     */
    THRequestItem **requests;
    THRequestItem **idle;
    int nb_requests, nb_idle;
    AVCond request_back;
    Queue *task_queue;
    Queue *lltask_queue;
    /**
     * Guards the idle requests, the task progress written by request threads
     * and read by get_result, and the first error of a failed inference.
     */
    AVMutex mutex;
    int error;
    /**
     * Bytes copied between host and device, under mutex: of frame data, and
     * of the NaN flags read back from CUDA frames' requests.
     */
    int64_t transferred, flags_read;
    /** dnn_classify: frames and boxes that arrived, boxes sent to the model. */
    int64_t nb_frames, nb_boxes, nb_classified;
    /**
     * CUDA frames (AV_PIX_FMT_CUDA): the frames context last checked (held,
     * so that another one cannot take its address), its device and the
     * stream FFmpeg orders its work on (NULL: the legacy default stream).
     */
    AVBufferRef *cuda_frames;
    int cuda_device;
    void *cuda_stream;
} THModel;

typedef struct THRequestItem {
    THModel *th_model;
    LastLevelTaskItem *lltasks[TH_MAX_BATCH];
    int nb_lltasks;
    /** Batch input, reused while the frame size stays the same. */
    torch::Tensor *input;
    torch::Tensor *output;
    /** Frames in the forward call: nb_lltasks, or batch_size for a package. */
    int64_t batch;
    /** Set by th_start_inference(), read by the completion callback. */
    int status;
    /**
     * CUDA frames: the device and FFmpeg's stream, copied from the model
     * when the request starts, so that the request thread and the wait read
     * what the filter thread checked for these frames.
     */
    int cuda_device;
    void *cuda_stream;
    DNNAsyncExecModule exec_module;
} THRequestItem;

#define OFFSET(x) offsetof(THOptions, x)
#define FLAGS AV_OPT_FLAG_FILTERING_PARAM
static const AVOptionArrayDef normalization_def_th = { .sep = '&' };
static const AVOption dnn_th_options[] = {
    { "optimize",   "model optimization at load time",                OFFSET(optimize),    AV_OPT_TYPE_INT, { .i64 = 0 }, 0, 2,            FLAGS, .unit = "optimize" },
        { "none",   "run the model as it is",                         0,                   AV_OPT_TYPE_CONST, { .i64 = 0 }, 0, 0,          FLAGS, .unit = "optimize" },
        { "graph",  "graph executor optimization",                    0,                   AV_OPT_TYPE_CONST, { .i64 = 1 }, 0, 0,          FLAGS, .unit = "optimize" },
        { "freeze", "freeze the model and optimize it for inference", 0,                   AV_OPT_TYPE_CONST, { .i64 = 2 }, 0, 0,          FLAGS, .unit = "optimize" },
    { "channels",   "input channels of the model (1 or 3), 0 to probe the model", OFFSET(nb_channels), AV_OPT_TYPE_INT, { .i64 = 0 }, 0, 3, FLAGS },
    { "threads",    "intra-op threads of each request, 0 for the CPU count divided by the requests", OFFSET(nb_threads), AV_OPT_TYPE_INT, { .i64 = 0 }, 0, 1024, FLAGS },
    { "batch_size", "frames per forward call",                        OFFSET(batch_size),  AV_OPT_TYPE_INT, { .i64 = 1 }, 1, TH_MAX_BATCH, FLAGS },
    { "input_size", "model input size (WxH) of a detector or classifier; by default a detector takes the frame's size", OFFSET(input_width), AV_OPT_TYPE_IMAGE_SIZE, { .str = NULL }, 0, 0, FLAGS },
    { "letterbox",  "keep the aspect ratio when resizing to input_size, padding with gray", OFFSET(letterbox), AV_OPT_TYPE_BOOL, { .i64 = 0 }, 0, 1, FLAGS },
    { "model_name", "model to run from an AOTInductor package that holds several", OFFSET(model_name), AV_OPT_TYPE_STRING, { .str = NULL }, 0, 0, FLAGS },
    { "mean",       "per-channel mean subtracted from the model input, split by '&' (0.485&0.456&0.406 for ImageNet)", OFFSET(mean), (enum AVOptionType)(AV_OPT_TYPE_FLOAT | AV_OPT_TYPE_FLAG_ARRAY), { .arr = &normalization_def_th }, -FLT_MAX, FLT_MAX, FLAGS },
    { "std",        "per-channel standard deviation the model input is divided by, after mean, split by '&' (0.229&0.224&0.225 for ImageNet)", OFFSET(std), (enum AVOptionType)(AV_OPT_TYPE_FLOAT | AV_OPT_TYPE_FLAG_ARRAY), { .arr = &normalization_def_th }, FLT_MIN, FLT_MAX, FLAGS },
    { NULL }
};

/**
 * The reason in a LibTorch exception, for an error message: its first
 * non-empty line, without the C++ backtrace; for an error raised inside
 * TorchScript, the final "Error: reason" line of its script traceback.  The
 * whole text goes to the log at the verbose level.
 */
static std::string error_reason(void *log_ctx, const std::exception &e)
{
    const c10::Error *ce = dynamic_cast<const c10::Error *>(&e);
    std::string msg = ce ? ce->what_without_backtrace() : e.what();
    size_t pos = msg.rfind("Error: "), end;

    av_log(log_ctx, AV_LOG_VERBOSE, "LibTorch: %s\n", msg.c_str());
    if (msg.find("TorchScript interpreter") != std::string::npos &&
        pos != std::string::npos) {
        size_t start = msg.rfind('\n', pos);
        msg = msg.substr(start == std::string::npos ? 0 : start + 1);
    }
    /* Some reasons start with a newline ("\nUnknown builtin op: ..."). */
    pos = msg.find_first_not_of(" \t\r\n");
    if (pos == std::string::npos)
        return "no reason given";
    end = msg.find('\n', pos);
    return msg.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
}

/**
 * Routes LibTorch's warnings on the calling thread into the log for the
 * scope, where they obey the log level; LibTorch prints them to stderr
 * otherwise.  Its warning handler is per thread: every entry point into the
 * backend, and every request thread, sets it.
 */
class THLogWarnings : public c10::WarningHandler {
public:
    explicit THLogWarnings(void *log_ctx)
        : log_ctx_(log_ctx), previous_(c10::WarningUtils::get_warning_handler())
    {
        c10::WarningUtils::set_warning_handler(this);
    }

    ~THLogWarnings() override
    {
        c10::WarningUtils::set_warning_handler(previous_);
    }

    THLogWarnings(const THLogWarnings &) = delete;
    THLogWarnings &operator=(const THLogWarnings &) = delete;

    void process(const c10::Warning &warning) override
    {
        av_log(log_ctx_, AV_LOG_WARNING, "LibTorch: %s\n", warning.msg().c_str());
    }

private:
    void *log_ctx_;
    c10::WarningHandler *previous_;
};

/* -------------------------------------------------------------------------
 * Model formats: TorchScript modules (torch::jit::load) and AOTInductor
 * packages (.pt2, from torch._inductor.aoti_compile_and_package), behind one
 * interface; the rest of the backend does not know which one runs.
 */

class THNet {
public:
    virtual ~THNet() = default;
    /** Run the model on a batch; the result as the model gives it. */
    virtual torch::jit::IValue forward(const torch::Tensor &input) = 0;
    /**
     * Whether every call must get batch_size frames: a compiled package may
     * take no other batch, so a partial batch is padded.
     */
    virtual bool fixed_batch() const = 0;
};

class THScriptNet : public THNet {
public:
    THScriptNet(torch::jit::Module module, bool graph_optimize)
        : module_(std::move(module)), graph_optimize_(graph_optimize) {}

    torch::jit::IValue forward(const torch::Tensor &input) override
    {
        std::vector<torch::jit::IValue> inputs{ input };
        /* A thread-local setting: each request thread needs it. */
        torch::jit::setGraphExecutorOptimize(graph_optimize_);
        return module_.forward(inputs);
    }

    bool fixed_batch() const override { return false; }

private:
    torch::jit::Module module_;
    bool graph_optimize_;
};

#if TH_PACKAGES
/**
 * The sizes a package's input takes, dimension by dimension: a compiled
 * package reads out of bounds on any other, and checks them itself only
 * when the process environment says so (AOTI_RUNTIME_CHECK_INPUTS).
 */
typedef struct THPackageShape {
    int64_t min[4], max[4];
} THPackageShape;

class THPackageNet : public THNet {
public:
    THPackageNet(const std::string &path, const std::string &name,
                 size_t runners, c10::DeviceIndex device_index,
                 const THPackageShape &shape)
        : loader_(path, name, false, runners, device_index), shape_(shape) {}

    torch::jit::IValue forward(const torch::Tensor &input) override
    {
        for (int64_t d = 0; d < 4; d++) {
            if (input.size(d) >= shape_.min[d] && input.size(d) <= shape_.max[d])
                continue;
            throw std::runtime_error("the package takes " + shape_str() +
                                     " and gets " + c10::str(input.sizes()));
        }
        std::vector<torch::Tensor> out = loader_.run({ input });
        if (out.size() == 1)
            return out[0];
        return out;
    }

    bool fixed_batch() const override { return true; }

private:
    std::string shape_str() const
    {
        std::string s = "[";
        for (int d = 0; d < 4; d++) {
            s += d ? ", " : "";
            if (shape_.min[d] == shape_.max[d])
                s += std::to_string(shape_.min[d]);
            else
                s += std::to_string(shape_.min[d]) + ".." +
                     (shape_.max[d] == INT64_MAX ? std::string("") :
                      std::to_string(shape_.max[d]));
        }
        return s + "]";
    }

    torch::inductor::AOTIModelPackageLoader loader_;
    THPackageShape shape_;
};
#endif

/** What the model returned, when it is not a tensor. */
static std::string describe_result_th(const torch::jit::IValue &v)
{
    if (v.isTuple())
        return "tuple of " + std::to_string(v.toTupleRef().elements().size()) + " values";
    if (v.isList())
        return "list of " + std::to_string(v.toListRef().size()) + " values";
    if (v.isGenericDict())
        return "dict";
    return v.tagKind();
}

/**
 * Pick the output that the output option names from what the model
 * returned: an element of a tuple or list by index, an entry of a dict by
 * key.  Without the option the result stays as it is.
 * @return 0, or AVERROR(EINVAL) with the reason in reason
 */
static int select_output_th(const THModel *th_model, torch::jit::IValue &result,
                            std::string &reason)
{
    const DnnContext *ctx = th_model->ctx;
    const char *key = ctx->model_outputnames ? ctx->model_outputnames[0] : NULL;

    if (!key)
        return 0;
    if (result.isTuple() || result.isList()) {
        std::vector<torch::jit::IValue> values = result.isTuple() ?
            result.toTupleRef().elements().vec() : result.toListRef().vec();
        char *end;
        long index = strtol(key, &end, 10);

        if (*key < '0' || *key > '9' || *end || index >= (long)values.size()) {
            reason = std::string("output=") + key + ": the model returned a " +
                     describe_result_th(result) + "; pick one by its index, 0 to " +
                     std::to_string((long)values.size() - 1);
            return AVERROR(EINVAL);
        }
        result = values[index];
        return 0;
    }
    if (result.isGenericDict()) {
        std::string keys;
        for (const auto &entry : result.toGenericDict()) {
            if (entry.key().isString() && entry.key().toStringRef() == key) {
                result = entry.value();
                return 0;
            }
            keys += (keys.empty() ? "" : ", ") +
                    (entry.key().isString() ? entry.key().toStringRef() : entry.key().tagKind());
        }
        reason = std::string("output=") + key + ": the dict the model returned "
                 "has no such key; it has: " + keys;
        return AVERROR(EINVAL);
    }
    reason = std::string("output=") + key + " picks from a tuple, list or dict, "
             "and the model returned a " + describe_result_th(result) +
             "; leave output out";
    return AVERROR(EINVAL);
}

/** What to add to the reason a model failed: for a package, the usual cause. */
static const char *failure_hint_th(const THNet *net)
{
    if (!net->fixed_batch())
        return "";
    return " A package takes only the input shapes it was exported for (the "
           "reason from LibTorch is above): export height and width as "
           "torch.export.Dim.DYNAMIC, and set batch_size to the batch it was "
           "exported with.";
}

/* -------------------------------------------------------------------------
 * Frames to tensors and back.
 *
 * Each plane is wrapped where it lies, with its line size as the row stride,
 * and converted by torch ops: the same code serves any device the plane
 * lives on.  For dnn_processing, channels keep the frame's memory order
 * (BGR24 gives B, G, R), as the other backends give them; detectors and
 * classifiers get R, G, B.  The fourth byte of RGBA, BGRA, RGB0 and BGR0 is
 * left out, 8-bit samples
 * map to [0, 1], 10-bit ones (P010) too, GRAYF32 is taken as it is.
 */

/** The layout of the frame's planes: for CUDA frames, that of their pool. */
static enum AVPixelFormat frame_format_th(const AVFrame *frame)
{
    if (frame->format == AV_PIX_FMT_CUDA && frame->hw_frames_ctx)
        return ((const AVHWFramesContext *)frame->hw_frames_ctx->data)->sw_format;
    return (enum AVPixelFormat)frame->format;
}

/**
 * Where the frame's planes lie.  CUDA frames are only touched inside a
 * THCudaScope, which makes their device the current one.
 */
static torch::Device frame_device_th(const AVFrame *frame)
{
#if TH_CUDA_FRAMES
    if (frame->format == AV_PIX_FMT_CUDA)
        return torch::Device(torch::kCUDA, c10::cuda::current_device());
#endif
    return torch::kCPU;
}

/**
 * Wrap a plane of the frame as height x width x channels elements of type; step is the
 * number of elements from one pixel to the next, channels by default.
 */
static torch::Tensor wrap_plane_th(const AVFrame *frame, uint8_t *data,
                                   int linesize, int height, int width,
                                   int channels, torch::ScalarType type,
                                   int step = 0)
{
    int64_t elem = c10::elementSize(type);
    return torch::from_blob(data, { height, width, channels },
                            { linesize / elem, step ? step : channels, 1 },
                            torch::TensorOptions().dtype(type)
                                                  .device(frame_device_th(frame)));
}

/** Plane p of the frame, wrapped as height x width x channels elements. */
static torch::Tensor frame_plane_th(const AVFrame *frame, int p, int height,
                                    int width, int channels,
                                    torch::ScalarType type, int step = 0)
{
    return wrap_plane_th(frame, frame->data[p], frame->linesize[p], height,
                         width, channels, type, step);
}

/** Packed RGB with a fourth byte, alpha or padding, after the color. */
static int is_rgb32_th(enum AVPixelFormat fmt)
{
    return fmt == AV_PIX_FMT_RGBA || fmt == AV_PIX_FMT_BGRA ||
           fmt == AV_PIX_FMT_RGB0 || fmt == AV_PIX_FMT_BGR0;
}

/** Bits per sample: 10 for P010, whose 16-bit samples hold them on top. */
static int depth_th(enum AVPixelFormat fmt)
{
    return fmt == AV_PIX_FMT_P010 ? 10 : 8;
}

static torch::ScalarType sample_type_th(enum AVPixelFormat fmt)
{
    return fmt == AV_PIX_FMT_P010 ? torch::kInt16 : torch::kUInt8;
}

/** Sample values of a wrapped plane, as float. */
static torch::Tensor samples_th(const torch::Tensor &plane, int depth)
{
    if (plane.scalar_type() == torch::kInt16)
        return plane.to(torch::kInt32).bitwise_and(0xFFFF)
                    .bitwise_right_shift(16 - depth).to(torch::kFloat32);
    return plane.to(torch::kFloat32);
}

/** Store sample values (float) into a wrapped plane, rounded and clamped. */
static void store_samples_th(const torch::Tensor &plane, const torch::Tensor &values,
                             int depth)
{
    torch::Tensor q = values.round().clamp_(0.0, (1 << depth) - 1);

    if (plane.scalar_type() == torch::kInt16)
        q = q.to(torch::kInt32).bitwise_left_shift(16 - depth).to(torch::kInt16);
    plane.copy_(q);
}

/** Number of channels a model must take from, or give to, a frame format. */
static int format_channels_th(enum AVPixelFormat fmt)
{
    switch (fmt) {
    case AV_PIX_FMT_RGB24:
    case AV_PIX_FMT_BGR24:
    case AV_PIX_FMT_RGBA:
    case AV_PIX_FMT_BGRA:
    case AV_PIX_FMT_RGB0:
    case AV_PIX_FMT_BGR0:
        return 3;
    case AV_PIX_FMT_GRAY8:
    case AV_PIX_FMT_GRAYF32:
    case AV_PIX_FMT_YUV420P:
    case AV_PIX_FMT_YUV422P:
    case AV_PIX_FMT_YUV444P:
    case AV_PIX_FMT_YUV410P:
    case AV_PIX_FMT_YUV411P:
    case AV_PIX_FMT_NV12:
    case AV_PIX_FMT_P010:
        return 1;
    default:
        return 0;
    }
}

/**
 * The samples of one plane under the region (x, y, w, h) of the frame, as an
 * h x w x channels tensor: a subsampled plane is cut to the samples that
 * cover the region and repeated up to full resolution.
 */
static torch::Tensor plane_region_th(const AVFrame *frame, int plane,
                                     int channels, torch::ScalarType type,
                                     int log2_sub_w, int log2_sub_h,
                                     int x, int y, int w, int h, int step = 0)
{
    step = step ? step : channels;
    int px = x >> log2_sub_w, py = y >> log2_sub_h;
    int pw = ((x + w + (1 << log2_sub_w) - 1) >> log2_sub_w) - px;
    int ph = ((y + h + (1 << log2_sub_h) - 1) >> log2_sub_h) - py;
    uint8_t *data = frame->data[plane] + (ptrdiff_t)py * frame->linesize[plane] +
                    (ptrdiff_t)px * step * c10::elementSize(type);
    torch::Tensor t = wrap_plane_th(frame, data, frame->linesize[plane], ph, pw,
                                    channels, type, step);

    if (log2_sub_w)
        t = t.repeat_interleave(1 << log2_sub_w, 1).narrow(1, x - (px << log2_sub_w), w);
    if (log2_sub_h)
        t = t.repeat_interleave(1 << log2_sub_h, 0).narrow(0, y - (py << log2_sub_h), h);
    return t;
}

/**
 * The YUV matrix and range (full only for JPEG range) of a frame: Y, U, V
 * sample values are luma * luma_scale + luma_offset and chroma *
 * chroma_scale + chroma_offset.  The luma coefficients are libavutil's for
 * the frame's colorspace, BT.601's where it names none or no YCbCr matrix
 * (RGB, YCgCo), as swscale assumes.
 */
typedef struct THYuvMatrix {
    double kr, kb, kg;
    double luma_scale, luma_offset, chroma_scale, chroma_offset;
} THYuvMatrix;

static THYuvMatrix yuv_matrix_th(const AVFrame *frame)
{
    int depth = depth_th(frame_format_th(frame));
    int full = frame->color_range == AVCOL_RANGE_JPEG;
    double max = (1 << depth) - 1, unit = 1 << (depth - 8);
    enum AVColorSpace csp = frame->colorspace;
    const AVLumaCoefficients *coeffs = NULL;

    if (csp != AVCOL_SPC_RGB && csp != AVCOL_SPC_YCGCO &&
        csp != AVCOL_SPC_YCGCO_RE && csp != AVCOL_SPC_YCGCO_RO)
        coeffs = av_csp_luma_coeffs_from_avcsp(csp);
    if (!coeffs)
        coeffs = av_csp_luma_coeffs_from_avcsp(AVCOL_SPC_SMPTE170M);

    return { av_q2d(coeffs->cr), av_q2d(coeffs->cb), av_q2d(coeffs->cg),
             full ? max : 219.0 * unit, full ? 0.0 : 16.0 * unit,
             full ? max : 224.0 * unit, (double)(1 << (depth - 1)) };
}

/** R, G, B in [0, 1] from Y, U, V sample values. */
static torch::Tensor yuv_to_rgb_th(const AVFrame *frame, const torch::Tensor &y,
                                   const torch::Tensor &u, const torch::Tensor &v)
{
    THYuvMatrix m = yuv_matrix_th(frame);
    torch::Tensor luma = (y - m.luma_offset) / m.luma_scale;
    torch::Tensor cb = (u - m.chroma_offset) / m.chroma_scale;
    torch::Tensor cr = (v - m.chroma_offset) / m.chroma_scale;
    torch::Tensor r = luma + 2.0 * (1.0 - m.kr) * cr;
    torch::Tensor g = luma - (2.0 * m.kb * (1.0 - m.kb) / m.kg) * cb
                           - (2.0 * m.kr * (1.0 - m.kr) / m.kg) * cr;
    torch::Tensor b = luma + 2.0 * (1.0 - m.kb) * cb;
    return torch::stack({ r, g, b }).clamp_(0.0, 1.0);
}

/**
 * The region (x, y, w, h) of the frame as a channels x h x w float tensor in
 * [0, 1].  Packed RGB keeps its memory order, or with rgb is put in R, G, B
 * order; YUV gives its Y plane to a 1-channel model and R, G, B to a
 * 3-channel one; gray is repeated for a 3-channel model.
 */
static torch::Tensor frame_region_th(const AVFrame *frame, int channels,
                                     int x, int y, int w, int h, int rgb)
{
    enum AVPixelFormat fmt = frame_format_th(frame);
    const AVPixFmtDescriptor *desc = av_pix_fmt_desc_get(fmt);
    int depth = depth_th(fmt);
    torch::ScalarType type = sample_type_th(fmt);
    torch::Tensor t;

    if (format_channels_th(fmt) == 3) {
        t = plane_region_th(frame, 0, 3, torch::kUInt8, 0, 0, x, y, w, h,
                            is_rgb32_th(fmt) ? 4 : 3).permute({ 2, 0, 1 });
        /* The descriptor gives each component's byte within the pixel. */
        if (rgb && desc->comp[0].offset > desc->comp[2].offset)
            t = t.flip(0);
        return t.to(torch::kFloat32).div_(255.0);
    }
    if (fmt == AV_PIX_FMT_GRAYF32) {
        t = plane_region_th(frame, 0, 1, torch::kFloat32, 0, 0, x, y, w, h);
        return t.permute({ 2, 0, 1 }).expand({ channels, h, w }).contiguous();
    }

    t = samples_th(plane_region_th(frame, 0, 1, type, 0, 0, x, y, w, h).select(2, 0),
                   depth);
    if (desc->nb_components == 1 || channels == 1)
        return t.div_((1 << depth) - 1).unsqueeze(0).expand({ channels, h, w }).contiguous();

    torch::Tensor u, v;
    if (desc->comp[1].plane == desc->comp[2].plane) {
        torch::Tensor uv = samples_th(plane_region_th(frame, 1, 2, type,
                                                      desc->log2_chroma_w, desc->log2_chroma_h,
                                                      x, y, w, h), depth);
        u = uv.select(2, 0);
        v = uv.select(2, 1);
    } else {
        u = samples_th(plane_region_th(frame, 1, 1, type, desc->log2_chroma_w,
                                       desc->log2_chroma_h, x, y, w, h).select(2, 0), depth);
        v = samples_th(plane_region_th(frame, 2, 1, type, desc->log2_chroma_w,
                                       desc->log2_chroma_h, x, y, w, h).select(2, 0), depth);
    }
    return yuv_to_rgb_th(frame, t, u, v);
}

/** Whether the frame is YUV, planar or semi-planar. */
static int is_yuv_th(enum AVPixelFormat fmt)
{
    const AVPixFmtDescriptor *desc = av_pix_fmt_desc_get(fmt);
    return desc && !(desc->flags & AV_PIX_FMT_FLAG_RGB) && desc->nb_components == 3;
}

/**
 * Whether t holds NaN.  On a GPU, reading the answer would wait for the
 * stream on every frame: the answer is ORed into *flag, on the device, to be
 * read once after the request's wait, and 0 is returned.
 */
static int has_nan_th(const torch::Tensor &t, torch::Tensor *flag)
{
    if (t.is_cuda() && flag) {
        torch::Tensor found = t.isnan().any();
        if (flag->defined())
            flag->logical_or_(found);
        else
            *flag = found;
        return 0;
    }
    /* The maximum finds NaN in one reduction. */
    return std::isnan(t.max().item<float>());
}

/**
 * Write R, G, B in [0, 1] (3 x H x W) into a YUV frame with the frame's
 * matrix and range; each chroma sample is the mean over its block.
 * @return 1 if src holds NaN (the frame is then left as it was), 0 otherwise
 */
static int rgb_to_yuv_frame_th(const torch::Tensor &src, AVFrame *frame,
                               torch::Tensor *nan_flag)
{
    enum AVPixelFormat fmt = frame_format_th(frame);
    const AVPixFmtDescriptor *desc = av_pix_fmt_desc_get(fmt);
    THYuvMatrix m = yuv_matrix_th(frame);
    int depth = depth_th(fmt);
    torch::ScalarType type = sample_type_th(fmt);
    int sub_w = 1 << desc->log2_chroma_w, sub_h = 1 << desc->log2_chroma_h;
    int cw = AV_CEIL_RSHIFT(frame->width,  desc->log2_chroma_w);
    int ch = AV_CEIL_RSHIFT(frame->height, desc->log2_chroma_h);
    torch::Tensor rgb = src.clamp(0.0, 1.0);

    /* clamp keeps NaN. */
    if (has_nan_th(rgb, nan_flag))
        return 1;
    torch::Tensor luma = m.kr * rgb[0] + m.kg * rgb[1] + m.kb * rgb[2];
    torch::Tensor chroma = torch::stack({ (rgb[2] - luma) / (2.0 * (1.0 - m.kb)),
                                          (rgb[0] - luma) / (2.0 * (1.0 - m.kr)) });
    if (sub_w > 1 || sub_h > 1)
        chroma = at::avg_pool2d(chroma.unsqueeze(0), { sub_h, sub_w }, { sub_h, sub_w },
                                { 0, 0 }, true, false)[0];
    chroma = chroma * m.chroma_scale + m.chroma_offset;

    store_samples_th(frame_plane_th(frame, 0, frame->height, frame->width, 1, type).select(2, 0),
                     luma * m.luma_scale + m.luma_offset, depth);
    if (desc->comp[1].plane != desc->comp[2].plane) {
        for (int c = 0; c < 2; c++)
            store_samples_th(frame_plane_th(frame, 1 + c, ch, cw, 1, type).select(2, 0),
                             chroma[c], depth);
    } else {
        store_samples_th(frame_plane_th(frame, 1, ch, cw, 2, type),
                         chroma.permute({ 1, 2, 0 }), depth);
    }
    return 0;
}

/**
 * Give the output of a 1-channel model, which wrote Y, the chroma of its
 * input: copied at the same size, resized bicubically otherwise.
 */
static void pass_chroma_th(const AVFrame *in, AVFrame *out)
{
    enum AVPixelFormat fmt = frame_format_th(out);
    const AVPixFmtDescriptor *desc = av_pix_fmt_desc_get(fmt);
    torch::ScalarType type = sample_type_th(fmt);
    int depth = depth_th(fmt);
    int interleaved = desc->comp[1].plane == desc->comp[2].plane;
    int in_w  = AV_CEIL_RSHIFT(in->width,   desc->log2_chroma_w);
    int in_h  = AV_CEIL_RSHIFT(in->height,  desc->log2_chroma_h);
    int out_w = AV_CEIL_RSHIFT(out->width,  desc->log2_chroma_w);
    int out_h = AV_CEIL_RSHIFT(out->height, desc->log2_chroma_h);

    for (int p = 1; p <= (interleaved ? 1 : 2); p++) {
        torch::Tensor src = frame_plane_th(in, p, in_h, in_w, interleaved ? 2 : 1, type);
        torch::Tensor dst = frame_plane_th(out, p, out_h, out_w, interleaved ? 2 : 1, type);
        if (in_w == out_w && in_h == out_h) {
            dst.copy_(src);
            continue;
        }
        torch::Tensor v = samples_th(src, depth).permute({ 2, 0, 1 }).unsqueeze(0);
        v = at::upsample_bicubic2d(v, { out_h, out_w }, false);
        store_samples_th(dst, v[0].permute({ 1, 2, 0 }), depth);
    }
}

/*
 * 8-bit packed RGB, gray and Y planes in host memory, the common CPU case,
 * are converted in one pass each way over rows split between LibTorch's
 * threads: in through a table that holds sample / 255.0f (the value the
 * torch ops give), out rounded and clamped as the torch ops would.  A
 * channels-last batch (see THModel.channels_last) is in the frame's own
 * pixel order, so a packed row is read and written as it lies.  Plain C,
 * scalar under FFmpeg's -fno-tree-vectorize (GCC < 13): a single pass is
 * what makes it faster than ATen's vectorized kernels, which take one pass
 * per operation.
 */

enum THHostLayout {
    TH_HOST_NONE,
    TH_HOST_PLANAR,      ///< C x H x W contiguous
    TH_HOST_INTERLEAVED, ///< channels-last: H x W x C in memory, as packed RGB
};

/** Whether the frame and the C x H x W float tensor qualify, and how. */
static enum THHostLayout packed_on_host_th(const AVFrame *frame, const torch::Tensor &t)
{
    enum AVPixelFormat fmt = frame_format_th(frame);
    int64_t c = t.size(0), w = t.size(2);

    if (frame->format != fmt || !t.device().is_cpu() ||
        t.scalar_type() != torch::kFloat32 || fmt == AV_PIX_FMT_GRAYF32 ||
        depth_th(fmt) != 8 || c != format_channels_th(fmt) ||
        t.size(1) != frame->height || w != frame->width)
        return TH_HOST_NONE;
    if (t.is_contiguous())
        return TH_HOST_PLANAR;
    if (t.stride(0) == 1 && t.stride(2) == c && t.stride(1) == w * c)
        return TH_HOST_INTERLEAVED;
    return TH_HOST_NONE;
}

/** Samples 0 to 255 as floats in [0, 1], as sample / 255.0f gives them. */
static const float *dequantize_table_th(void)
{
    static const std::vector<float> table = [] {
        std::vector<float> t(256);
        for (int i = 0; i < 256; i++)
            t[i] = i / 255.0f;
        return t;
    }();
    return table.data();
}

/** Where sample c of pixel x of row y lies: in the frame's first plane and
 *  in a C x H x W float tensor laid out as packed_on_host_th() found. */
struct THHostGeometry {
    int step;          ///< frame bytes from one pixel to the next
    int64_t pixel;     ///< tensor elements from one pixel to the next
    int64_t channel;   ///< tensor elements from one channel to the next
    int64_t row;       ///< tensor elements from one row to the next
    bool runs;         ///< the row is one run of samples in both

    THHostGeometry(const AVFrame *frame, int c, enum THHostLayout layout)
        : step(is_rgb32_th(frame_format_th(frame)) ? 4 : c),
          pixel(layout == TH_HOST_INTERLEAVED ? c : 1),
          channel(layout == TH_HOST_INTERLEAVED ? 1 : (int64_t)frame->width * frame->height),
          row(layout == TH_HOST_INTERLEAVED ? (int64_t)frame->width * c : frame->width),
          runs(step == c && pixel == c) {}
};

static void unpack_th(const AVFrame *frame, float *dst, int channels,
                      enum THHostLayout layout)
{
    const float *table = dequantize_table_th();
    const THHostGeometry g(frame, channels, layout);
    int64_t width = frame->width;

    at::parallel_for(0, frame->height, 16, [&](int64_t begin, int64_t end) {
        for (int64_t y = begin; y < end; y++) {
            const uint8_t *src = frame->data[0] + y * frame->linesize[0];
            float *out = dst + y * g.row;
            if (g.runs) {
                for (int64_t i = 0; i < width * channels; i++)
                    out[i] = table[src[i]];
                continue;
            }
            for (int64_t x = 0; x < width; x++)
                for (int c = 0; c < channels; c++)
                    out[x * g.pixel + c * g.channel] = table[src[x * g.step + c]];
        }
    });
}

/** v in [0, 1] as a sample: v * 255 rounded half to even, as torch.round()
 *  rounds, and clamped; *nan is set for NaN, which becomes 0. */
static inline uint8_t quantize_th(float v, int *nan)
{
    v *= 255.0f;
    *nan |= v != v;
    v = v > 0.0f ? v : 0.0f;
    v = v < 255.0f ? v : 255.0f;
    return (uint8_t)lrintf(v);
}

/**
 * The inverse of unpack_th(), in one pass that also looks for NaN: the
 * multiply, round, clamp, narrowing and NaN test as separate ATen passes
 * read a 1080p frame five times.
 * @return 1 if src holds NaN, 0 otherwise
 */
static int pack_th(const float *src, AVFrame *frame, int channels,
                   enum THHostLayout layout)
{
    const THHostGeometry g(frame, channels, layout);
    int64_t width = frame->width;
    std::atomic<int> found(0);

    at::parallel_for(0, frame->height, 16, [&](int64_t begin, int64_t end) {
        int nan = 0;
        for (int64_t y = begin; y < end; y++) {
            const float *in = src + y * g.row;
            uint8_t *out = frame->data[0] + y * frame->linesize[0];
            if (g.runs) {
                for (int64_t i = 0; i < width * channels; i++)
                    out[i] = quantize_th(in[i], &nan);
                continue;
            }
            for (int64_t x = 0; x < width; x++)
                for (int c = 0; c < channels; c++)
                    out[x * g.step + c] = quantize_th(in[x * g.pixel + c * g.channel], &nan);
        }
        if (nan)
            found = 1;
    });
    return found;
}

/**
 * Fill dst, a C x H x W float tensor, from the frame: in one pass where
 * packed_on_host_th() allows, otherwise as a detector reads it.
 */
static void frame_to_tensor_th(const AVFrame *frame, torch::Tensor &dst)
{
    enum THHostLayout layout = packed_on_host_th(frame, dst);

    if (layout != TH_HOST_NONE) {
        unpack_th(frame, dst.data_ptr<float>(), dst.size(0), layout);
        return;
    }
    dst.copy_(frame_region_th(frame, dst.size(0), 0, 0, frame->width, frame->height, 0));
}

/**
 * Write src, a C x H x W float tensor, into the frame.
 * @return 1 if src holds NaN (the frame is then not usable), 0 otherwise
 */
static int tensor_to_frame_th(const torch::Tensor &src, AVFrame *frame,
                              torch::Tensor *nan_flag)
{
    enum AVPixelFormat fmt = frame_format_th(frame);
    int channels = format_channels_th(fmt);
    enum THHostLayout layout;
    torch::Tensor values, plane;

    if (src.size(0) == 3 && channels == 1 && is_yuv_th(fmt))
        return rgb_to_yuv_frame_th(src, frame, nan_flag);
    layout = packed_on_host_th(frame, src);
    if (layout != TH_HOST_NONE)
        return pack_th(src.data_ptr<float>(), frame, channels, layout);

    /* Otherwise (P010, a model's own output strides, GPU memory) through
     * ATen's kernels: one plane, gray, Y, or packed RGB in its memory
     * order. */
    values = src.permute({ 1, 2, 0 });
    if (has_nan_th(values, nan_flag))
        return 1;
    if (fmt == AV_PIX_FMT_GRAYF32) {
        frame_plane_th(frame, 0, frame->height, frame->width, 1, torch::kFloat32).copy_(values);
        return 0;
    }
    plane = frame_plane_th(frame, 0, frame->height, frame->width, channels,
                           sample_type_th(fmt), is_rgb32_th(fmt) ? 4 : 0);
    store_samples_th(plane, values * ((1 << depth_th(fmt)) - 1), depth_th(fmt));
    return 0;
}

/**
 * Resize src (C x h x w) into dst (C x H x W) with antialiased bilinear
 * interpolation, stretched or letterboxed as dnn_input_rect() places it.
 */
static void fit_tensor_th(const torch::Tensor &src, torch::Tensor &dst, int letterbox)
{
    int x, y, w, h;
    torch::Tensor area = dst;

    dnn_input_rect(src.size(2), src.size(1), dst.size(2), dst.size(1),
                   letterbox, &x, &y, &w, &h);
    if (w != dst.size(2) || h != dst.size(1)) {
        dst.fill_(TH_LETTERBOX_GRAY);
        area = dst.narrow(1, y, h).narrow(2, x, w);
    }
    if (src.size(1) == h && src.size(2) == w) {
        area.copy_(src);
        return;
    }
    area.copy_(torch::nn::functional::interpolate(src.unsqueeze(0),
        torch::nn::functional::InterpolateFuncOptions()
            .size(std::vector<int64_t>{ h, w }).mode(torch::kBilinear)
            .align_corners(false).antialias(true))[0]);
}

/* -------------------------------------------------------------------------
 * CUDA frames.
 *
 * They are converted where they lie, on FFmpeg's own CUDA stream, so that
 * the work is ordered after whatever wrote the input (a decoder, hwupload)
 * and before whatever reads the output, with no event between streams.
 */

#if TH_CUDA_FRAMES
/**
 * Makes FFmpeg's CUDA context (the device's primary one, checked) current on
 * the calling thread for the scope, as FFmpeg's CUDA filters do, whatever
 * context the thread had: LibTorch works in the current context.
 */
class THCudaContext {
public:
    THCudaContext(void *log_ctx, const AVBufferRef *frames) : frames_(frames)
    {
        if (ff_dnn_cuda_push(log_ctx, frames) < 0)
            throw std::runtime_error("could not make FFmpeg's CUDA context current");
    }

    ~THCudaContext() { ff_dnn_cuda_pop(frames_); }

    THCudaContext(const THCudaContext &) = delete;
    THCudaContext &operator=(const THCudaContext &) = delete;

private:
    const AVBufferRef *frames_;
};
#endif

/**
 * For CUDA frames, makes FFmpeg's context, the frames' device and FFmpeg's
 * stream the current ones of the calling thread for the scope: request
 * threads have none of them.  The device and stream are the request's own
 * copy, taken when it started.  Nothing for frames in memory.
 */
class THCudaScope {
public:
    THCudaScope(const THRequestItem *request, const AVFrame *frame)
    {
#if TH_CUDA_FRAMES
        if (frame->format != AV_PIX_FMT_CUDA)
            return;
        c10::DeviceIndex index = request->cuda_device;
        context_.emplace(request->th_model->ctx, frame->hw_frames_ctx);
        c10::cuda::CUDAStream stream = request->cuda_stream ?
            c10::cuda::getStreamFromExternal((cudaStream_t)request->cuda_stream, index) :
            c10::cuda::getDefaultCUDAStream(index);
        guard_.emplace(stream.unwrap());
#endif
    }

    /**
     * Wait for the work queued on the stream so far: the frames it reads may
     * be freed and reused once this returns.  A stream wait follows the
     * context's scheduling flags (FFmpeg creates the primary context with
     * blocking sync), where an event wait would spin a core.
     */
    void wait()
    {
#if TH_CUDA_FRAMES
        if (guard_)
            guard_->current_stream().synchronize();
#endif
    }

private:
#if TH_CUDA_FRAMES
    /* Declared first: the context stays current until the guard is gone. */
    std::optional<THCudaContext> context_;
    std::optional<c10::StreamGuard> guard_;
#endif
};

/**
 * Check CUDA frames before the first one is queued, and again when their
 * frames context changes: the device context, the device against the
 * model's, the sw_format.
 */
static int check_cuda_frames_th(THModel *th_model, const AVFrame *frame)
{
    DnnContext *ctx = th_model->ctx;

    if (frame->format != AV_PIX_FMT_CUDA)
        return 0;
    if (!frame->hw_frames_ctx) {
        av_log(ctx, AV_LOG_ERROR, "A CUDA frame without a frames context.\n");
        return AVERROR(EINVAL);
    }
#if TH_CUDA_FRAMES
    if (th_model->cuda_frames && frame->hw_frames_ctx->data == th_model->cuda_frames->data)
        return 0;
    enum AVPixelFormat sw_format = frame_format_th(frame);
    const torch::Device *model_device = th_model->device;
    int device, ret;
    void *stream;

    if (!format_channels_th(sw_format) || sw_format == AV_PIX_FMT_GRAYF32) {
        av_log(ctx, AV_LOG_ERROR, "CUDA frames of %s are not supported; use "
               "nv12, p010, yuv420p, yuv444p, bgra, rgba, bgr0 or rgb0 "
               "(scale_cuda=format=... converts).\n", av_get_pix_fmt_name(sw_format));
        return AVERROR(ENOSYS);
    }
    ret = ff_dnn_cuda_frames_device(ctx, frame->hw_frames_ctx, &device, &stream);
    if (ret < 0)
        return ret;
    /* A model loaded on "cuda" went to device 0. */
    if (!model_device->is_cuda() ||
        (model_device->has_index() ? model_device->index() : 0) != device) {
        av_log(ctx, AV_LOG_ERROR, "The frames are on CUDA device %d and the "
               "model on %s: set device=cuda:%d.\n", device,
               model_device->str().c_str(), device);
        return AVERROR(EINVAL);
    }
    av_buffer_unref(&th_model->cuda_frames);
    th_model->cuda_frames = av_buffer_ref(frame->hw_frames_ctx);
    if (!th_model->cuda_frames)
        return AVERROR(ENOMEM);
    th_model->cuda_device = device;
    th_model->cuda_stream = stream;
    av_log(ctx, AV_LOG_VERBOSE, "CUDA frames of %s on device %d, %s stream.\n",
           av_get_pix_fmt_name(sw_format), device, stream ? "FFmpeg's" : "the default");
    return 0;
#else
    av_log(ctx, AV_LOG_ERROR, "This build takes no CUDA frames: it needs FFmpeg's "
           "CUDA support (nv-codec-headers) and a LibTorch 2.4 or later with "
           "CUDA at build time (this is LibTorch %s). Add hwdownload,format=... "
           "before the filter.\n", TORCH_VERSION);
    return AVERROR(ENOSYS);
#endif
}

/** t on device; bytes that cross between host and device are counted. */
static torch::Tensor to_device_th(THModel *th_model, const torch::Tensor &t,
                                  const torch::Device &device)
{
    if (t.device() != device && (t.device().is_cpu() || device.is_cpu())) {
        ff_mutex_lock(&th_model->mutex);
        th_model->transferred += t.nbytes();
        ff_mutex_unlock(&th_model->mutex);
    }
    return t.to(device);
}

/* -------------------------------------------------------------------------
 * Requests.
 */

static void destroy_request_item_th(THRequestItem **arg)
{
    THRequestItem *item = *arg;

    if (!item)
        return;
    ff_dnn_async_module_cleanup(&item->exec_module);
    for (int i = 0; i < item->nb_lltasks; i++)
        av_freep(&item->lltasks[i]);
    delete item->input;
    delete item->output;
    av_freep(arg);
}

/** Take an idle request, waiting for one to come back if none is. */
static THRequestItem *get_request_th(THModel *th_model)
{
    THRequestItem *request;

    ff_mutex_lock(&th_model->mutex);
    while (!th_model->nb_idle)
        ff_cond_wait(&th_model->request_back, &th_model->mutex);
    request = th_model->idle[--th_model->nb_idle];
    ff_mutex_unlock(&th_model->mutex);
    return request;
}

static void put_request_th(THRequestItem *request)
{
    THModel *th_model = request->th_model;

    ff_mutex_lock(&th_model->mutex);
    th_model->idle[th_model->nb_idle++] = request;
    ff_cond_broadcast(&th_model->request_back);
    ff_mutex_unlock(&th_model->mutex);
}

static void set_error_th(THModel *th_model, int err)
{
    ff_mutex_lock(&th_model->mutex);
    if (!th_model->error)
        th_model->error = err;
    ff_mutex_unlock(&th_model->mutex);
}

/**
 * The model input size: input_size where given (only a detector or classifier
 * takes it, see dnn_load_model_th), otherwise the frame's size.
 */
static void input_size_th(const THModel *th_model, const AVFrame *frame,
                          int *width, int *height)
{
    const THOptions *opts = &th_model->ctx->torch_option;

    *width  = frame->width;
    *height = frame->height;
    if (opts->input_width) {
        *width  = opts->input_width;
        *height = opts->input_height;
    }
}

/**
 * Normalize the model input in place, channel by channel, where it lies:
 * (x - mean) / std, one value of each for every channel or one for all.
 */
static void normalize_th(const THModel *th_model, torch::Tensor input)
{
    const THOptions *opts = &th_model->ctx->torch_option;

    for (int64_t c = 0; c < input.size(1); c++) {
        torch::Tensor channel = input.select(1, c);
        if (opts->nb_mean)
            channel.sub_(opts->mean[opts->nb_mean > 1 ? c : 0]);
        if (opts->nb_std)
            channel.div_(opts->std[opts->nb_std > 1 ? c : 0]);
    }
}

/** Fill one batch slot of a detector or classifier from its frame or box. */
static void fill_analytics_slot_th(const THModel *th_model,
                                   const LastLevelTaskItem *lltask,
                                   torch::Tensor &slot)
{
    const AVFrame *frame = lltask->task->in_frame;
    int x = 0, y = 0, w = frame->width, h = frame->height;

    if (th_model->model.func_type == DFT_ANALYTICS_CLASSIFY) {
        const AVFrameSideData *sd = av_frame_get_side_data(frame, AV_FRAME_DATA_DETECTION_BBOXES);
        const AVDetectionBBox *bbox =
            av_get_detection_bbox((const AVDetectionBBoxHeader *)sd->data, lltask->bbox_index);
        x = bbox->x;
        y = bbox->y;
        w = bbox->w;
        h = bbox->h;
    }
    /* Detectors and classifiers are promised R, G, B whatever the format. */
    fit_tensor_th(frame_region_th(frame, slot.size(0), x, y, w, h, 1), slot,
                  th_model->ctx->torch_option.letterbox);
}

static torch::MemoryFormat input_layout_th(const THModel *th_model)
{
    return th_model->channels_last ? torch::MemoryFormat::ChannelsLast
                                   : torch::MemoryFormat::Contiguous;
}

/**
 * Fill the request's batch and run the model on it; the failure, if any, in
 * request->status.
 */
static void run_request_th(THRequestItem *request)
{
    THModel *th_model = request->th_model;
    DnnContext *ctx = th_model->ctx;
    const AVFrame *first = request->lltasks[0]->task->in_frame;
    int analytics = th_model->model.func_type != DFT_PROCESS_FRAME;
    int64_t batch = th_model->net->fixed_batch() ? ctx->torch_option.batch_size
                                                 : request->nb_lltasks;

    request->batch = batch;
    /* The batch is filled here, on the thread that runs the model, so that
     * all LibTorch work of a request shares one OpenMP team; CUDA frames
     * fill it on their device. */
    try {
        int width, height;
        torch::TensorOptions options = torch::TensorOptions(torch::kFloat32)
                                           .device(frame_device_th(first));
        input_size_th(th_model, first, &width, &height);
        std::vector<int64_t> shape = { batch, th_model->nb_channels, height, width };
        torch::MemoryFormat layout = input_layout_th(th_model);
        if (!request->input->defined() || request->input->sizes() != shape ||
            request->input->device() != options.device() ||
            !request->input->is_contiguous(layout))
            *request->input = torch::empty(shape, options.memory_format(layout));
        for (int i = 0; i < request->nb_lltasks; i++) {
            torch::Tensor slot = (*request->input)[i];
            if (analytics)
                fill_analytics_slot_th(th_model, request->lltasks[i], slot);
            else
                frame_to_tensor_th(request->lltasks[i]->task->in_frame, slot);
        }
        normalize_th(th_model, request->input->narrow(0, 0, request->nb_lltasks));
        if (batch > request->nb_lltasks)
            request->input->narrow(0, request->nb_lltasks, batch - request->nb_lltasks).zero_();
    } catch (const std::exception &e) {
        av_log(ctx, AV_LOG_ERROR, "Could not convert the frame to a tensor: %s\n",
               error_reason(ctx, e).c_str());
        request->status = AVERROR_EXTERNAL;
        return;
    }

    try {
        c10::InferenceMode guard;
        torch::jit::IValue result = th_model->net->forward(
            to_device_th(th_model, *request->input, *th_model->device));
        std::string why;

        if (select_output_th(th_model, result, why) < 0) {
            av_log(ctx, AV_LOG_ERROR, "%s.\n", why.c_str());
            request->status = AVERROR(EINVAL);
            return;
        }
        if (!result.isTensor()) {
            av_log(ctx, AV_LOG_ERROR, "The model returned a %s; %s. Return one "
                   "tensor from forward(), or pick one with output=INDEX (tuple, "
                   "list) or output=KEY (dict).\n", describe_result_th(result).c_str(),
                   analytics ? "a detector or classifier returns a single tensor"
                             : "dnn_processing needs a single N x C x H x W tensor");
            request->status = AVERROR(EINVAL);
            return;
        }
        torch::Tensor out = result.toTensor();
        if (out.is_sparse() || out.is_quantized() || out.is_complex()) {
            av_log(ctx, AV_LOG_ERROR, "The model returned a %s tensor (%s); "
                   "return a dense real tensor%s.\n",
                   out.is_sparse() ? "sparse" : out.is_quantized() ? "quantized" :
                   "complex", c10::toString(out.scalar_type()),
                   out.is_sparse() ? " (to_dense())" : out.is_quantized() ?
                   " (dequantize())" : "");
            request->status = AVERROR(EINVAL);
            return;
        }
        if (analytics && (out.dim() < 1 || out.dim() > 4 ||
                          (batch > 1 && out.size(0) != batch))) {
            av_log(ctx, AV_LOG_ERROR, "The model returned a tensor of shape %s "
                   "for a batch of %d; a detector or classifier must return at "
                   "most 4 dimensions, the first one the batch when batch_size "
                   "is above 1.\n", c10::str(out.sizes()).c_str(), (int)batch);
            request->status = AVERROR(EINVAL);
            return;
        }
        if (!analytics && (out.dim() != 4 || out.size(0) != batch)) {
            av_log(ctx, AV_LOG_ERROR, "The model returned a tensor of shape %s "
                   "for an input of shape %s; dnn_processing needs N x C x H x W "
                   "with the input's N.\n",
                   c10::str(out.sizes()).c_str(),
                   c10::str(request->input->sizes()).c_str());
            request->status = AVERROR(EINVAL);
            return;
        }
        /* Frames go back where they came from; detections to the filter. */
        torch::Device dest = analytics ? torch::Device(torch::kCPU)
                                       : frame_device_th(first);
        /* Frames are written in the layout the model returns; detectors
         * and classifiers read theirs as plain arrays. */
        out = to_device_th(th_model, out.to(torch::kFloat32), dest);
        *request->output = out.contiguous(analytics ? torch::MemoryFormat::Contiguous
                                                    : out.suggest_memory_format());
    } catch (const std::exception &e) {
        av_log(ctx, AV_LOG_ERROR, "The model failed on an input of shape %s: %s%s\n",
               c10::str(request->input->sizes()).c_str(), error_reason(ctx, e).c_str(),
               failure_hint_th(th_model->net));
        request->status = AVERROR_EXTERNAL;
    }
}

/**
 * Run the request.  Always returns 0: a failure is kept in request->status
 * for the completion callback, so that the request goes back to the pool on
 * every path.
 */
static int th_start_inference(void *args)
{
    THRequestItem *request = (THRequestItem *)args;
    THModel *th_model = request->th_model;
    THLogWarnings warnings(th_model->ctx);

    request->status = 0;
    try {
        THCudaScope scope(request, request->lltasks[0]->task->in_frame);
        run_request_th(request);
    } catch (const std::exception &e) {
        av_log(th_model->ctx, AV_LOG_ERROR, "Could not run on the frames' CUDA "
               "device: %s\n", error_reason(th_model->ctx, e).c_str());
        request->status = AVERROR_EXTERNAL;
    }
    return 0;
}

/** Reallocate frame at the given size, keeping its properties. */
static int resize_frame_th(AVFrame *frame, int width, int height)
{
    AVFrame *tmp = av_frame_alloc();
    int ret;

    if (!tmp)
        return AVERROR(ENOMEM);
    tmp->format = frame->format;
    tmp->width  = width;
    tmp->height = height;
    ret = av_frame_get_buffer(tmp, 0);
    if (ret >= 0)
        ret = av_frame_copy_props(tmp, frame);
    if (ret < 0) {
        av_frame_free(&tmp);
        return ret;
    }
    av_frame_unref(frame);
    av_frame_move_ref(frame, tmp);
    av_frame_free(&tmp);
    return 0;
}

static int write_output_th(THRequestItem *request, int index, AVFrame *out,
                           torch::Tensor *nan_flag)
{
    THModel *th_model = request->th_model;
    DnnContext *ctx = th_model->ctx;
    torch::Tensor result = (*request->output)[index];
    int want = format_channels_th(frame_format_th(out));
    int ret;

    /* A 3-channel model writes all three planes of a YUV frame. */
    if (want == 1 && th_model->nb_channels == 3 && is_yuv_th(frame_format_th(out)))
        want = 3;
    if (result.size(0) != want) {
        av_log(ctx, AV_LOG_ERROR, "The model returned %d channels; %s output "
               "needs %d.\n", (int)result.size(0),
               av_get_pix_fmt_name(frame_format_th(out)), want);
        return AVERROR(EINVAL);
    }
    /* A frame whose size changed mid-stream gets an output of its own size. */
    if (result.size(1) != out->height || result.size(2) != out->width) {
        if (out->hw_frames_ctx) {
            av_log(ctx, AV_LOG_ERROR, "The model returned %dx%d for CUDA "
                   "frames of %dx%d: CUDA frames cannot change size mid-stream.\n",
                   (int)result.size(2), (int)result.size(1), out->width, out->height);
            return AVERROR(EINVAL);
        }
        ret = resize_frame_th(out, result.size(2), result.size(1));
        if (ret < 0)
            return ret;
    }
    try {
        const AVFrame *in = request->lltasks[index]->task->in_frame;
        if (tensor_to_frame_th(result, out, nan_flag)) {
            av_log(ctx, AV_LOG_ERROR, "The model returned NaN; check its "
                   "weights and that it expects input in [0, 1].\n");
            return AVERROR(EINVAL);
        }
        if (result.size(0) == 1 && is_yuv_th(frame_format_th(out)))
            pass_chroma_th(in, out);
        /* The fourth byte is the input's where the size allows, else opaque. */
        if (is_rgb32_th(frame_format_th(out))) {
            torch::Tensor alpha = wrap_plane_th(out, out->data[0] + 3, out->linesize[0],
                                                out->height, out->width, 1,
                                                torch::kUInt8, 4);
            if (in->width == out->width && in->height == out->height)
                alpha.copy_(wrap_plane_th(in, in->data[0] + 3, in->linesize[0], in->height,
                                          in->width, 1, torch::kUInt8, 4));
            else
                alpha.fill_(255);
        }
    } catch (const std::exception &e) {
        av_log(ctx, AV_LOG_ERROR, "Could not write the model's output: %s\n",
               error_reason(ctx, e).c_str());
        return AVERROR_EXTERNAL;
    }
    return 0;
}

/**
 * Hand the detector's output for one frame to the filter.  DNNData.dims holds
 * the output's own shape right-aligned, with -1 for the dimensions it does not
 * have: [1,N,6] gives {-1, 1, N, 6}, [N,6] gives {-1, -1, N, 6}.  In a batch,
 * each frame gets its row with the batch dimension kept, as 1.
 */
static int detect_output_th(THRequestItem *request, int index,
                            const LastLevelTaskItem *lltask)
{
    THModel *th_model = request->th_model;
    DNNModel *model = &th_model->model;
    torch::Tensor out = *request->output;
    DNNData output = { 0 };

    if (request->batch > 1)
        out = out[index].unsqueeze(0);
    for (int d = 0, rank = out.dim(); d < 4; d++) {
        int64_t size = d < 4 - rank ? -1 : out.size(d - (4 - rank));
        if (size > INT_MAX / 8) {
            av_log(th_model->ctx, AV_LOG_ERROR, "The model returned an "
                   "oversized detection tensor %s.\n", c10::str(out.sizes()).c_str());
            return AVERROR(EINVAL);
        }
        output.dims[d] = size;
    }
    output.data = out.data_ptr<float>();
    output.dt = DNN_FLOAT;
    return model->detect_post_proc(lltask->task->in_frame, &output, 1,
                                   model->filter_ctx);
}

/**
 * Hand the classifier's logits for one box to the filter, as probabilities
 * (softmax), in DNNData dims {1, 1, 1, classes}.
 */
static int classify_output_th(THRequestItem *request, int index,
                              const LastLevelTaskItem *lltask)
{
    THModel *th_model = request->th_model;
    DNNModel *model = &th_model->model;
    torch::Tensor logits = request->output->reshape({ request->batch, -1 })[index];
    DNNData output = { 0 };

    if (logits.numel() < 1 || logits.numel() > INT_MAX / 8) {
        av_log(th_model->ctx, AV_LOG_ERROR, "The model returned %lld scores "
               "per box; a classifier returns one per class.\n",
               (long long)logits.numel());
        return AVERROR(EINVAL);
    }
    torch::Tensor prob = torch::softmax(logits, 0).contiguous();
    if (std::isnan(prob.max().item<float>())) {
        av_log(th_model->ctx, AV_LOG_ERROR, "The model returned NaN scores; "
               "check its weights and that it expects input in [0, 1].\n");
        return AVERROR(EINVAL);
    }
    output.dims[0] = output.dims[1] = output.dims[2] = 1;
    output.dims[3] = prob.numel();
    output.data = prob.data_ptr<float>();
    output.dt = DNN_FLOAT;
    return model->classify_post_proc(lltask->task->in_frame, &output,
                                     lltask->bbox_index, model->filter_ctx);
}

/** Deliver the result of one lltask of the request. */
static int deliver_output_th(THRequestItem *request, int index,
                             torch::Tensor *nan_flag)
{
    THModel *th_model = request->th_model;
    const LastLevelTaskItem *lltask = request->lltasks[index];

    switch (th_model->model.func_type) {
    case DFT_PROCESS_FRAME:
        return write_output_th(request, index, lltask->task->out_frame, nan_flag);
    case DFT_ANALYTICS_DETECT:
    case DFT_ANALYTICS_CLASSIFY:
        try {
            if (th_model->model.func_type == DFT_ANALYTICS_DETECT)
                return detect_output_th(request, index, lltask);
            return classify_output_th(request, index, lltask);
        } catch (const std::exception &e) {
            av_log(th_model->ctx, AV_LOG_ERROR, "Could not read the model's "
                   "output: %s\n", error_reason(th_model->ctx, e).c_str());
            return AVERROR_EXTERNAL;
        }
    default:
        return AVERROR(ENOSYS);
    }
}

static void infer_completion_callback(void *args)
{
    THRequestItem *request = (THRequestItem *)args;
    THModel *th_model = request->th_model;
    THLogWarnings warnings(th_model->ctx);
    int ret = request->status;

    /* The filter may free and reuse the frames as soon as a task is done:
     * all GPU work on them ends first, whether the request failed or not. */
    try {
        THCudaScope scope(request, request->lltasks[0]->task->in_frame);
        torch::Tensor nan_flag;

        for (int i = 0; i < request->nb_lltasks; i++) {
            if (ret >= 0 && request->lltasks[i]->task->do_ioproc)
                ret = deliver_output_th(request, i, &nan_flag);
        }
        scope.wait();
        /* One byte read from the device, after the wait, for the request. */
        if (nan_flag.defined()) {
            ff_mutex_lock(&th_model->mutex);
            th_model->flags_read += nan_flag.nbytes();
            ff_mutex_unlock(&th_model->mutex);
        }
        if (nan_flag.defined() && nan_flag.item<bool>() && ret >= 0) {
            av_log(th_model->ctx, AV_LOG_ERROR, "The model returned NaN; check "
                   "its weights and that it expects input in [0, 1].\n");
            ret = AVERROR(EINVAL);
        }
    } catch (const std::exception &e) {
        av_log(th_model->ctx, AV_LOG_ERROR, "Could not finish the work on the "
               "frames' CUDA device: %s\n", error_reason(th_model->ctx, e).c_str());
        ret = AVERROR_EXTERNAL;
    }
    for (int i = 0; i < request->nb_lltasks; i++) {
        TaskItem *task = request->lltasks[i]->task;

        ff_mutex_lock(&th_model->mutex);
        if (ret < 0 && !th_model->error)
            th_model->error = ret;
        task->inference_done++;
        ff_mutex_unlock(&th_model->mutex);
        av_freep(&request->lltasks[i]);
    }
    request->nb_lltasks = 0;
    /* An idle request keeps its input tensor, not the model's last output. */
    request->output->reset();
    put_request_th(request);
}

/**
 * Take nb lltasks (all of one frame size) from the queue into the request
 * and run it, inline or on the request's thread.
 */
static void start_request_th(THModel *th_model, THRequestItem *request, int nb)
{
    DnnContext *ctx = th_model->ctx;

    for (int i = 0; i < nb; i++)
        request->lltasks[i] = (LastLevelTaskItem *)ff_queue_pop_front(th_model->lltask_queue);
    request->nb_lltasks = nb;
    request->cuda_device = th_model->cuda_device;
    request->cuda_stream = th_model->cuda_stream;

    if (ctx->async) {
        int ret = ff_dnn_start_inference_async(ctx, &request->exec_module);
        if (ret < 0) {
            request->status = ret;
            infer_completion_callback(request);
        }
        return;
    }
    th_start_inference(request);
    infer_completion_callback(request);
}

/**
 * Send queued frames to requests: full batches, and with flush the partial
 * one.  The lltask queue only ever holds frames of one size (see
 * dnn_execute_model_th), so every batch is one tensor.  Failures reach the
 * filter through get_result, with their tasks.
 */
static void dispatch_th(THModel *th_model, int flush)
{
    int batch_size = th_model->ctx->torch_option.batch_size;

    while (ff_queue_size(th_model->lltask_queue) >= (size_t)batch_size ||
           (flush && ff_queue_size(th_model->lltask_queue) > 0)) {
        int nb = FFMIN(ff_queue_size(th_model->lltask_queue), (size_t)batch_size);
        start_request_th(th_model, get_request_th(th_model), nb);
    }
}

/* -------------------------------------------------------------------------
 * Model.
 */

/**
 * Run the model once on zeros (one frame, or the batch a package runs);
 * out receives the output shape.
 */
static int probe_forward_th(THModel *th_model, int channels, int height,
                            int width, std::vector<int64_t> &out,
                            std::string &reason)
{
    int64_t batch = th_model->net->fixed_batch() ? th_model->ctx->torch_option.batch_size : 1;

    try {
        c10::InferenceMode guard;
        /* zeros() would not take the layout: empty() does. */
        torch::jit::IValue result = th_model->net->forward(
            torch::empty({ batch, channels, height, width },
                         torch::TensorOptions().device(*th_model->device)
                                               .memory_format(input_layout_th(th_model))).zero_());
        if (select_output_th(th_model, result, reason) < 0)
            return AVERROR(EINVAL);
        if (!result.isTensor()) {
            reason = "the model returned a " + describe_result_th(result) +
                     ", not a tensor (output=INDEX or output=KEY picks one)";
            return AVERROR(EINVAL);
        }
        out = result.toTensor().sizes().vec();
    } catch (const std::exception &e) {
        reason = error_reason(th_model->ctx, e);
        return AVERROR_EXTERNAL;
    }
    return 0;
}

/** The format of the frames on a link: for CUDA frames, that of their pool. */
static enum AVPixelFormat link_format_th(AVFilterLink *link)
{
    enum AVPixelFormat format = (enum AVPixelFormat)link->format;
    AVBufferRef *frames = format == AV_PIX_FMT_CUDA ?
                          avfilter_link_get_hw_frames_ctx(link) : NULL;

    if (frames)
        format = ((const AVHWFramesContext *)frames->data)->sw_format;
    av_buffer_unref(&frames);
    return format;
}

/** mean and std give one value, or one per input channel. */
static int check_normalization_th(const THModel *th_model)
{
    const THOptions *opts = &th_model->ctx->torch_option;

    if ((opts->nb_mean > 1 && opts->nb_mean != (unsigned)th_model->nb_channels) ||
        (opts->nb_std  > 1 && opts->nb_std  != (unsigned)th_model->nb_channels)) {
        av_log(th_model->ctx, AV_LOG_ERROR, "mean has %u values and std %u; the "
               "model takes %d channel%s: give one value, or one per channel.\n",
               opts->nb_mean, opts->nb_std, th_model->nb_channels,
               th_model->nb_channels > 1 ? "s" : "");
        return AVERROR(EINVAL);
    }
    return 0;
}

/**
 * Probe as probe_forward_th() does, on channels-last zeros first where the
 * model may take them, then on contiguous ones: a model whose code needs a
 * contiguous input (a .view() of it) fails on channels-last.  The layout
 * that runs is kept for the frames.
 */
static int probe_layout_th(THModel *th_model, int channels, int height, int width,
                           std::vector<int64_t> &out, std::string &reason)
{
    int ret;

    th_model->channels_last = !th_model->net->fixed_batch() && channels > 1;
    ret = probe_forward_th(th_model, channels, height, width, out, reason);
    if (ret != AVERROR_EXTERNAL || !th_model->channels_last)
        return ret;
    th_model->channels_last = 0;
    ret = probe_forward_th(th_model, channels, height, width, out, reason);
    if (ret >= 0)
        av_log(th_model->ctx, AV_LOG_VERBOSE, "The model does not run on "
               "channels-last input; giving it contiguous input.\n");
    return ret;
}

/** Keep the probe's output shape for get_output on the same size. */
static void keep_probe_th(THModel *th_model, int width, int height,
                          const std::vector<int64_t> &shape)
{
    th_model->probe_width  = width;
    th_model->probe_height = height;
    th_model->probe_rank   = FFMIN(shape.size(), FF_ARRAY_ELEMS(th_model->probe_shape));
    std::copy(shape.begin(), shape.begin() + th_model->probe_rank, th_model->probe_shape);
}

/**
 * TorchScript does not declare the input shape: unless the channels option
 * gives it, try the frame format's own channel count first (3 first for a
 * detector or classifier), then the other, at the size the model will get:
 * input_size, or the input link's frame size.
 */
static int probe_channels_th(THModel *th_model)
{
    DnnContext *ctx = th_model->ctx;
    AVFilterContext *filter_ctx = th_model->model.filter_ctx;
    AVFilterLink *inlink = filter_ctx && filter_ctx->nb_inputs ?
                           filter_ctx->inputs[0] : NULL;
    const THOptions *opts = &ctx->torch_option;
    int width = TH_PROBE_SIZE, height = TH_PROBE_SIZE;
    enum AVPixelFormat format = AV_PIX_FMT_NONE;
    int first = 3;
    std::vector<int64_t> shape;
    std::string reason;

    if (th_model->probed)
        return check_normalization_th(th_model);
    if (opts->input_width) {
        width  = opts->input_width;
        height = opts->input_height;
    } else if (inlink && inlink->w > 0 && inlink->h > 0) {
        width  = inlink->w;
        height = inlink->h;
    }
    th_model->probed = 1;
    /* Given channels: only the layout is probed.  A failure here is
     * reported where the model runs next, with its shapes. */
    if (th_model->nb_channels) {
        if (probe_layout_th(th_model, th_model->nb_channels, height, width, shape,
                            reason) >= 0)
            keep_probe_th(th_model, width, height, shape);
        return check_normalization_th(th_model);
    }
    /* Detectors and classifiers are taken to want color where both work;
     * the same frames in memory and on the GPU get the same choice. */
    if (inlink && inlink->format >= 0)
        format = link_format_th(inlink);
    if (th_model->model.func_type == DFT_PROCESS_FRAME && format_channels_th(format) == 1)
        first = 1;
    for (int c = first, i = 0; i < 2; c = 4 - c, i++) {
        std::string why;
        /* A model that runs takes c channels, whatever it returns: its
         * output is checked where it is used. */
        if (probe_layout_th(th_model, c, height, width, shape, why) != AVERROR_EXTERNAL) {
            th_model->nb_channels = c;
            keep_probe_th(th_model, width, height, shape);
            av_log(ctx, AV_LOG_VERBOSE, "Probed model input: %d channel%s, on "
                   "%dx%d zeros%s%s%s.\n", c, c > 1 ? "s" : "", width, height,
                   format != AV_PIX_FMT_NONE ? ", tried first for " : "",
                   format != AV_PIX_FMT_NONE ? av_get_pix_fmt_name(format) : "",
                   format != AV_PIX_FMT_NONE ? " frames" : "");
            return check_normalization_th(th_model);
        }
        av_log(ctx, AV_LOG_DEBUG, "Probe with %d channels failed: %s\n", c, why.c_str());
        if (c == first)
            reason = why;
    }
    /* Detectors are mostly exported for one input size: that is the fix. */
    if (th_model->model.func_type != DFT_PROCESS_FRAME && !opts->input_width) {
        av_log(ctx, AV_LOG_ERROR, "The model does not run on the frame size "
               "(%dx%d): a detector exported for one input size needs "
               "input_size=WxH, the size it was exported with (640x640 for "
               "YOLOv8). LibTorch's reason: %s\n", width, height, reason.c_str());
        return AVERROR(EINVAL);
    }
    av_log(ctx, AV_LOG_ERROR, "The model runs neither on 1 nor on 3 input "
           "channels; on %dx%dx%dx%d zeros: %s. Check the model, or set the "
           "channels option.%s\n",
           th_model->net->fixed_batch() ? opts->batch_size : 1, first, height,
           width, reason.c_str(), failure_hint_th(th_model->net));
    return AVERROR(EINVAL);
}

static int get_input_th(DNNModel *model, DNNData *input, const char *input_name)
{
    THModel *th_model = (THModel *)model;
    THLogWarnings warnings(th_model->ctx);
    int ret = probe_channels_th(th_model);

    if (ret < 0)
        return ret;
    input->dt = DNN_FLOAT;
    input->order = DCO_RGB;
    input->layout = DL_NCHW;
    input->dims[0] = 1;
    input->dims[1] = th_model->nb_channels;
    input->dims[2] = -1;
    input->dims[3] = -1;
    if (th_model->ctx->torch_option.input_width) {
        input->dims[2] = th_model->ctx->torch_option.input_height;
        input->dims[3] = th_model->ctx->torch_option.input_width;
    }
    return 0;
}

static int get_output_th(DNNModel *model, const char *input_name,
                         int input_width, int input_height,
                         const char *output_name,
                         int *output_width, int *output_height)
{
    THModel *th_model = (THModel *)model;
    DnnContext *ctx = th_model->ctx;
    THLogWarnings warnings(ctx);
    std::vector<int64_t> shape;
    std::string reason;
    int ret = probe_channels_th(th_model);

    if (ret < 0)
        return ret;
    if (th_model->probe_rank && th_model->probe_width == input_width &&
        th_model->probe_height == input_height)
        shape.assign(th_model->probe_shape, th_model->probe_shape + th_model->probe_rank);
    else
        ret = probe_forward_th(th_model, th_model->nb_channels, input_height,
                               input_width, shape, reason);
    if (ret < 0) {
        av_log(ctx, AV_LOG_ERROR, "The model failed on a %dx%dx%dx%d input: %s%s\n",
               th_model->net->fixed_batch() ? ctx->torch_option.batch_size : 1,
               th_model->nb_channels, input_height, input_width, reason.c_str(),
               ret == AVERROR_EXTERNAL ? failure_hint_th(th_model->net) : "");
        return ret;
    }
    if (shape.size() != 4) {
        av_log(ctx, AV_LOG_ERROR, "The model returned a %d-D tensor; "
               "dnn_processing needs N x C x H x W.\n", (int)shape.size());
        return AVERROR(EINVAL);
    }
    if (shape[2] <= 0 || shape[3] <= 0 || shape[2] > INT_MAX || shape[3] > INT_MAX) {
        av_log(ctx, AV_LOG_ERROR, "The model returned an empty or oversized "
               "output (%dx%d).\n", (int)shape[3], (int)shape[2]);
        return AVERROR(EINVAL);
    }
    *output_width  = shape[3];
    *output_height = shape[2];
    return 0;
}

static void free_task_th(TaskItem **task)
{
    if ((*task)->out_frame != (*task)->in_frame)
        av_frame_free(&(*task)->out_frame);
    av_frame_free(&(*task)->in_frame);
    av_freep(task);
}

static void dnn_free_model_th(DNNModel **model)
{
    THModel *th_model;

    if (!model || !*model)
        return;
    th_model = (THModel *)*model;
    THLogWarnings warnings(th_model->ctx);

    if (th_model->requests) {
        /* Callbacks give back every request, failed or not: this ends. */
        ff_mutex_lock(&th_model->mutex);
        while (th_model->nb_idle < th_model->nb_requests)
            ff_cond_wait(&th_model->request_back, &th_model->mutex);
        ff_mutex_unlock(&th_model->mutex);
        for (int i = 0; i < th_model->nb_requests; i++)
            destroy_request_item_th(&th_model->requests[i]);
        av_freep(&th_model->requests);
        av_freep(&th_model->idle);
    }
    if (th_model->lltask_queue) {
        while (ff_queue_size(th_model->lltask_queue)) {
            LastLevelTaskItem *lltask = (LastLevelTaskItem *)ff_queue_pop_front(th_model->lltask_queue);
            av_freep(&lltask);
        }
        ff_queue_destroy(th_model->lltask_queue);
    }
    if (th_model->task_queue) {
        while (ff_queue_size(th_model->task_queue)) {
            TaskItem *task = (TaskItem *)ff_queue_pop_front(th_model->task_queue);
            free_task_th(&task);
        }
        ff_queue_destroy(th_model->task_queue);
    }
    if (th_model->device)
        av_log(th_model->ctx, AV_LOG_VERBOSE, "Host-device copies of frame "
               "data: %" PRId64 " bytes; of NaN checks: %" PRId64 " bytes.\n",
               th_model->transferred, th_model->flags_read);
    /* A classifier that never ran is a mistake in the graph, not a result. */
    if (th_model->model.func_type == DFT_ANALYTICS_CLASSIFY && th_model->nb_frames &&
        !th_model->nb_classified)
        av_log(th_model->ctx, AV_LOG_WARNING, "dnn_classify classified nothing: %s\n",
               !th_model->nb_boxes ? "no frame carried detection boxes; put "
               "dnn_detect before it." : "no box was inside the frame with the "
               "target label; check target against the detector's labels.");
    av_buffer_unref(&th_model->cuda_frames);
    delete th_model->net;
    delete th_model->device;
    ff_cond_destroy(&th_model->request_back);
    ff_mutex_destroy(&th_model->mutex);
    av_freep(model);
}

/**
 * The records of a model file read as a PyTorch archive (TorchScript,
 * AOTInductor package, torch.save or torch.export.save), without the
 * archive's folder name; empty for a file that is no such archive.
 */
static std::vector<std::string> archive_records_th(const char *path)
{
    try {
        caffe2::serialize::PyTorchStreamReader reader(path);
        return reader.getAllRecords();
    } catch (const std::exception &e) {
        /* Not an archive LibTorch reads: torch::jit::load() will say why. */
        return {};
    }
}

static bool has_record_th(const std::vector<std::string> &records, const std::string &prefix)
{
    for (const std::string &record : records)
        if (!record.compare(0, prefix.size(), prefix))
            return true;
    return false;
}

/**
 * The models of an AOTInductor package, by name, from the archive's records
 * (data/aotinductor/NAME/...); empty for anything else, TorchScript
 * included.
 */
static std::vector<std::string> package_models_th(const std::vector<std::string> &records)
{
    const std::string prefix = "data/aotinductor/";
    std::vector<std::string> names;

    for (const std::string &record : records) {
        size_t end;
        if (record.compare(0, prefix.size(), prefix))
            continue;
        end = record.find('/', prefix.size());
        if (end == std::string::npos)
            continue;
        std::string name = record.substr(prefix.size(), end - prefix.size());
        if (std::find(names.begin(), names.end(), name) == names.end())
            names.push_back(name);
    }
    return names;
}

/**
 * Refuse model files that are no program LibTorch runs, with what they are
 * and how to make one: LibTorch's own reasons ("checkpoint file is
 * corrupted", "failed finding central directory") do not say.  Only a
 * regular file is opened, so that a FIFO or a device cannot block.
 */
static int check_model_file_th(DnnContext *ctx)
{
    const char *path = ctx->model_filename;
    struct stat st;

    if (stat(path, &st) < 0) {
        int err = AVERROR(errno);
        char reason[AV_ERROR_MAX_STRING_SIZE];

        av_strerror(err, reason, sizeof(reason));
        av_log(ctx, AV_LOG_ERROR, "Could not open the model '%s': %s.\n", path,
               reason);
        return err;
    }
    if (!S_ISREG(st.st_mode)) {
        av_log(ctx, AV_LOG_ERROR, "The model '%s' is %s, not a file: give the "
               "path of a TorchScript model or an AOTInductor package.\n", path,
               S_ISDIR(st.st_mode) ? "a directory" : "a FIFO, socket or device");
        return AVERROR(EINVAL);
    }
    return 0;
}

/** Whether an archive entry would be written outside the folder it goes to. */
static bool unsafe_record_th(const std::string &record)
{
    size_t start = 0;

    if (record.empty() || record[0] == '/')
        return true;
    while (start <= record.size()) {
        size_t end = record.find('/', start);
        if (end == std::string::npos)
            end = record.size();
        if (record.compare(start, end - start, "..") == 0)
            return true;
        start = end + 1;
    }
    return false;
}

/** The file name of a package model's compiled library; empty if it has none. */
static std::string package_library_th(const std::vector<std::string> &records,
                                      const std::string &name)
{
    const std::string prefix = "data/aotinductor/" + name + "/";

    for (const std::string &record : records) {
        size_t dot = record.rfind('.');
        std::string ext = dot == std::string::npos ? "" : record.substr(dot);
        if (!record.compare(0, prefix.size(), prefix) &&
            (ext == ".so" || ext == ".dylib" || ext == ".dll" || ext == ".pyd"))
            return record.substr(prefix.size());
    }
    return "";
}

/**
 * LibTorch's package loader trusts the archive: it writes each entry under a
 * temporary folder by its name, and compiles a model that comes as source.
 * Refuse entries that would land outside that folder, and models without
 * their compiled library, so that loading never runs a compiler.
 */
static int check_package_th(DnnContext *ctx, const std::vector<std::string> &records)
{
    const char *path = ctx->model_filename;

    for (const std::string &record : records) {
        if (unsafe_record_th(record)) {
            av_log(ctx, AV_LOG_ERROR, "The package '%s' has an entry named '%s', "
                   "outside its own folder; refusing to load it.\n", path,
                   record.c_str());
            return AVERROR_INVALIDDATA;
        }
    }
    for (const std::string &name : package_models_th(records)) {
        if (package_library_th(records, name).empty()) {
            av_log(ctx, AV_LOG_ERROR, "The model '%s' of the package '%s' has no "
                   "compiled library: the backend does not compile packages. "
                   "Make it with torch._inductor.aoti_compile_and_package().\n",
                   name.c_str(), path);
            return AVERROR(EINVAL);
        }
    }
    return 0;
}

/** Refuse archives that hold no program, saying what they hold. */
static int check_archive_th(DnnContext *ctx, const std::vector<std::string> &records)
{
    const char *path = ctx->model_filename;
    const char *ext = strrchr(path, '.');

    if (records.empty()) {
        if (ext && !av_strcasecmp(ext, ".onnx")) {
            av_log(ctx, AV_LOG_ERROR, "'%s' is an ONNX model: run it with "
                   "dnn_backend=onnx, or save the PyTorch model as TorchScript "
                   "or an AOTInductor package for dnn_backend=torch.\n", path);
            return AVERROR(EINVAL);
        }
        return 0;
    }
    if (has_record_th(records, "data/aotinductor/"))
        return check_package_th(ctx, records);
    if (has_record_th(records, "code/"))
        return 0;
    if (has_record_th(records, "models/") || has_record_th(records, "serialized_exported_program")) {
        av_log(ctx, AV_LOG_ERROR, "'%s' is an ExportedProgram saved with "
               "torch.export.save, which LibTorch cannot run: compile it into an "
               "AOTInductor package with torch._inductor.aoti_compile_and_package().\n",
               path);
        return AVERROR(EINVAL);
    }
    if (has_record_th(records, "data.pkl")) {
        av_log(ctx, AV_LOG_ERROR, "'%s' was saved with torch.save (a state_dict, "
               "or a training checkpoint such as Ultralytics' .pt): it holds "
               "weights, not a program. Export the model: "
               "torch.jit.script(model).save(), an AOTInductor package, or for "
               "Ultralytics 'yolo export format=torchscript'.\n", path);
        return AVERROR(EINVAL);
    }
    return 0;
}

static std::string join_th(const std::vector<std::string> &names)
{
    std::string s;
    for (const std::string &n : names)
        s += (s.empty() ? "" : ", ") + n;
    return s;
}

#if TH_PACKAGES
/** The integer after the first occurrence of key at or after pos in text. */
static bool number_after_th(const std::string &text, size_t pos,
                            const std::string &key, size_t end, int64_t *value)
{
    size_t at = text.find(key, pos);

    if (at == std::string::npos || at >= end)
        return false;
    *value = strtoll(text.c_str() + at + key.size(), NULL, 10);
    return true;
}

/**
 * The folders that LibTorch's package loader made for this model of the
 * package: it extracts a package under a fresh /tmp/XXXXXX (mkdtemp), and
 * a load that fails inside the loader leaves that folder behind without
 * saying which it was.  Only folders of this user that hold this model's
 * library, whose name carries a hash of its content, are taken.
 */
static std::set<std::string> package_folders_th(const std::string &name,
                                                const std::string &library)
{
    const std::string model_file = "/data/aotinductor/" + name + "/" + library;
    std::set<std::string> found;

    if (library.empty())
        return found;
    DIR *tmp = opendir("/tmp");
    struct dirent *entry;

    /* POSIX calls: the std::filesystem that LibTorch's libraries export
     * can take the place of the C++ library's. */
    while (tmp && (entry = readdir(tmp))) {
        std::string dir = std::string("/tmp/") + entry->d_name;
        struct stat st;
        DIR *top;
        struct dirent *sub;

        if (strlen(entry->d_name) != 6 || lstat(dir.c_str(), &st) < 0 ||
            !S_ISDIR(st.st_mode) || st.st_uid != getuid() || !(top = opendir(dir.c_str())))
            continue;
        /* The archive's own folder name is one level down: any will do. */
        while ((sub = readdir(top))) {
            std::string file = dir + "/" + sub->d_name + model_file;
            if (sub->d_name[0] != '.' && !access(file.c_str(), F_OK)) {
                found.insert(dir);
                break;
            }
        }
        closedir(top);
    }
    if (tmp)
        closedir(tmp);
    return found;
}

static int remove_entry_th(const char *path, const struct stat *st, int type,
                           struct FTW *ftw)
{
    remove(path);
    return 0;
}

#if TH_LOAD_ON_DEMAND
/** The folder of the libtorch_cpu this process runs with, "" if unknown. */
static std::string torch_folder_th(void)
{
    std::string folder;
#if TH_LOADED_OBJECTS
    dl_iterate_phdr([](struct dl_phdr_info *info, size_t, void *data) {
        const char *name = info->dlpi_name ? info->dlpi_name : "";
        const char *slash = strrchr(name, '/');
        if (!slash || strncmp(slash + 1, "libtorch_cpu.", 13))
            return 0;
        ((std::string *)data)->assign(name, slash - name);
        return 1;
    }, &folder);
#endif
    return folder;
}
#endif

/**
 * Load a LibTorch library that ffmpeg is not linked with (see configure),
 * from the folder of the libtorch_cpu it is linked with, and keep it: its
 * operators and device hooks register themselves when it is loaded.  With
 * PyPI's LibTorch, libtorch_cuda and the CUDA libraries it needs add 0.14 s
 * and 350 MiB to the start of every ffmpeg that links them.  LibTorch
 * decides once whether CUDA is there, at its first CUDA query, so the
 * library is loaded before any: see load_net_th().  Without what (the
 * feature that needs it, for the error), a library that cannot be loaded is
 * not an error: the device checks that follow say what is missing.
 */
static int load_torch_library_th(DnnContext *ctx, const char *name, const char *what)
{
#if TH_LOAD_ON_DEMAND
#ifdef __APPLE__
    std::string file = std::string("lib") + name + ".dylib";
#else
    std::string file = std::string("lib") + name + ".so";
#endif
    std::string path = file, folder = torch_folder_th();

    if (!folder.empty())
        path = folder + "/" + file;
    if (!dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL)) {
        const char *reason = dlerror();
        av_log(ctx, what ? AV_LOG_ERROR : AV_LOG_VERBOSE, "%s needs LibTorch's "
               "%s, which could not be loaded (a LibTorch built without it?): "
               "%s\n", what ? what : "The device", file.c_str(),
               reason ? reason : "unknown error");
        return what ? AVERROR(ENOSYS) : 0;
    }
#endif
    return 0;
}

/**
 * The sizes of input 0 of a package's model, from the input checks that
 * AOTInductor generates into the model's wrapper source, which the package
 * carries: "input_handles[0]: unmatched dim value at D, expected: N", and
 * "dim value is too small at D, expected it to be >= N" (too large, <=).
 * The package runs only with the PyTorch that wrote it, so the wording is
 * that of this LibTorch.  Reading the checks instead of switching them on
 * keeps the process environment alone.
 * @return 0, or AVERROR(EINVAL) if the source or the checks are missing
 */
static int package_shape_th(const char *path, const std::string &name,
                            THPackageShape *shape)
{
    caffe2::serialize::PyTorchStreamReader reader(path);
    const std::string prefix = "data/aotinductor/" + name + "/";
    const std::string suffix = ".wrapper.cpp";
    const std::string input = "input_handles[0]: ";
    int found = 0;

    for (int d = 0; d < 4; d++) {
        shape->min[d] = 1;
        shape->max[d] = INT64_MAX;
    }
    for (const std::string &record : reader.getAllRecords()) {
        if (record.compare(0, prefix.size(), prefix) || record.size() < suffix.size() ||
            record.compare(record.size() - suffix.size(), suffix.size(), suffix))
            continue;
        auto data = reader.getRecord(record);
        std::string text((const char *)std::get<0>(data).get(), std::get<1>(data));
        for (size_t pos = text.find(input); pos != std::string::npos;
             pos = text.find(input, pos + 1)) {
            /* One check per statement: the values come before its end. */
            size_t end = text.find(';', pos);
            int64_t dim, value;
            end = end == std::string::npos ? text.size() : end;
            if (number_after_th(text, pos, "unmatched dim value at ", end, &dim) &&
                dim >= 0 && dim < 4 && number_after_th(text, pos, "expected: ", end, &value)) {
                shape->min[dim] = shape->max[dim] = value;
                found = 1;
            } else if (number_after_th(text, pos, "dim value is too small at ", end, &dim) &&
                       dim >= 0 && dim < 4 &&
                       number_after_th(text, pos, "expected it to be >= ", end, &value)) {
                shape->min[dim] = value;
                found = 1;
            } else if (number_after_th(text, pos, "dim value is too large at ", end, &dim) &&
                       dim >= 0 && dim < 4 &&
                       number_after_th(text, pos, "expected to be <= ", end, &value)) {
                shape->max[dim] = value;
                found = 1;
            }
        }
    }
    return found ? 0 : AVERROR(EINVAL);
}
#endif

static int load_package_th(THModel *th_model, const std::vector<std::string> &records,
                           const std::vector<std::string> &names)
{
    DnnContext *ctx = th_model->ctx;
    const char *path = ctx->model_filename;
    const char *wanted = ctx->torch_option.model_name;
    std::string name = names[0];

    if (wanted) {
        if (std::find(names.begin(), names.end(), wanted) == names.end()) {
            av_log(ctx, AV_LOG_ERROR, "The package '%s' has no model '%s'; it "
                   "has: %s.\n", path, wanted, join_th(names).c_str());
            return AVERROR(EINVAL);
        }
        name = wanted;
    } else if (names.size() > 1) {
        av_log(ctx, AV_LOG_ERROR, "The package '%s' holds several models (%s); "
               "choose one with model_name.\n", path, join_th(names).c_str());
        return AVERROR(EINVAL);
    }
    if (ctx->torch_option.optimize)
        av_log(ctx, AV_LOG_WARNING, "optimize applies to TorchScript; a package "
               "is compiled already.\n");

#if TH_PACKAGES
    THPackageShape shape;
    std::set<std::string> folders;
    std::string library;

    int ret = load_torch_library_th(ctx, "torch", "An AOTInductor package");
    if (ret < 0)
        return ret;
    try {
        library = package_library_th(records, name);
        folders = package_folders_th(name, library);
        std::unordered_map<std::string, std::string> meta =
            torch::inductor::AOTIModelPackageLoader::load_metadata_from_package(path, name);
        std::string built = meta.count("AOTI_DEVICE_KEY") ? meta["AOTI_DEVICE_KEY"] : "cpu";
        std::string runs = c10::DeviceTypeName(th_model->device->type(), true);
        if (built != runs) {
            av_log(ctx, AV_LOG_ERROR, "The package '%s' was compiled for %s and "
                   "the filter runs on %s: set device=%s, or compile the package "
                   "for %s.\n", path, built.c_str(), runs.c_str(), built.c_str(),
                   runs.c_str());
            return AVERROR(EINVAL);
        }
        if (package_shape_th(path, name, &shape) < 0) {
            av_log(ctx, AV_LOG_ERROR, "The package '%s' does not say which input "
                   "shapes its model '%s' takes (its generated source, with the "
                   "input checks, is missing); refusing to run it unchecked.\n",
                   path, name.c_str());
            return AVERROR(EINVAL);
        }
        th_model->net = new THPackageNet(path, name, ctx->nireq,
                                         th_model->device->has_index() ?
                                         th_model->device->index() : -1, shape);
    } catch (const std::exception &e) {
        av_log(ctx, AV_LOG_ERROR, "Could not load AOTInductor package '%s': %s. "
               "A package runs with the PyTorch version that compiled it (this "
               "is LibTorch %s).\n", path, error_reason(ctx, e).c_str(), TORCH_VERSION);
        try {
            for (const std::string &dir : package_folders_th(name, library)) {
                if (!folders.count(dir))
                    nftw(dir.c_str(), remove_entry_th, 16, FTW_DEPTH | FTW_PHYS);
            }
        } catch (const std::exception &e2) {
            /* Cleaning up is all that failed: the error is above. */
        }
        return AVERROR(EINVAL);
    }
    av_log(ctx, AV_LOG_VERBOSE, "AOTInductor package, model '%s'.\n", name.c_str());
    return 0;
#else
    av_log(ctx, AV_LOG_ERROR, "'%s' is an AOTInductor package, which needs "
           "LibTorch 2.10 or later; this is LibTorch %s. Build against a newer "
           "LibTorch, or save the model as TorchScript (torch.jit.script or "
           "torch.jit.trace).\n", path, TORCH_VERSION);
    return AVERROR(ENOSYS);
#endif
}

/**
 * Check that every tensor of the module (parameters, buffers, attributes)
 * lies within its storage: an archive can claim more elements than it
 * stores, and LibTorch would read past the storage in the first forward.
 */
static int check_tensors_th(DnnContext *ctx, const torch::jit::Module &module)
{
    for (const auto &attr : module.named_attributes(true)) {
        if (!attr.value.isTensor())
            continue;
        const torch::Tensor &t = attr.value.toTensor();
        if (!t.defined() || !t.has_storage() || !t.numel())
            continue;
        uint64_t last = t.storage_offset(), size = t.element_size();
        int bad = t.storage_offset() < 0;
        for (int64_t d = 0; d < t.dim() && !bad; d++) {
            uint64_t extent = t.size(d) - 1;
            bad = t.stride(d) < 0 || (t.stride(d) && extent > (INT64_MAX - last) / t.stride(d));
            if (!bad)
                last += extent * t.stride(d);
        }
        if (bad || last >= INT64_MAX / size || (last + 1) * size > t.storage().nbytes()) {
            av_log(ctx, AV_LOG_ERROR, "The model '%s' is malformed: its tensor "
                   "'%s' of shape %s does not fit in the %zu bytes stored for "
                   "it.\n", ctx->model_filename, attr.name.c_str(),
                   c10::str(t.sizes()).c_str(), (size_t)t.storage().nbytes());
            return AVERROR_INVALIDDATA;
        }
    }
    return 0;
}

static int load_script_th(THModel *th_model)
{
    DnnContext *ctx = th_model->ctx;
    torch::jit::Module module;

    try {
        module = torch::jit::load(ctx->model_filename, *th_model->device);
        module.eval();
    } catch (const std::exception &e) {
        av_log(ctx, AV_LOG_ERROR, "Could not load TorchScript model '%s': %s\n",
               ctx->model_filename, error_reason(ctx, e).c_str());
        return AVERROR(EINVAL);
    }
    try {
        int ret = check_tensors_th(ctx, module);
        if (ret < 0)
            return ret;
    } catch (const std::exception &e) {
        av_log(ctx, AV_LOG_ERROR, "Could not check the tensors of '%s': %s\n",
               ctx->model_filename, error_reason(ctx, e).c_str());
        return AVERROR_INVALIDDATA;
    }

    if (ctx->torch_option.optimize == 2) {
        try {
            torch::jit::Module frozen = torch::jit::freeze(module);
            module = torch::jit::optimize_for_inference(frozen);
        } catch (const std::exception &e) {
            av_log(ctx, AV_LOG_WARNING, "Could not freeze the model, running it "
                   "unfrozen: %s\n", error_reason(ctx, e).c_str());
        }
    }
    try {
        th_model->net = new THScriptNet(module, ctx->torch_option.optimize == 1);
    } catch (const std::exception &e) {
        return AVERROR(ENOMEM);
    }
    return 0;
}

/** Load the model file, a TorchScript module or an AOTInductor package by content. */
static int load_net_th(THModel *th_model)
{
    DnnContext *ctx = th_model->ctx;
    const char *device_name = ctx->device ? ctx->device : "cpu";
    std::vector<std::string> records, packaged;
    int ret;

    try {
        th_model->device = new torch::Device(device_name);
    } catch (const std::exception &e) {
        av_log(ctx, AV_LOG_ERROR, "Invalid device '%s': %s\n", device_name,
               error_reason(ctx, e).c_str());
        return AVERROR(EINVAL);
    }
    if (th_model->device->is_cuda())
        load_torch_library_th(ctx, "torch_cuda", NULL);
    if (th_model->device->is_xpu())
        load_torch_library_th(ctx, "torch_xpu", NULL);
    if (th_model->device->is_cuda() && !torch::cuda::is_available()) {
        if (at::detail::getCUDAHooks().hasCUDART())
            av_log(ctx, AV_LOG_ERROR, "device=%s: LibTorch sees no CUDA device "
                   "(no GPU, or no NVIDIA driver). Use device=cpu.\n", device_name);
        else
            av_log(ctx, AV_LOG_ERROR, "device=%s: this LibTorch has no CUDA "
                   "support. Use device=cpu, or a LibTorch built with CUDA.\n",
                   device_name);
        return AVERROR(ENODEV);
    }
    if (th_model->device->is_xpu()) {
        if (!at::hasXPU()) {
            av_log(ctx, AV_LOG_ERROR, "device=%s: LibTorch sees no XPU device "
                   "(no Intel GPU, or a LibTorch without XPU). Use device=cpu.\n",
                   device_name);
            return AVERROR(ENODEV);
        }
        try {
#if TH_LIBTORCH_AT_LEAST(2, 6)
            at::detail::getXPUHooks().init();
#else
            at::detail::getXPUHooks().initXPU();
#endif
        } catch (const std::exception &e) {
            av_log(ctx, AV_LOG_ERROR, "device=%s: could not start the XPU: %s\n",
                   device_name, error_reason(ctx, e).c_str());
            return AVERROR(ENODEV);
        }
    }
    if (!th_model->device->is_cpu() && !th_model->device->is_cuda() &&
        !th_model->device->is_xpu()) {
        av_log(ctx, AV_LOG_ERROR, "device=%s is not supported; use cpu, cuda or "
               "xpu.\n", device_name);
        return AVERROR(ENOSYS);
    }
    /* One option names the device here, as in PyTorch. */
    if (ctx->device_id) {
        av_log(ctx, AV_LOG_ERROR, "device_id is not used by the torch backend; "
               "name the device with its index instead: device=cuda:%d.\n",
               ctx->device_id);
        return AVERROR(EINVAL);
    }

    ret = check_model_file_th(ctx);
    if (ret < 0)
        return ret;
    try {
        records = archive_records_th(ctx->model_filename);
        ret = check_archive_th(ctx, records);
        if (ret < 0)
            return ret;
        packaged = package_models_th(records);
    } catch (const std::exception &e) {
        return AVERROR(ENOMEM);
    }
    if (!packaged.empty())
        return load_package_th(th_model, records, packaged);
    if (ctx->torch_option.model_name)
        av_log(ctx, AV_LOG_WARNING, "model_name applies to AOTInductor packages; "
               "'%s' is not one.\n", ctx->model_filename);
    return load_script_th(th_model);
}

#if TH_HOST_CACHE
/**
 * LibTorch's CPU allocator hands every tensor to malloc and back.  glibc
 * serves blocks of 128 KiB and more with mmap() (always from threads other
 * than the main one, whose arenas cannot grow that far) and unmaps them when
 * freed, so every frame faults its activations in again, zero-filled by the
 * kernel: a 16-channel 3x3 conv net at 640x360 ran at 46 frames a second
 * with 12,000 page faults a frame, and at 120 without them.  Inference
 * allocates the same sizes frame after frame; this cache keeps large freed
 * blocks for the next request of the same size, as ONNX Runtime's arena
 * does.  Idle blocks never exceed the most that was ever in use at once,
 * the oldest going back to the system first, so a new frame size does not
 * keep the old one's memory.  It serves every LibTorch CPU tensor of the
 * process once a model is loaded, and lives as long as the process: tensors
 * may outlive any filter.
 */
class THHostCache final : public c10::Allocator {
public:
    static THHostCache *get()
    {
        static THHostCache *cache = new THHostCache();
        return cache;
    }

    c10::DataPtr allocate(size_t size) override
    {
        void *ptr = nullptr;

        /* Small blocks come from glibc's heap and are not kept; they share
         * the one deleter that raw_deleter() promises (oneDNN's scratch
         * memory comes through raw_allocate()). */
        if (size < min_size) {
            ptr = c10::alloc_cpu(size);
            return { ptr, ptr, release, c10::DeviceType::CPU };
        }
        {
            std::lock_guard<std::mutex> guard(lock_);
            for (size_t i = idle_.size(); i-- > 0;) {
                if (idle_[i].size == size) {
                    ptr = idle_[i].ptr;
                    idle_.erase(idle_.begin() + i);
                    idle_bytes_ -= size;
                    break;
                }
            }
        }
        if (!ptr)
            ptr = c10::alloc_cpu(size);
        try {
            std::lock_guard<std::mutex> guard(lock_);
            live_[ptr] = size;
            live_bytes_ += size;
            peak_bytes_ = std::max(peak_bytes_, live_bytes_);
        } catch (...) {
            c10::free_cpu(ptr);
            throw;
        }
        return { ptr, ptr, release, c10::DeviceType::CPU };
    }

    c10::DeleterFnPtr raw_deleter() const override
    {
        return release;
    }

    void copy_data(void *dst, const void *src, size_t count) const override
    {
        default_copy_data(dst, src, count);
    }

private:
    struct Block {
        void *ptr;
        size_t size;
    };
    /* glibc's default mmap threshold: smaller blocks come from its heap. */
    static const size_t min_size = 128 * 1024;

    static void release(void *ptr)
    {
        get()->keep(ptr);
    }

    void keep(void *ptr)
    {
        {
            std::lock_guard<std::mutex> guard(lock_);
            auto it = live_.find(ptr);
            if (it != live_.end()) {  /* a large block: keep it */
                size_t size = it->second;
                live_.erase(it);
                live_bytes_ -= size;
                try {
                    idle_.push_back({ ptr, size });
                    idle_bytes_ += size;
                    ptr = nullptr;
                } catch (const std::bad_alloc &) {
                    /* A deleter must not throw: free the block instead. */
                }
            }
            /* Oldest first. */
            while (idle_bytes_ > peak_bytes_ && !idle_.empty()) {
                void *old = idle_.front().ptr;
                idle_bytes_ -= idle_.front().size;
                idle_.erase(idle_.begin());
                c10::free_cpu(old);
            }
        }
        c10::free_cpu(ptr);
    }

    std::mutex lock_;
    std::unordered_map<void *, size_t> live_;
    std::vector<Block> idle_;
    size_t live_bytes_ = 0, idle_bytes_ = 0, peak_bytes_ = 0;
};
#endif

/** Put the host tensor cache in place of LibTorch's CPU allocator, once. */
static void use_host_cache_th(void)
{
#if TH_HOST_CACHE
    static std::once_flag once;
    std::call_once(once, [] { c10::SetCPUAllocator(THHostCache::get(), 1); });
#endif
}

/**
 * Set LibTorch's intra-op thread count, which is one setting for the whole
 * process: the last filter instance to load wins, so say so when two ask for
 * different counts.
 */
static void set_threads_th(DnnContext *ctx, int threads)
{
    static std::atomic<int> process_threads{ 0 };
    int previous = process_threads.exchange(threads);

    if (previous && previous != threads)
        av_log(ctx, AV_LOG_WARNING, "LibTorch's thread count is one for the "
               "whole process: %d threads for this filter replace the %d "
               "another torch filter set, for both. Give every torch filter "
               "the same threads option.\n", threads, previous);
    try {
        at::set_num_threads(threads);
    } catch (const std::exception &e) {
        av_log(ctx, AV_LOG_WARNING, "Could not set %d threads: %s\n", threads,
               error_reason(ctx, e).c_str());
    }
}

static DNNModel *dnn_load_model_th(DnnContext *ctx, DNNFunctionType func_type,
                                   AVFilterContext *filter_ctx)
{
    THOptions *opts = &ctx->torch_option;
    THLogWarnings warnings(ctx);
    THModel *th_model;
    DNNModel *model;
    int threads;

    if (!ctx->model_filename) {
        av_log(ctx, AV_LOG_ERROR, "No model given; set model=FILE.pt\n");
        return NULL;
    }
    if (func_type == DFT_PROCESS_FRAME && (opts->input_width || opts->letterbox)) {
        av_log(ctx, AV_LOG_ERROR, "input_size and letterbox apply to dnn_detect "
               "and dnn_classify; dnn_processing runs the model on the frame "
               "as it is. Add a scale filter instead.\n");
        return NULL;
    }
    if (func_type == DFT_ANALYTICS_CLASSIFY && !opts->input_width) {
        av_log(ctx, AV_LOG_ERROR, "dnn_classify resizes each box to the "
               "model's input size: set input_size=WxH.\n");
        return NULL;
    }
    if (opts->letterbox && !opts->input_width) {
        av_log(ctx, AV_LOG_ERROR, "letterbox needs input_size=WxH.\n");
        return NULL;
    }

    th_model = (THModel *)av_mallocz(sizeof(*th_model));
    if (!th_model)
        return NULL;
    model = &th_model->model;
    th_model->ctx = ctx;
    th_model->nb_channels = opts->nb_channels;
    ff_mutex_init(&th_model->mutex, NULL);
    ff_cond_init(&th_model->request_back, NULL);
    model->filter_ctx = filter_ctx;
    model->func_type = func_type;
    model->get_input = &get_input_th;
    model->get_output = &get_output_th;

    if (th_model->nb_channels == 2) {
        av_log(ctx, AV_LOG_ERROR, "channels=2 is not supported; use 1 or 3.\n");
        goto fail;
    }
    /* Requests in flight share the cores: one per core by default. */
    if (ctx->nireq <= 0)
        ctx->nireq = ctx->async ? 2 : 1;
    use_host_cache_th();
    if (load_net_th(th_model) < 0)
        goto fail;

    threads = opts->nb_threads;
    if (!threads)
        threads = FFMAX(1, av_cpu_count() / (ctx->async ? ctx->nireq : 1));
    set_threads_th(ctx, threads);

    th_model->requests = (THRequestItem **)av_calloc(ctx->nireq, sizeof(*th_model->requests));
    th_model->idle = (THRequestItem **)av_calloc(ctx->nireq, sizeof(*th_model->idle));
    th_model->task_queue = ff_queue_create();
    th_model->lltask_queue = ff_queue_create();
    if (!th_model->requests || !th_model->idle || !th_model->task_queue ||
        !th_model->lltask_queue)
        goto fail;

    for (int i = 0; i < ctx->nireq; i++) {
        THRequestItem *item = (THRequestItem *)av_mallocz(sizeof(*item));
        if (!item)
            goto fail;
        item->th_model = th_model;
        item->exec_module.start_inference = &th_start_inference;
        item->exec_module.callback = &infer_completion_callback;
        item->exec_module.args = item;
        th_model->requests[th_model->nb_requests++] = item;
        th_model->idle[th_model->nb_idle++] = item;
        try {
            item->input = new torch::Tensor();
            item->output = new torch::Tensor();
        } catch (const std::exception &e) {
            goto fail;
        }
    }

    av_log(ctx, AV_LOG_VERBOSE, "LibTorch %s: model %s on %s, %d request(s), "
           "%d thread(s), batch size %d, %s, optimize=%d\n", TORCH_VERSION,
           ctx->model_filename, ctx->device ? ctx->device : "cpu", ctx->nireq,
           threads, opts->batch_size, ctx->async ? "async" : "sync",
           opts->optimize);
    return model;

fail:
    dnn_free_model_th(&model);
    return NULL;
}

/**
 * Whether dnn_classify should classify this box: inside the frame, with room
 * for one more classification, and of the target label if one is given.
 */
static int classify_box_th(const AVFrame *frame, const AVDetectionBBox *bbox,
                           const char *target)
{
    if (bbox->x < 0 || bbox->y < 0 || bbox->w <= 0 || bbox->h <= 0 ||
        bbox->x > frame->width - bbox->w || bbox->y > frame->height - bbox->h)
        return 0;
    if (bbox->classify_count >= AV_NUM_DETECTION_BBOX_CLASSIFY)
        return 0;
    return !target || !av_strncasecmp(bbox->detect_label, target,
                                       sizeof(bbox->detect_label));
}

/**
 * Queue one lltask of the task: the whole frame, or one box to classify.
 * The task is queued already and owns the frames; on failure it stays
 * consistent and the error reaches the filter through get_result.
 */
static int push_lltask_th(THModel *th_model, TaskItem *task, uint32_t bbox_index)
{
    LastLevelTaskItem *lltask = (LastLevelTaskItem *)av_malloc(sizeof(*lltask));

    if (!lltask || ff_queue_push_back(th_model->lltask_queue, lltask) < 0) {
        av_free(lltask);
        set_error_th(th_model, AVERROR(ENOMEM));
        return AVERROR(ENOMEM);
    }
    lltask->task = task;
    lltask->bbox_index = bbox_index;
    task->inference_todo++;
    return 0;
}

static int dnn_execute_model_th(const DNNModel *model, DNNExecBaseParams *exec_params)
{
    THModel *th_model = (THModel *)model;
    DnnContext *ctx = th_model->ctx;
    THLogWarnings warnings(ctx);
    LastLevelTaskItem *last;
    TaskItem *task = NULL;
    AVFrame *frame;
    int ret;

    /* The frames are ours from here on: freed on failure until queued. */
    ret = ff_check_exec_params(ctx, DNN_TH, model->func_type, exec_params);
    if (ret != 0)
        goto fail;
    frame = exec_params->in_frame;
    ret = check_cuda_frames_th(th_model, frame);
    if (ret < 0)
        goto fail;
    if (!format_channels_th(frame_format_th(frame))) {
        av_log(ctx, AV_LOG_ERROR, "Frame format %s is not supported.\n",
               av_get_pix_fmt_name(frame_format_th(frame)));
        ret = AVERROR(ENOSYS);
        goto fail;
    }
    if (model->func_type != DFT_PROCESS_FRAME) {
        /* dnn_classify never asks for the model's input. */
        ret = probe_channels_th(th_model);
        if (ret < 0)
            goto fail;
        if (th_model->nb_channels == 1 &&
            format_channels_th(frame_format_th(frame)) == 3) {
            av_log(ctx, AV_LOG_ERROR, "The model takes 1 channel and the frames "
                   "are %s; add format=gray before the filter.\n",
                   av_get_pix_fmt_name(frame_format_th(frame)));
            ret = AVERROR(EINVAL);
            goto fail;
        }
    }

    task = (TaskItem *)av_malloc(sizeof(*task));
    if (!task) {
        ret = AVERROR(ENOMEM);
        goto fail;
    }
    ret = ff_dnn_fill_task(task, exec_params, th_model, ctx->async, 1);
    if (ret < 0)
        goto fail;
    task->inference_todo = 0;
    task->inference_done = 0;

    /* A batch is one tensor: send what waits before a frame of another size. */
    last = (LastLevelTaskItem *)ff_queue_peek_back(th_model->lltask_queue);
    if (last && (last->task->in_frame->width  != frame->width ||
                 last->task->in_frame->height != frame->height))
        dispatch_th(th_model, 1);

    ret = ff_queue_push_back(th_model->task_queue, task);
    if (ret < 0)
        goto fail;
    if (model->func_type == DFT_ANALYTICS_CLASSIFY) {
        const char *target = ((DNNExecClassificationParams *)exec_params)->target;
        const AVFrameSideData *sd = av_frame_get_side_data(frame, AV_FRAME_DATA_DETECTION_BBOXES);
        const AVDetectionBBoxHeader *header = sd ? (const AVDetectionBBoxHeader *)sd->data : NULL;

        /* A frame without boxes to classify is done as it is queued. */
        th_model->nb_frames++;
        th_model->nb_boxes += header ? header->nb_bboxes : 0;
        for (uint32_t i = 0; header && i < header->nb_bboxes; i++) {
            if (!classify_box_th(frame, av_get_detection_bbox(header, i), target))
                continue;
            th_model->nb_classified++;
            if (push_lltask_th(th_model, task, i) < 0)
                break;
        }
    } else {
        push_lltask_th(th_model, task, 0);
    }
    dispatch_th(th_model, 0);
    return 0;

fail:
    av_freep(&task);
    ff_dnn_free_exec_frames(exec_params);
    return ret;
}

static DNNAsyncStatusType dnn_get_result_th(const DNNModel *model, AVFrame **in, AVFrame **out)
{
    THModel *th_model = (THModel *)model;
    DNNAsyncStatusType status;
    TaskItem *task;

    ff_mutex_lock(&th_model->mutex);
    task = (TaskItem *)ff_queue_peek_front(th_model->task_queue);
    if (th_model->error) {
        status = DAST_FAIL;
    } else if (!task) {
        status = DAST_EMPTY_QUEUE;
    } else if (task->inference_done != task->inference_todo) {
        status = DAST_NOT_READY;
    } else {
        ff_queue_pop_front(th_model->task_queue);
        *in = task->in_frame;
        *out = task->out_frame;
        av_freep(&task);
        status = DAST_SUCCESS;
    }
    ff_mutex_unlock(&th_model->mutex);
    return status;
}

static int dnn_flush_th(const DNNModel *model)
{
    THLogWarnings warnings(((const THModel *)model)->ctx);

    dispatch_th((THModel *)model, 1);
    return 0;
}

} // namespace

extern const DNNModule ff_dnn_backend_torch = {
    .clazz          = DNN_DEFINE_CLASS(dnn_th),
    .type           = DNN_TH,
    .load_model     = dnn_load_model_th,
    .execute_model  = dnn_execute_model_th,
    .get_result     = dnn_get_result_th,
    .flush          = dnn_flush_th,
    .free_model     = dnn_free_model_th,
};
