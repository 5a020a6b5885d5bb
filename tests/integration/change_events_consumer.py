#!/usr/bin/env python3
"""A downstream consumer written with another Kafka client (confluent-kafka, not dbmux's rdkafka):
rebuilds tables from dbmux's per-table change-event topics and prints them as JSON.

    change_events_consumer.py BROKERS TOPIC...

Reads each topic from the beginning with isolation.level=read_committed, keeps one row per record key
(the primary key): `c`/`u`/`r` set the row to `after`, `d` removes it, `t` empties the table, a tombstone
(null value) is skipped. Prints {"TOPIC": [row, ...], ...} with rows as the `after` objects.
"""
import json
import sys

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition


def rebuild(consumer, topic):
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    rows = {}
    while True:
        msg = consumer.poll(30)
        if msg is None:
            raise SystemExit(f"no answer from the brokers reading {topic}")
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                return list(rows.values())
            raise KafkaException(msg.error())
        if msg.value() is None:
            continue  # tombstone: the delete before it already removed the row
        event = json.loads(msg.value())
        op = event["op"]
        if op in ("c", "u", "r"):
            rows[msg.key()] = event["after"]
        elif op == "d":
            rows.pop(msg.key(), None)
        elif op == "t":
            rows.clear()
        else:
            raise SystemExit(f"unknown op {op!r} in {topic}")


def main():
    brokers, topics = sys.argv[1], sys.argv[2:]
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": "dbmux-test-python-consumer",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        print(json.dumps({t: rebuild(consumer, t) for t in topics}))
    finally:
        consumer.close()


if __name__ == "__main__":
    main()
