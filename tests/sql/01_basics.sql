-- Aggregates over the whole table.
SELECT count(*), count(device), sum(cost_micros), min(ts), max(ts), avg(cost_micros) FROM events;
SELECT count(DISTINCT campaign_id), count(DISTINCT user_key), approx_count_distinct(user_key) FROM events;
SELECT min(campaign_id), max(country), min(cost_micros), max(value_micros) FROM events WHERE advertiser_id = 'a2';
-- Aggregates of no rows: one row, count 0, others NULL.
SELECT count(*), sum(cost_micros), avg(cost_micros), min(ts) FROM events WHERE advertiser_id = 'nobody';
-- Row queries.
SELECT event_id, type, ts, campaign_id, device, cost_micros FROM events ORDER BY ts LIMIT 5;
SELECT * FROM events ORDER BY event_id LIMIT 2;
SELECT e.event_id, e.invalid_reason, final FROM events e WHERE e.invalid_reason <> '' ORDER BY e.event_id LIMIT 4 OFFSET 2;
SELECT event_id FROM events WHERE false;
-- Arithmetic and literals.
SELECT 1 + 2 * 3 AS a, 7 / 2 AS b, 7 % 3 AS c, 7 * 1.0 / 2 AS d, 1 / 0 AS e, -(4) AS f, NULL AS g, 'x' AS h, true AS i FROM events LIMIT 1;
