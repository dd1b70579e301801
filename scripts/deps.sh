#!/usr/bin/env bash
# Installs the Debian packages xenvfb needs to build, run and test, and to
# build its Debian package (scripts/package.sh).
# Usage: scripts/deps.sh [build|test|package|openqa]   (default: build)
set -euo pipefail
what=${1:-build}
build_pkgs=(pkg-config libsdl2-dev libpng-dev libxen-dev zlib1g-dev libgnutls28-dev)
# dpkg-buildpackage, debhelper and lintian; debian/control's Build-Depends
# beyond build_pkgs (python3 for debian/dlopen-deps).
package_pkgs=(dpkg-dev debhelper lintian python3)
test_pkgs=(xenstore-utils mandoc socat python3-venv python3-pip xvfb x11-apps imagemagick gvncviewer xdotool x11-utils
           libxkbcommon0 xkb-data   # scripts/keymaps/generate.py and the keymap tests
           # ClientMatrixTests: real VNC clients (noVNC in headless Chromium via selenium, TigerVNC),
           # and the certificates of the TLS tests (openssl; certutil for Chromium's NSS database)
           novnc chromium chromium-driver python3-selenium tigervnc-viewer openssl libnss3-tools)
# The optional openQA test (ClientMatrixTests, XENVFB_OPENQA=1): Debian's
# os-autoinst (~270 packages, ~335 MB: Tesseract, QEMU), plus four Perl
# modules its isotovideo loads that the Debian package does not depend on.
openqa_pkgs=(os-autoinst libmojo-ioloop-readwriteprocess-perl libjson-validator-perl liblist-moreutils-perl
             libio-stringy-perl)
pkgs=("${build_pkgs[@]}")
case "$what" in
  build) ;;
  test) pkgs+=("${test_pkgs[@]}") ;;
  package) pkgs+=("${package_pkgs[@]}") ;;
  openqa) pkgs+=("${test_pkgs[@]}" "${openqa_pkgs[@]}") ;;
  *) echo "deps: unknown group '$what' (build, test, package or openqa)" >&2; exit 2 ;;
esac
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}" >&2
  SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
