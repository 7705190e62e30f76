#!/bin/sh
# The patch stack and the git tree it is worked on in.  The stack is two
# series, each a folder with its patches (git format-patch form), their
# order in "series" and its cover letter in cover-letter.txt, applied in
# this order:
#
#   patches/           the DNN series
#   patches/fftools/   the ffmpeg CLI's -drain_filter, which applies to the
#                      release without the DNN series (commits whose
#                      subject starts with "fftools/", at the top)
#
#   tools/stack.sh apply PRISTINE TREE    git am the stack onto the pristine
#                                         release, in TREE (a git repository
#                                         whose first commit, tagged
#                                         "pristine", is the release)
#   tools/stack.sh export TREE            write TREE's commits after
#                                         "pristine" back into patches/
#   tools/stack.sh mail TREE OUTDIR       each series for the mailing list,
#                                         in OUTDIR and OUTDIR/fftools:
#                                         numbered, with its cover letter
#   tools/stack.sh dnn-head TREE          the last commit of the DNN series
#
# TREE/.git/stack-head records the commit that patches/ holds.  apply keeps
# the files whose content does not change (so that builds stay incremental)
# and refuses to overwrite commits or changes that were not exported.
set -e
top=$(cd "$(dirname "$0")/.." && pwd)
stack=$top/patches
cli=$stack/fftools

name=$(git -C "$top" log -1 --format=%an 2>/dev/null || true)
email=$(git -C "$top" log -1 --format=%ae 2>/dev/null || true)
git_() {
    git -c user.name="${name:-dnn-torch}" -c user.email="${email:-dnn-torch@localhost}" \
        -c advice.detachedHead=false "$@"
}
die() { echo "stack: $*" >&2; exit 1; }

series_files() {
    [ -f "$1/series" ] || return 0
    grep -v '^#' "$1/series" | grep -v '^[[:space:]]*$' | sed "s|^|$1/|"
}
patch_files() { series_files "$stack"; series_files "$cli"; }

# The last commit of the DNN series: the CLI series is the commits at the
# top whose subject starts with "fftools/".
dnn_head() {
    tree=$1 cli_seen=
    base=$(git -C "$tree" rev-parse pristine)
    for c in $(git -C "$tree" rev-list --reverse pristine..HEAD); do
        if git -C "$tree" log -1 --format=%s "$c" | grep -q '^fftools/'; then
            cli_seen=1
        else
            [ -z "$cli_seen" ] ||
                die "$(git -C "$tree" log -1 --format='%h %s' "$c") follows a fftools/ commit: the CLI series goes at the top"
            base=$c
        fi
    done
    echo "$base"
}

# Fails, naming the fix, when the tree holds work that patches/ lacks.
in_sync() {
    tree=$1
    [ -z "$(git -C "$tree" status --porcelain --untracked-files=no)" ] ||
        die "$tree has uncommitted changes: commit them (git commit --fixup=COMMIT) and run make patches"
    head=$(git -C "$tree" rev-parse HEAD)
    [ "$head" = "$(cat "$tree/.git/stack-head" 2>/dev/null)" ] ||
        die "$tree has commits that patches/ lacks: run make patches to keep them, or make tree-reset to drop them"
}

apply() {
    pristine=$1 tree=$2
    if [ ! -d "$tree/.git" ]; then
        rm -rf "$tree"
        cp -R "$pristine" "$tree"
        rm -f "$tree/.stamp"
        git_ -C "$tree" init -q
        git_ -C "$tree" add -A
        git_ -C "$tree" commit -q -m "FFmpeg $(basename "$pristine" | sed 's/^ffmpeg-//')"
        git_ -C "$tree" tag pristine
        git_ -C "$tree" rev-parse HEAD > "$tree/.git/stack-head"
    elif [ "${FORCE:-0}" != 1 ]; then
        in_sync "$tree"
    fi
    # Apply in a scratch worktree, then move the tree to the result: git
    # rewrites only the files that differ.
    work=$(mktemp -d)
    trap 'git -C "$tree" worktree remove --force "$work/wt" 2>/dev/null; rm -rf "$work"' EXIT
    git_ -C "$tree" worktree add -q --detach "$work/wt" pristine
    files=$(patch_files)
    if [ -n "$files" ]; then
        # shellcheck disable=SC2086
        git_ -C "$work/wt" am -q --committer-date-is-author-date $files ||
            die "the stack does not apply with git am (above)"
    fi
    head=$(git -C "$work/wt" rev-parse HEAD)
    git_ -C "$tree" checkout -q -f -B stack "$head"
    echo "$head" > "$tree/.git/stack-head"
    echo "stack: $(echo "$files" | grep -c .) patches applied in $tree"
}

export_() {
    tree=$1
    [ -z "$(git -C "$tree" status --porcelain --untracked-files=no)" ] ||
        die "$tree has uncommitted changes: commit them first"
    git -C "$tree" rev-list pristine..HEAD --merges | grep -q . &&
        die "$tree has merge commits; a patch stack is linear"
    top_dnn=$(dnn_head "$tree")
    write_series "$tree" pristine "$top_dnn" "$stack" \
        "The DNN series, applied in this order with git am onto FFmpeg 9.0.2."
    write_series "$tree" "$top_dnn" HEAD "$cli" \
        "The ffmpeg CLI series, applied with git am after patches/series (or alone onto 9.0.2)."
    git -C "$tree" rev-parse HEAD > "$tree/.git/stack-head"
    echo "stack: $(patch_files | grep -c .) patches written to patches/"
}

# Writes the commits FROM..TO into the series folder DIR.
write_series() {
    tree=$1 from=$2 to=$3 dir=$4 title=$5
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    git -C "$tree" format-patch -q --zero-commit --no-signature --no-numbered \
        -o "$work" "$from..$to"
    mkdir -p "$dir"
    rm -f "$dir"/[0-9][0-9][0-9][0-9]-*.patch
    {
        echo "# $title"
        echo "# Written by make patches from build/src; see README, Development."
        for f in "$work"/*.patch; do
            [ -e "$f" ] || continue
            mv "$f" "$dir/"
            basename "$f"
        done
    } > "$dir/series"
    rm -rf "$work"
}

mail() {
    tree=$1 out=$2
    in_sync "$tree"
    top_dnn=$(dnn_head "$tree")
    mail_series "$tree" pristine "$top_dnn" "$stack/cover-letter.txt" "$out"
    mail_series "$tree" "$top_dnn" HEAD "$cli/cover-letter.txt" "$out/fftools"
}

# The commits FROM..TO numbered for the list in OUTDIR, with the cover
# letter's subject and blurb from TEXT: its first line, then the rest.
mail_series() {
    tree=$1 from=$2 to=$3 text=$4 out=$5
    mkdir -p "$out"
    rm -f "$out"/*.patch
    git_ -C "$tree" format-patch -q --cover-letter --numbered -o "$(cd "$out" && pwd)" "$from..$to"
    awk -v text="$text" '
        /\*\*\* SUBJECT HERE \*\*\*/ { getline subject < text; sub(/\*\*\* SUBJECT HERE \*\*\*/, subject) }
        /\*\*\* BLURB HERE \*\*\*/ { getline line < text; while ((getline line < text) > 0) print line; next }
        { print }' "$out/0000-cover-letter.patch" > "$out/cover.tmp"
    mv "$out/cover.tmp" "$out/0000-cover-letter.patch"
    ls "$out"
}

case $1 in
apply)  [ $# = 3 ] || die "usage: $0 apply PRISTINE TREE"; apply "$2" "$3" ;;
export) [ $# = 2 ] || die "usage: $0 export TREE"; export_ "$2" ;;
mail)   [ $# = 3 ] || die "usage: $0 mail TREE OUTDIR"; mail "$2" "$3" ;;
dnn-head) [ $# = 2 ] || die "usage: $0 dnn-head TREE"; dnn_head "$2" ;;
*)      die "usage: $0 apply|export|mail|dnn-head ..." ;;
esac
