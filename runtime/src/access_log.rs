//! The opt-in access log: one line per request in Common Log Format (plus the time taken), written by a
//! dedicated thread so a loop never blocks on stderr.
//!
//! Invariant: logging never slows or stops a loop — lines go through a bounded channel with `try_send`;
//! if the writer falls behind, lines are dropped and the count of dropped lines is written once the
//! writer catches up.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const BUFFERED_LINES: usize = 65_536;

static WRITER: OnceLock<SyncSender<String>> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);

fn writer() -> &'static SyncSender<String> {
    WRITER.get_or_init(|| {
        let (sender, lines) = sync_channel::<String>(BUFFERED_LINES);
        std::thread::Builder::new()
            .name("percore-access-log".into())
            .spawn(move || {
                let stderr = std::io::stderr();
                for line in lines {
                    let mut out = stderr.lock();
                    let dropped = DROPPED.swap(0, Ordering::Relaxed);
                    if dropped > 0 {
                        let _ = writeln!(
                            out,
                            "percore: access log dropped {dropped} lines (stderr too slow)"
                        );
                    }
                    let _ = writeln!(out, "{line}");
                }
            })
            .expect("access log thread");
        sender
    })
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
    let size = body_length.map_or_else(|| "-".to_owned(), |n| n.to_string());
    let line = format!(
        "{} - - [{}] \"{} {} {:?}\" {} {} {}us",
        client,
        clf_time(SystemTime::now()),
        method,
        target,
        version,
        status,
        size,
        elapsed.as_micros()
    );
    if let Err(TrySendError::Full(_)) = writer().try_send(line) {
        DROPPED.fetch_add(1, Ordering::Relaxed);
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
}
