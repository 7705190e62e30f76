#!/bin/sh
# Build the stack as a distribution would, against Debian's own LibTorch
# (libtorch-dev 2.6, CPU only, headers under /usr/include), and run the
# DNN filters' FATE tests with it.
#
#   tools/debian-check.sh ROOT TARBALL SAMPLES
#
# ROOT is a Debian 13 (trixie) root file system, made here with
# debootstrap when it does not exist (needs root and Debian's archive);
# TARBALL is the FFmpeg 9.0.2 release; SAMPLES the FATE samples
# (tests/fate_refs.py writes them); FILTERS the filters to build, those of
# make all by default.  The stack in patches/ is applied with
# git am in ROOT/build/ffmpeg and configured with the options of make all,
# without a LibTorch path: Debian's are the compiler's own, but for the C++
# API's headers, which packages add by hand.
set -e
top=$(cd "$(dirname "$0")/.." && pwd)
root=$1
tarball=$(cd "$(dirname "$2")" && pwd)/$(basename "$2")
samples=$(cd "$3" && pwd)
suite=${DEBIAN_SUITE:-trixie}
# The Debian archive this machine's apt uses (its security archive aside),
# unless DEBIAN_MIRROR names one.
host_mirror() {
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        /etc/apt/sources.list.d/*.sources 2>/dev/null |
        sed -n -e 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' \
               -e 's/^deb[[:space:]]\{1,\}\(\[[^]]*\][[:space:]]*\)\{0,1\}\([^[:space:]]*\).*/\2/p' |
        grep -v -- '-security' | head -n 1
}
mirror=${DEBIAN_MIRROR:-$(host_mirror)}
[ -n "$mirror" ] || { echo "debian: no Debian archive in /etc/apt; set DEBIAN_MIRROR" >&2; exit 1; }
packages=build-essential,nasm,pkg-config,git,xz-utils,zlib1g-dev,libtorch-dev

if [ ! -x "$root/usr/bin/apt-get" ]; then
    debootstrap --variant=minbase --include=$packages "$suite" "$root" "$mirror"
else
    chroot "$root" dpkg -s $(echo $packages | tr , ' ') > /dev/null 2>&1 ||
        chroot "$root" apt-get install -y -q $(echo $packages | tr , ' ') > /dev/null
fi

rm -rf "$root/build"
mkdir -p "$root/build/patches" "$root/build/samples"
cp "$tarball" "$root/build/"
grep -v '^#' "$top/patches/series" | grep -v '^[[:space:]]*$' |
    sed "s|^|$top/patches/|" | xargs cp -t "$root/build/patches"
grep -v '^#' "$top/patches/series" | grep -v '^[[:space:]]*$' > "$root/build/patches/series"
cp -r "$samples/." "$root/build/samples/"
filters=$(echo ${FILTERS:-dnn_processing dnn_detect dnn_classify testsrc2 format} | tr ' ' ',')

cat > "$root/build/run.sh" <<EOF
set -e
cd /build
tar --no-same-owner -xf $(basename "$tarball")
cd ffmpeg-*/
git init -q && git add -A && git -c user.name=check -c user.email=check@localhost commit -qm release
for p in \$(cat /build/patches/series); do
    git -c user.name=check -c user.email=check@localhost am -q /build/patches/\$p
done
echo "debian: \$(wc -l < /build/patches/series) patches applied; libtorch-dev \$(dpkg-query -W -f='\${Version}' libtorch-dev)"
./configure --disable-everything --disable-autodetect --disable-doc \\
    --disable-ffplay --disable-ffprobe --enable-avdevice --enable-indev=lavfi \\
    --enable-filter=$filters \\
    --enable-muxer=null,framecrc,framemd5,rawvideo --enable-demuxer=rawvideo \\
    --enable-encoder=rawvideo,wrapped_avframe,pcm_s16le --enable-decoder=rawvideo,wrapped_avframe \\
    --enable-protocol=file,pipe --enable-zlib --enable-libtorch \\
    --extra-cxxflags=-I/usr/include/torch/csrc/api/include > configure.log 2>&1 ||
    { tail -20 configure.log; tail -40 ffbuild/config.log; exit 1; }
make -j\$(nproc) ffmpeg > build.log 2>&1 || { tail -30 build.log; exit 1; }
./ffmpeg -hide_banner -buildconf | grep -o -- '--enable-libtorch'
ldd ffmpeg | grep -E 'torch|c10' | sed 's/^/debian: /'
tests=\$(make -s fate-list SAMPLES=/build/samples | grep '^fate-filter-dnn' || true)
[ -n "\$tests" ] || { echo "debian: no DNN FATE test is listed"; exit 1; }
for t in \$tests; do
    make \$t SAMPLES=/build/samples > fate.log 2>&1 || { tail -30 fate.log; echo "debian: \$t fails"; exit 1; }
    echo "debian: \$t passes"
done
echo "debian: \$(echo \$tests | wc -w) FATE tests pass against Debian's LibTorch"
EOF

mount -t proc proc "$root/proc" 2>/dev/null || true
trap 'umount "$root/proc" 2>/dev/null || true' EXIT
chroot "$root" /bin/sh /build/run.sh
