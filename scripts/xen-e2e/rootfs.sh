#!/usr/bin/env bash
# Builds dom0's root filesystem tree from Debian 12 packages, cached under
# .build-xen/ keyed on the package list and this script, so a rerun on the
# same machine reuses it and a change to either rebuilds it.
# Prints the tree's path on stdout.
# Usage: scripts/xen-e2e/rootfs.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache="$root/.build-xen"
mirror=${XEN_E2E_MIRROR:-http://deb.debian.org/debian}
security=${XEN_E2E_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
mkdir -p "$cache"
pkgs=$(grep -v '^#' "$here/dom0-packages" | tr -s ' \n' ' ')
key=$( { echo "$pkgs"; cat "$here/rootfs.sh"; } | sha256sum | cut -c1-16)
tree="$cache/dom0-$key"
if [ -f "$tree/.complete" ]; then
  echo "rootfs: cached $tree" >&2
  echo "$tree"
  exit 0
fi
# Trees built from another package list are stale; so is a half-built one.
for old in "$cache"/dom0-*; do
  [ -e "$old" ] || continue
  echo "rootfs: removing stale $old" >&2
  umount -R "$old/proc" 2>/dev/null || true
  rm -rf --one-file-system "$old"
done
work="$tree.tmp"
rm -rf --one-file-system "$work"
t0=$(date +%s)
echo "rootfs: debootstrap bookworm into $work ($(date +%T))" >&2
# Bounded, so a stalled download fails (and run.sh retries once) instead of
# hanging CI; each normally takes well under 2 minutes.
timeout 900 debootstrap --variant=minbase bookworm "$work" "$mirror" >"$cache/debootstrap.log" 2>&1 || {
  tail -n 30 "$cache/debootstrap.log" >&2; exit 1; }
# The suites a Debian 12 installation uses: its security updates too, where
# the Xen libraries xenvfb is built against come from (the package depends on
# at least their version).
cat > "$work/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
EOF
# No daemon may start inside the chroot while packages are configured.
printf '#!/bin/sh\nexit 101\n' > "$work/usr/sbin/policy-rc.d"
chmod +x "$work/usr/sbin/policy-rc.d"
mount -t proc proc "$work/proc"
trap 'umount "$work/proc" 2>/dev/null || true' EXIT
echo "rootfs: apt-get install $(echo "$pkgs" | wc -w) packages ($(date +%T))" >&2
{
  timeout 300 chroot "$work" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive timeout 900 chroot "$work" apt-get install -y -qq --no-install-recommends $pkgs
  chroot "$work" apt-get clean
} >"$cache/apt.log" 2>&1 || { tail -n 30 "$cache/apt.log" >&2; exit 1; }
umount "$work/proc"
trap - EXIT
rm -f "$work/usr/sbin/policy-rc.d"
rm -rf "$work/var/lib/apt/lists/"*
echo "root:" | chroot "$work" chpasswd 2>/dev/null || true
touch "$work/.complete"
mv "$work" "$tree"
echo "rootfs: built $tree in $(( $(date +%s) - t0 )) s, $(du -sh --one-file-system "$tree" | cut -f1)" >&2
echo "$tree"
