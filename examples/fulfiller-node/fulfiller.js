#!/usr/bin/env node
// A fp-relay fulfiller in Node.js (kafkajs): read fulfilment requests, decide with decide.js,
// reply on the topic the request names, commit only after the reply is in Kafka.
//
// The contract: docs/fulfilment-protocol.md in the fp-relay repository.

"use strict";

const crypto = require("crypto");
const { Kafka, Partitioners, logLevel } = require("kafkajs");
const { decide } = require("./decide");

const BROKERS = (process.env.BROKERS || "localhost:9092").split(",");
const REQUEST_TOPIC = process.env.REQUEST_TOPIC || "firstpromoter.fulfilment_pending";
const DEFAULT_REPLY_TOPIC = process.env.REPLY_TOPIC || "firstpromoter.fulfilment_replies";
const GROUP = process.env.GROUP || "fulfiller-node";
// How many answered correlation ids are remembered to drop duplicates (Kafka redelivers after a
// rebalance or a crash before the commit).
const REMEMBERED = Number(process.env.REMEMBERED || 100000);

function log(message, fields = {}) {
  process.stderr.write(JSON.stringify({ message, ...fields }) + "\n");
}

// A traceparent for this fulfiller's span, continuing the request's trace (W3C).
function childTraceparent(parent) {
  const parts = (parent || "").trim().split("-");
  if (parts.length < 4 || parts[1].length !== 32 || parts[2].length !== 16 || /^0+$/.test(parts[1])) {
    return [null, null];
  }
  return [`00-${parts[1]}-${crypto.randomBytes(8).toString("hex")}-${parts[3].slice(0, 2)}`, parts[1]];
}

function rewardRequest(version, event, correlationId, headers) {
  const data = event.data || {};
  const promoter = data.promoter || {};
  let deadline = null;
  if (headers["fp-deadline"]) {
    const at = Date.parse(headers["fp-deadline"]);
    if (!Number.isNaN(at)) deadline = (at - Date.now()) / 1000;
  }
  return {
    version,
    event,
    rewardId: version === "v2" ? correlationId.split(":")[1] : data.id,
    promoterEmail: promoter.email || data.email,
    unit: data.unit,
    amount: data.amount,
    deadline,
  };
}

async function main() {
  const kafka = new Kafka({
    clientId: GROUP,
    brokers: BROKERS,
    logLevel: logLevel.WARN,
  });
  const consumer = kafka.consumer({
    groupId: GROUP,
    sessionTimeout: Number(process.env.SESSION_TIMEOUT_MS || 10000),
    heartbeatInterval: Number(process.env.HEARTBEAT_INTERVAL_MS || 1000),
  });
  // Not idempotent: a retried send may write a reply twice, which the relay ignores (a reply
  // is matched once; the second counts as late). kafkajs's idempotent producer needs
  // InitProducerId v1, which some Kafka-protocol brokers (tansu) do not answer.
  const producer = kafka.producer({
    createPartitioner: Partitioners.DefaultPartitioner,
    maxInFlightRequests: 1,
  });
  const answered = new Map();

  await producer.connect();
  await consumer.connect();
  consumer.on(consumer.events.GROUP_JOIN, (event) => {
    log("fulfiller ready", { topic: REQUEST_TOPIC, partitions: (event.payload.memberAssignment[REQUEST_TOPIC] || []).length });
  });
  await consumer.subscribe({ topics: [REQUEST_TOPIC], fromBeginning: true });

  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    try {
      await consumer.disconnect(); // leaves the group at once, so a replacement takes over quickly
      await producer.disconnect();
    } finally {
      log("fulfiller stopped");
      process.exit(0);
    }
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);

  await consumer.run({
    autoCommit: false,
    eachMessage: async ({ topic, partition, message }) => {
      await handle(message, producer, answered);
      // Only now: the reply is in Kafka (or there was nothing to answer).
      await consumer.commitOffsets([{ topic, partition, offset: (BigInt(message.offset) + 1n).toString() }]);
    },
  });
}

async function handle(message, producer, answered) {
  const headers = {};
  for (const [key, value] of Object.entries(message.headers || {})) {
    headers[key] = Buffer.isBuffer(value) ? value.toString() : String(value);
  }
  const correlationId = (headers["fp-correlation-id"] || "").trim();
  const [traceparent, traceId] = childTraceparent(headers["traceparent"]);
  if (!correlationId) {
    // Published while nobody waits (the relay answered pending already): no reply expected.
    log("request without a correlation id; no reply expected", { traceId });
    return;
  }
  if (answered.has(correlationId)) {
    log("duplicate request; answered already", { correlationId, traceId });
    return;
  }
  const version = correlationId.startsWith("v2:") ? "v2" : "v1";
  let event;
  try {
    event = JSON.parse(message.value.toString());
  } catch (error) {
    log("request is not JSON; skipped", { correlationId });
    return;
  }
  const request = rewardRequest(version, event, correlationId, headers);
  if (version === "v1" && request.deadline !== null && request.deadline <= 0) {
    // The relay has answered FirstPromoter "pending"; it asks again at its next check.
    // Not an error: requests published before the fulfiller started (the tour's `send --all`).
    log("old request: the relay already answered it (past its deadline); not acted on", { correlationId, traceId });
    return;
  }
  let outcome;
  let reason;
  try {
    [outcome, reason] = await decide(request);
  } catch (error) {
    [outcome, reason] = ["failed", String(error && error.message ? error.message : error).slice(0, 200)];
  }
  const replyHeaders = { "fp-correlation-id": correlationId };
  if (traceparent) replyHeaders.traceparent = traceparent;
  // Resolves once Kafka has the reply (acks from all in-sync replicas); a failure throws, the
  // offset is not committed and the request is read again.
  await producer.send({
    topic: headers["fp-reply-topic"] || DEFAULT_REPLY_TOPIC,
    acks: -1,
    messages: [{ key: message.key, value: JSON.stringify({ outcome, reason }), headers: replyHeaders }],
  });
  answered.set(correlationId, outcome);
  while (answered.size > REMEMBERED) answered.delete(answered.keys().next().value);
  log("answered", { correlationId, version, outcome, rewardId: String(request.rewardId), traceId });
}

main().catch((error) => {
  log("fulfiller failed", { error: String(error) });
  process.exit(1);
});
