"""Your business logic: grant the reward, then say what happened.

`decide(request)` is called once per fulfilment request (never twice for one correlation id
while this process runs). Return one of:

- ("fulfilled", reason): the reward was delivered. For v1 the relay answers FirstPromoter 200;
  for v2 it calls FirstPromoter's mark_fulfilled for the commission.
- ("pending", reason): not now; FirstPromoter keeps the reward pending (v1 asks again later).
- ("failed", reason): an error; v1 retries the webhook.

`request` is a dict:
  version        "v1" or "v2"
  event          the webhook body (FirstPromoter's JSON)
  reward_id      v1: data.id of the fulfilment record; v2: the commission id
  promoter_email the promoter's email when the body has one
  unit, amount   v2: the commission's unit ("points", "credits", ...) and amount
  deadline       when the relay stops waiting (v1: seconds from now; do your work before it)

Raise an exception for "failed" if you prefer; the fulfiller turns it into ("failed", str(e)).
Make the work itself idempotent by `reward_id` (a unique constraint in your database): FirstPromoter
sends the same v1 reward again at later fulfilment checks, each with a new correlation id.
"""


def decide(request):
    # Replace this with the call that grants the reward (points, free months, credits).
    return "fulfilled", f"granted {request['reward_id']} ({request['version']})"
