//! The content store: blobs named by their sha256 digest. A blob is written
//! to `tmp/` while its digest is computed and renamed into `blobs/` only
//! when digest (and size, when known) match, so a blob in `blobs/` is always
//! whole and verified.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::{Dirs, Error, Result, io_err};

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", crate::ids::hex(&Sha256::digest(bytes)))
}

/// Checks `bytes` against `expected` and stores them as a blob.
pub async fn put_bytes(dirs: &Dirs, what: &str, expected: &str, bytes: &[u8]) -> Result<()> {
    let actual = digest_of(bytes);
    if actual != expected {
        return Err(Error::DigestMismatch {
            what: what.to_string(),
            expected: expected.to_string(),
            actual,
        });
    }
    let dest = dirs.blob(expected);
    if dest.exists() {
        return Ok(());
    }
    let mut ingest = Ingest::new(&dirs.tmp).await?;
    ingest.write(bytes).await?;
    ingest.commit(what, expected, None, &dest).await
}

/// A blob being written; its temporary file is removed unless committed.
pub struct Ingest {
    file: Option<tokio::fs::File>,
    path: PathBuf,
    hasher: Sha256,
    size: u64,
}

impl Ingest {
    pub async fn new(tmp: &Path) -> Result<Ingest> {
        let path = tmp.join(format!("blob-{}", &crate::ids::new_id()[..16]));
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(io_err("create", &path))?;
        Ok(Ingest {
            file: Some(file),
            path,
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        let file = self.file.as_mut().expect("not committed");
        file.write_all(chunk)
            .await
            .map_err(io_err("write", &self.path))
    }

    /// Verifies and renames the blob to `dest`.
    pub async fn commit(
        mut self,
        what: &str,
        expected: &str,
        size: Option<u64>,
        dest: &Path,
    ) -> Result<()> {
        let mut file = self.file.take().expect("not committed");
        file.flush().await.map_err(io_err("write", &self.path))?;
        file.sync_all().await.map_err(io_err("sync", &self.path))?;
        drop(file);
        if let Some(size) = size
            && size != self.size
        {
            return Err(Error::BadContent(format!(
                "{what}: expected {size} bytes, got {}",
                self.size
            )));
        }
        let actual = format!(
            "sha256:{}",
            crate::ids::hex(&std::mem::take(&mut self.hasher).finalize())
        );
        if actual != expected {
            return Err(Error::DigestMismatch {
                what: what.to_string(),
                expected: expected.to_string(),
                actual,
            });
        }
        tokio::fs::rename(&self.path, dest)
            .await
            .map_err(io_err("rename blob to", dest))?;
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn verified_blobs_land_mismatches_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(dir.path());
        std::fs::create_dir_all(&dirs.blobs).unwrap();
        std::fs::create_dir_all(&dirs.tmp).unwrap();
        let good = digest_of(b"hello");
        put_bytes(&dirs, "blob", &good, b"hello").await.unwrap();
        assert_eq!(std::fs::read(dirs.blob(&good)).unwrap(), b"hello");
        let err = put_bytes(&dirs, "blob", &good, b"hellO").await.unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");

        let mut ingest = Ingest::new(&dirs.tmp).await.unwrap();
        ingest.write(b"abc").await.unwrap();
        let dest = dirs.blob(&digest_of(b"abc"));
        let err = ingest
            .commit("x", &digest_of(b"abd"), None, &dest)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }));
        assert!(!dest.exists());
        let mut ingest = Ingest::new(&dirs.tmp).await.unwrap();
        ingest.write(b"abc").await.unwrap();
        let err = ingest
            .commit("x", &digest_of(b"abc"), Some(4), &dest)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("expected 4 bytes"), "{err}");
        drop(Ingest::new(&dirs.tmp).await.unwrap());
        assert_eq!(std::fs::read_dir(&dirs.tmp).unwrap().count(), 0);
    }
}
