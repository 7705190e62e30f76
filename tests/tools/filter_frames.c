/*
 * Runs a filter graph through the libavfilter API on generated frames and
 * writes what comes out, raw, to stdout: how a program other than the
 * ffmpeg CLI uses the backend, with a CUDA device whose stream it chooses.
 *
 *   filter_frames WxH FRAMES PIX_FMT FILTERS [none|legacy|nonblocking|per-thread]
 *
 * FILTERS goes between a buffer source of WxH PIX_FMT frames and a buffer
 * sink.  The frames change from one to the next (a moving gradient and
 * noise), so that a frame read before it was written, or the wrong frame,
 * shows.  With a stream kind, every filter gets a CUDA device in the
 * primary context of device 0 whose AVCUDADeviceContext.stream is that
 * stream: the legacy default stream (NULL), a stream created with
 * CU_STREAM_NON_BLOCKING, which does not wait for the legacy one, or the
 * per-thread default stream (which the torch backend refuses).
 */

#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "libavfilter/avfilter.h"
#include "libavfilter/buffersink.h"
#include "libavfilter/buffersrc.h"
#include "libavutil/frame.h"
#include "libavutil/hwcontext.h"
#include "libavutil/imgutils.h"
#include "libavutil/parseutils.h"
#include "libavutil/pixdesc.h"

#if CONFIG_CUDA
#include "compat/cuda/dynlink_loader.h"
#include "libavutil/hwcontext_cuda.h"

/* cuda.h's CU_STREAM_PER_THREAD, which dynlink_cuda.h does not define. */
#define CU_STREAM_PER_THREAD_HANDLE ((CUstream)0x2)
#endif

typedef struct Device {
    AVBufferRef *ref;
#if CONFIG_CUDA
    CudaFunctions *cu;
    CUdevice dev;
    CUcontext ctx;
    CUstream stream;
    int own_stream;
#endif
} Device;

#if CONFIG_CUDA
static int cuda_call(int err, const char *what)
{
    if (err) {
        fprintf(stderr, "%s failed: CUDA error %d\n", what, err);
        return AVERROR_EXTERNAL;
    }
    return 0;
}
#endif

static int open_device(Device *d, const char *kind)
{
#if CONFIG_CUDA
    AVCUDADeviceContext *hwctx;
    CUcontext dummy;
    int ret;

    if ((ret = cuda_load_functions(&d->cu, NULL)) < 0)
        return ret;
    if ((ret = cuda_call(d->cu->cuInit(0), "cuInit")) < 0 ||
        (ret = cuda_call(d->cu->cuDeviceGet(&d->dev, 0), "cuDeviceGet")) < 0 ||
        (ret = cuda_call(d->cu->cuDevicePrimaryCtxRetain(&d->ctx, d->dev),
                         "cuDevicePrimaryCtxRetain")) < 0)
        return ret;
    if (!strcmp(kind, "nonblocking")) {
        if ((ret = cuda_call(d->cu->cuCtxPushCurrent(d->ctx), "cuCtxPushCurrent")) < 0)
            return ret;
        ret = cuda_call(d->cu->cuStreamCreate(&d->stream, CU_STREAM_NON_BLOCKING),
                        "cuStreamCreate");
        d->cu->cuCtxPopCurrent(&dummy);
        if (ret < 0)
            return ret;
        d->own_stream = 1;
    } else if (!strcmp(kind, "per-thread")) {
        d->stream = CU_STREAM_PER_THREAD_HANDLE;
    } else if (strcmp(kind, "legacy")) {
        fprintf(stderr, "unknown stream kind %s\n", kind);
        return AVERROR(EINVAL);
    }

    d->ref = av_hwdevice_ctx_alloc(AV_HWDEVICE_TYPE_CUDA);
    if (!d->ref)
        return AVERROR(ENOMEM);
    hwctx = ((AVHWDeviceContext *)d->ref->data)->hwctx;
    hwctx->cuda_ctx = d->ctx;
    hwctx->stream   = d->stream;
    return av_hwdevice_ctx_init(d->ref);
#else
    fprintf(stderr, "this build has no CUDA\n");
    return AVERROR(ENOSYS);
#endif
}

static void close_device(Device *d)
{
    av_buffer_unref(&d->ref);
#if CONFIG_CUDA
    if (d->cu) {
        CUcontext dummy;
        if (d->own_stream && !d->cu->cuCtxPushCurrent(d->ctx)) {
            d->cu->cuStreamDestroy(d->stream);
            d->cu->cuCtxPopCurrent(&dummy);
        }
        if (d->ctx)
            d->cu->cuDevicePrimaryCtxRelease(d->dev);
        cuda_free_functions(&d->cu);
    }
#endif
}

/* Frame n: a gradient that moves with n, plus noise, in every plane. */
static void fill_frame(AVFrame *frame, int n)
{
    const AVPixFmtDescriptor *desc = av_pix_fmt_desc_get(frame->format);
    uint32_t seed = 0x9e3779b9u * (n + 1);

    for (int p = 0; p < 4 && frame->data[p]; p++) {
        int w = av_image_get_linesize(frame->format, frame->width, p);
        int h = p == 1 || p == 2 ? AV_CEIL_RSHIFT(frame->height, desc->log2_chroma_h)
                                 : frame->height;
        for (int y = 0; y < h; y++) {
            uint8_t *row = frame->data[p] + (ptrdiff_t)y * frame->linesize[p];
            for (int x = 0; x < w; x++) {
                seed = seed * 1664525u + 1013904223u;
                row[x] = (uint8_t)(x * 3 + y * 2 + n * 11 + p * 50 + (seed >> 28));
            }
        }
    }
}

static int write_frame(const AVFrame *frame)
{
    int size = av_image_get_buffer_size(frame->format, frame->width, frame->height, 1);
    uint8_t *buf;
    int ret;

    if (size < 0)
        return size;
    if (!(buf = av_malloc(size)))
        return AVERROR(ENOMEM);
    ret = av_image_copy_to_buffer(buf, size, (const uint8_t * const *)frame->data,
                                  frame->linesize, frame->format, frame->width,
                                  frame->height, 1);
    if (ret >= 0 && fwrite(buf, 1, size, stdout) != (size_t)size)
        ret = AVERROR(EIO);
    av_free(buf);
    return ret;
}

/* Write the frames the sink has; at the end, all of them, up to its EOF. */
static int drain(AVFilterContext *sink, AVFrame *frame, int at_end)
{
    int ret;

    while ((ret = av_buffersink_get_frame(sink, frame)) >= 0) {
        ret = write_frame(frame);
        av_frame_unref(frame);
        if (ret < 0)
            return ret;
    }
    if (ret == AVERROR(EAGAIN) && at_end) {
        fprintf(stderr, "the graph still holds frames after its input ended\n");
        return AVERROR_BUG;
    }
    return ret == AVERROR(EAGAIN) || ret == AVERROR_EOF ? 0 : ret;
}

int main(int argc, char **argv)
{
    AVFilterGraph *graph = NULL;
    AVFilterContext *src = NULL, *sink = NULL;
    AVFilterInOut *inputs = NULL, *outputs = NULL;
    AVFrame *frame = NULL;
    Device device = { 0 };
    enum AVPixelFormat fmt;
    char args[256];
    int w, h, nb_frames, ret;

    if (argc < 5) {
        fprintf(stderr, "usage: %s WxH FRAMES PIX_FMT FILTERS "
                "[none|legacy|nonblocking|per-thread]\n", argv[0]);
        return 2;
    }
    if (av_parse_video_size(&w, &h, argv[1]) < 0 || (nb_frames = atoi(argv[2])) <= 0 ||
        (fmt = av_get_pix_fmt(argv[3])) == AV_PIX_FMT_NONE) {
        fprintf(stderr, "bad size, frame count or pixel format\n");
        return 2;
    }
    if (argc > 5 && strcmp(argv[5], "none") && (ret = open_device(&device, argv[5])) < 0)
        goto end;

    graph = avfilter_graph_alloc();
    outputs = avfilter_inout_alloc();
    inputs = avfilter_inout_alloc();
    frame = av_frame_alloc();
    if (!graph || !outputs || !inputs || !frame) {
        ret = AVERROR(ENOMEM);
        goto end;
    }
    snprintf(args, sizeof(args), "video_size=%dx%d:pix_fmt=%d:time_base=1/25:"
             "pixel_aspect=1/1", w, h, fmt);
    if ((ret = avfilter_graph_create_filter(&src, avfilter_get_by_name("buffer"), "in",
                                            args, NULL, graph)) < 0 ||
        (ret = avfilter_graph_create_filter(&sink, avfilter_get_by_name("buffersink"),
                                            "out", NULL, NULL, graph)) < 0)
        goto end;
    outputs->name = av_strdup("in");
    outputs->filter_ctx = src;
    inputs->name = av_strdup("out");
    inputs->filter_ctx = sink;
    if ((ret = avfilter_graph_parse_ptr(graph, argv[4], &inputs, &outputs, NULL)) < 0)
        goto end;
    for (unsigned i = 0; device.ref && i < graph->nb_filters; i++) {
        if (!(graph->filters[i]->hw_device_ctx = av_buffer_ref(device.ref))) {
            ret = AVERROR(ENOMEM);
            goto end;
        }
    }
    if ((ret = avfilter_graph_config(graph, NULL)) < 0)
        goto end;

    for (int n = 0; n < nb_frames; n++) {
        frame->format = fmt;
        frame->width = w;
        frame->height = h;
        frame->pts = n;
        if ((ret = av_frame_get_buffer(frame, 0)) < 0)
            goto end;
        fill_frame(frame, n);
        if ((ret = av_buffersrc_add_frame(src, frame)) < 0 ||
            (ret = drain(sink, frame, 0)) < 0)
            goto end;
    }
    if ((ret = av_buffersrc_add_frame(src, NULL)) < 0)
        goto end;
    ret = drain(sink, frame, 1);

end:
    avfilter_inout_free(&inputs);
    avfilter_inout_free(&outputs);
    avfilter_graph_free(&graph);
    av_frame_free(&frame);
    close_device(&device);
    if (ret < 0) {
        fprintf(stderr, "filter_frames: %s\n", av_err2str(ret));
        return 1;
    }
    return 0;
}
