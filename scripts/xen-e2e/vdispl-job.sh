#!/usr/bin/env bash
# Puts the vdispl test's guest on the job disk: Debian's kernel with a
# busybox initramfs whose /init is vdispl-guest-init, drm/xen-front's
# modules from the same kernel package (drm, drm_kms_helper,
# xen-front-pgdir-shbuf, drm_xen_front; evdev for the keyboard), the patterns
# and kms-flip (kms-flip.c, built static here with gcc); and the dom0 half
# of the test (vdispl_test.py).
# Usage: scripts/xen-e2e/vdispl-job.sh DOM0_TREE KERNEL_VERSION JOB_DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tree=$1 kver=$2 job=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/{bin,proc,sys,dev,tmp,modules} "$job/guest-vdispl"
cp "$tree/bin/busybox" "$work/bin/busybox"
install -m 0755 "$here/vdispl-guest-init" "$work/init"
gcc -static -O2 -Wall -o "$work/kms-flip" "$here/kms-flip.c"
mods=$tree/lib/modules/$kver/kernel
for m in gpu/drm/drm.ko gpu/drm/drm_kms_helper.ko xen/xen-front-pgdir-shbuf.ko gpu/drm/xen/drm_xen_front.ko input/evdev.ko; do
  cp "$mods/drivers/$m" "$work/modules/"
done
cp "$job/pattern.raw" "$job/pattern2.raw" "$work/"
(cd "$work" && find . | cpio -o -H newc --quiet | gzip -1) > "$job/guest-vdispl/initrd.gz"
cp "$here/vdispl_test.py" "$job/vdispl_test.py"
