#!/bin/sh
# Compile the DNN code the series writes, in a configured build, again with
# -Werror: the commands FFmpeg's make would run, with LibTorch's and CUDA's
# headers taken as system headers (their own warnings are not ours) and the
# objects written to a scratch folder, so that the build is left as it was.
#
#   tools/werror-check.sh BUILD [CUDA]
#
# With CUDA=cuda, the build must have LibTorch's CUDA path
# (HAVE_LIBTORCH_CUDA 1), so that the CUDA code is compiled too.
set -e
build=$(cd "$1" && pwd)
scratch=$(mktemp -d "${TMPDIR:-/tmp}/werror-check.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

if [ "$2" = cuda ] && ! grep -q '^#define HAVE_LIBTORCH_CUDA 1$' "$build/config.h"; then
    echo "werror-check: $build was built without LibTorch's CUDA path (HAVE_LIBTORCH_CUDA 0)"
    exit 1
fi

failed=0
for obj in libavfilter/dnn/dnn_backend_torch.o libavfilter/dnn/dnn_cuda.o \
           libavfilter/dnn/dnn_backend_common.o libavfilter/dnn/dnn_interface.o \
           libavfilter/dnn_filter_common.o libavfilter/vf_dnn_processing.o \
           libavfilter/vf_dnn_detect.o libavfilter/vf_dnn_classify.o; do
    [ -f "$build/$obj" ] || continue
    # make -n prints: printf "CXX\t%s\n" OBJ; COMMAND
    cmd=$(make -s -n -B -C "$build" "$obj" 2>/dev/null | sed -n 's/^printf [^;]*; //p' | tail -n 1)
    [ -n "$cmd" ] || { echo "werror-check: no compile command for $obj"; exit 1; }
    name=$(basename "$obj")
    cmd=$(echo "$cmd" | sed -e 's# -MMD -MF [^ ]* -MT [^ ]*##' \
                            -e "s# -o $obj # -o $scratch/$name #" \
                            -e 's# -I\(/[^ ]*torch[^ ]*\)# -isystem \1#g' \
                            -e 's# -I\(/[^ ]*nvidia[^ ]*\)# -isystem \1#g' \
                            -e 's# -I\(/[^ ]*cuda[^ ]*\)# -isystem \1#g')
    if (cd "$build" && eval "$cmd -Werror") > "$scratch/log" 2>&1; then
        echo "werror-check: $obj: no warnings"
    else
        cat "$scratch/log"
        echo "werror-check: $obj: warnings or errors with -Werror"
        failed=1
    fi
done
exit $failed
