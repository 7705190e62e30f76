#!/bin/sh
# The CUDA checks in one command, for a machine with an NVIDIA GPU and a
# Python whose torch has CUDA (its torch/ folder is the LibTorch built
# against): configure against that torch with the pinned FFmpeg tarball and
# nv-codec-headers, build with every core, run make check-gpu and make
# bench-gpu, and write the logs, the results and a summary into OUT.  Each
# step has a time limit, so that the whole run ends within 8 minutes on 16
# cores; the CUDA tests run several at a time, and bench-gpu writes its
# results after each case, so that a step stopped at its limit still leaves
# what it found.
#
#   OUT=DIR tools/gpu-check.sh [--dry-run] [DEPS]
#
# DEPS holds ffmpeg-9.0.2.tar.xz and nv-codec-headers: the folder ffnvcodec/
# unpacked from libffmpeg-nvenc-dev_12.1.14.0-1_all.deb (for machines
# without dpkg-deb), or that .deb (default DEPS: .gpu).  GPU_PYTHON names the Python (default: python3).
# --dry-run runs the same steps on a machine without a GPU, where check-gpu
# and bench-gpu report that nothing ran: a rehearsal of everything but the
# GPU, with ten times the time limits, for a machine of few cores.  Exit
# status 0 when every step passed.
set -u
cd "$(dirname "$0")/.."

dry=0 scale=1
[ "${1:-}" = --dry-run ] && { dry=1 scale=10; shift; }
deps=${1:-.gpu}
out=${OUT:-build/gpu-check}
python=${GPU_PYTHON:-python3}
jobs=$(nproc)
mkdir -p "$out"
summary=$out/summary.txt
: > "$summary"
failed=0

note() { echo "gpu-check: $*" | tee -a "$summary"; }

# step NAME LIMIT COMMAND...: run with a time limit, output in OUT/NAME.log
step() {
    name=$1 limit=$(( $2 * scale ))
    shift 2
    t0=$(date +%s)
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    rc=$?
    t=$(( $(date +%s) - t0 ))
    if [ $rc = 0 ]; then
        note "$name: ok in ${t} s"
    else
        [ $rc = 124 ] && why="stopped at its ${limit} s limit" || why="exit $rc"
        note "$name: FAILED ($why, ${t} s); the end of $out/$name.log:"
        tail -n 25 "$out/$name.log" | tee -a "$summary"
        failed=1
    fi
    return $rc
}

[ -f "$deps/ffmpeg-9.0.2.tar.xz" ] ||
    { note "no $deps/ffmpeg-9.0.2.tar.xz: copy it from the pinned inputs"; exit 1; }
nvheaders=$deps/ffnvcodec
[ -d "$nvheaders" ] || nvheaders=$deps/libffmpeg-nvenc-dev_12.1.14.0-1_all.deb
[ -e "$nvheaders" ] || { note "no nv-codec-headers in $deps"; exit 1; }

if [ $dry = 1 ]; then
    note "dry run: no GPU expected"
else
    export PY="$python"
    step device 15 sh -c 'nvidia-smi --query-gpu=name,driver_version,memory.total \
        --format=csv,noheader && "$PY" -c "import torch; print(torch.__version__,
        torch.version.cuda, torch.cuda.get_device_name(0))"' ||
        { note "no GPU that this torch can use: stopping"; exit 1; }
    cat "$out/device.log" >> "$summary"
fi

# No registry is reachable on the GPU machine: nothing to install there.
step configure 30 ./configure --ffmpeg-tarball="$deps/ffmpeg-9.0.2.tar.xz" \
    --ffnvcodec="$nvheaders" \
    --python="$python" --openvino=no || exit 1
grep -q '^TORCH_CUDA = yes' build/config.mk ||
    { note "this torch has no CUDA: the checks need one"; failed=1; }
grep -q '^CUDA_FRAMES = yes' build/config.mk ||
    { note "the build has no CUDA frames (see $out/configure.log)"; failed=1; }

step build 150 make -j"$jobs" JOBS="$jobs" all upstream test-tools build/bench/forward || exit 1
grep -q '^#define HAVE_LIBTORCH_CUDA 1$' build/ours/config.h ||
    { note "FFmpeg's configure found no LibTorch CUDA: the CUDA path is not built"; failed=1; }

step check-gpu 190 make check-gpu TEST_JOBS="${TEST_JOBS:-6}"
grep -E '^[0-9]+ passed, [0-9]+ failed' "$out/check-gpu.log" | tail -n 1 | sed 's/^/check-gpu: /' >> "$summary"

step bench-gpu 95 make bench-gpu BENCH_FRAMES="${BENCH_FRAMES:-200}"
[ -f build/bench/results-gpu.json ] && cp build/bench/results-gpu.json "$out/"

note "done: $( [ $failed = 0 ] && echo 'every step passed' || echo 'a step failed' )"
exit $failed
