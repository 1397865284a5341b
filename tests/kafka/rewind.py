"""Sets a consumer group's committed offset of every partition of a topic
to OFFSET (kafka-python), as an operator resetting a group would: the
group must have no members at the time.

    python3 rewind.py BOOTSTRAP GROUP TOPIC OFFSET
"""

import sys

from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata


def main():
    bootstrap, group, topic, offset = sys.argv[1:5]
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    partitions = consumer.partitions_for_topic(topic) or set()
    offsets = {TopicPartition(topic, p): OffsetAndMetadata(int(offset), "", -1) for p in partitions}
    consumer.commit(offsets)
    committed = {tp.partition: consumer.committed(tp) for tp in offsets}
    consumer.close()
    print(committed)


if __name__ == "__main__":
    main()
