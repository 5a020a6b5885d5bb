#!/usr/bin/env bash
# Kafka benchmark, two measurements in one run against `scripts/services up` (needs a release build:
# cargo build --release --bin dbmux):
#
# 1. Capture → Kafka throughput vs kcat. A backlog of ROWS single-row-event inserts (in transactions of
#    ROWS_PER_TXN rows) is written to the master while `dbmux capture` is stopped; then capture drains it
#    into Kafka with change events on (one message per row on the per-table topic, plus log records and
#    BEGIN/END markers). Baseline: `kcat -P` producing the same number of messages of the same average size
#    (idempotent, acks=all, same compression), in the same run. Prints messages/s for both and the ratio.
# 2. End-to-end lag (master commit → visible on the MariaDB replica), p50/p99, through Kafka and through
#    the embedded log, at the same background write rate (LAG_RATE transactions/s for LAG_SECONDS),
#    measured by bench/kafka_lag.py.
#
# Knobs: ROWS (100000), ROWS_PER_TXN (100), LAG_RATE (200), LAG_SECONDS (30), DBMUX (binary path).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ENV_FILE="$ROOT/.dev/services.env"
[ -f "$ENV_FILE" ] || { echo "run scripts/services up first" >&2; exit 2; }
# shellcheck disable=SC1090
set -a; . "$ENV_FILE"; set +a

ROWS=${ROWS:-100000}
ROWS_PER_TXN=${ROWS_PER_TXN:-100}
LAG_RATE=${LAG_RATE:-200}
LAG_SECONDS=${LAG_SECONDS:-30}
DBMUX=${DBMUX:-$ROOT/target/release/dbmux}
# Debian's python3 has PyMySQL (python3-pymysql, installed by scripts/services).
PY=${PY:-/usr/bin/python3}
BROKERS=${DBMUX_TEST_KAFKA_BROKERS:-127.0.0.1:19092}
[ -x "$DBMUX" ] || { echo "no $DBMUX: cargo build --release --bin dbmux" >&2; exit 2; }
command -v kcat >/dev/null || { echo "kcat missing: apt-get install kcat" >&2; exit 2; }

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

RUN_ID="$(date +%s)-$$"
DB="bench_kafka_${RUN_ID//-/_}"
MASTER=(mariadb --no-defaults -h127.0.0.1 -P13306 -udbmux -pdbmux-password)
REPLICA=(mariadb --no-defaults -h127.0.0.1 -P13307 -udbmux -pdbmux-password)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }

status() { curl -s "http://$1/status" 2>/dev/null || true; }
last_seq() { status "$1" | python3 -c 'import json,sys
try: print(json.load(sys.stdin)["log"]["last_seq"] or 0)
except Exception: print(0)'; }
wait_seq() { # admin seq timeout
  local deadline=$(( $(date +%s) + $3 ))
  until (( $(last_seq "$1") >= $2 )); do
    (( $(date +%s) < deadline )) || { echo "timed out waiting for seq $2 at $1" >&2; exit 1; }
    sleep 0.05
  done
}

config() { # file kind admin db [events]
  local file=$1 kind=$2 admin=$3 db=$4 events=${5:-true}
  cat >"$file" <<EOF
name = "$db-$kind-$events"
data_dir = "$WORK/$kind-$events-data"
[admin]
listen = "$admin"
[source.mysql]
url = "mysql://dbmux:dbmux-password@127.0.0.1:13306/$db"
server_id = $(( 30000 + RANDOM % 20000 ))
include = ["$db"]
[[replica]]
name = "mariadb"
[replica.mysql]
url = "mysql://dbmux:dbmux-password@127.0.0.1:13307/"
EOF
  if [[ $kind == kafka ]]; then
    cat >>"$file" <<EOF
[log]
kind = "kafka"
[log.kafka]
brokers = "$BROKERS"
topic = "bench.$RUN_ID.$db.$events.log"
[log.kafka.change_events]
enabled = $events
topic = "bench.$RUN_ID.{db}.{table}"
transaction_topic = "bench.$RUN_ID.transaction"
EOF
  else
    printf '[log]\nfsync = "always"\n' >>"$file"
  fi
}

echo "== database $DB"
"${MASTER[@]}" -e "CREATE DATABASE $DB; CREATE TABLE $DB.t (id INT PRIMARY KEY, v VARCHAR(100) NOT NULL)"

# ---------------------------------------------------------------------------------------------- throughput
# Three captures of the same backlog: Kafka with change events (the measured one), Kafka without them, and
# the embedded log (fsync = always), to see where the time goes. Each is started once first, so that its
# start position is pinned before the backlog is written.
VARIANTS=("kafka true" "kafka false" "embedded false")
declare -A ADMINS SECONDS_OF
for v in "${VARIANTS[@]}"; do
  read -r kind events <<<"$v"
  admin="127.0.0.1:$(free_port)"; ADMINS[$v]=$admin
  config "$WORK/capture-$kind-$events.toml" "$kind" "$admin" "$DB" "$events"
  "$DBMUX" capture --config "$WORK/capture-$kind-$events.toml" >"$WORK/capture-$kind-$events.log" 2>&1 &
  PID=$!; PIDS+=("$PID")
  until status "$admin" | grep -q '"connected":true'; do sleep 0.1; done
  kill -TERM "$PID"; wait "$PID" || true
done

echo "== writing a backlog of $ROWS rows ($ROWS_PER_TXN per transaction)"
"$PY" - "$DB" "$ROWS" "$ROWS_PER_TXN" <<'PY'
import sys, pymysql
db, rows, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = pymysql.connect(host="127.0.0.1", port=13306, user="dbmux", password="dbmux-password", database=db)
cur = c.cursor()
for start in range(0, rows, per):
    values = ",".join("(%d,'%s')" % (i, "v%08d-abcdefghijklmnopqrstuvwxyz" % i) for i in range(start, min(rows, start + per)))
    cur.execute("INSERT INTO t VALUES " + values)
    c.commit()
PY

for v in "${VARIANTS[@]}"; do
  read -r kind events <<<"$v"
  echo "== dbmux capture drains it ($kind log, change events: $events)"
  t0=$(now)
  "$DBMUX" capture --config "$WORK/capture-$kind-$events.toml" >>"$WORK/capture-$kind-$events.log" 2>&1 &
  PID=$!; PIDS+=("$PID")
  wait_seq "${ADMINS[$v]}" "$ROWS" 600
  t1=$(now)
  kill -TERM "$PID"; wait "$PID" || true
  SECONDS_OF[$v]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
done
t0=0; t1=${SECONDS_OF[kafka true]}
TOPIC="bench.$RUN_ID.$DB.t"
# Messages produced: the per-table topic, the log topic records, the markers.
count() { kcat -b "$BROKERS" -C -t "$1" -e -q -X isolation.level=read_committed -f '%S\n' | awk '{n++; b+=$1} END {printf "%d %d", n, b}'; }
read -r TABLE_MSGS TABLE_BYTES <<<"$(count "$TOPIC")"
read -r LOG_MSGS _ <<<"$(count "bench.$RUN_ID.$DB.true.log")"
read -r MARKER_MSGS _ <<<"$(count "bench.$RUN_ID.transaction")"
MSGS=$(( TABLE_MSGS + LOG_MSGS + MARKER_MSGS ))
AVG=$(( TABLE_BYTES / TABLE_MSGS ))
DBMUX_RATE=$(awk -v n="$MSGS" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }')
ROW_RATE=$(awk -v n="$ROWS" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }')
rows_per_s() { awk -v n="$ROWS" -v s="${SECONDS_OF[$1]}" 'BEGIN { printf "%.0f", n / s }'; }

echo "== kcat -P: $MSGS messages of $AVG bytes"
python3 -c "import sys
line = 'x' * $AVG
sys.stdout.write((line + '\n') * $MSGS)" >"$WORK/messages.txt"
KTOPIC="bench.$RUN_ID.kcat"
java -Xmx256m -cp "$DBMUX_TEST_KAFKA_LIBS/*" -Dlog4j2.configurationFile="$ROOT/.dev/kafka/tools-log4j2.properties" \
  org.apache.kafka.tools.TopicCommand --bootstrap-server "$BROKERS" --create --topic "$KTOPIC" \
  --partitions 1 --replication-factor 1 >/dev/null
k0=$(now)
kcat -b "$BROKERS" -P -t "$KTOPIC" -X enable.idempotence=true -X acks=all -X compression.type=lz4 \
  -X linger.ms=2 -l "$WORK/messages.txt"
k1=$(now)
KCAT_RATE=$(awk -v n="$MSGS" -v a="$k0" -v b="$k1" 'BEGIN { printf "%.0f", n / (b - a) }')

# ---------------------------------------------------------------------------------------------- lag
lag_run() { # kind: a database of its own, dbmux run, the probe
  local kind=$1 admin pid db="${DB}_$1"
  "${MASTER[@]}" -e "CREATE DATABASE $db; CREATE TABLE $db.bg (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(100) NOT NULL);
    CREATE TABLE $db.probe (id INT PRIMARY KEY)"
  admin="127.0.0.1:$(free_port)"
  config "$WORK/lag-$kind.toml" "$kind" "$admin" "$db"
  "$DBMUX" run --config "$WORK/lag-$kind.toml" >"$WORK/lag-$kind.log" 2>&1 &
  pid=$!; PIDS+=("$pid")
  until status "$admin" | grep -q '"connected":true'; do sleep 0.1; done
  # Warm up: the replica tables exist before the probe starts.
  "${MASTER[@]}" -e "INSERT INTO $db.probe VALUES (0); INSERT INTO $db.bg (v) VALUES ('w')"
  until "${REPLICA[@]}" -N -e "SELECT COUNT(*) FROM $db.probe" 2>/dev/null | grep -q '^1$'; do sleep 0.1; done
  "${MASTER[@]}" -e "DELETE FROM $db.probe"
  "$PY" "$ROOT/bench/kafka_lag.py" 13306 13307 "$db" "$LAG_RATE" "$LAG_SECONDS"
  kill -TERM "$pid"; wait "$pid" || true
  "${MASTER[@]}" -e "DROP DATABASE $db"
  "${REPLICA[@]}" -e "DROP DATABASE IF EXISTS $db"
}
echo "== end-to-end lag at $LAG_RATE transactions/s for ${LAG_SECONDS}s: embedded log"
LAG_EMBEDDED=$(lag_run embedded)
echo "== the same through Kafka"
LAG_KAFKA=$(lag_run kafka)

"${MASTER[@]}" -e "DROP DATABASE $DB"
"${REPLICA[@]}" -e "DROP DATABASE IF EXISTS $DB"

echo
echo "capture -> Kafka: $ROWS row events in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')s = $ROW_RATE rows/s, $MSGS messages ($TABLE_MSGS change events of $AVG bytes avg, $LOG_MSGS log records, $MARKER_MSGS markers) = $DBMUX_RATE messages/s"
echo "kcat -P (same count and size, idempotent, acks=all, lz4): $KCAT_RATE messages/s"
echo "same backlog, capture only: Kafka without change events $(rows_per_s "kafka false") rows/s, embedded log (fsync=always) $(rows_per_s "embedded false") rows/s"
echo "ratio dbmux/kcat: $(awk -v a="$DBMUX_RATE" -v b="$KCAT_RATE" 'BEGIN { printf "%.2f", a / b }')"
echo "lag embedded: $LAG_EMBEDDED"
echo "lag kafka:    $LAG_KAFKA"
