#!/usr/bin/env bash
# Test-only tools that are not Debian packages to install: they go under
# .build-tools/ (git-ignored) and tests find them there.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .build-tools
