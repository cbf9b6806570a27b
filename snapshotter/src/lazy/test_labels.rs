//! Test-only builders of Prepare labels, shared by the unit tests of the lazy layer hook's
//! modules ([`super::ahead`], [`super::identity`]).

use crate::store::Labels;

/// Labels from `(key, value)` pairs.
pub(crate) fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
