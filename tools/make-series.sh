#!/bin/sh
# Turn the `series` manifest into git format-patch files against pristine
# FFmpeg:  tools/make-series.sh PRISTINE_TREE OUTDIR
set -e
top=$(cd "$(dirname "$0")/.." && pwd)
pristine=$(cd "$1" && pwd)
out=$2
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

name=$(git -C "$top" log -1 --format=%an 2>/dev/null || true)
email=$(git -C "$top" log -1 --format=%ae 2>/dev/null || true)
git_() { git -c user.name="${name:-dnn-torch}" -c user.email="${email:-dnn-torch@localhost}" "$@"; }

cp -R "$pristine" "$work/ffmpeg"
cd "$work/ffmpeg"
git_ init -q
git_ add -A
git_ commit -q -m "FFmpeg pristine"
base=$(git rev-parse HEAD)

subject=
commit_pending() {
    [ -n "$subject" ] || return 0
    git_ add -A
    { echo "$subject"; [ -s "$work/body" ] && { echo; cat "$work/body"; }; } > "$work/msg"
    git_ commit -q -F "$work/msg"
}
: > "$work/body"
while IFS= read -r line; do
    case $line in
    "commit "*) commit_pending; subject=${line#commit }; : > "$work/body" ;;
    "file "*)   p=${line#file }; mkdir -p "$(dirname "$p")"; cp "$top/$p" "$p" ;;
    "diff "*)   p=${line#diff }; patch -s -p1 --no-backup-if-mismatch < "$top/patches/$p.diff" ;;
    "| "*)      echo "${line#| }" >> "$work/body" ;;
    "|")        echo >> "$work/body" ;;
    esac
done < "$top/series"
commit_pending

rm -f "$out"/*.patch
git format-patch -q -o "$out" "$base"
ls "$out"
