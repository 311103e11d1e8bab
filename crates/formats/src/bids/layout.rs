//! Finds the runs of a BIDS dataset: each signal file or events table, with the sidecars that
//! apply to it under the inheritance principle.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The datatype folder a run lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Datatype {
    Eeg,
    Ieeg,
    Meg,
    Beh,
    Func,
    Other,
}

impl Datatype {
    fn from_dir(name: &str) -> Self {
        match name {
            "eeg" => Self::Eeg,
            "ieeg" => Self::Ieeg,
            "meg" => Self::Meg,
            "beh" => Self::Beh,
            "func" => Self::Func,
            _ => Self::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eeg => "eeg",
            Self::Ieeg => "ieeg",
            Self::Meg => "meg",
            Self::Beh => "beh",
            Self::Func => "func",
            Self::Other => "other",
        }
    }
}

/// Suffixes of data files that hold signals (as opposed to sidecars).
const SIGNAL_SUFFIXES: &[&str] = &["eeg", "ieeg", "meg", "bold", "emg", "nirs"];

/// One run: a signal file, an events table, or both, with their sidecars.
#[derive(Clone, Debug, PartialEq)]
pub struct BidsRun {
    pub datatype: Datatype,
    /// The file name's entities in order (`sub`, `ses`, `task`, `acq`, `run`, ...).
    pub entities: Vec<(String, String)>,
    /// The entity part of the file names, such as `sub-01_ses-01_task-rest_run-1`.
    pub stem: String,
    pub signal: Option<PathBuf>,
    /// `eeg`, `ieeg`, `meg`, `bold`, ...: the suffix of the signal file.
    pub signal_suffix: Option<String>,
    pub events: Option<PathBuf>,
    /// The nearest applicable `*_channels.tsv`.
    pub channels: Option<PathBuf>,
    /// Applicable `*_<suffix>.json` sidecars, from the dataset root down to the run's folder;
    /// later ones override earlier ones.
    pub sidecars: Vec<PathBuf>,
}

impl BidsRun {
    pub fn entity(&self, key: &str) -> Option<&str> {
        self.entities
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A dataset: its name, participants table and runs.
#[derive(Clone, Debug, PartialEq)]
pub struct BidsDataset {
    pub root: PathBuf,
    /// `Name` from `dataset_description.json`, else the folder name.
    pub name: String,
    pub participants: Option<PathBuf>,
    pub runs: Vec<BidsRun>,
}

/// A BIDS file name taken apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileName {
    /// `(key, value)` in order, such as `("sub", "01")`.
    pub entities: Vec<(String, String)>,
    /// `eeg`, `events`, `channels`...
    pub suffix: String,
    /// Everything after the first dot: `edf`, `nii.gz`.
    pub extension: String,
}

/// Splits `sub-01_task-x_run-1_eeg.edf` into entities, suffix and extension.
pub fn parse_entities(file_name: &str) -> Option<FileName> {
    let (base, ext) = match file_name.find('.') {
        Some(p) => (&file_name[..p], &file_name[p + 1..]),
        None => (file_name, ""),
    };
    let mut parts: Vec<&str> = base.split('_').collect();
    let suffix = parts.pop()?;
    if suffix.contains('-') {
        return None;
    }
    let mut entities = Vec::new();
    for p in parts {
        let (k, v) = p.split_once('-')?;
        if k.is_empty() || v.is_empty() {
            return None;
        }
        entities.push((k.to_string(), v.to_string()));
    }
    Some(FileName {
        entities,
        suffix: suffix.to_string(),
        extension: ext.to_string(),
    })
}

/// Walks a dataset. Folders named `derivatives`, `sourcedata` and `code`, and hidden ones, are
/// skipped, as BIDS says.
pub fn scan_dataset(root: &Path) -> Result<BidsDataset> {
    let meta = fs::metadata(root)
        .map_err(|e| Error::invalid(root.display(), format!("cannot open dataset ({e})")))?;
    if !meta.is_dir() {
        return Err(Error::invalid(root.display(), "is not a directory"));
    }
    let description = root.join("dataset_description.json");
    let name = fs::read(&description)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("Name").and_then(|n| n.as_str()).map(str::to_string))
        .unwrap_or_else(|| {
            root.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
    let participants = Some(root.join("participants.tsv")).filter(|p| p.is_file());

    let mut files = Vec::new();
    walk(root, &mut files)?;
    files.sort();

    // Group data files by (folder, stem).
    let mut runs: BTreeMap<(PathBuf, String), BidsRun> = BTreeMap::new();
    for path in &files {
        let Some(dir) = path.parent() else { continue };
        let Some(datatype_dir) = dir.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        // Data files live in sub-*/[ses-*/]<datatype>/.
        let in_subject = dir
            .strip_prefix(root)
            .ok()
            .and_then(|r| r.components().next())
            .is_some_and(|c| c.as_os_str().to_string_lossy().starts_with("sub-"));
        if !in_subject || datatype_dir.starts_with("sub-") || datatype_dir.starts_with("ses-") {
            continue;
        }
        let file_name = path.file_name().unwrap_or_default().to_string_lossy();
        let Some(FileName {
            entities,
            suffix,
            extension: ext,
        }) = parse_entities(&file_name)
        else {
            continue;
        };
        if entities.first().is_none_or(|(k, _)| k != "sub") {
            continue;
        }
        let is_signal = SIGNAL_SUFFIXES.contains(&suffix.as_str()) && ext != "json" && ext != "tsv";
        let is_events = suffix == "events" && ext == "tsv";
        if !is_signal && !is_events {
            continue;
        }
        let stem = entities
            .iter()
            .map(|(k, v)| format!("{k}-{v}"))
            .collect::<Vec<_>>()
            .join("_");
        let run = runs
            .entry((dir.to_path_buf(), stem.clone()))
            .or_insert_with(|| BidsRun {
                datatype: Datatype::from_dir(datatype_dir),
                entities: entities.clone(),
                stem,
                signal: None,
                signal_suffix: None,
                events: None,
                channels: None,
                sidecars: Vec::new(),
            });
        if is_events {
            run.events = Some(path.clone());
        } else if run.signal.is_none() {
            run.signal = Some(path.clone());
            run.signal_suffix = Some(suffix);
        }
    }

    let mut out = Vec::with_capacity(runs.len());
    for ((dir, _), mut run) in runs {
        run.channels = inherited(root, &dir, &run.entities, "channels", "tsv")
            .into_iter()
            .last();
        if let Some(suffix) = run.signal_suffix.clone() {
            run.sidecars = inherited(root, &dir, &run.entities, &suffix, "json");
        }
        out.push(run);
    }
    Ok(BidsDataset {
        root: root.to_path_buf(),
        name,
        participants,
        runs: out,
    })
}

/// Sidecars with `suffix.ext` whose entities are a subset of `entities`, in the run's folder
/// and every folder above it up to the root. Ordered from least to most specific.
fn inherited(
    root: &Path,
    dir: &Path,
    entities: &[(String, String)],
    suffix: &str,
    ext: &str,
) -> Vec<PathBuf> {
    let mut levels = Vec::new();
    let mut d = Some(dir);
    while let Some(cur) = d {
        levels.push(cur.to_path_buf());
        if cur == root {
            break;
        }
        d = cur.parent();
    }
    levels.reverse();
    let mut found = Vec::new();
    for level in levels {
        let Ok(read) = fs::read_dir(&level) else {
            continue;
        };
        let mut here: Vec<(usize, PathBuf)> = read
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let f = parse_entities(&name)?;
                let applies = f.suffix == suffix
                    && f.extension == ext
                    && f.entities.iter().all(|kv| entities.contains(kv));
                applies.then(|| (f.entities.len(), e.path()))
            })
            .collect();
        here.sort();
        found.extend(here.into_iter().map(|(_, p)| p));
    }
    found
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let read = fs::read_dir(dir)
        .map_err(|e| Error::invalid(dir.display(), format!("cannot list folder ({e})")))?;
    for entry in read {
        let entry = entry.map_err(Error::Io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let kind = entry.file_type().map_err(Error::Io)?;
        if kind.is_dir() {
            if matches!(name.as_str(), "derivatives" | "sourcedata" | "code") {
                continue;
            }
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entities() {
        let f = parse_entities("sub-01_ses-a_task-rest_run-1_eeg.edf").unwrap();
        assert_eq!(f.entities.len(), 4);
        assert_eq!(f.entities[2], ("task".to_string(), "rest".to_string()));
        assert_eq!((f.suffix.as_str(), f.extension.as_str()), ("eeg", "edf"));
        let f = parse_entities("sub-01_bold.nii.gz").unwrap();
        assert_eq!(
            (f.suffix.as_str(), f.extension.as_str()),
            ("bold", "nii.gz")
        );
        assert!(parse_entities("README").is_some_and(|f| f.entities.is_empty()));
        assert!(parse_entities("sub-01_task-").is_none());
    }

    #[test]
    fn groups_runs_and_inherits_sidecars() {
        let d = tempdir();
        let root = d.as_path();
        let eeg = root.join("sub-01/eeg");
        fs::create_dir_all(&eeg).unwrap();
        fs::write(root.join("dataset_description.json"), r#"{"Name":"Demo"}"#).unwrap();
        fs::write(root.join("participants.tsv"), "participant_id\nsub-01\n").unwrap();
        fs::write(root.join("task-rest_eeg.json"), "{}").unwrap();
        fs::write(root.join("task-rest_channels.tsv"), "").unwrap();
        fs::write(eeg.join("sub-01_task-rest_eeg.edf"), "").unwrap();
        fs::write(eeg.join("sub-01_task-rest_eeg.json"), "{}").unwrap();
        fs::write(eeg.join("sub-01_task-rest_events.tsv"), "").unwrap();
        fs::write(eeg.join("sub-01_task-other_events.tsv"), "").unwrap();
        fs::create_dir_all(root.join("derivatives/sub-01/eeg")).unwrap();
        fs::write(
            root.join("derivatives/sub-01/eeg/sub-01_task-rest_eeg.edf"),
            "",
        )
        .unwrap();

        let ds = scan_dataset(root).unwrap();
        assert_eq!(ds.name, "Demo");
        assert!(ds.participants.is_some());
        assert_eq!(ds.runs.len(), 2);
        let rest = ds
            .runs
            .iter()
            .find(|r| r.entity("task") == Some("rest"))
            .unwrap();
        assert!(
            rest.signal
                .as_ref()
                .unwrap()
                .ends_with("sub-01_task-rest_eeg.edf")
        );
        assert!(rest.events.is_some());
        assert!(
            rest.channels
                .as_ref()
                .unwrap()
                .ends_with("task-rest_channels.tsv")
        );
        assert_eq!(rest.sidecars.len(), 2);
        assert!(rest.sidecars[1].ends_with("sub-01_task-rest_eeg.json"));
        let other = ds
            .runs
            .iter()
            .find(|r| r.entity("task") == Some("other"))
            .unwrap();
        assert!(other.signal.is_none());
        fs::remove_dir_all(root).unwrap();
    }

    fn tempdir() -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "gbrain-bids-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        fs::create_dir_all(&p).unwrap();
        p
    }
}
