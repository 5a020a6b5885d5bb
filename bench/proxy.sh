#!/usr/bin/env bash
# Proxy benchmark: sysbench oltp_point_select and oltp_read_only against the
# scripts/services MariaDB replica, three ways in the same run:
#   direct   sysbench → MariaDB replica
#   haproxy  sysbench → HAProxy (TCP mode) → MariaDB replica
#   dbmux    sysbench → dbmux proxy (reads routed to the replica) → MariaDB replica
# and prints QPS, p95 latency, the ratios dbmux/direct and dbmux/haproxy, and the CPU-seconds per query
# of dbmux and of HAProxy (utime+stime from /proc/PID/stat over each run).
#
# Usage: bench/proxy.sh            (needs `scripts/services up` and a release build:
#                                   cargo build --release --bin dbmux)
# Knobs: THREADS (8), SECONDS_PER_RUN (15), TABLE_SIZE (10000), DBMUX (binary path), BENCH_DB (database),
#        RESULT_JSON (write the figures there as JSON; bench/run's proxy scenario uses it)
#
# The replica gets a copy of the master's table (mariadb-dump), and the run ends with a check that the
# table read through dbmux equals the master's; a mismatch exits 1.
#
# oltp_read_only runs with --skip_trx=on: inside BEGIN…COMMIT dbmux sends
# everything to the master by design, which would compare different servers.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ENV_FILE="$ROOT/.dev/services.env"
[ -f "$ENV_FILE" ] || { echo "run scripts/services up first" >&2; exit 2; }
# shellcheck disable=SC1090
set -a; . "$ENV_FILE"; set +a

THREADS=${THREADS:-8}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-15}
TABLE_SIZE=${TABLE_SIZE:-10000}
DBMUX=${DBMUX:-$ROOT/target/release/dbmux}
[ -x "$DBMUX" ] || { echo "no $DBMUX: cargo build --release --bin dbmux" >&2; exit 2; }
command -v sysbench >/dev/null || { echo "sysbench missing: apt-get install sysbench" >&2; exit 2; }
command -v haproxy >/dev/null || { echo "haproxy missing: apt-get install haproxy" >&2; exit 2; }

port_of() { echo "$1" | sed -E 's#.*:([0-9]+)/.*#\1#'; }
MASTER_PORT=$(port_of "$DBMUX_TEST_MYSQL_URL")
REPLICA_PORT=$(port_of "$DBMUX_TEST_MYSQL_REPLICA_URL")
USER=dbmux
PASS=dbmux-password
DB=${BENCH_DB:-sbtest_proxy_bench}

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

sb() { # sysbench TEST PORT USER PASS ACTION [extra...]
  local test=$1 port=$2 user=$3 pass=$4 action=$5; shift 5
  sysbench "$test" --db-driver=mysql --mysql-host=127.0.0.1 --mysql-port="$port" \
    --mysql-user="$user" --mysql-password="$pass" --mysql-db="$DB" --mysql-ssl=off \
    --tables=1 --table-size="$TABLE_SIZE" "$@" "$action"
}

echo "== preparing $DB (table size $TABLE_SIZE) on the master, copied to the replica"
for port in "$MASTER_PORT" "$REPLICA_PORT"; do
  mariadb --no-defaults -h127.0.0.1 -P"$port" -u"$USER" -p"$PASS" \
    -e "DROP DATABASE IF EXISTS $DB; CREATE DATABASE $DB"
done
sb oltp_point_select "$MASTER_PORT" "$USER" "$PASS" prepare >/dev/null
MYSQL_PWD=$PASS mariadb-dump --no-defaults -h127.0.0.1 -P"$MASTER_PORT" -u"$USER" --single-transaction "$DB" |
  MYSQL_PWD=$PASS mariadb --no-defaults -h127.0.0.1 -P"$REPLICA_PORT" -u"$USER" "$DB"

echo "== starting HAProxy (tcp mode) → replica"
HA_PORT=$(free_port)
cat > "$WORK/haproxy.cfg" <<EOF
global
  maxconn 4096
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
listen mysql
  bind 127.0.0.1:$HA_PORT
  server replica 127.0.0.1:$REPLICA_PORT
EOF
haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 &
HA_PID=$!
PIDS+=("$HA_PID")

echo "== starting dbmux proxy"
HASHES=$("$DBMUX" hash-password bench-password)
cat > "$WORK/dbmux.toml" <<EOF
[proxy]
listen = "127.0.0.1:0"
master = "mysql://$USER:$PASS@127.0.0.1:$MASTER_PORT/"
[[proxy.replicas]]
name = "replica"
url = "mysql://$USER:$PASS@127.0.0.1:$REPLICA_PORT/"
[[proxy.users]]
name = "bench"
$HASHES
EOF
mkfifo "$WORK/dbmux.out"
DBMUX_LOG=warn "$DBMUX" proxy --config "$WORK/dbmux.toml" >"$WORK/dbmux.out" 2>"$WORK/dbmux.log" &
DBMUX_PID=$!
PIDS+=("$DBMUX_PID")
read -r LINE <"$WORK/dbmux.out"
DBMUX_PORT=${LINE##*:}
for _ in $(seq 50); do
  (exec 3<>/dev/tcp/127.0.0.1/"$HA_PORT") 2>/dev/null && break
  sleep 0.1
done

CLK_TCK=$(getconf CLK_TCK)
# utime+stime of a process in clock ticks (fields 14 and 15 of /proc/PID/stat; the names here have no spaces).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

declare -A QPS P95 CPUQ
run() { # name test port user pass [extra]
  local name=$1 test=$2 port=$3 user=$4 pass=$5; shift 5
  local script=$test out pid="" before=0 after queries
  [ "$test" = point_select_text ] && script=oltp_point_select
  case $name in haproxy) pid=$HA_PID ;; dbmux) pid=$DBMUX_PID ;; esac
  [ -n "$pid" ] && before=$(cpu_ticks "$pid")
  out=$(sb "$script" "$port" "$user" "$pass" run --threads="$THREADS" --time="$SECONDS_PER_RUN" \
    --percentile=95 --report-interval=0 "$@")
  QPS[$name/$test]=$(echo "$out" | awk '/queries:/ {gsub(/[()]/,"",$3); print $3; exit}')
  P95[$name/$test]=$(echo "$out" | awk '/95th percentile:/ {print $3; exit}')
  queries=$(echo "$out" | awk '/queries:/ {print $2; exit}')
  CPUQ[$name/$test]=null
  if [ -n "$pid" ]; then
    after=$(cpu_ticks "$pid")
    CPUQ[$name/$test]=$(awk -v a="$after" -v b="$before" -v t="$CLK_TCK" -v q="$queries" \
      'BEGIN { printf "%.9f", (a - b) / t / q }')
  fi
  printf '%-8s %-18s %10s qps  p95 %6s ms  CPU/query %s s\n' "$name" "$test" "${QPS[$name/$test]}" \
    "${P95[$name/$test]}" "${CPUQ[$name/$test]}"
}

echo "== running: $THREADS threads, ${SECONDS_PER_RUN}s per run"
# point_select_text: the same point selects as text queries (no server-side
# prepared statements), so every statement passes the proxy's SQL router.
TESTS=(oltp_point_select point_select_text oltp_read_only)
for name in "${TESTS[@]}"; do
  extra=()
  case $name in
    oltp_read_only) extra=(--skip_trx=on) ;;
    point_select_text) extra=(--db-ps-mode=disable) ;;
  esac
  run direct "$name" "$REPLICA_PORT" "$USER" "$PASS" "${extra[@]}"
  run haproxy "$name" "$HA_PORT" "$USER" "$PASS" "${extra[@]}"
  run dbmux "$name" "$DBMUX_PORT" bench bench-password "${extra[@]}"
done

echo
echo "== ratios (QPS): dbmux / direct, dbmux / haproxy   (targets for point selects: ≥ 0.85, ≥ 0.95)"
for test in "${TESTS[@]}"; do
  awk -v t="$test" -v d="${QPS[direct/$test]}" -v h="${QPS[haproxy/$test]}" -v x="${QPS[dbmux/$test]}" \
    'BEGIN { printf "%-18s %.3f  %.3f\n", t, x / d, x / h }'
done

echo "== CPU per query: dbmux / haproxy   (target ≤ 1.0)"
for test in "${TESTS[@]}"; do
  awk -v t="$test" -v h="${CPUQ[haproxy/$test]}" -v x="${CPUQ[dbmux/$test]}" \
    'BEGIN { printf "%-18s %.3f  (dbmux %.2f µs, haproxy %.2f µs)\n", t, x / h, x * 1e6, h * 1e6 }'
done

echo "== check: the table read through dbmux equals the master's"
SUMQ="SELECT COUNT(*), SUM(CRC32(CONCAT_WS('|', id, k, c, pad))) FROM $DB.sbtest1"
ON_MASTER=$(MYSQL_PWD=$PASS mariadb --no-defaults -h127.0.0.1 -P"$MASTER_PORT" -u"$USER" -N -e "$SUMQ" | tr "\t" " ")
ON_REPLICA=$(MYSQL_PWD=$PASS mariadb --no-defaults -h127.0.0.1 -P"$REPLICA_PORT" -u"$USER" -N -e "$SUMQ" | tr "\t" " ")
VIA_DBMUX=$(MYSQL_PWD=bench-password mariadb --no-defaults -h127.0.0.1 -P"$DBMUX_PORT" -ubench -N -e "$SUMQ" | tr "\t" " ")
CHECK=ok
if [ "$ON_MASTER" != "$ON_REPLICA" ] || [ "$ON_MASTER" != "$VIA_DBMUX" ]; then
  CHECK=failed
  echo "CHECK FAILED: master [$ON_MASTER] replica [$ON_REPLICA] through dbmux [$VIA_DBMUX]" >&2
else
  echo "ok: $ON_MASTER (rows, checksum) on the master, the replica and through dbmux"
fi

if [ -n "${RESULT_JSON:-}" ]; then
  {
    printf '{"threads": %s, "seconds_per_run": %s, "table_size": %s, "check": "%s", "check_rows": "%s", "runs": [' \
      "$THREADS" "$SECONDS_PER_RUN" "$TABLE_SIZE" "$CHECK" "$ON_MASTER"
    sep=""
    for test in "${TESTS[@]}"; do
      for name in direct haproxy dbmux; do
        printf '%s{"test": "%s", "via": "%s", "qps": %s, "p95_ms": %s, "cpu_s_per_query": %s}' "$sep" "$test" \
          "$name" "${QPS[$name/$test]}" "${P95[$name/$test]}" "${CPUQ[$name/$test]}"
        sep=", "
      done
    done
    printf ']}\n'
  } >"$RESULT_JSON"
fi

for port in "$MASTER_PORT" "$REPLICA_PORT"; do
  mariadb --no-defaults -h127.0.0.1 -P"$port" -u"$USER" -p"$PASS" -e "DROP DATABASE IF EXISTS $DB"
done
[ "$CHECK" = ok ] || exit 1
