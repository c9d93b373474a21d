#!/usr/bin/env python3
"""A fp-relay fulfiller in Python (confluent-kafka): read fulfilment requests, decide with
decide.py, reply on the topic the request names, commit only after the reply is in Kafka.

The contract: docs/fulfilment-protocol.md in the fp-relay repository.
"""

import json
import os
import secrets
import signal
import sys
import time
from collections import OrderedDict
from datetime import datetime, timezone

from confluent_kafka import Consumer, KafkaException, Producer

from decide import decide

BROKERS = os.environ.get("BROKERS", "localhost:9092")
REQUEST_TOPIC = os.environ.get("REQUEST_TOPIC", "firstpromoter.fulfilment_pending")
DEFAULT_REPLY_TOPIC = os.environ.get("REPLY_TOPIC", "firstpromoter.fulfilment_replies")
GROUP = os.environ.get("GROUP", "fulfiller-python")
# How many answered correlation ids are remembered to drop duplicates (Kafka redelivers after a
# rebalance or a crash before the commit).
REMEMBERED = int(os.environ.get("REMEMBERED", "100000"))

running = True


def log(message, **fields):
    """One JSON line per event on stderr."""
    print(json.dumps({"message": message, **fields}), file=sys.stderr, flush=True)


def child_traceparent(parent):
    """A traceparent for this fulfiller's span, continuing the request's trace (W3C)."""
    parts = (parent or "").strip().split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or len(parts[2]) != 16 or set(parts[1]) == {"0"}:
        return None, None
    return f"00-{parts[1]}-{secrets.token_hex(8)}-{parts[3][:2]}", parts[1]


def reward_request(version, event, correlation_id, headers):
    """What decide() sees."""
    data = event.get("data") or {}
    if version == "v2":
        reward_id = correlation_id.split(":")[1]
    else:
        reward_id = data.get("id")
    promoter = data.get("promoter") or {}
    deadline = headers.get("fp-deadline")
    seconds_left = None
    if deadline:
        try:
            at = datetime.fromisoformat(deadline.replace("Z", "+00:00"))
            seconds_left = (at - datetime.now(timezone.utc)).total_seconds()
        except ValueError:
            pass
    return {
        "version": version,
        "event": event,
        "reward_id": reward_id,
        "promoter_email": promoter.get("email") or data.get("email"),
        "unit": data.get("unit"),
        "amount": data.get("amount"),
        "deadline": seconds_left,
    }


def main():
    consumer = Consumer({
        "bootstrap.servers": BROKERS,
        "group.id": GROUP,
        "enable.auto.commit": False,
        "auto.offset.reset": os.environ.get("AUTO_OFFSET_RESET", "earliest"),
        "session.timeout.ms": int(os.environ.get("SESSION_TIMEOUT_MS", "10000")),
        "heartbeat.interval.ms": int(os.environ.get("HEARTBEAT_INTERVAL_MS", "1000")),
    })
    producer = Producer({
        "bootstrap.servers": BROKERS,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 0,
    })
    answered = OrderedDict()

    def on_assign(_consumer, partitions):
        log("fulfiller ready", partitions=len(partitions), topic=REQUEST_TOPIC)

    def stop(_signum, _frame):
        global running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    consumer.subscribe([REQUEST_TOPIC], on_assign=on_assign)
    try:
        while running:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                log("consumer error", error=str(message.error()))
                continue
            handle(message, producer, answered)
            # Only now: the reply is in Kafka (or there was nothing to answer).
            consumer.commit(message=message, asynchronous=False)
    finally:
        producer.flush(10)
        consumer.close()  # leaves the group at once, so a replacement takes over quickly
        log("fulfiller stopped")


def handle(message, producer, answered):
    headers = {k: (v.decode() if v is not None else "") for k, v in (message.headers() or [])}
    correlation_id = headers.get("fp-correlation-id", "").strip()
    traceparent, trace_id = child_traceparent(headers.get("traceparent"))
    if not correlation_id:
        # Published while nobody waits (the relay answered pending already): no reply expected.
        log("request without a correlation id; no reply expected", trace_id=trace_id)
        return
    if correlation_id in answered:
        log("duplicate request; answered already", correlation_id=correlation_id, trace_id=trace_id)
        return
    version = "v2" if correlation_id.startswith("v2:") else "v1"
    try:
        event = json.loads(message.value())
    except ValueError:
        log("request is not JSON; skipped", correlation_id=correlation_id)
        return
    request = reward_request(version, event, correlation_id, headers)
    if version == "v1" and request["deadline"] is not None and request["deadline"] <= 0:
        # The relay has answered FirstPromoter "pending"; it asks again at its next check.
        # Not an error: requests published before the fulfiller started (the tour's `send --all`).
        log("old request: the relay already answered it (past its deadline); not acted on",
            correlation_id=correlation_id, trace_id=trace_id)
        return
    try:
        outcome, reason = decide(request)
    except Exception as error:  # the business logic failed: say so, FirstPromoter retries v1
        outcome, reason = "failed", str(error)[:200]
    reply_headers = [("fp-correlation-id", correlation_id.encode())]
    if traceparent:
        reply_headers.append(("traceparent", traceparent.encode()))
    delivered = []
    producer.produce(
        headers.get("fp-reply-topic") or DEFAULT_REPLY_TOPIC,
        key=message.key(),
        value=json.dumps({"outcome": outcome, "reason": reason}).encode(),
        headers=reply_headers,
        on_delivery=lambda error, _msg: delivered.append(error),
    )
    while not delivered:
        producer.poll(0.1)
    if delivered[0] is not None:
        # Not committed: the request is read again (after a restart) and answered then.
        raise KafkaException(delivered[0])
    answered[correlation_id] = outcome
    while len(answered) > REMEMBERED:
        answered.popitem(last=False)
    log("answered", correlation_id=correlation_id, version=version, outcome=outcome,
        reward_id=str(request["reward_id"]), trace_id=trace_id)


if __name__ == "__main__":
    main()
