#!/usr/bin/env bash
# Palisade vs restic benchmark: prepares the inputs, runs both tools, writes docs/benchmarks.md.
#
# Usage: bench/run.sh [STAGE ...]      stages: prepare restic palisade report (default: all four)
# Environment (all optional):
#   BENCH_DIR        cache/scratch dir            (default $HOME/.cache/palisade-bench)
#   PALISADE_BIN     palisade binary to use; when unset the script runs
#                    `cargo build --release -p palisade` with CARGO_TARGET_DIR=$HOME/.cache/palisade-target
#   RESTIC_BIN       restic binary                (default restic)
#   BENCH_BIG        1 = run the 10 GiB stdin memory-bound step for palisade (default 1)
#   BENCH_BIG_SIZE   size of that stream          (default 10G)
#   BENCH_REPEAT     undisturbed runs of the tree and dump sequences per tool; the report shows medians (default 3)
#   BENCH_MAX_RUNS   give up after this many runs even if some were disturbed (default 2 x BENCH_REPEAT)
#   BENCH_QUIET_MAX  seconds to wait before each step for other processes to leave the CPUs idle (default 600)
#   BENCH_QUIET_CORES  "idle" means other processes use fewer cores than this (default 0.25)
#   PG_TEXT_BYTES    bytes of file content loaded into PostgreSQL (default 1300000000)
#   BENCH_REBUILD_INPUTS  1 = throw away and rebuild the cached inputs
#   BENCH_KEEP_PG    1 = keep the PostgreSQL cluster directory after the dumps
#   BENCH_DOC        where to write the report     (default <repo>/docs/benchmarks.md)
set -euo pipefail

BENCH_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BENCH_SRC/.." && pwd)
BENCH_DIR=${BENCH_DIR:-$HOME/.cache/palisade-bench}
RESTIC_BIN=${RESTIC_BIN:-restic}
BENCH_BIG=${BENCH_BIG:-1}
BENCH_BIG_SIZE=${BENCH_BIG_SIZE:-10G}
BENCH_REPEAT=${BENCH_REPEAT:-3}
BENCH_MAX_RUNS=${BENCH_MAX_RUNS:-$((BENCH_REPEAT * 2))}
BENCH_QUIET_MAX=${BENCH_QUIET_MAX:-600}
BENCH_QUIET_CORES=${BENCH_QUIET_CORES:-0.25}
REP=1
DISTURBED=0
QUIET_WAITED=0
REP_DONE=0
PG_TEXT_BYTES=${PG_TEXT_BYTES:-1300000000}
BENCH_DOC=${BENCH_DOC:-$REPO_ROOT/docs/benchmarks.md}
PGBIN=/usr/lib/postgresql/15/bin
LINUX_TARBALL_GLOB='/usr/src/linux-source-*.tar.xz'
PYTHON=${PYTHON:-python3}

INPUTS=$BENCH_DIR/inputs
REPOS=$BENCH_DIR/repos
SCRATCH=$BENCH_DIR/scratch
RESULTS=$BENCH_DIR/results
LOGS=$BENCH_DIR/logs
PASSWORD_FILE=$BENCH_DIR/password
DUMP_NAME=dump.sql
BIG_NAME=big.bin

# only the settings below reach the tools
unset RESTIC_REPOSITORY RESTIC_REPOSITORY_FILE RESTIC_PASSWORD RESTIC_PASSWORD_COMMAND RESTIC_COMPRESSION RESTIC_PACK_SIZE \
    PALISADE_REPOSITORY PALISADE_PASSWORD PALISADE_PASSWORD_FILE PALISADE_CONFIG PALISADE_LOG
export RESTIC_PASSWORD_FILE=$PASSWORD_FILE
export RESTIC_CACHE_DIR=$SCRATCH/restic-cache
export RESTIC_PROGRESS_FPS=0.2

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
outside_repository "$BENCH_DIR" "$REPO_ROOT"

mkdir -p "$INPUTS" "$REPOS" "$SCRATCH" "$RESULTS" "$LOGS"
[[ -s $PASSWORD_FILE ]] || { printf 'palisade-bench-password\n' >"$PASSWORD_FILE"; chmod 600 "$PASSWORD_FILE"; }

need_packages() {
    local missing=() p
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# ---------------------------------------------------------------- inputs

linux_dir() { cat "$INPUTS/linux.dir"; }

prepare_linux() {
    if [[ -f $INPUTS/linux.done && $BENCH_REBUILD_INPUTS != 1 ]]; then
        log "linux tree already extracted: $(linux_dir)"
        return
    fi
    need_packages linux-source
    local tarball
    tarball=$(ls $LINUX_TARBALL_GLOB | sort -V | tail -n1)
    [[ -f $tarball ]] || die "no linux-source tarball under /usr/src"
    local t0=$SECONDS
    rm -rf "$INPUTS/linux" "$INPUTS/linux.done" "$INPUTS/linux.dir"
    mkdir -p "$INPUTS/linux"
    log "extracting $tarball"
    tar -xJf "$tarball" -C "$INPUTS/linux"
    local top
    top=$(find "$INPUTS/linux" -mindepth 1 -maxdepth 1 -type d | head -n1)
    echo "$top" >"$INPUTS/linux.dir"
    {
        echo "LINUX_TARBALL=$tarball"
        echo "LINUX_TARBALL_BYTES=$(stat -c %s "$tarball")"
        kv LINUX_PACKAGE "$(dpkg-query -W -f='${Package} ${Version}' "$(dpkg -S "$tarball" | cut -d: -f1)")"
        echo "LINUX_DIR=$top"
        echo "LINUX_BYTES=$(find "$top" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')"
        echo "LINUX_FILES=$(find "$top" -type f | wc -l)"
        echo "LINUX_DIRS=$(find "$top" -type d | wc -l)"
        echo "LINUX_SYMLINKS=$(find "$top" -type l | wc -l)"
        echo "LINUX_DU=$(du -sb "$top" | cut -f1)"
        echo "LINUX_PREP_SECONDS=$((SECONDS - t0))"
    } >"$INPUTS/linux.env"
    touch "$INPUTS/linux.done"
    log "linux tree ready: $top"
}

PG_DIR=$BENCH_DIR/pg
PG_ACL_DIRS=()

pg_grant_traverse() {
    # postgres must be able to reach $PG_DIR; give it search (x) permission only, on the
    # ancestors it cannot already traverse, and remember them so the grant is removed afterwards.
    local d=$PG_DIR
    : >"$BENCH_DIR/pg-acl.list"
    while [[ $d != / ]]; do
        d=$(dirname "$d")
        if ! runuser -u postgres -- test -x "$d"; then
            need_packages acl
            setfacl -m u:postgres:x "$d"
            PG_ACL_DIRS+=("$d")
            echo "$d" >>"$BENCH_DIR/pg-acl.list"
        fi
    done
}

pg_revoke_traverse() {
    local d
    if [[ -f $BENCH_DIR/pg-acl.list ]]; then
        while read -r d; do
            [[ -n $d ]] && setfacl -x u:postgres "$d" 2>/dev/null || true
            # drop the ACL mask left behind when no other named entries remain
            if [[ -n $d ]] && ! getfacl -cp "$d" 2>/dev/null | grep -qE '^(user|group):[^:]+:'; then
                setfacl -b "$d" 2>/dev/null || true
            fi
        done <"$BENCH_DIR/pg-acl.list"
        rm -f "$BENCH_DIR/pg-acl.list"
    fi
}

pg_stop() {
    if [[ -f $PG_DIR/data/postmaster.pid ]]; then
        log "stopping PostgreSQL"
        (cd / && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null) || true
    fi
    pg_revoke_traverse
}

free_port() {
    "$PYTHON" - <<'EOF'
import socket
for _ in range(50):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    if 20000 <= port <= 60000:
        print(port)
        break
else:
    print(port)
EOF
}

prepare_pg() {
    if [[ -f $INPUTS/pg.done && $BENCH_REBUILD_INPUTS != 1 ]]; then
        log "PostgreSQL dumps already made: $INPUTS/day1.sql $INPUTS/day2.sql"
        return
    fi
    need_packages postgresql-15
    local linux
    linux=$(linux_dir)
    local t0=$SECONDS
    rm -f "$INPUTS/pg.done" "$INPUTS/day1.sql" "$INPUTS/day2.sql"
    pg_stop
    rm -rf "$PG_DIR"
    mkdir -p "$PG_DIR/data" "$PG_DIR/sock"
    chown -R postgres:postgres "$PG_DIR"
    chmod 700 "$PG_DIR/data"
    pg_grant_traverse
    trap 'pg_stop' EXIT

    log "initdb (as postgres) in $PG_DIR/data"
    (cd / && runuser -u postgres -- "$PGBIN/initdb" -D "$PG_DIR/data" -A trust -U postgres -E UTF8 --locale=C >"$LOGS/initdb.log" 2>&1)
    local port
    port=$(free_port)
    # Unix socket only (listen_addresses empty). Durability is off: this cluster only exists to make the dumps.
    log "starting PostgreSQL 15 on Unix socket $PG_DIR/sock port $port"
    (cd / && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" \
        -o "-p $port -k $PG_DIR/sock -c listen_addresses= -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_wal_size=8GB -c shared_buffers=512MB -c maintenance_work_mem=512MB" \
        -w start >/dev/null)
    local psql=(psql -X -q -v ON_ERROR_STOP=1 -h "$PG_DIR/sock" -p "$port" -U postgres)
    "${psql[@]}" -d postgres -c 'CREATE DATABASE bench'
    "${psql[@]}" -d bench -c 'CREATE TABLE files (id serial PRIMARY KEY, path text NOT NULL, content text NOT NULL)'

    log "loading the linux tree's text files into table files (budget $PG_TEXT_BYTES bytes of content)"
    "$PYTHON" "$BENCH_SRC/gen_copy.py" "$linux" "$PG_TEXT_BYTES" 2>"$LOGS/gen_copy.log" |
        "${psql[@]}" -d bench -c '\copy files (path, content) from pstdin'
    "${psql[@]}" -d bench -c 'VACUUM ANALYZE files'

    log "pg_dump day 1"
    pg_dump -h "$PG_DIR/sock" -p "$port" -U postgres --format=plain -f "$INPUTS/day1.sql" bench

    # Day 2: change a few words in 1% of the rows (every row whose id % 100 = 7):
    # the first "the" and the first "return" become upper case and 8 characters in the
    # middle of the text are overwritten with "DAY2EDIT".
    log "updating 1% of the rows"
    "${psql[@]}" -d bench <<'SQL'
UPDATE files
   SET content = overlay(
         regexp_replace(regexp_replace(content, '\mthe\M', 'THE'), '\mreturn\M', 'RETURN')
         placing 'DAY2EDIT' from greatest(1, length(content) / 2) for 8)
 WHERE id % 100 = 7;
SQL
    log "pg_dump day 2"
    pg_dump -h "$PG_DIR/sock" -p "$port" -U postgres --format=plain -f "$INPUTS/day2.sql" bench

    local q=(psql -X -A -t -h "$PG_DIR/sock" -p "$port" -U postgres -d bench -c)
    {
        kv PG_VERSION "$("${q[@]}" 'SHOW server_version')"
        echo "PG_ROWS=$("${q[@]}" 'SELECT count(*) FROM files')"
        echo "PG_CONTENT_BYTES=$("${q[@]}" 'SELECT sum(octet_length(content)) FROM files')"
        echo "PG_UPDATED_ROWS=$("${q[@]}" 'SELECT count(*) FROM files WHERE id % 100 = 7')"
        echo "PG_UPDATED_BYTES=$("${q[@]}" 'SELECT sum(octet_length(content)) FROM files WHERE id % 100 = 7')"
        echo "PG_TABLE_BYTES=$("${q[@]}" "SELECT pg_total_relation_size('files')")"
        echo "PG_TEXT_BUDGET=$PG_TEXT_BYTES"
        kv PG_GEN_SUMMARY "$(tail -n1 "$LOGS/gen_copy.log")"
        echo "DAY1_BYTES=$(stat -c %s "$INPUTS/day1.sql")"
        echo "DAY2_BYTES=$(stat -c %s "$INPUTS/day2.sql")"
        echo "DAY1_SHA256=$(sha256sum "$INPUTS/day1.sql" | cut -d' ' -f1)"
        echo "DAY2_SHA256=$(sha256sum "$INPUTS/day2.sql" | cut -d' ' -f1)"
    } >"$INPUTS/pg.env"
    pg_stop
    trap - EXIT
    echo "PG_PREP_SECONDS=$((SECONDS - t0))" >>"$INPUTS/pg.env"
    [[ ${BENCH_KEEP_PG:-0} == 1 ]] || rm -rf "$PG_DIR"
    touch "$INPUTS/pg.done"
    log "dumps ready: $(du -h "$INPUTS/day1.sql" "$INPUTS/day2.sql" | tr '\n' ' ')"
}

stage_prepare() {
    need_packages time restic
    prepare_linux
    prepare_pg
}

# ---------------------------------------------------------------- measurement

# wait_quiet: waits (up to BENCH_QUIET_MAX seconds) until the machine is idle, i.e. over a 2 s window
# all processes together use less than BENCH_QUIET_CORES cores, so a step doesn't share the
# 2 cores with someone else's build or tests. Proceeds anyway after the limit, with a warning.

# measure TOOL INPUT STEP BYTES_IN REPO -- CMD ...
# Runs CMD under /usr/bin/time -v with stdin from $M_STDIN (a file) or from the shell
# pipeline $M_PRODUCER, then appends one line to $RESULTS/TOOL.tsv:
#   tool input step bytes_in seconds max_rss_kb repo_bytes status rep cpu_seconds steal_seconds load1 other_cpu_seconds sys_seconds
# (cpu_seconds: user+system of the command; sys_seconds: the system (kernel) part of it; steal_seconds: CPU time the hypervisor took from
# this VM during the step, from /proc/stat; load1: load average when the step started;
# other_cpu_seconds: CPU time all other processes of the machine used during the step, i.e.
# the machine's busy time from /proc/stat minus cpu_seconds: a sign of a run disturbed by other work).
# Wall time covers the command only; `sync` runs before (with a short pause) and after it, untimed.
measure() {
    local tool=$1 input=$2 step=$3 bytes=$4 repo=$5
    shift 6
    local base=$LOGS/$tool-$input-$step-$REP
    local t0 t1 rc=0 rss secs cpu repo_bytes="" load1 stat0 stat1
    log "$tool $input $step (run $REP): $*"
    sync
    wait_quiet
    load1=$(cut -d' ' -f1 /proc/loadavg)
    stat0=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $9}' /proc/stat)
    t0=$(date +%s.%N)
    set +e
    if [[ -n ${M_PRODUCER:-} ]]; then
        /usr/bin/time -v -o "$base.producer.time" bash -o pipefail -c "$M_PRODUCER" |
            /usr/bin/time -v -o "$base.time" "$@" >"$base.log" 2>&1
        rc=${PIPESTATUS[1]}
    elif [[ -n ${M_STDIN:-} ]]; then
        /usr/bin/time -v -o "$base.time" "$@" <"$M_STDIN" >"$base.log" 2>&1
        rc=$?
    else
        /usr/bin/time -v -o "$base.time" "$@" </dev/null >"$base.log" 2>&1
        rc=$?
    fi
    set -e
    t1=$(date +%s.%N)
    stat1=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $9}' /proc/stat)
    sync
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')
    rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$base.time" 2>/dev/null)
    cpu=$(awk -F': ' '/User time|System time/ {s += $2} END {printf "%.2f", s}' "$base.time" 2>/dev/null)
    local sys
    sys=$(awk -F': ' '/System time/ {printf "%.2f", $2}' "$base.time" 2>/dev/null)
    local hz
    hz=$(getconf CLK_TCK)
    local steal other producer=0
    # the producer of a piped stream is part of the step, not "other work"
    [[ -n ${M_PRODUCER:-} && -f $base.producer.time ]] &&
        producer=$(awk -F': ' '/User time|System time/ {s += $2} END {printf "%.2f", s}' "$base.producer.time")
    steal=$(awk -v a="${stat0#* }" -v b="${stat1#* }" -v hz="$hz" 'BEGIN {printf "%.2f", (b - a) / hz}')
    other=$(awk -v a="${stat0% *}" -v b="${stat1% *}" -v hz="$hz" -v c="${cpu:-0}" -v p="$producer" 'BEGIN {o = (b - a) / hz - c - p; if (o < 0) o = 0; printf "%.2f", o}')
    [[ -n $repo && -d $repo ]] && repo_bytes=$(du -sb "$repo" | cut -f1)
    # disturbed: other processes used more than a quarter of a core on average during the step
    if awk -v o="$other" -v s="$secs" 'BEGIN {exit !(o > 0.25 * s)}'; then
        DISTURBED=1
        log "  (disturbed: other processes used ${other} CPU seconds during this step)"
    fi
    local status=ok
    if ((rc != 0)); then
        status="exit $rc"
        record_error "$tool" "$input $step (run $REP)" "$base.log" "$*"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$tool" "$input" "$step" "$bytes" "$secs" "${rss:-}" \
        "$repo_bytes" "$status" "$REP" "$cpu" "$steal" "$load1" "$other" "$sys" >>"$RESULTS/$tool.tsv"
    log "  -> ${secs}s (cpu ${cpu}s of which sys ${sys}s, others ${other}s, steal ${steal}s), rss ${rss:-?} KiB, repo ${repo_bytes:-?} B, $status"
    return $rc
}

# record_error TOOL WHAT LOGFILE CMDLINE: keeps the exact output of a failed step for the report.
record_error() {
    {
        echo "### $1: $2"
        echo
        echo "Command: \`$4\`"
        echo
        echo '```'
        tail -n 60 "$3"
        echo '```'
        echo
    } >>"$RESULTS/$1.errors.md"
}

# mark_verify TOOL INPUT STATUS: rewrites the status of the last restore line of TOOL.
mark_verify() {
    local f=$RESULTS/$1.tsv
    "$PYTHON" - "$f" "$2" "$3" <<'EOF'
import sys
path, inp, status = sys.argv[1:]
lines = open(path).read().splitlines()
for i in range(len(lines) - 1, -1, -1):
    cols = lines[i].split("\t")
    if cols[1] == inp and cols[2] == "restore":
        if cols[7] == "ok":
            cols[7] = status
        lines[i] = "\t".join(cols)
        break
open(path, "w").write("\n".join(lines) + "\n")
EOF
}

warm_cache() { find "$1" -type f -print0 | xargs -0 cat >/dev/null; }

# find_restored_dir TARGET SRC: where the restored copy of SRC is inside TARGET. restic puts it at
# TARGET/<absolute path of SRC>; other layouts (TARGET/<name>, TARGET/<something>/<name>) are found
# by looking for a directory with SRC's name and the same top-level entries.
find_restored_dir() {
    local t=$1 src=$2 c
    for c in "$t$src" "$t/$(basename "$src")"; do
        if [[ -d $c && -e $c/Makefile ]]; then echo "$c"; return 0; fi
    done
    while IFS= read -r c; do
        if [[ -e $c/Makefile ]]; then echo "$c"; return 0; fi
    done < <(find "$t" -maxdepth 6 -type d -name "$(basename "$src")" 2>/dev/null)
    return 1
}

# find_restored_file TARGET NAME: the restored stream NAME inside TARGET.
find_restored_file() {
    local t=$1 name=$2 c
    for c in "$t/$name" "$t/$(basename "$name")"; do
        [[ -f $c ]] && { echo "$c"; return 0; }
    done
    c=$(find "$t" -maxdepth 6 -type f -name "$(basename "$name")" | head -n1)
    [[ -n $c ]] && { echo "$c"; return 0; }
    return 1
}

# note_layout TOOL INPUT TARGET PATH: remembers where the tool restored the input, relative to the target.
note_layout() {
    local rel=${4#"$3"}
    kv "LAYOUT_${2^^}" "D${rel:-/}" >"$RESULTS/$1.layout.$2"
}

verify_dir() {
    local tool=$1 target=$2 src=$3 got
    if ! got=$(find_restored_dir "$target" "$src"); then
        find "$target" -maxdepth 4 | head -n 20 >"$LOGS/$tool-linux-verify.log"
        record_error "$tool" "linux verify" "$LOGS/$tool-linux-verify.log" "restored tree not found under $target"
        mark_verify "$tool" linux "verify-failed"
        return 1
    fi
    log "  verifying $got against $src"
    note_layout "$tool" linux "$target" "$got"
    if diff -r --no-dereference -q "$src" "$got" >"$LOGS/$tool-linux-verify.log" 2>&1; then
        mark_verify "$tool" linux "ok (diff -r identical)"
    else
        record_error "$tool" "linux verify (diff -r)" "$LOGS/$tool-linux-verify.log" "diff -r --no-dereference -q $src $got"
        mark_verify "$tool" linux "verify-failed"
    fi
}

verify_file() {
    local tool=$1 input=$2 target=$3 name=$4 want=$5 got
    if ! got=$(find_restored_file "$target" "$name"); then
        find "$target" -maxdepth 4 | head -n 20 >"$LOGS/$tool-$input-verify.log"
        record_error "$tool" "$input verify" "$LOGS/$tool-$input-verify.log" "restored $name not found under $target"
        mark_verify "$tool" "$input" "verify-failed"
        return 1
    fi
    log "  verifying $got against $want"
    note_layout "$tool" "$input" "$target" "$got"
    if cmp "$want" "$got" >"$LOGS/$tool-$input-verify.log" 2>&1; then
        mark_verify "$tool" "$input" "ok (cmp identical)"
    else
        record_error "$tool" "$input verify (cmp)" "$LOGS/$tool-$input-verify.log" "cmp $want $got"
        mark_verify "$tool" "$input" "verify-failed"
    fi
}

load_inputs() {
    [[ -f $INPUTS/linux.done && -f $INPUTS/pg.done ]] || die "inputs missing: run '$0 prepare' first"
    # shellcheck disable=SC1091
    source "$INPUTS/linux.env"
    # shellcheck disable=SC1091
    source "$INPUTS/pg.env"
}

# ---------------------------------------------------------------- tools

# Each tool provides: T_init REPO (runs it), and T_backup_dir REPO DIR, T_backup_stdin REPO NAME,
# T_restore REPO TARGET, which set the global array CMD to the command line to measure.
CMD=()
restic_init() { "$RESTIC_BIN" -r "$1" init >"$LOGS/restic-init.log" 2>&1; }
restic_backup_dir() { CMD=("$RESTIC_BIN" -r "$1" backup "$2"); }
restic_backup_stdin() { CMD=("$RESTIC_BIN" -r "$1" backup --stdin --stdin-filename "$2"); }
restic_restore() { CMD=("$RESTIC_BIN" -r "$1" restore latest --target "$2"); }

palisade_has_init() { "$PALISADE_BIN" --help 2>&1 | grep -qE '^\s+init\b'; }
palisade_init() {
    if palisade_has_init; then
        "$PALISADE_BIN" --repo "$1" --password-file "$PASSWORD_FILE" init >"$LOGS/palisade-init.log" 2>&1
    fi
}
palisade_backup_dir() { CMD=("$PALISADE_BIN" --repo "$1" --password-file "$PASSWORD_FILE" backup --dir "$2"); }
palisade_backup_stdin() { CMD=("$PALISADE_BIN" --repo "$1" --password-file "$PASSWORD_FILE" backup --stdin --name "$2"); }
palisade_restore() { CMD=("$PALISADE_BIN" --repo "$1" --password-file "$PASSWORD_FILE" restore latest --target "$2"); }

# init_repo TOOL REPO: fresh repository; a failure is recorded like a failed step.
init_repo() {
    local tool=$1 repo=$2
    rm -rf "$repo"
    if ! "${tool}_init" "$repo"; then
        record_error "$tool" "init $(basename "$repo")" "$LOGS/$tool-init.log" "$tool init $repo"
        return 1
    fi
}

run_tool() {
    local tool=$1
    load_inputs
    # a neutral working directory, so no palisade.toml of the caller's is picked up
    cd "$SCRATCH"
    rm -f "$RESULTS/$tool.tsv" "$RESULTS/$tool.errors.md" "$RESULTS/$tool".layout.*
    rm -rf "$SCRATCH"/restore-"$tool"-* "$RESTIC_CACHE_DIR"
    local stage_t0=$SECONDS
    QUIET_WAITED=0

    local repo target clean=0
    for ((REP = 1; clean < BENCH_REPEAT && REP <= BENCH_MAX_RUNS; REP++)); do
        DISTURBED=0
        # 1. the linux tree
        repo=$REPOS/$tool-linux target=$SCRATCH/restore-$tool-linux
        init_repo "$tool" "$repo" || true
        warm_cache "$LINUX_DIR"
        "${tool}_backup_dir" "$repo" "$LINUX_DIR"
        measure "$tool" linux backup "$LINUX_BYTES" "$repo" -- "${CMD[@]}" || true
        rm -rf "$target"; mkdir -p "$target"
        "${tool}_restore" "$repo" "$target"
        if measure "$tool" linux restore "$LINUX_BYTES" "" -- "${CMD[@]}"; then
            verify_dir "$tool" "$target" "$LINUX_DIR" || true
        fi
        rm -rf "$target"

        # 2. the PostgreSQL dumps, day 1 then day 2 into the same repository, from stdin
        repo=$REPOS/$tool-dump target=$SCRATCH/restore-$tool-dump
        init_repo "$tool" "$repo" || true
        local day
        for day in 1 2; do
            cat "$INPUTS/day$day.sql" >/dev/null
            local bytes_var=DAY${day}_BYTES
            "${tool}_backup_stdin" "$repo" "$DUMP_NAME"
            M_STDIN=$INPUTS/day$day.sql measure "$tool" dump "day$day" "${!bytes_var}" "$repo" -- "${CMD[@]}" || true
        done
        rm -rf "$target"; mkdir -p "$target"
        "${tool}_restore" "$repo" "$target"
        if measure "$tool" dump restore "$DAY2_BYTES" "" -- "${CMD[@]}"; then
            verify_file "$tool" dump "$target" "$DUMP_NAME" "$INPUTS/day2.sql" || true
        fi
        rm -rf "$target"
        if ((DISTURBED)); then
            log "run $REP of $tool was disturbed by other work on the machine; it does not count as a clean run"
        else
            clean=$((clean + 1))
        fi
    done
    REP_DONE=$((REP - 1))
    REP=1

    # 3. palisade only: the 10 GiB stream, for peak memory
    if [[ $tool == palisade && $BENCH_BIG == 1 ]]; then
        repo=$REPOS/$tool-big
        init_repo "$tool" "$repo" || true
        local big_bytes
        big_bytes=$("$PYTHON" -c "import sys; sys.path.insert(0, '$BENCH_SRC'); import gen_big; print(gen_big.parse_size('$BENCH_BIG_SIZE'))")
        "${tool}_backup_stdin" "$repo" "$BIG_NAME"
        M_PRODUCER="$PYTHON $BENCH_SRC/gen_big.py $BENCH_BIG_SIZE" measure "$tool" big backup "$big_bytes" "$repo" -- "${CMD[@]}" || true
        rm -rf "$repo"
    fi
    printf '%s\t%s\t%s\t%s\t%s\n' "$tool" "$((SECONDS - stage_t0))" "$(date -u +%FT%TZ)" "$QUIET_WAITED" "$((REP_DONE))" >"$RESULTS/$tool.stage"
}

stage_restic() {
    need_packages restic time
    kv RESTIC_VERSION "$("$RESTIC_BIN" version)" >"$RESULTS/restic.env"
    run_tool restic
    echo "RESTIC_REPO_VERSION=$("$RESTIC_BIN" -r "$REPOS/restic-dump" cat config 2>/dev/null | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["version"])' || echo '?')" >>"$RESULTS/restic.env"
    # chunk counts of the dump repository (explains the day-2 numbers): blobs of the day-1 snapshot, of both together
    local snaps
    if snaps=$("$RESTIC_BIN" -r "$REPOS/restic-dump" snapshots --json 2>/dev/null | "$PYTHON" -c 'import json,sys; print(" ".join(s["id"] for s in sorted(json.load(sys.stdin), key=lambda s: s["time"])))'); then
        set -- $snaps
        if (($# == 2)); then
            echo "RESTIC_DUMP_BLOBS_DAY1=$("$RESTIC_BIN" -r "$REPOS/restic-dump" stats --json --mode raw-data "$1" | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["total_blob_count"])')" >>"$RESULTS/restic.env"
            echo "RESTIC_DUMP_BLOBS_DAY2=$("$RESTIC_BIN" -r "$REPOS/restic-dump" stats --json --mode raw-data "$2" | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["total_blob_count"])')" >>"$RESULTS/restic.env"
            echo "RESTIC_DUMP_BLOBS_BOTH=$("$RESTIC_BIN" -r "$REPOS/restic-dump" stats --json --mode raw-data | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["total_blob_count"])')" >>"$RESULTS/restic.env"
        fi
    fi
}

stage_palisade() {
    need_packages time
    rm -f "$RESULTS/palisade.tsv" "$RESULTS/palisade.errors.md" "$RESULTS/palisade.env"
    if [[ -z ${PALISADE_BIN:-} ]]; then
        PALISADE_BIN=$HOME/.cache/palisade-target/release/palisade
        log "building palisade: cargo build --release -p palisade"
        if ! (cd "$REPO_ROOT" && CARGO_TARGET_DIR=$HOME/.cache/palisade-target cargo build --release -p palisade) >"$LOGS/palisade-build.log" 2>&1; then
            record_error palisade "build" "$LOGS/palisade-build.log" "cargo build --release -p palisade"
            log "palisade build failed; see $LOGS/palisade-build.log"
            return 0
        fi
    fi
    if ! "$PALISADE_BIN" --help >"$LOGS/palisade-help.log" 2>&1 || ! grep -qE '^\s+backup\b' "$LOGS/palisade-help.log"; then
        record_error palisade "--help does not list backup" "$LOGS/palisade-help.log" "$PALISADE_BIN --help"
        log "palisade --help does not list a backup command"
        return 0
    fi
    kv PALISADE_VERSION "$("$PALISADE_BIN" --version 2>&1 | head -n1)" >"$RESULTS/palisade.env"
    kv PALISADE_BIN "$PALISADE_BIN" >>"$RESULTS/palisade.env"
    kv PALISADE_BUILT "$(date -u -r "$PALISADE_BIN" +%FT%TZ)" >>"$RESULTS/palisade.env"
    kv PALISADE_SHA256 "$(sha256sum "$PALISADE_BIN" | cut -c1-16)" >>"$RESULTS/palisade.env"
    run_tool palisade
}

stage_report() {
    {
        echo "NPROC=$(nproc)"
        echo "MEM_KB=$(awk '/MemTotal/ {print $2}' /proc/meminfo)"
        echo "KERNEL=$(uname -r)"
        kv CPU_MODEL "$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
        kv FS "$(df -T "$BENCH_DIR" | awk 'NR==2 {print $2}')"
        kv OS "$(. /etc/os-release && echo "$PRETTY_NAME")"
    } >"$RESULTS/machine.env"
    mkdir -p "$(dirname "$BENCH_DOC")"
    "$PYTHON" "$BENCH_SRC/report.py" "$BENCH_DIR" "$BENCH_DOC"
    log "wrote $BENCH_DOC"
}

main() {
    local stages=("$@")
    ((${#stages[@]})) || stages=(prepare restic palisade report)
    [[ ${stages[0]} == all ]] && stages=(prepare restic palisade report)
    BENCH_REBUILD_INPUTS=${BENCH_REBUILD_INPUTS:-0}
    local s t0
    for s in "${stages[@]}"; do
        t0=$SECONDS
        case $s in
            prepare) stage_prepare ;;
            restic) stage_restic ;;
            palisade) stage_palisade ;;
            report) stage_report ;;
            *) die "unknown stage '$s' (prepare restic palisade report)" ;;
        esac
        printf '%s\t%s\t%s\n' "$s" "$((SECONDS - t0))" "$(date -u +%FT%TZ)" >>"$RESULTS/stages.tsv"
        log "stage $s took $((SECONDS - t0))s"
    done
}

main "$@"; exit $?
