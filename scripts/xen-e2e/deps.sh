#!/usr/bin/env bash
# Host Debian packages the real-Xen end-to-end test needs: QEMU to boot Xen,
# debootstrap to build dom0's root filesystem, e2fsprogs to make and read ext4
# images without mounting them, cpio for the guest's initramfs, gcc and
# libc6-dev to build the vdispl guest's static KMS program (kms-flip.c) and
# the performance guest's static fbperf (fbperf.c).
# (xenvfb's package is built by scripts/package.sh, which installs what it needs.)
set -euo pipefail
pkgs=(qemu-system-x86 qemu-utils debootstrap e2fsprogs cpio gzip gcc libc6-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "xen-e2e deps: installing ${missing[*]}" >&2
  SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
