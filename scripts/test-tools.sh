#!/usr/bin/env bash
# Test-only tools that are not Debian packages to install: they go under
# .build-tools/ (git-ignored) and tests find them there.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .build-tools
# Python clients the project did not write: vncdotool (vncdo) drives VNC, Pillow decodes PNG/PPM,
# websockets (a WebSocket client) carries RFB to the WebSocket listener.
[ -x .build-tools/venv/bin/python ] || python3 -m venv .build-tools/venv
.build-tools/venv/bin/pip install -q vncdotool pillow websockets

# test-xenstore (xenstore conformance client) from Debian's xen-utils-4.17,
# unpacked, not installed: XenStoreTests run it against the embedded xenstored.
if [ ! -x .build-tools/xen-utils/usr/lib/xen-4.17/bin/test-xenstore ]; then
  echo "test-tools: fetching xen-utils-4.17 for test-xenstore" >&2
  tmp=$(mktemp -d); chmod 755 "$tmp"   # apt-get download runs as _apt
  (cd "$tmp" && apt-get download -qq xen-utils-4.17 >/dev/null)
  rm -rf .build-tools/xen-utils
  dpkg-deb -x "$tmp"/xen-utils-4.17_*.deb .build-tools/xen-utils
  rm -rf "$tmp"
fi

# QEMU's own QMP client (qemu.qmp) drives the QMP monitor.
.build-tools/venv/bin/python3 -c 'import qemu.qmp' 2>/dev/null ||
  .build-tools/venv/bin/pip install --quiet --disable-pip-version-check 'qemu.qmp>=0.0.3'

# The hypervisor stand-in that lets Debian's C xenstored run here: the
# differential test in XenStoreTests compares it with the embedded one.
if [ ! -f .build-tools/xenstored-shim.so ] || [ scripts/xenstored-shim.c -nt .build-tools/xenstored-shim.so ]; then
  ${CC:-cc} -shared -fPIC -O2 -Wall -o .build-tools/xenstored-shim.so scripts/xenstored-shim.c -ldl
fi
