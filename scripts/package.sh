#!/usr/bin/env bash
# Builds the Debian package, out/xenvfb_<version>_<arch>.deb, from debian/
# with dpkg-buildpackage (the release binary with the Swift runtime linked in,
# the man page, configs/*.cfg as examples, copyright, changelog), then checks
# it with lintian: an error or a warning fails the script (one to keep goes,
# with its reason, into debian/xenvfb.lintian-overrides and README's "Install
# on a Xen host", which lists the informational tags left).
# Usage: scripts/package.sh [--no-lintian]
# Prints the .deb's path as its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
lint=yes
case "${1:-}" in
  "") ;;
  --no-lintian) lint=no ;;
  *) echo "package.sh: unknown argument '$1' (--no-lintian)" >&2; exit 2 ;;
esac
step() { echo "== package.sh: $* ($(date +%T))" >&2; }

step "installing Debian packages"
scripts/deps.sh package
version=$(dpkg-parsechangelog -SVersion)
arch=$(dpkg --print-architecture)
deb=out/xenvfb_${version}_${arch}.deb
mkdir -p out
rm -f out/xenvfb_*.deb out/xenvfb_*.buildinfo out/xenvfb_*.changes

step "building xenvfb $version (dpkg-buildpackage; swift build -c release)"
# -uout: the .deb is in out/ (debian/rules puts it there), not in ..;
# --post-clean: debian/ is left as committed.
XENVFB_DEB_DIR=out dpkg-buildpackage --build=binary --no-sign --post-clean \
  --buildinfo-file="out/xenvfb_${version}_${arch}.buildinfo" \
  --changes-file="out/xenvfb_${version}_${arch}.changes" --changes-option=-uout \
  --buildinfo-option=-uout 2>&1 | grep -vE '^\[[0-9]+/[0-9]+\] ' >&2
[ -f "$deb" ] || { echo "package.sh: dpkg-buildpackage made no $deb" >&2; exit 1; }
dpkg-deb --field "$deb" Package Version Installed-Size Depends Recommends Suggests >&2

if [ "$lint" = yes ]; then
  step "lintian $deb"
  lintian --fail-on error,warning --display-info "$deb" >&2
fi
step "done: $deb"
echo "$deb"
