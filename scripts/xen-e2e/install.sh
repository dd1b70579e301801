#!/usr/bin/env bash
# Makes dom0's disk image: the cached Debian root filesystem (rootfs.sh, Xen
# and the test's tools only) with xenvfb's package installed the way a user
# installs it on a dom0,
#     apt-get install --no-install-recommends ./xenvfb_VERSION_amd64.deb
# so that apt resolves its Depends from Debian's mirror: if the package lacks
# a library xenvfb needs, dom0 lacks it too and the test fails. The packages
# its Recommends add (libSDL2 for the SDL window) are only downloaded, into
# RECOMMENDS_DIR: dom0's test installs them with dpkg before the SDL run, so
# the runs before it show that Depends alone serve VNC and headless guests.
# The cached tree is left as it is: apt works in an overlay on top of it (or
# a copy where overlayfs is missing); apt's downloads and lists are cached in
# CACHE_DIR.
# Usage: install.sh TREE DEB IMAGE RECOMMENDS_DIR CACHE_DIR   (as root)
set -euo pipefail
[ $# -eq 5 ] || { echo "usage: install.sh TREE DEB IMAGE RECOMMENDS_DIR CACHE_DIR" >&2; exit 2; }
tree=$1 deb=$2 image=$3 recommends=$4 cache=$5
[ -f "$tree/.complete" ] || { echo "install: $tree is not a finished dom0 tree" >&2; exit 1; }
[ -f "$deb" ] || { echo "install: no package $deb" >&2; exit 1; }

work=$cache/overlay
root=$work/root
mounts=() # inside the tree, in mount order
overlay=no
cleanup() {
  local i
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount "${mounts[$i]}" 2>/dev/null || umount -l "${mounts[$i]}" 2>/dev/null || true; done
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
mount --bind "$cache/archives" "$root/var/cache/apt/archives"; mounts+=("$root/var/cache/apt/archives")
mount --bind "$cache/lists" "$root/var/lib/apt/lists"; mounts+=("$root/var/lib/apt/lists")
mount -t proc proc "$root/proc"; mounts+=("$root/proc")
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
# Recommends: downloaded only, into an empty folder of their own.
recs=$(in_root dpkg-query -W -f='${Recommends}' xenvfb | sed 's/([^)]*)//g; s/|[^,]*//g; s/,/ /g')
rm -rf "$recommends"
mkdir -p "$recommends" "$root/tmp/recommends/partial"
if [ -n "${recs// /}" ]; then
  echo "install: downloading the Recommends ($recs) for dom0's test" >&2
  # With what they depend on, not what they recommend in turn (dbus, fonts,
  # cairo...: dozens of packages that would only slow dom0's dpkg under TCG).
  in_root timeout 600 apt-get install -y -qq --no-install-recommends --download-only \
    -o Dir::Cache::archives=/tmp/recommends/ $recs
  cp "$root"/tmp/recommends/*.deb "$recommends/" 2>/dev/null || true
fi
echo "install: installed in dom0: $(in_root dpkg-query -W -f='${Package} ${Version}\n' xenvfb)" >&2
rm -rf "$root/tmp/$name" "$root/tmp/recommends" "$root/usr/sbin/policy-rc.d"
# Only dom0's own files go into the image: unmount proc and apt's caches.
for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount "${mounts[$i]}"; done
mounts=()

# The image, from the merged tree (mke2fs -d: no loop device, no mount).
rm -f "$image"
mke2fs -q -t ext4 -L dom0 -d "$root" "$image" 2G
