#!/usr/bin/env bash
# benches/compare.sh: sniroute against HAProxy, nginx (stream + ssl_preread)
# and sniproxy, same machine, same run, same load generator and backend, plus
# a direct-to-backend run as the ceiling. Prints one Markdown table.
#
# Usage: benches/compare.sh [OUTDIR]
#   OUTDIR   where configs, logs and JSON results go (default: a new /tmp dir)
# Environment:
#   QUICK=1     a smoke run (small transfers, 1 s phases)
#   NO_BUILD=1  use the existing release build
#   ONLY="sniroute haproxy"  run only these targets (names as in TARGETS below)
#   CANDIDATE=/path/to/sniroute  also run this build as `sniroute-candidate`
#               (same config as `sniroute`): A/B a change in the same run
#   PROXY_PHASES=rate,reject  the phases the proxies run (default: all;
#               sniroute rows add `banned`): a focused A/B in less time
#   ROUNDS=3    run every target this many times, round-robin; the table
#               shows the median of each figure (robust to a noisy moment)
#   QUIET_SECS=120  longest wait for a quiet machine before each target
#   NICE=-19    run everything at this nice level (root only): on a machine
#               shared with other jobs, gives the benchmark's processes the CPU
#               (and skips the wait for a quiet machine)
#
# Needs: cargo, and `apt-get install haproxy nginx libnginx-mod-stream sniproxy`
# (a missing peer is skipped with a note). Loopback only. Every process this
# script starts is stopped when it exits, also on failure or Ctrl-C.
set -euo pipefail

if [[ -n "${NICE:-}" && -z "${COMPARE_NICED:-}" ]]; then
    COMPARE_NICED=1 exec nice -n "$NICE" "$0" "$@"
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:-$(mktemp -d /tmp/sniroute-bench.XXXXXX)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

SNIROUTE="$ROOT/target/release/sniroute"
LOADGEN="$ROOT/target/release/examples/loadgen"
BACKEND=127.0.0.1:19000
# One port per target, so a proxy slow to release its port never collides.
declare -A PORT=([direct]=19000 [sniroute]=19001 [sniroute-copy]=19002
                 [haproxy]=19003 [nginx]=19004 [sniproxy]=19005
                 [sniroute-candidate]=19006 [sniroute-deferred]=19007
                 [haproxy-deferred]=19008 [floor]=19010 [sniroute-kernel]=19011
                 [sniroute-http]=19012 [sniproxy-http]=19013)
# The `-deferred` rows run with deferred accept (TCP_DEFER_ACCEPT: sniroute's
# `defer_accept`, HAProxy's `defer-accept`; nginx's stream module and
# sniproxy have none) and only the connection phases, which it changes (not
# `banned`: a silent banned client waits for the deferral like any other).
# `floor` is the cheapest possible reject (`loadgen floor`).
# `sniroute-kernel` runs with kernel bans (`[firewall] backend = "nftables"`)
# in a network namespace of its own (root only; the host's ruleset is never
# touched): 1,000 banned sources flood the port while clients route (the
# `kernel` phase), then the time and memory to load 100,000 saved bans.
# The `-http` rows are plain HTTP routed by Host (sniroute's `[http] listen`,
# sniproxy's `protocol http` listener): the load generator opens with curl's
# request head for http://fixture.example/ instead of the ClientHello
# (`loadgen run --http`), the connection phases only.
TARGETS=(direct sniroute sniroute-copy haproxy nginx sniproxy
         sniroute-deferred haproxy-deferred floor sniroute-kernel
         sniroute-http sniproxy-http)
[[ -n "${CANDIDATE:-}" ]] && TARGETS=(direct sniroute sniroute-candidate "${TARGETS[@]:2}")
[[ -n "${ONLY:-}" ]] && read -r -a TARGETS <<<"$ONLY"

if [[ -n "${QUICK:-}" ]]; then
    SIZES=(--bulk1-bytes $((256 << 20)) --bulk8-bytes $((32 << 20)) --secs 1 --idle 500)
else
    # 1 GiB each way on one connection, 8 x 256 MiB each way, 5 s per rate phase.
    SIZES=(--bulk1-bytes $((1 << 30)) --bulk8-bytes $((256 << 20)) --secs 5 --idle 2000)
fi
PROXY_PHASES=${PROXY_PHASES:-idle,bulk1,bulk8,rate,reject}

# ---------------------------------------------------------------- processes --
PIDS=()
# Stops one process we started (and the children it forked, like nginx's
# worker or sniproxy's binder): TERM, up to 5 s, then KILL.
stop() {
    local pid=$1 kids
    kids=$(pgrep -P "$pid" 2>/dev/null || true)
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for kid in $kids; do kill -KILL "$kid" 2>/dev/null || true; done
}
CHILD=
cleanup() {
    local pid
    [[ -n $CHILD ]] && stop "$CHILD"
    for pid in "${PIDS[@]}"; do stop "$pid"; done
    PIDS=()
}
# Runs a command as a waited-for background job, so a signal to this script
# is handled at once (bash defers traps until a foreground child returns).
fg() {
    local rc=0
    "$@" &
    CHILD=$!
    wait "$CHILD" || rc=$?
    CHILD=
    return "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
forget() { # drops a stopped pid from PIDS
    local keep=() pid
    for pid in "${PIDS[@]}"; do [[ $pid == "$1" ]] || keep+=("$pid"); done
    PIDS=("${keep[@]}")
}

# -------------------------------------------------------------------- setup --
if [[ -z "${NO_BUILD:-}" ]]; then
    (cd "$ROOT" && cargo build --release --bin sniroute --example loadgen)
fi
# Each idle connection costs the proxy two descriptors.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

{
    echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), kernel $(uname -r)"
    echo "sniroute: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown) (release build)"
    command -v haproxy >/dev/null && echo "haproxy: $(haproxy -v | head -1)"
    command -v nginx >/dev/null && echo "nginx: $(nginx -v 2>&1)"
    command -v sniproxy >/dev/null && echo "sniproxy: $(sniproxy -V 2>&1 | head -1)"
    echo "date: $(date -u +%FT%TZ)"
} | tee "$OUT/machine.txt"

"$LOADGEN" backend "$BACKEND" 2>"$OUT/backend.log" &
BACKEND_PID=$!
PIDS+=("$BACKEND_PID")
"$LOADGEN" wait "$BACKEND"

# ------------------------------------------------------------------ configs --
sniroute_config() { # $1 = port, $2 = splice true|false, $3 = defer_accept true|false
    cat <<EOF
# Equivalent of the peers' configs: one worker, one routed name, every other
# name closed. Ban and rate limit on, as shipped; the reject phase's sources
# (127.2/16) are ignored so its rejects are not turned into bans (the peers
# do not ban), and the banned phase's sources (127.1/16) are banned by a strike.
listen = ["127.0.0.1:$1"]
workers = 1
splice = $2
defer_accept = $3
[limits]
shutdown_grace = "1s"
[[route]]
sni = ["fixture.example"]
backend = "$BACKEND"
[ban]
max_retry = 1
ignore = ["127.2.0.0/16"]
state_file = ""
[metrics]
listen = "127.0.0.1:$(($1 + 150))"
[admin]
socket = ""
[log]
access = "off"
EOF
}

haproxy_config() { # $1 = port, $2 = extra bind options
    cat <<EOF
global
    nbthread 1
    # 2 descriptors per connection and 2 per splice pipe (maxpipes = maxconn/4)
    # must fit the 20000 open-files limit.
    maxconn 6000
defaults
    mode tcp
    timeout connect 3s
    timeout client 15m
    timeout server 15m
    option splice-request
    option splice-response
frontend tls
    bind 127.0.0.1:$1$2
    tcp-request inspect-delay 5s
    tcp-request content reject if { req.ssl_hello_type 1 } !{ req.ssl_sni -i fixture.example }
    tcp-request content accept if { req.ssl_hello_type 1 }
    use_backend fixture if { req.ssl_sni -i fixture.example }
backend fixture
    server b $BACKEND
EOF
}

nginx_config() { # $1 = port, $2 = its directory
    cat <<EOF
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 20000;
pid $2/nginx.pid;
error_log $2/error.log crit;
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
events { worker_connections 10000; }
stream {
    # Unknown names go to a closed port: the connect is refused at once and
    # nginx closes the client without a byte (stream has no "return 444").
    map \$ssl_preread_server_name \$upstream {
        fixture.example $BACKEND;
        default 127.0.0.1:1;
    }
    server {
        listen 127.0.0.1:$1;
        ssl_preread on;
        preread_timeout 5s;
        proxy_pass \$upstream;
        proxy_half_close on;
        proxy_connect_timeout 3s;
        proxy_timeout 15m;
    }
}
EOF
}

# sniroute serving plain HTTP on $1 (its TLS listener on $1 + 300, unused).
sniroute_http_config() {
    sniroute_config "$(($1 + 300))" true false |
        sed "s#^backend = \"$BACKEND\"#&\nhttp_backends = [\"$BACKEND\"]#"
    printf '[http]\nlisten = ["127.0.0.1:%s"]\n' "$1"
}

sniproxy_config() { # $1 = port, $2 = listener protocol (tls or http)
    cat <<EOF
user root
pidfile $OUT/sniproxy-${2:-tls}.pid
error_log {
    filename $OUT/sniproxy-error.log
    priority error
}
listener 127.0.0.1:$1 {
    protocol ${2:-tls}
    table fixture
}
table fixture {
    fixture.example $BACKEND
}
EOF
}

# ------------------------------------------------------------------ targets --
# Starts target $1; sets PROXY_PID (the process started) and MEASURE (the pids
# whose CPU and RSS are the proxy's).
start() {
    local name=$1 port=${PORT[$1]}
    case $name in
    sniroute-http)
        sniroute_http_config "$port" >"$OUT/$name.toml"
        SNIROUTE_LOG=warn "$SNIROUTE" run -c "$OUT/$name.toml" 2>"$OUT/$name.log" &
        ;;
    sniroute | sniroute-copy | sniroute-candidate | sniroute-deferred)
        local splice=true defer=false
        [[ $name == sniroute-copy ]] && splice=false
        [[ $name == sniroute-deferred ]] && defer=true
        sniroute_config "$port" "$splice" "$defer" >"$OUT/$name.toml"
        SNIROUTE_LOG=warn "$(binary_for "$name")" run -c "$OUT/$name.toml" 2>"$OUT/$name.log" &
        ;;
    haproxy | haproxy-deferred)
        local opts=""
        [[ $name == haproxy-deferred ]] && opts=" defer-accept"
        haproxy_config "$port" "$opts" >"$OUT/$name.cfg"
        haproxy -db -f "$OUT/$name.cfg" 2>"$OUT/$name.log" &
        ;;
    nginx)
        mkdir -p "$OUT/nginx"
        nginx_config "$port" "$OUT/nginx" >"$OUT/nginx/nginx.conf"
        nginx -p "$OUT/nginx" -e "$OUT/nginx/error.log" -c "$OUT/nginx/nginx.conf" 2>"$OUT/nginx.log" &
        ;;
    floor)
        "$LOADGEN" floor "127.0.0.1:$port" 2>"$OUT/floor.log" &
        ;;
    sniproxy | sniproxy-http)
        local protocol=tls
        [[ $name == sniproxy-http ]] && protocol=http
        sniproxy_config "$port" "$protocol" >"$OUT/$name.conf"
        sniproxy -f -c "$OUT/$name.conf" 2>"$OUT/$name.log" &
        ;;
    esac
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    fg "$LOADGEN" wait "127.0.0.1:$port" || return 1
    MEASURE=("$PROXY_PID")
    if [[ $name == nginx ]]; then
        # The worker does the work; wait for the master to fork it.
        for _ in $(seq 50); do
            MEASURE=($(pgrep -P "$PROXY_PID" || true))
            [[ ${#MEASURE[@]} -gt 0 ]] && break
            sleep 0.1
        done
        MEASURE+=("$PROXY_PID")
    fi
}

# The kernel-bans row, whole, inside `unshare -n`: its own backend, sniroute
# with `backend = "nftables"` (and defer_accept on, as shipped), the rate
# and kernel phases. $1 = result file.
kernel_row() {
    local port=${PORT[sniroute-kernel]} result=$1 conf="$OUT/sniroute-kernel.toml"
    { sniroute_config "$port" true true; printf '[firewall]\nbackend = "nftables"\n'; } >"$conf"
    fg unshare -n bash -c '
        set -e
        ip link set lo up
        "$0" backend "$1" 2>"$5/kernel-backend.log" & backend=$!
        "$0" wait "$1"
        SNIROUTE_LOG=warn "$2" run -c "$3" 2>"$5/sniroute-kernel.log" & proxy=$!
        trap "kill $proxy $backend 2>/dev/null; wait" EXIT
        "$0" wait "127.0.0.1:$4"
        "$0" run --name sniroute-kernel --target "127.0.0.1:$4" --out "$6" \
            --backend-pid "$backend" --pid "$proxy" --secs "$7" --phases rate,kernel
        kill -TERM "$proxy"; wait "$proxy"
    ' "$LOADGEN" "$BACKEND" "$SNIROUTE" "$conf" "$port" "$OUT" "$result" "${SIZES[-3]}"
}

# 100,000 saved bans at start: time until sniroute serves and its RSS then,
# with kernel bans and without (same state file), in a network namespace.
kernel_load() {
    local port=${PORT[sniroute-kernel]} state="$OUT/bans-100k.json" backend
    awk -v now="$(date +%s)" 'BEGIN {
        printf "{\"version\":1,\"bans\":["
        for (i = 0; i < 100000; i++) {
            printf "%s{\"net\":\"10.%d.%d.%d/32\",\"reason\":\"unknown_sni\",\"strikes\":1,\"banned_at\":%d,\"expires_at\":%d}",
                (i ? "," : ""), int(i / 65536), int(i / 256) % 256, i % 256, now, now + 31536000
        }
        print "]}"
    }' >"$state"
    for backend in none nftables; do
        { sniroute_config "$port" true true; printf '[firewall]\nbackend = "%s"\n' "$backend"; } |
            sed "s#^state_file = .*#state_file = \"$OUT/bans-100k-$backend.json\"#" >"$OUT/load-$backend.toml"
        cp "$state" "$OUT/bans-100k-$backend.json"
        fg unshare -n bash -c '
            ip link set lo up
            start=$(date +%s.%N)
            SNIROUTE_LOG=info "$0" run -c "$1" 2>"$3/load-$4.log" & proxy=$!
            "$2" wait "127.0.0.1:$5" --secs 60
            ready=$(date +%s.%N)
            sleep 1
            rss=$(awk "/^VmRSS/ {print \$2}" /proc/$proxy/status)
            elements=$(curl -s "http://127.0.0.1:$5/metrics" | awk "/^sniroute_firewall_elements / {print \$2}")
            echo "| $4 | $(awk "BEGIN {printf \"%.2f\", $ready - $start}") s | $((rss / 1024)) MiB | $elements |"
            kill -TERM $proxy; wait $proxy
        ' "$SNIROUTE" "$OUT/load-$backend.toml" "$LOADGEN" "$OUT" "$backend" "$((port + 150))"
    done
}

binary_for() {
    case $1 in
    sniroute-candidate) echo "$CANDIDATE" ;;
    sniroute*) echo "$SNIROUTE" ;;
    floor) echo "$LOADGEN" ;;
    *-http) echo "${1%-http}" ;;
    *) echo "${1%-deferred}" ;;
    esac
}

RESULTS=()
ROUNDS=${ROUNDS:-1}
for round in $(seq "$ROUNDS"); do
for name in "${TARGETS[@]}"; do
    if [[ $name == sniroute-kernel ]]; then
        if [[ $(id -u) != 0 ]] || ! command -v nft >/dev/null; then
            [[ $round == 1 ]] && echo "== $name: needs root and nft, skipped" | tee -a "$OUT/skipped.txt"
            continue
        fi
        echo "== $name (round $round of $ROUNDS)"
        [[ -z "${NICE:-}" ]] && fg "$LOADGEN" quiet --secs "${QUIET_SECS:-120}"
        result="$OUT/$name.$round.json"
        kernel_row "$result" || echo "== $name: failed (see $OUT/$name.log)"
        [[ -f "$result" ]] && RESULTS+=("$result")
        continue
    fi
    if [[ $name != direct ]] && ! command -v "$(binary_for "$name")" >/dev/null; then
        [[ $round == 1 ]] && echo "== $name: not installed, skipped" | tee -a "$OUT/skipped.txt"
        continue
    fi
    echo "== $name (round $round of $ROUNDS)"
    result="$OUT/$name.$round.json"
    args=(--name "$name" --target "127.0.0.1:${PORT[$name]}" --out "$result"
          --backend-pid "$BACKEND_PID" "${SIZES[@]}")
    case $name in
    direct) args+=(--phases bulk1,bulk8,rate) ;;
    floor) args+=(--phases reject) ;;
    *-deferred) args+=(--phases rate,reject) ;;
    *-http) args+=(--http --phases rate,reject) ;;
    sniroute | sniroute-candidate) args+=(--phases "$PROXY_PHASES,banned") ;;
    *) args+=(--phases "$PROXY_PHASES") ;;
    esac
    # Other jobs on the machine (builds, tests) would skew every figure.
    [[ -z "${NICE:-}" ]] && fg "$LOADGEN" quiet --secs "${QUIET_SECS:-120}"
    if [[ $name != direct ]]; then
        if ! start "$name"; then
            echo "== $name: did not start (see $OUT/$name.log), skipped" | tee -a "$OUT/skipped.txt"
            stop "$PROXY_PID"
            forget "$PROXY_PID"
            continue
        fi
        for pid in "${MEASURE[@]}"; do args+=(--pid "$pid"); done
    fi
    fg "$LOADGEN" run "${args[@]}" || echo "== $name: load generator failed"
    if [[ $name != direct ]]; then
        stop "$PROXY_PID"
        forget "$PROXY_PID"
    fi
    [[ -f "$result" ]] && RESULTS+=("$result")
done
done

echo
"$LOADGEN" report "${RESULTS[@]}" | tee "$OUT/table.md"
if [[ " ${TARGETS[*]} " == *" sniroute-kernel "* && $(id -u) == 0 ]] && command -v nft >/dev/null; then
    {
        echo
        echo "100,000 saved bans at start (until the metrics endpoint answers; RSS 1 s later):"
        echo
        echo "| firewall.backend | start to serving | RSS | kernel elements |"
        echo "|---|---:|---:|---:|"
        kernel_load
    } | tee -a "$OUT/table.md"
fi
echo
echo "results, configs and logs: $OUT"
