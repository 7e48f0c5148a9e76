#!/usr/bin/env bash
# Gateway vs nginx benchmark: wrk over HTTPS against `palisade gateway` and nginx proxying one upstream; prints Markdown.
#
# Usage: bench/gateway.sh [OUT.md]
#   Prints the "Gateway against nginx" section (Markdown) on stdout. With OUT.md the section is
#   also put into that file, replacing an earlier section of that name and leaving the rest alone
#   (bench/gateway.sh docs/benchmarks.md updates the benchmark page).
# Environment (all optional):
#   BENCH_DIR        results and logs go to BENCH_DIR/gateway (default $HOME/.cache/palisade-bench)
#   PALISADE_BIN     palisade binary to use; when unset the script runs
#                    `cargo build --release -p palisade` with CARGO_TARGET_DIR=$HOME/.cache/palisade-target
#   NGINX_BIN        nginx binary, for the upstream and the nginx proxy (default nginx)
#   WRK_BIN          wrk binary                    (default wrk)
#   WRK_THREADS      wrk threads of the loaded runs (default 2)
#   WRK_CONNECTIONS  keep-alive connections of the loaded runs (default 32)
#   WRK_DURATION     length of each measured run   (default 15s)
#   WRK_WARMUP       length of the warm-up run per target and path, not counted (default 5s)
#   WRK_LIGHT_CONNECTIONS  connections of the light-load runs (one wrk thread); 0 skips them (default 1)
#   WRK_LIGHT_DURATION     length of each light-load run (default 10s)
#   BENCH_ROUNDS     rounds are repeated until every load/path/target has this many undisturbed runs;
#                    the tables show medians (default 3)
#   BENCH_MAX_ROUNDS give up after this many rounds even if some runs were disturbed (default 2 x BENCH_ROUNDS)
#   BENCH_QUIET_MAX  seconds to wait before each run for other processes to leave the CPUs idle (default 600)
#   BENCH_QUIET_CORES  "idle" means other processes use fewer cores than this (default 0.25)
#   UPSTREAM_WORKERS nginx worker processes of the upstream (default 1)
#   PALISADE_BUILD_NOTE  with PALISADE_BIN: what the binary was built from, for the report
#   BENCH_WAF        1 (default): also the gateway with [gateway.waf] on (the OWASP CRS at paranoia level 1)
#                    and nginx with libnginx-mod-http-modsecurity loading the same ModSecurity
#                    configuration (printed by the palisade-waf example modsecurity-config); 0 skips them
#   BENCH_RULES      1 (default): also the gateway with a rate limit covering the measured paths (set
#                    high enough never to refuse), and the gateway with that limit and input
#                    validation of the paths, beside CSRF (on by default everywhere); 0 skips them
#   BENCH_REDIS      1 (default, with BENCH_RULES): also the same gateway with its rate limit kept in a
#                    Redis server ([gateway.state] redis, Debian's redis-server on a loopback port), whose
#                    CPU counts as the gateway's; 0 skips it
set -euo pipefail

BENCH_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BENCH_SRC/.." && pwd)
BENCH_DIR=${BENCH_DIR:-$HOME/.cache/palisade-bench}
NGINX_BIN=${NGINX_BIN:-nginx}
WRK_BIN=${WRK_BIN:-wrk}
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-32}
WRK_DURATION=${WRK_DURATION:-15s}
WRK_WARMUP=${WRK_WARMUP:-5s}
WRK_LIGHT_CONNECTIONS=${WRK_LIGHT_CONNECTIONS:-1}
WRK_LIGHT_DURATION=${WRK_LIGHT_DURATION:-10s}
BENCH_ROUNDS=${BENCH_ROUNDS:-3}
BENCH_MAX_ROUNDS=${BENCH_MAX_ROUNDS:-$((BENCH_ROUNDS * 2))}
BENCH_QUIET_MAX=${BENCH_QUIET_MAX:-600}
BENCH_QUIET_CORES=${BENCH_QUIET_CORES:-0.25}
UPSTREAM_WORKERS=${UPSTREAM_WORKERS:-1}
PYTHON=${PYTHON:-python3}
OUT_ARG=${1:-}
OUT=$OUT_ARG
PALISADE_BIN_GIVEN=${PALISADE_BIN:-}
BENCH_WAF=${BENCH_WAF:-1}
BENCH_RULES=${BENCH_RULES:-1}
BENCH_REDIS=${BENCH_REDIS:-$BENCH_RULES}

RESULTS=$BENCH_DIR/gateway
LOGS=$RESULTS/logs
HZ=$(getconf CLK_TCK)
PATHS=(html json)
declare -A URL_PATH=([html]=/index.html [json]=/api/items.json)

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
outside_repository "$BENCH_DIR" "$REPO_ROOT"
[[ -z $OUT || $OUT = /* ]] || OUT=$PWD/$OUT

need_packages() {
    local missing=() p
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

free_port() {
    "$PYTHON" - <<'EOF'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
EOF
}

# ---------------------------------------------------------------- servers

TMP=""
UPSTREAM_PID=""
PROXY_PID=""
GATEWAY_PID=""
WAF_PROXY_PID=""
WAF_PROXY_WORKER_PIDS=""
WAF_GATEWAY_PID=""
RULES_GATEWAY_PID=""
REDIS_GATEWAY_PID=""
LIMIT_GATEWAY_PID=""
REDIS_PID=""
# the proxies measured besides the direct baseline
PROXIES=(gateway nginx)

# stop_nginx PIDFILE: asks the nginx master of PIDFILE to stop (TERM) and waits for it.
stop_nginx() {
    local pid
    [[ -f $1 ]] || return 0
    pid=$(cat "$1" 2>/dev/null) || return 0
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    set +e
    local g
    for g in "$GATEWAY_PID" "$WAF_GATEWAY_PID" "$RULES_GATEWAY_PID" "$REDIS_GATEWAY_PID" "$REDIS_PID" "$LIMIT_GATEWAY_PID"; do
        [[ -n $g ]] && kill -0 "$g" 2>/dev/null || continue
        kill -TERM "$g"
        for _ in $(seq 50); do kill -0 "$g" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$g" 2>/dev/null
    done
    if [[ -n $TMP ]]; then
        stop_nginx "$TMP/proxy/nginx.pid"
        stop_nginx "$TMP/proxy-waf/nginx.pid"
        stop_nginx "$TMP/upstream/nginx.pid"
        # keep the servers' logs with the results before the temp dir goes
        for f in upstream/error.log proxy/error.log gateway/gateway.log proxy-waf/error.log gateway-waf/gateway.log gateway-rules/gateway.log gateway-redis/gateway.log gateway-limit/gateway.log redis/redis.log; do
            [[ -f $TMP/$f ]] && cp "$TMP/$f" "$LOGS/${f//\//-}"
        done
        rm -rf "$TMP"
    fi
    exit $rc
}

# wait_port PORT PID NAME LOG: waits until 127.0.0.1:PORT accepts connections, or dies when PID exits.
wait_port() {
    local port=$1 pid=$2 name=$3 logf=$4
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || { cat "$logf" >&2 2>/dev/null; die "$name exited while starting (log above)"; }
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    cat "$logf" >&2 2>/dev/null
    die "$name does not listen on 127.0.0.1:$port after 10 s"
}

write_content() {
    local www=$1
    mkdir -p "$www/api"
    # About 2 KiB of HTML with an inline <style> and <script>, like a server-rendered page.
    cat >"$www/index.html" <<'EOF'
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Orders - Example Shop</title>
<style>
  body { font: 15px/1.5 system-ui, sans-serif; margin: 0; color: #1d232b; background: #fafbfc; }
  header { padding: 12px 24px; background: #233044; color: #fff; }
  main { max-width: 880px; margin: 24px auto; padding: 0 16px; }
  table { width: 100%; border-collapse: collapse; }
  th, td { padding: 6px 8px; border-bottom: 1px solid #dde2e8; text-align: left; }
  .paid { color: #1b7f3b; } .open { color: #a15c00; }
</style>
</head>
<body>
<header><strong>Example Shop</strong> &middot; Orders</header>
<main>
  <h1>Your orders</h1>
  <table id="orders">
    <thead><tr><th>Order</th><th>Date</th><th>Total</th><th>Status</th></tr></thead>
    <tbody>
      <tr><td>#10231</td><td>2026-11-02</td><td>49.90 EUR</td><td class="paid">paid</td></tr>
      <tr><td>#10277</td><td>2026-11-09</td><td>12.00 EUR</td><td class="paid">paid</td></tr>
      <tr><td>#10302</td><td>2026-11-17</td><td>230.45 EUR</td><td class="open">open</td></tr>
      <tr><td>#10345</td><td>2026-11-28</td><td>8.99 EUR</td><td class="open">open</td></tr>
    </tbody>
  </table>
  <p><button id="refresh" type="button">Refresh</button> <span id="when"></span></p>
</main>
<script>
  (function () {
    var when = document.getElementById("when");
    function stamp() { when.textContent = "updated " + new Date().toLocaleTimeString(); }
    document.getElementById("refresh").addEventListener("click", function () {
      fetch("/api/items.json", { credentials: "same-origin" })
        .then(function (r) { return r.json(); })
        .then(function (data) { stamp(); console.log(data.items.length + " items"); });
    });
    stamp();
  })();
</script>
</body>
</html>
EOF
    # A small API answer.
    cat >"$www/api/items.json" <<'EOF'
{"items":[{"id":10231,"date":"2026-11-02","total":"49.90","currency":"EUR","status":"paid"},{"id":10277,"date":"2026-11-09","total":"12.00","currency":"EUR","status":"paid"},{"id":10302,"date":"2026-11-17","total":"230.45","currency":"EUR","status":"open"},{"id":10345,"date":"2026-11-28","total":"8.99","currency":"EUR","status":"open"}],"next":null,"count":4}
EOF
}

# nginx_common DIR: the settings both nginx instances share (their own temp paths, no access log).
nginx_common() {
    local d=$1
    cat <<EOF
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 4096; }
EOF
}

nginx_http_common() {
    local d=$1
    cat <<EOF
    access_log off;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    keepalive_timeout 120s;
    keepalive_requests 100000000;
EOF
}

start_upstream() {
    local d=$TMP/upstream
    mkdir -p "$d/tmp"
    write_content "$TMP/www"
    {
        echo "worker_processes $UPSTREAM_WORKERS;"
        nginx_common "$d"
        echo "http {"
        nginx_http_common "$d"
        cat <<EOF
    types { text/html html; application/json json; }
    default_type application/octet-stream;
    sendfile on;
    tcp_nodelay on;
    open_file_cache max=64 inactive=60s;
    server {
        listen 127.0.0.1:$UPSTREAM_PORT backlog=4096;
        root $TMP/www;
        location = /index.html {
            # a page sets a session cookie; the gateway adds Secure, HttpOnly and SameSite to it
            add_header Set-Cookie "sid=5f2b7c91e04a4d3e; Path=/" always;
        }
        location /api/ { }
    }
}
EOF
    } >"$d/nginx.conf"
    "$NGINX_BIN" -p "$d" -e "$d/error.log" -c "$d/nginx.conf" -g 'daemon off;' >"$d/stdout.log" 2>&1 &
    UPSTREAM_PID=$!
    wait_port "$UPSTREAM_PORT" "$UPSTREAM_PID" "upstream nginx" "$d/error.log"
}

# start_proxy [waf]: the nginx TLS proxy; with waf, a second one that runs ModSecurity with the
# gateway's own configuration.
start_proxy() {
    local waf=${1:-} d=$TMP/proxy port=$PROXY_PORT modsec=""
    if [[ -n $waf ]]; then
        d=$TMP/proxy-waf port=$WAF_PROXY_PORT
        modsec="modsecurity on; modsecurity_rules_file $TMP/modsecurity.conf;"
    fi
    mkdir -p "$d/tmp"
    {
        [[ -z $waf ]] || echo "load_module /usr/lib/nginx/modules/ngx_http_modsecurity_module.so;"
        echo "worker_processes auto;"
        nginx_common "$d"
        echo "http {"
        nginx_http_common "$d"
        cat <<EOF
    upstream app {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive 64;
        keepalive_requests 100000000;
    }
    server {
        listen 127.0.0.1:$port ssl http2 backlog=4096;
        $modsec
        ssl_certificate $TMP/tls/cert.pem;
        ssl_certificate_key $TMP/tls/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305;
        ssl_session_cache shared:TLS:1m;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
        }
    }
}
EOF
    } >"$d/nginx.conf"
    "$NGINX_BIN" -p "$d" -e "$d/error.log" -c "$d/nginx.conf" -g 'daemon off;' >"$d/stdout.log" 2>&1 &
    if [[ -n $waf ]]; then
        WAF_PROXY_PID=$!
        wait_port "$port" "$WAF_PROXY_PID" "nginx proxy with ModSecurity" "$d/error.log"
    else
        PROXY_PID=$!
        wait_port "$port" "$PROXY_PID" "nginx proxy" "$d/error.log"
    fi
}

start_gateway() {
    local d=$TMP/gateway
    mkdir -p "$d"
    # run from an empty folder with no config in the environment: all defaults, nothing from a palisade.toml
    (cd "$d" && exec env -u PALISADE_CONFIG -u PALISADE_LOG "$PALISADE_BIN" gateway \
        --upstream "http://127.0.0.1:$UPSTREAM_PORT" --listen "127.0.0.1:$GATEWAY_PORT" \
        --cert "$TMP/tls/cert.pem" --key "$TMP/tls/key.pem") >"$d/gateway.log" 2>&1 &
    GATEWAY_PID=$!
    wait_port "$GATEWAY_PORT" "$GATEWAY_PID" "palisade gateway" "$d/gateway.log"
}

# start_waf_gateway: the gateway with every default and [gateway.waf] enabled (paranoia level 1),
# from a palisade.toml of its own.
start_waf_gateway() {
    local d=$TMP/gateway-waf
    mkdir -p "$d"
    cat >"$d/palisade.toml" <<EOF
[gateway]
listen = "127.0.0.1:$WAF_GATEWAY_PORT"
upstreams = ["http://127.0.0.1:$UPSTREAM_PORT"]
[[gateway.tls.certificates]]
cert = "$TMP/tls/cert.pem"
key = "$TMP/tls/key.pem"
[gateway.waf]
enabled = true
EOF
    (cd "$d" && exec env -u PALISADE_CONFIG -u PALISADE_LOG "$PALISADE_BIN" --config "$d/palisade.toml" gateway) \
        >"$d/gateway.log" 2>&1 &
    WAF_GATEWAY_PID=$!
    wait_port "$WAF_GATEWAY_PORT" "$WAF_GATEWAY_PID" "palisade gateway with the WAF" "$d/gateway.log"
}

# start_redis: Debian's redis-server on a loopback port, nothing written to disk.
start_redis() {
    local d=$TMP/redis
    mkdir -p "$d"
    command -v redis-server >/dev/null || need_packages redis-server
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --dir "$d" \
        --logfile "$d/redis.log" >/dev/null 2>&1 &
    REDIS_PID=$!
    wait_port "$REDIS_PORT" "$REDIS_PID" "redis-server" "$d/redis.log"
}

# start_rules_gateway [limit|redis]: the gateway with every default (CSRF included) plus input
# validation of the measured paths (method, query parameters, unknown parameters refused) and a
# per-address rate limit over them, from a palisade.toml of its own; with "limit", the rate
# limit alone; with "redis", the rate limit's buckets live in the Redis server of start_redis.
start_rules_gateway() {
    local kind=${1:-rules} port=$RULES_GATEWAY_PORT
    [[ $kind == redis ]] && port=$REDIS_GATEWAY_PORT
    [[ $kind == limit ]] && port=$LIMIT_GATEWAY_PORT
    local d=$TMP/gateway-$kind
    mkdir -p "$d"
    cat >"$d/palisade.toml" <<EOF
[gateway]
listen = "127.0.0.1:$port"
upstreams = ["http://127.0.0.1:$UPSTREAM_PORT"]
[[gateway.tls.certificates]]
cert = "$TMP/tls/cert.pem"
key = "$TMP/tls/key.pem"
[[gateway.rate_limit.rules]]
name = "site"
rate = "1000000/s"
EOF
    [[ $kind == limit ]] || cat >>"$d/palisade.toml" <<EOF
[[gateway.routes]]
prefix = "/"
[gateway.routes.validate]
methods = ["GET", "HEAD"]
unknown_params = "reject"
max_params = 10
params.page = { type = "integer", min = 1 }
EOF
    [[ $kind == redis ]] && printf '[gateway.state]\nredis = "redis://127.0.0.1:%s/0"\n' "$REDIS_PORT" >>"$d/palisade.toml"
    (cd "$d" && exec env -u PALISADE_CONFIG -u PALISADE_LOG PALISADE_STATE_DIR="$d/state" \
        "$PALISADE_BIN" --config "$d/palisade.toml" gateway) >"$d/gateway.log" 2>&1 &
    local pid=$!
    case $kind in
        redis) REDIS_GATEWAY_PID=$pid ;;
        limit) LIMIT_GATEWAY_PID=$pid ;;
        *) RULES_GATEWAY_PID=$pid ;;
    esac
    wait_port "$port" "$pid" "palisade gateway with validation and rate limits ($kind)" "$d/gateway.log"
}

# modsecurity_config: the ModSecurity configuration the gateway generates (paranoia level 1), for nginx.
modsecurity_config() {
    log "writing the gateway's ModSecurity configuration (cargo run --release -p palisade-waf --example modsecurity-config)"
    (cd "$REPO_ROOT" && cargo run -q --release -p palisade-waf --example modsecurity-config -- 1) \
        >"$TMP/modsecurity.conf" 2>"$LOGS/modsecurity-config.log" ||
        { cat "$LOGS/modsecurity-config.log" >&2; die "could not print the ModSecurity configuration"; }
}

# children PID: the pids of PID's child processes (the nginx workers of a master).
children() { ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' ' | tr '\n' ' '; }

# url TARGET PATH: what wrk and curl request. The name localhost (the certificate's name, and a
# valid SNI: wrk sends the URL's host as SNI) must resolve to 127.0.0.1, where the servers listen.
url() {
    local target=$1 path=${URL_PATH[$2]}
    case $target in
        direct) echo "http://localhost:$UPSTREAM_PORT$path" ;;
        gateway) echo "https://localhost:$GATEWAY_PORT$path" ;;
        nginx) echo "https://localhost:$PROXY_PORT$path" ;;
        gateway-waf) echo "https://localhost:$WAF_GATEWAY_PORT$path" ;;
        nginx-waf) echo "https://localhost:$WAF_PROXY_PORT$path" ;;
        gateway-rules) echo "https://localhost:$RULES_GATEWAY_PORT$path" ;;
        gateway-redis) echo "https://localhost:$REDIS_GATEWAY_PORT$path" ;;
        gateway-limit) echo "https://localhost:$LIMIT_GATEWAY_PORT$path" ;;
    esac
}

# ---------------------------------------------------------------- measurement

QUIET_WAITED=0

# wait_quiet (bench/lib.sh) runs before each measurement: the servers are idle between runs, so
# a run does not share the 2 cores with someone else's build or tests.

# ticks PID...: user + system clock ticks used so far by the given processes (all their threads).
ticks() {
    local p s=0 f
    for p in "$@"; do
        f=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        f=${f##*) }
        # after "pid (comm) ": state is field 1, utime field 12, stime field 13
        s=$((s + $(awk '{print $12 + $13}' <<<"$f")))
    done
    echo "$s"
}

# parse_wrk LOG: rps p50_ms p90_ms p99_ms max_ms requests seconds non2xx socket_errors(c/r/w/t)
parse_wrk() {
    awk '
        function ms(v) {
            if (v ~ /us$/) { sub(/us$/, "", v); return v / 1000 }
            if (v ~ /ms$/) { sub(/ms$/, "", v); return v + 0 }
            if (v ~ /m$/) { sub(/m$/, "", v); return v * 60000 }
            if (v ~ /s$/) { sub(/s$/, "", v); return v * 1000 }
            return v + 0
        }
        /^ +Latency +[0-9]/ { max = ms($4) }
        /^ +50% / { p50 = ms($2) }
        /^ +90% / { p90 = ms($2) }
        /^ +99% / { p99 = ms($2) }
        / requests in / { req = $1; secs = $4; sub(/s,$/, "", secs) }
        /Socket errors:/ { gsub(/,/, ""); sock = $4 "/" $6 "/" $8 "/" $10 }
        /Non-2xx or 3xx responses:/ { non2xx = $5 }
        /^Requests\/sec:/ { rps = $2 }
        END {
            if (rps == "") { print "-\t-\t-\t-\t-\t-\t-\t-\t-"; exit }
            printf "%s\t%.3f\t%.3f\t%.3f\t%.3f\t%s\t%s\t%d\t%s\n", rps, p50, p90, p99, max, req, secs, non2xx + 0, (sock == "" ? "0/0/0/0" : sock)
        }' "$1"
}

DISTURBED=0
declare -A UNDISTURBED=()

# run_wrk ROUND LOAD PATH TARGET: one measured wrk run; appends a line to runs.tsv:
#   round load path target rps p50_ms p90_ms p99_ms max_ms requests seconds non2xx socket_errors
#   proxy_cpu_s upstream_cpu_s wrk_cpu_s other_cpu_s steal_s load1 status
# proxy_cpu_s: CPU seconds of the proxy measured (gateway, or nginx master + workers; empty for
# direct); other_cpu_s: the machine's busy time minus everything this benchmark runs.
run_wrk() {
    local round=$1 load=$2 path=$3 target=$4
    local base=$LOGS/$load-$path-$target-$round u t c d
    u=$(url "$target" "$path")
    if [[ $load == loaded ]]; then t=$WRK_THREADS c=$WRK_CONNECTIONS d=$WRK_DURATION
    else t=1 c=$WRK_LIGHT_CONNECTIONS d=$WRK_LIGHT_DURATION; fi
    local cmd=("$WRK_BIN" -t"$t" -c"$c" -d"$d" --latency "$u")
    log "round $round $load $path $target: ${cmd[*]}"
    wait_quiet
    local load1 stat0 stat1 up0 up1 px0 px1 all0 all1 rc=0
    local proxy_pids="" all_pids="$UPSTREAM_PID $UPSTREAM_WORKER_PIDS $PROXY_PID $PROXY_WORKER_PIDS $GATEWAY_PID"
    all_pids+=" $WAF_GATEWAY_PID $WAF_PROXY_PID $WAF_PROXY_WORKER_PIDS $RULES_GATEWAY_PID $REDIS_GATEWAY_PID $REDIS_PID $LIMIT_GATEWAY_PID"
    case $target in
        gateway) proxy_pids=$GATEWAY_PID ;;
        nginx) proxy_pids="$PROXY_PID $PROXY_WORKER_PIDS" ;;
        gateway-waf) proxy_pids=$WAF_GATEWAY_PID ;;
        nginx-waf) proxy_pids="$WAF_PROXY_PID $WAF_PROXY_WORKER_PIDS" ;;
        gateway-rules) proxy_pids=$RULES_GATEWAY_PID ;;
        gateway-redis) proxy_pids="$REDIS_GATEWAY_PID $REDIS_PID" ;;
        gateway-limit) proxy_pids=$LIMIT_GATEWAY_PID ;;
    esac
    load1=$(cut -d' ' -f1 /proc/loadavg)
    stat0=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $9}' /proc/stat)
    up0=$(ticks $UPSTREAM_PID $UPSTREAM_WORKER_PIDS)
    px0=$(ticks $proxy_pids)
    all0=$(ticks $all_pids)
    /usr/bin/time -f '%U %S' -o "$base.time" "${cmd[@]}" >"$base.log" 2>&1 || rc=$?
    stat1=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $9}' /proc/stat)
    up1=$(ticks $UPSTREAM_PID $UPSTREAM_WORKER_PIDS)
    px1=$(ticks $proxy_pids)
    all1=$(ticks $all_pids)
    local wrk_cpu proxy_cpu up_cpu other steal parsed status problems=()
    wrk_cpu=$(awk 'NF == 2 && $1 ~ /^[0-9.]+$/ {printf "%.2f", $1 + $2}' "$base.time")
    proxy_cpu=""
    [[ -n $proxy_pids ]] && proxy_cpu=$(awk -v a="$px0" -v b="$px1" -v hz="$HZ" 'BEGIN {printf "%.2f", (b - a) / hz}')
    up_cpu=$(awk -v a="$up0" -v b="$up1" -v hz="$HZ" 'BEGIN {printf "%.2f", (b - a) / hz}')
    steal=$(awk -v a="${stat0#* }" -v b="${stat1#* }" -v hz="$HZ" 'BEGIN {printf "%.2f", (b - a) / hz}')
    other=$(awk -v a="${stat0% *}" -v b="${stat1% *}" -v x="$all0" -v y="$all1" -v hz="$HZ" -v w="${wrk_cpu:-0}" \
        'BEGIN {o = (b - a - (y - x)) / hz - w; if (o < 0) o = 0; printf "%.2f", o}')
    parsed=$(parse_wrk "$base.log")
    local non2xx sock
    non2xx=$(cut -f8 <<<"$parsed")
    sock=$(cut -f9 <<<"$parsed")
    ((rc == 0)) || problems+=("wrk exit $rc")
    [[ $parsed != -* ]] || problems+=("no wrk result")
    [[ $non2xx == 0 || $non2xx == - ]] || problems+=("$non2xx non-2xx/3xx responses")
    [[ $sock == 0/0/0/0 || $sock == - ]] || problems+=("socket errors connect/read/write/timeout $sock")
    kill -0 "$GATEWAY_PID" 2>/dev/null || problems+=("gateway exited")
    kill -0 "$PROXY_PID" 2>/dev/null || problems+=("nginx proxy exited")
    [[ -z $WAF_GATEWAY_PID ]] || kill -0 "$WAF_GATEWAY_PID" 2>/dev/null || problems+=("WAF gateway exited")
    [[ -z $WAF_PROXY_PID ]] || kill -0 "$WAF_PROXY_PID" 2>/dev/null || problems+=("nginx WAF proxy exited")
    [[ -z $RULES_GATEWAY_PID ]] || kill -0 "$RULES_GATEWAY_PID" 2>/dev/null || problems+=("rules gateway exited")
    [[ -z $REDIS_GATEWAY_PID ]] || kill -0 "$REDIS_GATEWAY_PID" 2>/dev/null || problems+=("Redis gateway exited")
    [[ -z $REDIS_PID ]] || kill -0 "$REDIS_PID" 2>/dev/null || problems+=("redis-server exited")
    [[ -z $LIMIT_GATEWAY_PID ]] || kill -0 "$LIMIT_GATEWAY_PID" 2>/dev/null || problems+=("limit gateway exited")
    status=ok
    if ((${#problems[@]})); then status=$(IFS=';'; echo "${problems[*]}"); status=${status//;/; }; fi
    local secs
    secs=$(cut -f7 <<<"$parsed"); [[ $secs == - ]] && secs=${d%s}
    if awk -v o="$other" -v s="$secs" 'BEGIN {exit !(o > 0.25 * s)}'; then
        DISTURBED=1
        log "  (disturbed: other processes used ${other} CPU seconds during this run)"
    else
        UNDISTURBED[$load-$path-$target]=$((${UNDISTURBED[$load-$path-$target]:-0} + 1))
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$load" "$path" "$target" "$parsed" \
        "$proxy_cpu" "$up_cpu" "$wrk_cpu" "$other" "$steal" "$load1" "$status" >>"$RESULTS/runs.tsv"
    log "  -> $(cut -f1 <<<"$parsed") req/s, p99 $(cut -f4 <<<"$parsed") ms, proxy cpu ${proxy_cpu:--}s, upstream cpu ${up_cpu}s, wrk cpu ${wrk_cpu}s, others ${other}s, $status"
}

warm_up() {
    local path target
    for path in "${PATHS[@]}"; do
        for target in direct "${PROXIES[@]}"; do
            log "warm-up $path $target: $WRK_BIN -t$WRK_THREADS -c$WRK_CONNECTIONS -d$WRK_WARMUP $(url "$target" "$path")"
            "$WRK_BIN" -t"$WRK_THREADS" -c"$WRK_CONNECTIONS" -d"$WRK_WARMUP" --latency "$(url "$target" "$path")" \
                >"$LOGS/warmup-$path-$target.log" 2>&1 || log "  wrk exit $? (see $LOGS/warmup-$path-$target.log)"
            grep -E 'Requests/sec|Non-2xx|Socket errors' "$LOGS/warmup-$path-$target.log" | sed 's/^/    /' >&2 || true
        done
    done
}

# check_responses: one request per target and path with curl; keeps the headers, checks the
# status and whether the body arrived unchanged, and notes the negotiated TLS version and cipher.
check_responses() {
    local path target u hdr body status same hbytes bbytes
    printf 'target\tpath\tstatus\tbody_identical\theader_bytes\tbody_bytes\theader_count\n' >"$RESULTS/checks.tsv"
    for path in "${PATHS[@]}"; do
        for target in direct "${PROXIES[@]}"; do
            u=$(url "$target" "$path")
            hdr=$RESULTS/headers-$path-$target.txt
            body=$LOGS/body-$path-$target
            status=$(curl -sk --http1.1 -o "$body" -D "$hdr" -w '%{http_code}' "$u" || echo "curl-failed")
            if cmp -s "$body" "$TMP/www${URL_PATH[$path]}"; then same=yes; else same=no; fi
            hbytes=$(stat -c %s "$hdr" 2>/dev/null || echo 0)
            bbytes=$(stat -c %s "$body" 2>/dev/null || echo 0)
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$path" "$status" "$same" "$hbytes" "$bbytes" \
                "$(grep -c ':' "$hdr" 2>/dev/null || echo 0)" >>"$RESULTS/checks.tsv"
            log "check $target $path: HTTP $status, body identical: $same, headers $hbytes B"
        done
    done
    local name port
    for name in gateway nginx; do
        [[ $name == gateway ]] && port=$GATEWAY_PORT || port=$PROXY_PORT
        openssl s_client -connect "127.0.0.1:$port" -servername localhost </dev/null >"$LOGS/s_client-$name.log" 2>&1 || true
        kv "TLS_${name^^}" "$(awk '/^New, / {sub(/^New, /, ""); print; exit}' "$LOGS/s_client-$name.log")" >>"$RESULTS/machine.env"
    done
}

# peak_rss: VmHWM (peak resident set) of the gateway and of the nginx proxy's workers and master.
peak_rss() {
    local p sum=0 v
    {
        kv GATEWAY_HWM_KB "$(awk '/^VmHWM/ {print $2}' "/proc/$GATEWAY_PID/status")"
        kv GATEWAY_THREADS "$(awk '/^Threads/ {print $2}' "/proc/$GATEWAY_PID/status")"
        for p in $PROXY_WORKER_PIDS; do
            v=$(awk '/^VmHWM/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
            sum=$((sum + ${v:-0}))
        done
        kv NGINX_WORKERS_HWM_KB "$sum"
        kv NGINX_MASTER_HWM_KB "$(awk '/^VmHWM/ {print $2}' "/proc/$PROXY_PID/status")"
        kv NGINX_WORKERS "$(wc -w <<<"$PROXY_WORKER_PIDS")"
    } >>"$RESULTS/machine.env"
}

# ---------------------------------------------------------------- main

build_palisade() {
    if [[ -n ${PALISADE_BIN:-} ]]; then
        PALISADE_SOURCE=${PALISADE_BUILD_NOTE:-"given with PALISADE_BIN"}
    else
        local dirty
        dirty=$(git -C "$REPO_ROOT" status --porcelain -- crates Cargo.toml Cargo.lock 2>/dev/null | wc -l)
        PALISADE_SOURCE="built from the working tree at commit $(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
        ((dirty == 0)) || PALISADE_SOURCE+=" with uncommitted changes ($dirty paths changed under crates/ and Cargo.*)"
        export CARGO_TARGET_DIR=$HOME/.cache/palisade-target
        PALISADE_BIN=$CARGO_TARGET_DIR/release/palisade
        log "building palisade: cargo build --release -p palisade (log: $LOGS/palisade-build.log)"
        (cd "$REPO_ROOT" && cargo build --release -p palisade) >"$LOGS/palisade-build.log" 2>&1 ||
            { tail -n 30 "$LOGS/palisade-build.log" >&2; die "palisade build failed"; }
    fi
    [[ -x $PALISADE_BIN ]] || die "no palisade binary at $PALISADE_BIN"
}

machine_env() {
    {
        echo "NPROC=$(nproc)"
        echo "MEM_KB=$(awk '/MemTotal/ {print $2}' /proc/meminfo)"
        echo "KERNEL=$(uname -r)"
        kv CPU_MODEL "$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
        kv OS "$(. /etc/os-release && echo "$PRETTY_NAME")"
        kv NGINX_VERSION "$("$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //')"
        kv NGINX_PACKAGE "$(dpkg-query -W -f='${Package} ${Version}' "$(dpkg -S "$(command -v "$NGINX_BIN")" 2>/dev/null | cut -d: -f1 | head -n1)" 2>/dev/null || echo unknown)"
        kv WRK_VERSION "$("$WRK_BIN" -v 2>&1 | head -n1 | awk '{print $1, $2}')"
        kv OPENSSL_VERSION "$(openssl version)"
        kv PALISADE_VERSION "$("$PALISADE_BIN" --version 2>&1 | head -n1)"
        kv PALISADE_BUILT "$(date -u -r "$PALISADE_BIN" +%FT%TZ)"
        kv PALISADE_SHA256 "$(sha256sum "$PALISADE_BIN" | cut -c1-16)"
        kv GIT_COMMIT "$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
        kv PALISADE_SOURCE "$PALISADE_SOURCE"
        kv WRK_THREADS "$WRK_THREADS"
        kv WRK_CONNECTIONS "$WRK_CONNECTIONS"
        kv WRK_DURATION "$WRK_DURATION"
        kv WRK_WARMUP "$WRK_WARMUP"
        kv WRK_LIGHT_CONNECTIONS "$WRK_LIGHT_CONNECTIONS"
        kv WRK_LIGHT_DURATION "$WRK_LIGHT_DURATION"
        kv UPSTREAM_WORKERS "$UPSTREAM_WORKERS"
        kv BENCH_ROUNDS "$BENCH_ROUNDS"
        kv BENCH_MAX_ROUNDS "$BENCH_MAX_ROUNDS"
        kv PALISADE_BIN_GIVEN "$PALISADE_BIN_GIVEN"
        kv OUT_ARG "$OUT_ARG"
        kv HTML_BYTES "$(stat -c %s "$TMP/www/index.html")"
        kv JSON_BYTES "$(stat -c %s "$TMP/www/api/items.json")"
        kv STARTED "$(date -u +%FT%TZ)"
    } >"$RESULTS/machine.env"
}

main() {
    need_packages time curl openssl
    getent ahostsv4 localhost | grep -q '^127\.0\.0\.1 ' || die "localhost does not resolve to 127.0.0.1 (see /etc/hosts)"
    command -v "$WRK_BIN" >/dev/null || need_packages wrk
    command -v "$NGINX_BIN" >/dev/null || need_packages nginx-light
    rm -rf "$RESULTS"
    mkdir -p "$LOGS"
    build_palisade
    local t0=$SECONDS

    TMP=$(mktemp -d /tmp/palisade-gateway-bench.XXXXXX)
    # nginx's workers run as nobody: they must be able to read the content
    chmod 755 "$TMP"
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    UPSTREAM_PORT=$(free_port)
    PROXY_PORT=$(free_port)
    GATEWAY_PORT=$(free_port)
    WAF_PROXY_PORT=$(free_port)
    WAF_GATEWAY_PORT=$(free_port)
    RULES_GATEWAY_PORT=$(free_port)
    REDIS_GATEWAY_PORT=$(free_port)
    REDIS_PORT=$(free_port)
    LIMIT_GATEWAY_PORT=$(free_port)
    while [[ $PROXY_PORT == "$UPSTREAM_PORT" ]]; do PROXY_PORT=$(free_port); done
    while [[ $GATEWAY_PORT == "$UPSTREAM_PORT" || $GATEWAY_PORT == "$PROXY_PORT" ]]; do GATEWAY_PORT=$(free_port); done

    (cd "$TMP" && "$PALISADE_BIN" gateway cert self-signed --host localhost --out tls) >"$LOGS/cert.log" 2>&1 ||
        { cat "$LOGS/cert.log" >&2; die "palisade gateway cert self-signed failed"; }
    start_upstream
    UPSTREAM_WORKER_PIDS=$(children "$UPSTREAM_PID")
    log "upstream nginx on 127.0.0.1:$UPSTREAM_PORT (master $UPSTREAM_PID, workers $UPSTREAM_WORKER_PIDS)"
    start_proxy
    PROXY_WORKER_PIDS=$(children "$PROXY_PID")
    log "nginx proxy on https://127.0.0.1:$PROXY_PORT (master $PROXY_PID, workers $PROXY_WORKER_PIDS)"
    start_gateway
    log "palisade gateway on https://127.0.0.1:$GATEWAY_PORT (pid $GATEWAY_PID)"
    if ((BENCH_WAF)); then
        [[ -f /usr/lib/nginx/modules/ngx_http_modsecurity_module.so ]] || need_packages libnginx-mod-http-modsecurity
        [[ -d /usr/share/modsecurity-crs/rules ]] || need_packages modsecurity-crs
        modsecurity_config
        start_proxy waf
        WAF_PROXY_WORKER_PIDS=$(children "$WAF_PROXY_PID")
        log "nginx proxy with ModSecurity on https://127.0.0.1:$WAF_PROXY_PORT (master $WAF_PROXY_PID, workers $WAF_PROXY_WORKER_PIDS)"
        start_waf_gateway
        log "palisade gateway with the WAF on https://127.0.0.1:$WAF_GATEWAY_PORT (pid $WAF_GATEWAY_PID)"
        PROXIES+=(gateway-waf nginx-waf)
        cp "$TMP/proxy-waf/nginx.conf" "$RESULTS/nginx-proxy-waf.conf"
    fi
    if ((BENCH_RULES)); then
        start_rules_gateway limit
        log "palisade gateway with a rate limit on https://127.0.0.1:$LIMIT_GATEWAY_PORT (pid $LIMIT_GATEWAY_PID)"
        start_rules_gateway
        log "palisade gateway with validation and rate limits on https://127.0.0.1:$RULES_GATEWAY_PORT (pid $RULES_GATEWAY_PID)"
        PROXIES+=(gateway-limit gateway-rules)
        cp "$TMP/gateway-limit/palisade.toml" "$RESULTS/gateway-limit.toml"
        cp "$TMP/gateway-rules/palisade.toml" "$RESULTS/gateway-rules.toml"
    fi
    if ((BENCH_REDIS)); then
        start_redis
        start_rules_gateway redis
        log "palisade gateway with its rate limit in Redis on https://127.0.0.1:$REDIS_GATEWAY_PORT (pid $REDIS_GATEWAY_PID, redis-server $REDIS_PID)"
        PROXIES+=(gateway-redis)
        cp "$TMP/gateway-redis/palisade.toml" "$RESULTS/gateway-redis.toml"
    fi
    machine_env
    kv GATEWAY_CMD "palisade gateway --upstream http://127.0.0.1:UPSTREAM --listen 127.0.0.1:PORT --cert cert.pem --key key.pem" >>"$RESULTS/machine.env"
    cp "$TMP/proxy/nginx.conf" "$RESULTS/nginx-proxy.conf"
    cp "$TMP/upstream/nginx.conf" "$RESULTS/nginx-upstream.conf"

    check_responses
    warm_up

    local round=0 fewest=0 load path target order loads=(loaded) k
    ((WRK_LIGHT_CONNECTIONS > 0)) && loads+=(light)
    : >"$RESULTS/rounds.tsv"
    while ((fewest < BENCH_ROUNDS && round < BENCH_MAX_ROUNDS)); do
        round=$((round + 1))
        DISTURBED=0
        # alternate which proxy goes first; the direct baseline runs first in every round
        order=(direct)
        for k in "${PROXIES[@]}"; do
            if ((round % 2)); then order+=("$k"); else order=(direct "$k" "${order[@]:1}"); fi
        done
        for load in "${loads[@]}"; do
            for path in "${PATHS[@]}"; do
                for target in "${order[@]}"; do
                    run_wrk "$round" "$load" "$path" "$target"
                done
            done
        done
        printf '%s\t%s\n' "$round" "$DISTURBED" >>"$RESULTS/rounds.tsv"
        # the fewest undisturbed runs any load/path/target has so far
        fewest=$BENCH_ROUNDS
        for load in "${loads[@]}"; do for path in "${PATHS[@]}"; do for target in direct "${PROXIES[@]}"; do
            k=${UNDISTURBED[$load-$path-$target]:-0}
            ((k < fewest)) && fewest=$k
        done; done; done
        log "round $round done ($( ((DISTURBED)) && echo "with disturbed runs" || echo undisturbed)); each load/path/target has at least $fewest of $BENCH_ROUNDS undisturbed runs"
    done
    peak_rss
    {
        kv FINISHED "$(date -u +%FT%TZ)"
        kv BENCH_SECONDS "$((SECONDS - t0))"
        kv QUIET_WAITED "$QUIET_WAITED"
    } >>"$RESULTS/machine.env"
    # the servers' logs, for the report (the cleanup copies them again at exit)
    for f in upstream/error.log proxy/error.log gateway/gateway.log; do
        cp "$TMP/$f" "$LOGS/${f//\//-}" 2>/dev/null || true
    done
    "$PYTHON" "$BENCH_SRC/gateway_report.py" "$RESULTS" ${OUT:+"$OUT"}
    [[ -z $OUT ]] || log "wrote the section into $OUT"
}

main
