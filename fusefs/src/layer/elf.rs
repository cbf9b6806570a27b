//! What a dynamically linked ELF file needs before it can run: its program interpreter
//! (`PT_INTERP`, the dynamic loader), the shared libraries it names (`DT_NEEDED`) and where
//! it asks for them to be looked up (`DT_RUNPATH` / `DT_RPATH`), read from its program
//! headers and dynamic section ([`needs`]); and which parts of the file the kernel and the
//! loader touch while loading it ([`loader_regions`]). Only those few structures are read,
//! through a `read(offset, len)` callback that may answer "not local yet" ([`ElfError::Incomplete`]);
//! every size is bounded, so a hostile file costs little and never panics.

use thiserror::Error;

/// Most program headers looked at.
const MAX_PHNUM: usize = 256;
/// Largest interpreter path read.
const MAX_INTERP: u64 = 4096;
/// Largest dynamic section read.
const MAX_DYNAMIC: u64 = 64 << 10;
/// Longest name or search path read from the string table.
const MAX_NAME: u64 = 4096;
/// Most `DT_NEEDED` names kept.
const MAX_NEEDED: usize = 128;

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_STRSZ: u64 = 10;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;

/// Why no [`ElfNeeds`] came out.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ElfError {
    /// Not an ELF file (or not one that is loaded: not an executable or shared object).
    #[error("not an ELF executable or shared object")]
    NotElf,
    /// Some bytes it needs are not available yet; ask again when more of the file is local.
    #[error("bytes {0}..+{1} are not available")]
    Incomplete(u64, usize),
    /// An ELF file with a structure that does not hold together.
    #[error("malformed ELF: {0}")]
    Malformed(&'static str),
}

/// What an ELF file needs from the file system to run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElfNeeds {
    /// `e_machine`.
    pub machine: u16,
    /// A 64-bit file.
    pub is_64: bool,
    /// The program interpreter, e.g. `/lib64/ld-linux-x86-64.so.2`.
    pub interpreter: Option<Vec<u8>>,
    /// `DT_NEEDED` names, in order.
    pub needed: Vec<Vec<u8>>,
    /// `DT_RUNPATH` (or, without it, `DT_RPATH`) directories, `$ORIGIN` not expanded.
    pub search_path: Vec<Vec<u8>>,
}

impl ElfNeeds {
    /// True when the loader has nothing to load for it (a static binary).
    pub fn is_empty(&self) -> bool {
        self.interpreter.is_none() && self.needed.is_empty()
    }
}

/// Byte order and word size of one file.
#[derive(Clone, Copy)]
struct Form {
    is_64: bool,
    big: bool,
}

impl Form {
    fn u16(self, b: &[u8], at: usize) -> u16 {
        let v = [b[at], b[at + 1]];
        if self.big {
            u16::from_be_bytes(v)
        } else {
            u16::from_le_bytes(v)
        }
    }
    fn u32(self, b: &[u8], at: usize) -> u32 {
        let v = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if self.big {
            u32::from_be_bytes(v)
        } else {
            u32::from_le_bytes(v)
        }
    }
    fn u64(self, b: &[u8], at: usize) -> u64 {
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[at..at + 8]);
        if self.big {
            u64::from_be_bytes(v)
        } else {
            u64::from_le_bytes(v)
        }
    }
    /// A word (`Elf32_Addr`/`Elf64_Addr`-sized).
    fn word(self, b: &[u8], at: usize) -> u64 {
        if self.is_64 {
            self.u64(b, at)
        } else {
            u64::from(self.u32(b, at))
        }
    }
}

struct Segment {
    kind: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

/// Reads exactly `len` bytes at `offset`, or fails.
fn read_exact(
    read: &mut dyn FnMut(u64, usize) -> Option<Vec<u8>>,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>, ElfError> {
    let b = read(offset, len).ok_or(ElfError::Incomplete(offset, len))?;
    if b.len() < len {
        return Err(ElfError::Malformed(
            "a structure runs past the end of the file",
        ));
    }
    Ok(b)
}

/// The ELF header (first 64 bytes) and its class and byte order; `NotElf` unless it is an
/// executable or shared object (ET_EXEC or ET_DYN: what the kernel and the loader map).
fn header(
    read: &mut dyn FnMut(u64, usize) -> Option<Vec<u8>>,
) -> Result<(Vec<u8>, Form), ElfError> {
    let ident = read(0, 64).ok_or(ElfError::Incomplete(0, 64))?;
    if ident.len() < 52 || &ident[..4] != b"\x7fELF" {
        return Err(ElfError::NotElf);
    }
    let form = match (ident[4], ident[5]) {
        (1, 1) => Form {
            is_64: false,
            big: false,
        },
        (1, 2) => Form {
            is_64: false,
            big: true,
        },
        (2, 1) => Form {
            is_64: true,
            big: false,
        },
        (2, 2) => Form {
            is_64: true,
            big: true,
        },
        _ => return Err(ElfError::NotElf),
    };
    if form.is_64 && ident.len() < 64 {
        return Err(ElfError::NotElf);
    }
    // ET_EXEC or ET_DYN: what the kernel and the loader map.
    if !matches!(form.u16(&ident, 16), 2 | 3) {
        return Err(ElfError::NotElf);
    }
    Ok((ident, form))
}

/// Reads what the file behind `read` needs. `read(offset, len)` returns up to `len` bytes
/// (fewer only at the end of the file), or `None` when they are not available yet.
pub fn needs(read: &mut dyn FnMut(u64, usize) -> Option<Vec<u8>>) -> Result<ElfNeeds, ElfError> {
    let (ident, form) = header(read)?;
    let machine = form.u16(&ident, 18);
    let (phoff, phentsize, phnum) = if form.is_64 {
        (
            form.u64(&ident, 32),
            form.u16(&ident, 54) as usize,
            form.u16(&ident, 56) as usize,
        )
    } else {
        (
            u64::from(form.u32(&ident, 28)),
            form.u16(&ident, 42) as usize,
            form.u16(&ident, 44) as usize,
        )
    };
    let min_ent = if form.is_64 { 56 } else { 32 };
    if phnum == 0 {
        return Ok(ElfNeeds {
            machine,
            is_64: form.is_64,
            ..Default::default()
        });
    }
    if phentsize < min_ent || phnum > MAX_PHNUM {
        return Err(ElfError::Malformed("program header table"));
    }
    let table = read_exact(read, phoff, phentsize * phnum)?;
    let segments: Vec<Segment> = (0..phnum)
        .map(|i| {
            let b = &table[i * phentsize..];
            if form.is_64 {
                Segment {
                    kind: form.u32(b, 0),
                    offset: form.u64(b, 8),
                    vaddr: form.u64(b, 16),
                    filesz: form.u64(b, 32),
                }
            } else {
                Segment {
                    kind: form.u32(b, 0),
                    offset: u64::from(form.u32(b, 4)),
                    vaddr: u64::from(form.u32(b, 8)),
                    filesz: u64::from(form.u32(b, 16)),
                }
            }
        })
        .collect();
    let mut out = ElfNeeds {
        machine,
        is_64: form.is_64,
        ..Default::default()
    };
    if let Some(s) = segments.iter().find(|s| s.kind == PT_INTERP) {
        if s.filesz == 0 || s.filesz > MAX_INTERP {
            return Err(ElfError::Malformed("interpreter path"));
        }
        let b = read_exact(read, s.offset, s.filesz as usize)?;
        let path = b.split(|&c| c == 0).next().unwrap_or_default();
        if path.is_empty() {
            return Err(ElfError::Malformed("empty interpreter path"));
        }
        out.interpreter = Some(path.to_vec());
    }
    let Some(dynamic) = segments.iter().find(|s| s.kind == PT_DYNAMIC) else {
        return Ok(out);
    };
    let ent = if form.is_64 { 16 } else { 8 };
    let len = dynamic.filesz.min(MAX_DYNAMIC) as usize / ent * ent;
    let dynb = read_exact(read, dynamic.offset, len)?;
    let (mut strtab, mut strsz) = (None, None);
    let (mut needed, mut runpath, mut rpath) = (Vec::new(), None, None);
    for e in dynb.chunks_exact(ent) {
        let (tag, val) = (form.word(e, 0), form.word(e, ent / 2));
        match tag {
            DT_NULL => break,
            DT_NEEDED if needed.len() < MAX_NEEDED => needed.push(val),
            DT_STRTAB => strtab = Some(val),
            DT_STRSZ => strsz = Some(val),
            DT_RUNPATH => runpath = Some(val),
            DT_RPATH => rpath = Some(val),
            _ => {}
        }
    }
    if needed.is_empty() && runpath.is_none() && rpath.is_none() {
        return Ok(out);
    }
    let (Some(strtab), Some(strsz)) = (strtab, strsz) else {
        return Err(ElfError::Malformed(
            "dynamic section without a string table",
        ));
    };
    // DT_STRTAB is an address: find the file offset through the loadable segments.
    let at = segments
        .iter()
        .filter(|s| s.kind == PT_LOAD)
        .find(|s| strtab >= s.vaddr && strtab - s.vaddr < s.filesz)
        .and_then(|s| s.offset.checked_add(strtab - s.vaddr))
        .ok_or(ElfError::Malformed(
            "string table outside the loaded segments",
        ))?;
    // Each name is read where it is (a large library's string table runs to megabytes and
    // its needed names may sit anywhere in it).
    let mut string = |off: u64| -> Result<Vec<u8>, ElfError> {
        if off >= strsz {
            return Err(ElfError::Malformed("string offset past the string table"));
        }
        let len = (strsz - off).min(MAX_NAME) as usize;
        let rest = read_exact(read, at.saturating_add(off), len)?;
        let s = rest.split(|&c| c == 0).next().unwrap_or_default();
        Ok(s.to_vec())
    };
    for n in needed {
        let s = string(n)?;
        if !s.is_empty() {
            out.needed.push(s);
        }
    }
    if let Some(p) = runpath.or(rpath) {
        out.search_path = string(p)?
            .split(|&c| c == b':')
            .filter(|d| !d.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
    }
    Ok(out)
}

/// The parts of an ELF file the kernel and the dynamic loader read or touch while loading
/// it, before any of its code runs (file ranges): the headers, the interpreter path, the
/// dynamic section, the loader's tables (hash, symbols, strings, versions, relocations,
/// contiguous at the start of the first segment in files made by the usual linkers), the
/// writable segments (relocation targets, GOT, data) and the page of `DT_INIT`. Code and
/// read-only data are touched only as the program runs. `complete` is false when the
/// dynamic section was not readable yet (the tables are then missing from `regions`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoaderRegions {
    pub regions: Vec<std::ops::Range<u64>>,
    pub complete: bool,
}

const PF_W: u32 = 2;
const DT_PLTRELSZ: u64 = 2;
const DT_HASH: u64 = 4;
const DT_SYMTAB: u64 = 6;
const DT_RELA: u64 = 7;
const DT_RELASZ: u64 = 8;
const DT_INIT: u64 = 12;
const DT_REL: u64 = 17;
const DT_RELSZ: u64 = 18;
const DT_JMPREL: u64 = 23;
const DT_RELRSZ: u64 = 35;
const DT_RELR: u64 = 36;
const DT_GNU_HASH: u64 = 0x6fff_fef5;
const DT_VERSYM: u64 = 0x6fff_fff0;
const DT_VERDEF: u64 = 0x6fff_fffc;
const DT_VERNEED: u64 = 0x6fff_fffe;
/// Largest loader table span taken (a hostile file costs at most this much read-ahead).
const MAX_TABLES: u64 = 256 << 20;

/// See [`LoaderRegions`]. Fails only when the ELF header and program headers are not
/// readable (or it is not an ELF file that is loaded).
pub fn loader_regions(
    read: &mut dyn FnMut(u64, usize) -> Option<Vec<u8>>,
) -> Result<LoaderRegions, ElfError> {
    let (ident, form) = header(read)?;
    let (phoff, phentsize, phnum) = if form.is_64 {
        (
            form.u64(&ident, 32),
            form.u16(&ident, 54) as usize,
            form.u16(&ident, 56) as usize,
        )
    } else {
        (
            u64::from(form.u32(&ident, 28)),
            form.u16(&ident, 42) as usize,
            form.u16(&ident, 44) as usize,
        )
    };
    let min_ent = if form.is_64 { 56 } else { 32 };
    let mut out = LoaderRegions::default();
    let ehdr = if form.is_64 { 64 } else { 52 };
    if phnum == 0 {
        out.regions.push(0..ehdr);
        out.complete = true;
        return Ok(out);
    }
    if phentsize < min_ent || phnum > MAX_PHNUM {
        return Err(ElfError::Malformed("program header table"));
    }
    let table_end = phoff.saturating_add((phentsize * phnum) as u64);
    out.regions.push(0..table_end.max(ehdr));
    let table = read_exact(read, phoff, phentsize * phnum)?;
    // (kind, flags, offset, vaddr, filesz)
    let segs: Vec<(u32, u32, u64, u64, u64)> = (0..phnum)
        .map(|i| {
            let b = &table[i * phentsize..];
            if form.is_64 {
                (
                    form.u32(b, 0),
                    form.u32(b, 4),
                    form.u64(b, 8),
                    form.u64(b, 16),
                    form.u64(b, 32),
                )
            } else {
                (
                    form.u32(b, 0),
                    form.u32(b, 24),
                    u64::from(form.u32(b, 4)),
                    u64::from(form.u32(b, 8)),
                    u64::from(form.u32(b, 16)),
                )
            }
        })
        .collect();
    for &(kind, flags, off, _, filesz) in &segs {
        let keep =
            kind == PT_INTERP || kind == PT_DYNAMIC || (kind == PT_LOAD && flags & PF_W != 0);
        if keep && filesz > 0 {
            out.regions
                .push(off..off.saturating_add(filesz.min(MAX_TABLES)));
        }
    }
    let loads: Vec<_> = segs.iter().filter(|s| s.0 == PT_LOAD).collect();
    // vaddr -> (file offset, end of its segment in the file)
    let to_file = |addr: u64| {
        loads
            .iter()
            .find(|s| addr >= s.3 && addr - s.3 < s.4)
            .map(|s| (s.2 + (addr - s.3), s.2 + s.4))
    };
    let Some(&(_, _, doff, _, dsize)) = segs.iter().find(|s| s.0 == PT_DYNAMIC) else {
        out.complete = true;
        return Ok(out);
    };
    let ent = if form.is_64 { 16 } else { 8 };
    let len = dsize.min(MAX_DYNAMIC) as usize / ent * ent;
    let Some(dynb) = read(doff, len).filter(|b| b.len() == len) else {
        return Ok(out);
    };
    let mut tags: Vec<(u64, u64)> = Vec::new();
    for e in dynb.chunks_exact(ent) {
        let (tag, val) = (form.word(e, 0), form.word(e, ent / 2));
        if tag == DT_NULL {
            break;
        }
        tags.push((tag, val));
    }
    let tag = |t: u64| tags.iter().find(|(k, _)| *k == t).map(|(_, v)| *v);
    let mut starts = Vec::new();
    let mut ends = Vec::new();
    for t in [
        DT_HASH,
        DT_GNU_HASH,
        DT_SYMTAB,
        DT_STRTAB,
        DT_VERSYM,
        DT_VERDEF,
        DT_VERNEED,
        DT_RELA,
        DT_REL,
        DT_JMPREL,
        DT_RELR,
    ] {
        if let Some((off, seg_end)) = tag(t).and_then(to_file) {
            starts.push((off, seg_end));
        }
    }
    for (t, sz) in [
        (DT_STRTAB, DT_STRSZ),
        (DT_RELA, DT_RELASZ),
        (DT_REL, DT_RELSZ),
        (DT_JMPREL, DT_PLTRELSZ),
        (DT_RELR, DT_RELRSZ),
    ] {
        if let (Some((off, seg_end)), Some(n)) = (tag(t).and_then(to_file), tag(sz)) {
            ends.push(off.saturating_add(n).min(seg_end));
        }
    }
    if let Some(&(first, seg_end)) = starts.iter().min() {
        let last_start = starts.iter().map(|s| s.0).max().unwrap_or(first);
        let end = ends
            .iter()
            .copied()
            .chain(std::iter::once(last_start.saturating_add(4096)))
            .max()
            .unwrap_or(first)
            .min(seg_end)
            .min(first.saturating_add(MAX_TABLES));
        out.regions.push(first..end);
    }
    if let Some((off, seg_end)) = tag(DT_INIT).and_then(to_file) {
        out.regions.push(off..off.saturating_add(4096).min(seg_end));
    }
    out.complete = true;
    Ok(out)
}

/// The Debian-style multiarch directory name of a machine (`x86_64-linux-gnu`).
pub fn multiarch(machine: u16, is_64: bool) -> Option<&'static str> {
    Some(match (machine, is_64) {
        (62, true) => "x86_64-linux-gnu",
        (3, false) => "i386-linux-gnu",
        (183, true) => "aarch64-linux-gnu",
        (40, false) => "arm-linux-gnueabihf",
        (243, true) => "riscv64-linux-gnu",
        (21, true) => "powerpc64le-linux-gnu",
        (22, true) => "s390x-linux-gnu",
        _ => return None,
    })
}

/// Where the loader looks for `DT_NEEDED` names of a file in `origin` (its directory, for
/// `$ORIGIN`), in order: the file's own search path, then the system directories.
pub fn library_dirs(needs: &ElfNeeds, origin: &[u8]) -> Vec<Vec<u8>> {
    let mut dirs: Vec<Vec<u8>> = Vec::new();
    for d in &needs.search_path {
        let d = replace(d, b"${ORIGIN}", origin);
        dirs.push(replace(&d, b"$ORIGIN", origin));
    }
    if let Some(arch) = multiarch(needs.machine, needs.is_64) {
        for base in [&b"/lib/"[..], b"/usr/lib/"] {
            let mut d = base.to_vec();
            d.extend_from_slice(arch.as_bytes());
            dirs.push(d);
        }
    }
    if needs.is_64 {
        dirs.push(b"/lib64".to_vec());
        dirs.push(b"/usr/lib64".to_vec());
    }
    for d in [&b"/lib"[..], b"/usr/lib", b"/usr/local/lib"] {
        dirs.push(d.to_vec());
    }
    dirs
}

fn replace(s: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A little-endian ELF64 shared object: interpreter, two needed names and a runpath.
    fn sample() -> Vec<u8> {
        let mut f = vec![0u8; 0x400];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2; // 64-bit
        f[5] = 1; // little endian
        f[16..18].copy_from_slice(&3u16.to_le_bytes()); // ET_DYN
        f[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86_64
        f[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&3u16.to_le_bytes());
        let ph = |f: &mut Vec<u8>, i: usize, kind: u32, off: u64, vaddr: u64, size: u64| {
            let b = 64 + i * 56;
            f[b..b + 4].copy_from_slice(&kind.to_le_bytes());
            f[b + 8..b + 16].copy_from_slice(&off.to_le_bytes());
            f[b + 16..b + 24].copy_from_slice(&vaddr.to_le_bytes());
            f[b + 32..b + 40].copy_from_slice(&size.to_le_bytes());
        };
        // The whole file loaded at 0x10000; interpreter at 0x200; dynamic at 0x300;
        // strings at 0x240.
        ph(&mut f, 0, PT_LOAD, 0, 0x10000, 0x400);
        ph(&mut f, 1, PT_INTERP, 0x200, 0x10200, 28);
        ph(&mut f, 2, PT_DYNAMIC, 0x300, 0x10300, 6 * 16);
        f[0x200..0x21c].copy_from_slice(b"/lib64/ld-linux-x86-64.so.2\0");
        let strings = b"\0libm.so.6\0libc.so.6\0$ORIGIN/../lib\0";
        f[0x240..0x240 + strings.len()].copy_from_slice(strings);
        let dy = [
            (DT_NEEDED, 1u64),
            (DT_NEEDED, 11),
            (DT_RUNPATH, 21),
            (DT_STRTAB, 0x10240),
            (DT_STRSZ, strings.len() as u64),
            (DT_NULL, 0),
        ];
        for (i, (t, v)) in dy.iter().enumerate() {
            let b = 0x300 + i * 16;
            f[b..b + 8].copy_from_slice(&t.to_le_bytes());
            f[b + 8..b + 16].copy_from_slice(&v.to_le_bytes());
        }
        f
    }

    fn reader(f: &[u8]) -> impl FnMut(u64, usize) -> Option<Vec<u8>> + '_ {
        move |off, len| {
            let s = (off as usize).min(f.len());
            Some(f[s..(s + len).min(f.len())].to_vec())
        }
    }

    #[test]
    fn reads_interpreter_needed_and_runpath() {
        let f = sample();
        let n = needs(&mut reader(&f)).unwrap();
        assert_eq!(
            n.interpreter.as_deref(),
            Some(&b"/lib64/ld-linux-x86-64.so.2"[..])
        );
        assert_eq!(n.needed, vec![b"libm.so.6".to_vec(), b"libc.so.6".to_vec()]);
        assert_eq!(n.search_path, vec![b"$ORIGIN/../lib".to_vec()]);
        let dirs = library_dirs(&n, b"/opt/app/bin");
        assert_eq!(dirs[0], b"/opt/app/bin/../lib".to_vec());
        assert_eq!(dirs[1], b"/lib/x86_64-linux-gnu".to_vec());
        assert!(dirs.contains(&b"/usr/lib64".to_vec()));
    }

    #[test]
    fn missing_bytes_are_incomplete_not_errors() {
        let f = sample();
        // Only the first 0x300 bytes are local: the dynamic section is not.
        let mut r = |off: u64, len: usize| {
            let end = off as usize + len;
            (end <= 0x300).then(|| f[off as usize..end].to_vec())
        };
        assert!(matches!(needs(&mut r), Err(ElfError::Incomplete(0x300, _))));
    }

    #[test]
    fn other_files_and_damage_are_named_without_panics() {
        assert_eq!(needs(&mut reader(b"#!/bin/sh\n")), Err(ElfError::NotElf));
        assert_eq!(needs(&mut reader(b"\x7fELF")), Err(ElfError::NotElf));
        let mut f = sample();
        f[0x300 + 3 * 16 + 8 + 3] = 0xff; // DT_STRTAB points nowhere
        assert!(matches!(
            needs(&mut reader(&f)),
            Err(ElfError::Malformed(_))
        ));
        let mut f = sample();
        f[56..58].copy_from_slice(&0xffffu16.to_le_bytes()); // absurd phnum
        assert!(matches!(
            needs(&mut reader(&f)),
            Err(ElfError::Malformed(_))
        ));
        // Truncated anywhere: an error or a result, never a panic.
        let f = sample();
        for cut in 0..f.len() {
            let _ = needs(&mut reader(&f[..cut]));
        }
        // Every single-byte corruption: same.
        for i in 0..0x400 {
            let mut g = f.clone();
            g[i] ^= 0xa5;
            let _ = needs(&mut reader(&g));
        }
    }

    #[test]
    fn loader_regions_are_headers_tables_and_writable_parts() {
        let f = sample();
        let r = loader_regions(&mut reader(&f)).unwrap();
        assert!(r.complete);
        // Headers, interpreter, dynamic section, string table (the only table here).
        assert!(r.regions.contains(&(0..64 + 3 * 56)), "{r:?}");
        assert!(r.regions.contains(&(0x200..0x200 + 28)), "{r:?}");
        assert!(r.regions.contains(&(0x300..0x300 + 6 * 16)), "{r:?}");
        assert!(
            r.regions
                .iter()
                .any(|x| x.start == 0x240 && x.end >= 0x240 + 36),
            "{r:?}"
        );
        // Without the dynamic section local: the headers, and not complete.
        let mut short = |off: u64, len: usize| {
            let end = off as usize + len;
            (end <= 0x300).then(|| f[off as usize..end].to_vec())
        };
        let r = loader_regions(&mut short).unwrap();
        assert!(
            !r.complete && r.regions.contains(&(0..64 + 3 * 56)),
            "{r:?}"
        );
        // Damage: errors or results, never panics; a hostile size is bounded.
        for i in 0..0x400 {
            let mut g = f.clone();
            g[i] ^= 0xa5;
            let got = loader_regions(&mut reader(&g));
            if let Ok(r) = got {
                assert!(r
                    .regions
                    .iter()
                    .all(|x| x.end - x.start <= MAX_TABLES + 4096));
            }
        }
        assert_eq!(
            loader_regions(&mut reader(b"#!/bin/sh\n")),
            Err(ElfError::NotElf)
        );
    }

    #[test]
    fn the_hosts_own_shell_needs_its_libc() {
        // A real binary, where the test machine has one (Debian/Ubuntu CI does).
        let Ok(f) = std::fs::read("/bin/sh") else {
            return;
        };
        let Ok(n) = needs(&mut reader(&f)) else {
            return; // e.g. a static busybox
        };
        if !n.is_empty() {
            assert!(n.needed.iter().any(|x| x.starts_with(b"libc.")), "{n:?}");
            assert!(n.interpreter.is_some());
        }
    }
}
