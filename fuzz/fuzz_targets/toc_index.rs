//! TOC JSON -> LayerIndex: arbitrary bytes must give an index or a typed error, never a
//! panic, hang or large allocation.
#![no_main]

use estargz::{Footer, Format, LayerIndex};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let footer = Footer {
        format: Format::Estargz,
        toc_offset: 1 << 20,
        toc_compressed_size: 100,
        toc_uncompressed_size: None,
        blob_size: (1 << 20) + 151,
    };
    if let Ok(ix) = LayerIndex::from_toc_json(data, &footer, &common::options()) {
        common::walk(&ix);
    }
});
