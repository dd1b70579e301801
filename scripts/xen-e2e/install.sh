#!/usr/bin/env bash
# Makes dom0's disk image: the cached Debian root filesystem (rootfs.sh, Xen
# and the test's tools only) with xenvfb's package installed the way a user
# installs it on a dom0,
#     apt-get install --no-install-recommends ./xenvfb_VERSION_amd64.deb
# so that apt resolves its Depends from Debian's mirror: if the package lacks
# a library xenvfb needs, dom0 lacks it too and the test fails.
#
# Then, on top, what a plain `apt install ./xenvfb_*.deb` adds: the package's
# Recommends (libSDL2 for the SDL window), installed by apt in the same
# chroot, but kept out of the image: every file that install created or
# changed goes into RECOMMENDS_TAR, which dom0's test unpacks over / just
# before the SDL run. So the runs before it show that Depends alone serve VNC
# and headless guests, and dom0 (under TCG) need not run dpkg itself.
#
# The cached tree is left as it is: apt works in an overlay on top of it (or
# a copy where overlayfs is missing); apt's downloads and lists are cached in
# CACHE_DIR.
# Usage: install.sh TREE DEB IMAGE RECOMMENDS_TAR CACHE_DIR   (as root)
set -euo pipefail
[ $# -eq 5 ] || { echo "usage: install.sh TREE DEB IMAGE RECOMMENDS_TAR CACHE_DIR" >&2; exit 2; }
tree=$1 deb=$2 image=$3 recommends_tar=$4 cache=$5
[ -f "$tree/.complete" ] || { echo "install: $tree is not a finished dom0 tree" >&2; exit 1; }
[ -f "$deb" ] || { echo "install: no package $deb" >&2; exit 1; }

work=$cache/overlay
root=$work/root
mounts=() # inside the tree, in mount order
overlay=no
unmount_inside() {
  local i
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount "${mounts[$i]}" 2>/dev/null || umount -l "${mounts[$i]}" 2>/dev/null || true; done
  mounts=()
}
cleanup() {
  unmount_inside
  [ "$overlay" = no ] || umount "$root" 2>/dev/null || umount -l "$root" 2>/dev/null || true
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT
for m in "$root/proc" "$root/var/cache/apt/archives" "$root/var/lib/apt/lists" "$root"; do
  umount "$m" 2>/dev/null || true # left by a run that was killed
done
rm -rf --one-file-system "$work"
mkdir -p "$work/upper" "$work/work" "$root" "$cache/archives/partial" "$cache/lists/partial"
if mount -t overlay overlay -o "lowerdir=$tree,upperdir=$work/upper,workdir=$work/work" "$root" 2>/dev/null; then
  overlay=yes
else
  echo "install: no overlayfs here; copying the dom0 tree" >&2
  cp -a "$tree/." "$root/"
fi
# apt's lists and downloads (cached across runs) and /proc, while apt runs.
mount_inside() {
  mount --bind "$cache/archives" "$root/var/cache/apt/archives"; mounts+=("$root/var/cache/apt/archives")
  mount --bind "$cache/lists" "$root/var/lib/apt/lists"; mounts+=("$root/var/lib/apt/lists")
  mount -t proc proc "$root/proc"; mounts+=("$root/proc")
}
mount_inside
# No daemon may start inside the chroot while packages are configured.
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"
# Name resolution for apt (the cached tree's copy may be stale).
cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
name=$(basename "$deb")
cp "$deb" "$root/tmp/$name"

in_root() { chroot "$root" env DEBIAN_FRONTEND=noninteractive "$@"; }
# A network hiccup should not fail CI: one retry.
timeout 300 chroot "$root" apt-get update -qq || { sleep 5; timeout 300 chroot "$root" apt-get update -qq; }
echo "install: apt-get install --no-install-recommends ./$name" >&2
in_root timeout 600 apt-get install -y --no-install-recommends "/tmp/$name"
echo "install: installed in dom0: $(in_root dpkg-query -W -f='${Package} ${Version}' xenvfb)" >&2
recs=$(in_root dpkg-query -W -f='${Recommends}' xenvfb | sed 's/([^)]*)//g; s/|[^,]*//g; s/,/ /g')

# The image: the tree as it is now, without the test's chroot helpers and
# apt's caches (mke2fs -d: no loop device, no mount).
rm -f "$root/usr/sbin/policy-rc.d"
unmount_inside
rm -f "$image"
mke2fs -q -t ext4 -L dom0 -d "$root" "$image" 2G

# The Recommends layer: whatever apt's install of them creates or changes
# (files and directories with a newer ctime than the marker; it removes
# nothing).
rm -f "$recommends_tar"
if [ -n "${recs// /}" ]; then
  echo "install: apt-get install $recs (for the SDL run; into $(basename "$recommends_tar"))" >&2
  mount_inside
  printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
  chmod +x "$root/usr/sbin/policy-rc.d"
  marker=$work/marker
  touch "$marker"
  sleep 1 # ctime granularity
  in_root timeout 600 apt-get install -y -qq $recs >/dev/null
  rm -f "$root/usr/sbin/policy-rc.d"
  unmount_inside
  (cd "$root" && find . -xdev -cnewer "$marker" ! -type c ! -path ./tmp/\* -print0 |
     tar --null --no-recursion -T - -cf "$recommends_tar")
  echo "install: $(tar -tf "$recommends_tar" | wc -l) files and folders, $(du -h "$recommends_tar" | cut -f1)" >&2
fi
