//! Hot-path costs of the wire format: encoding one quote (once per update) and decoding one
//! request (once per client request). Run: `cargo bench -p proto`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use proto::{Price, Quote, Request};

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
    let mut scratch = Vec::new();
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("subscribe_10_symbols", |b| {
        b.iter(|| black_box(Request::decode(black_box(subscribe), &mut scratch)))
    });
    group.bench_function("ping", |b| {
        b.iter(|| black_box(Request::decode(black_box(ping), &mut scratch)))
    });
    group.bench_function("invalid", |b| {
        b.iter(|| black_box(Request::decode(black_box(invalid), &mut scratch)))
    });
    group.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
