# shellcheck shell=bash
# Start and stop a throwaway tansu broker (Kafka protocol, in-memory storage)
# for the tests. Meant to be sourced:
#
#   source scripts/tansu.sh
#   tansu_start            # exports PATHFLOW_TEST_BROKERS, TANSU_PID, TANSU_LOG
#   trap tansu_stop EXIT
#
# Works with or without `set -euo pipefail` in the caller, and changes no shell
# options. Install tansu with:
#   cargo install --locked tansu --features dynostore,libsql   (about 18 minutes)

# Seconds to wait for the broker to accept connections.
: "${TANSU_START_TIMEOUT:=30}"

# Prints the path of the tansu binary, or fails.
_tansu_bin() {
    if command -v tansu 2>/dev/null; then
        return 0
    fi
    if [[ -x "$HOME/.cargo/bin/tansu" ]]; then
        echo "$HOME/.cargo/bin/tansu"
        return 0
    fi
    return 1
}

# Prints a TCP port on 127.0.0.1 that was free a moment ago.
_tansu_free_port() {
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# Succeeds when something accepts TCP connections on 127.0.0.1:$1.
_tansu_port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

tansu_start() {
    local bin
    if ! bin=$(_tansu_bin); then
        echo "tansu_start: tansu is not on PATH or in ~/.cargo/bin." >&2
        echo "  Install it with: cargo install --locked tansu --features dynostore,libsql" >&2
        echo "  (about 18 minutes on a fresh machine), or point PATHFLOW_TEST_BROKERS at a broker." >&2
        return 1
    fi
    if ! command -v python3 >/dev/null 2>&1; then
        echo "tansu_start: python3 is needed to pick a free port" >&2
        return 1
    fi

    local dir attempt port pid log waited
    dir=$(mktemp -d "${TMPDIR:-/tmp}/pathflow-tansu.XXXXXX") || return 1
    for attempt in 1 2 3; do
        port=$(_tansu_free_port) || return 1
        log="$dir/tansu-$port.log"
        # tansu reads LISTENER_URL etc. from the environment too; the flags win.
        "$bin" broker \
            --listener-url "tcp://127.0.0.1:$port" \
            --advertised-listener-url "tcp://127.0.0.1:$port" \
            --storage-engine memory://tansu/ \
            </dev/null >"$log" 2>&1 &
        pid=$!

        waited=0
        while kill -0 "$pid" 2>/dev/null && ! _tansu_port_open "$port"; do
            if ((waited >= TANSU_START_TIMEOUT * 10)); then
                break
            fi
            sleep 0.1
            waited=$((waited + 1))
        done

        if _tansu_port_open "$port"; then
            # The port may have been taken by someone else between our pick and
            # tansu's bind, in which case tansu exits (with status 0): give it
            # a moment, then make sure it is still ours and alive.
            sleep 1
            if kill -0 "$pid" 2>/dev/null; then
                export PATHFLOW_TEST_BROKERS="127.0.0.1:$port"
                export TANSU_PID="$pid"
                export TANSU_LOG="$log"
                echo "tansu: broker at $PATHFLOW_TEST_BROKERS (pid $pid, log $log)" >&2
                return 0
            fi
        fi

        # Not up: stop it if it still runs, show why, and try another port.
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            echo "tansu_start: attempt $attempt: no connection on port $port after ${TANSU_START_TIMEOUT} s" >&2
        else
            echo "tansu_start: attempt $attempt: tansu exited before serving on port $port" >&2
        fi
        wait "$pid" 2>/dev/null || true
        echo "---- $log ----" >&2
        cat "$log" >&2
        echo "----" >&2
    done
    echo "tansu_start: could not start a tansu broker after 3 attempts (logs in $dir)" >&2
    return 1
}

tansu_stop() {
    local pid=${TANSU_PID:-} waited=0
    if [[ -z "$pid" ]]; then
        return 0
    fi
    if kill "$pid" 2>/dev/null; then
        while kill -0 "$pid" 2>/dev/null && ((waited < 100)); do
            sleep 0.1
            waited=$((waited + 1))
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    unset TANSU_PID
    return 0
}
