//! The data of a run's results (`results.json`): run information, variants, samples,
//! regions read and where fetched bytes went. Rendering is `report`'s; computing the
//! byte breakdown is `attribution`'s.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::access::AccessReport;
use super::link::LinkCheck;
use super::micro::MicroResults;
use super::plan::{Cell, LinkProfile};
use super::runner::Sample;

/// One file's share of a run's fetched bytes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FileFetch {
    /// Layer index, bottom first.
    pub layer: usize,
    /// Path in the layer.
    pub path: String,
    /// Compressed bytes of its chunks that were fetched (counted per request).
    pub fetched: u64,
    /// Bytes of it the workload reads (0: fetched but never read).
    pub read: u64,
    /// File size.
    pub size: u64,
}

/// Where one run's fetched bytes went.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FetchBreakdown {
    /// Image.
    pub image: String,
    /// Workload.
    pub workload: String,
    /// Cell.
    pub cell: Option<Cell>,
    /// Round of the sample analysed (the one with the median link bytes).
    pub round: usize,
    /// HTTP requests.
    pub requests: usize,
    /// Blob GETs with a Range header.
    pub range_requests: usize,
    /// Blob GETs without one (whole blobs).
    pub whole_blob_requests: usize,
    /// Bytes asked for in blob GETs (sum over requests; overlaps count twice).
    pub blob_bytes: u64,
    /// Of those, bytes of chunks the workload touches.
    pub needed: u64,
    /// Bytes of chunks it does not touch.
    pub unneeded: u64,
    /// Bytes outside any chunk (TOC, footer, tar headers, padding).
    pub other: u64,
    /// Bytes of blobs the variant does not have an index for (e.g. not eStargz).
    pub unknown: u64,
    /// Compressed bytes of all chunks the workload touches in this variant (the floor).
    pub needed_total: u64,
    /// The files that cost the most, most fetched first.
    pub top_files: Vec<FileFetch>,
}

/// Where and how a run happened.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunInfo {
    /// Start time (UTC, `YYYYMMDD-HHMMSS`).
    pub started: String,
    /// Wall-clock seconds of the whole run.
    pub duration_s: f64,
    /// Load averages (1, 5, 15 min) when the run started.
    pub load_start: Vec<f64>,
    /// Load averages when it ended.
    pub load_end: Vec<f64>,
    /// `uname -r`.
    pub kernel: String,
    /// CPUs online.
    pub cpus: usize,
    /// Link RTT in ms.
    pub rtt_ms: u64,
    /// Link rate in Mbit/s.
    pub rate_mbit: u32,
    /// Rounds.
    pub runs: usize,
    /// The command line.
    pub command: String,
    /// Tool versions.
    pub versions: BTreeMap<String, String>,
    /// `broad` for `--suite broad` (the goal tables are rendered), empty otherwise.
    #[serde(default)]
    pub suite: String,
    /// The link profile of this run.
    #[serde(default)]
    pub profile: Option<LinkProfile>,
    /// What the link delivered when checked at the start of the profile.
    #[serde(default)]
    pub link_check: Option<LinkCheck>,
}

/// An image variant as reported.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VariantReport {
    /// `repo:tag`.
    pub repo_tag: String,
    /// How it was made.
    pub how: String,
    /// Seconds to make it (0 = from cache).
    pub build_secs: f64,
    /// Compressed bytes of all layers.
    pub compressed_bytes: u64,
    /// Layer count.
    pub layers: usize,
}

/// Everything a run produced (`results.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Results {
    /// Run information.
    pub info: RunInfo,
    /// Fallbacks and skipped columns.
    pub notes: Vec<String>,
    /// image → variant tag → variant.
    pub variants: BTreeMap<String, BTreeMap<String, VariantReport>>,
    /// The cells (columns), in order.
    pub cells: Vec<Cell>,
    /// Every sample.
    pub samples: Vec<Sample>,
    /// Micro-benchmarks, when run.
    pub micro: Option<MicroResults>,
    /// Regions read per image and workload (the costliest files only).
    #[serde(default)]
    pub access: BTreeMap<String, BTreeMap<String, AccessReport>>,
    /// Where the fetched bytes of lazy runs went.
    #[serde(default)]
    pub fetch: Vec<FetchBreakdown>,
}

/// The results of several link profiles (`results.json` of a multi-profile run).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SuiteResults {
    /// One run per profile, in order.
    pub profiles: Vec<Results>,
}
