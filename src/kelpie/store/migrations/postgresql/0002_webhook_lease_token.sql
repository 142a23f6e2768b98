-- Who holds a webhook event's lease: a token chosen by each claim. The holder's outcome
-- (delivered, retry later, given up) is written only while it still holds the lease, so a
-- process that stalled past its lease cannot undo what the next holder did.
ALTER TABLE webhook_outbox ADD COLUMN lease_token text;
