//! BioSemi Status channel triggers.
//!
//! In a BioSemi BDF the `Status` channel's low 16 bits are the trigger port and the high 8 bits
//! are system status (new epoch, speed mode, CMS in range, battery). A trigger is a change of
//! the 16-bit code to a non-zero value; it lasts until the code changes again.

use super::header::{Encoding, Header, SignalHeader};

/// The trigger port's bits.
pub const TRIGGER_MASK: i32 = 0xffff;

/// One trigger: the code and the samples it covers, counted on the Status channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trigger {
    pub sample: u64,
    pub code: u16,
    /// Samples until the code changed, `None` if it still held at the end of the file.
    pub length: Option<u64>,
}

/// Whether `signal` is a BioSemi Status channel.
pub fn is_status_channel(header: &Header, signal: &SignalHeader) -> bool {
    header.format.encoding == Encoding::Int24
        && !signal.is_annotation
        && signal.label.eq_ignore_ascii_case("status")
}

/// More trigger changes than this in one file is refused rather than held in memory.
pub const MAX_TRIGGERS: usize = 10_000_000;

/// Turns a stream of Status samples into triggers.
#[derive(Debug, Default)]
pub struct TriggerDecoder {
    next_sample: u64,
    code: u16,
    open: Option<(u64, u16)>,
    done: Vec<Trigger>,
}

impl TriggerDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next Status samples, in order. Fails past [`MAX_TRIGGERS`].
    pub fn push(&mut self, samples: &[i32]) -> crate::Result<()> {
        for &v in samples {
            let code = (v & TRIGGER_MASK) as u16;
            if code != self.code {
                if self.done.len() >= MAX_TRIGGERS {
                    return Err(crate::Error::invalid(
                        "Status",
                        format!("more than {MAX_TRIGGERS} trigger changes in one file"),
                    ));
                }
                let at = self.next_sample;
                if let Some((start, c)) = self.open.take() {
                    self.done.push(Trigger {
                        sample: start,
                        code: c,
                        length: Some(at - start),
                    });
                }
                if code != 0 {
                    self.open = Some((at, code));
                }
                self.code = code;
            }
            self.next_sample += 1;
        }
        Ok(())
    }

    /// Ends the stream and returns every trigger.
    pub fn finish(mut self) -> Vec<Trigger> {
        if let Some((start, c)) = self.open.take() {
            self.done.push(Trigger {
                sample: start,
                code: c,
                length: None,
            });
        }
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_trigger_codes_and_ignores_status_bits() {
        let status_bits = 0x10_0000; // CMS in range, always set
        let mut d = TriggerDecoder::new();
        d.push(&[status_bits, status_bits | 5, status_bits | 5])
            .unwrap();
        d.push(&[
            status_bits,
            status_bits | 0x100,
            status_bits | 7,
            -8_388_608 | 7,
        ])
        .unwrap();
        let t = d.finish();
        assert_eq!(
            t,
            vec![
                Trigger {
                    sample: 1,
                    code: 5,
                    length: Some(2)
                },
                Trigger {
                    sample: 4,
                    code: 0x100,
                    length: Some(1)
                },
                Trigger {
                    sample: 5,
                    code: 7,
                    length: None
                },
            ]
        );
    }
}
