//! Text for a terminal: untrusted strings made harmless, times made readable.

use std::borrow::Cow;

/// A string from a model or the file system (a tensor name, a path, metadata) safe to print:
/// control characters (terminal escape sequences, carriage returns, newlines) and the Unicode
/// controls that reorder text are written as `\x1b`, `\n`, `\u{202e}`; the rest is unchanged.
/// JSON output keeps strings verbatim (JSON escapes them itself).
pub fn esc(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && needs_escape(c) => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A path, escaped as [`esc`] (lossy where it is not UTF-8).
pub fn esc_path(p: &std::path::Path) -> String {
    esc(&p.to_string_lossy()).into_owned()
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A creation time for a table: local date and time, and how long ago
/// ("2026-12-02 10:41 (3 minutes ago)").
pub fn when(unix: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    format!("{} ({})", local_time(unix), relative(now - unix))
}

/// "YYYY-MM-DD HH:MM" in the local time zone (UTC where it cannot be found).
pub fn local_time(unix: i64) -> String {
    let offset = local_offset(unix);
    let t = unix.saturating_add(offset);
    let (y, m, d) = neurstore::civil_from_days(t.div_euclid(86_400));
    let secs = t.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        secs / 3600,
        secs / 60 % 60
    )
}

/// Seconds east of UTC of the local time zone at `unix` (from the C library's tz rules).
fn local_offset(unix: i64) -> i64 {
    let t: libc::time_t = unix as libc::time_t;
    // SAFETY: `localtime_r` writes only into `tm`, which lives on this stack frame; it reads the
    // time zone rules, which nothing in this program changes.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if ok { tm.tm_gmtoff } else { 0 }
}

/// "just now", "3 minutes ago", "2 days ago"; "in 5 minutes" for a time ahead (a clock skew).
pub fn relative(seconds_ago: i64) -> String {
    let (n, ahead) = if seconds_ago < 0 {
        (seconds_ago.unsigned_abs(), true)
    } else {
        (seconds_ago as u64, false)
    };
    if n < 60 {
        return "just now".into();
    }
    let (count, unit) = [
        (365 * 86_400, "year"),
        (30 * 86_400, "month"),
        (7 * 86_400, "week"),
        (86_400, "day"),
        (3600, "hour"),
        (60, "minute"),
    ]
    .into_iter()
    .find(|(len, _)| n >= *len)
    .map(|(len, unit)| (n / len, unit))
    .expect("n is at least a minute");
    let plural = if count == 1 { "" } else { "s" };
    if ahead {
        format!("in {count} {unit}{plural}")
    } else {
        format!("{count} {unit}{plural} ago")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_only_what_can_move_a_terminal() {
        assert!(matches!(esc("layer.0.weight"), Cow::Borrowed(_)));
        assert_eq!(esc("a\u{1b}[2Jb"), "a\\x1b[2Jb");
        assert_eq!(esc("x\r\ny\t"), "x\\r\\ny\\t");
        assert_eq!(esc("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
        assert_eq!(esc("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(esc("héllo wörld ✓"), "héllo wörld ✓");
    }

    #[test]
    fn relative_times_read_naturally() {
        assert_eq!(relative(5), "just now");
        assert_eq!(relative(180), "3 minutes ago");
        assert_eq!(relative(3600), "1 hour ago");
        assert_eq!(relative(3 * 86_400 + 5), "3 days ago");
        assert_eq!(relative(-300), "in 5 minutes");
    }

    #[test]
    fn local_time_shifts_utc_by_the_offset() {
        let offset = local_offset(0);
        let shown = local_time(-offset);
        assert_eq!(shown, "1970-01-01 00:00");
    }
}
