//! Static files served from Rust: what `percore.StaticFiles` mounted on a native app answers, without
//! entering Python per request.
//!
//! A request path below the mount is turned into file-name segments (`segments`), looked up under the
//! directory on tokio's blocking pool (`StaticFiles::prepare`: the file system may block, a loop must
//! not), and answered with Starlette's headers: `content-type`, `content-length`, `accept-ranges`,
//! `etag`, `last-modified`; 304 for `If-None-Match`/`If-Modified-Since`; one `Range` as 206, an
//! unsatisfiable one as 416; a `.br`/`.gz` sibling when `Accept-Encoding` takes it (`Vary`); `html` mode's
//! `index.html` and `404.html`.
//!
//! Invariants:
//! - Nothing outside the directory is ever opened: a segment that decodes to `..`, a separator (`%2F`,
//!   `\`) or NUL is refused before any file-system call, and the path actually opened is the canonical
//!   one (symlinks resolved), checked to lie under the canonical directory (re-resolved per request, so a
//!   directory swapped by a deploy is followed).
//! - Only regular files are served (a FIFO or device is never read; it is opened non-blocking).
//! - A body is read in chunks of at most `CHUNK` bytes, at most `STREAM_BUFFER` of them queued for a
//!   slow client: memory per response is bounded whatever the file's size.
//!
//! Over 500 lines: the tests are ~385 of them; the rest is one request's lookup, conditional and range
//! handling.

use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use tokio::sync::mpsc;

use crate::exchange::{HttpRequest, HttpResponse, ResponseBody, StreamAborted};
use crate::query::percent_decode_bytes;

/// The largest read, and the largest body answered in one piece (Starlette's `FileResponse` chunk size).
pub const CHUNK: usize = 64 * 1024;
/// Chunks read ahead of a slow client.
const STREAM_BUFFER: usize = 4;

/// One mounted directory.
#[derive(Debug)]
pub struct StaticFiles {
    directory: PathBuf,
    html: bool,
    /// The mount's path as routed ("/static"; "" for a mount at "/"), stripped from the raw request path.
    prefix: String,
}

/// The request headers the answer depends on, copied off the request for the blocking pool.
#[derive(Debug, Default, Clone)]
pub struct Conditions {
    pub head: bool,
    pub if_none_match: Option<String>,
    pub if_modified_since: Option<String>,
    pub range: Option<String>,
    pub if_range: Option<String>,
    pub accept_encoding: Option<String>,
}

impl Conditions {
    fn of(method: &Method, headers: &HeaderMap) -> Self {
        let get = |name: HeaderName| {
            // Repeated headers are one comma-separated list (RFC 9110 §5.3).
            let values: Vec<&str> = headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            (!values.is_empty()).then(|| values.join(", "))
        };
        Conditions {
            head: method == Method::HEAD,
            if_none_match: get(header::IF_NONE_MATCH),
            if_modified_since: get(header::IF_MODIFIED_SINCE),
            range: get(header::RANGE),
            if_range: get(header::IF_RANGE),
            accept_encoding: get(header::ACCEPT_ENCODING),
        }
    }
}

/// What to send, decided on the blocking pool.
#[derive(Debug)]
pub struct Prepared {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Body,
}

#[derive(Debug)]
pub enum Body {
    Empty,
    Full(Bytes),
    /// `length` bytes of `file` from `offset`, read chunk by chunk as the client takes them.
    File {
        file: Arc<File>,
        offset: u64,
        length: u64,
    },
}

/// Where a request path leads.
#[derive(Debug)]
enum Lookup {
    File(Box<Opened>),
    /// html mode: a directory with an `index.html` asked for without its trailing slash: its path.
    AddSlash(String),
    Missing,
}

/// A regular file, opened, with its canonical path (for its content type) and the status to send it with
/// (404 for html mode's `404.html`).
#[derive(Debug)]
struct Opened {
    file: File,
    metadata: Metadata,
    path: PathBuf,
    status: StatusCode,
}

impl StaticFiles {
    pub fn new(directory: PathBuf, html: bool, prefix: String) -> Self {
        StaticFiles {
            directory,
            html,
            prefix,
        }
    }

    /// The answer to a routed GET or HEAD request. The file system is touched on tokio's blocking pool.
    pub async fn serve(self: Arc<Self>, request: HttpRequest) -> HttpResponse {
        if request.method != Method::GET && request.method != Method::HEAD {
            let mut response = HttpResponse::text(405, "Method Not Allowed");
            response
                .headers
                .push((header::ALLOW, HeaderValue::from_static("GET, HEAD")));
            return response;
        }
        let conditions = Conditions::of(&request.method, &request.headers);
        let path = request.uri.path().to_owned();
        let query = request.uri.query().map(str::to_owned);
        let prepared =
            tokio::task::spawn_blocking(move || self.prepare(&path, query.as_deref(), &conditions))
                .await;
        match prepared {
            Ok(Ok(prepared)) => into_response(prepared),
            Ok(Err(_)) | Err(_) => HttpResponse::internal_error(),
        }
    }

    /// Looks `raw_path` (the request's path, undecoded) up and decides the answer: status, headers, and
    /// the body (read now when it fits in one chunk). Blocking. An error reading the chosen file is an
    /// `Err` (a 500); every failure to find one is a 404.
    pub fn prepare(
        &self,
        raw_path: &str,
        query: Option<&str>,
        conditions: &Conditions,
    ) -> io::Result<Prepared> {
        // Canonical, so that "under the directory" is a plain prefix test on canonical paths.
        let root = self.directory.canonicalize();
        let found = match (
            &root,
            raw_path
                .strip_prefix(self.prefix.as_str())
                .and_then(segments),
        ) {
            (Ok(root), Some((segments, trailing_slash))) => {
                self.find(root, &segments, trailing_slash)
            }
            (Ok(root), None) => self.not_found_in(root),
            (Err(_), _) => Lookup::Missing,
        };
        match found {
            Lookup::Missing => Ok(Prepared {
                status: StatusCode::NOT_FOUND,
                headers: text_headers(),
                body: Body::Full(Bytes::from_static(b"Not Found")),
            }),
            Lookup::AddSlash(mut location) => Ok(Prepared {
                status: StatusCode::TEMPORARY_REDIRECT,
                headers: vec![(
                    header::LOCATION,
                    // Percent-encoded, and the query came from a valid request-target: a valid value.
                    HeaderValue::from_str(&match query {
                        Some(query) => {
                            location.push('?');
                            location.push_str(query);
                            location
                        }
                        None => location,
                    })
                    .unwrap_or(HeaderValue::from_static("/")),
                )],
                body: Body::Empty,
            }),
            Lookup::File(opened) => {
                let root = root?; // found under it
                file_answer(&root, *opened, conditions)
            }
        }
    }

    /// The file `segments` name under the directory (html mode: a directory's `index.html`, else
    /// `404.html`).
    fn find(&self, root: &Path, segments: &[Vec<u8>], trailing_slash: bool) -> Lookup {
        let mut candidate = root.to_owned();
        candidate.extend(segments.iter().map(|s| OsStr::from_bytes(s)));
        match resolve_inside(root, &candidate) {
            Some((path, metadata)) if metadata.is_file() => {
                if let Some(found) = open_file(path, StatusCode::OK) {
                    return found;
                }
            }
            Some((path, metadata)) if metadata.is_dir() && self.html => {
                if let Some((index, metadata)) = resolve_inside(root, &path.join("index.html")) {
                    if metadata.is_file() {
                        if !trailing_slash {
                            return Lookup::AddSlash(self.slash_location(segments));
                        }
                        if let Some(found) = open_file(index, StatusCode::OK) {
                            return found;
                        }
                    }
                }
            }
            _ => {}
        }
        self.not_found_in(root)
    }

    /// The path of the directory `segments` name, with its trailing slash, for a redirect: rebuilt from
    /// the mount's prefix and the decoded segments with exactly one leading slash, since the request's
    /// own path may start with several ("//docs" on a root mount), which in `Location` would name
    /// another host.
    fn slash_location(&self, segments: &[Vec<u8>]) -> String {
        let mut location = String::from("/");
        let prefix = self.prefix.trim_start_matches('/');
        if !prefix.is_empty() {
            location.push_str(prefix);
            location.push('/');
        }
        for segment in segments {
            for &byte in segment {
                if byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&byte) {
                    location.push(byte as char);
                } else {
                    location.push_str(&format!("%{byte:02X}"));
                }
            }
            location.push('/');
        }
        location
    }

    /// html mode: the directory's `404.html` (sent with status 404), if there is one.
    fn not_found_in(&self, root: &Path) -> Lookup {
        if self.html {
            if let Some((path, metadata)) = resolve_inside(root, &root.join("404.html")) {
                if metadata.is_file() {
                    if let Some(found) = open_file(path, StatusCode::NOT_FOUND) {
                        return found;
                    }
                }
            }
        }
        Lookup::Missing
    }
}

/// The answer for a found file: its precompressed sibling if accepted, 304, 206/416, or the whole file.
fn file_answer(root: &Path, opened: Opened, conditions: &Conditions) -> io::Result<Prepared> {
    let Opened {
        file,
        metadata,
        path,
        status,
    } = opened;
    let path = path.as_path();
    // A precompressed sibling the client accepts replaces the file; its own size and dates make its
    // own ETag, so caches never confuse the two.
    let siblings = Sibling::ALL.map(|sibling| sibling.find(root, path));
    let vary = siblings.iter().any(Option::is_some);
    let accepted = conditions
        .accept_encoding
        .as_deref()
        .map(accepted_encodings);
    let chosen = Sibling::ALL
        .iter()
        .zip(siblings)
        .filter(|(sibling, _)| accepted.as_ref().is_some_and(|a| a.takes(sibling.coding)))
        .find_map(|(sibling, found)| Some((open_regular(&found?)?, sibling.coding)));
    let (file, metadata, encoding) = match chosen {
        Some(((file, metadata), coding)) => (file, metadata, Some(coding)),
        None => (file, metadata, None),
    };
    let size = metadata.len();
    let etag = etag(&metadata);
    let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let last_modified = httpdate::fmt_http_date(modified);
    let mut headers = Vec::with_capacity(8);
    let mut validators = vec![(header::ETAG, header_value(&etag))];
    if vary {
        validators.push((header::VARY, HeaderValue::from_static("Accept-Encoding")));
    }
    // 404.html is a fixed error page: no 304s or ranges for it (as Starlette).
    if status == StatusCode::OK && not_modified(conditions, &etag, modified) {
        return Ok(Prepared {
            status: StatusCode::NOT_MODIFIED,
            headers: validators,
            body: Body::Empty,
        });
    }
    headers.push((header::CONTENT_TYPE, content_type(path)));
    headers.push((header::ACCEPT_RANGES, HeaderValue::from_static("bytes")));
    headers.extend(validators);
    headers.push((header::LAST_MODIFIED, header_value(&last_modified)));
    if let Some(coding) = encoding {
        headers.push((header::CONTENT_ENCODING, HeaderValue::from_static(coding)));
    }
    let mut answer = (status, 0, size);
    // Range is defined for GET only (RFC 9110 §14.2): ignored on HEAD.
    let ranged = match &conditions.range {
        Some(range)
            if status == StatusCode::OK
                && !conditions.head
                && if_range_holds(conditions.if_range.as_deref(), &etag, &last_modified) =>
        {
            parse_range(range, size)
        }
        _ => Ranged::Whole,
    };
    match ranged {
        Ranged::Whole => {}
        Ranged::Part { start, end } => {
            answer = (StatusCode::PARTIAL_CONTENT, start, end - start + 1);
            headers.push((
                header::CONTENT_RANGE,
                header_value(&format!("bytes {start}-{end}/{size}")),
            ));
        }
        Ranged::Unsatisfiable => {
            let mut headers = text_headers();
            headers.push((
                header::CONTENT_RANGE,
                header_value(&format!("bytes */{size}")),
            ));
            return Ok(Prepared {
                status: StatusCode::RANGE_NOT_SATISFIABLE,
                headers,
                body: Body::Full(Bytes::from_static(b"Range Not Satisfiable")),
            });
        }
    }
    let (status, offset, length) = answer;
    headers.push((header::CONTENT_LENGTH, HeaderValue::from(length)));
    let body = if conditions.head || length == 0 {
        Body::Empty
    } else if length <= CHUNK as u64 {
        let mut buffer = vec![0; length as usize];
        file.read_exact_at(&mut buffer, offset)?;
        Body::Full(Bytes::from(buffer))
    } else {
        Body::File {
            file: Arc::new(file),
            offset,
            length,
        }
    };
    Ok(Prepared {
        status,
        headers,
        body,
    })
}

/// The file-name segments of a request path below the mount (`.` and empty ones dropped: `a//./b` is
/// `a/b`), and whether it ends with `/`; None when it must not be looked up at all. Each segment is
/// percent-decoded on its own, so an encoded separator cannot join two segments into a path; one that
/// decodes to `..`, or holds a separator (`/`, `\`) or NUL, refuses the whole path. (Starlette
/// normalises `a/../b` to `b`; clients normalise dot segments before sending.)
pub fn segments(below_mount: &str) -> Option<(Vec<Vec<u8>>, bool)> {
    if !below_mount.is_empty() && !below_mount.starts_with('/') {
        return None; // "/staticfoo" under a "/static" mount
    }
    let trailing_slash = below_mount.ends_with('/');
    let mut decoded = Vec::new();
    for raw in below_mount.split('/') {
        let segment = percent_decode_bytes(raw, false);
        if segment == b".." || segment.iter().any(|b| matches!(b, b'/' | b'\\' | 0)) {
            return None;
        }
        if !segment.is_empty() && segment != b"." {
            decoded.push(segment);
        }
    }
    Some((decoded, trailing_slash))
}

/// `candidate`'s canonical path (symlinks resolved) and metadata, if it exists and lies under `root`
/// (itself canonical).
fn resolve_inside(root: &Path, candidate: &Path) -> Option<(PathBuf, Metadata)> {
    let path = candidate.canonicalize().ok()?;
    if !path.starts_with(root) {
        return None;
    }
    let metadata = std::fs::metadata(&path).ok()?;
    Some((path, metadata))
}

/// Opens a regular file at a canonical path. Non-blocking: if it was replaced by a FIFO since it was
/// looked at, opening does not wait for a writer, and the check on the opened file refuses it.
fn open_file(path: PathBuf, status: StatusCode) -> Option<Lookup> {
    let (file, metadata) = open_regular(&path)?;
    Some(Lookup::File(Box::new(Opened {
        file,
        metadata,
        path,
        status,
    })))
}

fn open_regular(path: &Path) -> Option<(File, Metadata)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let metadata = file.metadata().ok()?;
    metadata.is_file().then_some((file, metadata))
}

/// A precompressed sibling of a file: `app.js.br`, `app.js.gz`, in the order they are preferred.
struct Sibling {
    coding: &'static str,
    suffix: &'static str,
}

impl Sibling {
    const ALL: [Sibling; 2] = [
        Sibling {
            coding: "br",
            suffix: ".br",
        },
        Sibling {
            coding: "gzip",
            suffix: ".gz",
        },
    ];

    /// The sibling of `path` (canonical, under `root`) if it is a regular file under `root`.
    fn find(&self, root: &Path, path: &Path) -> Option<PathBuf> {
        let mut name = path.as_os_str().to_owned();
        name.push(self.suffix);
        let (sibling, metadata) = resolve_inside(root, Path::new(&name))?;
        metadata.is_file().then_some(sibling)
    }
}

/// The content codings an `Accept-Encoding` value accepts (RFC 9110 §12.5.3: `q=0` refuses, `*` stands
/// for any coding not named).
#[derive(Debug)]
pub struct Accepted {
    named: Vec<(String, bool)>,
    any: Option<bool>,
}

impl Accepted {
    pub fn takes(&self, coding: &str) -> bool {
        self.named
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(coding))
            .map(|(_, accepted)| *accepted)
            .or(self.any)
            .unwrap_or(false)
    }
}

pub fn accepted_encodings(value: &str) -> Accepted {
    let mut accepted = Accepted {
        named: Vec::new(),
        any: None,
    };
    for item in value.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        if coding.is_empty() {
            continue;
        }
        let refused = parts.any(|parameter| {
            let Some((name, value)) = parameter.split_once('=') else {
                return false;
            };
            name.trim().eq_ignore_ascii_case("q")
                && value.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
        });
        if coding == "*" {
            accepted.any = Some(!refused);
        } else {
            // x-gzip is gzip (RFC 9110 §8.4.1.3).
            let coding = if coding.eq_ignore_ascii_case("x-gzip") {
                "gzip"
            } else {
                coding
            };
            accepted.named.push((coding.to_owned(), !refused));
        }
    }
    accepted
}

/// A strong validator from what changes when the file does: size and modification time (ns).
fn etag(metadata: &Metadata) -> String {
    format!(
        "\"{:x}-{:x}{:08x}\"",
        metadata.len(),
        metadata.mtime(),
        metadata.mtime_nsec()
    )
}

/// RFC 9110 §13.1.2/§13.1.3: `If-None-Match` (weak comparison, `*` matches) decides when present;
/// otherwise `If-Modified-Since` at second precision.
pub fn not_modified_by(
    if_none_match: Option<&str>,
    if_modified_since: Option<&str>,
    etag: &str,
    modified: SystemTime,
) -> bool {
    if let Some(tags) = if_none_match {
        return tags.split(',').map(str::trim).any(|tag| {
            tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag.trim_start_matches("W/")
        });
    }
    let Some(since) = if_modified_since.and_then(|s| httpdate::parse_http_date(s.trim()).ok())
    else {
        return false;
    };
    whole_seconds(modified) <= whole_seconds(since)
}

fn not_modified(conditions: &Conditions, etag: &str, modified: SystemTime) -> bool {
    not_modified_by(
        conditions.if_none_match.as_deref(),
        conditions.if_modified_since.as_deref(),
        etag,
        modified,
    )
}

fn whole_seconds(time: SystemTime) -> Duration {
    let since_epoch = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_secs(since_epoch.as_secs())
}

/// `If-Range` (RFC 9110 §13.1.5): the range applies only if the validator still matches; an entity tag
/// is compared strongly (a weak one never matches), a date exactly.
fn if_range_holds(if_range: Option<&str>, etag: &str, last_modified: &str) -> bool {
    match if_range.map(str::trim) {
        None => true,
        Some(tag) if tag.starts_with("W/") => false,
        Some(tag) if tag.starts_with('"') => tag == etag,
        Some(date) => date == last_modified,
    }
}

/// What a `Range` header asks of a file of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Ranged {
    /// No usable range: the whole file, 200. Also for several ranges (percore does not send
    /// `multipart/byteranges`; RFC 9110 lets a server ignore `Range`), an unknown unit and bad syntax.
    Whole,
    /// `start..=end`, 206.
    Part { start: u64, end: u64 },
    /// 416 with `Content-Range: bytes */size`.
    Unsatisfiable,
}

pub fn parse_range(value: &str, size: u64) -> Ranged {
    let Some((unit, specs)) = value.split_once('=') else {
        return Ranged::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Ranged::Whole;
    }
    let mut parsed = Vec::new();
    for spec in specs.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((first, last)) = spec.split_once('-') else {
            return Ranged::Whole;
        };
        let (first, last) = (first.trim(), last.trim());
        let number = |text: &str| {
            (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
                .then(|| text.parse::<u64>().ok())
                .flatten()
        };
        let range = match (number(first), number(last)) {
            // bytes=-N: the last N bytes.
            (None, Some(suffix)) if first.is_empty() => {
                (suffix > 0 && size > 0).then(|| (size.saturating_sub(suffix), size - 1))
            }
            (Some(start), None) if last.is_empty() => (start < size).then(|| (start, size - 1)),
            (Some(start), Some(end)) if start <= end => {
                (start < size).then(|| (start, end.min(size - 1)))
            }
            _ => return Ranged::Whole, // invalid: the header is ignored
        };
        parsed.push(range);
    }
    match parsed.as_slice() {
        [] => Ranged::Whole,
        [Some((start, end))] => Ranged::Part {
            start: *start,
            end: *end,
        },
        ranges if ranges.iter().all(Option::is_none) => Ranged::Unsatisfiable,
        _ => Ranged::Whole,
    }
}

/// By extension (`mime_guess`), `application/octet-stream` when unknown; text types in UTF-8, as
/// Starlette sends them.
fn content_type(path: &Path) -> HeaderValue {
    match mime_guess::from_path(path).first_raw() {
        Some(text) if text.starts_with("text/") => header_value(&format!("{text}; charset=utf-8")),
        Some(other) => HeaderValue::from_static(other),
        None => HeaderValue::from_static("application/octet-stream"),
    }
}

fn header_value(text: &str) -> HeaderValue {
    // Every value built here is ASCII (numbers, HTTP dates, quoted hex, known media types).
    HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static(""))
}

fn text_headers() -> Vec<(HeaderName, HeaderValue)> {
    vec![(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    )]
}

/// The response; a body longer than one chunk is read by a task that queues at most `STREAM_BUFFER`
/// chunks ahead of the client and stops when the client goes away (the receiver is dropped).
pub fn into_response(prepared: Prepared) -> HttpResponse {
    let body = match prepared.body {
        Body::Empty => ResponseBody::Full(Bytes::new()),
        Body::Full(bytes) => ResponseBody::Full(bytes),
        Body::File {
            file,
            offset,
            length,
        } => {
            let (sender, chunks) = mpsc::channel(STREAM_BUFFER);
            tokio::spawn(pump(file, offset, length, sender));
            ResponseBody::Stream(chunks, Arc::default())
        }
    };
    HttpResponse {
        status: prepared.status,
        headers: prepared.headers,
        body,
    }
}

async fn pump(
    file: Arc<File>,
    mut offset: u64,
    length: u64,
    sender: mpsc::Sender<Result<Bytes, StreamAborted>>,
) {
    let end = offset + length;
    while offset < end {
        let size = (end - offset).min(CHUNK as u64) as usize;
        let Ok(permit) = sender.reserve().await else {
            return; // the client went away
        };
        let reading = Arc::clone(&file);
        let read = tokio::task::spawn_blocking(move || {
            let mut buffer = vec![0; size];
            reading.read_exact_at(&mut buffer, offset).map(|()| buffer)
        })
        .await;
        match read {
            Ok(Ok(buffer)) => permit.send(Ok(Bytes::from(buffer))),
            // Shortened while being sent (or unreadable): the connection is aborted, so the client
            // cannot take a truncated body for the whole file.
            Ok(Err(err)) => return permit.send(Err(StreamAborted(err.to_string()))),
            Err(err) => return permit.send(Err(StreamAborted(err.to_string()))),
        }
        offset += size as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fresh directory tree: `<tmp>/secret.txt` outside, `<tmp>/public/` served.
    struct Tree(PathBuf);

    impl Tree {
        fn new(name: &str) -> Tree {
            let base = std::env::temp_dir().join(format!(
                "percore-static-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&base);
            std::fs::create_dir_all(base.join("public/sub")).unwrap();
            std::fs::write(base.join("secret.txt"), b"secret").unwrap();
            std::fs::write(base.join("public/a.txt"), b"hello world").unwrap();
            std::fs::write(base.join("public/sub/index.html"), b"<p>index</p>").unwrap();
            std::fs::write(base.join("public/404.html"), b"<p>missing</p>").unwrap();
            std::fs::write(base.join("public/app.js"), b"let x = 1;").unwrap();
            std::fs::write(base.join("public/app.js.gz"), b"GZ").unwrap();
            std::fs::write(base.join("public/app.js.br"), b"BR").unwrap();
            std::fs::write(base.join("public/back\\slash"), b"bs").unwrap();
            symlink(base.join("secret.txt"), base.join("public/out.txt")).unwrap();
            symlink(&base, base.join("public/escape")).unwrap();
            symlink("a.txt", base.join("public/in.txt")).unwrap();
            symlink(base.join("secret.txt"), base.join("public/a.txt.gz")).unwrap();
            Tree(base)
        }

        fn files(&self, html: bool) -> StaticFiles {
            StaticFiles::new(self.0.join("public"), html, "/static".into())
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn get(files: &StaticFiles, path: &str, conditions: &Conditions) -> Prepared {
        files.prepare(path, None, conditions).unwrap()
    }

    fn body(prepared: &Prepared) -> &[u8] {
        match &prepared.body {
            Body::Full(bytes) => bytes,
            Body::Empty => b"",
            Body::File { .. } => panic!("streamed"),
        }
    }

    fn header<'a>(prepared: &'a Prepared, name: &HeaderName) -> Option<&'a str> {
        prepared
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.to_str().unwrap())
    }

    #[test]
    fn segments_refuse_every_way_out_before_touching_the_disk() {
        for path in [
            "/..",
            "/../secret.txt",
            "/a/../../x",
            "/%2e%2e/secret.txt",
            "/%2E%2E",
            "/..%2fsecret.txt",
            "/sub%2Findex.html",
            "/%2fetc%2fpasswd",
            "/..\\secret.txt",
            "/sub%5c..%5csecret.txt",
            "/a.txt%00",
            "/a.txt%00.png",
            "foo", // "/staticfoo" below "/static"
        ] {
            assert_eq!(segments(path), None, "{path}");
        }
        let (parts, slash) = segments("/sub//./caf%C3%A9%20x.txt").unwrap();
        assert_eq!(
            parts,
            vec![b"sub".to_vec(), "café x.txt".as_bytes().to_vec()]
        );
        assert!(!slash);
        assert_eq!(segments("/sub/"), Some((vec![b"sub".to_vec()], true)));
        assert_eq!(segments(""), Some((vec![], false)));
    }

    #[test]
    fn files_inside_are_served_and_nothing_outside_is() {
        let tree = Tree::new("inside");
        let files = tree.files(false);
        let none = Conditions::default();
        let served = get(&files, "/static/a.txt", &none);
        assert_eq!(
            (served.status, body(&served)),
            (StatusCode::OK, &b"hello world"[..])
        );
        assert_eq!(
            header(&served, &header::CONTENT_TYPE),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(header(&served, &header::CONTENT_LENGTH), Some("11"));
        assert_eq!(header(&served, &header::ACCEPT_RANGES), Some("bytes"));
        assert!(header(&served, &header::LAST_MODIFIED)
            .unwrap()
            .ends_with(" GMT"));
        assert_eq!(body(&get(&files, "/static/in.txt", &none)), b"hello world");
        for path in [
            "/static/out.txt",
            "/static/escape/secret.txt",
            "/static/escape",
            "/static/../secret.txt",
            "/static/sub",
            "/static/sub/",
            "/static/",
            "/static",
            "/static/missing",
            "/static/back%5cslash",
        ] {
            let refused = get(&files, path, &none);
            assert_eq!(refused.status, StatusCode::NOT_FOUND, "{path}");
            assert_eq!(body(&refused), b"Not Found", "{path}");
        }
        // The directory gone: 404, not an error.
        let gone = StaticFiles::new(tree.0.join("nope"), true, "/static".into());
        assert_eq!(
            get(&gone, "/static/a.txt", &none).status,
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn html_mode_serves_index_redirects_to_the_slash_and_falls_back_to_404_html() {
        let tree = Tree::new("html");
        let files = tree.files(true);
        let none = Conditions::default();
        let index = get(&files, "/static/sub/", &none);
        assert_eq!(
            (index.status, body(&index)),
            (StatusCode::OK, &b"<p>index</p>"[..])
        );
        assert_eq!(
            header(&index, &header::CONTENT_TYPE),
            Some("text/html; charset=utf-8")
        );
        let redirect = files.prepare("/static/sub", Some("v=1"), &none).unwrap();
        assert_eq!(redirect.status, StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(
            header(&redirect, &header::LOCATION),
            Some("/static/sub/?v=1")
        );
        // Rebuilt from the decoded segments: one leading slash, whatever the request's path.
        let odd = tree.0.join("public").join("caf\u{e9} %");
        std::fs::create_dir(&odd).unwrap();
        std::fs::write(odd.join("index.html"), "<p>odd</p>").unwrap();
        let root = StaticFiles::new(tree.0.join("public"), true, String::new());
        for (path, location) in [
            ("//sub", "/sub/"),
            ("///sub", "/sub/"),
            ("/./%73ub", "/sub/"),
            ("/sub", "/sub/"),
            ("//caf%C3%A9%20%25", "/caf%C3%A9%20%25/"),
        ] {
            let redirect = get(&root, path, &none);
            assert_eq!(
                (redirect.status, header(&redirect, &header::LOCATION)),
                (StatusCode::TEMPORARY_REDIRECT, Some(location)),
                "{path}"
            );
        }
        for path in [
            "/static/missing",
            "/static/out.txt",
            "/static/%2e%2e/secret.txt",
        ] {
            let missing = get(&files, path, &none);
            assert_eq!(missing.status, StatusCode::NOT_FOUND, "{path}");
            assert_eq!(body(&missing), b"<p>missing</p>", "{path}");
        }
        // No index.html in the root: 404.html.
        assert_eq!(get(&files, "/static/", &none).status, StatusCode::NOT_FOUND);
    }

    #[test]
    fn validators_answer_304() {
        let tree = Tree::new("validators");
        let files = tree.files(false);
        let first = get(&files, "/static/a.txt", &Conditions::default());
        let etag = header(&first, &header::ETAG).unwrap().to_owned();
        let last_modified = header(&first, &header::LAST_MODIFIED).unwrap().to_owned();
        assert!(etag.starts_with('"') && etag.ends_with('"'));
        let with = |if_none_match: Option<&str>, if_modified_since: Option<&str>| Conditions {
            if_none_match: if_none_match.map(str::to_owned),
            if_modified_since: if_modified_since.map(str::to_owned),
            ..Conditions::default()
        };
        for conditions in [
            with(Some(&etag), None),
            with(Some(&format!("\"x\", W/{etag}")), None),
            with(Some("*"), None),
            with(None, Some(&last_modified)),
            with(None, Some("Fri, 01 Jan 2100 00:00:00 GMT")),
        ] {
            let answer = get(&files, "/static/a.txt", &conditions);
            assert_eq!(answer.status, StatusCode::NOT_MODIFIED, "{conditions:?}");
            assert_eq!(header(&answer, &header::ETAG), Some(etag.as_str()));
            assert_eq!(header(&answer, &header::CONTENT_LENGTH), None);
            assert_eq!(body(&answer), b"");
        }
        for conditions in [
            with(Some("\"other\""), None),
            // If-None-Match decides when present, even if the date would match.
            with(Some("\"other\""), Some(&last_modified)),
            with(None, Some("Thu, 01 Jan 1970 00:00:00 GMT")),
            with(None, Some("not a date")),
        ] {
            let answer = get(&files, "/static/a.txt", &conditions);
            assert_eq!(answer.status, StatusCode::OK, "{conditions:?}");
        }
    }

    #[test]
    fn ranges() {
        assert_eq!(
            parse_range("bytes=0-4", 11),
            Ranged::Part { start: 0, end: 4 }
        );
        assert_eq!(
            parse_range("bytes=6-", 11),
            Ranged::Part { start: 6, end: 10 }
        );
        assert_eq!(
            parse_range("bytes=-5", 11),
            Ranged::Part { start: 6, end: 10 }
        );
        assert_eq!(
            parse_range("bytes=-50", 11),
            Ranged::Part { start: 0, end: 10 }
        );
        assert_eq!(
            parse_range("BYTES = 3-100", 11),
            Ranged::Part { start: 3, end: 10 }
        );
        assert_eq!(parse_range("bytes=11-", 11), Ranged::Unsatisfiable);
        assert_eq!(parse_range("bytes=20-30", 11), Ranged::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 11), Ranged::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Ranged::Unsatisfiable);
        assert_eq!(parse_range("bytes=20-30, 40-50", 11), Ranged::Unsatisfiable);
        // Several ranges: the whole file (no multipart/byteranges).
        assert_eq!(parse_range("bytes=0-1, 4-5", 11), Ranged::Whole);
        assert_eq!(parse_range("bytes=0-1, 40-50", 11), Ranged::Whole);
        // Invalid or foreign: ignored.
        for ignored in [
            "bytes=5-2",
            "bytes=a-b",
            "bytes=1",
            "items=0-1",
            "0-1",
            "bytes=",
            "bytes=+1-2",
        ] {
            assert_eq!(parse_range(ignored, 11), Ranged::Whole, "{ignored}");
        }

        let tree = Tree::new("ranges");
        let files = tree.files(false);
        let range = |value: &str| Conditions {
            range: Some(value.to_owned()),
            ..Conditions::default()
        };
        let part = get(&files, "/static/a.txt", &range("bytes=6-"));
        assert_eq!(
            (part.status, body(&part)),
            (StatusCode::PARTIAL_CONTENT, &b"world"[..])
        );
        assert_eq!(header(&part, &header::CONTENT_RANGE), Some("bytes 6-10/11"));
        assert_eq!(header(&part, &header::CONTENT_LENGTH), Some("5"));
        let refused = get(&files, "/static/a.txt", &range("bytes=99-"));
        assert_eq!(refused.status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(header(&refused, &header::CONTENT_RANGE), Some("bytes */11"));
        // If-Range: a changed validator gets the whole file; HEAD ignores Range.
        let etag = header(&part, &header::ETAG).unwrap().to_owned();
        let mut conditions = range("bytes=6-");
        conditions.if_range = Some(etag);
        assert_eq!(
            get(&files, "/static/a.txt", &conditions).status,
            StatusCode::PARTIAL_CONTENT
        );
        conditions.if_range = Some("\"stale\"".into());
        assert_eq!(
            get(&files, "/static/a.txt", &conditions).status,
            StatusCode::OK
        );
        let mut head = range("bytes=6-");
        head.head = true;
        let headed = get(&files, "/static/a.txt", &head);
        assert_eq!((headed.status, body(&headed)), (StatusCode::OK, &b""[..]));
        assert_eq!(header(&headed, &header::CONTENT_LENGTH), Some("11"));
    }

    #[test]
    fn precompressed_siblings_when_accepted() {
        let tree = Tree::new("encodings");
        let files = tree.files(false);
        let accepting = |value: &str| Conditions {
            accept_encoding: Some(value.to_owned()),
            ..Conditions::default()
        };
        for (accept, expected, coding) in [
            ("gzip, deflate, br", &b"BR"[..], Some("br")),
            ("gzip", b"GZ", Some("gzip")),
            ("br;q=0, gzip;q=0.5", b"GZ", Some("gzip")),
            ("*", b"BR", Some("br")),
            ("*, br;q=0", b"GZ", Some("gzip")),
            ("identity", b"let x = 1;", None),
            ("gzip;q=0, br;q=0.000", b"let x = 1;", None),
        ] {
            let answer = get(&files, "/static/app.js", &accepting(accept));
            assert_eq!(body(&answer), expected, "{accept}");
            assert_eq!(
                header(&answer, &header::CONTENT_ENCODING),
                coding,
                "{accept}"
            );
            assert_eq!(header(&answer, &header::VARY), Some("Accept-Encoding"));
            assert_eq!(
                header(&answer, &header::CONTENT_TYPE),
                Some("text/javascript; charset=utf-8")
            );
        }
        let plain = get(&files, "/static/app.js", &Conditions::default());
        let gzipped = get(&files, "/static/app.js", &accepting("gzip"));
        assert_ne!(
            header(&plain, &header::ETAG),
            header(&gzipped, &header::ETAG)
        );
        // A sibling that is a symlink out is never used; no sibling, no Vary.
        let answer = get(&files, "/static/a.txt", &accepting("gzip"));
        assert_eq!(body(&answer), b"hello world");
        assert_eq!(header(&answer, &header::CONTENT_ENCODING), None);
        assert_eq!(header(&answer, &header::VARY), None);
    }

    #[tokio::test]
    async fn large_files_stream_in_bounded_chunks() {
        let tree = Tree::new("large");
        let content: Vec<u8> = (0..(3 * CHUNK + 123)).map(|i| (i % 251) as u8).collect();
        std::fs::write(tree.0.join("public/big.bin"), &content).unwrap();
        let files = Arc::new(tree.files(false));
        let prepared = get(&files, "/static/big.bin", &Conditions::default());
        assert_eq!(
            header(&prepared, &header::CONTENT_TYPE),
            Some("application/octet-stream")
        );
        let ResponseBody::Stream(mut chunks, _) = into_response(prepared).body else {
            panic!("a large file must stream");
        };
        let mut received = Vec::new();
        while let Some(chunk) = chunks.recv().await {
            let chunk = chunk.unwrap();
            assert!(chunk.len() <= CHUNK);
            received.extend_from_slice(&chunk);
        }
        assert!(received == content);
        // A range in the middle of it.
        let conditions = Conditions {
            range: Some(format!("bytes={}-{}", CHUNK - 1, 2 * CHUNK + 5)),
            ..Conditions::default()
        };
        let prepared = get(&files, "/static/big.bin", &conditions);
        assert_eq!(prepared.status, StatusCode::PARTIAL_CONTENT);
        let ResponseBody::Stream(mut chunks, _) = into_response(prepared).body else {
            panic!("a large range must stream");
        };
        let mut received = Vec::new();
        while let Some(chunk) = chunks.recv().await {
            received.extend_from_slice(&chunk.unwrap());
        }
        assert!(received == content[CHUNK - 1..=2 * CHUNK + 5]);
    }
}
