//! Decoding what a client puts in a URL: `application/x-www-form-urlencoded` query strings, percent
//! escapes in paths, and `Cookie` headers.
//!
//! Invariant: every input decodes to something; malformed escapes are kept literally and invalid UTF-8
//! is replaced, so no query string or path a client can send is an error here.

/// Percent-decodes bytes; `plus_is_space` for query strings (`+` means a space there, not in paths).
fn percent_decode(raw: &str, plus_is_space: bool) -> String {
    String::from_utf8(percent_decode_bytes(raw, plus_is_space))
        .unwrap_or_else(|invalid| String::from_utf8_lossy(invalid.as_bytes()).into_owned())
}

/// Percent-decodes to raw bytes (no UTF-8 replacement): what a file name on disk is made of.
pub fn percent_decode_bytes(raw: &str, plus_is_space: bool) -> Vec<u8> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                // Two hex digits exactly: `u8::from_str_radix` would also take a sign ("%+1" is not 0x01).
                if let (Some(high), Some(low)) = (hex_digit(bytes[i + 1]), hex_digit(bytes[i + 2]))
                {
                    out.push(high << 4 | low);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' if plus_is_space => out.push(b' '),
            byte => out.push(byte),
        }
        i += 1;
    }
    out
}

fn hex_digit(byte: u8) -> Option<u8> {
    (byte as char).to_digit(16).map(|d| d as u8)
}

/// Percent-decodes a request path (ASGI's `path`).
pub fn percent_decode_path(raw: &str) -> String {
    percent_decode(raw, false)
}

/// The `name=value` pairs of a query string, decoded, in order, repeated names kept.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    raw_pairs(query)
        .map(|(name, value)| (decode_component(name), decode_component(value)))
        .collect()
}

/// The `name=value` pairs of a query string or urlencoded body, still encoded, lazily: a caller with a
/// bound (a form's `max_fields`) stops pulling at it instead of having every pair of a 16 MiB
/// `a&a&a...` body built first.
pub fn raw_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// A name or value of `raw_pairs`, decoded (`+` is a space). It is never shorter than a third of `raw`
/// (an escape is 3 bytes for 1; replacing invalid UTF-8 only grows it).
pub fn decode_component(raw: &str) -> String {
    percent_decode(raw, true)
}

/// The `name=value` pairs of `Cookie` header values, in order.
pub fn parse_cookies<'a>(headers: impl Iterator<Item = &'a str>) -> Vec<(String, String)> {
    headers
        .flat_map(|header| header.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            let value = value.trim().trim_matches('"');
            Some((name.trim().to_owned(), value.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_percent_decoded_leniently() {
        assert_eq!(percent_decode_path("/a%20b+c"), "/a b+c");
        assert_eq!(percent_decode_path("/caf%C3%A9"), "/café");
        assert_eq!(percent_decode_path("/bad%zzx"), "/bad%zzx");
        assert_eq!(percent_decode_path("/end%2"), "/end%2");
        assert_eq!(percent_decode_path("/x%41"), "/xA");
        assert_eq!(percent_decode_path("/invalid%FF"), "/invalid\u{FFFD}");
    }

    #[test]
    fn an_escape_is_exactly_two_hex_digits() {
        // Found by fuzz/fuzz_targets/query.rs: a sign was accepted as the first digit.
        assert_eq!(percent_decode_path("/a%+2b"), "/a%+2b");
        assert_eq!(percent_decode_path("/a%-2b"), "/a%-2b");
        assert_eq!(parse_query("x=%+41"), vec![("x".into(), "% 41".into())]);
        assert_eq!(percent_decode_path("/%c3%A9%2f"), "/é/");
    }

    #[test]
    fn query_strings_keep_order_and_repeats() {
        assert_eq!(
            parse_query("q=hello+world&tag=a&tag=b%26c&flag&=empty&&x=%zz"),
            vec![
                ("q".into(), "hello world".into()),
                ("tag".into(), "a".into()),
                ("tag".into(), "b&c".into()),
                ("flag".into(), "".into()),
                ("".into(), "empty".into()),
                ("x".into(), "%zz".into()),
            ]
        );
        assert!(parse_query("").is_empty());
    }

    #[test]
    fn raw_pairs_are_lazy() {
        let mut pulled = 0;
        let first_two: Vec<_> = raw_pairs("a=%41&&b&c=3&d=4")
            .inspect(|_| pulled += 1)
            .take(2)
            .collect();
        assert_eq!(first_two, [("a", "%41"), ("b", "")]);
        assert_eq!(pulled, 2);
        assert_eq!(decode_component("%41+b"), "A b");
    }

    #[test]
    fn cookies_split_on_semicolons_across_headers() {
        let cookies = parse_cookies(["session=abc; theme=\"dark\"", "junk; lang=en"].into_iter());
        assert_eq!(
            cookies,
            vec![
                ("session".into(), "abc".into()),
                ("theme".into(), "dark".into()),
                ("lang".into(), "en".into()),
            ]
        );
    }
}
