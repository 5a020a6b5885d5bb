#!/usr/bin/env bash
# PostgreSQL source decode rate vs pg_recvlogical, measured in the same run.
#
# One workload is written once to a fresh database while a base slot holds its
# WAL; every trial reads a fresh copy of that slot (pg_copy_logical_replication_slot),
# so both readers see exactly the same data:
#   - pg_recvlogical (PostgreSQL's own client) with pgoutput, to /dev/null: the
#     server's decoding plus the transport, nothing else — the baseline;
#   - dbmux's PostgreSQL source (connectors/examples/pg_source_decode.rs): the
#     same plus parsing every pgoutput message into typed values and whole
#     transactions, as capture hands them to the log.
# Trials alternate (baseline, dbmux, baseline, dbmux, …) and the median of each
# is used. Prints the rates and, last, `pg_source_decode_ratio=<dbmux/baseline>`
# (target ≥ 0.9).
#
# Needs `scripts/services up`. Knobs: TXNS (default 2000), ROWS_PER_TXN (100), TRIALS (3).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
[[ -f .dev/services.env ]] && set -a && . .dev/services.env && set +a
: "${DBMUX_TEST_PG_URL:?run scripts/services up first}"
PSQL="${DBMUX_TEST_PSQL:-/usr/lib/postgresql/15/bin/psql}"
RECV="$(dirname "$PSQL")/pg_recvlogical"
TXNS="${TXNS:-2000}"
ROWS_PER_TXN="${ROWS_PER_TXN:-100}"
TRIALS="${TRIALS:-3}"
DB="bench_pgsrc_$$"
URL="${DBMUX_TEST_PG_URL%/*}/$DB"

sql() { "$PSQL" -X -q -At -v ON_ERROR_STOP=1 "$1" -c "$2"; }
cleanup() {
  sql "$DBMUX_TEST_PG_URL" "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
    WHERE database = '$DB' AND NOT active" >/dev/null 2>&1 || true
  sql "$DBMUX_TEST_PG_URL" "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "building the decode helper (release)…" >&2
cargo build --release -q -p connectors --example pg_source_decode
HELPER=target/release/examples/pg_source_decode

sql "$DBMUX_TEST_PG_URL" "CREATE DATABASE $DB"
sql "$URL" "CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL, amount numeric(12,2),
  placed timestamptz(6), note text, flags int4, score float8)"
sql "$URL" "CREATE PUBLICATION bench FOR ALL TABLES"
sql "$URL" "SELECT 1 FROM pg_create_logical_replication_slot('base', 'pgoutput')" >/dev/null

echo "writing $TXNS transactions of $ROWS_PER_TXN inserts…" >&2
sql "$URL" "DO \$\$ BEGIN FOR t IN 0..$((TXNS - 1)) LOOP
  INSERT INTO orders SELECT t * $ROWS_PER_TXN + i, 'customer-' || i, (i * 7.31)::numeric(12,2),
    timestamptz '2024-01-01 00:00:00+00' + i * interval '1 second', repeat('n', 40 + i % 60), i, i / 7.0
  FROM generate_series(1, $ROWS_PER_TXN) i;
  COMMIT; END LOOP; END \$\$"
EVENTS=$((TXNS * ROWS_PER_TXN))
END_LSN="$(sql "$URL" "SELECT pg_current_wal_lsn()")"

median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
now() { date +%s.%N; }
base_times=(); dbmux_times=()
for trial in $(seq 1 "$TRIALS"); do
  sql "$URL" "SELECT 1 FROM pg_copy_logical_replication_slot('base', 'recv_$trial')" >/dev/null
  sql "$URL" "SELECT 1 FROM pg_copy_logical_replication_slot('base', 'dbmux_$trial')" >/dev/null
  t0=$(now)
  "$RECV" -d "$URL" --slot "recv_$trial" --start -E "$END_LSN" -o proto_version=1 \
    -o publication_names=bench -f /dev/null --no-loop
  t1=$(now)
  base_times+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')")
  out="$("$HELPER" "$URL" "dbmux_$trial" bench "$EVENTS")"
  dbmux_times+=("$(sed -E 's/.*seconds=([0-9.]+).*/\1/' <<<"$out")")
  sql "$URL" "SELECT pg_drop_replication_slot('recv_$trial'), pg_drop_replication_slot('dbmux_$trial')" >/dev/null
  echo "trial $trial: pg_recvlogical ${base_times[-1]} s, dbmux source ${dbmux_times[-1]} s" >&2
done
base="$(printf '%s\n' "${base_times[@]}" | median)"
ours="$(printf '%s\n' "${dbmux_times[@]}" | median)"
awk -v n="$EVENTS" -v b="$base" -v o="$ours" 'BEGIN {
  printf "pg_recvlogical_events_per_s=%.0f\ndbmux_pg_source_events_per_s=%.0f\npg_source_decode_ratio=%.3f\n", n / b, n / o, b / o }'
