//! The content store: blobs named by their sha256 digest. A blob is written
//! to `tmp/` while its digest is computed and renamed into `blobs/` only
//! when digest (and size, when known) match, so a blob in `blobs/` is always
//! whole and verified.
//!
//! Layer blobs never reach the store: a [`pipe`] hands their bytes, as they
//! arrive, from the download to the thread that unpacks them, and hashes
//! and counts them on the way ([`BlobReader::verify`]).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Buf, Bytes};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, mpsc};

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

/// A pipe for one blob's bytes from an async download to a blocking
/// reader, holding at most `budget` bytes in flight (plus the chunk the
/// reader is on), so a slow unpack slows the download instead of growing
/// memory.
pub fn pipe(budget: usize) -> (BlobSender, BlobReader) {
    // The byte budget bounds the queue; the channel only needs room for
    // as many chunks as the budget can hold.
    let (tx, rx) = mpsc::unbounded_channel();
    let room = Arc::new(Semaphore::new(budget));
    (
        BlobSender {
            tx,
            room: room.clone(),
            budget,
        },
        BlobReader {
            rx,
            room,
            budget,
            chunk: Bytes::new(),
            hasher: Sha256::new(),
            size: 0,
        },
    )
}

/// The download's end of a [`pipe`]; dropping it ends the blob.
pub struct BlobSender {
    tx: mpsc::UnboundedSender<Bytes>,
    room: Arc<Semaphore>,
    budget: usize,
}

impl BlobSender {
    /// Queues `chunk` once there is room; `false` when the reader is gone.
    pub async fn send(&self, chunk: Bytes) -> bool {
        let cost = chunk.len().min(self.budget) as u32;
        match self.room.acquire_many(cost).await {
            Ok(permit) => permit.forget(),
            Err(_) => return false,
        }
        self.tx.send(chunk).is_ok()
    }
}

/// The reading end of a [`pipe`]: a [`io::BufRead`] over the chunks as
/// they come (no copy), hashing and counting every byte it takes off the
/// pipe. End of file when the sender is dropped. Blocking: use it off the
/// async runtime.
pub struct BlobReader {
    rx: mpsc::UnboundedReceiver<Bytes>,
    room: Arc<Semaphore>,
    budget: usize,
    chunk: Bytes,
    hasher: Sha256,
    size: u64,
}

impl BlobReader {
    /// Reads to the end of the blob; returns its digest and length.
    pub fn verify(mut self) -> (String, u64) {
        while self.next_chunk() {
            self.chunk = Bytes::new();
        }
        let digest = format!("sha256:{}", crate::ids::hex(&self.hasher.finalize()));
        (digest, self.size)
    }

    /// Takes the next non-empty chunk off the pipe; `false` at the end.
    fn next_chunk(&mut self) -> bool {
        while let Some(chunk) = self.rx.blocking_recv() {
            self.room.add_permits(chunk.len().min(self.budget));
            self.hasher.update(&chunk);
            self.size += chunk.len() as u64;
            if !chunk.is_empty() {
                self.chunk = chunk;
                return true;
            }
        }
        false
    }
}

impl io::Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = {
            let have = io::BufRead::fill_buf(self)?;
            let n = have.len().min(buf.len());
            buf[..n].copy_from_slice(&have[..n]);
            n
        };
        io::BufRead::consume(self, n);
        Ok(n)
    }
}

impl io::BufRead for BlobReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.chunk.is_empty() {
            self.next_chunk();
        }
        Ok(&self.chunk)
    }

    fn consume(&mut self, n: usize) {
        self.chunk.advance(n);
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

    /// The pipe hands over every byte in order, never holds more than its
    /// budget queued, and its digest covers what the reader did not read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pipe_is_bounded_and_hashes_every_byte() {
        use std::io::Read;
        use std::sync::atomic::{AtomicU64, Ordering};
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let sent = Arc::new(AtomicU64::new(0));
        let (tx, mut rx) = pipe(4096);
        let sent2 = sent.clone();
        let reader = tokio::task::spawn_blocking(move || {
            let mut head = vec![0u8; 10_000];
            rx.read_exact(&mut head).unwrap();
            // Give the sender time to run ahead as far as it may.
            std::thread::sleep(std::time::Duration::from_millis(300));
            let queued = sent2.load(Ordering::SeqCst) - rx.size;
            let (digest, size) = rx.verify();
            (head, queued, digest, size)
        });
        for piece in data.chunks(1000) {
            assert!(tx.send(Bytes::copy_from_slice(piece)).await);
            sent.fetch_add(piece.len() as u64, Ordering::SeqCst);
        }
        drop(tx);
        let (head, queued, digest, size) = reader.await.unwrap();
        assert_eq!(head, data[..10_000]);
        assert!(queued <= 4096, "{queued} bytes queued");
        assert!(queued >= 3000, "the sender ran ahead: {queued}");
        assert_eq!((digest, size), (digest_of(&data), data.len() as u64));
    }
}
