-- GROUP BY names, ordinals, aliases and expressions.
SELECT advertiser_id, count(*) AS n FROM events GROUP BY advertiser_id ORDER BY advertiser_id;
SELECT advertiser_id, device, count(*) FROM events GROUP BY 1, 2 ORDER BY 1, 2 NULLS FIRST;
SELECT coalesce(device, 'unknown') AS dev, count(*) FROM events GROUP BY dev ORDER BY 2 DESC, 1;
SELECT country, count(*) FROM events GROUP BY country ORDER BY country DESC;
SELECT country, count(*) FROM events GROUP BY country ORDER BY country ASC NULLS FIRST;
SELECT country, count(*) FROM events GROUP BY country ORDER BY country DESC NULLS LAST;
-- Conditional aggregation and ratios.
SELECT campaign_id,
       sum(CASE WHEN type = 'click' THEN 1 ELSE 0 END) AS clicks,
       count(*) FILTER (WHERE type = 'impression') AS impressions,
       sum(CASE WHEN type = 'click' THEN 1 ELSE 0 END) * 1.0 / nullif(count(*) FILTER (WHERE type = 'impression'), 0) AS ctr
FROM events WHERE advertiser_id = 'a1' GROUP BY campaign_id ORDER BY ctr DESC;
SELECT type, CASE type WHEN 'click' THEN 'c' WHEN 'impression' THEN 'i' ELSE 'other' END AS t, count(*) FROM events GROUP BY 1, 2 ORDER BY 1;
SELECT invalid_reason, count(*) FROM events WHERE type = 'click' GROUP BY invalid_reason ORDER BY invalid_reason;
SELECT nullif(device, 'mobile') AS d, count(*) FROM events GROUP BY 1 ORDER BY 1;
-- HAVING, including by alias and on aggregates not selected.
SELECT ad_id, count(*) AS n FROM events GROUP BY ad_id HAVING count(*) > 340 ORDER BY n DESC;
SELECT ad_id FROM events GROUP BY ad_id HAVING sum(cost_micros) > 20000000 ORDER BY ad_id;
SELECT advertiser_id, count(*) AS n FROM events GROUP BY advertiser_id HAVING n > 1000 ORDER BY 1;
-- ORDER BY an aggregate that is not selected; top-N with OFFSET.
SELECT ad_id FROM events GROUP BY ad_id ORDER BY count(*) DESC, ad_id LIMIT 3;
SELECT ad_id, count(*) FROM events GROUP BY ad_id ORDER BY 2 DESC, 1 LIMIT 3 OFFSET 3;
SELECT ad_id, count(*) FROM events GROUP BY ad_id ORDER BY 2 DESC, 1 LIMIT 0;
-- GROUP BY without aggregates is DISTINCT.
SELECT advertiser_id, campaign_id FROM events GROUP BY 1, 2 ORDER BY 1, 2;
-- Aggregate arithmetic with coalesce over empty groups.
SELECT coalesce(sum(value_micros) FILTER (WHERE attributed), 0) AS value, avg(cost_micros) FILTER (WHERE type = 'click') AS cpc FROM events;
