//! serde helpers for the TOC: byte strings (non-UTF-8 allowed), `null` as default, and
//! base64 xattr maps.

use std::fmt;

use base64::Engine as _;
use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};

/// A JSON string read as raw bytes (serde_json hands out the unescaped bytes without
/// UTF-8 validation).
struct Bytes(Vec<u8>);

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Bytes, E> {
                Ok(Bytes(v.as_bytes().to_vec()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Bytes, E> {
                Ok(Bytes(v.into_bytes()))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// A byte-string field; `null` reads as empty.
pub(super) fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    Ok(Option::<Bytes>::deserialize(d)?
        .map(|b| b.0)
        .unwrap_or_default())
}

/// Any field; `null` reads as the type's default.
pub(super) fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The xattrs map: name -> base64 (standard alphabet, padded) value; `null` is empty.
pub(super) fn xattrs<'de, D: Deserializer<'de>>(d: D) -> Result<super::Xattrs, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = super::Xattrs;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of xattr names to base64 values")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(Bytes(name)) = map.next_key::<Bytes>()? {
                let Bytes(b64) = map.next_value::<Bytes>()?;
                let value = base64::engine::general_purpose::STANDARD
                    .decode(&b64)
                    .map_err(|e| {
                        de::Error::custom(format_args!(
                            "xattr {:?} has an invalid base64 value: {e}",
                            String::from_utf8_lossy(&name)
                        ))
                    })?;
                out.push((name, value));
            }
            Ok(out)
        }
    }
    d.deserialize_option(V)
}
