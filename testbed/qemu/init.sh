#!/bin/busybox sh
# Stage 1, /init of the initramfs (static busybox only).
# Loads the virtio/9p/overlay modules, assembles the root (the host's / over
# 9p, read-only, under a tmpfs overlay), moves the per-run share to
# /run/testbed in it and hands over to stage 2 (stage2.sh, in the share).
/bin/busybox --install -s /bin
export PATH=/bin

fail() {
    echo "testbed-init: $*" >/dev/console
    poweroff -f
}

mkdir -p /proc /sys /dev /share /lower /rw /newroot
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

# /mods/NN-name.ko, numbered in `modprobe --show-depends` order.
for m in /mods/*.ko; do
    [ -e "$m" ] || continue
    insmod "$m" || fail "insmod $m failed"
done

p9=trans=virtio,version=9p2000.L,msize=512000
# The share carries the command in and the results out: no caching, so the
# host sees output as it is written.
mount -t 9p -o $p9 testbed /share || fail "cannot mount the share"
# The host's root never changes under us during a run: cache it loosely.
mount -t 9p -o $p9,cache=loose,ro hostroot /lower || fail "cannot mount the host root"
mount -t tmpfs -o mode=0755 tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \
    || fail "cannot mount the overlay"

mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /newroot/run || fail "cannot mount /run"
mkdir -p /newroot/run/testbed
mount --move /share /newroot/run/testbed || fail "cannot move the share"

. /newroot/run/testbed/params.sh
[ -x "/newroot$BUSYBOX" ] || fail "no static busybox at $BUSYBOX in the new root"

umount /proc /sys
umount /dev
exec switch_root /newroot "$BUSYBOX" sh /run/testbed/stage2.sh
