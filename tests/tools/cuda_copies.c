/*
 * A CUDA injection library (CUDA_INJECTION64_PATH=this.so): the driver
 * loads it into the process at cuInit, and it counts, with CUPTI's activity
 * records, every copy between host and device and every kernel that ran,
 * whoever asked for them (FFmpeg through the driver API, LibTorch through
 * the runtime).  At exit it writes one line to $CUDA_COPIES_OUT:
 *
 *   htod_bytes=N dtoh_bytes=N dtod_bytes=N htod=N dtoh=N kernels=N dropped=N
 *
 * or "error=..." when CUPTI could not be set up.  The counts do not come
 * from the program under test, so a copy it does not report still counts.
 */

#define _GNU_SOURCE
#include <dlfcn.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include <cupti.h>

#define BUFFER_SIZE (1 << 20)

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t htod_bytes, dtoh_bytes, dtod_bytes, htod, dtoh, kernels, dropped;
static const char *setup_error;

static void write_totals(void)
{
    const char *path = getenv("CUDA_COPIES_OUT");
    FILE *f = path ? fopen(path, "w") : NULL;

    if (!f)
        return;
    pthread_mutex_lock(&lock);
    if (setup_error)
        fprintf(f, "error=%s\n", setup_error);
    else
        fprintf(f, "htod_bytes=%" PRIu64 " dtoh_bytes=%" PRIu64 " dtod_bytes=%" PRIu64
                " htod=%" PRIu64 " dtoh=%" PRIu64 " kernels=%" PRIu64 " dropped=%" PRIu64 "\n",
                htod_bytes, dtoh_bytes, dtod_bytes, htod, dtoh, kernels, dropped);
    pthread_mutex_unlock(&lock);
    fclose(f);
}

static void CUPTIAPI buffer_requested(uint8_t **buffer, size_t *size, size_t *max_records)
{
    *buffer = aligned_alloc(8, BUFFER_SIZE);
    *size = *buffer ? BUFFER_SIZE : 0;
    *max_records = 0;
}

static void CUPTIAPI buffer_completed(CUcontext ctx, uint32_t stream_id, uint8_t *buffer,
                                      size_t size, size_t valid)
{
    CUpti_Activity *record = NULL;
    size_t lost = 0;

    (void)size;

    pthread_mutex_lock(&lock);
    while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
        if (record->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
            const CUpti_ActivityMemcpy6 *copy = (const CUpti_ActivityMemcpy6 *)record;
            switch (copy->copyKind) {
            case CUPTI_ACTIVITY_MEMCPY_KIND_HTOD:
            case CUPTI_ACTIVITY_MEMCPY_KIND_HTOA:
                htod_bytes += copy->bytes;
                htod++;
                break;
            case CUPTI_ACTIVITY_MEMCPY_KIND_DTOH:
            case CUPTI_ACTIVITY_MEMCPY_KIND_ATOH:
                dtoh_bytes += copy->bytes;
                dtoh++;
                break;
            case CUPTI_ACTIVITY_MEMCPY_KIND_DTOD:
                dtod_bytes += copy->bytes;
                break;
            default:
                break;
            }
        } else if (record->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) {
            kernels++;
        }
    }
    if (cuptiActivityGetNumDroppedRecords(ctx, stream_id, &lost) == CUPTI_SUCCESS)
        dropped += lost;
    pthread_mutex_unlock(&lock);
    free(buffer);
}

static void at_exit(void)
{
    cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
    write_totals();
}

int InitializeInjection(void);

int InitializeInjection(void)
{
    Dl_info self;

    /* FFmpeg may dlclose libcuda before the process exits: stay loaded,
     * and keep the driver loaded, until the totals are written. */
    if (dladdr((void *)InitializeInjection, &self) && self.dli_fname)
        dlopen(self.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
    dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);

    if (cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed) != CUPTI_SUCCESS)
        setup_error = "cuptiActivityRegisterCallbacks";
    else if (cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY) != CUPTI_SUCCESS)
        setup_error = "cuptiActivityEnable(MEMCPY)";
    else if (cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) != CUPTI_SUCCESS)
        setup_error = "cuptiActivityEnable(CONCURRENT_KERNEL)";
    atexit(at_exit);
    return 1;
}
