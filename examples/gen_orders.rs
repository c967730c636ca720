//! Writes a realistic order CSV of N rows to stdout: several orders per
//! customer (interleaved), quoted fields with commas and quotes, non-ASCII
//! names, unique `site_order_identifier`s.
//!
//! `cargo run --release --example gen_orders -- 1000000 [ORDERS_PER_CUSTOMER] > big.csv`
//!
//! ORDERS_PER_CUSTOMER may be a range like `1-7`: each customer then gets
//! a number of orders in it (written together, customer after customer).

use std::io::{BufWriter, Write};

const FIRST: &[&str] = &[
    "José",
    "Zoë",
    "Amelia",
    "François",
    "Björn",
    "Ana",
    "李",
    "Öykü",
    "Nguyễn",
    "Sam",
];
const LAST: &[&str] = &[
    "Núñez",
    "Müller",
    "O'Brien",
    "Dupré",
    "Ångström",
    "Ruiz, Jr.",
    "小龍",
    "Çelik",
    "Trần",
    "Lee",
];
const TYPES: &[&str] = &["exact", "up-to", "any"];

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let rows: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let spec = args.next().unwrap_or_else(|| "4".into());
    let range = spec
        .split_once('-')
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
    let per_customer: u64 = spec.parse().unwrap_or(4).max(1);
    // Customers come in blocks of 1,000 whose orders are interleaved, so any
    // prefix of the file also has several orders per customer.
    const BLOCK: u64 = 1000;
    let mut out = BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    writeln!(
        out,
        "site_customer_identifier,site_order_identifier,order_amount,order_currency,order_type,order_is_standing,site_customer_name,site_customer_email,site_order_description"
    )?;
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    // With a range: the current customer and the orders it has left.
    let (mut ranged_customer, mut left) = (0u64, 0u64);
    for i in 0..rows {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let customer = match range {
            Some((min, max)) => {
                if left == 0 {
                    ranged_customer += 1;
                    left = min.max(1) + seed % (max.max(min) - min.max(1) + 1);
                }
                left -= 1;
                ranged_customer
            }
            None => {
                let block = i / (BLOCK * per_customer);
                block * BLOCK + i % BLOCK
            }
        };
        let first = FIRST[(customer % 10) as usize];
        let last = LAST[((customer / 10) % 10) as usize];
        let cents = 100 + seed % 50_000;
        let name = format!("{first} {last}").replace('"', "\"\"");
        let description = if i.is_multiple_of(7) {
            format!("\"Invoice {i}, \"\"monthly\"\" plan\"")
        } else {
            format!("Invoice {i}")
        };
        writeln!(
            out,
            "CUST-{customer:07},ORD-{i:09},{}.{:02},USD,{},{},\"{name}\",c{customer}@example.com,{description}",
            cents / 100,
            cents % 100,
            TYPES[(seed % 3) as usize],
            if seed.is_multiple_of(2) { "true" } else { "false" },
        )?;
    }
    out.flush()
}
