//! The bytes of uploads in progress, on the object store, so that an upload survives a
//! dropped connection or a restarted ingest server.
//!
//! An upload is a sequence of parts named by their byte offset. A part is written whole (the
//! object store's put is atomic), so the parts present always form a prefix of the file that
//! the server can acknowledge.

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio::sync::mpsc;

use crate::layout;
use crate::{Error, Result};

/// A staged part: where it starts and how long it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagedPart {
    pub offset: u64,
    pub len: u64,
    pub path: Path,
}

/// Staged uploads of all tenants.
#[derive(Clone, Debug)]
pub struct Staging {
    store: Arc<dyn ObjectStore>,
}

impl Staging {
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self { store }
    }

    pub async fn put_part(
        &self,
        tenant: &str,
        upload: &str,
        offset: u64,
        data: Bytes,
    ) -> Result<()> {
        let path = layout::upload_part(tenant, upload, offset);
        self.store.put(&path, PutPayload::from(data)).await?;
        Ok(())
    }

    /// The parts of an upload in order, cut at the first gap: what the server holds
    /// contiguously from byte 0.
    pub async fn parts(&self, tenant: &str, upload: &str) -> Result<Vec<StagedPart>> {
        let prefix = layout::upload_dir(tenant, upload);
        let mut listed: Vec<StagedPart> = self
            .store
            .list(Some(&prefix))
            .map_ok(|m| {
                layout::upload_part_offset(&m.location).map(|offset| StagedPart {
                    offset,
                    len: m.size,
                    path: m.location,
                })
            })
            .try_collect::<Vec<_>>()
            .await?
            .into_iter()
            .flatten()
            .collect();
        listed.sort_by_key(|p| p.offset);
        let mut out = Vec::with_capacity(listed.len());
        let mut at = 0;
        for p in listed {
            if p.offset != at {
                break;
            }
            at += p.len;
            out.push(p);
        }
        Ok(out)
    }

    /// Bytes held contiguously from the start.
    pub async fn received(&self, tenant: &str, upload: &str) -> Result<u64> {
        Ok(self
            .parts(tenant, upload)
            .await?
            .iter()
            .map(|p| p.len)
            .sum())
    }

    /// Deletes every part of an upload.
    pub async fn delete(&self, tenant: &str, upload: &str) -> Result<()> {
        delete_prefix(&self.store, &layout::upload_dir(tenant, upload)).await
    }

    /// Streams the parts' bytes in order into a bounded channel, so that a blocking reader
    /// on another thread can consume them while the next part downloads.
    pub fn stream(&self, parts: Vec<StagedPart>, depth: usize) -> mpsc::Receiver<Result<Bytes>> {
        let (tx, rx) = mpsc::channel(depth.max(1));
        let store = Arc::clone(&self.store);
        tokio::spawn(async move {
            for p in parts {
                let got = match store.get(&p.path).await {
                    Ok(r) => r.bytes().await.map_err(Error::from),
                    Err(e) => Err(Error::from(e)),
                };
                let failed = got.is_err();
                if tx.send(got).await.is_err() || failed {
                    return;
                }
            }
        });
        rx
    }
}

/// Deletes every object under `prefix`, and the object `prefix` names if there is one.
pub async fn delete_prefix(store: &Arc<dyn ObjectStore>, prefix: &Path) -> Result<()> {
    // A prefix may name one object (a live flush's file) rather than a folder.
    match store.head(prefix).await {
        Ok(_) => match store.delete(prefix).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        },
        Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let paths: Vec<Path> = store
        .list(Some(prefix))
        .map_ok(|m| m.location)
        .try_collect()
        .await?;
    for p in paths {
        match store.delete(&p).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A blocking [`std::io::Read`] over the chunks of a [`Staging::stream`]. Use it off the
/// async runtime.
pub struct ChannelReader {
    rx: mpsc::Receiver<Result<Bytes>>,
    current: Bytes,
}

impl ChannelReader {
    pub fn new(rx: mpsc::Receiver<Result<Bytes>>) -> Self {
        Self {
            rx,
            current: Bytes::new(),
        }
    }
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(std::io::Error::other(e.to_string())),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use std::io::Read;

    #[tokio::test]
    async fn holds_the_contiguous_prefix_and_streams_it_back() {
        let staging = Staging::new(Arc::new(InMemory::new()));
        staging
            .put_part("t", "u", 0, Bytes::from_static(b"hello "))
            .await
            .unwrap();
        staging
            .put_part("t", "u", 6, Bytes::from_static(b"world"))
            .await
            .unwrap();
        // A part after a gap is not counted.
        staging
            .put_part("t", "u", 100, Bytes::from_static(b"x"))
            .await
            .unwrap();
        assert_eq!(staging.received("t", "u").await.unwrap(), 11);
        assert_eq!(staging.received("t", "other").await.unwrap(), 0);

        let parts = staging.parts("t", "u").await.unwrap();
        let rx = staging.stream(parts, 1);
        let text = tokio::task::spawn_blocking(move || {
            let mut s = String::new();
            ChannelReader::new(rx).read_to_string(&mut s).unwrap();
            s
        })
        .await
        .unwrap();
        assert_eq!(text, "hello world");

        staging.delete("t", "u").await.unwrap();
        assert_eq!(staging.received("t", "u").await.unwrap(), 0);
    }
}
