//! Measures the per-message cost of reading `type`/`symbol`/`seq`/`ts` from a quote frame:
//! the tester's hand scan against simd-json (tape, reused buffers) and serde_json.
//!
//! `cargo run --release -p load-tests --example scan_bench`

use std::hint::black_box;
use std::time::Instant;

use simd_json::prelude::*;

const QUOTE: &str = r#"{"type":"quote","symbol":"AAPL","seq":1042,"bid":187.25,"ask":187.27,"bid_size":200,"ask_size":500,"last":187.26,"last_size":50,"volume":1203450,"ts":1763775600124456789}"#;
const ROUNDS: usize = 2_000_000;

fn main() {
    let msg = QUOTE.as_bytes();

    let t = Instant::now();
    let mut acc = 0u64;
    for _ in 0..ROUNDS {
        let f = load_tests::scan::scan(black_box(msg)).unwrap();
        acc = acc.wrapping_add(f.seq.unwrap() ^ f.ts.unwrap() ^ f.symbol.unwrap().len() as u64);
    }
    report("hand scan (quote layout)", t, acc);

    let t = Instant::now();
    let mut acc = 0u64;
    for _ in 0..ROUNDS {
        let f = load_tests::scan::scan_object(black_box(msg)).unwrap();
        acc = acc.wrapping_add(f.seq.unwrap() ^ f.ts.unwrap() ^ f.symbol.unwrap().len() as u64);
    }
    report("hand scan (object walk)", t, acc);

    // simd-json parses in place, so each message is copied into a scratch buffer first (the
    // tester would have to do the same: it may not clobber its read buffer before it is done).
    let t = Instant::now();
    let mut acc = 0u64;
    let mut buffers = simd_json::Buffers::new(512);
    let mut scratch = Vec::with_capacity(512);
    let mut tape = simd_json::Tape::null();
    for _ in 0..ROUNDS {
        scratch.clear();
        scratch.extend_from_slice(black_box(msg));
        let mut t2 = tape.reset();
        simd_json::fill_tape(&mut scratch, &mut buffers, &mut t2).unwrap();
        {
            let v = t2.as_value();
            let kind = v.get("type").unwrap();
            let symbol = v.get("symbol").unwrap();
            let (kind, symbol) = (kind.as_str().unwrap(), symbol.as_str().unwrap());
            let seq = v.get("seq").and_then(|x| x.as_u64()).unwrap();
            let ts = v.get("ts").and_then(|x| x.as_u64()).unwrap();
            acc = acc.wrapping_add(seq ^ ts ^ symbol.len() as u64 ^ kind.len() as u64);
        }
        tape = t2.reset();
    }
    report("simd-json tape", t, acc);

    let t = Instant::now();
    let mut acc = 0u64;
    #[derive(serde::Deserialize)]
    struct Q<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        symbol: &'a str,
        seq: u64,
        ts: u64,
    }
    for _ in 0..ROUNDS {
        let q: Q = serde_json::from_slice(black_box(msg)).unwrap();
        acc = acc.wrapping_add(q.seq ^ q.ts ^ q.symbol.len() as u64 ^ q.kind.len() as u64);
    }
    report("serde_json borrowed struct", t, acc);
}

fn report(name: &str, t: Instant, acc: u64) {
    let ns = t.elapsed().as_nanos() as f64 / ROUNDS as f64;
    println!("{name:<28} {ns:>7.1} ns/message  ({:.1} M messages/s)  [{acc:x}]", 1e3 / ns);
}
