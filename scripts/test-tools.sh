#!/usr/bin/env bash
# Test-only tools that are not Debian packages to install: they go under
# .build-tools/ (git-ignored) and tests find them there.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .build-tools
# Python clients the project did not write: vncdotool (vncdo) drives VNC, Pillow decodes PNG/PPM.
[ -x .build-tools/venv/bin/python ] || python3 -m venv .build-tools/venv
.build-tools/venv/bin/pip install -q vncdotool pillow
