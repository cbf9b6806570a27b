//! Lazy eStargz layers, layered like a storage stack:
//! registry client (byte ranges of a blob) → chunk fetcher and chunk cache (verified,
//! decompressed chunks) → layer (TOC index + chunk reads) → FUSE adapter and prefetch.
