#!/usr/bin/env bash
# tests/vm/systemd.sh - the agent under a real service manager (issue 3, systemd/:
# "one runs the agent under a real service manager with notify ... and checks that
# READY arrives after the listeners exist").
#
#   tests/vm/systemd.sh        (as root; tests/run.sh calls it after tests/vm/run.sh)
#
# Boots a Debian bookworm root file system with systemd as PID 1 in the microVM of
# tests/vm/run.sh (QEMU, vhost-device-vsock hybrid sockets; a busybox initramfs
# loads the virtio/vsock modules and switch_roots to /dev/vda). The image holds:
#   the sockfwd-agent .deb of this tree (`cargo xtask agent-deb`), installed with
#   `dpkg -i` in the root fs: /usr/bin/sockfwd-agent (static, release), the unit
#   systemd/sockfwd-agent.service enabled by the package's postinst, and the
#   packaged /etc/sockfwd/agent.toml, then replaced (as an admin edits a conffile) by
#   /etc/sockfwd/agent.toml           a boot-time forward "web" at FORWARD_PATH
#   kernel command line               sockfwd.control_port/streams_port/log
#   sockfwd-{ready,forward,stop}-check.service + /usr/local/sbin/sockfwd-vm-check
#                                     the guest half (tests/vm/systemd/)
# The host runs the real relay over hvsock:// with --forward web=FORWARD_PATH:...
# to vm-check's Unix server, and reads the verdicts from the serial console.
#
# Cases: rootfs, systemd-boot, ready-after-listeners, unit-state, config-layers,
# the vm-check guest cases through the boot-time forward, relay-alive,
# watchdog-keepalive, clean-stop. Output: one line per case (PASS name / FAIL name:
# reason), the times, then exactly "N passed, N failed"; exit status 1 on any FAIL.
#
# The root fs comes from `microvm.sh rootfs` (mmdebstrap minbase + systemd-sysv +
# iproute2 for ss --vsock, a tarball cached under its recipe's hash); the ext4
# image is made from it each run with the current binaries.
#
# Environment: SOCKFWD_SD_BUDGET (600 s: hard stop for the whole script),
# SOCKFWD_SD_BYTES (256 KiB per direction), SOCKFWD_SD_KEEP=1 (keep the run dir),
# SOCKFWD_SD_REBUILD=1 (bootstrap again), SOCKFWD_VM_ACCEL (auto|kvm|tcg),
# SOCKFWD_VM_KERNEL (stable|backports), SOCKFWD_VM_CACHE (see microvm.sh help),
# CARGO_TARGET_DIR; for debugging the harness:
# SOCKFWD_VM_AGENT_DEB / SOCKFWD_VM_RELAY_BIN (a prebuilt package and relay, no build),
# SOCKFWD_SD_APPEND (extra kernel arguments), SOCKFWD_SD_DROPIN (text of a drop-in
# for sockfwd-agent.service). Both show the checks fail when they should:
#   SOCKFWD_SD_DROPIN=$'[Service]\nType=simple'      ready check before READY=1
#   SOCKFWD_SD_APPEND=sockfwd.pending_timeout=abc    the agent never starts
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VMDIR=$ROOT/tests/vm
SDDIR=$VMDIR/systemd
MICROVM=$VMDIR/microvm.sh
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
TRIPLE=x86_64-unknown-linux-gnu
BUDGET=${SOCKFWD_SD_BUDGET:-600}
BYTES=${SOCKFWD_SD_BYTES:-262144}
CONTROL_PORT=1025
STREAMS_PORT=1026
FORWARD_ID=web
FORWARD_PATH=/run/sockfwd/web.sock
FORWARD_MODE=660
WATCHDOG_HOLD_S=15      # the agent must stay up this long: 1.5 x WatchdogSec=10s
STOP_LIMIT_S=15         # the unit's TimeoutStopSec=
# The agent is configured by the kernel command line (ports, log) and the TOML
# file (the boot-time forward, pending_timeout): two layers at work.
KERNEL_ARGS="sockfwd.control_port=$CONTROL_PORT sockfwd.streams_port=$STREAMS_PORT sockfwd.log=debug${SOCKFWD_SD_APPEND:+ $SOCKFWD_SD_APPEND}"

# The root fs recipe (microvm.sh rootfs caches one tarball per recipe).
SUITE=bookworm
INCLUDE=systemd-sysv,iproute2
# Units of the minbase image this test has no use for; masked so the boot is
# shorter under TCG. No udev in the image: the root disk is mounted by the
# initramfs and the agent needs no device units.
MASK=(
    getty@tty1.service serial-getty@ttyS0.service getty.target
    apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer
    fstrim.timer systemd-tmpfiles-clean.timer e2scrub_reap.service
    systemd-firstboot.service systemd-pstore.service systemd-logind.service
    systemd-update-utmp.service systemd-update-utmp-runlevel.service
    systemd-timesyncd.service systemd-networkd.service systemd-resolved.service
    remote-fs.target
)

CASES=(
    rootfs systemd-boot ready-after-listeners unit-state config-layers
    forward-bound first-connection upload-integrity download-integrity
    duplex-echo-integrity parallel-connections half-close still-serving
    relay-alive watchdog-keepalive clean-stop
)

log() { printf '[vm-systemd %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# shellcheck source=tests/vm/harness.sh
. "$VMDIR/harness.sh"

# "VMCHECK: PASS name (detail)" / "VMCHECK: FAIL name: reason" from vm-check
# "MVM-CHECK: name ok (detail)" / "MVM-CHECK: name fail reason" from the guest
record_guest() { # name
    local line rest
    line=$(guest_lines "MVM-CHECK: $1 " | head -n 1)
    rest=${line#"MVM-CHECK: $1 "}
    case $rest in
        "") record FAIL "$1" "no verdict from the guest";;
        ok*) rest=${rest#ok}; rest=${rest# (}; record PASS "$1" "${rest%)}";;
        fail*) record FAIL "$1" "${rest#fail }";;
        *) record FAIL "$1" "unreadable verdict: $line";;
    esac
}

RUN=$(mktemp -d /tmp/sockfwd-sd.XXXXXX)
VMRUN=$RUN/vm
CONSOLE=$VMRUN/console.log
PIDS=()
RELAY_PID="" VM_STARTED=0 WATCHDOG=""
T0=$(now_ms) T_INSTALL="" T_BOOTSTRAP="" T_BUILD="" T_IMAGE="" T_READY="" T_TEST=""
READY_GUEST=""

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    for p in "${PIDS[@]}"; do stop_pid "$p"; done
    if [ "$VM_STARTED" = 1 ]; then
        "$MICROVM" stop --run-dir "$VMRUN" --timeout 10 >> "$RUN/microvm.log" 2>&1 || log "microvm.sh stop failed (see $RUN/microvm.log)"
    fi
    if [ -n "$WATCHDOG" ]; then kill -TERM "$WATCHDOG" 2>/dev/null || true; wait "$WATCHDOG" 2>/dev/null || true; fi
    rm -rf "$RUN/rootfs" "$RUN/disk.img"
    rm -rf "$ROOT/.cache/vm-systemd-last-run"; mkdir -p "$ROOT/.cache/vm-systemd-last-run"
    cp "$RUN"/*.log "$VMRUN"/*.log "$ROOT/.cache/vm-systemd-last-run/" 2>/dev/null || true
    if [ "$rc" = 0 ] && [ "${SOCKFWD_SD_KEEP:-0}" != 1 ]; then
        rm -rf "$RUN"
    else
        log "logs kept in $RUN"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap on_signal INT TERM

start_watchdog

# ------------------------------------------------------------------ reporting
# console lines without CR and colour; journald prefixes its forwarded lines
clean_console() { sed 's/\r$//; s/\x1b\[[0-9;]*m//g' "$CONSOLE" 2>/dev/null; }
guest_lines() { clean_console | grep -F -- "$1" | sed "s/^.*$1/$1/" || true; }
agent_log() { clean_console | sed -n 's/^.*sockfwd-agent\[[0-9]*\]: //p'; }


finish() {
    local name passed=0 failed=0 r
    if [ -f "$CONSOLE" ]; then
        agent_log > "$RUN/agent.log"
        clean_console | grep -v 'sockfwd-agent\[[0-9]*\]: ' > "$RUN/console-noagent.log" || true
    fi
    for name in "${CASES[@]}"; do
        [ -n "${RESULT[$name]:-}" ] || record FAIL "$name" "not run: ${ABORT_REASON:-an earlier step failed}"
    done
    for name in "${ORDER[@]}"; do
        [[ " ${CASES[*]} " == *" $name "* ]] || CASES+=("$name")
    done
    echo
    echo "== sockfwd systemd VM test results"
    for name in "${CASES[@]}"; do
        r=${RESULT[$name]}
        echo "$r"
        case $r in PASS*) passed=$((passed + 1));; *) failed=$((failed + 1));; esac
    done
    echo "times: install ${T_INSTALL:-?} s, bootstrap ${T_BOOTSTRAP:-?} s, build ${T_BUILD:-?} s, image ${T_IMAGE:-?} s, boot: qemu start -> ready verdict on the console ${T_READY:-?} s (${READY_GUEST:-guest timing unknown}), tests ${T_TEST:-?} s, total $(secs $(( $(now_ms) - T0 ))) s"
    [ -z "${VM_INFO:-}" ] || echo "vm: $VM_INFO"
    if [ "$failed" != 0 ]; then
        show_tail "guest console (without the agent's lines)" "$RUN/console-noagent.log" 80
        show_tail "agent log (guest journal)" "$RUN/agent.log" 60
        show_tail "relay log" "$RUN/relay.log" 40
        show_tail "host server log" "$RUN/host-server.log" 20
        show_tail "vhost-device-vsock log" "$VMRUN/vdv.log" 10
        show_tail "qemu log" "$VMRUN/qemu.log" 10
        show_tail "bootstrap/image/microvm log" "$RUN/microvm.log" 30
    fi
    echo "$passed passed, $failed failed"
    if [ "$failed" = 0 ]; then exit 0; else exit 1; fi
}


# ------------------------------------------------------------------ install
t=$(now_ms)
log "install: microvm.sh install --rootfs (the VM tooling and mmdebstrap)"
timeout 600 "$MICROVM" install --rootfs >> "$RUN/microvm.log" 2>&1 || { record FAIL rootfs "microvm.sh install failed"; abort "install failed"; }
T_INSTALL=$(secs $(( $(now_ms) - t )))

# ------------------------------------------------------------------ root fs (cached)
t=$(now_ms)
log "rootfs: microvm.sh rootfs --suite $SUITE --include $INCLUDE (a minute when not cached)"
rootfs_args=(--suite "$SUITE" --include "$INCLUDE")
[ "${SOCKFWD_SD_REBUILD:-0}" != 1 ] || rootfs_args+=(--rebuild)
if ! TARBALL=$(timeout 600 "$MICROVM" rootfs "${rootfs_args[@]}" 2> "$RUN/rootfs.log"); then
    cat "$RUN/rootfs.log" >> "$RUN/microvm.log"
    record FAIL rootfs "microvm.sh rootfs failed: $(tail -n 1 "$RUN/rootfs.log")"
    abort "bootstrap failed"
fi
cat "$RUN/rootfs.log" >> "$RUN/microvm.log"
if grep -q 'rootfs: cached' "$RUN/rootfs.log"; then BOOTSTRAP_NOTE=cached; else BOOTSTRAP_NOTE=bootstrapped; fi
T_BOOTSTRAP=$(secs $(( $(now_ms) - t )))

# ------------------------------------------------------------------ build
t=$(now_ms)
log "build: the agent's .deb (cargo xtask agent-deb: static release agent, cargo-deb), vm-check (static), relay"
build() { # what, then the cargo command
    local what=$1; shift
    if ! timeout 900 "$@" >> "$RUN/build.log" 2>&1; then
        tail -n 30 "$RUN/build.log" >&2
        record FAIL rootfs "build of $what failed"
        abort "build of $what failed"
    fi
}
CHECK=$TARGET_DIR/vm-check/$TRIPLE/release/vm-check
RELAY=$TARGET_DIR/debug/sockfwd-relay
if [ -n "${SOCKFWD_VM_AGENT_DEB:-}" ]; then
    AGENT_DEB=$SOCKFWD_VM_AGENT_DEB
else
    build "the agent's .deb" bash -c "cd '$ROOT' && cargo xtask agent-deb > '$RUN/agent-deb.path'"
    AGENT_DEB=$(tail -n 1 "$RUN/agent-deb.path")
fi
[ -f "$AGENT_DEB" ] || { record FAIL rootfs "no agent package at '$AGENT_DEB'"; abort "no agent package"; }
build vm-check env RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR="$TARGET_DIR/vm-check" \
    cargo build --manifest-path "$VMDIR/check/Cargo.toml" --release --target "$TRIPLE"
if [ -n "${SOCKFWD_VM_RELAY_BIN:-}" ]; then
    RELAY=$SOCKFWD_VM_RELAY_BIN
else
    build relay cargo build --manifest-path "$ROOT/Cargo.toml" -p sockfwd-relay
fi
T_BUILD=$(secs $(( $(now_ms) - t )))

# ------------------------------------------------------------------ image
t=$(now_ms)
log "image: $TARBALL + dpkg -i $(basename "$AGENT_DEB"), check units, config -> ext4"
make_image() {
    local fs=$RUN/rootfs unit
    mkdir -p "$fs"
    tar -C "$fs" -xf "$TARBALL"
    # The package is what is tested: installed as an image builder installs it
    # (dpkg in a chroot, where its postinst enables the unit but starts nothing).
    cp "$AGENT_DEB" "$fs/tmp/sockfwd-agent.deb"
    chroot "$fs" dpkg -i /tmp/sockfwd-agent.deb
    rm -f "$fs/tmp/sockfwd-agent.deb"
    [ -x "$fs/usr/bin/sockfwd-agent" ] || { echo "the package installed no /usr/bin/sockfwd-agent"; return 1; }
    [ -L "$fs/etc/systemd/system/multi-user.target.wants/sockfwd-agent.service" ] \
        || { echo "the package's postinst did not enable sockfwd-agent.service"; return 1; }
    install -m 0755 "$CHECK" "$fs/usr/local/bin/vm-check"
    install -m 0755 "$SDDIR/sockfwd-vm-check" "$fs/usr/local/sbin/sockfwd-vm-check"
    grep -q '^# ' "$fs/etc/sockfwd/agent.toml" || { echo "the package installed no commented /etc/sockfwd/agent.toml"; return 1; }
    install -D -m 0644 "$SDDIR/agent.toml" "$fs/etc/sockfwd/agent.toml"
    install -D -m 0644 "$SDDIR/journald-console.conf" "$fs/etc/systemd/journald.conf.d/50-console.conf"
    mkdir -p "$fs/etc/sockfwd-vm"
    cat > "$fs/etc/sockfwd-vm/env" <<EOF
FORWARD_PATH=$FORWARD_PATH
FORWARD_MODE=$FORWARD_MODE
CONTROL_PORT=$CONTROL_PORT
STREAMS_PORT=$STREAMS_PORT
CHECK_BYTES=$BYTES
WATCHDOG_HOLD_S=$WATCHDOG_HOLD_S
STOP_LIMIT_S=$STOP_LIMIT_S
EOF
    # the test's own units beside the packaged one, enabled as their [Install] says
    for unit in sockfwd-ready-check.service sockfwd-forward-check.service sockfwd-stop-check.service; do
        install -m 0644 "$SDDIR/$unit" "$fs/etc/systemd/system/"
        grep -q '^WantedBy=multi-user.target$' "$fs/etc/systemd/system/$unit" || { echo "$unit: not WantedBy=multi-user.target"; return 1; }
        ln -sf "/etc/systemd/system/$unit" "$fs/etc/systemd/system/multi-user.target.wants/$unit"
    done
    if [ -n "${SOCKFWD_SD_DROPIN:-}" ]; then
        mkdir -p "$fs/etc/systemd/system/sockfwd-agent.service.d"
        printf '%s\n' "$SOCKFWD_SD_DROPIN" > "$fs/etc/systemd/system/sockfwd-agent.service.d/50-debug.conf"
    fi
    for unit in "${MASK[@]}"; do
        rm -f "$fs/etc/systemd/system/$unit" "$fs"/etc/systemd/system/*.wants/"$unit"
        ln -s /dev/null "$fs/etc/systemd/system/$unit"
    done
    echo sockfwd-vm > "$fs/etc/hostname"
    : > "$fs/etc/fstab"
    tr -d '-' < /proc/sys/kernel/random/uuid > "$fs/etc/machine-id"
    # 1 GiB sparse; the tree is ~200 MB
    mkfs.ext4 -q -F -L root -d "$fs" "$RUN/disk.img" 1G
    rm -rf "$fs"
}
make_image >> "$RUN/microvm.log" 2>&1 || { record FAIL rootfs "image build failed: $(tail -n 1 "$RUN/microvm.log")"; abort "image build failed"; }
# The initramfs only loads the modules (vsock_diag for ss --vsock in the guest;
# the root fs has no /lib/modules for this kernel) and switches to the disk.
"$MICROVM" initramfs --out "$RUN/initramfs.cpio" --modules vsock_diag \
    --switch-root /dev/vda >> "$RUN/microvm.log" 2>&1 \
    || { record FAIL rootfs "initramfs build failed"; abort "initramfs build failed"; }
T_IMAGE=$(secs $(( $(now_ms) - t )))
record PASS rootfs "$SUITE minbase + $INCLUDE, $BOOTSTRAP_NOTE in $T_BOOTSTRAP s, $(du -m "$TARBALL" | cut -f1) MB; $(basename "$AGENT_DEB") installed with dpkg -i, unit enabled by its postinst; ext4 image in $T_IMAGE s"

# ------------------------------------------------------------------ boot
# An agent that never becomes ready: the stop-check unit still reports, which
# ends the earlier waits at once (wait_console's status 4).
GUEST_DONE="MVM-CHECK: guest done"
log "boot: $MICROVM start --disk (run dir $VMRUN, kernel args: $KERNEL_ARGS)"
VM_STARTED=1
"$MICROVM" start --run-dir "$VMRUN" --initramfs "$RUN/initramfs.cpio" --disk "$RUN/disk.img" --cid 3 --mem 512 \
    --accel "${SOCKFWD_VM_ACCEL:-auto}" --append "$KERNEL_ARGS" >> "$RUN/microvm.log" 2>&1 \
    || { record FAIL systemd-boot "microvm.sh start failed: $(tail -n 1 "$RUN/microvm.log")"; abort "VM did not start"; }
# shellcheck disable=SC1091
. "$VMRUN/env"
rc=0; wait_console "MVM-CHECK: ready-after-listeners" 240 "" "$GUEST_DONE" || rc=$?
T_READY=$(secs $(( $(now_ms) - MICROVM_START_MS )))
VM_INFO="accel=$MICROVM_ACCEL, kernel $MICROVM_KERNEL_RELEASE, $(grep -o 'microvm: ready.*' "$CONSOLE" | tr -d '\r' | head -n 1 || true)"
if [ $rc != 0 ]; then
    record FAIL systemd-boot "no verdict from sockfwd-ready-check.service after $T_READY s (rc $rc: 1 timeout, 2 qemu exited, 4 the guest finished without it)"
    record_guest watchdog-keepalive
    record_guest clean-stop
    abort "the agent did not become ready"
fi
T_TESTS_START=$(now_ms)
# guest timing: CLOCK_MONOTONIC microseconds of the agent's exec and READY=1
timing=$(guest_lines "MVM-TIME: " | head -n 1)
exec_us=$(sed -n 's/.*exec_us=\([0-9]*\).*/\1/p' <<< "$timing")
ready_us=$(sed -n 's/.*ready_us=\([0-9]*\).*/\1/p' <<< "$timing")
if [ -n "$exec_us" ] && [ -n "$ready_us" ]; then
    READY_GUEST="guest: kernel start -> READY=1 $(secs $((ready_us / 1000))) s, agent exec -> READY=1 $((ready_us / 1000 - exec_us / 1000)) ms"
fi
record PASS systemd-boot "systemd as PID 1 reached sockfwd-ready-check.service $T_READY s after qemu start, $MICROVM_ACCEL, $MICROVM_KERNEL_RELEASE"
log "boot: ready verdict $T_READY s after qemu start (${READY_GUEST:-?})"
record_guest ready-after-listeners

# systemctl show sockfwd-agent as the ready check saw it
declare -A SHOW=()
while IFS='=' read -r key value; do
    [ -n "$key" ] && SHOW[$key]=$value
done < <(guest_lines "MVM-SHOW: " | sed 's/^MVM-SHOW: //')
why=""
for want in Type=notify ActiveState=active SubState=running NRestarts=0 WatchdogUSec=10s; do
    [ "${SHOW[${want%%=*}]:-<none>}" = "${want#*=}" ] || why="$why; ${want%%=*}=${SHOW[${want%%=*}]:-<none>} (want ${want#*=})"
done
[[ "${SHOW[StatusText]:-}" == forwarding* ]] || why="$why; StatusText=${SHOW[StatusText]:-<none>} (want forwarding ...)"
if [ -z "$why" ]; then
    record PASS unit-state "Type=notify active/running NRestarts=0 WatchdogUSec=10s StatusText=\"${SHOW[StatusText]}\""
else
    record FAIL unit-state "${why#; }"
fi

# --print-config in the guest: ports from the kernel command line, the forward
# from the file
config=$(guest_lines "MVM-CONFIG: " | sed 's/^MVM-CONFIG: //')
echo "$config" > "$RUN/print-config.log"
why=""
grep -Eq "^control = \"vsock://-1:$CONTROL_PORT\" +# kernel command line" <<< "$config" || why="$why; control not from the kernel command line"
grep -Eq "^streams = \"vsock://-1:$STREAMS_PORT\" +# kernel command line" <<< "$config" || why="$why; streams not from the kernel command line"
grep -Eq '^log = "debug" +# kernel command line' <<< "$config" || why="$why; log not from the kernel command line"
grep -Eq '^\[\[forward\]\] +# file /etc/sockfwd/agent.toml' <<< "$config" || why="$why; [[forward]] not from /etc/sockfwd/agent.toml"
grep -Eq '^pending_timeout = "1m" +# file /etc/sockfwd/agent.toml' <<< "$config" || why="$why; pending_timeout not from the file"
if [ -z "$why" ]; then
    record PASS config-layers "--print-config: control, streams, log from the kernel command line; pending_timeout, [[forward]] $FORWARD_ID from /etc/sockfwd/agent.toml"
else
    record FAIL config-layers "${why#; } (see $RUN/print-config.log)"
fi

# ------------------------------------------------------------------ host server + relay
"$CHECK" serve "$RUN/host.sock" > "$RUN/host-server.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [ -S "$RUN/host.sock" ] && break; sleep 0.05; done
[ -S "$RUN/host.sock" ] || abort "host server did not start: $(tail -n 2 "$RUN/host-server.log")"
log "relay: --forward $FORWARD_ID=$FORWARD_PATH:$RUN/host.sock over hvsock://$MICROVM_HVSOCK"
NO_COLOR=1 RUST_LOG=debug "$RELAY" --control "hvsock://$MICROVM_HVSOCK:$CONTROL_PORT" --streams "hvsock://$MICROVM_HVSOCK:$STREAMS_PORT" \
    --forward "$FORWARD_ID=$FORWARD_PATH:$RUN/host.sock" > "$RUN/relay.log" 2>&1 &
RELAY_PID=$!
PIDS+=("$RELAY_PID")

# ------------------------------------------------------------------ guest cases
log "guest: waiting for sockfwd-forward-check.service"
rc=0; wait_console "MVM-CHECK: forward done" 180 "$RELAY_PID" "$GUEST_DONE" || rc=$?
while IFS= read -r line; do
    record_vmcheck "$line"
done < <(guest_lines "VMCHECK: ")
if [ "$rc" = 0 ] && kill -0 "$RELAY_PID" 2>/dev/null; then
    record PASS relay-alive "still running after the guest's cases"
else
    st=""; kill -0 "$RELAY_PID" 2>/dev/null || { st=0; wait "$RELAY_PID" 2>/dev/null || st=$?; }
    record FAIL relay-alive "${st:+the relay exited (status $st): $(tail -n 1 "$RUN/relay.log"); }forward-check rc $rc (1 timeout, 2 qemu exited, 3 relay exited, 4 the guest finished without it)"
fi

log "guest: waiting for sockfwd-stop-check.service (watchdog hold ${WATCHDOG_HOLD_S} s, systemctl stop)"
rc=0; wait_console "$GUEST_DONE" 120 || rc=$?
[ "$rc" = 0 ] || ABORT_REASON="no 'guest done' from sockfwd-stop-check.service (rc $rc: 1 timeout, 2 qemu exited)"
record_guest watchdog-keepalive
record_guest clean-stop
T_TEST=$(secs $(( $(now_ms) - T_TESTS_START )))
finish
