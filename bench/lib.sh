#!/usr/bin/env bash
# Shell helpers the benchmark scripts share: logging, .env lines, and waiting for an idle machine.

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# kv NAME VALUE: one shell-quoted NAME=VALUE line for the .env files (sourced by the drivers,
# parsed by the report scripts).
kv() { printf '%s=%q\n' "$1" "$2"; }

# outside_repository DIR REPO: stops unless DIR lies outside REPO (results never go in the clone).
outside_repository() {
    case $1 in
        "$2"|"$2"/*) die "BENCH_DIR must be outside the repository ($2)";;
    esac
}

# wait_quiet: waits until the processes of the machine use fewer than BENCH_QUIET_CORES cores
# (over two seconds), for at most BENCH_QUIET_MAX seconds; adds the wait to QUIET_WAITED.
wait_quiet() {
    local waited=0 busy
    while :; do
        busy=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat)
        sleep 2
        busy=$(awk -v a="$busy" -v hz="$(getconf CLK_TCK)" '/^cpu / {printf "%.2f", ($2 + $3 + $4 + $7 + $8 - a) / hz / 2}' /proc/stat)
        if awk -v b="$busy" -v m="$BENCH_QUIET_CORES" 'BEGIN {exit !(b < m)}'; then
            ((waited == 0)) || log "  machine quiet after ${waited}s"
            QUIET_WAITED=$((QUIET_WAITED + waited))
            return 0
        fi
        ((waited == 0)) && log "  machine busy (${busy} cores in use by others); waiting up to ${BENCH_QUIET_MAX}s"
        waited=$((waited + 2))
        if ((waited >= BENCH_QUIET_MAX)); then
            log "  WARNING: still busy (${busy} cores) after ${waited}s; measuring anyway"
            QUIET_WAITED=$((QUIET_WAITED + waited))
            return 0
        fi
    done
}
