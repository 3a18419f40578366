#!/bin/sh
# The guest half of tests/vm/run.sh: the payload of the microVM's busybox init
# (microvm.sh's init runs it with the console as stdout, and powers the guest off
# when it returns). Everything printed here lands in the host's console.log;
# run.sh reads the lines starting "SOCKFWD-VM:", "VMCHECK:" and "AGENT:".
#
# /etc/sockfwd-vm/env (written by run.sh) sets AGENT_FLAGS, AGENT_RUST_LOG,
# FORWARD_PATH, TCP_LISTEN (the guest TCP listener of the relay's -R), CHECK_BYTES,
# CHECK_WAIT.
set -u
# shellcheck disable=SC1091 # written by run.sh into the initramfs
. /etc/sockfwd-vm/env

echo "SOCKFWD-VM: cmdline: $(cat /proc/cmdline)"

# The agent's log goes to the console line by line, prefixed (busybox sed writes
# line-buffered to a tty), through a fifo so that $! is the agent itself.
mkfifo /tmp/agent.fifo
sed 's/^/AGENT: /' < /tmp/agent.fifo &
# shellcheck disable=SC2086 # AGENT_FLAGS is a list of flags
NO_COLOR=1 RUST_LOG=$AGENT_RUST_LOG /bin/sockfwd-agent $AGENT_FLAGS > /tmp/agent.fifo 2>&1 &
apid=$!
echo "SOCKFWD-VM: agent started pid=$apid flags=[$AGENT_FLAGS] uptime=$(cut -d' ' -f1 /proc/uptime)"

# The host probes the stream port first, then starts the relay, whose Bind
# creates FORWARD_PATH and the TCP listener; vm-check waits for them.
/bin/vm-check guest --socket "$FORWARD_PATH" --tcp "$TCP_LISTEN" --bytes "$CHECK_BYTES" --wait-secs "$CHECK_WAIT"
rc=$?
echo "SOCKFWD-VM: guest checks done rc=$rc uptime=$(cut -d' ' -f1 /proc/uptime)"
if kill -0 "$apid" 2>/dev/null; then
    echo "SOCKFWD-VM: agent alive"
else
    wait "$apid"
    echo "SOCKFWD-VM: agent dead rc=$?"
fi
echo "SOCKFWD-VM: free: $(free -k | awk '/^Mem:/ {print "used_kB=" $3 " total_kB=" $2}')"
# Stay up until the host stops the VM: it still checks connections the agent
# must close by itself.
wait "$apid"
echo "SOCKFWD-VM: agent exited rc=$?"
