# Shared helpers for the interop scripts: start keel on a free loopback port, stop it by pid.
# Source it; it expects KEEL (the binary) and sets WORK, PORT, KEEL_PID, TARGET.

KEEL=${KEEL:-target/release/keel}
TARGET=iqn.2026-11.org.example:disk0
WORK=$(mktemp -d /tmp/keel-interop.XXXXXX)
KEEL_PID=

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# start_keel SIZE [extra [server] lines] [extra [[target]] lines]: one target, one file LUN.
start_keel() {
    PORT=$(free_port)
    cat > "$WORK/targets.toml" <<EOT
[server]
portals = ["127.0.0.1:$PORT"]
data_dir = "$WORK"
control_socket = "$WORK/keel.sock"
${2:-}

[[target]]
name = "$TARGET"
alias = "disk0"
${3:-}

[[target.lun]]
lun = 0
file = "disk0.img"
size = "$1"
EOT
    "$KEEL" check --config "$WORK/targets.toml" >/dev/null
    KEEL_LOG=${KEEL_LOG:-info} "$KEEL" serve --config "$WORK/targets.toml" >"$WORK/keel.log" 2>&1 &
    KEEL_PID=$!
    for _ in $(seq 1 100); do
        grep -q "listening" "$WORK/keel.log" 2>/dev/null && return 0
        kill -0 "$KEEL_PID" 2>/dev/null || break
        sleep 0.05
    done
    echo "keel did not start:"; cat "$WORK/keel.log"; return 1
}

stop_keel() {
    if [ -n "$KEEL_PID" ] && kill -0 "$KEEL_PID" 2>/dev/null; then
        kill -TERM "$KEEL_PID"
        for _ in $(seq 1 200); do kill -0 "$KEEL_PID" 2>/dev/null || break; sleep 0.05; done
        kill -0 "$KEEL_PID" 2>/dev/null && { echo "keel did not stop on SIGTERM"; kill -KILL "$KEEL_PID"; return 1; }
        wait "$KEEL_PID" 2>/dev/null || { echo "keel exited with an error:"; tail -5 "$WORK/keel.log"; return 1; }
    fi
    KEEL_PID=
}

cleanup() {
    if [ -n "$KEEL_PID" ]; then kill -KILL "$KEEL_PID" 2>/dev/null || true; wait "$KEEL_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

fail() { echo "FAIL: $*"; echo "--- keel log (tail):"; tail -20 "$WORK/keel.log" 2>/dev/null; exit 1; }
