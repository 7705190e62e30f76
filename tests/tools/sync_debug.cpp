/*
 * LD_PRELOAD this into a process that runs LibTorch on CUDA to turn on
 * c10's CUDA sync-debug mode from the start (torch.cuda.set_sync_debug_mode
 * in Python): every operation of LibTorch that makes the host wait for the
 * device (a stream synchronize, a copy to pageable memory, .item() on a
 * CUDA tensor) then warns, and the torch backend logs each LibTorch warning.
 * The mode is c10's warning_state(), a GNU unique object: the copy this
 * library makes, loaded first, is the one libc10_cuda uses when it is
 * loaded later.  SYNC_DEBUG=error makes those operations fail instead.
 */

#include <cstdlib>
#include <cstring>

#include <c10/cuda/CUDAFunctions.h>

__attribute__((constructor)) static void sync_debug_on()
{
    const char *mode = getenv("SYNC_DEBUG");

    c10::cuda::warning_state().set_sync_debug_mode(
        mode && !strcmp(mode, "error") ? c10::cuda::SyncDebugMode::L_ERROR
                                       : c10::cuda::SyncDebugMode::L_WARN);
}
