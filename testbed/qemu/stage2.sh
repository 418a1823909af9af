# Stage 2, PID 1 in the assembled root, run by static busybox (each exec of
# a dynamically linked binary over 9p costs ~0.1 s under TCG).
# Mounts what the tests need, puts the flavour's modules and headers in
# place, runs the command and writes stdout, stderr and exit code to the share.
S=/run/testbed
. $S/params.sh
bb=$BUSYBOX

m() {
    $bb mount "$@" || echo "testbed-stage2: mount $* failed" >/dev/console
}

m -t proc proc /proc
m -t sysfs sysfs /sys
m -t devtmpfs devtmpfs /dev
$bb mkdir -p /dev/pts /dev/shm /run/netns /run/lock
m -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
m -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
# devtmpfs lacks these; shells and Python expect them.
$bb ln -sf /proc/self/fd /dev/fd
$bb ln -sf /proc/self/fd/0 /dev/stdin
$bb ln -sf /proc/self/fd/1 /dev/stdout
$bb ln -sf /proc/self/fd/2 /dev/stderr
m -t debugfs debugfs /sys/kernel/debug
m -t tracefs tracefs /sys/kernel/tracing
m -t bpf bpf /sys/fs/bpf
m -t cgroup2 cgroup2 /sys/fs/cgroup
m -t securityfs securityfs /sys/kernel/security

# The depmod'ed module tree (with build/source links to this kernel's
# headers) replaces whatever the host has, so modprobe, the kernel's module
# autoload and bcc all find this kernel's files.
$bb mkdir -p "/lib/modules/$KVER"
m --bind "$MODDIR" "/lib/modules/$KVER"

$bb hostname testbed
$bb ip link set lo up

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 TERM=dumb TESTBED_GUEST=$FLAVOUR TESTBED_SHARE=$S
. $S/env.sh

finish() {
    echo "$1" >$S/rc.tmp && $bb mv $S/rc.tmp $S/rc
    $bb sync
    $bb poweroff -f
}

cd "$CWD" || {
    echo "testbed: cannot cd to $CWD in the guest" >$S/stderr
    finish 126
}

$bb cat /proc/uptime >$S/started
/bin/sh -c "$($bb cat $S/command)" </dev/null >$S/stdout 2>$S/stderr
finish $?
