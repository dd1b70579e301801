#!/usr/bin/env bash
# Puts the performance part of the real-Xen test on the job disk: the perf
# guest's initramfs (busybox, perf-guest-init as /init, evdev.ko from dom0's
# kernel, and fbperf, built static here with gcc from fbperf.c) and the dom0
# half (perf_test.py).
# Usage: scripts/xen-e2e/perf-job.sh DOM0_TREE KERNEL_VERSION JOB_DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tree=$1 kver=$2 job=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/{bin,proc,sys,dev} "$job/guest-perf"
cp "$tree/bin/busybox" "$work/bin/busybox"
install -m 0755 "$here/perf-guest-init" "$work/init"
gcc -static -O2 -Wall -Wextra -o "$work/fbperf" "$here/fbperf.c"
cp "$tree/lib/modules/$kver/kernel/drivers/input/evdev.ko" "$work/evdev.ko"
(cd "$work" && find . | cpio -o -H newc --quiet | gzip -1) > "$job/guest-perf/initrd.gz"
cp "$here/perf_test.py" "$job/perf_test.py"
