//! Request bodies of HTML forms: `application/x-www-form-urlencoded` and `multipart/form-data`, parsed
//! while the body streams in (multipart with the `multer` crate), into named text fields and uploaded
//! files. File contents stay in memory up to `FormLimits::spool_threshold` and go to an anonymous
//! temporary file past it, so an upload's size is bounded by `--max-body-size`, not by memory.
//!
//! Invariants: every buffer is bounded — the whole body by `max_body_size`, a text field by
//! `max_part_size`, the number of fields and of files by `max_fields`/`max_files` (Starlette's and
//! python-multipart's defaults), a part's header section by `MAX_PART_HEADER` (checked in one pass
//! before multer sees the bytes, so the work per byte is bounded too); urlencoded pairs are decoded
//! one by one, never more than `max_fields + 1`; a file part is in memory only up to
//! `spool_threshold`. Malformed input is an error that names what is wrong (`FormError`), never a
//! panic; nothing here knows about Python.
//!
//! Over 500 lines: the tests (bodies fed in every chunking) are ~340 of them; the header guard
//! (`HeaderGuard`, ~150) is here because it mirrors how multer reads this module's bodies.

use std::fmt;
use std::io::{Seek, SeekFrom, Write};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};

use crate::query::{decode_component, raw_pairs};

/// The longest part header section: from a delimiter's `--boundary` to the blank line ending the
/// part's headers (and the longest preamble before the first delimiter). multer rescans what it holds
/// of a header section for its end on every chunk, so this bounds that work, not only the memory.
pub const MAX_PART_HEADER: usize = 16 * 1024;

/// The bounds one form body is parsed under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FormLimits {
    /// `--max-body-size`: the whole body.
    pub max_body_size: u64,
    /// Parts with a filename (uploads), as Starlette's `max_files`.
    pub max_files: usize,
    /// Parts without one (and urlencoded pairs), as Starlette's `max_fields`.
    pub max_fields: usize,
    /// The largest text field (not a file), as Starlette's `max_part_size`.
    pub max_part_size: usize,
    /// A file larger than this is written to a temporary file instead of kept in memory
    /// (python-multipart's and Starlette's `spool_max_size`).
    pub spool_threshold: usize,
}

impl FormLimits {
    /// Starlette's `Request.form()` defaults (1000 files, 1000 fields, 1 MiB per text field) and
    /// python-multipart's 1 MiB spooling threshold, under `max_body_size`.
    pub fn with_body_limit(max_body_size: u64) -> Self {
        FormLimits {
            max_body_size,
            max_files: 1000,
            max_fields: 1000,
            max_part_size: 1024 * 1024,
            spool_threshold: 1024 * 1024,
        }
    }
}

/// An uploaded file's contents: in memory (the chunks as they arrived, joined only where they are
/// consumed, so a 1 MB upload is copied once less), or (past the spool threshold) in an unlinked
/// temporary file, positioned at its start.
#[derive(Debug)]
pub enum Spooled {
    Memory(Vec<Bytes>),
    Disk(std::fs::File),
}

/// A part with a filename.
#[derive(Debug)]
pub struct UploadedFile {
    pub filename: String,
    pub content_type: Option<String>,
    /// The part's own headers (lower-case names), in order.
    pub headers: Vec<(String, String)>,
    pub size: u64,
    pub data: Spooled,
}

#[derive(Debug)]
pub enum FormValue {
    Text(String),
    File(UploadedFile),
}

/// The fields of a form, in the order sent; a name may repeat.
#[derive(Debug, Default)]
pub struct Form {
    pub items: Vec<(String, FormValue)>,
}

impl Form {
    /// The values sent under `name`, in order.
    pub fn get<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a FormValue> + 'a {
        self.items
            .iter()
            .filter(move |(key, _)| key == name)
            .map(|(_, value)| value)
    }

    /// Takes the files sent under `name` out of the form (they are moved into the handler's arguments).
    pub fn take_files(&mut self, name: &str) -> Vec<UploadedFile> {
        let mut files = Vec::new();
        let mut kept = Vec::with_capacity(self.items.len());
        for (key, value) in self.items.drain(..) {
            match value {
                FormValue::File(file) if key == name => files.push(file),
                value => kept.push((key, value)),
            }
        }
        self.items = kept;
        files
    }
}

/// Why a form body was refused.
#[derive(Debug)]
pub enum FormError<E> {
    /// Past `max_body_size`: 413.
    TooLarge,
    /// A bound of `FormLimits` other than the body size, or malformed input: 400 with this message.
    Invalid(String),
    /// Reading the body failed (the client left, `--body-timeout`).
    Body(E),
    /// The temporary file for an upload could not be written.
    Spool(std::io::Error),
}

impl<E: fmt::Display> fmt::Display for FormError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormError::TooLarge => f.write_str("the body is larger than --max-body-size"),
            FormError::Invalid(message) => f.write_str(message),
            FormError::Body(err) => write!(f, "reading the body failed: {err}"),
            FormError::Spool(err) => {
                write!(f, "could not write an upload to a temporary file: {err}")
            }
        }
    }
}

/// Which form encoding a `Content-Type` names, if any.
#[derive(Debug, PartialEq, Eq)]
pub enum Encoding {
    UrlEncoded,
    /// With the boundary.
    Multipart(String),
}

/// The form encoding of a request by its `Content-Type`; `Ok(None)` for anything else (the form is then
/// empty, as in Starlette), an error for `multipart/form-data` without a usable boundary.
pub fn encoding(content_type: Option<&str>) -> Result<Option<Encoding>, String> {
    let Some(content_type) = content_type else {
        return Ok(None);
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/x-www-form-urlencoded" => Ok(Some(Encoding::UrlEncoded)),
        "multipart/form-data" => multer::parse_boundary(content_type)
            .map(|boundary| Some(Encoding::Multipart(boundary)))
            .map_err(|_| "Missing boundary in multipart.".to_owned()),
        _ => Ok(None),
    }
}

/// Reads and parses a form body from `body` (chunks as they arrive) under `limits`.
pub async fn read<S, E>(
    body: S,
    encoding: Encoding,
    limits: FormLimits,
) -> Result<Form, FormError<E>>
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    match encoding {
        Encoding::UrlEncoded => read_urlencoded(body, limits).await,
        Encoding::Multipart(boundary) => read_multipart(body, boundary, limits).await,
    }
}

async fn read_urlencoded<S, E>(body: S, limits: FormLimits) -> Result<Form, FormError<E>>
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
{
    let mut body = std::pin::pin!(body);
    let mut collected = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(FormError::Body)?;
        if (collected.len() + chunk.len()) as u64 > limits.max_body_size {
            return Err(FormError::TooLarge);
        }
        collected.extend_from_slice(&chunk);
    }
    parse_urlencoded(&collected, limits)
}

/// An urlencoded body already read whole.
pub fn parse_urlencoded<E>(body: &[u8], limits: FormLimits) -> Result<Form, FormError<E>> {
    urlencoded_fields(raw_pairs(&String::from_utf8_lossy(body)), limits)
}

/// The fields of still-encoded pairs, pulled one by one: a body of millions of pairs is refused at
/// the first one past `max_fields`, having decoded no more than that.
fn urlencoded_fields<'a, E>(
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
    limits: FormLimits,
) -> Result<Form, FormError<E>> {
    let mut form = Form::default();
    for (name, value) in pairs {
        if form.items.len() >= limits.max_fields {
            return Err(too_many_fields(limits));
        }
        // A decoded value is at least a third of its raw length: past three times the limit it is
        // refused without being decoded; below, by its decoded length (the limit is on the text).
        if value.len() > limits.max_part_size.saturating_mul(3) {
            return Err(part_too_large(limits));
        }
        let value = decode_component(value);
        if value.len() > limits.max_part_size {
            return Err(part_too_large(limits));
        }
        form.items
            .push((decode_component(name), FormValue::Text(value)));
    }
    Ok(form)
}

fn too_many_fields<E>(limits: FormLimits) -> FormError<E> {
    FormError::Invalid(format!(
        "Too many fields. Maximum number of fields is {}.",
        limits.max_fields
    ))
}

fn part_too_large<E>(limits: FormLimits) -> FormError<E> {
    FormError::Invalid(format!(
        "Part exceeded maximum size of {}KB.",
        limits.max_part_size / 1024
    ))
}

async fn read_multipart<S, E>(
    body: S,
    boundary: String,
    limits: FormLimits,
) -> Result<Form, FormError<E>>
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    let constraints = multer::Constraints::new()
        .size_limit(multer::SizeLimit::new().whole_stream(limits.max_body_size));
    let mut guard = HeaderGuard::new(&boundary);
    let body = body.map(move |chunk| match chunk {
        Ok(chunk) => guard
            .check(&chunk)
            .map(|()| chunk)
            .map_err(Guarded::Refused),
        Err(err) => Err(Guarded::Body(err)),
    });
    let mut multipart = multer::Multipart::with_constraints(body, boundary, constraints);
    let mut form = Form::default();
    let (mut fields, mut files) = (0, 0);
    while let Some(mut part) = multipart.next_field().await.map_err(from_multer)? {
        let name = part.name().unwrap_or("").to_owned();
        // A file input left empty is sent with `filename=""`: a text field (empty), as in Starlette.
        let filename = part.file_name().filter(|name| !name.is_empty());
        let Some(filename) = filename.map(str::to_owned) else {
            fields += 1;
            if fields > limits.max_fields {
                return Err(too_many_fields(limits));
            }
            let mut value = BytesMut::new();
            while let Some(chunk) = part.chunk().await.map_err(from_multer)? {
                if value.len() + chunk.len() > limits.max_part_size {
                    return Err(part_too_large(limits));
                }
                value.extend_from_slice(&chunk);
            }
            let text = String::from_utf8_lossy(&value).into_owned();
            form.items.push((name, FormValue::Text(text)));
            continue;
        };
        files += 1;
        if files > limits.max_files {
            return Err(FormError::Invalid(format!(
                "Too many files. Maximum number of files is {}.",
                limits.max_files
            )));
        }
        let headers = part
            .headers()
            .iter()
            .map(|(k, v)| {
                let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
                (k.as_str().to_owned(), value)
            })
            .collect();
        let content_type = part.content_type().map(|mime| mime.to_string());
        let mut spool = Spool::new(limits.spool_threshold);
        while let Some(chunk) = part.chunk().await.map_err(from_multer)? {
            spool.write(chunk).map_err(FormError::Spool)?;
        }
        let (size, data) = spool.finish().map_err(FormError::Spool)?;
        form.items.push((
            name,
            FormValue::File(UploadedFile {
                filename,
                content_type,
                headers,
                size,
                data,
            }),
        ));
    }
    Ok(form)
}

/// multer's error as ours: the body stream's own error (or the guard's) comes back out of multer's box.
fn from_multer<E: std::error::Error + Send + Sync + 'static>(err: multer::Error) -> FormError<E> {
    match err {
        multer::Error::StreamSizeExceeded { .. } => FormError::TooLarge,
        multer::Error::StreamReadFailed(source) => match source.downcast::<Guarded<E>>() {
            Ok(guarded) => match *guarded {
                Guarded::Body(err) => FormError::Body(err),
                Guarded::Refused(message) => FormError::Invalid(message.to_owned()),
            },
            Err(other) => FormError::Invalid(format!("Malformed multipart body: {other}")),
        },
        other => FormError::Invalid(format!("Malformed multipart body: {other}")),
    }
}

/// What the body stream handed to multer yields in place of a chunk: the body's own error, or the
/// guard's refusal.
#[derive(Debug)]
enum Guarded<E> {
    Body(E),
    Refused(&'static str),
}

impl<E: fmt::Display> fmt::Display for Guarded<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Guarded::Body(err) => err.fmt(f),
            Guarded::Refused(message) => f.write_str(message),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for Guarded<E> {}

/// Where in the multipart grammar the guard is, as multer reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scan {
    /// Before the first `--boundary`.
    Preamble,
    /// After a `--boundary`, up to the end of its line: `--` first closes the body.
    DelimiterLine,
    /// Up to the blank line after a part's headers.
    Headers,
    /// A part's data, up to the next `\r\n--boundary`.
    Data,
    /// Past the close delimiter: nothing more is looked at.
    Done,
}

/// Checks each chunk before multer sees it, in one pass over the new bytes (a few bytes carried over
/// between chunks): a part's header section (and the preamble) must end within `MAX_PART_HEADER`.
/// Without it, a client trickling an endless header makes multer rescan all of it per chunk
/// (quadratic CPU on the loop), bounded only by `--max-body-size`.
struct HeaderGuard {
    scan: Scan,
    /// Bytes of the current preamble or header section so far.
    seen: usize,
    /// The tail of what was scanned in this state, for a match split across chunks.
    carry: Vec<u8>,
    /// The first two bytes after a `--boundary` (`--` closes the body).
    line_start: Vec<u8>,
    delimiter: memchr::memmem::Finder<'static>,
    next_delimiter: memchr::memmem::Finder<'static>,
    crlf: memchr::memmem::Finder<'static>,
    blank_line: memchr::memmem::Finder<'static>,
}

impl HeaderGuard {
    fn new(boundary: &str) -> Self {
        let finder = |pattern: String| memchr::memmem::Finder::new(pattern.as_bytes()).into_owned();
        HeaderGuard {
            scan: Scan::Preamble,
            seen: 0,
            carry: Vec::new(),
            line_start: Vec::new(),
            delimiter: finder(format!("--{boundary}")),
            next_delimiter: finder(format!("\r\n--{boundary}")),
            crlf: finder("\r\n".into()),
            blank_line: finder("\r\n\r\n".into()),
        }
    }

    fn check(&mut self, mut rest: &[u8]) -> Result<(), &'static str> {
        while !rest.is_empty() {
            let finder = match self.scan {
                Scan::Done => return Ok(()),
                Scan::Preamble => &self.delimiter,
                Scan::DelimiterLine => {
                    let wanted = (2 - self.line_start.len()).min(rest.len());
                    self.line_start.extend_from_slice(&rest[..wanted]);
                    if self.line_start == b"--" {
                        self.scan = Scan::Done;
                        return Ok(());
                    }
                    &self.crlf
                }
                Scan::Headers => &self.blank_line,
                Scan::Data => &self.next_delimiter,
            };
            let found = find_across(finder, &mut self.carry, rest);
            let bounded = self.scan != Scan::Data;
            if bounded {
                self.seen += found.unwrap_or(rest.len());
                if self.seen > MAX_PART_HEADER {
                    let message = if self.scan == Scan::Preamble {
                        "Multipart preamble too large."
                    } else {
                        "Part header too large."
                    };
                    self.scan = Scan::Done;
                    return Err(message);
                }
            }
            let Some(end) = found else {
                return Ok(());
            };
            rest = &rest[end..];
            self.scan = match self.scan {
                Scan::Preamble | Scan::Data => Scan::DelimiterLine,
                Scan::DelimiterLine => Scan::Headers,
                Scan::Headers | Scan::Done => Scan::Data,
            };
            if self.scan == Scan::DelimiterLine {
                self.seen = 0;
                self.line_start.clear();
            }
        }
        Ok(())
    }
}

/// Where `finder`'s pattern ends in `rest` (how many of its bytes up to the match's end), looking also
/// at matches begun in the previous chunks (`carry`, their tail), which it keeps up to date.
fn find_across(
    finder: &memchr::memmem::Finder<'_>,
    carry: &mut Vec<u8>,
    rest: &[u8],
) -> Option<usize> {
    let keep = finder.needle().len() - 1;
    if !carry.is_empty() {
        let mut window = carry.clone();
        window.extend_from_slice(&rest[..rest.len().min(keep)]);
        if let Some(at) = finder.find(&window) {
            let end = (at + finder.needle().len()).saturating_sub(carry.len());
            carry.clear();
            return Some(end);
        }
    }
    if let Some(at) = finder.find(rest) {
        carry.clear();
        return Some(at + finder.needle().len());
    }
    if rest.len() >= keep {
        carry.clear();
    } else {
        carry.drain(
            ..(carry.len() + rest.len())
                .saturating_sub(keep)
                .min(carry.len()),
        );
    }
    carry.extend_from_slice(&rest[rest.len().saturating_sub(keep)..]);
    None
}

/// A file part's bytes: kept in memory until they pass the threshold, then moved to an unlinked
/// temporary file (it disappears when closed, also if the process dies).
///
/// The file is written on the loop thread: each write is one body chunk (tens of KiB) going to the
/// page cache, microseconds, where a hand-off to a blocking thread per chunk would cost more.
struct Spool {
    threshold: usize,
    chunks: Vec<Bytes>,
    file: Option<std::fs::File>,
    size: u64,
}

impl Spool {
    fn new(threshold: usize) -> Self {
        Spool {
            threshold,
            chunks: Vec::new(),
            file: None,
            size: 0,
        }
    }

    fn write(&mut self, chunk: Bytes) -> std::io::Result<()> {
        self.size += chunk.len() as u64;
        if let Some(file) = &mut self.file {
            return file.write_all(&chunk);
        }
        if self.size > self.threshold as u64 {
            let mut file = tempfile::tempfile()?;
            for held in self.chunks.drain(..) {
                file.write_all(&held)?;
            }
            file.write_all(&chunk)?;
            self.file = Some(file);
            return Ok(());
        }
        // Chunks are kept as they came (no copy): the bridge copies them once, into the Python object.
        self.chunks.push(chunk);
        Ok(())
    }

    fn finish(self) -> std::io::Result<(u64, Spooled)> {
        if let Some(mut file) = self.file {
            file.flush()?;
            file.seek(SeekFrom::Start(0))?;
            return Ok((self.size, Spooled::Disk(file)));
        }
        Ok((self.size, Spooled::Memory(self.chunks)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[derive(Debug)]
    struct Broken;

    impl fmt::Display for Broken {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("connection reset")
        }
    }

    impl std::error::Error for Broken {}

    fn run<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    /// The body in chunks of `size` bytes, as it would stream in.
    fn chunked(body: &[u8], size: usize) -> impl Stream<Item = Result<Bytes, Broken>> + Send {
        let chunks: Vec<Result<Bytes, Broken>> = body
            .chunks(size)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures_util::stream::iter(chunks)
    }

    fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (name, filename, data) in parts {
            body.extend_from_slice(b"--XyZ\r\n");
            match filename {
                Some(file) => body.extend_from_slice(
                    format!(
                        "Content-Disposition: form-data; name=\"{name}\"; filename=\"{file}\"\r\n\
                         Content-Type: text/plain\r\n\r\n"
                    )
                    .as_bytes(),
                ),
                None => body.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
                ),
            }
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"--XyZ--\r\n");
        body
    }

    fn parse(body: &[u8], chunk: usize, limits: FormLimits) -> Result<Form, FormError<Broken>> {
        let encoding = Encoding::Multipart("XyZ".into());
        run(read(chunked(body, chunk), encoding, limits))
    }

    fn limits() -> FormLimits {
        FormLimits::with_body_limit(1 << 30)
    }

    #[test]
    fn encodings_by_content_type() {
        assert_eq!(
            encoding(Some("application/x-www-form-urlencoded; charset=utf-8")),
            Ok(Some(Encoding::UrlEncoded))
        );
        assert_eq!(
            encoding(Some("multipart/form-data; boundary=abc")),
            Ok(Some(Encoding::Multipart("abc".into())))
        );
        assert_eq!(encoding(Some("application/json")), Ok(None));
        assert_eq!(encoding(None), Ok(None));
        assert!(encoding(Some("multipart/form-data")).is_err());
    }

    #[test]
    fn fields_and_files_in_order_whatever_the_chunking() {
        let body = multipart(&[
            ("name", None, b"pen"),
            ("upload", Some("a.txt"), b"hello\r\nworld"),
            ("name", None, "caf\u{e9}".as_bytes()),
        ]);
        for chunk in [1, 7, 64, body.len()] {
            let form = parse(&body, chunk, limits()).unwrap();
            let names: Vec<&str> = form.items.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(names, ["name", "upload", "name"]);
            let texts: Vec<&str> = form
                .get("name")
                .filter_map(|v| match v {
                    FormValue::Text(t) => Some(t.as_str()),
                    FormValue::File(_) => None,
                })
                .collect();
            assert_eq!(texts, ["pen", "caf\u{e9}"]);
            let Some(FormValue::File(file)) = form.get("upload").next() else {
                panic!("no file");
            };
            assert_eq!(file.filename, "a.txt");
            assert_eq!(file.content_type.as_deref(), Some("text/plain"));
            assert_eq!(file.size, 12);
            assert!(file.headers.iter().any(|(k, _)| k == "content-disposition"));
            assert!(matches!(&file.data, Spooled::Memory(c) if c.concat() == b"hello\r\nworld"));
        }
    }

    #[test]
    fn an_empty_file_input_is_an_empty_text_field() {
        let form = parse(&multipart(&[("upload", Some(""), b"")]), 8, limits()).unwrap();
        assert!(
            matches!(&form.items[..], [(name, FormValue::Text(t))] if name == "upload" && t.is_empty())
        );
    }

    #[test]
    fn a_file_past_the_threshold_is_on_disk() {
        let big = vec![b'x'; 300_000];
        let body = multipart(&[("upload", Some("big.bin"), &big)]);
        let mut limits = limits();
        limits.spool_threshold = 100_000;
        let mut form = parse(&body, 16 * 1024, limits).unwrap();
        let mut files = form.take_files("upload");
        assert!(form.items.is_empty());
        let file = files.pop().unwrap();
        assert_eq!(file.size, 300_000);
        let Spooled::Disk(mut disk) = file.data else {
            panic!("a 300 kB upload stayed in memory");
        };
        let mut read = Vec::new();
        disk.read_to_end(&mut read).unwrap();
        assert_eq!(read, big);
    }

    #[test]
    fn limits_are_enforced_with_starlettes_messages() {
        let mut small = limits();
        small.max_fields = 2;
        small.max_files = 1;
        small.max_part_size = 4;
        let message = |result: Result<Form, FormError<Broken>>| match result {
            Err(FormError::Invalid(message)) => message,
            other => panic!("not refused: {other:?}"),
        };
        let three_fields = multipart(&[("a", None, b"1"), ("b", None, b"2"), ("c", None, b"3")]);
        assert_eq!(
            message(parse(&three_fields, 5, small)),
            "Too many fields. Maximum number of fields is 2."
        );
        let two_files = multipart(&[("a", Some("x"), b"1"), ("b", Some("y"), b"2")]);
        assert_eq!(
            message(parse(&two_files, 5, small)),
            "Too many files. Maximum number of files is 1."
        );
        let long_field = multipart(&[("a", None, b"12345")]);
        assert_eq!(
            message(parse(&long_field, 2, small)),
            "Part exceeded maximum size of 0KB."
        );
        // A file is not a text field: only the body limit bounds it.
        assert!(parse(&multipart(&[("a", Some("f"), b"12345")]), 2, small).is_ok());
        let body = multipart(&[("a", Some("f"), &[0u8; 1000])]);
        small.max_body_size = 500;
        assert!(matches!(parse(&body, 100, small), Err(FormError::TooLarge)));
    }

    #[test]
    fn malformed_and_failing_bodies() {
        let truncated = &multipart(&[("a", None, b"value")])[..20];
        assert!(matches!(
            parse(truncated, 4, limits()),
            Err(FormError::Invalid(m)) if m.starts_with("Malformed multipart body")
        ));
        let garbage = b"this is not multipart at all";
        assert!(matches!(
            parse(garbage, 4, limits()),
            Err(FormError::Invalid(_))
        ));
        let failing =
            futures_util::stream::iter(vec![Ok(Bytes::from_static(b"--XyZ\r\n")), Err(Broken)]);
        let result = run(read(failing, Encoding::Multipart("XyZ".into()), limits()));
        assert!(matches!(result, Err(FormError::Body(Broken))));
    }

    #[test]
    fn urlencoded_pairs_are_pulled_only_up_to_the_field_limit() {
        // 16 MiB of `a&a&...` once built 8M pairs (~0.7 GB) before the limit was looked at.
        let body = "a&".repeat(1_000_000);
        let mut pulled = 0;
        let pairs = raw_pairs(&body).inspect(|_| pulled += 1);
        let result = urlencoded_fields::<Broken>(pairs, limits());
        assert!(matches!(
            result,
            Err(FormError::Invalid(m)) if m == "Too many fields. Maximum number of fields is 1000."
        ));
        assert_eq!(pulled, 1001);
    }

    #[test]
    fn an_urlencoded_value_is_limited_by_its_decoded_length() {
        let mut small = limits();
        small.max_part_size = 4;
        let parse = |body: &[u8]| parse_urlencoded::<Broken>(body, small);
        // 12 raw bytes, 4 decoded: under the limit.
        let form = parse(b"a=%41%42%43%44").unwrap();
        assert!(matches!(&form.items[..], [(_, FormValue::Text(t))] if t == "ABCD"));
        for refused in [
            &b"a=12345"[..],
            b"a=%41%41%41%41%41",
            b"a=%41%41%41%41%41%41%41%41",
        ] {
            assert!(
                matches!(parse(refused), Err(FormError::Invalid(m)) if m.starts_with("Part exceeded")),
                "{refused:?}"
            );
        }
    }

    /// A part whose header section (from after `--XyZ` to the end of the blank line) is `size` bytes.
    fn part_with_header_section(size: usize) -> Vec<u8> {
        let start = "\r\nContent-Disposition: form-data; name=\"a\"\r\nX-Pad: ";
        let end = "\r\n\r\n";
        let pad = "p".repeat(size - start.len() - end.len());
        format!("--XyZ{start}{pad}{end}value\r\n--XyZ--\r\n").into_bytes()
    }

    #[test]
    fn a_part_header_section_is_bounded() {
        for chunk in [1, 7, 4096, 1 << 20] {
            let form = parse(&part_with_header_section(MAX_PART_HEADER), chunk, limits()).unwrap();
            assert!(
                matches!(&form.items[..], [(n, FormValue::Text(t))] if n == "a" && t == "value")
            );
            let refused = parse(
                &part_with_header_section(MAX_PART_HEADER + 1),
                chunk,
                limits(),
            );
            assert!(
                matches!(&refused, Err(FormError::Invalid(m)) if m == "Part header too large."),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn a_trickled_endless_part_header_is_cut_off_at_the_limit() {
        // The second part's header never ends: a client trickling it byte by byte made multer rescan
        // everything it held per byte, up to --max-body-size.
        let mut body = multipart(&[("first", None, b"1")]);
        body.truncate(body.len() - b"--XyZ--\r\n".len());
        body.extend_from_slice(b"--XyZ\r\nContent-Disposition: form-data; name=\"b\"\r\nX-Junk: ");
        body.extend(std::iter::repeat_n(b'j', 4 * MAX_PART_HEADER));
        body.extend_from_slice(b"\r\n\r\nvalue\r\n--XyZ--\r\n");
        let pulled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = pulled.clone();
        let trickle = chunked(&body, 1).inspect(move |_| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        let result = run(read(trickle, Encoding::Multipart("XyZ".into()), limits()));
        assert!(
            matches!(&result, Err(FormError::Invalid(m)) if m == "Part header too large."),
            "{result:?}"
        );
        let pulled = pulled.load(std::sync::atomic::Ordering::Relaxed);
        assert!(pulled < 200 + MAX_PART_HEADER, "{pulled} bytes read");
        // The same before the first delimiter.
        let mut preamble = vec![b'x'; MAX_PART_HEADER + 1];
        preamble.extend_from_slice(&multipart(&[("a", None, b"1")]));
        assert!(matches!(
            parse(&preamble, 1000, limits()),
            Err(FormError::Invalid(m)) if m == "Multipart preamble too large."
        ));
        preamble.drain(..64); // the first delimiter is counted with the preamble
        assert!(parse(&preamble, 1000, limits()).is_ok());
    }

    #[test]
    fn a_multipart_body_split_at_any_byte_parses_the_same() {
        // A preamble, transport padding after a delimiter, data holding near-delimiters, an epilogue.
        let body: &[u8] =
            b"preamble\r\n--XyZ  \r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n\
            one\r\n--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"f.txt\"\r\n\
            Content-Type: text/plain\r\n\r\n\r\n--Xy\r\n-\r\n\r\n--XyZ--\r\nepilogue --XyZ\r\n";
        for at in 0..=body.len() {
            let halves = vec![
                Ok::<_, Broken>(Bytes::copy_from_slice(&body[..at])),
                Ok(Bytes::copy_from_slice(&body[at..])),
            ];
            let form = run(read(
                futures_util::stream::iter(halves),
                Encoding::Multipart("XyZ".into()),
                limits(),
            ))
            .unwrap_or_else(|err| panic!("split at {at}: {err}"));
            let [(a, FormValue::Text(text)), (f, FormValue::File(file))] = &form.items[..] else {
                panic!("split at {at}: {:?}", form.items);
            };
            assert_eq!((a.as_str(), text.as_str(), f.as_str()), ("a", "one", "f"));
            assert!(matches!(&file.data, Spooled::Memory(c) if c.concat() == b"\r\n--Xy\r\n-\r\n"));
        }
    }

    #[test]
    fn urlencoded_bodies() {
        let body = b"name=caf%C3%A9+au+lait&tag=a&tag=b&empty=";
        let form: Form = run(read(chunked(body, 3), Encoding::UrlEncoded, limits())).unwrap();
        let pairs: Vec<(&str, &str)> = form
            .items
            .iter()
            .map(|(k, v)| match v {
                FormValue::Text(t) => (k.as_str(), t.as_str()),
                FormValue::File(_) => panic!("a file in an urlencoded body"),
            })
            .collect();
        assert_eq!(
            pairs,
            [
                ("name", "caf\u{e9} au lait"),
                ("tag", "a"),
                ("tag", "b"),
                ("empty", "")
            ]
        );
        let mut small = limits();
        small.max_fields = 2;
        assert!(matches!(
            parse_urlencoded::<Broken>(b"a=1&b=2&c=3", small),
            Err(FormError::Invalid(_))
        ));
        small.max_body_size = 4;
        let result = run(read(chunked(b"a=12345", 2), Encoding::UrlEncoded, small));
        assert!(matches!(result, Err(FormError::TooLarge)));
    }
}
