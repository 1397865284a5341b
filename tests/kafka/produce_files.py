"""Produces each file given as one Kafka message (its bytes as they are,
no key), in order, with kafka-python: how the Kafka tests send Arrow IPC
streams, one stream per message.

    python3 produce_files.py BOOTSTRAP TOPIC PARTITIONS FILE...

Creates the topic with PARTITIONS partitions if it does not exist. Prints
the number of messages sent once the broker has acknowledged them all.
"""

import sys

from kafka import KafkaProducer

from topic import create_topic


def main():
    bootstrap, topic, partitions = sys.argv[1:4]
    create_topic(bootstrap, topic, int(partitions))
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=16 << 20)
    for path in sys.argv[4:]:
        with open(path, "rb") as f:
            producer.send(topic, value=f.read())
    producer.flush()
    producer.close()
    print(len(sys.argv) - 4)


if __name__ == "__main__":
    main()
