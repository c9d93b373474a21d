#!/usr/bin/env python3
"""A starting point for a service downstream of fp-relay (confluent-kafka): read the
per-event-type topics and print each event with its CloudEvents headers and trace.

    python consumer.py                      # every firstpromoter.* event topic, from now on
    python consumer.py --from-beginning     # and what is there already
    python consumer.py --topic firstpromoter.referral.created --max-events 10

Replace `handle` with your own work. Offsets are committed after `handle` returns, so an event
is handled at least once; make `handle` idempotent by `ce_id` (the FirstPromoter event id).
"""

import argparse
import json
import os
import signal
import sys

from confluent_kafka import Consumer

# The relay's own plumbing topics: not events.
NOT_EVENTS = ("firstpromoter.fulfilment_replies", "firstpromoter.dead_letter")


def handle(topic, headers, event):
    """Your work. Here: one line per event."""
    traceparent = headers.get("ce_traceparent") or headers.get("traceparent") or ""
    trace_id = traceparent.split("-")[1] if traceparent.count("-") >= 3 else None
    print(json.dumps({
        "topic": topic,
        "ce_type": headers.get("ce_type"),
        "ce_id": headers.get("ce_id"),
        "ce_source": headers.get("ce_source"),
        "ce_time": headers.get("ce_time"),
        "webhook_version": headers.get("fp-webhook-version"),
        "trace_id": trace_id,
        "event_type": headers.get("fp-event-type"),
        "data_id": (event.get("data") or {}).get("id") if isinstance(event, dict) else None,
    }), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brokers", default=os.environ.get("BROKERS", "localhost:9092"))
    parser.add_argument("--topic", action="append",
                        help="a topic to read (repeatable) [default: every firstpromoter.* topic]")
    parser.add_argument("--group", default=os.environ.get("GROUP", "consumer-python"))
    parser.add_argument("--from-beginning", action="store_true")
    parser.add_argument("--max-events", type=int, default=0, help="stop after this many (0: never)")
    args = parser.parse_args()

    consumer = Consumer({
        "bootstrap.servers": args.brokers,
        "group.id": args.group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest" if args.from_beginning else "latest",
        "session.timeout.ms": int(os.environ.get("SESSION_TIMEOUT_MS", "10000")),
        "heartbeat.interval.ms": int(os.environ.get("HEARTBEAT_INTERVAL_MS", "1000")),
        "topic.metadata.refresh.interval.ms": 5000,
    })
    running = [True]

    def stop(_signum, _frame):
        running[0] = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    consumer.subscribe(args.topic or ["^firstpromoter\\..*"])
    seen = 0
    try:
        while running[0]:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                print(json.dumps({"error": str(message.error())}), file=sys.stderr, flush=True)
                continue
            if message.topic() in NOT_EVENTS or message.topic().endswith("fulfilment_pending"):
                consumer.commit(message=message, asynchronous=False)
                continue
            headers = {k: (v.decode() if v is not None else "") for k, v in (message.headers() or [])}
            try:
                event = json.loads(message.value())
            except ValueError:
                event = None
            handle(message.topic(), headers, event)
            consumer.commit(message=message, asynchronous=False)
            seen += 1
            if args.max_events and seen >= args.max_events:
                break
    finally:
        consumer.close()


if __name__ == "__main__":
    main()
