-- Demo source tables for the example pipelines: `batchpipe demo-data` (and `make demo`)
-- runs this file against $BATCHPIPE_DB. Deterministic, so every machine gets the same rows.
-- 300 products over ten days from 2026-11-01, and 240 reviews of them.

CREATE OR REPLACE TABLE products AS
SELECT
    i AS product_id,
    ['Aurora', 'Basalt', 'Cinder', 'Drift', 'Ember', 'Fjord', 'Granite', 'Harbor',
     'Iris', 'Juniper', 'Kestrel', 'Lumen'][1 + i % 12]
        || ' ' ||
    ['Lamp', 'Backpack', 'Kettle', 'Notebook', 'Chair', 'Headphones', 'Mug', 'Jacket',
     'Tent', 'Watch'][1 + (i // 12) % 10]
        || ' Mk ' || (1 + i // 120) AS name,             -- unique: no two rows ask the same
    ['home', 'outdoor', 'kitchen', 'office', 'audio'][1 + i % 5] AS category,
    round(5 + (i * 37 % 200) + (i % 100) / 100.0, 2)::DECIMAL(8, 2) AS price,
    DATE '2026-11-01' + (i % 10)::INTEGER AS added_on
FROM range(1, 301) AS t(i);

CREATE OR REPLACE TABLE reviews AS
SELECT
    'r' || lpad(i::VARCHAR, 4, '0') AS review_id,
    1 + (i * 7) % 300 AS product_id,
    1 + (i * 3) % 5 AS stars,
    ['Arrived quickly and works as described.',
     'The colour is not what the photos showed.',
     'Sturdy, but heavier than I expected.',
     'Stopped working after two weeks.',
     'Great value; I bought a second one.',
     'The instructions were confusing.'][1 + i % 6] AS body,
    TIMESTAMP '2026-11-01 08:00:00' + INTERVAL (i * 60) MINUTE AS posted_at
FROM range(1, 241) AS t(i);

-- 90 support tickets, 9 a day from 2026-11-01.
CREATE OR REPLACE TABLE tickets AS
SELECT
    'T-' || lpad(i::VARCHAR, 5, '0') AS ticket_id,
    ['I was charged twice for my order.',
     'The app crashes when I open my saved items.',
     'How do I change the email on my account?',
     'My parcel has not arrived after two weeks.',
     'Please delete my account and all my data.',
     'The discount code from your newsletter does not work.'][1 + i % 6]
        || ' Order ' || (1000 + i * 13) || '.' AS body,
    ['web', 'email', 'phone'][1 + i % 3] AS channel,
    DATE '2026-11-01' + (i % 10)::INTEGER AS opened_on
FROM range(1, 91) AS t(i);

-- Issue 20's media: a photo for each of 30 products, three a day from 2026-11-01 (12
-- drawings in pipelines/media/, so several products share one file), and 9 scanned invoices,
-- three a day. Paths are relative to the pipeline files' folder (their media.root).
CREATE OR REPLACE TABLE product_photos AS
SELECT
    i AS product_id,
    'media/photo_' || lpad((1 + i % 12)::VARCHAR, 2, '0')
        || CASE WHEN (1 + i % 12) % 4 = 0 THEN '.jpg' ELSE '.png' END AS photo,
    DATE '2026-11-01' + (i % 10)::INTEGER AS taken_on
FROM range(1, 31) AS t(i);

CREATE OR REPLACE TABLE invoices AS
SELECT
    'INV-' || (2600 + i) AS invoice_no,
    'media/INV-' || (2600 + i) || '.pdf' AS scan,
    ['Northwind Supplies', 'Contoso Freight', 'Fabrikam Paper'][1 + i % 3] AS vendor,
    DATE '2026-11-01' + (i % 3)::INTEGER AS received_on
FROM range(1, 10) AS t(i);
