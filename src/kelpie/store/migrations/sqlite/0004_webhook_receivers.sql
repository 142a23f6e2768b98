-- Each event's receiver: `scheme://host:port` as written in its URL, lowercased. Claims take
-- a fair share of due events from every receiver, so one receiver's backlog cannot fill a
-- batch, and the delivery loop caps and pauses each receiver on its own. Derived from the URL
-- by the database, so every writer agrees on it. (postgresql/0004 computes the same.)
ALTER TABLE webhook_outbox ADD COLUMN receiver TEXT GENERATED ALWAYS AS (lower(
    CASE WHEN instr(url, '://') = 0 THEN url
    ELSE substr(url, 1, instr(url, '://') + 1 + instr(
        replace(replace(substr(url, instr(url, '://') + 3), '?', '/'), '#', '/') || '/', '/'))
    END)) VIRTUAL;
-- Claims walk the receivers, then each one's events in due order.
DROP INDEX webhook_outbox_due;
CREATE INDEX webhook_outbox_receiver_due ON webhook_outbox (receiver, next_attempt_at, id)
    WHERE delivered_at IS NULL AND dead_at IS NULL;
