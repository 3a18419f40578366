#!/usr/bin/env bash
# Demo: forward a host HTTP server's Unix socket into a "guest" and talk to it.
# Everything runs on this machine over Unix sockets (the same code paths as
# vsock, through the transport abstraction): a host service, the guest agent,
# the host relay, then curl from the guest side, twice; then what the daemons
# logged for each of those two connections.
#
# Needs cargo, curl and python3; installs nothing, needs no root and no network
# once the crates are downloaded. Waiting for a daemon never connects to it (a
# probe would be a forwarded connection of its own): the demo waits for socket
# files to appear instead.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "demo needs cargo (Rust from rustup: https://rustup.rs)" >&2; exit 1; }
command -v curl >/dev/null || { echo "demo needs curl (apt-get install curl)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "demo needs python3 (apt-get install python3)" >&2; exit 1; }

echo "0. building the release agent and relay (the first build takes minutes: cargo lists each crate as it compiles it)"
start=$(date +%s)
cargo build --release -p sockfwd-agent -p sockfwd-relay 2>&1 | sed -u 's/^/   /'
echo "   built in $(( $(date +%s) - start )) s"
BIN=target/release
D=$(mktemp -d /tmp/sockfwd-demo.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$D"; }
trap cleanup EXIT

wait_file() { # path what: until the socket file exists (10 s deadline); never connects
  for _ in $(seq 1 200); do
    [ -S "$1" ] && return 0
    sleep 0.05
  done
  echo "timed out waiting for $2 ($1)" >&2
  for log in "$D"/*.log; do echo "--- $log" >&2; cat "$log" >&2; done
  return 1
}

echo "1. host service: an HTTP server on $D/host/api.sock"
mkdir -p "$D/host"
python3 - "$D/host/api.sock" <<'PY' 2>"$D/http.log" &
import http.server, socketserver, sys, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("hello from the host (pid %d), you asked for %s\n" % (os.getpid(), self.path)).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def address_string(self): return "guest"
class S(socketserver.ThreadingMixIn, socketserver.UnixStreamServer): daemon_threads = True
S(sys.argv[1], H).serve_forever()
PY
pids+=($!); wait_file "$D/host/api.sock" "the host service"

echo "2. guest agent: control on $D/control.sock, streams on $D/streams.sock (vsock ports 1025/1026 in a VM)"
RUST_LOG=info,sockfwd_agent=debug "$BIN/sockfwd-agent" \
  --control "unix://$D/control.sock" --streams "unix://$D/streams.sock" 2>"$D/agent.log" &
pids+=($!); wait_file "$D/control.sock" "the agent's control socket"; wait_file "$D/streams.sock" "the agent's stream port"

guest_sock="$D/guest/run/api.sock"
echo "3. host relay: forward guest $guest_sock -> host $D/host/api.sock"
RUST_LOG=info,sockfwd_relay=debug "$BIN/sockfwd-relay" \
  --control "unix://$D/control.sock" --streams "unix://$D/streams.sock" \
  --forward "$guest_sock:$D/host/api.sock" 2>"$D/relay.log" &
# The agent creates the guest socket when the relay's Bind arrives.
pids+=($!); wait_file "$guest_sock" "the forwarded guest socket"

echo "4. a guest process talks to the host service through the forwarded socket, twice:"
ok=1
for path in /containers/json /version; do
  echo "   \$ curl --unix-socket $guest_sock http://localhost$path"
  reply=$(curl -sS --max-time 10 --unix-socket "$guest_sock" "http://localhost$path") || ok=0
  echo "   $reply"
  case "$reply" in "hello from the host"*) ;; *) ok=0 ;; esac
done

# One line per forwarded connection: the relay's per-connection log lines carry
# both IDs as fields (forward_id=, stream_id=); texts around them may change.
field() { sed -n "s/.*[{ ]$1=\([^ }]*\).*/\1/p" | head -n 1; }
connections() { grep -F 'forward_id=' "$D/relay.log" | grep -F 'stream_id=' | sed -n 's/.*stream_id=\([^ }]*\).*/\1/p' | awk '!seen[$0]++'; }
for _ in $(seq 1 40); do [ "$(connections | wc -l)" -ge 2 ] && break; sleep 0.05; done
echo "5. the forwarded connections, as the relay logged them:"
n=0
while read -r stream; do
  [ -n "$stream" ] || continue
  n=$((n + 1))
  forward=$(grep -F "stream_id=$stream" "$D/relay.log" | field forward_id)
  agent_too="not in the agent's log"
  grep -qF "stream_id=$stream" "$D/agent.log" && agent_too="the agent logged the same stream"
  echo "   connection $n: forward_id=$forward stream_id=$stream ($agent_too)"
  [ "$n" -eq 1 ] && first_forward=$forward
done < <(connections)
if [ "$n" -gt 0 ]; then
  cat <<EOF
   The forward ID ($first_forward) names the forward, the same for every connection
   through it: --forward GUEST:HOST without ID= takes the first 16 hex digits of
   sha256(GUEST_PATH) (ID=GUEST:HOST names it yourself). The agent sends it with each
   connection, and the relay looks it up in its own table to pick the host socket,
   never trusting a path from the guest. The stream ID names the stream-port
   connection that carried it: pool_<token>-<n> is one the relay opened ahead of
   time (--stream-pool), so the connection waited for no round trip; socketfwd-...
   is one opened on request, the agent having made the ID and the relay presenting
   it in its handshake so the agent can pair the two.
EOF
fi
[ "$n" -eq 2 ] || ok=0

if [ "$ok" = 1 ]; then
  echo "demo: OK (the daemons' logs: RUST_LOG=debug shows more; they are removed on exit)"
else
  echo "demo: FAILED"; echo "--- agent log"; cat "$D/agent.log"; echo "--- relay log"; cat "$D/relay.log"; exit 1
fi
