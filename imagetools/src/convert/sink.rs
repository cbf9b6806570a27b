//! The destination: a registry repository (blobs pushed, skipped when present, mounted
//! from the source repository on the same registry when possible; manifests last) or an
//! OCI layout (blobs renamed into place, `index.json` updated last).

use std::path::Path;

use bytes::Bytes;
use oci_spec::image::Digest;
use registry::{BlobSource, PushOptions, PushOutcome, Reference, RegistryClient, RegistryError};
use serde_json::{Map, Value};

use super::image::{self, Desc};
use super::layout::Layout;
use super::source::Source;
use super::stream::DiffReader;
use super::{ConvertError, ImageLocation, LayerError};

/// Where the converted image goes.
pub enum Sink {
    /// A registry repository, tagged `reference`'s tag.
    Registry {
        /// The client.
        client: RegistryClient,
        /// Where to push.
        reference: Reference,
    },
    /// An OCI layout.
    Layout {
        /// The layout.
        layout: Layout,
        /// The ref name.
        tag: String,
    },
}

/// A blob source that has no data: used to try a cross-repository mount without
/// downloading the blob first (an upload attempt fails with [`RegistryError::Source`]).
struct MountOnly(u64);

impl BlobSource for MountOnly {
    fn len(&self) -> u64 {
        self.0
    }
    fn read_at(&self, _offset: u64, _len: usize) -> std::io::Result<Bytes> {
        Err(std::io::Error::other("cross-repository mount refused"))
    }
}

fn outcome(o: PushOutcome) -> &'static str {
    match o {
        PushOutcome::AlreadyExists => "exists",
        PushOutcome::Mounted => "mounted",
        PushOutcome::Uploaded => "uploaded",
    }
}

impl Sink {
    /// A sink for `location`.
    pub fn new(client: &RegistryClient, location: &ImageLocation) -> Result<Sink, ConvertError> {
        Ok(match location {
            ImageLocation::Registry(r) => {
                if r.digest.is_some() {
                    return Err(ConvertError::Location {
                        location: location.to_string(),
                        reason: "the destination must be a tag, not a digest".into(),
                    });
                }
                Sink::Registry {
                    client: client.clone(),
                    reference: r.clone(),
                }
            }
            ImageLocation::Layout { dir, tag } => Sink::Layout {
                layout: Layout::create(dir)?,
                tag: tag.clone().unwrap_or_else(|| "latest".into()),
            },
        })
    }

    /// The destination as written.
    pub fn name(&self) -> String {
        match self {
            Sink::Registry { reference, .. } => reference.to_string(),
            Sink::Layout { layout, tag } => format!("oci:{}:{tag}", layout.dir().display()),
        }
    }

    fn registry_err(&self, e: RegistryError) -> ConvertError {
        ConvertError::Registry {
            image: self.name(),
            cause: e,
        }
    }

    /// Fails early when a registry destination cannot be reached (before any layer is
    /// converted): asks whether it has `probe` (a blob digest; absent is fine).
    pub async fn check(&self, probe: &Digest) -> Result<(), ConvertError> {
        if let Sink::Registry { client, reference } = self {
            client
                .blob_exists(&reference.repository, probe)
                .await
                .map_err(|e| self.registry_err(e))?;
        }
        Ok(())
    }

    /// A directory for temporary blobs: inside the layout (so blobs are renamed into
    /// place), else `dir` or the system's.
    pub fn temp_dir(&self, dir: Option<&Path>) -> Result<tempfile::TempDir, ConvertError> {
        if let Sink::Layout { layout, .. } = self {
            return layout.temp_dir();
        }
        let base = dir
            .map(Path::to_path_buf)
            .unwrap_or_else(std::env::temp_dir);
        tempfile::Builder::new()
            .prefix("starling-convert-")
            .tempdir_in(&base)
            .map_err(|source| ConvertError::Temp {
                dir: base,
                cause: source,
            })
    }

    /// Stores a finished blob file.
    pub async fn put_file(
        &self,
        file: tempfile::NamedTempFile,
        digest: &Digest,
    ) -> Result<&'static str, LayerError> {
        match self {
            Sink::Registry { client, reference } => client
                .push_blob(
                    &reference.repository,
                    digest,
                    file.as_file(),
                    &PushOptions::default(),
                )
                .await
                .map(outcome)
                .map_err(LayerError::Push),
            Sink::Layout { layout, .. } => {
                let size = file.as_file().metadata().map_err(LayerError::Output)?.len();
                if layout.has_blob(digest, size) {
                    return Ok("exists");
                }
                layout
                    .persist(file, digest)
                    .map(|()| "stored")
                    .map_err(|e| LayerError::Store(Box::new(e)))
            }
        }
    }

    /// Copies a source blob as it is (a layer kept in eStargz).
    pub async fn copy_blob(
        &self,
        source: &Source,
        desc: &Desc,
        temp: &Path,
    ) -> Result<&'static str, LayerError> {
        match (self, source) {
            (Sink::Registry { client, reference }, Source::Layout { layout, .. }) => {
                let f = layout
                    .open_blob(&desc.digest, desc.size)
                    .map_err(LayerError::Corrupt)?;
                client
                    .push_blob(
                        &reference.repository,
                        &desc.digest,
                        &f,
                        &PushOptions::default(),
                    )
                    .await
                    .map(outcome)
                    .map_err(LayerError::Push)
            }
            (
                Sink::Registry { client, reference },
                Source::Registry {
                    reference: from, ..
                },
            ) => {
                if from.repository.host == reference.repository.host {
                    let opts = PushOptions {
                        mount_from: Some(from.repository.name.clone()),
                        ..PushOptions::default()
                    };
                    match client
                        .push_blob(
                            &reference.repository,
                            &desc.digest,
                            &MountOnly(desc.size),
                            &opts,
                        )
                        .await
                    {
                        Ok(o) => return Ok(outcome(o)),
                        Err(RegistryError::Source { .. }) => {}
                        Err(e) => return Err(LayerError::Push(e)),
                    }
                }
                let file = download(source, desc, temp).await?;
                self.put_file(file, &desc.digest).await
            }
            (Sink::Layout { layout, .. }, _) => {
                if layout.has_blob(&desc.digest, desc.size) {
                    return Ok("exists");
                }
                let file = download(source, desc, temp).await?;
                layout
                    .persist(file, &desc.digest)
                    .map(|()| "stored")
                    .map_err(|e| LayerError::Store(Box::new(e)))
            }
        }
    }

    /// Stores a small blob (the config).
    pub async fn put_bytes(&self, digest: &Digest, data: Vec<u8>) -> Result<(), ConvertError> {
        match self {
            Sink::Registry { client, reference } => client
                .push_blob(
                    &reference.repository,
                    digest,
                    &Bytes::from(data),
                    &PushOptions::default(),
                )
                .await
                .map(drop)
                .map_err(|e| self.registry_err(e)),
            Sink::Layout { layout, .. } => layout.write_blob(digest, &data),
        }
    }

    /// Stores a manifest or index; with `tagged`, under the destination's tag (else by
    /// digest only). Returns its digest.
    pub async fn put_manifest(
        &self,
        media_type: &str,
        body: Vec<u8>,
        tagged: bool,
    ) -> Result<Digest, ConvertError> {
        let digest = image::sha256_digest(&body);
        match self {
            Sink::Registry { client, reference } => {
                let tag = if tagged {
                    reference.tag.clone().unwrap_or_else(|| "latest".into())
                } else {
                    digest.to_string()
                };
                let pushed = client
                    .push_manifest(&reference.repository, &tag, media_type, Bytes::from(body))
                    .await
                    .map_err(|e| self.registry_err(e))?;
                debug_assert_eq!(pushed, digest);
            }
            Sink::Layout { layout, tag } => {
                let size = body.len() as u64;
                layout.write_blob(&digest, &body)?;
                if tagged {
                    let d: Map<String, Value> = image::descriptor(media_type, &digest, size);
                    layout.set_ref(d, tag)?;
                }
            }
        }
        Ok(digest)
    }
}

/// Downloads a source blob into a temporary file in `temp` (digest-checked).
async fn download(
    source: &Source,
    desc: &Desc,
    temp: &Path,
) -> Result<tempfile::NamedTempFile, LayerError> {
    use std::io::Write;
    let mut file =
        tempfile::NamedTempFile::new_in(temp).map_err(|source| LayerError::TempFile {
            dir: temp.to_path_buf(),
            source,
        })?;
    match source {
        Source::Registry { client, reference } => {
            let blob = client
                .blob(&reference.repository, &desc.digest, Some(desc.size))
                .await
                .map_err(LayerError::Fetch)?;
            let mut stream = blob.stream(0, registry::Priority::OnDemand);
            while let Some(piece) = stream.next_chunk().await {
                let piece = piece.map_err(LayerError::Fetch)?;
                file.write_all(&piece).map_err(LayerError::Output)?;
            }
        }
        Source::Layout { layout, .. } => {
            let f = layout
                .open_blob(&desc.digest, desc.size)
                .map_err(LayerError::Corrupt)?;
            let mut r = DiffReader::new(f);
            std::io::copy(&mut r, &mut file).map_err(LayerError::Output)?;
            let (actual, _) = r.finish().map_err(LayerError::Read)?;
            if actual != desc.digest.as_ref() {
                return Err(LayerError::Corrupt(format!(
                    "blob content has digest {actual}"
                )));
            }
        }
    }
    file.flush().map_err(LayerError::Output)?;
    Ok(file)
}
