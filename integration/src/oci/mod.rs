//! OCI image building blocks: file [`content`], hand-made [`layer`] tarballs and whole
//! [`image`]s written as OCI layouts.

pub mod content;
pub mod image;
pub mod layer;

pub use content::Content;
pub use image::{chain_ids, ImageBuilder, ImageConfig, OciImage};
pub use layer::{BuiltLayer, Compression, Entry, EntryKind, LayerBuilder};
