from confluent_kafka import Consumer, Producer


def test_broker_round_trip(kafka_bootstrap: str, unique: str) -> None:
    topic = f"smoke-{unique}"
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topic, key=b"m", value=b"hello")
    assert producer.flush(10) == 0
    consumer = Consumer(
        {"bootstrap.servers": kafka_bootstrap, "group.id": f"g-{unique}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    try:
        msg = None
        for _ in range(50):
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                break
        assert msg is not None and msg.value() == b"hello"
    finally:
        consumer.close()
