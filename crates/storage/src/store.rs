//! Opens an object store from a URL.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use url::Url;

use crate::{Error, Result};

/// Opens `file:///path` (created if missing) or `s3://bucket/prefix`. `options` are object
/// store settings such as `aws_endpoint`, `aws_access_key_id`, `aws_allow_http`; binaries
/// collect them from the `AWS_*` environment, so that this library reads no environment itself.
pub fn open(url: &str, options: &[(String, String)]) -> Result<Arc<dyn ObjectStore>> {
    let parsed = Url::parse(url).map_err(|e| Error::Url {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    match parsed.scheme() {
        "file" => {
            let path = parsed.to_file_path().map_err(|()| Error::Url {
                url: url.to_string(),
                reason: "not an absolute local path".into(),
            })?;
            std::fs::create_dir_all(&path)?;
            Ok(Arc::new(LocalFileSystem::new_with_prefix(&path)?))
        }
        "s3" => {
            let (store, prefix) = object_store::parse_url_opts(&parsed, options.iter().cloned())?;
            let store: Arc<dyn ObjectStore> = Arc::from(store);
            if prefix.as_ref().is_empty() {
                Ok(store)
            } else {
                Ok(Arc::new(PrefixStore::new(store, prefix)))
            }
        }
        other => Err(Error::Url {
            url: url.to_string(),
            reason: format!("scheme {other:?} is not supported; use file:// or s3://"),
        }),
    }
}

/// Objects larger than this are written in parts (multipart upload): on S3 each part is sent
/// and retried on its own, and one request is no longer bounded by 5 GB.
pub const MULTIPART_THRESHOLD: usize = 16 << 20;

/// The size of each part of a multipart write.
pub const MULTIPART_PART_BYTES: usize = 8 << 20;

/// Writes an object, in parts when it is larger than [`MULTIPART_THRESHOLD`] (at most four in
/// flight). A multipart write that fails anywhere, a part or the completion, is aborted, so
/// that no parts are left behind; the object appears only when every part is there.
pub async fn put_large(
    store: &dyn ObjectStore,
    path: &object_store::path::Path,
    bytes: bytes::Bytes,
) -> Result<()> {
    use futures::{StreamExt, TryStreamExt};
    use object_store::ObjectStoreExt;
    if bytes.len() <= MULTIPART_THRESHOLD {
        store
            .put(path, object_store::PutPayload::from(bytes))
            .await?;
        return Ok(());
    }
    let mut upload = store.put_multipart(path).await?;
    // Parts are slices of `bytes`, not copies; a part's request starts when it is polled.
    let parts: Vec<object_store::UploadPart> = (0..bytes.len())
        .step_by(MULTIPART_PART_BYTES)
        .map(|at| {
            let end = (at + MULTIPART_PART_BYTES).min(bytes.len());
            upload.put_part(object_store::PutPayload::from(bytes.slice(at..end)))
        })
        .collect();
    let sent: std::result::Result<Vec<()>, _> =
        futures::stream::iter(parts).buffered(4).try_collect().await;
    let done = match sent {
        Ok(_) => upload.complete().await.map(|_| ()),
        Err(e) => Err(e),
    };
    if let Err(e) = done {
        let _ = upload.abort().await;
        return Err(e.into());
    }
    Ok(())
}

/// Reads a whole object.
pub async fn get_bytes(store: &dyn ObjectStore, path: &str) -> Result<bytes::Bytes> {
    use object_store::ObjectStoreExt;
    Ok(store.get(&path.into()).await?.bytes().await?)
}

/// Writes an object only if none is at `path` yet (S3 `If-None-Match: *`; an exclusive
/// create on a local disk). False when one was there: nothing was written.
pub async fn put_new(
    store: &dyn ObjectStore,
    path: &object_store::path::Path,
    bytes: bytes::Bytes,
) -> Result<bool> {
    let opts = object_store::PutOptions {
        mode: object_store::PutMode::Create,
        ..Default::default()
    };
    match store
        .put_opts(path, object_store::PutPayload::from(bytes), opts)
        .await
    {
        Ok(_) => Ok(true),
        Err(
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. },
        ) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Whether `store` is a local disk (`file://`): writing there costs CPU (creating files), where
/// S3 writes are network waits.
pub fn is_local(store: &dyn ObjectStore) -> bool {
    store.to_string().starts_with("LocalFileSystem(")
}

/// Object store options from `AWS_*` variables, for binaries: `AWS_ENDPOINT_URL` becomes
/// `aws_endpoint_url`, and so on. Pass the process environment in.
pub fn aws_options(env: impl Iterator<Item = (String, String)>) -> Vec<(String, String)> {
    env.filter(|(k, _)| k.starts_with("AWS_"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::path::Path;
    use object_store::{ObjectStoreExt, PutPayload};

    #[tokio::test]
    async fn opens_a_local_store_and_rejects_other_schemes() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/objects", dir.path().display());
        let store = open(&url, &[]).unwrap();
        assert!(is_local(store.as_ref()));
        let s3 = open(
            "s3://bucket/prefix",
            &[("aws_region".to_string(), "us-east-1".to_string())],
        )
        .unwrap();
        assert!(!is_local(s3.as_ref()));
        store
            .put(&Path::from("a/b.txt"), PutPayload::from_static(b"hi"))
            .await
            .unwrap();
        assert!(dir.path().join("objects/a/b.txt").exists());
        assert!(open("gs://bucket", &[]).is_err());
        assert!(open("not a url", &[]).is_err());
    }

    #[test]
    fn maps_aws_environment() {
        let env = vec![
            ("AWS_ENDPOINT_URL".to_string(), "http://x".to_string()),
            ("HOME".to_string(), "/root".to_string()),
        ];
        assert_eq!(
            aws_options(env.into_iter()),
            vec![("aws_endpoint_url".to_string(), "http://x".to_string())]
        );
    }
}
