#!/bin/sh
# Build every commit of the stack in turn and run the DNN filters' FATE
# tests that exist at that commit.
#
#   tools/series-check.sh TREE OUTDIR ENV CONFIGURE_OPTIONS...
#
# TREE is the git tree of the stack (its first commit tagged "pristine");
# the commits from there to its HEAD are checked out, one after the other,
# in a worktree under OUTDIR and built incrementally in OUTDIR/build,
# configured again whenever a commit changes configure.  SAMPLES names the
# FATE samples (tests/fate_refs.py writes them); FROM, if set, the first
# commit to check, when those before it were checked already.
set -e
tree=$(cd "$1" && pwd)
mkdir -p "$2"
out=$(cd "$2" && pwd)
env=$3
shift 3
wt=$out/tree
build=$out/build
log=$out/build.log

git -C "$tree" worktree remove --force "$wt" 2>/dev/null || rm -rf "$wt"
git -C "$tree" worktree prune
git -C "$tree" -c advice.detachedHead=false worktree add -q --detach "$wt" pristine
rm -rf "$build"
mkdir -p "$build"

configure() {
    (cd "$build" && env $env "$wt/configure" "$@" > configure.log 2>&1) ||
        { tail -n 20 "$build/configure.log"; echo "series: $(subject) does not configure"; exit 1; }
    # FFmpeg's build does not relink when only the link flags change.
    rm -f "$build/ffmpeg" "$build/ffmpeg_g"
}
subject() { git -C "$wt" log -1 --format='%h %s'; }

n=0
prev=
base=pristine
[ -z "$FROM" ] || base="$FROM^"
for c in $(git -C "$tree" rev-list --reverse "$base..HEAD"); do
    git -C "$wt" checkout -q "$c"
    n=$((n + 1))
    if [ -z "$prev" ] || git -C "$wt" diff --name-only "$prev" "$c" | grep -qx configure; then
        configure "$@"
    fi
    prev=$c
    make -C "$build" -j"$(nproc)" ffmpeg > "$log" 2>&1 ||
        { tail -n 30 "$log"; echo "series: $(subject) does not build"; exit 1; }
    fate=$(make -s -C "$build" fate-list SAMPLES="$SAMPLES" 2>/dev/null | grep '^fate-filter-dnn' || true)
    for t in $fate; do
        make -C "$build" "$t" SAMPLES="$SAMPLES" > "$log" 2>&1 ||
            { tail -n 30 "$log"; echo "series: $t fails at $(subject)"; exit 1; }
    done
    count=$(echo $fate | wc -w)
    # A commit that lists fewer tests than the one before lost some.
    [ "$count" -ge "${most:-0}" ] ||
        { echo "series: $(subject) lists $count FATE tests, the commit before $most"; exit 1; }
    most=$count
    echo "series: $(subject): builds${fate:+, passes $count FATE tests}"
done
[ "${most:-0}" -gt 0 ] || { echo "series: no commit lists a DNN FATE test"; exit 1; }
# The CLI series (the fftools/ commits at the top) applies to the release
# without the DNN series.
dnn_head=$(sh "$(dirname "$0")/stack.sh" dnn-head "$tree")
if [ "$dnn_head" != "$(git -C "$tree" rev-parse HEAD)" ]; then
    git -C "$wt" checkout -q pristine
    git -C "$tree" format-patch -q --stdout "$dnn_head..HEAD" |
        git -C "$wt" -c user.name=check -c user.email=check@localhost am -q ||
        { echo "series: the fftools/ series does not apply to the release alone"; exit 1; }
    echo "series: the fftools/ series applies to the release alone"
fi
git -C "$tree" worktree remove --force "$wt"
echo "series: each of the $n commits builds and passes the FATE tests it has"
