"""A Python service next to udo-stream, with confluent-kafka: it publishes
latency samples udo-stream's pipelines consume, and reads udo-stream's
output topics, in either framing a Python service uses:

  single-object: fastavro records behind C3 01 + the CRC-64-AVRO fingerprint
  confluent:     confluent-kafka's AvroSerializer / AvroDeserializer and a
                 Confluent-compatible schema registry

Run by tests/it/interop.rs and tests/it/registry.rs (scripts/interop env gives
the PYTHONPATH with confluent-kafka and fastavro):

  python3 kafka_clients.py produce  --framing F --brokers B --topic T --schemas DIR --count N --start-ms MS [--registry URL]
  python3 kafka_clients.py consume  --framing F --brokers B --topics T1,T2 --schemas DIR [--registry URL]

`produce` prints the event ids it sent (one per line) after "sent N";
`consume` reads each topic from the beginning until it is idle for 5 s and
prints one JSON line of counts per topic; it fails on any record it cannot
decode, naming topic, partition and offset."""

import argparse
import io
import json
import os
import sys
import uuid

from confluent_kafka import Consumer, Producer
from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form


def load_schemas(directory):
    by_name, by_fingerprint = {}, {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(".avsc"):
            with open(os.path.join(directory, name)) as f:
                text = f.read()
            parsed = parse_schema(json.loads(text))
            fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
            by_name[name[:-5]] = (text, parsed)
            by_fingerprint[fp] = parsed
    return by_name, by_fingerprint


def latency_sample(i, start_ms):
    return {
        "event_id": str(uuid.uuid4()),
        "occurred_at": start_ms + i * 100,
        "source": "python-service",
        "component": "search",
        "endpoint": "GET /search",
        "latency_ms": 20.0 + (i % 17),
        "outcome": "OK",
        "status_code": 200,
    }


def registry_conf(url):
    # Without a timeout a request the registry never answers blocks forever;
    # with one it is retried (max.retries) like a refused connection.
    return {"url": url, "timeout": 10, "max.retries": 5}


def produce(args):
    by_name, _ = load_schemas(args.schemas)
    text, parsed = by_name["LatencySample"]
    p = Producer({"bootstrap.servers": args.brokers, "enable.idempotence": True, "acks": "all"})
    if args.framing == "confluent":
        from confluent_kafka.schema_registry import SchemaRegistryClient
        from confluent_kafka.schema_registry.avro import AvroSerializer
        from confluent_kafka.serialization import MessageField, SerializationContext

        serializer = AvroSerializer(SchemaRegistryClient(registry_conf(args.registry)), text)
        ctx = SerializationContext(args.topic, MessageField.VALUE)
        encode = lambda record: serializer(record, ctx)  # noqa: E731
    else:
        fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))

        def encode(record):
            out = io.BytesIO()
            out.write(b"\xc3\x01" + fp)
            schemaless_writer(out, parsed, record)
            return out.getvalue()

    ids = []
    for i in range(args.count):
        record = latency_sample(i, args.start_ms)
        p.produce(args.topic, key=record["component"], value=encode(record))
        ids.append(record["event_id"])
        p.poll(0)
    left = p.flush(30)
    if left:
        sys.exit(f"{left} records not delivered")
    print(f"sent {len(ids)}")
    print("\n".join(ids))


def consume(args):
    _, by_fingerprint = load_schemas(args.schemas)
    if args.framing == "confluent":
        from confluent_kafka.schema_registry import SchemaRegistryClient
        from confluent_kafka.schema_registry.avro import AvroDeserializer
        from confluent_kafka.serialization import MessageField, SerializationContext

        deserializer = AvroDeserializer(SchemaRegistryClient(registry_conf(args.registry)))
        decode = lambda topic, v: deserializer(v, SerializationContext(topic, MessageField.VALUE))  # noqa: E731
    else:

        def decode(topic, v):
            if v[:2] != b"\xc3\x01":
                raise ValueError(f"no single-object header: {v[:10].hex()}")
            schema = by_fingerprint.get(v[2:10])
            if schema is None:
                raise ValueError(f"fingerprint {v[2:10].hex()} matches no schema")
            return schemaless_reader(io.BytesIO(v[10:]), schema)

    for topic in args.topics.split(","):
        c = Consumer(
            {
                "bootstrap.servers": args.brokers,
                "group.id": f"python-reader-{uuid.uuid4()}",
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
            }
        )
        c.subscribe([topic])
        count, idle = 0, 0
        while idle < 10:
            m = c.poll(0.5)
            if m is None:
                idle += 1
                continue
            idle = 0
            if m.error():
                sys.exit(f"{topic}: {m.error()}")
            try:
                value = decode(topic, m.value())
            except Exception as e:  # noqa: BLE001
                sys.exit(f"{topic}[{m.partition()}]@{m.offset()}: cannot decode: {e}")
            if not value.get("event_id"):
                sys.exit(f"{topic}[{m.partition()}]@{m.offset()}: decoded without event_id: {value}")
            count += 1
        c.close()
        print(json.dumps({"topic": topic, "decoded": count}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["produce", "consume"])
    ap.add_argument("--framing", choices=["single-object", "confluent"], required=True)
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--schemas", required=True)
    ap.add_argument("--registry")
    ap.add_argument("--topic")
    ap.add_argument("--topics")
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--start-ms", type=int, default=1767225600000)
    args = ap.parse_args()
    produce(args) if args.command == "produce" else consume(args)


if __name__ == "__main__":
    main()
