#!/usr/bin/env python3
"""End-to-end lag probe for bench/kafka.sh.

    kafka_lag.py MASTER_PORT REPLICA_PORT DB RATE SECONDS

Writes RATE single-row transactions per second to DB.bg on the master (background load), and meanwhile
every 100 ms a probe row to DB.probe; for each probe, polls the replica every millisecond until the row is
there. Prints one JSON line: probes, p50_ms, p99_ms, max_ms, the load actually written per second, and the
number of probes that never arrived (timeouts after 30 s).
"""
import json
import sys
import threading
import time

import pymysql


def connect(port, db):
    return pymysql.connect(host="127.0.0.1", port=port, user="dbmux", password="dbmux-password", database=db,
                           autocommit=True)


def load(port, db, rate, stop, written):
    c = connect(port, db)
    cur = c.cursor()
    period = 1.0 / rate
    next_at = time.monotonic()
    i = 0
    while not stop.is_set():
        cur.execute("INSERT INTO bg (v) VALUES (%s)", ("x" * 64,))
        i += 1
        written[0] = i
        next_at += period
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def main():
    master_port, replica_port, db, rate, seconds = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
                                                    float(sys.argv[4]), float(sys.argv[5]))
    stop = threading.Event()
    written = [0]
    t = threading.Thread(target=load, args=(master_port, db, rate, stop, written), daemon=True)
    started = time.monotonic()
    t.start()
    master = connect(master_port, db)
    replica = connect(replica_port, db)
    mcur, rcur = master.cursor(), replica.cursor()
    lags, lost = [], 0
    probe = 0
    while time.monotonic() - started < seconds:
        probe += 1
        mcur.execute("INSERT INTO probe (id) VALUES (%s)", (probe,))
        t0 = time.monotonic()
        while True:
            rcur.execute("SELECT 1 FROM probe WHERE id = %s", (probe,))
            if rcur.fetchone():
                lags.append((time.monotonic() - t0) * 1000.0)
                break
            if time.monotonic() - t0 > 30:
                lost += 1
                break
            time.sleep(0.001)
        time.sleep(0.1)
    stop.set()
    t.join()
    elapsed = time.monotonic() - started
    lags.sort()
    print(json.dumps({
        "probes": len(lags),
        "lost": lost,
        "p50_ms": round(percentile(lags, 50), 1) if lags else None,
        "p99_ms": round(percentile(lags, 99), 1) if lags else None,
        "max_ms": round(lags[-1], 1) if lags else None,
        "load_txn_per_s": round(written[0] / elapsed, 1),
    }))


if __name__ == "__main__":
    main()
