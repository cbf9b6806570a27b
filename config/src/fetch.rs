//! `[fetch]`: how layer bytes are brought from registries: prefetch and background fetch,
//! timeouts, retries, concurrency, and how chunk reads are merged into HTTP requests.

use std::time::Duration;

use documented::DocumentedFields;
use serde::{Deserialize, Serialize};

use crate::error::{Invalid, KeyPath};

/// `[fetch]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DocumentedFields)]
#[serde(deny_unknown_fields, default)]
pub struct FetchConfig {
    /// Fetch a layer's prioritized files (the eStargz prefetch landmark) right after mounting.
    pub prefetch: bool,
    /// Whether a mount waits for its prefetch (at most `prefetch_timeout`) before it is
    /// reported ready. Off: the mount is ready at once, the prefetch runs as one request
    /// alongside the rest of the pull, and reads of prefetched files wait for it.
    pub wait_for_prefetch: bool,
    /// How long a mount waits for its prefetch when `wait_for_prefetch` is on.
    #[serde(with = "crate::units::duration")]
    pub prefetch_timeout: Duration,
    /// When a program or shared library is read from a lazy layer, also fetch what the
    /// dynamic loader will load next: its interpreter, `/etc/ld.so.cache` and the shared
    /// libraries it names (`DT_NEEDED`, found in the image's lazy layers), all at once
    /// instead of one round trip each as the loader gets to them.
    pub elf_read_ahead: bool,
    /// How much of each ELF file `elf_read_ahead` and `program_read_ahead` fetch:
    /// `"loader"`: the parts the kernel and the dynamic loader read or touch while loading
    /// it (headers, dynamic section, symbol, string, version and relocation tables, the
    /// writable segments, the page of its init code), chunk by chunk; code and read-only
    /// data come on demand as the program runs. `"whole"`: whole files (only the first and
    /// last chunks of files over 32 MiB).
    pub elf_read_ahead_extent: ElfExtent,
    /// When a script is read from a lazy layer, also fetch the interpreter its `#!` line
    /// names (for `/usr/bin/env NAME`, NAME in the default `PATH`) and, for a shell
    /// script, the programs its commands name (up to 32, looked up in the default `PATH`;
    /// builtins and words with expansions left out), each with what the loader needs for
    /// it (see `elf_read_ahead`, which must be on too). Costs the bytes of commands in
    /// branches that do not run.
    pub script_read_ahead: bool,
    /// When an image's top layer is mounted lazily, fetch the program the image runs by
    /// default (`argv[0]` of its config's Entrypoint, else Cmd, looked up in its `PATH`)
    /// and what the loader needs for it (see `elf_read_ahead`), while the pull and the
    /// container creation go on. Costs those bytes when a container runs something else.
    pub program_read_ahead: bool,
    /// When a small file is fetched on demand, also fetch the small files of the same
    /// directory that follow it in the blob, up to this many compressed bytes, in the same
    /// request (files of a directory are often read together: modules of a package,
    /// locale files). 0 = off.
    #[serde(with = "crate::units::size")]
    pub neighbour_read_ahead: u64,
    /// After an on-demand fetch in the middle of a file, also fetch the chunks that follow:
    /// `"sequential"`: only when the file is being read in order (this fetch starts
    /// within or right after the file's previous on-demand fetch and the chunks fetched
    /// ahead of it), `"always"`: after every on-demand fetch,
    /// `"off"`: never. Files that are mapped and paged in (libraries) fault here and there:
    /// fetching ahead of every fault costs a chunk each time.
    pub next_chunk_read_ahead: NextChunk,
    /// Most decoded bytes fetched ahead after an on-demand fetch (`next_chunk_read_ahead`;
    /// at least one chunk). For `"sequential"` the window starts at the size of the fetch
    /// and doubles with each further fetch in order, up to this.
    #[serde(with = "crate::units::size")]
    pub next_chunk_window: u64,
    /// When a second small file of a directory is fetched on demand, also fetch the other
    /// small files (single chunks of at most 256 KiB compressed) of that directory that are
    /// not local yet, up to this many compressed bytes (files of a package imported one
    /// after the other cost one round trip each otherwise). 0 = off.
    #[serde(with = "crate::units::size")]
    pub directory_read_ahead: u64,
    /// Files fetched as soon as a layer that has them is mounted (absolute paths in the
    /// image, symlinks followed within the layer): what container starts read before the
    /// application runs (containerd and runc read `/etc/passwd` and `/etc/group` of the
    /// rootfs; the C library reads `/etc/localtime` for local time). Empty: none.
    pub start_files: Vec<String>,
    /// Fetch the rest of each mounted layer in the background, so later reads are local.
    pub background_fetch: bool,
    /// Background fetch requests in flight at once, over all layers.
    pub background_concurrency: usize,
    /// Silence window of background fetch: it starts only once no layer of the daemon has
    /// waited on the network (reads, prefetch, mounting a layer) for this long, and pauses
    /// again as soon as one does; the link is left to what applications wait for.
    #[serde(with = "crate::units::duration")]
    pub background_pause_after_read: Duration,
    /// Compressed bytes asked for in one background request (smaller: an on-demand read
    /// arriving meanwhile waits less behind it; larger: fewer requests).
    #[serde(with = "crate::units::size")]
    pub background_batch_size: u64,
    /// Timeout of one HTTP request (connect, headers and body). Per-host overrides exist.
    #[serde(with = "crate::units::duration")]
    pub request_timeout: Duration,
    /// Overall bound of one read, retries included; a read that cannot finish in time fails
    /// with an error naming the registry host (no hangs). Counted from the first request
    /// for the data: the kernel's retry of a failed page and reads that join a fetch in
    /// flight end within it too.
    #[serde(with = "crate::units::duration")]
    pub read_timeout: Duration,
    /// After a chunk's fetch failed, reads of that chunk fail at once (EIO) for this long
    /// unless a request to its registry succeeds meanwhile (the registry is back): the
    /// kernel asks again for a page whose read failed, and an application may retry in a
    /// loop; neither waits `read_timeout` again. A read more than 250 ms after the failure
    /// first waits up to 500 ms for a probe of the registry (served if it is back). 0s = off.
    #[serde(with = "crate::units::duration")]
    pub failure_hold: Duration,
    /// Bound of the lazy-mount decision of a Prepare: the layer's footer and TOC (and its
    /// prefetch, with `wait_for_prefetch`) must arrive within this long, else the layer is
    /// pulled normally (fallback).
    #[serde(with = "crate::units::duration")]
    pub mount_timeout: Duration,
    /// After a registry host timed out or refused a connection, Prepares of layers on it
    /// fall back at once for this long, unless a request to it succeeds meanwhile: the
    /// later layers of a pull do not each wait `mount_timeout` again. 0s = off.
    #[serde(with = "crate::units::duration")]
    pub host_failure_hold: Duration,
    /// Retries of a failed request (connection errors, 5xx, 429, corrupted data) before the
    /// read fails.
    pub max_retries: u32,
    /// First retry delay; doubled per retry with random jitter.
    #[serde(with = "crate::units::duration")]
    pub min_backoff: Duration,
    /// Largest retry delay.
    #[serde(with = "crate::units::duration")]
    pub max_backoff: Duration,
    /// HTTP requests in flight at once per registry host (on-demand reads go first).
    pub max_concurrent_requests: usize,
    /// Chunk ranges closer than this are fetched as one range (the gap bytes are fetched and
    /// discarded). Small by default: in a multi-range request a separate range costs only a
    /// part header; raise it for registries without multi-range support.
    #[serde(with = "crate::units::size")]
    pub coalesce_gap: u64,
    /// Ask for several ranges in one request (`Range: bytes=a-b,c-d`) when the server supports
    /// it; servers that do not are detected and served one range per request.
    pub multi_range: bool,
    /// Fraction (0.0-1.0) of a layer read on demand after which the whole rest of the blob is
    /// streamed in one request instead of fetched chunk by chunk. 1.0 = never stream.
    pub stream_threshold: f64,
}

/// `fetch.elf_read_ahead_extent`: how much of an ELF file is read ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ElfExtent {
    /// What the kernel and the dynamic loader touch while loading the file.
    Loader,
    /// The whole file (first and last chunks of files over 32 MiB).
    Whole,
}

/// `fetch.next_chunk_read_ahead`: when the chunks after an on-demand fetch are fetched too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NextChunk {
    /// When the file is read in order.
    Sequential,
    /// After every on-demand fetch.
    Always,
    /// Never.
    Off,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            prefetch: true,
            wait_for_prefetch: false,
            prefetch_timeout: Duration::from_secs(10),
            elf_read_ahead: true,
            script_read_ahead: true,
            elf_read_ahead_extent: ElfExtent::Loader,
            program_read_ahead: true,
            neighbour_read_ahead: 32 << 10,
            next_chunk_read_ahead: NextChunk::Sequential,
            next_chunk_window: 4 << 20,
            directory_read_ahead: 0,
            start_files: vec![
                "/etc/passwd".into(),
                "/etc/group".into(),
                "/etc/localtime".into(),
            ],
            background_fetch: true,
            background_concurrency: 2,
            background_pause_after_read: Duration::from_secs(2),
            background_batch_size: 1 << 20,
            request_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            failure_hold: Duration::from_secs(5),
            mount_timeout: Duration::from_secs(20),
            host_failure_hold: Duration::from_secs(60),
            max_retries: 5,
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            max_concurrent_requests: 16,
            coalesce_gap: 4 << 10,
            multi_range: true,
            stream_threshold: 0.5,
        }
    }
}

impl FetchConfig {
    pub(crate) fn validate(&self, at: &KeyPath) -> Result<(), Invalid> {
        let nonzero = [
            ("request_timeout", self.request_timeout),
            ("read_timeout", self.read_timeout),
            ("prefetch_timeout", self.prefetch_timeout),
            ("mount_timeout", self.mount_timeout),
        ];
        for (key, d) in nonzero {
            if d.is_zero() {
                return Err(Invalid::new(at.key(key), "must be greater than 0s"));
            }
        }
        if self.start_files.len() > 64 {
            return Err(Invalid::new(at.key("start_files"), "at most 64 files"));
        }
        if let Some(f) = self
            .start_files
            .iter()
            .find(|f| !f.starts_with('/') || f.contains('\0'))
        {
            return Err(Invalid::new(
                at.key("start_files"),
                format!("{f:?} is not an absolute path"),
            ));
        }
        if self.min_backoff > self.max_backoff {
            return Err(Invalid::new(
                at.key("min_backoff"),
                "must not be greater than `max_backoff`",
            ));
        }
        if self.max_concurrent_requests == 0 || self.max_concurrent_requests > 1024 {
            return Err(Invalid::new(
                at.key("max_concurrent_requests"),
                "must be between 1 and 1024",
            ));
        }
        if self.background_concurrency == 0 || self.background_concurrency > 1024 {
            return Err(Invalid::new(
                at.key("background_concurrency"),
                "must be between 1 and 1024",
            ));
        }
        if self.background_batch_size == 0 || self.background_batch_size > 64 << 20 {
            return Err(Invalid::new(
                at.key("background_batch_size"),
                "must be between 1 byte and 64 MiB",
            ));
        }
        if self.next_chunk_window > 1 << 30 {
            return Err(Invalid::new(
                at.key("next_chunk_window"),
                "must be at most 1 GiB",
            ));
        }
        if self.directory_read_ahead > 1 << 30 {
            return Err(Invalid::new(
                at.key("directory_read_ahead"),
                "must be at most 1 GiB",
            ));
        }
        if self.max_retries > 100 {
            return Err(Invalid::new(at.key("max_retries"), "must be at most 100"));
        }
        if !(0.0..=1.0).contains(&self.stream_threshold) {
            return Err(Invalid::new(
                at.key("stream_threshold"),
                "must be a fraction between 0.0 and 1.0",
            ));
        }
        Ok(())
    }
}
