-- The dashboard suite of the benchmark, on the golden dataset.
-- CTR by campaign for an advertiser over a day.
SELECT campaign_id, sum(clicks) AS clicks, sum(impressions) AS impressions, sum(clicks) * 1.0 / nullif(sum(impressions), 0) AS ctr FROM metrics WHERE advertiser_id = 'a1' AND ts >= '2026-11-22T00:00:00Z' AND ts < '2026-11-23T00:00:00Z' GROUP BY campaign_id ORDER BY ctr DESC;
-- Hourly series for one campaign over two days.
SELECT date_trunc('hour', ts) AS hour, count(*) FILTER (WHERE type = 'impression') AS impressions, count(*) FILTER (WHERE type = 'click') AS clicks FROM events WHERE campaign_id = 'a2-c2' AND ts >= '2026-11-22T00:00:00Z' AND ts < '2026-11-24T00:00:00Z' GROUP BY 1 ORDER BY 1 LIMIT 12;
-- Top 10 ads by clicks for one country and device over a day.
SELECT ad_id, count(*) AS clicks FROM events WHERE type = 'click' AND country = 'US' AND device = 'mobile' AND ts >= '2026-11-23T00:00:00Z' AND ts < '2026-11-24T00:00:00Z' GROUP BY ad_id ORDER BY clicks DESC, ad_id LIMIT 10;
-- Device x country for an advertiser.
SELECT device, country, count(*) AS events, sum(cost_micros) AS spend FROM events WHERE advertiser_id = 'a3' GROUP BY device, country ORDER BY spend DESC, device, country LIMIT 8;
-- Minute series of the last hour.
SELECT time_bucket(INTERVAL '1 minute', ts) AS minute, count(*) FROM events WHERE ts >= now() - INTERVAL '1 hour' GROUP BY 1 ORDER BY 1 LIMIT 10;
-- Top publisher x placement by impressions over all data.
SELECT publisher_id, placement, sum(impressions) AS impressions FROM metrics GROUP BY 1, 2 ORDER BY impressions DESC, 1, 2 LIMIT 5;
-- Spend per advertiser per day.
SELECT advertiser_id, date_trunc('day', ts) AS day, sum(spend_micros) AS spend FROM metrics GROUP BY 1, 2 ORDER BY 1, 2;
-- Approximate distinct users per campaign for a day.
SELECT campaign_id, approx_count_distinct(user_key) AS users, count(DISTINCT user_key) AS exact FROM events WHERE ts >= '2026-11-23T00:00:00Z' AND ts < '2026-11-24T00:00:00Z' GROUP BY campaign_id ORDER BY campaign_id;
