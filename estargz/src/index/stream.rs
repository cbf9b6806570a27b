//! Streams TOC JSON into an [`IndexBuilder`] one entry at a time, so that building the
//! index never holds all parsed entries in memory.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{IndexBuilder, IndexError, IndexOptions, LayerIndex};
use crate::footer::Compression;
use crate::lost_names::NameFixes;
use crate::toc::{TocEntry, TocError};

pub(super) fn build_from_json(
    json: &[u8],
    compression: Compression,
    data_end: u64,
    opts: &IndexOptions,
    fixes: Option<&NameFixes>,
) -> Result<LayerIndex, IndexError> {
    if json.len() as u64 > opts.limits.max_uncompressed_size {
        return Err(TocError::UncompressedTooLarge {
            size: json.len() as u64,
            limit: opts.limits.max_uncompressed_size,
        }
        .into());
    }
    let mut builder = IndexBuilder::new(compression, data_end, opts);
    let mut failure = None;
    let mut de = serde_json::Deserializer::from_slice(json);
    let seed = TocSeed {
        builder: &mut builder,
        failure: &mut failure,
        fixes,
    };
    let parsed = seed
        .deserialize(&mut de)
        .and_then(|version| de.end().map(|()| version));
    if let Some(err) = failure {
        return Err(err);
    }
    let version = parsed.map_err(|e| TocError::Json(e.to_string()))?;
    if version != 1 {
        return Err(TocError::UnsupportedVersion(version).into());
    }
    builder.finish()
}

/// The top-level object; yields the version.
struct TocSeed<'a> {
    builder: &'a mut IndexBuilder,
    failure: &'a mut Option<IndexError>,
    fixes: Option<&'a NameFixes>,
}

impl<'de> DeserializeSeed<'de> for TocSeed<'_> {
    type Value = i64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<i64, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TocSeed<'_> {
    type Value = i64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOC object with \"version\" and \"entries\"")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<i64, A::Error> {
        let mut version = None;
        let mut seen_entries = false;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match &*key {
                "version" => {
                    if version.is_some() {
                        return Err(de::Error::duplicate_field("version"));
                    }
                    version = Some(map.next_value::<i64>()?);
                }
                "entries" => {
                    if seen_entries {
                        return Err(de::Error::duplicate_field("entries"));
                    }
                    seen_entries = true;
                    map.next_value_seed(EntriesSeed {
                        builder: &mut *self.builder,
                        failure: &mut *self.failure,
                        fixes: self.fixes,
                    })?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        version.ok_or_else(|| de::Error::missing_field("version"))
    }
}

struct EntriesSeed<'a> {
    builder: &'a mut IndexBuilder,
    failure: &'a mut Option<IndexError>,
    /// Names from tar headers, by entry position (see [`crate::lost_names`]).
    fixes: Option<&'a NameFixes>,
}

impl<'de> DeserializeSeed<'de> for EntriesSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for EntriesSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of TOC entries")
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut position = 0usize;
        while let Some(mut entry) = seq.next_element::<TocEntry>()? {
            if let Some(fix) = self.fixes.and_then(|f| f.get(&position)) {
                entry.name.clone_from(&fix.name);
                if let Some(link) = &fix.link_name {
                    entry.link_name.clone_from(link);
                }
            }
            position += 1;
            if let Err(e) = self.builder.push(entry) {
                *self.failure = Some(e);
                return Err(de::Error::custom("TOC entry rejected"));
            }
        }
        Ok(())
    }
}
