//! The write-ahead log behind live streams: a chunk is acknowledged once it is here and synced
//! to disk, before it reaches Parquet.
//!
//! One log per node, shared by every stream, written by one thread with group commit: while a
//! sync runs, appends queue; the next write takes all of them and syncs once, so many streams
//! cost one `fdatasync` per round, not one each. The bytes waiting to be written are bounded
//! ([`WalConfig::max_pending_bytes`]): when the disk is slow, appends wait for room and acks slow
//! down; memory does not grow.
//!
//! On disk: segment files `<first lsn, 20 digits>.wal`, each a magic header and then records
//! `[u32 payload length][u32 crc32 of lsn and payload][u64 lsn][payload]`, little-endian. Log
//! sequence numbers (LSNs) count records from 1 across segments. A segment is replaced by a new
//! one past [`WalConfig::segment_bytes`]; [`Wal::release`] deletes the segments whose records
//! are all stored elsewhere. Replay at open reads every segment in order: a torn record at the
//! end of the last segment (a crash mid-write, never acknowledged) is cut off; damage anywhere
//! else is an error, because acknowledged records would be lost.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use bytes::{Bytes, BytesMut};
use tokio::sync::{Semaphore, oneshot};

const MAGIC: &[u8; 8] = b"GBWAL\x00\x00\x01";
const RECORD_HEADER: usize = 16;
/// The largest record; a live chunk is far smaller.
pub const MAX_RECORD_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead log {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("write-ahead log segment {path} is damaged at byte {offset}: {reason}")]
    Corrupt {
        path: String,
        offset: u64,
        reason: String,
    },
    #[error("write-ahead log: a record of {0} bytes is larger than the most it holds")]
    TooLarge(usize),
    #[error("write-ahead log is closed after an earlier failure: {0}")]
    Failed(String),
}

pub type Result<T, E = WalError> = std::result::Result<T, E>;

fn io(path: &Path, source: std::io::Error) -> WalError {
    WalError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[derive(Clone, Debug)]
pub struct WalConfig {
    pub dir: PathBuf,
    /// A new segment starts once the current one holds this many bytes.
    pub segment_bytes: u64,
    /// Bytes appended but not yet written and synced; appends beyond wait.
    pub max_pending_bytes: usize,
    /// Observes each write-and-sync round, in seconds.
    pub sync_seconds: Option<prometheus_client::metrics::histogram::Histogram>,
}

impl WalConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_bytes: 64 << 20,
            max_pending_bytes: 64 << 20,
            sync_seconds: None,
        }
    }
}

/// A record read back at open, in log order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replayed {
    pub lsn: u64,
    pub payload: Bytes,
}

enum Op {
    Append {
        payload: Bytes,
        reply: oneshot::Sender<Result<u64, String>>,
    },
    Release(u64),
}

/// The node's write-ahead log. Appends from any task; the writer thread ends when the last
/// handle is dropped.
#[derive(Debug)]
pub struct Wal {
    tx: mpsc::Sender<Op>,
    room: Arc<Semaphore>,
    max_pending: usize,
    syncs: Arc<std::sync::atomic::AtomicU64>,
}

struct Segment {
    path: PathBuf,
    first_lsn: u64,
    last_lsn: u64,
}

impl Wal {
    /// Opens (or creates) the log in `config.dir`, replays what it holds, and starts the
    /// writer. Blocking: call it off the IO runtime.
    pub fn open(config: WalConfig) -> Result<(Self, Vec<Replayed>)> {
        std::fs::create_dir_all(&config.dir).map_err(|e| io(&config.dir, e))?;
        let mut segments = list_segments(&config.dir)?;
        let mut records = Vec::new();
        let mut next_lsn = 1;
        let count = segments.len();
        for (i, seg) in segments.iter_mut().enumerate() {
            let last = i + 1 == count;
            let read = read_segment(&seg.path, last)?;
            if let Some(first) = read.first()
                && first.lsn != next_lsn
                && next_lsn != 1
            {
                return Err(WalError::Corrupt {
                    path: seg.path.display().to_string(),
                    offset: MAGIC.len() as u64,
                    reason: format!("starts at record {} where {next_lsn} was due", first.lsn),
                });
            }
            seg.last_lsn = read
                .last()
                .map_or(seg.first_lsn.saturating_sub(1), |r| r.lsn);
            if let Some(r) = read.last() {
                next_lsn = r.lsn + 1;
            }
            records.extend(read);
        }
        // A segment created just before a crash may hold no record: drop it, or the next
        // segment would take its name.
        for seg in segments.iter().filter(|s| s.last_lsn < s.first_lsn) {
            std::fs::remove_file(&seg.path).map_err(|e| io(&seg.path, e))?;
        }
        segments.retain(|s| s.last_lsn >= s.first_lsn);
        let (tx, rx) = mpsc::channel();
        let syncs = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let writer = Writer {
            syncs: Arc::clone(&syncs),
            sync_seconds: config.sync_seconds.clone(),
            dir: config.dir.clone(),
            segment_bytes: config.segment_bytes,
            segments,
            file: None,
            file_bytes: 0,
            next_lsn,
            failed: None,
        };
        std::thread::Builder::new()
            .name("ingest-wal".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| io(&config.dir, e))?;
        let max_pending = config.max_pending_bytes.clamp(1, Semaphore::MAX_PERMITS);
        Ok((
            Self {
                tx,
                room: Arc::new(Semaphore::new(max_pending)),
                max_pending,
                syncs,
            },
            records,
        ))
    }

    /// Appends one record; returns its LSN once it is synced to disk. Waits for room when
    /// `max_pending_bytes` are already queued.
    pub async fn append(&self, payload: Bytes) -> Result<u64> {
        if payload.len() > MAX_RECORD_BYTES {
            return Err(WalError::TooLarge(payload.len()));
        }
        let want = u32::try_from(payload.len().clamp(1, self.max_pending)).unwrap_or(u32::MAX);
        let _room = Arc::clone(&self.room)
            .acquire_many_owned(want)
            .await
            .map_err(|_| WalError::Failed("closed".into()))?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Op::Append { payload, reply })
            .map_err(|_| WalError::Failed("the writer thread has stopped".into()))?;
        rx.await
            .map_err(|_| WalError::Failed("the writer thread has stopped".into()))?
            .map_err(WalError::Failed)
    }

    /// Write-and-sync rounds so far: with group commit, fewer than the appends.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records up to `lsn` are stored elsewhere: segments holding only such records are
    /// deleted (the current segment stays until it is replaced).
    pub fn release(&self, lsn: u64) {
        let _ = self.tx.send(Op::Release(lsn));
    }
}

struct Writer {
    syncs: Arc<std::sync::atomic::AtomicU64>,
    sync_seconds: Option<prometheus_client::metrics::histogram::Histogram>,
    dir: PathBuf,
    segment_bytes: u64,
    segments: Vec<Segment>,
    file: Option<File>,
    file_bytes: u64,
    next_lsn: u64,
    failed: Option<String>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Op>) {
        let mut buf = BytesMut::new();
        let mut replies = Vec::new();
        while let Ok(first) = rx.recv() {
            let mut ops = vec![first];
            let mut bytes = 0usize;
            while bytes < (8 << 20) {
                match rx.try_recv() {
                    Ok(op) => {
                        if let Op::Append { payload, .. } = &op {
                            bytes += payload.len();
                        }
                        ops.push(op);
                    }
                    Err(_) => break,
                }
            }
            let mut release = None;
            buf.clear();
            replies.clear();
            for op in ops {
                match op {
                    Op::Append { payload, reply } => {
                        let lsn = self.next_lsn + replies.len() as u64;
                        encode(&mut buf, lsn, &payload);
                        replies.push((reply, lsn));
                    }
                    Op::Release(lsn) => release = Some(release.unwrap_or(0).max(lsn)),
                }
            }
            let written = if replies.is_empty() {
                Ok(())
            } else {
                let written = match &self.failed {
                    Some(f) => Err(f.clone()),
                    None => self
                        .write(&buf, replies.len() as u64)
                        .map_err(|e| e.to_string()),
                };
                if let Err(e) = &written {
                    // Nothing after a failed write can be trusted to be durable.
                    self.failed.get_or_insert_with(|| e.clone());
                    tracing::error!(error = %e, "write-ahead log write failed; appends now fail");
                }
                written
            };
            // Releases first, so that an append that follows a release sees it done.
            if let Some(lsn) = release
                && let Err(e) = self.release(lsn)
            {
                tracing::warn!(error = %e, "cannot delete released write-ahead log segments");
            }
            for (reply, lsn) in replies.drain(..) {
                let _ = reply.send(written.clone().map(|()| lsn));
            }
        }
    }

    /// Writes `n` encoded records and syncs them.
    fn write(&mut self, buf: &[u8], n: u64) -> Result<()> {
        if self.file.is_none() || self.file_bytes >= self.segment_bytes {
            self.rotate()?;
        }
        let seg = self
            .segments
            .last_mut()
            .ok_or_else(|| WalError::Failed("no open segment after starting one".into()))?;
        let path = seg.path.clone();
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| WalError::Failed("no open segment file".into()))?;
        let started = std::time::Instant::now();
        file.write_all(buf).map_err(|e| io(&path, e))?;
        file.sync_data().map_err(|e| io(&path, e))?;
        if let Some(h) = &self.sync_seconds {
            h.observe(started.elapsed().as_secs_f64());
        }
        self.syncs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.file_bytes += buf.len() as u64;
        self.next_lsn += n;
        seg.last_lsn = self.next_lsn - 1;
        Ok(())
    }

    /// Starts a new segment at the next LSN.
    fn rotate(&mut self) -> Result<()> {
        let path = self.dir.join(format!("{:020}.wal", self.next_lsn));
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        file.write_all(MAGIC).map_err(|e| io(&path, e))?;
        file.sync_data().map_err(|e| io(&path, e))?;
        sync_dir(&self.dir)?;
        self.segments.push(Segment {
            path,
            first_lsn: self.next_lsn,
            last_lsn: self.next_lsn - 1,
        });
        self.file = Some(file);
        self.file_bytes = MAGIC.len() as u64;
        Ok(())
    }

    fn release(&mut self, lsn: u64) -> Result<()> {
        let current = if self.file.is_some() {
            self.segments.len().saturating_sub(1)
        } else {
            self.segments.len()
        };
        let mut removed = 0;
        for seg in &self.segments[..current] {
            if seg.last_lsn > lsn {
                break;
            }
            std::fs::remove_file(&seg.path).map_err(|e| io(&seg.path, e))?;
            removed += 1;
        }
        if removed > 0 {
            self.segments.drain(..removed);
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

fn encode(buf: &mut BytesMut, lsn: u64, payload: &[u8]) {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&lsn.to_le_bytes());
    crc.update(payload);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.extend_from_slice(&lsn.to_le_bytes());
    buf.extend_from_slice(payload);
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

fn list_segments(dir: &Path) -> Result<Vec<Segment>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let path = entry.map_err(|e| io(dir, e))?.path();
        let Some(first_lsn) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        out.push(Segment {
            path,
            first_lsn,
            last_lsn: first_lsn.saturating_sub(1),
        });
    }
    out.sort_by_key(|s| s.first_lsn);
    Ok(out)
}

/// Reads a segment's records. In the last segment a torn tail is cut off (it was never
/// acknowledged); in any other it is damage.
fn read_segment(path: &Path, last: bool) -> Result<Vec<Replayed>> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(|e| io(path, e))?;
    let corrupt = |offset: usize, reason: String| WalError::Corrupt {
        path: path.display().to_string(),
        offset: offset as u64,
        reason,
    };
    if data.len() < MAGIC.len() {
        if last {
            // Created but its header never reached the disk.
            truncate(path, 0)?;
            return Ok(Vec::new());
        }
        return Err(corrupt(0, "shorter than its header".into()));
    }
    if &data[..MAGIC.len()] != MAGIC {
        return Err(corrupt(0, "not a write-ahead log segment".into()));
    }
    let data = Bytes::from(data);
    let mut out: Vec<Replayed> = Vec::new();
    let mut at = MAGIC.len();
    while at < data.len() {
        let record = match record_at(&data, at) {
            Ok(r) => r,
            Err(reason) => {
                // A crash mid-write leaves damage only at the end of the last segment. A bad
                // record followed by a good one is damage to acknowledged data, never a tail.
                let followed = u32::from_le_bytes(
                    data.get(at..at + 4)
                        .and_then(|b| b.try_into().ok())
                        .unwrap_or_default(),
                ) as usize;
                let next = at + RECORD_HEADER + followed;
                if !last || (followed <= MAX_RECORD_BYTES && record_at(&data, next).is_ok()) {
                    return Err(corrupt(at, reason.to_string()));
                }
                tracing::warn!(
                    path = %path.display(), offset = at, reason,
                    "cutting a torn record off the write-ahead log"
                );
                truncate(path, at as u64)?;
                break;
            }
        };
        if let Some(prev) = out.last()
            && record.lsn != prev.lsn + 1
        {
            return Err(corrupt(
                at,
                format!("record {} follows record {}", record.lsn, prev.lsn),
            ));
        }
        at += RECORD_HEADER + record.payload.len();
        out.push(record);
    }
    Ok(out)
}

/// The whole, checksummed record at `at`, or why there is none.
fn record_at(data: &Bytes, at: usize) -> std::result::Result<Replayed, &'static str> {
    let header = data
        .get(at..at + RECORD_HEADER)
        .ok_or("a record header is cut short")?;
    let word =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let len = word(0) as usize;
    let crc = word(4);
    let mut lsn_bytes = [0u8; 8];
    lsn_bytes.copy_from_slice(&header[8..16]);
    let lsn = u64::from_le_bytes(lsn_bytes);
    let start = at + RECORD_HEADER;
    if len > MAX_RECORD_BYTES || data.len() - start < len {
        return Err("a record is cut short");
    }
    let payload = data.slice(start..start + len);
    let mut h = crc32fast::Hasher::new();
    h.update(&lsn_bytes);
    h.update(&payload);
    if h.finalize() != crc {
        return Err("a record's checksum does not match");
    }
    Ok(Replayed { lsn, payload })
}

fn truncate(path: &Path, len: u64) -> Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io(path, e))?;
    f.set_len(len).map_err(|e| io(path, e))?;
    f.sync_all().map_err(|e| io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> WalConfig {
        WalConfig {
            dir: dir.to_path_buf(),
            segment_bytes: 256,
            max_pending_bytes: 1 << 20,
            sync_seconds: None,
        }
    }

    fn payload(i: u64) -> Bytes {
        Bytes::from(format!("chunk {i} {}", "x".repeat((i % 40) as usize)))
    }

    #[tokio::test]
    async fn appended_records_come_back_in_order_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, replayed) = Wal::open(config(dir.path())).unwrap();
        assert!(replayed.is_empty());
        let mut lsns = Vec::new();
        for i in 0..50 {
            lsns.push(wal.append(payload(i)).await.unwrap());
        }
        assert_eq!(lsns, (1..=50).collect::<Vec<_>>());
        drop(wal);
        let segments = list_segments(dir.path()).unwrap().len();
        assert!(segments > 3, "small segments rotate: {segments}");
        let (wal, replayed) = Wal::open(config(dir.path())).unwrap();
        let got: Vec<(u64, Bytes)> = replayed.into_iter().map(|r| (r.lsn, r.payload)).collect();
        let want: Vec<(u64, Bytes)> = (0..50).map(|i| (i + 1, payload(i))).collect();
        assert_eq!(got, want);
        // Numbering goes on after a reopen.
        assert_eq!(wal.append(payload(50)).await.unwrap(), 51);
    }

    #[tokio::test]
    async fn concurrent_appends_share_syncs_and_each_gets_its_own_lsn() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(WalConfig::new(dir.path())).unwrap();
        let wal = Arc::new(wal);
        let mut tasks = Vec::new();
        for i in 0..200u64 {
            let wal = Arc::clone(&wal);
            tasks.push(tokio::spawn(async move {
                (wal.append(payload(i)).await.unwrap(), i)
            }));
        }
        let mut by_lsn = std::collections::BTreeMap::new();
        for t in tasks {
            let (lsn, i) = t.await.unwrap();
            assert!(by_lsn.insert(lsn, i).is_none(), "LSN {lsn} given twice");
        }
        assert_eq!(
            by_lsn.keys().copied().collect::<Vec<_>>(),
            (1..=200).collect::<Vec<_>>()
        );
        drop(wal);
        let (_, replayed) = Wal::open(WalConfig::new(dir.path())).unwrap();
        for r in replayed {
            assert_eq!(r.payload, payload(by_lsn[&r.lsn]));
        }
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_off_and_damage_before_it_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(config(dir.path())).unwrap();
        for i in 0..30 {
            wal.append(payload(i)).await.unwrap();
        }
        drop(wal);
        let segments = list_segments(dir.path()).unwrap();
        let last = &segments.last().unwrap().path;
        // A crash mid-write: half a record at the end of the last segment.
        let len = std::fs::metadata(last).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(last).unwrap();
        let mut torn = BytesMut::new();
        encode(&mut torn, 31, b"never acknowledged");
        f.write_all(&torn[..torn.len() - 5]).unwrap();
        drop(f);
        let (wal, replayed) = Wal::open(config(dir.path())).unwrap();
        assert_eq!(replayed.len(), 30);
        assert_eq!(
            std::fs::metadata(last).unwrap().len(),
            len,
            "the torn bytes are gone"
        );
        assert_eq!(wal.append(payload(30)).await.unwrap(), 31);
        assert_eq!(wal.append(payload(31)).await.unwrap(), 32);
        drop(wal);
        // A flipped byte in a record of the last segment that good records follow is damage,
        // not a torn tail: cutting there would drop acknowledged records.
        let segments = list_segments(dir.path()).unwrap();
        let last = &segments.last().unwrap().path;
        assert_eq!(
            read_segment(last, false).unwrap().len(),
            2,
            "31 and 32 share a segment"
        );
        let mut bytes = std::fs::read(last).unwrap();
        let saved = bytes.clone();
        bytes[MAGIC.len() + RECORD_HEADER] ^= 0xff;
        std::fs::write(last, &bytes).unwrap();
        let err = Wal::open(config(dir.path())).unwrap_err();
        assert!(matches!(err, WalError::Corrupt { .. }), "{err}");
        assert_eq!(std::fs::read(last).unwrap(), bytes, "nothing was cut");
        std::fs::write(last, saved).unwrap();
        // A flipped byte inside an earlier segment loses acknowledged data: refuse to open.
        let first = &list_segments(dir.path()).unwrap()[0].path;
        let mut bytes = std::fs::read(first).unwrap();
        let i = MAGIC.len() + RECORD_HEADER + 2;
        bytes[i] ^= 0xff;
        std::fs::write(first, bytes).unwrap();
        let err = Wal::open(config(dir.path())).unwrap_err();
        assert!(
            matches!(err, WalError::Corrupt { .. }) && err.to_string().contains("checksum"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn released_segments_are_deleted_and_the_rest_replays() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(config(dir.path())).unwrap();
        for i in 0..40 {
            wal.append(payload(i)).await.unwrap();
        }
        let before = list_segments(dir.path()).unwrap().len();
        wal.release(20);
        // The release is handled in order with appends: one more append makes it visible.
        wal.append(payload(40)).await.unwrap();
        let after = list_segments(dir.path()).unwrap();
        assert!(
            after.len() < before,
            "{} segments, was {before}",
            after.len()
        );
        drop(wal);
        let (_, replayed) = Wal::open(config(dir.path())).unwrap();
        let first = replayed.first().unwrap().lsn;
        assert!(
            first <= 21,
            "nothing past the release point is gone: starts at {first}"
        );
        assert_eq!(replayed.last().unwrap().lsn, 41);
        for w in replayed.windows(2) {
            assert_eq!(w[1].lsn, w[0].lsn + 1);
        }
    }

    #[tokio::test]
    async fn appends_wait_for_room_instead_of_queueing_without_bound() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.max_pending_bytes = 64;
        c.segment_bytes = 1 << 20;
        let (wal, _) = Wal::open(c).unwrap();
        let wal = Arc::new(wal);
        // Far more than 64 bytes in flight from many tasks: all complete, in bounded room.
        let tasks: Vec<_> = (0..100u64)
            .map(|i| {
                let wal = Arc::clone(&wal);
                tokio::spawn(async move { wal.append(payload(i)).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(wal.room.available_permits(), 64);
        assert!(matches!(
            wal.append(Bytes::from(vec![0u8; MAX_RECORD_BYTES + 1]))
                .await,
            Err(WalError::TooLarge(_))
        ));
    }
}
