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

/**
 * @file
 * What a DNN backend built on the CUDA runtime needs to know about
 * AV_PIX_FMT_CUDA frames.  Kept in C, apart from the backend: FFmpeg's
 * dynamically loaded CUDA declarations and the CUDA toolkit's own headers
 * cannot be included in one translation unit.
 */

#ifndef AVFILTER_DNN_DNN_CUDA_H
#define AVFILTER_DNN_DNN_CUDA_H

#include "libavutil/buffer.h"

/**
 * The device of CUDA frames and the stream FFmpeg orders its work on.
 *
 * Runtime-API libraries such as LibTorch work in the device's primary
 * context, where pointers of another context are not valid: frames in any
 * other context are refused with a message that gives the command-line fix.
 *
 * @param log_ctx    context for error messages
 * @param frames_ref the frames' AVHWFramesContext, of an AV_HWDEVICE_TYPE_CUDA device
 * @param device     set to the CUDA device ordinal
 * @param stream     set to the CUstream of the device context, NULL for the
 *                   legacy default stream (also when given as
 *                   CU_STREAM_LEGACY); the per-thread default stream is
 *                   refused
 * @return 0 on success, a negative AVERROR code otherwise
 */
int ff_dnn_cuda_frames_device(void *log_ctx, const AVBufferRef *frames_ref,
                              int *device, void **stream);

/**
 * Make the CUDA context of the frames current on the calling thread, as
 * FFmpeg's CUDA filters do around their work; ff_dnn_cuda_pop() restores
 * the previous one.
 *
 * @return 0 on success, a negative AVERROR code otherwise
 */
int ff_dnn_cuda_push(void *log_ctx, const AVBufferRef *frames_ref);

void ff_dnn_cuda_pop(const AVBufferRef *frames_ref);

#endif /* AVFILTER_DNN_DNN_CUDA_H */
