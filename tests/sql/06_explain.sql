EXPLAIN SELECT campaign_id, count(*) FROM events WHERE advertiser_id = 'a1' AND ts >= '2026-11-22T10:00:00Z' AND ts < '2026-11-22T12:00:00Z' GROUP BY campaign_id;
EXPLAIN SELECT count(*) FROM events WHERE advertiser_id = 'zzz';
EXPLAIN SELECT event_id FROM events WHERE device <> 'mobile' AND cost_micros > 10 ORDER BY ts DESC LIMIT 10;
EXPLAIN SELECT sum(clicks) FROM metrics WHERE ts >= now() - INTERVAL '1 hour';
EXPLAIN SELECT count(*) FROM events WHERE type = 'click' AND invalid_reason IN ('too_fast', 'bot_ua');
EXPLAIN SELECT campaign_id, sum(clicks), approx_count_distinct(users) FROM metrics WHERE advertiser_id = 'a1' AND ts >= '2026-11-22T00:00:00Z' AND ts < '2026-11-23T00:00:00Z' GROUP BY campaign_id;
EXPLAIN SELECT os, sum(impressions) FROM metrics GROUP BY os;
