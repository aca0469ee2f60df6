//! `query.rs`: percent-decoding of paths, query strings and `Cookie` headers.
//!
//! Raw bytes must decode without a panic and exactly as a strict reference decoder says (`%` + two hex
//! digits is a byte, anything else is literal); structured pairs must survive an encode/decode round trip.
#![no_main]

use _runtime::query::{parse_cookies, parse_query, percent_decode_path};
use libfuzzer_sys::arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

fn hex(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// The reference: RFC 3986 percent-decoding, lenient (malformed escapes stay literal), `+` as space
/// only in form encoding, invalid UTF-8 replaced.
fn reference_decode(raw: &str, plus_is_space: bool) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(high << 4 | low);
                i += 3;
                continue;
            }
        }
        out.push(if plus_is_space && bytes[i] == b'+' {
            b' '
        } else {
            bytes[i]
        });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn form_encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    // Paths: `+` is literal.
    assert_eq!(percent_decode_path(&text), reference_decode(&text, false));

    // Query strings: one pair per non-empty `&`-separated piece, decoded like the reference.
    let pairs = parse_query(&text);
    let pieces: Vec<&str> = text.split('&').filter(|p| !p.is_empty()).collect();
    assert_eq!(pairs.len(), pieces.len());
    for ((name, value), piece) in pairs.iter().zip(&pieces) {
        let (raw_name, raw_value) = piece.split_once('=').unwrap_or((piece, ""));
        assert_eq!(name, &reference_decode(raw_name, true));
        assert_eq!(value, &reference_decode(raw_value, true));
    }

    // Cookies: every name is trimmed and holds no separator.
    for (name, _) in parse_cookies(text.lines()) {
        assert!(!name.contains(';') && name.trim() == name, "{name:?}");
    }

    // Round trips of structured input.
    let mut u = Unstructured::new(data);
    if let Ok(wanted) = Vec::<(String, String)>::arbitrary(&mut u) {
        let encoded: Vec<String> = wanted
            .iter()
            .map(|(n, v)| format!("{}={}", form_encode(n), form_encode(v)))
            .collect();
        assert_eq!(parse_query(&encoded.join("&")), wanted);

        let path: String = wanted
            .iter()
            .map(|(n, _)| format!("/{}", form_encode(n).replace('+', "%20")))
            .collect();
        let expected: String = wanted.iter().map(|(n, _)| format!("/{n}")).collect();
        assert_eq!(percent_decode_path(&path), expected);

        // Cookie names are tokens and values cookie-octets (RFC 6265): build them from the input.
        let cookies: Vec<(String, String)> = wanted
            .iter()
            .map(|(n, v)| {
                let keep = |c: &char| c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?={}".contains(*c);
                (
                    n.chars().filter(keep).collect::<String>(),
                    v.chars().filter(keep).collect(),
                )
            })
            .filter(|(n, _)| !n.is_empty())
            .collect();
        let header: Vec<String> = cookies.iter().map(|(n, v)| format!("{n}={v}")).collect();
        assert_eq!(
            parse_cookies(std::iter::once(header.join("; ").as_str())),
            cookies
        );
    }
});
