//! Request bodies of HTML forms: `application/x-www-form-urlencoded` and `multipart/form-data`, parsed
//! while the body streams in (multipart with the `multer` crate), into named text fields and uploaded
//! files. File contents stay in memory up to `FormLimits::spool_threshold` and go to an anonymous
//! temporary file past it, so an upload's size is bounded by `--max-body-size`, not by memory.
//!
//! Invariants: every buffer is bounded — the whole body by `max_body_size`, a text field by
//! `max_part_size`, the number of fields and of files by `max_fields`/`max_files` (Starlette's and
//! python-multipart's defaults); a file part is in memory only up to `spool_threshold`. Malformed input
//! is an error that names what is wrong (`FormError`), never a panic; nothing here knows about Python.
//!
//! Over 500 lines: the tests (bodies fed in every chunking) are ~220 of them.

use std::fmt;
use std::io::{Seek, SeekFrom, Write};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};

use crate::query::parse_query;

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
    let text = String::from_utf8_lossy(body);
    let mut form = Form::default();
    for (name, value) in parse_query(&text) {
        if form.items.len() >= limits.max_fields {
            return Err(too_many_fields(limits));
        }
        if value.len() > limits.max_part_size {
            return Err(part_too_large(limits));
        }
        form.items.push((name, FormValue::Text(value)));
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

/// multer's error as ours: the body stream's own error comes back out of multer's box.
fn from_multer<E: std::error::Error + Send + Sync + 'static>(err: multer::Error) -> FormError<E> {
    match err {
        multer::Error::StreamSizeExceeded { .. } => FormError::TooLarge,
        multer::Error::StreamReadFailed(source) => match source.downcast::<E>() {
            Ok(err) => FormError::Body(*err),
            Err(other) => FormError::Invalid(format!("Malformed multipart body: {other}")),
        },
        other => FormError::Invalid(format!("Malformed multipart body: {other}")),
    }
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
