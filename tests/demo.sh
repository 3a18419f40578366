#!/usr/bin/env bash
# Demo: forward a host HTTP server's Unix socket into a "guest" and talk to it.
# Everything runs on this machine over Unix sockets (the same code paths as
# vsock, through the transport abstraction): a host service, the guest agent,
# the host relay, then curl from the guest side.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v curl >/dev/null || { echo "demo needs curl (apt-get install curl)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "demo needs python3" >&2; exit 1; }
cargo build --release -q -p sockfwd-agent -p sockfwd-relay
BIN=target/release
D=$(mktemp -d /tmp/sockfwd-demo.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$D"; }
trap cleanup EXIT

wait_sock() { # path: retry until it accepts a connection (10 s deadline)
  for _ in $(seq 1 200); do
    python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])' "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "timed out waiting for $1" >&2; return 1
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
pids+=($!); wait_sock "$D/host/api.sock"

echo "2. guest agent: control on $D/control.sock, streams on $D/streams.sock (vsock ports 1025/1026 in a VM)"
RUST_LOG=info "$BIN/sockfwd-agent" --control "unix://$D/control.sock" --streams "unix://$D/streams.sock" 2>"$D/agent.log" &
pids+=($!); wait_sock "$D/control.sock"

echo "3. host relay: forward guest $D/guest/run/api.sock -> host $D/host/api.sock"
RUST_LOG=info "$BIN/sockfwd-relay" --control "unix://$D/control.sock" --streams "unix://$D/streams.sock" \
  --forward "$D/guest/run/api.sock:$D/host/api.sock" 2>"$D/relay.log" &
pids+=($!); wait_sock "$D/guest/run/api.sock"

echo "4. a guest process talks to the host service through the forwarded socket:"
echo "   \$ curl --unix-socket $D/guest/run/api.sock http://localhost/containers/json"
reply=$(curl -sS --unix-socket "$D/guest/run/api.sock" http://localhost/containers/json)
echo "   $reply"
case "$reply" in
  "hello from the host"*) echo "demo: OK" ;;
  *) echo "demo: FAILED"; echo "--- agent log"; cat "$D/agent.log"; echo "--- relay log"; cat "$D/relay.log"; exit 1 ;;
esac
echo "--- agent log"; cat "$D/agent.log"
echo "--- relay log"; cat "$D/relay.log"
