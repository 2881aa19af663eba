# Sourced, not run, by the HTTP benchmark scripts: an `fsdb serve` of their own.
#
#   serve_fsdb FSDB_BINARY DATA_DIR PORT   serve DATA_DIR on 127.0.0.1:PORT in the
#                                          background; returns once /healthz answers
#                                          (fails if the server exits first, or
#                                          after 10 s without an answer)
#   stop_fsdb                              stop that server, if one was started
fsdb_server_pid=

serve_fsdb() {
    "$1" --data "$2" serve --listen "127.0.0.1:$3" 2>/dev/null &
    fsdb_server_pid=$!
    for _ in $(seq 100); do
        if curl -sf "http://127.0.0.1:$3/healthz" >/dev/null; then
            return 0
        fi
        if ! kill -0 "$fsdb_server_pid" 2>/dev/null; then
            echo "fsdb serve exited before answering on 127.0.0.1:$3" >&2
            fsdb_server_pid=
            return 1
        fi
        sleep 0.1
    done
    echo "fsdb serve did not answer on 127.0.0.1:$3 within 10 s" >&2
    return 1
}

stop_fsdb() {
    if [[ -n $fsdb_server_pid ]]; then
        kill "$fsdb_server_pid" 2>/dev/null || true
        wait "$fsdb_server_pid" 2>/dev/null || true
        fsdb_server_pid=
    fi
}
