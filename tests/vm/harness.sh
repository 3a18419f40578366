# tests/vm/harness.sh - what the VM tests (run.sh, systemd.sh) share: timing,
# result bookkeeping, stopping our own children, the overall budget. Sourced, not
# run; the caller defines log(), finish(), BUDGET, MICROVM, RUN and VMRUN
# before sourcing.
# shellcheck shell=bash

now_ms() { date +%s%3N; }
secs() { awk -v ms="$1" 'BEGIN { printf "%.1f", ms / 1000 }'; }

declare -A RESULT=()    # name -> "PASS ..." | "FAIL ..." | "XFAIL ..."
ORDER=()
record() { # status name text
    local status=$1 name=$2 text=${3:-}
    [ -n "${RESULT[$name]:-}" ] || ORDER+=("$name")
    case $status in
        PASS) RESULT[$name]="PASS $name${text:+ ($text)}";;
        *) RESULT[$name]="$status $name: ${text:-no reason given}";;
    esac
}
# a "VMCHECK: PASS name (detail)" / "VMCHECK: FAIL name: reason" line from vm-check
record_vmcheck() {
    local line=${1#VMCHECK: } status name rest
    status=${line%% *}; rest=${line#* }
    name=${rest%%[ :]*}; rest=${rest#"$name"}
    case $status in
        PASS) rest=${rest# (}; rest=${rest%)};;
        FAIL) rest=${rest#: };;
        *) return 0;;
    esac
    record "$status" "$name" "$rest"
}

stop_pid() { # pid: TERM, up to 5 s, then KILL; only our own children
    local pid=$1 _
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

show_tail() { # title file [lines]
    [ -s "$2" ] || return 0
    printf -- '--- %s (%s, last %s lines)\n' "$1" "$2" "${3:-40}"
    tail -n "${3:-40}" "$2" | sed 's/\r$//'
}
# wait_console MARKER TIMEOUT_S [PID that must stay alive] [TEXT that ends the wait]:
# microvm.sh wait on the caller's VM (MICROVM, VMRUN); 0 seen, 1 timeout,
# 2 qemu exited, 3 PID exited, 4 TEXT seen first
wait_console() {
    local extra=()
    [ -z "${3:-}" ] || extra+=(--while-pid "$3")
    [ -z "${4:-}" ] || extra+=(--unless "$4")
    "$MICROVM" wait --run-dir "$VMRUN" --marker "$1" --timeout "$2" "${extra[@]}" 2>> "$RUN/microvm.log"
}

# shellcheck disable=SC2317  # invoked by the INT/TERM trap
on_signal() { trap - INT TERM; record FAIL whole-run "interrupted (signal or the $BUDGET s budget)"; abort "interrupted"; }
# shellcheck disable=SC2034  # ABORT_REASON is read by the caller's finish()
abort() { ABORT_REASON=$*; log "ABORT: $*"; finish; }

# Hard stop: every wait has its own timeout; this is the backstop. Sets WATCHDOG.
start_watchdog() {
    (
        sleep "$BUDGET" & s=$!
        trap 'kill "$s" 2>/dev/null; exit 0' TERM
        wait "$s" && { log "overall budget of $BUDGET s exceeded: stopping"; kill -TERM $$; }
    ) &
    # shellcheck disable=SC2034  # the caller's cleanup() stops it
    WATCHDOG=$!
}
