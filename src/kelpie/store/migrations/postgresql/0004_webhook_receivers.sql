-- Each event's receiver: `scheme://host:port` as written in its URL, lowercased. Claims take
-- a fair share of due events from every receiver, so one receiver's backlog cannot fill a
-- batch, and the delivery loop caps and pauses each receiver on its own. Derived from the URL
-- by the database, so every writer agrees on it. (sqlite/0004 computes the same.)
ALTER TABLE webhook_outbox ADD COLUMN receiver text GENERATED ALWAYS AS (lower(
    CASE WHEN strpos(url, '://') = 0 THEN url
    ELSE substr(url, 1, strpos(url, '://') + 1 + strpos(
        replace(replace(substr(url, strpos(url, '://') + 3), '?', '/'), '#', '/') || '/', '/'))
    END)) STORED;
-- Claims walk the receivers, then each one's events in due order.
DROP INDEX webhook_outbox_due;
DROP INDEX webhook_outbox_undelivered;
CREATE INDEX webhook_outbox_receiver_due ON webhook_outbox (receiver, next_attempt_at, id)
    WHERE delivered_at IS NULL AND dead_at IS NULL;
