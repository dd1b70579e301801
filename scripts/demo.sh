#!/usr/bin/env bash
# Installs what is missing, builds xenvfb and runs the demo: a simulated Xen
# host with a built-in guest, its screen captured as PNG files.
# Usage: scripts/demo.sh [xenvfb demo options]   (default: 10 s, PNGs in out/demo)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh build
echo "== building xenvfb (release)"
swift build -c release --product xenvfb 2>&1 | grep -E 'error|warning:|Compiling xenvfb|Build' || true
swift build -c release --product xenvfb >/dev/null
if [ $# -eq 0 ]; then
  mkdir -p out/demo
  set -- --seconds 10 --display png:dir=out/demo,interval=1000
fi
echo "== running: xenvfb demo $*"
exec .build/release/xenvfb demo "$@"
