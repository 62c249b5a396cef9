//! IMAP's modified UTF-7 for mailbox names (RFC 3501 §5.1.3).

use base64::alphabet::IMAP_MUTF7;
use base64::engine::general_purpose::NO_PAD;
use base64::engine::GeneralPurpose;
use base64::Engine;

const ENGINE: GeneralPurpose = GeneralPurpose::new(&IMAP_MUTF7, NO_PAD);

/// Encodes a folder name: printable ASCII stays, `&` becomes `&-`, the rest
/// is UTF-16 in modified base64 between `&` and `-`.
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut pending: Vec<u16> = Vec::new();
    let flush = |pending: &mut Vec<u16>, out: &mut String| {
        if !pending.is_empty() {
            let bytes: Vec<u8> = pending.iter().flat_map(|u| u.to_be_bytes()).collect();
            out.push('&');
            out.push_str(&ENGINE.encode(bytes));
            out.push('-');
            pending.clear();
        }
    };
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut pending, &mut out);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut buf = [0u16; 2];
            pending.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    flush(&mut pending, &mut out);
    out
}

/// Decodes a folder name; `None` if it is not valid modified UTF-7.
pub fn decode(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let end = after.find('-')?;
        if end == 0 {
            out.push('&');
        } else {
            let bytes = ENGINE.decode(&after[..end]).ok()?;
            if bytes.len() % 2 != 0 {
                return None;
            }
            let units: Vec<u16> = bytes
                .chunks(2)
                .map(|p| u16::from_be_bytes([p[0], p[1]]))
                .collect();
            out.push_str(&String::from_utf16(&units).ok()?);
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// A folder name from a server answer (LIST, STATUS), decoded.
pub fn name_of(mailbox: &imap_codec::imap_types::mailbox::Mailbox<'_>) -> String {
    use imap_codec::imap_types::mailbox::Mailbox;
    match mailbox {
        Mailbox::Inbox => "INBOX".to_owned(),
        Mailbox::Other(other) => {
            let raw = String::from_utf8_lossy(other.as_ref()).into_owned();
            decode(&raw).unwrap_or(raw)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for name in [
            "INBOX",
            "Sent",
            "A&B",
            "Entwürfe",
            "日本語",
            "Ελλάδα/x",
            "😀",
        ] {
            let enc = encode(name);
            assert!(enc.is_ascii());
            assert_eq!(decode(&enc).as_deref(), Some(name));
        }
        assert_eq!(encode("Entwürfe"), "Entw&APw-rfe");
        assert_eq!(encode("A&B"), "A&-B");
        assert_eq!(decode("&Jjo-!"), Some("☺!".to_owned()));
        assert_eq!(decode("&broken"), None);
    }
}
