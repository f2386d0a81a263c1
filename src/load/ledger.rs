//! The ledger of an events run (`millrace load --ledger FILE`): for every
//! request that was sent, which event ids it carried and how it was
//! answered, so the rows that reached the database can be checked against
//! what the server acknowledged: none acknowledged and missing, none
//! refused and present.
//!
//! The file is text, one request per line:
//! `STATUS FIRST_ID EVENTS`: the HTTP status (0 when no answer came: a
//! timeout, a reset, the run's end), the request's first event id in hex
//! (32 digits), and how many events it carried; their ids follow the first
//! one consecutively. Lines starting with `#` are comments.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

/// What a request carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventIds {
    /// The first event's 16-byte id, as a big-endian number: the ids of one
    /// request are `first..first + count`.
    pub first: u128,
    /// Events in the request.
    pub count: u32,
}

impl EventIds {
    /// Every id, in order.
    pub fn ids(&self) -> impl Iterator<Item = u128> + use<> {
        let first = self.first;
        (0..u128::from(self.count)).map(move |i| first + i)
    }
}

/// One sent request and its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The events it carried.
    pub events: EventIds,
    /// The answer's status; `None` when none came.
    pub status: Option<u16>,
}

/// Write `entries` to `path`.
pub fn write(path: &Path, entries: &[Entry]) -> Result<(), String> {
    let mut text = String::with_capacity(entries.len() * 44 + 200);
    text.push_str(
        "# millrace load ledger: STATUS (0: no answer) FIRST_EVENT_ID EVENTS (ids consecutive)\n",
    );
    for entry in entries {
        let _ = writeln!(
            text,
            "{} {:032x} {}",
            entry.status.unwrap_or(0),
            entry.events.first,
            entry.events.count
        );
    }
    let mut file =
        std::fs::File::create(path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    file.write_all(text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Read a ledger written by [`write`].
pub fn read(path: &Path) -> Result<Vec<Entry>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parse a ledger's text.
pub fn parse(text: &str) -> Result<Vec<Entry>, String> {
    let mut entries = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || format!("line {}: expected STATUS FIRST_EVENT_ID EVENTS", n + 1);
        let mut fields = line.split_ascii_whitespace();
        let (Some(status), Some(first), Some(count), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(bad());
        };
        let status: u16 = status.parse().map_err(|_| bad())?;
        entries.push(Entry {
            events: EventIds {
                first: u128::from_str_radix(first, 16).map_err(|_| bad())?,
                count: count.parse().map_err(|_| bad())?,
            },
            status: (status != 0).then_some(status),
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_reads_back_as_written() {
        let entries = vec![
            Entry {
                events: EventIds {
                    first: 0x6d69_0001_0000_0000_0001,
                    count: 10,
                },
                status: Some(202),
            },
            Entry {
                events: EventIds {
                    first: u128::MAX - 1,
                    count: 1,
                },
                status: None,
            },
        ];
        let path = std::env::temp_dir().join(format!("millrace-ledger-{}", std::process::id()));
        write(&path, &entries).unwrap();
        assert_eq!(read(&path).unwrap(), entries);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            entries[0].events.ids().collect::<Vec<_>>().len(),
            10,
            "ids follow the first"
        );
    }

    #[test]
    fn malformed_lines_are_refused_with_their_number() {
        let err = parse("# c\n202 ff 1\n202 zz 1\n").unwrap_err();
        assert!(err.starts_with("line 3:"), "{err}");
        assert!(parse("202 ff").is_err());
        assert!(parse("202 ff 1 extra").is_err());
    }
}
