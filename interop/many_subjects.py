"""A service with many endpoints, as a new user's would be: confluent-kafka
publishing JSON latency samples (no schema, the key is the component) for
COMPONENTS x ENDPOINTS subjects, one sample per endpoint per minute of
event time for MINUTES minutes, then one sample per component a minute
later (so every window of those minutes closes on event time).
Components listed in --slow answer ten times slower.

  python3 many_subjects.py --brokers B --topic T --components 4 --endpoints 5000 --minutes 3 --start-ms MS
      [--slow c0] [--names a,b] [--stop a=2]

Prints "sent N"."""

import argparse
import json
import random
import sys
import uuid

from confluent_kafka import Producer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--components", type=int, default=4)
    ap.add_argument("--endpoints", type=int, default=5000)
    ap.add_argument("--minutes", type=int, default=3)
    ap.add_argument("--start-ms", type=int, default=1767225600000)
    ap.add_argument("--slow", default="")
    ap.add_argument("--names", default="", help="component names, comma-separated (default c0, c1, ...)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--stop", default="", help="NAME=MINUTES: that component publishes for MINUTES only")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    names = args.names.split(",") if args.names else [f"c{i}" for i in range(args.components)]
    slow = set(filter(None, args.slow.split(",")))
    stop = dict((n, int(m)) for n, m in (s.split("=") for s in filter(None, args.stop.split(","))))
    # Java's partitioner, so each component's samples land on its owner's
    # partition (another partitioner works too, through a routing hop).
    p = Producer({
        "bootstrap.servers": args.brokers,
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",
        "linger.ms": 20,
    })
    sent = 0

    def send(component, endpoint, t):
        nonlocal sent
        base = 450.0 if component in slow else 45.0
        sample = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "occurred_at": t,
            "source": "many-endpoints",
            "component": component,
            "endpoint": endpoint,
            "latency_ms": round(rng.lognormvariate(0, 0.5) * base, 3),
            "outcome": "OK",
            "status_code": 200,
        }
        while True:
            try:
                p.produce(args.topic, key=component, value=json.dumps(sample))
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
        sent += 1

    for minute in range(args.minutes):
        for e in range(args.endpoints):
            for c in names:
                if minute >= stop.get(c, args.minutes):
                    continue
                t = args.start_ms + minute * 60_000 + (e * 50_000) // max(args.endpoints, 1)
                send(c, f"GET /api/items/{e}", t)
    for c in filter(lambda c: c not in stop, names):
        send(c, "GET /clock", args.start_ms + (args.minutes + 1) * 60_000 + 10_000)
    left = p.flush(60)
    if left:
        sys.exit(f"{left} records not delivered")
    print(f"sent {sent}")


if __name__ == "__main__":
    main()
