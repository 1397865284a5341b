"""Produces NDJSON lines to a Kafka topic, one message per line, keyed by
the line's advertiser_id (as producers of an adstore fleet key them), with
kafka-python: the real client the Kafka tests use.

    python3 produce.py BOOTSTRAP TOPIC PARTITIONS FILE [--per-second N]

Creates the topic with PARTITIONS partitions if it does not exist. A line
that is not a JSON object goes out without a key. Prints the number of
messages sent once the broker has acknowledged them all.
"""

import json
import sys
import time

from kafka import KafkaProducer

from topic import create_topic


def main():
    bootstrap, topic, partitions, path = sys.argv[1:5]
    per_second = int(sys.argv[6]) if len(sys.argv) > 6 and sys.argv[5] == "--per-second" else 0
    create_topic(bootstrap, topic, int(partitions))
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    sent = 0
    started = time.monotonic()
    with open(path, "rb") as lines:
        for line in lines:
            line = line.rstrip(b"\n")
            if not line:
                continue
            try:
                key = json.loads(line).get("advertiser_id")
            except (ValueError, AttributeError):
                key = None
            producer.send(topic, value=line, key=key.encode() if isinstance(key, str) else None)
            sent += 1
            if per_second and sent % 100 == 0:
                ahead = sent / per_second - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
    producer.flush()
    producer.close()
    print(sent)


if __name__ == "__main__":
    main()
