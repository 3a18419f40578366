#!/usr/bin/env bash
# tests/vm/microvm.sh - the project's throw-away microVM: a Debian cloud kernel
# with a busybox initramfs (or a root disk) in QEMU, and a virtio-vsock device
# served by vhost-device-vsock, so the host reaches guest vsock ports through a
# hybrid-vsock Unix socket and never opens an AF_VSOCK socket itself.
# `microvm.sh help` lists the verbs and what each one guarantees;
# tests/vm/README.md explains the choices and the facts behind them.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROJECT=$(cd "$HERE/../.." && pwd)
CACHE=${SOCKFWD_VM_CACHE:-$PROJECT/.cache/microvm}
# 0.3.0 is the release checked here; it only builds with its default features.
VHOST_VERSION=${SOCKFWD_VM_VHOST_VERSION:-0.3.0}
VHOST_BIN=$CACHE/vhost-device-vsock-$VHOST_VERSION/bin/vhost-device-vsock
KERNEL_DEFAULT=${SOCKFWD_VM_KERNEL:-stable}
KERNEL_META=linux-image-cloud-amd64
MIRROR=${SOCKFWD_VM_MIRROR:-http://deb.debian.org/debian}
BACKPORTS_SUITE=bookworm-backports
KVM_BOOT_TIMEOUT=${SOCKFWD_VM_KVM_BOOT_TIMEOUT:-20}
# what every guest needs for vsock over PCI; the rest of the closure is resolved
BASE_MODULES="virtio_pci vsock vmw_vsock_virtio_transport"
MARK="microvm:"

usage() {
    cat <<'EOF'
microvm.sh - a throw-away QEMU microVM with virtio-vsock (vhost-device-vsock)

Verbs (all write progress to stderr; stdout carries only what a verb prints):

  install [--kernel stable|backports|all] [--rootfs] [--refresh]
      Installs what the other verbs need: apt qemu-system-x86, busybox-static,
      xz-utils (mmdebstrap too with --rootfs), the chosen Debian cloud kernel
      unpacked into the cache (nothing goes to /boot), vhost-device-vsock
      (cargo install --locked, pinned) into the cache.
      Guarantees: idempotent; with everything cached it makes no network
      request and needs no root; concurrent installs into one cache wait for
      each other. --refresh re-resolves the kernel metapackage.
  initramfs --out FILE [--kernel K] [--payload BIN]... [--file SRC:DEST]...
            [--cmd 'COMMAND'] [--modules 'm1 m2'] [--switch-root DEV]
      Packs busybox as /init, the module closure of virtio_pci, vsock,
      vmw_vsock_virtio_transport and --modules (virtio_blk and ext4 added with
      --switch-root), each --payload in /bin and each --file at DEST.
      Guarantees: refuses a dynamically linked payload; writes FILE and
      FILE.kernel (the kernel it was built for) atomically. In the guest:
      COMMAND runs under /bin/sh with the console as stdio once the vsock
      device is bound, and the guest powers off when it returns; with
      --switch-root, DEV is mounted and its /sbin/init exec'd instead.
      Console markers: "microvm: init", "microvm: ready" (device bound),
      "microvm: payload start", "microvm: payload exit rc=N",
      "microvm: switch-root DEV", "microvm: error WHAT" (then power off).
  start --run-dir DIR --initramfs FILE [--kernel K] [--disk IMG] [--cid N]
        [--mem MiB] [--cpus N] [--accel auto|kvm|tcg] [--append 'ARGS']
      Starts vhost-device-vsock and QEMU (q35, memfd shared memory,
      vhost-user-vsock-pci; --disk as virtio-blk /dev/vda). auto uses TCG when
      /dev/kvm is missing or is kvm_pvm, else tries KVM and falls back to TCG
      if the guest does not reach init in SOCKFWD_VM_KVM_BOOT_TIMEOUT (20) s.
      Guarantees: on success both processes run (the guest may still be
      booting: use wait) and DIR/env exists; on failure nothing it started is
      left running. DIR must be short (Unix socket paths): use /tmp.
      DIR/env (source it): MICROVM_RUN_DIR, MICROVM_HVSOCK (host -> guest
      port P: connect, send "CONNECT P\n", read "OK n\n"; guest -> host port
      P: listen on ${MICROVM_HVSOCK}_P first), MICROVM_CONSOLE, MICROVM_QMP,
      MICROVM_QEMU_PID, MICROVM_VHOST_PID, MICROVM_ACCEL, MICROVM_CID,
      MICROVM_MEM, MICROVM_CPUS, MICROVM_KERNEL, MICROVM_KERNEL_RELEASE,
      MICROVM_START_MS (ms since the epoch, before vhost-device-vsock).
  wait --run-dir DIR [--marker TEXT] [--timeout S] [--while-pid PID] [--unless TEXT]
      Waits until TEXT (default "microvm: payload start") is on the console.
      Exit status: 0 seen, 1 timeout (default 120 s), 2 QEMU exited first
      (at once, not at the timeout), 3 PID exited first, 4 --unless TEXT seen.
  stop --run-dir DIR [--timeout S]
      Stops QEMU, then vhost-device-vsock: SIGTERM, SIGKILL after S (10) s.
      Guarantees: signals only the PIDs recorded in DIR, and only while their
      /proc start time and executable still match; zombies count as stopped;
      idempotent. Logs and the console stay in DIR.
  status --run-dir DIR
      Prints both processes' state and the console markers; exit 0 while
      QEMU runs, 3 when it does not.
  rootfs [--suite SUITE] [--include PKG,PKG] [--rebuild]
      Bootstraps a Debian root file system (mmdebstrap minbase, no docs, man
      pages or locales) as a tarball cached under a hash of the recipe, and
      prints its path. Guarantees: the tarball is complete (written under a
      temporary name, then renamed); concurrent calls wait for each other.
  versions
      Prints what is installed, one "name=version" line each.
  help
      This text.

Environment: SOCKFWD_VM_CACHE (default: the project's .cache/microvm; share
it between checkouts), SOCKFWD_VM_KERNEL (stable: bookworm's cloud kernel;
backports: bookworm-backports' 6.12 cloud kernel, fetched through a private
apt state in the cache), SOCKFWD_VM_ACCEL, SOCKFWD_VM_MIRROR (backports),
SOCKFWD_VM_VHOST_VERSION, SOCKFWD_VM_KVM_BOOT_TIMEOUT, SOCKFWD_VM_CPU (QEMU's
-cpu; default max,-cx16 under TCG, host under KVM).
EOF
}

log() { printf '[microvm %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now_ms() { date +%s%3N; }
need_value() { [ $# -ge 2 ] || die "$1 needs a value"; }
check_kernel_choice() {
    case $1 in stable|backports) ;; *) die "unknown kernel '$1' (stable or backports)";; esac
}

# ------------------------------------------------------------------ apt
APT_UPDATED=0
apt_update_system() {
    [ "$APT_UPDATED" = 1 ] && return 0
    log "apt-get update"
    apt-get update -qq >&2
    APT_UPDATED=1
}
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
apt_ensure() { # package...: installs those missing
    local missing=() p
    for p; do installed "$p" || missing+=("$p"); done
    [ ${#missing[@]} -gt 0 ] || return 0
    [ "$(id -u)" = 0 ] || die "these Debian packages are missing and installing them needs root: ${missing[*]}"
    apt_update_system
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# The backports kernel comes through an apt configuration of its own under the
# cache: the system's sources, lists and package cache are never touched.
APT_PRIVATE=()
private_apt_setup() {
    local dir=$CACHE/apt-$BACKPORTS_SUITE
    mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial" "$dir/sources.d" "$dir/preferences.d"
    printf 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s %s main\n' \
        "$MIRROR" "$BACKPORTS_SUITE" > "$dir/sources.list"
    APT_PRIVATE=(-o "Dir::Etc::SourceList=$dir/sources.list" -o "Dir::Etc::SourceParts=$dir/sources.d"
        -o "Dir::Etc::PreferencesParts=$dir/preferences.d" -o "Dir::State::Lists=$dir/lists"
        -o "Dir::Cache=$dir/cache")
    [ -r /usr/share/keyrings/debian-archive-keyring.gpg ] || apt_ensure debian-archive-keyring
    log "apt-get update ($BACKPORTS_SUITE, private lists in $dir)"
    apt-get "${APT_PRIVATE[@]}" update -qq >&2
}

# ------------------------------------------------------------------ kernel
# $CACHE/kernel/CHOICE/{info,tree/}: info is written last, so a kernel with an
# info file is complete.
kernel_info() { # choice key
    local file=$CACHE/kernel/$1/info
    [ -s "$file" ] || return 1
    sed -n "s/^$2=//p" "$file"
}
kernel_require() { # choice: dies unless installed
    kernel_info "$1" release >/dev/null \
        || die "kernel '$1' is not installed in $CACHE: run 'microvm.sh install --kernel $1'"
}

resolve_kernel_package() { # choice: prints the ABI package the metapackage depends on
    local opts=()
    [ "$1" = backports ] && opts=("${APT_PRIVATE[@]}")
    apt-cache "${opts[@]}" depends "$KERNEL_META" 2>/dev/null \
        | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }' || true
}

install_kernel() { # choice
    local choice=$1 dir=$CACHE/kernel/$1 pkg="" stage deb release vmlinuz moddir
    if kernel_info "$choice" release >/dev/null && [ "$REFRESH" = 0 ]; then return 0; fi
    if [ "$choice" = backports ]; then
        private_apt_setup
        pkg=$(resolve_kernel_package backports)
    else
        pkg=$(resolve_kernel_package stable)
        [ -n "$pkg" ] || { apt_update_system; pkg=$(resolve_kernel_package stable); }
    fi
    [ -n "$pkg" ] || die "$KERNEL_META names no linux-image package (kernel '$choice')"
    if [ "$(kernel_info "$choice" package || true)" = "$pkg" ]; then
        log "kernel $choice: $pkg is current"
        return 0
    fi
    stage=$(mktemp -d "$CACHE/kernel/.new-$choice.XXXXXX")
    log "kernel $choice: apt-get download $pkg"
    if ! (cd "$stage" && apt-get "${APT_PRIVATE[@]}" -o APT::Sandbox::User=root download "$pkg" >&2); then
        # stale system lists name a .deb the mirror no longer has
        if [ "$choice" != stable ] || [ "$APT_UPDATED" = 1 ]; then rm -rf "$stage"; die "apt-get download $pkg failed"; fi
        apt_update_system
        pkg=$(resolve_kernel_package stable)
        (cd "$stage" && apt-get -o APT::Sandbox::User=root download "$pkg" >&2) || { rm -rf "$stage"; die "apt-get download $pkg failed"; }
    fi
    deb=$(find "$stage" -maxdepth 1 -name '*.deb' | head -n 1)
    [ -n "$deb" ] || { rm -rf "$stage"; die "apt-get download $pkg left no .deb"; }
    dpkg-deb -x "$deb" "$stage/tree"
    vmlinuz=$(find "$stage/tree/boot" -maxdepth 1 -name 'vmlinuz-*' | head -n 1)
    [ -n "$vmlinuz" ] || { rm -rf "$stage"; die "$pkg has no /boot/vmlinuz-*"; }
    release=${vmlinuz##*/vmlinuz-}
    moddir=$(find "$stage/tree" -maxdepth 4 -type d -path "*/modules/$release" | head -n 1)
    [ -n "$moddir" ] || { rm -rf "$stage"; die "$pkg has no modules directory for $release"; }
    {
        echo "package=$pkg"
        echo "version=$(dpkg-deb -f "$deb" Version)"
        echo "release=$release"
        echo "vmlinuz=${vmlinuz#"$stage/"}"
        echo "modules=${moddir#"$stage/"}"
    } > "$stage/info.tmp"
    rm -f "$deb"
    mv "$stage/info.tmp" "$stage/info"
    rm -rf "$dir"
    mv "$stage" "$dir"
    log "kernel $choice: $release ($(kernel_info "$choice" version)), $(du -sm "$dir" | cut -f1) MB unpacked"
}

# ------------------------------------------------------------------ vhost-device-vsock
install_vhost() {
    local root=${VHOST_BIN%/bin/*}
    if [ -x "$VHOST_BIN" ]; then return 0; fi
    command -v cargo >/dev/null || die "cargo is needed to build vhost-device-vsock"
    log "cargo install --locked vhost-device-vsock $VHOST_VERSION (a minute or more on 2 cores)"
    rm -rf "$root.tmp"
    # the caller's build settings (a static-linking RUSTFLAGS, a shared target
    # dir) are not meant for this tool
    env -u RUSTFLAGS -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET \
        cargo install --locked --quiet --root "$root.tmp" vhost-device-vsock --version "=$VHOST_VERSION" >&2 \
        || { rm -rf "$root.tmp"; die "cargo install vhost-device-vsock $VHOST_VERSION failed"; }
    rm -rf "$root"
    mv "$root.tmp" "$root"
}

lock_cache() { # one installer (or bootstrap) at a time per cache
    mkdir -p "$CACHE/kernel"
    exec 9>"$CACHE/.lock"
    flock 9
}

cmd_install() {
    local kernels=("$KERNEL_DEFAULT") rootfs=0 t0 k
    REFRESH=${SOCKFWD_VM_REFRESH:-0}
    while [ $# -gt 0 ]; do
        case $1 in
            --kernel) need_value "$@"; if [ "$2" = all ]; then kernels=(stable backports); else kernels=("$2"); fi; shift 2;;
            --rootfs) rootfs=1; shift;;
            --refresh) REFRESH=1; shift;;
            *) die "install: unknown argument $1";;
        esac
    done
    for k in "${kernels[@]}"; do check_kernel_choice "$k"; done
    t0=$(now_ms)
    lock_cache
    apt_ensure qemu-system-x86 busybox-static xz-utils zstd
    [ "$rootfs" = 0 ] || apt_ensure mmdebstrap e2fsprogs
    for k in "${kernels[@]}"; do install_kernel "$k"; done
    install_vhost
    log "install: done in $(( $(now_ms) - t0 )) ms"
}

cmd_versions() {
    local k
    echo "qemu-system-x86=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || echo missing) ($(qemu-system-x86_64 --version 2>/dev/null | head -n 1 || true))"
    echo "busybox-static=$(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null || echo missing)"
    echo "vhost-device-vsock=$({ [ -x "$VHOST_BIN" ] && "$VHOST_BIN" --version | awk '{ print $2 }'; } || echo "not installed ($VHOST_VERSION pinned)")"
    for k in stable backports; do
        if kernel_info "$k" release >/dev/null; then
            echo "kernel.$k=$(kernel_info "$k" release) ($(kernel_info "$k" package) $(kernel_info "$k" version))"
        else
            echo "kernel.$k=not installed"
        fi
    done
    echo "mmdebstrap=$(dpkg-query -W -f='${Version}' mmdebstrap 2>/dev/null || echo missing)"
}

# ------------------------------------------------------------------ initramfs
# module name (dashes as underscores) -> file, and the built-in set, of one kernel
declare -A MOD_FILE=() MOD_BUILTIN=() MOD_SEEN=()
MOD_ORDER=()
index_modules() { # moddir
    local f n
    while IFS= read -r f; do
        n=${f##*/}; n=${n%%.ko*}; MOD_FILE[${n//-/_}]=$f
    done < <(find "$1" -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz')
    while IFS= read -r f; do
        n=${f##*/}; n=${n%.ko}; MOD_BUILTIN[${n//-/_}]=1
    done < "$1/modules.builtin"
}
module_bytes() { # file: the module, uncompressed, on stdout
    case $1 in
        *.xz) xz -dc "$1";;
        *.zst) zstd -dcq "$1";;
        *.gz) gzip -dc "$1";;
        *) cat "$1";;
    esac
}
# the module's own "depends=" record in its .modinfo section
module_depends() { module_bytes "$1" | tr '\0' '\n' | sed -n 's/^depends=//p' | head -n 1 | tr ',' ' '; }
add_module() { # name: appends it after its dependencies to MOD_ORDER
    local n=${1//-/_} dep
    [ -z "${MOD_BUILTIN[$n]:-}" ] || return 0
    case ${MOD_SEEN[$n]:-} in
        loaded) return 0;;
        open) die "module dependency cycle through $n";;
    esac
    [ -n "${MOD_FILE[$n]:-}" ] || die "module $n is neither built into nor shipped with this kernel"
    MOD_SEEN[$n]=open
    for dep in $(module_depends "${MOD_FILE[$n]}"); do add_module "$dep"; done
    MOD_SEEN[$n]=loaded
    MOD_ORDER+=("$n")
}

is_dynamic_elf() { # file: true for an ELF with a program interpreter
    [ "$(head -c 4 "$1" | od -An -c | tr -d ' ')" = '177ELF' ] || return 1
    command -v readelf >/dev/null || die "readelf (binutils) is needed to check payloads"
    readelf -lW "$1" 2>/dev/null | grep -q 'program interpreter'
}

cmd_initramfs() {
    local out="" kernel=$KERNEL_DEFAULT cmd="" modules="" root="" payloads=() files=()
    while [ $# -gt 0 ]; do
        case $1 in
            --out) need_value "$@"; out=$2; shift 2;;
            --kernel) need_value "$@"; kernel=$2; shift 2;;
            --payload) need_value "$@"; payloads+=("$2"); shift 2;;
            --file) need_value "$@"; files+=("$2"); shift 2;;
            --cmd) need_value "$@"; cmd=$2; shift 2;;
            --modules) need_value "$@"; modules=$2; shift 2;;
            --switch-root) need_value "$@"; root=$2; shift 2;;
            *) die "initramfs: unknown argument $1";;
        esac
    done
    [ -n "$out" ] || die "initramfs: --out FILE is required"
    [ -z "$cmd" ] || [ -z "$root" ] || die "initramfs: --cmd and --switch-root exclude each other (the disk's init runs instead)"
    check_kernel_choice "$kernel"
    kernel_require "$kernel"
    local release moddir stage p src dest n
    release=$(kernel_info "$kernel" release)
    moddir=$CACHE/kernel/$kernel/$(kernel_info "$kernel" modules)
    stage=$(mktemp -d /tmp/microvm-initramfs.XXXXXX)
    # shellcheck disable=SC2064 # the path is fixed now
    trap "rm -rf '$stage'" EXIT
    mkdir -p "$stage"/{bin,dev,proc,sys,tmp,run,etc/microvm,"lib/modules/$release"}
    [ -x /bin/busybox ] || die "/bin/busybox is missing: run 'microvm.sh install'"
    ! is_dynamic_elf /bin/busybox || die "/bin/busybox is dynamically linked (busybox-static provides a static one)"
    cp /bin/busybox "$stage/bin/busybox"
    install -m 0755 "$HERE/microvm-init.sh" "$stage/init"
    for p in "${payloads[@]}"; do
        [ -f "$p" ] || die "payload $p not found"
        ! is_dynamic_elf "$p" || die "payload $p is dynamically linked; the initramfs has no libc"
        install -m 0755 "$p" "$stage/bin/${p##*/}"
    done
    for p in "${files[@]}"; do
        src=${p%%:*}; dest=${p#*:}
        if [ "$src" = "$p" ] || [ "${dest:0:1}" != / ]; then die "--file takes SRC:/ABSOLUTE/DEST, not '$p'"; fi
        [ -e "$src" ] || die "--file source $src not found"
        mkdir -p "$stage$(dirname "$dest")"
        cp -a "$src" "$stage$dest"
    done
    index_modules "$moddir"
    # shellcheck disable=SC2086 # lists of module names
    for n in $BASE_MODULES ${root:+virtio_blk ext4} $modules; do add_module "$n"; done
    for n in "${MOD_ORDER[@]}"; do
        module_bytes "${MOD_FILE[$n]}" > "$stage/lib/modules/$release/$n.ko"
        echo "$n.ko" >> "$stage/etc/microvm/modules"
    done
    printf '%s\n' "${cmd:-echo 'microvm: no --cmd given'}" > "$stage/etc/microvm/payload"
    [ -z "$root" ] || echo "$root" > "$stage/etc/microvm/root"
    mkdir -p "$(dirname "$out")"
    (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | /bin/busybox cpio -o -H newc 2>/dev/null) > "$out.tmp"
    printf 'MICROVM_KERNEL=%s\nMICROVM_KERNEL_RELEASE=%s\n' "$kernel" "$release" > "$out.kernel.tmp"
    mv "$out.tmp" "$out"
    mv "$out.kernel.tmp" "$out.kernel"
    log "initramfs: $out, $(( $(stat -c %s "$out") / 1024 )) KiB, kernel $release, modules: ${MOD_ORDER[*]}"
}

# ------------------------------------------------------------------ processes
# A PID file holds "PID STARTTIME EXE": the process counts as ours only while
# /proc/PID still has that start time (PIDs are reused) and that executable.
proc_field() { # pid: prints "STATE STARTTIME" from /proc/PID/stat
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    # shellcheck disable=SC2086 # split the fields after "(comm) "
    set -- ${stat##*) }
    echo "$1 ${20}"
}
record_pid() { # file pid exe
    local fields
    fields=$(proc_field "$2") || die "process $2 ($3) exited at once"
    echo "$2 ${fields#* } $3" > "$1"
}
recorded_running() { # file: true while the recorded process runs (zombies do not)
    local pid start exe fields exe_now
    read -r pid start exe < "$1" 2>/dev/null || return 1
    fields=$(proc_field "$pid") || return 1
    [ "${fields#* }" = "$start" ] || return 1
    case ${fields%% *} in Z|X|x) return 1;; esac
    exe_now=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
    [ "${exe_now% (deleted)}" = "$exe" ]
}
pid_running() { # pid: exists and is no zombie
    local fields
    fields=$(proc_field "$1") || return 1
    case ${fields%% *} in Z|X|x) return 1;; esac
}
recorded_pid() { local pid _; read -r pid _ < "$1" 2>/dev/null && echo "$pid"; }
wait_exec() { # file: until the forked child has exec'd its program (or died)
    for _ in $(seq 100); do
        recorded_running "$1" && return 0
        proc_field "$(recorded_pid "$1")" >/dev/null || return 1
        sleep 0.02
    done
    return 1
}
stop_recorded() { # file timeout_s
    local file=$1 pid deadline
    [ -f "$file" ] || return 0
    if recorded_running "$file"; then
        pid=$(recorded_pid "$file")
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$(( $(now_ms) + $2 * 1000 ))
        while recorded_running "$file" && [ "$(now_ms)" -lt "$deadline" ]; do sleep 0.05; done
        if recorded_running "$file"; then
            log "pid $pid ignored SIGTERM for $2 s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            for _ in $(seq 40); do recorded_running "$file" || break; sleep 0.05; done
        fi
    fi
    rm -f "$file"
}

kvm_unusable() { # prints why KVM cannot run a stock kernel here; false when it can
    if [ ! -e /dev/kvm ]; then echo "no /dev/kvm"
    elif [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then echo "/dev/kvm is not accessible"
    elif [ -d /sys/module/kvm_pvm ] && [ ! -d /sys/module/kvm_intel ] && [ ! -d /sys/module/kvm_amd ]; then
        # kvm_pvm runs PVM-aware guests only: a stock kernel crawls, then hangs
        echo "/dev/kvm is kvm_pvm (software PVM)"
    else return 1
    fi
}

launch_vhost() {
    rm -f "$RUN/vhost-user.sock" "$RUN/hvsock"
    RUST_LOG=${RUST_LOG:-error} "$VHOST_BIN" \
        --vm "guest-cid=$CID,socket=$RUN/vhost-user.sock,uds-path=$RUN/hvsock" \
        < /dev/null > "$RUN/vhost.log" 2>&1 &
    record_pid "$RUN/vhost.pid" $! "$(readlink -f "$VHOST_BIN")"
    for _ in $(seq 200); do
        [ -S "$RUN/vhost-user.sock" ] && return 0
        recorded_running "$RUN/vhost.pid" || wait_exec "$RUN/vhost.pid" \
            || fail_start "vhost-device-vsock exited: $(tail -n 3 "$RUN/vhost.log")"
        sleep 0.025
    done
    fail_start "vhost-device-vsock did not create $RUN/vhost-user.sock in 5 s"
}

launch_qemu() { # accel
    local accel=$1 cpu qemu
    # QEMU 7.2's TCG gets the 6.12 kernel's per-CPU cmpxchg16b (SLUB) wrong: a
    # double fault within seconds of systemd starting. Without cx16 the kernel
    # takes its other path; 6.1 does not mind either way.
    if [ "$accel" = tcg ]; then cpu=${SOCKFWD_VM_CPU:-max,-cx16}; else cpu=${SOCKFWD_VM_CPU:-host}; fi
    qemu=$(readlink -f "$(command -v qemu-system-x86_64)") || fail_start "qemu-system-x86_64 not found: run 'microvm.sh install'"
    # shellcheck disable=SC2054 # commas inside QEMU option values
    local args=(
        -name sockfwd-microvm -machine "q35,accel=$accel,memory-backend=ram"
        -cpu "$cpu" -smp "$CPUS" -m "${MEM}M"
        # vhost-user maps guest memory into the backend: it must be shareable
        -object "memory-backend-memfd,id=ram,size=${MEM}M,share=on"
        -nodefaults -no-user-config -display none -no-reboot
        -serial "file:$RUN/console.log"
        -kernel "$VMLINUZ" -initrd "$INITRAMFS"
        -append "console=ttyS0 panic=-1 quiet loglevel=4 $APPEND"
        -chardev "socket,id=vhost,path=$RUN/vhost-user.sock"
        -device vhost-user-vsock-pci,chardev=vhost
        -qmp "unix:$RUN/qmp.sock,server=on,wait=off"
    )
    # shellcheck disable=SC2054
    [ -z "$DISK" ] || args+=(-drive "file=$DISK,if=none,id=root,format=raw,cache=unsafe" -device virtio-blk-pci,drive=root)
    rm -f "$RUN/qmp.sock"
    printf '%q ' "$qemu" "${args[@]}" > "$RUN/qemu.cmdline"
    "$qemu" "${args[@]}" < /dev/null > "$RUN/qemu.log" 2>&1 &
    record_pid "$RUN/qemu.pid" $! "$qemu"
    # QEMU creates the QMP socket once its configuration is accepted
    for _ in $(seq 400); do
        [ -S "$RUN/qmp.sock" ] && recorded_running "$RUN/qemu.pid" && return 0
        recorded_running "$RUN/qemu.pid" || wait_exec "$RUN/qemu.pid" \
            || fail_start "qemu exited at once: $(tail -n 3 "$RUN/qemu.log")"
        sleep 0.025
    done
    fail_start "qemu did not open its QMP socket in 10 s"
}

fail_start() {
    stop_recorded "$RUN/qemu.pid" 5
    stop_recorded "$RUN/vhost.pid" 5
    die "start: $*"
}

# console marker search; QEMU's serial output carries CRs
console_has() { grep -qF -- "$1" "$RUN/console.log" 2>/dev/null; }

cmd_start() {
    local initramfs="" kernel="" accel=${SOCKFWD_VM_ACCEL:-auto} why="" t0 release
    RUN="" CID=3 MEM=512 CPUS=1 APPEND="" DISK=""
    while [ $# -gt 0 ]; do
        case $1 in
            --run-dir) need_value "$@"; RUN=$2; shift 2;;
            --initramfs) need_value "$@"; initramfs=$2; shift 2;;
            --kernel) need_value "$@"; kernel=$2; shift 2;;
            --disk) need_value "$@"; DISK=$2; shift 2;;
            --cid) need_value "$@"; CID=$2; shift 2;;
            --mem) need_value "$@"; MEM=$2; shift 2;;
            --cpus) need_value "$@"; CPUS=$2; shift 2;;
            --accel) need_value "$@"; accel=$2; shift 2;;
            --append) need_value "$@"; APPEND=$2; shift 2;;
            *) die "start: unknown argument $1";;
        esac
    done
    [ -n "$RUN" ] || die "start: --run-dir DIR is required"
    [ -f "$initramfs" ] || die "start: --initramfs FILE is required (got '$initramfs')"
    [ -z "$DISK" ] || [ -f "$DISK" ] || die "start: disk $DISK not found"
    case $accel in auto|kvm|tcg) ;; *) die "start: --accel takes auto, kvm or tcg";; esac
    [[ "$CID$MEM$CPUS" =~ ^[0-9]+$ ]] || die "start: --cid, --mem and --cpus take numbers"
    # the kernel is the one the initramfs was built for: its modules must match
    local built_kernel="" built_release=""
    if [ -f "$initramfs.kernel" ]; then
        built_kernel=$(sed -n 's/^MICROVM_KERNEL=//p' "$initramfs.kernel")
        built_release=$(sed -n 's/^MICROVM_KERNEL_RELEASE=//p' "$initramfs.kernel")
    fi
    if [ -n "$kernel" ] && [ -n "$built_kernel" ] && [ "$kernel" != "$built_kernel" ]; then
        die "start: --kernel $kernel, but $initramfs was built for kernel '$built_kernel'"
    fi
    kernel=${kernel:-${built_kernel:-$KERNEL_DEFAULT}}
    check_kernel_choice "$kernel"
    kernel_require "$kernel"
    release=$(kernel_info "$kernel" release)
    [ -z "$built_release" ] || [ "$built_release" = "$release" ] \
        || die "start: $initramfs holds modules for $built_release, the cached '$kernel' kernel is $release: build it again"
    VMLINUZ=$CACHE/kernel/$kernel/$(kernel_info "$kernel" vmlinuz)
    INITRAMFS=$(readlink -f "$initramfs")
    [ -z "$DISK" ] || DISK=$(readlink -f "$DISK")
    [ -x "$VHOST_BIN" ] || die "start: vhost-device-vsock is not installed: run 'microvm.sh install'"

    mkdir -p "$RUN"
    RUN=$(cd "$RUN" && pwd)
    # ${MICROVM_HVSOCK}_PORT must fit in sun_path (108 bytes)
    [ ${#RUN} -le 80 ] || die "start: run dir too long for Unix socket paths (${#RUN} > 80): $RUN"
    if { [ -f "$RUN/qemu.pid" ] && recorded_running "$RUN/qemu.pid"; } || { [ -f "$RUN/vhost.pid" ] && recorded_running "$RUN/vhost.pid"; }; then
        die "start: a VM still runs in $RUN (stop it first)"
    fi
    rm -f "$RUN/env" "$RUN"/*.pid "$RUN/console.log"
    t0=$(now_ms)
    if [ "$accel" = auto ]; then
        if why=$(kvm_unusable); then accel=tcg; log "start: TCG, since $why"; else accel=kvm-then-tcg; fi
    elif [ "$accel" = kvm ] && why=$(kvm_unusable); then
        die "start: --accel kvm, but $why"
    fi
    launch_vhost
    launch_qemu "${accel%-then-tcg}"
    if [ "$accel" = kvm-then-tcg ]; then
        # KVM can open fine and still never boot the guest: give it a deadline
        local deadline=$(( $(now_ms) + KVM_BOOT_TIMEOUT * 1000 ))
        while ! console_has "$MARK init" && recorded_running "$RUN/qemu.pid" && [ "$(now_ms)" -lt "$deadline" ]; do
            sleep 0.05
        done
        if console_has "$MARK init"; then
            accel=kvm
        else
            log "start: the KVM guest did not reach init in $KVM_BOOT_TIMEOUT s ($(tail -n 1 "$RUN/qemu.log")): TCG instead"
            stop_recorded "$RUN/qemu.pid" 5
            # a fresh backend for the new frontend, rather than rely on its reconnect
            stop_recorded "$RUN/vhost.pid" 5
            launch_vhost
            launch_qemu tcg
            accel=tcg
        fi
    fi
    {
        printf 'MICROVM_%s=%q\n' RUN_DIR "$RUN" HVSOCK "$RUN/hvsock" CONSOLE "$RUN/console.log" \
            QMP "$RUN/qmp.sock" QEMU_PID "$(recorded_pid "$RUN/qemu.pid")" \
            VHOST_PID "$(recorded_pid "$RUN/vhost.pid")" ACCEL "$accel" CID "$CID" MEM "$MEM" \
            CPUS "$CPUS" KERNEL "$kernel" KERNEL_RELEASE "$release" START_MS "$t0"
    } > "$RUN/env.tmp"
    mv "$RUN/env.tmp" "$RUN/env"
    log "start: $accel, kernel $release, cid $CID, ${MEM} MiB, $CPUS vCPU; qemu pid $(recorded_pid "$RUN/qemu.pid"), vhost-device-vsock pid $(recorded_pid "$RUN/vhost.pid"); hybrid socket $RUN/hvsock"
}

run_dir_arg() { # parses --run-dir plus the verb's own options into OPT_*
    RUN="" OPT_TIMEOUT="" OPT_MARKER="$MARK payload start" OPT_PID="" OPT_UNLESS=""
    while [ $# -gt 0 ]; do
        case $1 in
            --run-dir) need_value "$@"; RUN=$2; shift 2;;
            --timeout) need_value "$@"; OPT_TIMEOUT=$2; shift 2;;
            --marker) need_value "$@"; OPT_MARKER=$2; shift 2;;
            --while-pid) need_value "$@"; OPT_PID=$2; shift 2;;
            --unless) need_value "$@"; OPT_UNLESS=$2; shift 2;;
            *) die "unknown argument $1";;
        esac
    done
    [ -n "$RUN" ] || die "--run-dir DIR is required"
    [ -z "$OPT_TIMEOUT" ] || [[ "$OPT_TIMEOUT" =~ ^[0-9]+$ ]] || die "--timeout takes whole seconds"
}

cmd_wait() {
    run_dir_arg "$@"
    local timeout=${OPT_TIMEOUT:-120} t0 deadline start_ms
    t0=$(now_ms); deadline=$(( t0 + timeout * 1000 ))
    start_ms=$(sed -n 's/^MICROVM_START_MS=//p' "$RUN/env" 2>/dev/null || true)
    while :; do
        if console_has "$OPT_MARKER"; then
            log "wait: '$OPT_MARKER' $(( $(now_ms) - ${start_ms:-$t0} )) ms after start"
            return 0
        fi
        if [ -n "$OPT_UNLESS" ] && console_has "$OPT_UNLESS"; then
            log "wait: '$OPT_UNLESS' came first"; return 4
        fi
        if ! recorded_running "$RUN/qemu.pid"; then
            console_has "$OPT_MARKER" && return 0
            log "wait: qemu is not running ('$OPT_MARKER' never came)"; return 2
        fi
        if [ -n "$OPT_PID" ] && ! pid_running "$OPT_PID"; then
            log "wait: pid $OPT_PID exited first"; return 3
        fi
        if [ "$(now_ms)" -ge "$deadline" ]; then
            log "wait: no '$OPT_MARKER' in $timeout s"; return 1
        fi
        sleep 0.05
    done
}

cmd_stop() {
    run_dir_arg "$@"
    local timeout=${OPT_TIMEOUT:-10}
    [ -d "$RUN" ] || return 0
    if [ -f "$RUN/qemu.pid" ] && recorded_running "$RUN/qemu.pid"; then
        # a guest that already said goodbye is powering off by itself
        if console_has "$MARK payload exit" || console_has "$MARK error"; then
            for _ in $(seq 40); do recorded_running "$RUN/qemu.pid" || break; sleep 0.05; done
        fi
    fi
    stop_recorded "$RUN/qemu.pid" "$timeout"
    stop_recorded "$RUN/vhost.pid" "$timeout"
    rm -f "$RUN/qmp.sock" "$RUN/vhost-user.sock" "$RUN/hvsock"
    log "stop: $RUN stopped"
}

cmd_status() {
    run_dir_arg "$@"
    local name file rc=3
    for name in qemu vhost; do
        file=$RUN/$name.pid
        if [ -f "$file" ] && recorded_running "$file"; then
            echo "$name: running, pid $(recorded_pid "$file")"
            [ "$name" != qemu ] || rc=0
        else
            echo "$name: stopped"
        fi
    done
    [ ! -f "$RUN/env" ] || sed -n 's/^MICROVM_\(ACCEL\|KERNEL_RELEASE\)=/\L\1: /p' "$RUN/env"
    sed -n 's/\r$//; /^microvm: /p' "$RUN/console.log" 2>/dev/null || true
    return $rc
}

# ------------------------------------------------------------------ rootfs
cmd_rootfs() {
    local suite=bookworm include=systemd-sysv rebuild=${SOCKFWD_VM_ROOTFS_REBUILD:-0} key tarball
    while [ $# -gt 0 ]; do
        case $1 in
            --suite) need_value "$@"; suite=$2; shift 2;;
            --include) need_value "$@"; include=$2; shift 2;;
            --rebuild) rebuild=1; shift;;
            *) die "rootfs: unknown argument $1";;
        esac
    done
    local args=(--variant=minbase "--include=$include"
        '--dpkgopt=path-exclude=/usr/share/doc/*' '--dpkgopt=path-exclude=/usr/share/man/*'
        '--dpkgopt=path-exclude=/usr/share/locale/*' '--dpkgopt=path-exclude=/usr/share/info/*')
    key=$(printf '%s\n' "$suite" "${args[@]}" | sha256sum | cut -c1-16)
    tarball=$CACHE/rootfs/$suite-$key.tar
    lock_cache
    if [ -s "$tarball" ] && [ "$rebuild" = 0 ]; then
        log "rootfs: cached $tarball"
    else
        apt_ensure mmdebstrap
        [ "$(id -u)" = 0 ] || die "rootfs: mmdebstrap --mode=root needs root"
        mkdir -p "$CACHE/rootfs"
        log "rootfs: mmdebstrap ${args[*]} $suite"
        mmdebstrap --quiet --mode=root --format=tar "${args[@]}" "$suite" "$tarball.tmp" >&2 \
            || { rm -f "$tarball.tmp"; die "rootfs: mmdebstrap failed"; }
        mv "$tarball.tmp" "$tarball"
        log "rootfs: $tarball, $(du -m "$tarball" | cut -f1) MB"
    fi
    echo "$tarball"
}

verb=${1:-help}
[ $# -eq 0 ] || shift
case $verb in
    install) cmd_install "$@";;
    initramfs) cmd_initramfs "$@";;
    start) cmd_start "$@";;
    wait) cmd_wait "$@";;
    stop) cmd_stop "$@";;
    status) cmd_status "$@";;
    rootfs) cmd_rootfs "$@";;
    versions) cmd_versions;;
    help|-h|--help) usage;;
    *) usage >&2; die "unknown verb '$verb'";;
esac
