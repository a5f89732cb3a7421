//! What decoding one request costs in memory, measured with a counting allocator: the peak
//! while a frame is decoded, and what the session's scratch keeps afterwards
//! (`docs/backpressure.md` quotes these bounds). One test in this binary, so that no other
//! test's allocations are counted. Must never depend on timing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use proto::request::SCRATCH_RETAIN_BYTES;
use proto::{DecodeLimits, DecodeScratch, Request};

/// Counts live bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Relaxed) + by;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: every call is passed on to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            grew(new_size - layout.size());
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Most bytes held per byte of frame while it is decoded (measured: 35.0 for a frame that is
/// structural characters only, `[0,0,0,…]`).
const PEAK_PER_BYTE: usize = 36;
/// What a first decode allocates whatever the frame (the parser's own state and small buffers).
const FIXED: usize = 4_096;

#[test]
fn decoding_holds_at_most_36_bytes_per_frame_byte_and_keeps_at_most_a_small_frames_worth() {
    let limits = DecodeLimits { max_symbols: 1_000 };
    for len in [64usize, SCRATCH_RETAIN_BYTES, SCRATCH_RETAIN_BYTES + 1, 4_096, 65_536] {
        // The costliest shapes: every byte structural; many short strings; one long string.
        let room = len - r#"{"op":"ping","x":[0]}"#.len();
        let shapes = [
            "0,".repeat(room / 2),
            r#""a","#.repeat(room / 4),
            format!(r#""{}","#, "x".repeat(room.saturating_sub(3))),
        ];
        for inner in shapes {
            let text = format!(r#"{{"op":"ping","x":[{inner}0]}}"#);
            assert!(text.len() <= len, "{} > {len}", text.len());
            let mut scratch = DecodeScratch::new();
            let base = LIVE.load(Relaxed);
            PEAK.store(base, Relaxed);
            let request = Request::decode(text.as_bytes(), &mut scratch, limits);
            assert!(request.is_ok(), "{request:?}");
            drop(request);
            let peak = PEAK.load(Relaxed) - base;
            let kept = LIVE.load(Relaxed).saturating_sub(base);
            assert!(peak <= FIXED + PEAK_PER_BYTE * text.len(), "{len}: peak {peak} B");
            if text.len() > SCRATCH_RETAIN_BYTES {
                assert_eq!(kept, 0, "{len}: a large frame's buffers are given back");
            } else {
                assert!(
                    kept <= FIXED + PEAK_PER_BYTE * SCRATCH_RETAIN_BYTES,
                    "{len}: kept {kept} B"
                );
            }
        }
    }
}
