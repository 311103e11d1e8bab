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
