//! Hot-path costs of the wire format: encoding one quote (once per update) and decoding one
//! request (once per client request). Run: `cargo bench -p proto`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use proto::{DecodeLimits, DecodeScratch, Price, Quote, Request};

fn quote() -> Quote {
    Quote {
        seq: 1_041_337,
        bid: Price(18_724),
        ask: Price(18_726),
        bid_size: 300,
        ask_size: 500,
        last: Price(18_725),
        last_size: 100,
        volume: 1_203_400,
        ts: 1_763_775_600_123_456_789,
    }
}

fn encode(c: &mut Criterion) {
    let q = quote();
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("quote_frames", |b| b.iter(|| black_box(black_box(&q).encode("AAPL", 2))));
    group.finish();
}

fn decode(c: &mut Criterion) {
    let subscribe = br#"{"op":"subscribe","id":1,"symbols":["AAPL","MSFT","NVDA","AMZN","GOOGL","META","TSLA","JPM","V","XOM"],"snapshot":true,"throttle_ms":0}"#;
    let ping = br#"{"op":"ping","id":3}"#;
    let invalid = br#"{"op":"subscribe","symbols":"AAPL"}"#;
    let limits = DecodeLimits { max_symbols: 1000 };
    let mut scratch = DecodeScratch::new();
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("subscribe_10_symbols", |b| {
        b.iter(|| black_box(Request::decode(black_box(subscribe), &mut scratch, limits)))
    });
    group.bench_function("ping", |b| {
        b.iter(|| black_box(Request::decode(black_box(ping), &mut scratch, limits)))
    });
    group.bench_function("invalid", |b| {
        b.iter(|| black_box(Request::decode(black_box(invalid), &mut scratch, limits)))
    });
    group.finish();
}

/// Frames of `max_message_bytes` built to be expensive: each must cost time linear in its size.
fn decode_hostile(c: &mut Criterion) {
    let limits = DecodeLimits { max_symbols: 1000 };
    let nested = format!("{}{}", "[".repeat(32_768), "]".repeat(32_768));
    let names: Vec<String> = (0..6_000).map(|i| format!("\"U{i:04}\"")).collect();
    let many = format!(r#"{{"op":"subscribe","symbols":[{}]}}"#, names.join(","));
    let mut scratch = DecodeScratch::new();
    let mut group = c.benchmark_group("decode_hostile");
    group.throughput(Throughput::Elements(1));
    group.bench_function("nested_arrays_64KiB", |b| {
        b.iter(|| black_box(Request::decode(black_box(nested.as_bytes()), &mut scratch, limits)))
    });
    group.bench_function("subscribe_6000_names", |b| {
        b.iter(|| black_box(Request::decode(black_box(many.as_bytes()), &mut scratch, limits)))
    });
    group.finish();
}

criterion_group!(benches, encode, decode, decode_hostile);
criterion_main!(benches);
