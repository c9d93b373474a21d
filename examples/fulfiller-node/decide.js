// Your business logic: grant the reward, then say what happened.
//
// decide(request) is called once per fulfilment request (never twice for one correlation id
// while this process runs) and returns (or resolves to) [outcome, reason]:
//
// - ["fulfilled", reason]: the reward was delivered. For v1 the relay answers FirstPromoter 200;
//   for v2 it calls FirstPromoter's mark_fulfilled for the commission.
// - ["pending", reason]: not now; FirstPromoter keeps the reward pending (v1 asks again later).
// - ["failed", reason]: an error; v1 retries the webhook. A thrown error counts as "failed".
//
// request: { version: "v1" | "v2", event (the webhook body), rewardId (v1: data.id of the
// fulfilment record; v2: the commission id), promoterEmail, unit, amount (v2), deadline
// (seconds until the relay stops waiting; v1: do your work before it) }.
//
// Make the work itself idempotent by rewardId (a unique constraint in your database):
// FirstPromoter sends the same v1 reward again at later fulfilment checks, each with a new
// correlation id.
module.exports.decide = async function decide(request) {
  // Replace this with the call that grants the reward (points, free months, credits).
  return ["fulfilled", `granted ${request.rewardId} (${request.version})`];
};
