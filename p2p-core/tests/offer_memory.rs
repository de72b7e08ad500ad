//! What a hostile offer costs the receiver in memory, measured by a counting global
//! allocator (this test binary's only test, so nothing else allocates meanwhile).
//! Issue 10, item 3: a 32 MiB offer used to cost 326 MiB before any check refused it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::BytesMut;
use p2p_core::fs::output::OutputDir;
use p2p_core::wire::{Entry, EntryKind, FrameCodec, Message, Offer, Timestamp, MAX_FRAME_LEN};
use p2p_core::Receiver;
use tokio_util::codec::{Decoder, Encoder};

struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = NOW.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        NOW.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MIB: usize = 1 << 20;

#[test]
fn the_largest_offer_costs_a_bounded_multiple_of_its_frame() {
    // As many entries as fit a maximal frame: short distinct names of empty files.
    let entries: Vec<Entry> = (0..1_000_000u32)
        .map(|i| Entry {
            path: format!("{i:0>20}"),
            kind: EntryKind::File { size: 0 },
            mode: 0o644,
            mtime: Timestamp::default(),
        })
        .collect();
    let offer = Message::Offer(Offer {
        transfer_id: uuid::Uuid::new_v4(),
        entries,
    });
    let mut frame = BytesMut::new();
    FrameCodec.encode(offer, &mut frame).unwrap();
    let frame_len = frame.len();
    assert!(frame_len <= MAX_FRAME_LEN + 4);
    let tmp = tempfile::tempdir().unwrap();

    let base = NOW.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let Some(Message::Offer(offer)) = FrameCodec.decode(&mut frame).unwrap() else {
        panic!("an offer");
    };
    drop(frame);
    let entries: std::sync::Arc<[Entry]> = offer.entries.into();
    let output =
        OutputDir::prepare(tmp.path(), offer.transfer_id, &entries, false, 1 << 20).unwrap();
    let receiver = Receiver::for_entries(
        offer.transfer_id,
        entries,
        &p2p_core::config::default_config(),
        output.resume_info().clone(),
    );
    let peak = PEAK.load(Ordering::Relaxed) - base;
    drop((receiver, output));
    println!(
        "offer frame {:.1} MiB: peak {:.1} MiB above the baseline",
        frame_len as f64 / MIB as f64,
        peak as f64 / MIB as f64
    );
    assert!(
        peak <= 6 * frame_len,
        "peak {} MiB for a {} MiB frame",
        peak / MIB,
        frame_len / MIB
    );
}
