//! Writing results for people (aligned tables, human units) and scripts (JSON).

use std::io::Write as _;
use std::time::Duration;

/// Writes `text` and a newline to stdout. A closed pipe (`synosctl status | head -1`) ends the
/// process quietly instead of panicking, as other Unix tools do.
pub(crate) fn emit(text: &str) {
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "{text}")
        .and_then(|()| stdout.flush())
        .is_err()
    {
        std::process::exit(0);
    }
}

/// Pretty-printed JSON on stdout.
pub(crate) fn emit_json(value: &serde_json::Value) {
    emit(&serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string()));
}

/// A header and rows, padded into columns.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> =
        std::iter::once(header.iter().map(|cell| (*cell).to_owned()).collect())
            .chain(rows.iter().cloned())
            .collect();
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|column| {
            rows.iter()
                .filter_map(|row| row.get(column))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(column, cell)| {
                    if column + 1 == row.len() {
                        cell.clone()
                    } else {
                        format!("{cell:<width$}", width = widths[column])
                    }
                })
                .collect();
            cells.join("  ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// "45s", "3m 12s", "5h 2m", "2d 4h".
pub(crate) fn uptime(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m {}s", seconds / 60, seconds % 60),
        3600..86400 => format!("{}h {}m", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{}d {}h", seconds / 86400, seconds % 86400 / 3600),
    }
}

pub(crate) use synos_common::units::bytes;

/// A protobuf time as RFC 3339 to the second ("1970-01-01T00:00:00Z"); empty when absent or
/// out of range.
pub(crate) fn timestamp_text(timestamp: Option<&prost_types::Timestamp>) -> String {
    timestamp
        .and_then(|time| std::time::SystemTime::try_from(*time).ok())
        .map_or_else(String::new, |time| {
            humantime::format_rfc3339_seconds(time).to_string()
        })
}

/// A protobuf enum value's name without its type prefix: ("DAEMON_HEALTH_SERVING",
/// "DAEMON_HEALTH_") → "SERVING".
pub(crate) fn enum_value<'a>(name: &'a str, prefix: &str) -> &'a str {
    name.strip_prefix(prefix).unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptimes_read_naturally() {
        assert_eq!(uptime(Duration::from_secs(0)), "0s");
        assert_eq!(uptime(Duration::from_secs(192)), "3m 12s");
        assert_eq!(uptime(Duration::from_secs(5 * 3600 + 120)), "5h 2m");
        assert_eq!(uptime(Duration::from_secs(2 * 86400 + 4 * 3600)), "2d 4h");
    }

    #[test]
    fn unix_epoch_is_printed_as_rfc3339() {
        let epoch = prost_types::Timestamp::from(std::time::UNIX_EPOCH);
        assert_eq!(timestamp_text(Some(&epoch)), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp_text(None), "");
    }

    #[test]
    fn tables_align_columns() {
        let rows = vec![vec!["aaa".into(), "b".into(), "c".into()]];
        assert_eq!(table(&["A", "BB", "C"], &rows), "A    BB  C\naaa  b   c");
    }
}
