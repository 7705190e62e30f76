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
    git_ commit -q -s -F "$work/msg"
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
git format-patch -q --cover-letter -o "$out" "$base"
# The cover letter's subject and blurb come from patches/cover-letter.txt:
# its first line, then the rest.
awk -v text="$top/patches/cover-letter.txt" '
    /\*\*\* SUBJECT HERE \*\*\*/ { getline subject < text; sub(/\*\*\* SUBJECT HERE \*\*\*/, subject) }
    /\*\*\* BLURB HERE \*\*\*/ { getline line < text; while ((getline line < text) > 0) print line; next }
    { print }' "$out/0000-cover-letter.patch" > "$work/cover"
mv "$work/cover" "$out/0000-cover-letter.patch"
ls "$out"
