#!/bin/busybox sh
# PID 1 of the initramfs that `microvm.sh initramfs` packs (as /init). It loads
# the kernel modules listed in /etc/microvm/modules (in that order: the host
# resolved their dependencies), waits until the vsock transport is bound to its
# virtio device, then either runs the payload command and powers the guest off
# when it returns, or switches to the root disk named in /etc/microvm/root.
#
# Console markers (the host waits for them; keep them in step with microvm.sh):
#   microvm: init ...            PID 1 runs
#   microvm: ready ...           modules loaded, vsock device bound
#   microvm: payload start ...   the command is about to run
#   microvm: payload exit rc=N   it returned; the guest powers off
#   microvm: switch-root DEV     handing over to the disk's /sbin/init
#   microvm: error WHAT          the guest gives up and powers off
# shellcheck shell=sh

/bin/busybox mkdir -p /dev /proc /sys /tmp /run
/bin/busybox mount -t devtmpfs devtmpfs /dev
# The kernel gives init no stdio when the archive has no /dev/console node.
exec </dev/console >/dev/console 2>&1
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts

mark() { echo "microvm: $* uptime=$(cut -d' ' -f1 /proc/uptime)"; }
give_up() { mark "error $*"; sync; poweroff -f; }

mark "init kernel=$(uname -r)"
kver=$(uname -r)
loaded=0
while read -r module; do
    [ -n "$module" ] || continue
    insmod "/lib/modules/$kver/$module" || give_up "insmod $module failed"
    loaded=$((loaded + 1))
done < /etc/microvm/modules

# Loading the transport module probes the device, but the driver may bind it a
# moment later; "ready" promises a bound device, so look for the binding.
bound() {
    for link in /sys/bus/virtio/drivers/vmw_vsock_virtio_transport/virtio*; do
        [ -e "$link" ] && return 0
    done
    return 1
}
tries=0
until bound; do
    tries=$((tries + 1))
    [ "$tries" -le 100 ] || give_up "no virtio device bound to vmw_vsock_virtio_transport after 5 s"
    sleep 0.05
done
mark "ready modules=$loaded vsock=bound"

if [ -s /etc/microvm/root ]; then
    dev=$(cat /etc/microvm/root)
    tries=0
    until [ -b "$dev" ]; do
        tries=$((tries + 1))
        [ "$tries" -le 100 ] || give_up "root device $dev did not appear"
        sleep 0.05
    done
    mkdir -p /newroot
    mount -o rw "$dev" /newroot || give_up "mount $dev failed"
    # usually an absolute symlink (to /lib/systemd/systemd), which resolves
    # only inside the new root
    [ -x /newroot/sbin/init ] || [ -L /newroot/sbin/init ] || give_up "$dev has no /sbin/init"
    mark "switch-root $dev"
    # The disk's init mounts its own API file systems; /dev moves over so the
    # disk's device nodes exist before (or without) udev.
    umount /dev/pts /tmp /run /proc /sys
    mount --move /dev /newroot/dev
    exec switch_root /newroot /sbin/init
fi

hostname microvm
ip link set lo up
mark "payload start"
sh /etc/microvm/payload
rc=$?
mark "payload exit rc=$rc"
sync
poweroff -f
