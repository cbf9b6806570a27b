//! OCI image layouts on disk (`oci-layout`, `index.json`, `blobs/sha256/<hex>`): finding
//! an image by its `org.opencontainers.image.ref.name`, reading blobs (size- and
//! digest-checked), and writing blobs and refs atomically (temporary file + rename).

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::Digest;
use serde_json::{json, Value};

use super::image::{self, Desc};
use super::ConvertError;

/// The index annotation naming an image in a layout.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
const LAYOUT_FILE: &str = "oci-layout";
const INDEX_FILE: &str = "index.json";

/// An OCI image layout directory.
#[derive(Debug, Clone)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// Opens an existing layout.
    pub fn open(dir: &Path) -> Result<Layout, ConvertError> {
        let l = Layout {
            dir: dir.to_path_buf(),
        };
        let marker = dir.join(LAYOUT_FILE);
        let text = fs::read(&marker).map_err(|e| l.err(format!("reading {LAYOUT_FILE}: {e}")))?;
        let v: Value = serde_json::from_slice(&text)
            .map_err(|e| l.err(format!("{LAYOUT_FILE} is not JSON: {e}")))?;
        if v.get("imageLayoutVersion")
            .and_then(Value::as_str)
            .is_none()
        {
            return Err(l.err(format!("{LAYOUT_FILE} has no imageLayoutVersion")));
        }
        Ok(l)
    }

    /// Opens a layout for writing, creating the directory and its skeleton if needed.
    pub fn create(dir: &Path) -> Result<Layout, ConvertError> {
        let l = Layout {
            dir: dir.to_path_buf(),
        };
        fs::create_dir_all(dir.join("blobs/sha256"))
            .map_err(|e| l.err(format!("creating the directory: {e}")))?;
        if !dir.join(LAYOUT_FILE).exists() {
            l.write_atomic(&dir.join(LAYOUT_FILE), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        } else {
            Layout::open(dir)?;
        }
        Ok(l)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn err(&self, reason: impl Into<String>) -> ConvertError {
        ConvertError::Layout {
            dir: self.dir.clone(),
            reason: reason.into(),
        }
    }

    /// The path of a blob.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join("blobs")
            .join(digest.algorithm().as_ref())
            .join(digest.digest())
    }

    /// The layout's `index.json` (an empty index if the file does not exist yet).
    fn index(&self) -> Result<Value, ConvertError> {
        let path = self.dir.join(INDEX_FILE);
        match fs::read(&path) {
            Ok(b) => {
                let v: Value = serde_json::from_slice(&b)
                    .map_err(|e| self.err(format!("{INDEX_FILE} is not JSON: {e}")))?;
                if !v.get("manifests").is_some_and(Value::is_array) {
                    return Err(self.err(format!("{INDEX_FILE} has no manifests array")));
                }
                Ok(v)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(json!({
                "schemaVersion": 2,
                "mediaType": image::OCI_INDEX,
                "manifests": []
            })),
            Err(e) => Err(self.err(format!("reading {INDEX_FILE}: {e}"))),
        }
    }

    /// The descriptor `tag` names; without a tag, the only image of the layout.
    pub fn find(&self, tag: Option<&str>) -> Result<Desc, ConvertError> {
        let index = self.index()?;
        let entries = image::index_entries(&index).map_err(|e| self.err(e))?;
        let name = |d: &Desc| d.annotations.get(REF_NAME).cloned();
        let found: Vec<&Desc> = match tag {
            Some(t) => entries
                .iter()
                .filter(|d| name(d).as_deref() == Some(t))
                .collect(),
            None => entries.iter().collect(),
        };
        match found.as_slice() {
            [one] => Ok((*one).clone()),
            [] if tag.is_some() => Err(self.err(format!(
                "no image named {:?} (names: {})",
                tag.unwrap_or_default(),
                names(&entries)
            ))),
            [] => Err(self.err("the layout has no images")),
            _ => Err(self.err(format!(
                "{} images match; name one with oci:DIR:TAG (names: {})",
                found.len(),
                names(&entries)
            ))),
        }
    }

    /// Opens a blob for reading (its size is checked against `size`).
    pub fn open_blob(&self, digest: &Digest, size: u64) -> Result<File, String> {
        let path = self.blob_path(digest);
        let f = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let len = f
            .metadata()
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        if len != size {
            return Err(format!(
                "{} has {len} bytes, its descriptor says {size}",
                path.display()
            ));
        }
        Ok(f)
    }

    /// Reads a small blob whole and checks its digest.
    pub fn read_blob(
        &self,
        digest: &Digest,
        size: u64,
        limit: u64,
    ) -> Result<Vec<u8>, ConvertError> {
        if size > limit {
            return Err(self.err(format!(
                "blob {digest} is {size} bytes, more than the {limit} allowed"
            )));
        }
        let mut f = self.open_blob(digest, size).map_err(|e| self.err(e))?;
        let mut buf = Vec::with_capacity(size as usize);
        f.read_to_end(&mut buf)
            .map_err(|e| self.err(format!("reading blob {digest}: {e}")))?;
        let actual = image::sha256_digest(&buf);
        if &actual != digest {
            return Err(self.err(format!("blob {digest} has digest {actual}")));
        }
        Ok(buf)
    }

    /// True if the layout has the blob with this size.
    pub fn has_blob(&self, digest: &Digest, size: u64) -> bool {
        fs::metadata(self.blob_path(digest)).is_ok_and(|m| m.len() == size)
    }

    /// Writes a blob from memory.
    pub fn write_blob(&self, digest: &Digest, data: &[u8]) -> Result<(), ConvertError> {
        if self.has_blob(digest, data.len() as u64) {
            return Ok(());
        }
        self.write_atomic(&self.blob_path(digest), data)
    }

    /// Moves a finished temporary file (in this layout's file system) into place as a blob.
    pub fn persist(
        &self,
        file: tempfile::NamedTempFile,
        digest: &Digest,
    ) -> Result<(), ConvertError> {
        let path = self.blob_path(digest);
        file.persist(&path)
            .map_err(|e| self.err(format!("storing blob {digest}: {}", e.error)))?;
        Ok(())
    }

    /// A temporary directory inside the layout (same file system as the blobs; removed on
    /// drop).
    pub fn temp_dir(&self) -> Result<tempfile::TempDir, ConvertError> {
        tempfile::Builder::new()
            .prefix(".starling-convert-")
            .tempdir_in(&self.dir)
            .map_err(|source| ConvertError::Temp {
                dir: self.dir.clone(),
                cause: source,
            })
    }

    /// Names `manifest` `tag` in `index.json` (replacing an image of the same name).
    pub fn set_ref(
        &self,
        mut manifest: serde_json::Map<String, Value>,
        tag: &str,
    ) -> Result<(), ConvertError> {
        let mut index = self.index()?;
        let entries = index["manifests"]
            .as_array_mut()
            .expect("index() checked the manifests array");
        entries.retain(|e| e["annotations"][REF_NAME].as_str() != Some(tag));
        manifest.insert("annotations".into(), json!({ REF_NAME: tag }));
        entries.push(Value::Object(manifest));
        let body = serde_json::to_vec_pretty(&index).expect("JSON values serialize");
        self.write_atomic(&self.dir.join(INDEX_FILE), &body)
    }

    fn write_atomic(&self, path: &Path, data: &[u8]) -> Result<(), ConvertError> {
        let parent = path.parent().unwrap_or(&self.dir);
        let write = || -> std::io::Result<()> {
            let mut tmp = tempfile::NamedTempFile::new_in(parent)?;
            tmp.write_all(data)?;
            tmp.as_file().sync_all()?;
            tmp.persist(path).map_err(|e| e.error)?;
            Ok(())
        };
        write().map_err(|e| self.err(format!("writing {}: {e}", path.display())))
    }
}

fn names(entries: &[Desc]) -> String {
    let v: Vec<&str> = entries
        .iter()
        .filter_map(|d| d.annotations.get(REF_NAME).map(String::as_str))
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_finds_images_by_name() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("l");
        assert!(Layout::open(&dir).is_err());
        let l = Layout::create(&dir).unwrap();
        let data = b"{\"x\":1}";
        let d = image::sha256_digest(data);
        l.write_blob(&d, data).unwrap();
        assert_eq!(l.read_blob(&d, data.len() as u64, 100).unwrap(), data);
        assert!(l.read_blob(&d, data.len() as u64, 2).is_err());
        l.set_ref(image::descriptor(image::OCI_MANIFEST, &d, 7), "v1")
            .unwrap();
        l.set_ref(image::descriptor(image::OCI_MANIFEST, &d, 7), "v2")
            .unwrap();
        l.set_ref(image::descriptor(image::OCI_MANIFEST, &d, 7), "v1")
            .unwrap();
        let l = Layout::open(&dir).unwrap();
        assert_eq!(l.find(Some("v1")).unwrap().digest, d);
        let e = l.find(None).unwrap_err().to_string();
        assert!(
            e.contains("2 images match") && e.contains("v1, v2") || e.contains("v2, v1"),
            "{e}"
        );
        let e = l.find(Some("nope")).unwrap_err().to_string();
        assert!(e.contains("no image named \"nope\""), "{e}");
    }

    #[test]
    fn corrupt_blobs_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let l = Layout::create(t.path()).unwrap();
        let d = image::sha256_digest(b"abc");
        fs::write(l.blob_path(&d), b"abd").unwrap();
        let e = l.read_blob(&d, 3, 10).unwrap_err().to_string();
        assert!(e.contains("has digest"), "{e}");
        let e = l.open_blob(&d, 4).unwrap_err();
        assert!(e.contains("has 3 bytes"), "{e}");
    }
}
