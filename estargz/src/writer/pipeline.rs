//! Parallel, order-preserving compression of segments.
//!
//! The producer (the tar reader) cuts the uncompressed stream into segments, each to
//! become one gzip member or zstd frame, and hands them over in jobs of a few segments.
//! Worker threads compress jobs concurrently; one collector thread writes the results
//! in order, hashes the blob and records where each segment starts. A fixed number of
//! tokens bounds the jobs in flight, so memory does not grow with the layer size.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use flate2::{Compress, FlushCompress, Status};
use sha2::{Digest as _, Sha256};

use super::error::WriteError;
use crate::footer::Compression;

/// A batch of consecutive segments.
pub(crate) struct Job {
    seq: u64,
    data: Vec<u8>,
    /// End offset in `data` of each segment.
    ends: Vec<usize>,
}

struct Done {
    seq: u64,
    out: Vec<u8>,
    lens: Vec<u64>,
}

/// What the collector hands back.
pub(crate) struct Written {
    /// Compressed start offset of every segment, in order.
    pub segment_offsets: Vec<u64>,
    /// Bytes written.
    pub size: u64,
    /// Running hash of the bytes written.
    pub hasher: Sha256,
}

/// Compression settings for one member/frame.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Codec {
    pub compression: Compression,
    pub level: u32,
}

/// A reusable per-thread compressor.
pub(crate) enum Compressor {
    Gzip(Box<Compress>, u32),
    Zstd(Box<zstd::bulk::Compressor<'static>>, Vec<u8>),
}

impl Compressor {
    pub(crate) fn new(codec: Codec) -> Result<Self, WriteError> {
        Ok(match codec.compression {
            Compression::Gzip => Compressor::Gzip(
                Box::new(Compress::new(flate2::Compression::new(codec.level), false)),
                codec.level,
            ),
            Compression::Zstd => {
                let c = zstd::bulk::Compressor::new(codec.level as i32)
                    .map_err(WriteError::Compress)?;
                Compressor::Zstd(Box::new(c), Vec::new())
            }
        })
    }

    /// Appends `data` compressed as one gzip member or zstd frame to `out`.
    pub(crate) fn member(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), WriteError> {
        match self {
            Compressor::Gzip(c, level) => {
                // gzip header as Go writes it: no name, MTIME 0, XFL by level, OS unknown.
                let xfl = match *level {
                    9 => 2,
                    1 => 4,
                    _ => 0,
                };
                out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 0xff]);
                c.reset();
                let mut input = data;
                loop {
                    out.reserve(input.len() / 2 + 4096);
                    let before = c.total_in();
                    let status = c
                        .compress_vec(input, out, FlushCompress::Finish)
                        .map_err(|e| WriteError::Compress(std::io::Error::other(e)))?;
                    input = &input[(c.total_in() - before) as usize..];
                    if status == Status::StreamEnd {
                        break;
                    }
                }
                let mut crc = flate2::Crc::new();
                crc.update(data);
                out.extend_from_slice(&crc.sum().to_le_bytes());
                out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            }
            Compressor::Zstd(c, scratch) => {
                scratch.clear();
                scratch.reserve(zstd::zstd_safe::compress_bound(data.len()));
                c.compress_to_buffer(data, scratch)
                    .map_err(WriteError::Compress)?;
                out.extend_from_slice(scratch);
            }
        }
        Ok(())
    }
}

/// The producer's handle on the pipeline.
pub(crate) struct Producer {
    jobs: SyncSender<Job>,
    tokens: Receiver<()>,
    seq: u64,
    /// Job being filled.
    pub(crate) data: Vec<u8>,
    ends: Vec<usize>,
    job_bytes: usize,
    /// Segments ended so far: the index the current segment will get.
    ended: u64,
}

impl Producer {
    /// Index of the segment currently being filled.
    pub(crate) fn segment_index(&self) -> u64 {
        self.ended
    }

    /// Ends the current segment (if it has bytes), and ships the job when it is big
    /// enough.
    pub(crate) fn end_segment(&mut self) -> Result<(), WriteError> {
        let last = self.ends.last().copied().unwrap_or(0);
        if self.data.len() > last {
            self.ends.push(self.data.len());
            self.ended += 1;
            if self.data.len() >= self.job_bytes || self.ends.len() >= 1024 {
                self.ship()?;
            }
        }
        Ok(())
    }

    /// Bytes in the current (unfinished) segment.
    pub(crate) fn segment_len(&self) -> usize {
        self.data.len() - self.ends.last().copied().unwrap_or(0)
    }

    fn ship(&mut self) -> Result<(), WriteError> {
        if self.ends.is_empty() {
            return Ok(());
        }
        self.tokens
            .recv()
            .map_err(|_| WriteError::PipelineStopped)?;
        let job = Job {
            seq: self.seq,
            data: std::mem::replace(
                &mut self.data,
                Vec::with_capacity(self.job_bytes + (1 << 20)),
            ),
            ends: std::mem::take(&mut self.ends),
        };
        self.seq += 1;
        self.jobs.send(job).map_err(|_| WriteError::PipelineStopped)
    }

    /// Ends the last segment and ships everything.
    pub(crate) fn finish(mut self) -> Result<(), WriteError> {
        self.end_segment()?;
        self.ship()
    }
}

/// Runs `produce` with a [`Producer`] while workers compress and a collector writes to
/// `out`. Returns the producer's value and what was written.
pub(crate) fn run<W, T>(
    out: &mut W,
    codec: Codec,
    threads: usize,
    job_bytes: usize,
    produce: impl FnOnce(&mut Producer) -> Result<T, WriteError>,
) -> Result<(T, Written), WriteError>
where
    W: Write + Send,
{
    let threads = threads.max(1);
    let in_flight = 2 * threads + 2;
    let (job_tx, job_rx) = mpsc::sync_channel::<Job>(in_flight);
    let job_rx = Arc::new(Mutex::new(job_rx));
    let (done_tx, done_rx) = mpsc::channel::<Result<Done, WriteError>>();
    let (token_tx, token_rx) = mpsc::sync_channel::<()>(in_flight);
    for _ in 0..in_flight {
        token_tx.send(()).expect("capacity");
    }
    std::thread::scope(|s| {
        for _ in 0..threads {
            let job_rx = Arc::clone(&job_rx);
            let done_tx = done_tx.clone();
            s.spawn(move || worker(codec, &job_rx, &done_tx));
        }
        drop(done_tx);
        let collector = s.spawn(move || collect(out, &done_rx, &token_tx));
        let mut producer = Producer {
            jobs: job_tx,
            tokens: token_rx,
            seq: 0,
            data: Vec::with_capacity(job_bytes + (1 << 20)),
            ends: Vec::new(),
            job_bytes,
            ended: 0,
        };
        // The producer must be gone (closing the job channel) before joining the
        // collector, or workers would wait for jobs forever.
        let produced = match produce(&mut producer) {
            Ok(v) => producer.finish().map(|()| v),
            Err(e) => {
                drop(producer);
                Err(e)
            }
        };
        let written = collector.join().map_err(|_| WriteError::PipelineStopped)?;
        match (produced, written) {
            (Ok(v), Ok(w)) => Ok((v, w)),
            // A collector/worker failure surfaces in the producer as PipelineStopped;
            // report the root cause.
            (Err(WriteError::PipelineStopped), Err(e)) => Err(e),
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(e),
        }
    })
}

fn worker(
    codec: Codec,
    jobs: &Mutex<Receiver<Job>>,
    done: &mpsc::Sender<Result<Done, WriteError>>,
) {
    let mut comp = match Compressor::new(codec) {
        Ok(c) => c,
        Err(e) => {
            let _ = done.send(Err(e));
            return;
        }
    };
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let mut out = Vec::with_capacity(job.data.len() / 2 + 64);
        let mut lens = Vec::with_capacity(job.ends.len());
        let mut start = 0;
        let mut result = Ok(());
        for &end in &job.ends {
            let before = out.len();
            if let Err(e) = comp.member(&job.data[start..end], &mut out) {
                result = Err(e);
                break;
            }
            lens.push((out.len() - before) as u64);
            start = end;
        }
        let msg = result.map(|()| Done {
            seq: job.seq,
            out,
            lens,
        });
        if done.send(msg).is_err() {
            return;
        }
    }
}

fn collect<W: Write>(
    out: &mut W,
    done: &Receiver<Result<Done, WriteError>>,
    tokens: &SyncSender<()>,
) -> Result<Written, WriteError> {
    let mut pending = BTreeMap::new();
    let mut next = 0u64;
    let mut w = Written {
        segment_offsets: Vec::new(),
        size: 0,
        hasher: Sha256::new(),
    };
    for msg in done.iter() {
        let d = msg?;
        pending.insert(d.seq, d);
        while let Some(d) = pending.remove(&next) {
            out.write_all(&d.out).map_err(WriteError::WriteOutput)?;
            w.hasher.update(&d.out);
            for len in d.lens {
                w.segment_offsets.push(w.size);
                w.size += len;
            }
            next += 1;
            let _ = tokens.send(());
        }
    }
    if !pending.is_empty() {
        return Err(WriteError::PipelineStopped);
    }
    Ok(w)
}
