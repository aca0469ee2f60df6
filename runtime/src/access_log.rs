//! The opt-in access log: one line per request in Common Log Format (plus the time taken), written by a
//! dedicated thread so a loop never blocks on stderr.
//!
//! Invariants:
//! - Logging never slows or stops a loop: lines go through a queue bounded in bytes
//!   (`BUFFERED_BYTES`); if the writer falls behind, new lines are dropped and counted, the count is
//!   written once the writer catches up and is exported as `percore_access_log_dropped_lines_total`.
//! - One request is one line, whatever it sent: every byte of the client address, method and target
//!   that is not printable ASCII (CR, LF, other controls, DEL, non-ASCII — which includes Unicode line
//!   separators), and space, `"` and `\` (which separate fields), is written `\xHH`, as nginx does. Fields are
//!   capped (`MAX_TARGET_BYTES`, `MAX_FIELD_BYTES`), so a line is at most a few KiB however large the
//!   request head was (64 KiB).

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Bytes of queued lines the writer may fall behind by before new lines are dropped.
pub const BUFFERED_BYTES: usize = 8 << 20;
/// What a queued line costs beyond its text: the `String` and the channel's slot for it.
const LINE_OVERHEAD: usize = 64;
/// Bytes of the request target kept in a line; the rest is replaced by `...[+NB]`.
pub const MAX_TARGET_BYTES: usize = 2048;
/// Bytes of the client address (a trusted proxy's `X-Forwarded-For` entry can be any text) and of the
/// method (an extension method can be as long as the request head) kept in a line.
pub const MAX_FIELD_BYTES: usize = 256;

/// Bytes of lines queued and not yet written.
static QUEUED_BYTES: AtomicUsize = AtomicUsize::new(0);
/// Lines dropped since the writer last said so.
static UNREPORTED_DROPS: AtomicU64 = AtomicU64::new(0);
/// Lines dropped since the process started (the metric).
static DROPPED: AtomicU64 = AtomicU64::new(0);
static WRITER: OnceLock<Sender<String>> = OnceLock::new();

fn writer() -> &'static Sender<String> {
    WRITER.get_or_init(|| {
        let (sender, lines) = channel::<String>();
        std::thread::Builder::new()
            .name("percore-access-log".into())
            .spawn(move || {
                let stderr = std::io::stderr();
                for line in lines {
                    let mut out = stderr.lock();
                    let dropped = UNREPORTED_DROPS.swap(0, Ordering::Relaxed);
                    if dropped > 0 {
                        let _ = writeln!(
                            out,
                            "percore: access log dropped {dropped} lines (stderr too slow)"
                        );
                    }
                    let _ = writeln!(out, "{line}");
                    drop(out);
                    QUEUED_BYTES.fetch_sub(line.len() + LINE_OVERHEAD, Ordering::Relaxed);
                }
            })
            .expect("access log thread");
        sender
    })
}

/// Access-log lines dropped so far because the writer was `BUFFERED_BYTES` behind.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Queues one request's line.
#[allow(clippy::too_many_arguments)]
pub fn record(
    client: impl std::fmt::Display,
    method: &http::Method,
    target: &http::Uri,
    version: http::Version,
    status: u16,
    body_length: Option<usize>,
    elapsed: Duration,
) {
    // The client is an IP address or a trusted proxy's `X-Forwarded-For` entry, which `proxy` decodes as
    // Latin-1 (a char per byte): logged as the bytes that were sent.
    let client: Vec<u8> = client
        .to_string()
        .chars()
        .map(|c| u8::try_from(c).unwrap_or(b'?'))
        .collect();
    let line = format_line(
        &client,
        method.as_str().as_bytes(),
        target.to_string().as_bytes(),
        version,
        status,
        body_length,
        elapsed,
        SystemTime::now(),
    );
    let cost = line.len() + LINE_OVERHEAD;
    // Reserve first, so loops logging at once cannot pass the budget together.
    if QUEUED_BYTES.fetch_add(cost, Ordering::Relaxed) + cost > BUFFERED_BYTES {
        QUEUED_BYTES.fetch_sub(cost, Ordering::Relaxed);
        count_dropped();
        return;
    }
    if writer().send(line).is_err() {
        QUEUED_BYTES.fetch_sub(cost, Ordering::Relaxed);
        count_dropped();
    }
}

fn count_dropped() {
    DROPPED.fetch_add(1, Ordering::Relaxed);
    UNREPORTED_DROPS.fetch_add(1, Ordering::Relaxed);
}

#[allow(clippy::too_many_arguments)]
fn format_line(
    client: &[u8],
    method: &[u8],
    target: &[u8],
    version: http::Version,
    status: u16,
    body_length: Option<usize>,
    elapsed: Duration,
    now: SystemTime,
) -> String {
    let mut line = String::with_capacity(128 + target.len().min(MAX_TARGET_BYTES));
    push_escaped(&mut line, client, MAX_FIELD_BYTES);
    let _ = write!(line, " - - [{}] \"", clf_time(now));
    push_escaped(&mut line, method, MAX_FIELD_BYTES);
    line.push(' ');
    push_escaped(&mut line, target, MAX_TARGET_BYTES);
    let size = body_length.map_or_else(|| "-".to_owned(), |n| n.to_string());
    let _ = write!(
        line,
        " {version:?}\" {status} {size} {}us",
        elapsed.as_micros()
    );
    line
}

/// Appends at most `max` of `bytes`, each one that is not printable ASCII, and space, `"` and `\`
/// (which separate and quote fields), written `\xHH`; when N more are left out, `...[+NB]` (no space:
/// a field stays one word, so a line splits into the same fields whatever was sent).
fn push_escaped(line: &mut String, bytes: &[u8], max: usize) {
    let kept = &bytes[..bytes.len().min(max)];
    for &byte in kept {
        match byte {
            0x21..=0x7E if byte != b'"' && byte != b'\\' => line.push(char::from(byte)),
            _ => {
                let _ = write!(line, "\\x{byte:02X}");
            }
        }
    }
    if bytes.len() > kept.len() {
        let _ = write!(line, "...[+{}B]", bytes.len() - kept.len());
    }
}

/// `22/Nov/2026:04:17:00 +0000`, in UTC.
fn clf_time(now: SystemTime) -> String {
    let seconds = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize],
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_convert_like_the_calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_779), (2026, 11, 22));
        let when = UNIX_EPOCH + Duration::from_secs(20_779 * 86_400 + 4 * 3600 + 17 * 60 + 5);
        assert_eq!(clf_time(when), "22/Nov/2026:04:17:05 +0000");
    }

    #[test]
    fn a_line_escapes_what_could_split_or_forge_it() {
        let line = format_line(
            b"203.0.113.7\"\t\x85",
            b"GET",
            "/a\"b\\c\u{2028}\r\n1.2.3.4 - - [x] \"GET / HTTP/1.1\" 200".as_bytes(),
            http::Version::HTTP_11,
            404,
            Some(9),
            Duration::from_micros(42),
            UNIX_EPOCH,
        );
        assert_eq!(
            line,
            "203.0.113.7\\x22\\x09\\x85 - - [01/Jan/1970:00:00:00 +0000] \
             \"GET /a\\x22b\\x5Cc\\xE2\\x80\\xA8\\x0D\\x0A1.2.3.4\\x20-\\x20-\\x20[x]\\x20\\x22GET\\x20/\\x20HTTP/1.1\\x22\\x20200 \
             HTTP/1.1\" 404 9 42us"
        );
        assert!(line.bytes().all(|b| (0x20..0x7F).contains(&b)));
    }

    #[test]
    fn long_fields_are_cut_and_say_so() {
        let target = format!("/{}", "x".repeat(70_000));
        let method = "M".repeat(1000);
        let line = format_line(
            "c".repeat(1000).as_bytes(),
            method.as_bytes(),
            target.as_bytes(),
            http::Version::HTTP_10,
            400,
            None,
            Duration::ZERO,
            UNIX_EPOCH,
        );
        let kept_target = format!("/{}...[+67953B]", "x".repeat(MAX_TARGET_BYTES - 1));
        assert!(
            line.contains(&format!(" {kept_target} HTTP/1.0\" 400 - 0us")),
            "{line}"
        );
        assert!(line.starts_with(&format!("{}...[+744B] - - [", "c".repeat(256))));
        assert!(line.contains(&format!("\"{}...[+744B] /", "M".repeat(256))));
        assert!(line.len() < MAX_TARGET_BYTES + 2 * MAX_FIELD_BYTES + 200);
    }
}
