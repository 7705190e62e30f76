/*
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

#include "libavutil/cuda_check.h"
#include "libavutil/hwcontext.h"
#include "libavutil/hwcontext_cuda_internal.h"
#include "libavutil/log.h"
#include "dnn_cuda.h"

#define CHECK_CU(x) FF_CUDA_CHECK_DL(log_ctx, cu, x)

/* cuda.h's special stream handles, which dynlink_cuda.h does not define. */
#define DNN_CU_STREAM_LEGACY     ((CUstream)0x1)
#define DNN_CU_STREAM_PER_THREAD ((CUstream)0x2)

static const AVCUDADeviceContext *cuda_device_ctx(const AVBufferRef *frames_ref)
{
    const AVHWFramesContext *frames = (const AVHWFramesContext *)frames_ref->data;
    return frames->device_ctx->hwctx;
}

int ff_dnn_cuda_push(void *log_ctx, const AVBufferRef *frames_ref)
{
    const AVCUDADeviceContext *hwctx = cuda_device_ctx(frames_ref);
    CudaFunctions *cu = hwctx->internal->cuda_dl;

    return CHECK_CU(cu->cuCtxPushCurrent(hwctx->cuda_ctx));
}

void ff_dnn_cuda_pop(const AVBufferRef *frames_ref)
{
    const AVCUDADeviceContext *hwctx = cuda_device_ctx(frames_ref);
    CUcontext dummy;

    hwctx->internal->cuda_dl->cuCtxPopCurrent(&dummy);
}

int ff_dnn_cuda_frames_device(void *log_ctx, const AVBufferRef *frames_ref,
                              int *device, void **stream)
{
    const AVHWFramesContext *frames = (const AVHWFramesContext *)frames_ref->data;
    const AVCUDADeviceContext *hwctx = frames->device_ctx->hwctx;
    CudaFunctions *cu;
    CUcontext dummy, primary;
    CUdevice dev;
    int ret;

    if (frames->device_ctx->type != AV_HWDEVICE_TYPE_CUDA) {
        av_log(log_ctx, AV_LOG_ERROR, "The frames are on a %s device, not CUDA.\n",
               av_hwdevice_get_type_name(frames->device_ctx->type));
        return AVERROR(EINVAL);
    }
    cu = hwctx->internal->cuda_dl;

    ret = CHECK_CU(cu->cuCtxPushCurrent(hwctx->cuda_ctx));
    if (ret < 0)
        return ret;
    ret = CHECK_CU(cu->cuCtxGetDevice(&dev));
    CHECK_CU(cu->cuCtxPopCurrent(&dummy));
    if (ret < 0)
        return ret;

    /* Retaining the primary context only to compare it: released at once. */
    ret = CHECK_CU(cu->cuDevicePrimaryCtxRetain(&primary, dev));
    if (ret < 0)
        return ret;
    CHECK_CU(cu->cuDevicePrimaryCtxRelease(dev));
    if (primary != hwctx->cuda_ctx) {
        av_log(log_ctx, AV_LOG_ERROR, "The CUDA frames live in a CUDA context "
               "of their own, which LibTorch cannot use: it works in the "
               "device's primary context. Create the device with "
               "'-init_hw_device cuda=cu:%d,primary_ctx=1 -filter_hw_device cu' "
               "and upload with hwupload rather than hwupload_cuda; with NVDEC "
               "also pass '-hwaccel cuda -hwaccel_device cu'.\n", (int)dev);
        return AVERROR(EINVAL);
    }

    /* The per-thread default stream is another stream on each thread, and
     * the work runs on request threads: it cannot order it after FFmpeg's. */
    if (hwctx->stream == DNN_CU_STREAM_PER_THREAD) {
        av_log(log_ctx, AV_LOG_ERROR, "The CUDA device uses the per-thread "
               "default stream, which request threads cannot share; use a "
               "stream of its own or the legacy default stream.\n");
        return AVERROR(ENOSYS);
    }

    *device = dev;
    *stream = hwctx->stream == DNN_CU_STREAM_LEGACY ? NULL : hwctx->stream;
    return 0;
}
