//! Hot pure functions: reading and validating a row, and signing a request.
//! `cargo bench --bench hot`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use orderbatch::input::check::check_file;
use orderbatch::input::ColumnOptions;
use orderbatch::provider::paynearme::sign::sign;
use secrecy::SecretString;

const ROW: &str = "CUST-0000001,ORD-000000001,496.74,USD,exact,true,\"Zoë Núñez\",c1@example.com,\"Invoice 1, \"\"monthly\"\" plan\"\n";
const HEADER: &str = "site_customer_identifier,site_order_identifier,order_amount,order_currency,order_type,order_is_standing,site_customer_name,site_customer_email,site_order_description\n";

fn parse_and_validate(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rows.csv");
    let rows = 10_000;
    let mut text = String::from(HEADER);
    for i in 0..rows {
        text.push_str(&ROW.replace("ORD-000000001", &format!("ORD-{i:09}")));
    }
    std::fs::write(&path, text).unwrap();
    let columns = ColumnOptions::default();
    let mut group = c.benchmark_group("input");
    group.throughput(Throughput::Elements(rows));
    group.bench_function("read+validate 10k rows", |b| {
        b.iter(|| {
            let report = check_file(
                black_box(&path),
                orderbatch::pipeline::schema(&columns),
                None,
            )
            .unwrap();
            assert_eq!(report.valid, rows);
        });
    });
    group.finish();
}

fn signing(c: &mut Criterion) {
    let secret = SecretString::from("ab7b539ea1317cca67c63c552");
    let params = [
        ("site_identifier", "S2155373459"),
        ("timestamp", "1636142061"),
        ("version", "3.0"),
        ("order_amount", "500"),
        ("order_currency", "USD"),
        ("site_customer_identifier", "11223344"),
        ("order_type", "any"),
        ("order_is_standing", "true"),
        ("site_order_identifier", "ORD-000000001"),
        ("site_customer_name", "Zoë Núñez"),
    ];
    c.bench_function("sign create_order (10 params)", |b| {
        b.iter(|| sign(black_box(&params), &secret));
    });
}

/// What the timeline costs one request on the hot path: counted when it
/// leaves, its outcome and latency when it is answered.
fn timeline(c: &mut Criterion) {
    let recorder = orderbatch::timeline::Recorder::new();
    let mut group = c.benchmark_group("timeline");
    group.throughput(Throughput::Elements(1));
    group.bench_function("request_and_answer", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            recorder.request("create_order");
            recorder.answered(
                "create_order",
                orderbatch::timeline::Class::Ok,
                std::time::Duration::from_micros(500 + i % 20_000),
            );
        });
    });
    group.finish();
}

criterion_group!(benches, parse_and_validate, signing, timeline);
criterion_main!(benches);
