//! Whole blob -> footer -> TOC -> index -> chunk reads: arbitrary bytes must give a
//! layer or a typed error, never a panic, hang or large allocation.
#![no_main]

use estargz::{open, OpenOptions};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    // The footer parser alone, on every suffix length.
    for n in 0..=data.len().min(estargz::MAX_FOOTER_SIZE) {
        let _ = estargz::parse_footer(&data[data.len() - n..], data.len() as u64);
    }
    let opts = OpenOptions {
        index: common::options(),
        expected_toc_digest: None,
    };
    let data_vec = data.to_vec();
    let Ok(layer) = open(&data_vec, &opts) else { return };
    common::walk(&layer.index);
    // Read every chunk (bounded: real data only, the TOC cannot force big buffers).
    let mut budget = 64u32;
    for c in layer.index.chunks_in_blob_order() {
        if budget == 0 {
            break;
        }
        budget -= 1;
        let _ = layer.read_chunk(&data_vec, &c);
    }
    let _ = layer.verify_all(&data_vec);
});
