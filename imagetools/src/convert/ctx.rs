//! What the layer jobs of one conversion share ([`Ctx`]): the options, the source and
//! destination, progress, the temporary directory and the bound on parallel jobs.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::options::ConvertOptions;
use super::progress::Progress;
use super::sink::Sink;
use super::source::Source;

/// Shared state of one conversion.
pub(crate) struct Ctx {
    pub(crate) source: Source,
    pub(crate) sink: Sink,
    pub(crate) opts: ConvertOptions,
    pub(crate) progress: Arc<dyn Progress>,
    pub(crate) temp: PathBuf,
    pub(crate) permits: Arc<Semaphore>,
}

impl Ctx {
    pub(crate) async fn permit(&self) -> OwnedSemaphorePermit {
        self.permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }
}
