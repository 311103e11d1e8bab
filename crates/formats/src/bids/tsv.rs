//! The tab-separated tables BIDS uses: a header row, then rows of the same width; `n/a` marks
//! a missing value.

use crate::{Error, Result};

/// A parsed table. Cells are borrowed from the input.
pub(crate) struct Tsv<'a> {
    pub columns: Vec<&'a str>,
    pub rows: Vec<Vec<&'a str>>,
}

impl<'a> Tsv<'a> {
    pub fn parse(bytes: &'a [u8], file: &str) -> Result<Self> {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| Error::invalid(file, format!("is not valid UTF-8 ({e})")))?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut lines = text
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        let (_, head) = lines
            .next()
            .ok_or_else(|| Error::invalid(file, "is empty: a header row is required"))?;
        let columns: Vec<&str> = head.split('\t').map(str::trim).collect();
        for (i, c) in columns.iter().enumerate() {
            if c.is_empty() {
                return Err(Error::invalid(
                    file,
                    format!("column {} of the header row has no name", i + 1),
                ));
            }
            if columns[..i].contains(c) {
                return Err(Error::invalid(file, format!("column {c:?} appears twice")));
            }
        }
        let mut rows = Vec::new();
        for (n, line) in lines {
            let cells: Vec<&str> = line.split('\t').map(str::trim).collect();
            if cells.len() != columns.len() {
                return Err(Error::invalid(
                    format!("{file} line {}", n + 1),
                    format!(
                        "has {} fields, the header row has {}",
                        cells.len(),
                        columns.len()
                    ),
                ));
            }
            rows.push(cells);
        }
        Ok(Self { columns, rows })
    }

    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| *c == name)
    }

    pub fn require(&self, name: &str, file: &str) -> Result<usize> {
        self.column(name).ok_or_else(|| {
            Error::invalid(
                file,
                format!(
                    "required column {name:?} is missing (columns: {})",
                    self.columns.join(", ")
                ),
            )
        })
    }
}

pub(crate) fn is_na(cell: &str) -> bool {
    cell == "n/a" || cell.is_empty()
}

/// A number cell: `n/a` is `None`; anything else must be a finite decimal number.
pub(crate) fn number(cell: &str, file: &str, line: usize, column: &str) -> Result<Option<f64>> {
    if is_na(cell) {
        return Ok(None);
    }
    let ok = cell
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E'));
    match cell.parse::<f64>() {
        Ok(v) if ok && v.is_finite() => Ok(Some(v)),
        _ => Err(Error::invalid(
            format!("{file} line {line} column {column}"),
            format!("{cell:?} is not a number (use n/a for a missing value)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_crlf_bom_and_blank_lines() {
        let t = Tsv::parse(b"\xef\xbb\xbfa\tb\r\n1\t2\r\n\r\n3\tn/a\n", "x.tsv").unwrap();
        assert_eq!(t.columns, vec!["a", "b"]);
        assert_eq!(t.rows, vec![vec!["1", "2"], vec!["3", "n/a"]]);
    }

    #[test]
    fn rejects_ragged_rows_and_empty_files() {
        assert!(Tsv::parse(b"a\tb\n1\n", "x.tsv").is_err());
        assert!(Tsv::parse(b"", "x.tsv").is_err());
        assert!(Tsv::parse(b"a\ta\n", "x.tsv").is_err());
    }

    #[test]
    fn numbers() {
        assert_eq!(number("1.5", "f", 2, "onset").unwrap(), Some(1.5));
        assert_eq!(number(".908", "f", 2, "onset").unwrap(), Some(0.908));
        assert_eq!(number("n/a", "f", 2, "onset").unwrap(), None);
        assert!(number("abc", "f", 2, "onset").is_err());
        assert!(number("inf", "f", 2, "onset").is_err());
    }
}
