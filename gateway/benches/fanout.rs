//! Fan-out cost: one update marked for 10,000 subscribed sessions (each mark: an atomic swap,
//! and for a clean slot a push onto the session's ready list and a wake), then the writers'
//! side of taking the marks. Run: `cargo bench -p gateway --bench fanout`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gateway::fanout::{SessionSignal, Slot};

const SESSIONS: usize = 10_000;

fn fanout(c: &mut Criterion) {
    let signals: Vec<Arc<SessionSignal>> =
        (0..SESSIONS).map(|_| Arc::new(SessionSignal::default())).collect();
    let slots: Vec<Arc<Slot>> = signals.iter().map(|s| Slot::new(0, Arc::clone(s), 0)).collect();
    let mut taken = Vec::with_capacity(1);
    let mut group = c.benchmark_group("fanout");
    group.throughput(Throughput::Elements(SESSIONS as u64));
    group.bench_function("mark_10k_clean_slots_and_take", |b| {
        b.iter(|| {
            for slot in &slots {
                black_box(slot.mark());
            }
            // The writers' side: take the list, clear the mark.
            for signal in &signals {
                signal.ready.take_all(&mut taken);
                for slot in taken.drain(..) {
                    slot.take_mark();
                }
            }
        })
    });
    for slot in &slots {
        slot.mark();
    }
    group.bench_function("mark_10k_already_dirty_slots", |b| {
        b.iter(|| {
            for slot in &slots {
                black_box(slot.mark());
            }
        })
    });
    group.finish();
    for signal in &signals {
        signal.ready.take_all(&mut taken);
        taken.clear();
    }
}

criterion_group!(benches, fanout);
criterion_main!(benches);
