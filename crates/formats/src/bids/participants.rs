//! `participants.tsv`: one row per subject.

use super::tsv::{Tsv, is_na};
use crate::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct Participant {
    /// `sub-<label>` as in the file.
    pub participant_id: String,
    /// Every other column, in file order; `None` for `n/a`.
    pub attributes: Vec<(String, Option<String>)>,
}

pub fn parse_participants_tsv(bytes: &[u8], file: &str) -> Result<Vec<Participant>> {
    let t = Tsv::parse(bytes, file)?;
    let id = t.require("participant_id", file)?;
    let mut out = Vec::with_capacity(t.rows.len());
    for (i, row) in t.rows.iter().enumerate() {
        let pid = row[id];
        if !pid.starts_with("sub-") || pid.len() == 4 {
            return Err(Error::invalid(
                format!("{file} line {} column participant_id", i + 2),
                "must be sub-<label> (the value is not repeated here: it may identify someone)",
            ));
        }
        out.push(Participant {
            participant_id: pid.to_string(),
            attributes: (0..t.columns.len())
                .filter(|c| *c != id)
                .map(|c| {
                    let v = row[c];
                    (t.columns[c].to_string(), (!is_na(v)).then(|| v.to_string()))
                })
                .collect(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rows_and_requires_the_id() {
        let p = parse_participants_tsv(
            b"participant_id\tage\tsex\nsub-01\t31\tM\nsub-02\tn/a\tF\n",
            "p.tsv",
        )
        .unwrap();
        assert_eq!(p[1].participant_id, "sub-02");
        assert_eq!(p[1].attributes[0], ("age".to_string(), None));
        assert!(parse_participants_tsv(b"id\tage\n1\t2\n", "p.tsv").is_err());
        assert!(parse_participants_tsv(b"participant_id\n01\n", "p.tsv").is_err());
    }
}
