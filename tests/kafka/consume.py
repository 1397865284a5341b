"""Prints, as a JSON list, the values (parsed as JSON) of every message of
a topic from its beginning, with kafka-python: how the Kafka tests read a
dead-letter topic.

    python3 consume.py BOOTSTRAP TOPIC EXPECTED

Stops once EXPECTED messages are read, or after 30 s without a new one.
"""

import json
import sys

from kafka import KafkaConsumer


def main():
    bootstrap, topic, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                             consumer_timeout_ms=30_000)
    values = []
    for message in consumer:
        values.append({"key": message.key.decode() if message.key else None, "value": json.loads(message.value)})
        if len(values) >= expected:
            break
    consumer.close()
    print(json.dumps(values))


if __name__ == "__main__":
    main()
