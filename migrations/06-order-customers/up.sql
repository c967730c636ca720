-- Which customer owns each order, as any command has seen it (created,
-- looked up, refreshed, changed): one fact of the store that every command
-- and `serve` read, so rows naming an order only by its identifier are
-- grouped (and serialised) by their customer without asking the provider
-- again. Identifiers only, no personal data.
CREATE TABLE orders (
    pnm_order_identifier     TEXT PRIMARY KEY,
    site_order_identifier    TEXT,
    site_customer_identifier TEXT,
    pnm_customer_identifier  TEXT
) WITHOUT ROWID;
CREATE INDEX orders_by_site_order ON orders (site_order_identifier)
    WHERE site_order_identifier IS NOT NULL;
CREATE INDEX orders_by_pnm_customer ON orders (pnm_customer_identifier)
    WHERE pnm_customer_identifier IS NOT NULL;

-- What earlier runs already learned (Commerce Engine rows name no
-- PayNearMe order).
INSERT INTO orders (pnm_order_identifier, site_order_identifier, site_customer_identifier,
                    pnm_customer_identifier)
SELECT pnm_order_identifier, MAX(site_order_identifier), MAX(site_customer_identifier),
       MAX(pnm_customer_identifier)
FROM rows
WHERE pnm_order_identifier IS NOT NULL
  AND run_id IN (SELECT id FROM runs WHERE command != 'ce-retry-payments')
GROUP BY pnm_order_identifier;
