//! One tenant's data as of one catalog commit, indexed for planning: which files hold which
//! channel, and how a channel's sample index maps to time.

use std::collections::HashMap;
use std::sync::Arc;

use gbrain_catalog::{ChannelRow, DataFileRow, FileKind, RecordingRow, SegmentRow, TenantView};

/// Samples per row group in signal files (`gbrain_storage::signal::ROWS_PER_GROUP`).
pub const ROWS_PER_GROUP: u64 = gbrain_storage::signal::ROWS_PER_GROUP as u64;

/// A signal file of one channel, or one channel's part of a live flush's file of every
/// channel.
#[derive(Clone, Debug)]
pub struct SignalFile {
    pub path: String,
    pub size: u64,
    pub first_sample: u64,
    pub rows: u64,
    /// In a file of every channel: this channel's row groups, and how many the file has.
    pub row_groups: Option<(std::ops::Range<usize>, usize)>,
}

impl SignalFile {
    /// The row group of the file holding the channel's `k`-th row group here.
    pub fn row_group(&self, k: usize) -> usize {
        self.row_groups.as_ref().map_or(0, |(r, _)| r.start) + k
    }
}

/// What queries need to know about one channel of one recording.
#[derive(Clone, Debug)]
pub struct ChannelInfo {
    pub recording: usize,
    pub recording_id: Arc<str>,
    pub index: u32,
    pub label: Arc<str>,
    pub channel_type: String,
    pub unit: String,
    pub rate: f64,
    pub samples_per_record: u64,
    pub gain: f64,
    pub offset: f64,
    pub samples: u64,
    /// Start of the recording (ns since the epoch), if known.
    pub start_ns: Option<i64>,
    /// (first sample, onset seconds) of each segment, in order.
    pub segments: Arc<[(u64, f64)]>,
    pub files: Vec<SignalFile>,
}

impl ChannelInfo {
    /// Seconds from the recording's start of sample `s`.
    pub fn t_of(&self, s: u64) -> f64 {
        let seg = self.segment_of(s);
        let (first, onset) = self.segments.get(seg).copied().unwrap_or((0, 0.0));
        onset + (s.saturating_sub(first)) as f64 / self.rate
    }

    /// Index of the segment holding sample `s`.
    pub fn segment_of(&self, s: u64) -> usize {
        self.segments
            .partition_point(|(first, _)| *first <= s)
            .saturating_sub(1)
    }

    /// The samples whose times fall in `[t_lo, t_hi]` (either bound open when `None`), as an
    /// inclusive range, or `None` when no sample does.
    pub fn sample_range(&self, t_lo: Option<f64>, t_hi: Option<f64>) -> Option<(u64, u64)> {
        if self.samples == 0 || self.rate <= 0.0 {
            return None;
        }
        let mut lo = u64::MAX;
        let mut hi = 0u64;
        for (i, (first, onset)) in self.segments.iter().enumerate() {
            let end = self
                .segments
                .get(i + 1)
                .map_or(self.samples, |(next, _)| *next)
                .min(self.samples);
            if end <= *first {
                continue;
            }
            // Sample s of this segment is at onset + (s - first) / rate.
            let a = match t_lo {
                Some(t) => {
                    let k = ((t - onset) * self.rate).ceil();
                    if k.is_nan() { 0.0 } else { k.max(0.0) }
                }
                None => 0.0,
            };
            let b = match t_hi {
                Some(t) => ((t - onset) * self.rate).floor(),
                None => (end - first - 1) as f64,
            };
            let b = b.min((end - first - 1) as f64);
            if b < a || b < 0.0 {
                continue;
            }
            lo = lo.min(first + a as u64);
            hi = hi.max(first + b as u64);
        }
        (lo <= hi).then_some((lo, hi))
    }
}

/// The format of a live stream's recording.
pub const LIVE_FORMAT: &str = "LIVE";

/// Event files of a view read into memory when they total less than this.
pub const EVENTS_IN_MEMORY_BYTES: u64 = 64 << 20;

/// The tables whose rows are files attached to recordings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowTable {
    Events = 0,
    Predictions = 1,
    Outcomes = 2,
}

impl RowTable {
    pub const ALL: [RowTable; 3] = [Self::Events, Self::Predictions, Self::Outcomes];

    /// Its position in [`RowTable::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn kind(self) -> FileKind {
        match self {
            Self::Events => FileKind::Events,
            Self::Predictions => FileKind::Predictions,
            Self::Outcomes => FileKind::Outcomes,
        }
    }

    fn of(kind: FileKind) -> Option<Self> {
        match kind {
            FileKind::Signal => None,
            FileKind::Events => Some(Self::Events),
            FileKind::Predictions => Some(Self::Predictions),
            FileKind::Outcomes => Some(Self::Outcomes),
        }
    }

    /// The columns stored in its files.
    pub fn stored_schema(self) -> arrow::datatypes::SchemaRef {
        match self {
            Self::Events => gbrain_storage::events::schema(),
            Self::Predictions => gbrain_storage::loop_rows::predictions_schema(),
            Self::Outcomes => gbrain_storage::loop_rows::outcomes_schema(),
        }
    }
}

/// Every row of one such table in a view, in recording order: one batch in the table's schema,
/// and each recording's rows.
#[derive(Debug)]
pub struct RowsInMemory {
    pub batch: arrow::array::RecordBatch,
    /// Recording id to (first row, rows).
    pub ranges: HashMap<String, (usize, usize)>,
}

/// A tenant's view with indexes.
#[derive(Debug)]
pub struct QueryView {
    pub view: TenantView,
    /// Recording id to its position in `view.recordings`.
    pub recording_index: HashMap<String, usize>,
    /// Every signal channel (no annotation signals), by recording then channel index.
    pub channels: Vec<ChannelInfo>,
    /// Files of each [`RowTable`], by its position in [`RowTable::ALL`]: (recording position,
    /// file).
    pub row_files: [Vec<(usize, DataFileRow)>; 3],
    /// Each row table's rows, read once per view when small enough (views never change).
    pub rows: [tokio::sync::OnceCell<Option<Arc<RowsInMemory>>>; 3],
}

impl QueryView {
    pub fn new(mut view: TenantView) -> Self {
        count_live_samples(&mut view);
        let recording_index: HashMap<String, usize> = view
            .recordings
            .iter()
            .enumerate()
            .map(|(i, r)| (r.recording_id.clone(), i))
            .collect();
        let mut segments: HashMap<&str, Vec<&SegmentRow>> = HashMap::new();
        for (rec, s) in &view.segments {
            segments.entry(rec.as_str()).or_default().push(s);
        }
        let mut files: HashMap<(&str, i64), Vec<SignalFile>> = HashMap::new();
        // Live flushes' files of every channel, by recording.
        let mut shared: HashMap<&str, Vec<&DataFileRow>> = HashMap::new();
        let mut row_files: [Vec<(usize, DataFileRow)>; 3] = Default::default();
        for (rec, f) in &view.files {
            match f.kind {
                FileKind::Signal => match f.channel_index {
                    Some(ch) => files
                        .entry((rec.as_str(), ch))
                        .or_default()
                        .push(SignalFile {
                            path: f.path.clone(),
                            size: f.size_bytes as u64,
                            first_sample: f.first_row as u64,
                            rows: f.num_rows as u64,
                            row_groups: None,
                        }),
                    None => shared.entry(rec.as_str()).or_default().push(f),
                },
                kind => {
                    if let (Some(&i), Some(t)) = (recording_index.get(rec), RowTable::of(kind)) {
                        row_files[t.index()].push((i, f.clone()));
                    }
                }
            }
        }
        let mut width: HashMap<&str, usize> = HashMap::new();
        for (rec, _) in &view.channels {
            *width.entry(rec.as_str()).or_default() += 1;
        }
        let mut channels = Vec::new();
        let mut recording_ids: HashMap<&str, Arc<str>> = HashMap::new();
        for (rec, c) in &view.channels {
            if c.is_annotation {
                continue;
            }
            let Some(&ri) = recording_index.get(rec) else {
                continue;
            };
            let r: &RecordingRow = &view.recordings[ri];
            let spr = c.samples_per_record.max(0) as u64;
            let segs: Arc<[(u64, f64)]> = segments
                .get(rec.as_str())
                .map(|v| {
                    v.iter()
                        .map(|s| (s.first_record.max(0) as u64 * spr, s.onset_s))
                        .collect()
                })
                .unwrap_or_else(|| vec![(0, 0.0)].into());
            let mut f = files
                .remove(&(rec.as_str(), c.channel_index))
                .unwrap_or_default();
            for s in shared.get(rec.as_str()).into_iter().flatten() {
                let rows = s.num_rows.max(0) as u64;
                let groups = gbrain_storage::signal::groups_per_channel(rows);
                f.push(SignalFile {
                    path: s.path.clone(),
                    size: s.size_bytes as u64,
                    first_sample: s.first_row as u64,
                    rows,
                    row_groups: Some((
                        gbrain_storage::signal::channel_groups(rows, c.channel_index as usize),
                        groups * width.get(rec.as_str()).copied().unwrap_or(0),
                    )),
                });
            }
            f.sort_by_key(|x| x.first_sample);
            let id = Arc::clone(
                recording_ids
                    .entry(rec.as_str())
                    .or_insert_with(|| Arc::from(rec.as_str())),
            );
            channels.push(channel_info(ri, id, r, c, segs, f));
        }
        Self {
            view,
            recording_index,
            channels,
            row_files,
            rows: Default::default(),
        }
    }

    pub fn recording(&self, i: usize) -> &RecordingRow {
        &self.view.recordings[i]
    }

    /// The channels of one recording.
    pub fn channels_of(&self, recording: usize) -> impl Iterator<Item = &ChannelInfo> {
        self.channels
            .iter()
            .filter(move |c| c.recording == recording)
    }
}

/// A live recording grows with each flush, and its rows count what the catalog holds now;
/// a view counts what its files, as of its commit, hold.
fn count_live_samples(view: &mut TenantView) {
    let live: std::collections::HashSet<String> = view
        .recordings
        .iter()
        .filter(|r| r.format == LIVE_FORMAT)
        .map(|r| r.recording_id.clone())
        .collect();
    if live.is_empty() {
        return;
    }
    // Per (recording, channel); a file of every channel counts for channel -1.
    let mut held: HashMap<(&str, i64), i64> = HashMap::new();
    for (rec, f) in &view.files {
        if f.kind == FileKind::Signal && live.contains(rec) {
            let end = held
                .entry((rec.as_str(), f.channel_index.unwrap_or(-1)))
                .or_default();
            *end = (*end).max(f.first_row + f.num_rows);
        }
    }
    let mut totals: HashMap<String, (i64, f64)> = HashMap::new();
    let held: HashMap<(String, i64), i64> = held
        .into_iter()
        .map(|((r, c), n)| ((r.to_string(), c), n))
        .collect();
    for (rec, c) in view.channels.iter_mut() {
        if !live.contains(rec) {
            continue;
        }
        let own = held.get(&(rec.clone(), c.channel_index)).copied();
        let shared = held.get(&(rec.clone(), -1)).copied();
        c.num_samples = own.max(shared).unwrap_or(0);
        let t = totals.entry(rec.clone()).or_default();
        t.0 += c.num_samples;
        if c.sample_rate > 0.0 {
            t.1 = t.1.max(c.num_samples as f64 / c.sample_rate);
        }
    }
    for r in view.recordings.iter_mut() {
        if let Some((samples, duration)) = totals.get(&r.recording_id) {
            r.num_samples = *samples;
            r.duration_s = *duration;
            r.num_records = (duration / r.record_duration_s.max(f64::MIN_POSITIVE)).round() as i64;
        }
    }
    for (rec, s) in view.segments.iter_mut() {
        if let Some(r) = view.recordings.iter().find(|r| &r.recording_id == rec)
            && live.contains(rec)
        {
            s.num_records = r.num_records;
        }
    }
}

fn channel_info(
    recording: usize,
    recording_id: Arc<str>,
    r: &RecordingRow,
    c: &ChannelRow,
    segments: Arc<[(u64, f64)]>,
    files: Vec<SignalFile>,
) -> ChannelInfo {
    ChannelInfo {
        recording,
        recording_id,
        index: c.channel_index as u32,
        label: Arc::from(c.label.as_str()),
        channel_type: c.channel_type.clone(),
        unit: c.unit.clone(),
        rate: c.sample_rate,
        samples_per_record: c.samples_per_record.max(0) as u64,
        gain: c.gain,
        offset: c.offset,
        samples: c.num_samples.max(0) as u64,
        start_ns: r.start_time_ns,
        segments,
        files,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(segments: Vec<(u64, f64)>, samples: u64) -> ChannelInfo {
        ChannelInfo {
            recording: 0,
            recording_id: Arc::from("r"),
            index: 0,
            label: Arc::from("C3"),
            channel_type: "EEG".into(),
            unit: "uV".into(),
            rate: 10.0,
            samples_per_record: 10,
            gain: 1.0,
            offset: 0.0,
            samples,
            start_ns: None,
            segments: segments.into(),
            files: Vec::new(),
        }
    }

    #[test]
    fn maps_time_ranges_to_samples_across_gaps() {
        // 10 Hz; samples 0-19 at 0..2 s, samples 20-29 at 10..11 s.
        let c = info(vec![(0, 0.0), (20, 10.0)], 30);
        assert_eq!(c.t_of(5), 0.5);
        assert_eq!(c.t_of(25), 10.5);
        assert_eq!(c.sample_range(Some(0.5), Some(1.0)), Some((5, 10)));
        assert_eq!(c.sample_range(Some(1.95), Some(9.9)), None, "in the gap");
        assert_eq!(c.sample_range(Some(1.5), Some(10.25)), Some((15, 22)));
        assert_eq!(c.sample_range(None, None), Some((0, 29)));
        assert_eq!(c.sample_range(Some(50.0), None), None);
    }
}
