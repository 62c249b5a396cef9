//! Tracked emails: what crmsync reads from a raw RFC 5322 message.
//!
//! The server keeps the raw message unchanged; this module only derives the
//! fields crmsync works with (ids for threading, addresses, subject, date,
//! bodies) plus tracking tokens and subject normalization for matching
//! (SPEC R-M5). Pure functions: no I/O. MIME parsing is done by the
//! `mail-parser` crate; nothing here panics, whatever the bytes.

use std::borrow::Cow;
use std::panic::{catch_unwind, AssertUnwindSafe};

use mail_parser::{
    Address, Header, HeaderName, HeaderValue, Message, MessageParser, MimeHeaders, PartType,
};
use sha2::{Digest, Sha256};
use time::{Date, Month, PrimitiveDateTime, Time, UtcOffset};

/// What crmsync reads from a raw RFC 5322 message.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ParsedEmail {
    /// Without angle brackets; synthetic (see [`synthetic_message_id`]) if
    /// the message has no usable Message-ID.
    pub message_id: String,
    pub synthetic_message_id: bool,
    /// The first id of In-Reply-To, without angle brackets.
    pub in_reply_to: Option<String>,
    /// The ids of References, in order, without angle brackets.
    pub references: Vec<String>,
    /// Decoded (RFC 2047).
    pub subject: Option<String>,
    /// The first From address, address only, as written.
    pub from: Option<String>,
    /// Addresses only, as written; group syntax is flattened.
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    /// RFC 3339 UTC (`YYYY-MM-DDTHH:MM:SSZ`) from the Date header.
    pub sent_at: Option<String>,
    /// The first text/plain body part, or text derived from the HTML body
    /// when the message has only HTML.
    pub body_text: Option<String>,
    /// The first text/html body part.
    pub body_html: Option<String>,
    /// Human-readable notes on what could not be parsed.
    pub problems: Vec<String>,
}

/// The error [`parse_email`] returns when the MIME parser itself failed;
/// it should never be seen (the tests check that it is not).
const PARSER_FAILED: &str = "the message could not be parsed: the MIME parser failed on it";

/// Parses a raw message. Never panics, whatever the bytes. Err only when the
/// bytes are not a message at all (empty, or no header section could be
/// read), with a message for people naming the problem.
///
/// When a header is repeated, the first one counts.
///
/// Header lines with 8-bit bytes that are not UTF-8 (raw, not RFC 2047
/// encoded) are read as Windows-1252 (a superset of Latin-1) and noted in
/// `problems`.
pub fn parse_email(raw: &[u8]) -> Result<ParsedEmail, String> {
    if raw.is_empty() {
        return Err("the message is empty (0 bytes)".to_string());
    }
    if raw.iter().all(|b| b.is_ascii_whitespace()) {
        return Err("the message contains only whitespace".to_string());
    }
    // mail-parser promises never to panic; this is a safety net so that a
    // bug in it on hostile input becomes an error rather than a crash.
    catch_unwind(AssertUnwindSafe(|| parse_message(raw)))
        .unwrap_or_else(|_| Err(PARSER_FAILED.to_string()))
}

fn no_header_section() -> String {
    "no header section could be read: a message starts with header fields such as \
     'From: …' and 'Subject: …', followed by an empty line and the body"
        .to_string()
}

fn parse_message(raw: &[u8]) -> Result<ParsedEmail, String> {
    let mut problems = Vec::new();

    let (bytes, recoded) = recode_8bit_header_lines(raw);
    if !recoded.is_empty() {
        problems.push(format!(
            "the {} header{} raw 8-bit bytes that are not UTF-8 (nor RFC 2047 \
             encoded); read as Windows-1252",
            list_some(&recoded),
            if recoded.len() == 1 {
                " contains"
            } else {
                "s contain"
            }
        ));
    }
    let bytes: &[u8] = &bytes;

    let message = MessageParser::default()
        .parse(bytes)
        .ok_or_else(no_header_section)?;

    if !message.headers().iter().any(|h| is_header_field(bytes, h)) {
        return Err(no_header_section());
    }
    let not_fields = lines_not_fields(bytes);
    if let Some(first) = not_fields.first() {
        problems.push(format!(
            "{} line{} in the header section {} not header fields and {} ignored \
             (first: '{}')",
            not_fields.len(),
            plural(not_fields.len()),
            if not_fields.len() == 1 { "is" } else { "are" },
            if not_fields.len() == 1 { "was" } else { "were" },
            crate::field::shorten(&unfold(&String::from_utf8_lossy(first)))
        ));
    }

    for (name, label) in [
        (HeaderName::InReplyTo, "In-Reply-To"),
        (HeaderName::References, "References"),
        (HeaderName::Subject, "Subject"),
        (HeaderName::From, "From"),
        (HeaderName::To, "To"),
        (HeaderName::Cc, "Cc"),
        (HeaderName::Bcc, "Bcc"),
        (HeaderName::Date, "Date"),
    ] {
        note_unreadable(&message, bytes, name, label, &mut problems);
    }

    let id_header = first(&message, HeaderName::MessageId);
    let found_id = ids(id_header.map(|h| &h.value))
        .into_iter()
        .find(|id| !id.is_empty());
    let (message_id, synthetic) = match found_id {
        Some(id) => (id, false),
        None => {
            if let Some(h) = id_header {
                problems.push(format!(
                    "the Message-ID header '{}' holds no readable id; a synthetic id is used",
                    raw_value(bytes, h)
                ));
            }
            (synthetic_message_id(raw), true)
        }
    };

    let in_reply_to = ids(first(&message, HeaderName::InReplyTo).map(|h| &h.value))
        .into_iter()
        .find(|id| !id.is_empty());
    let references = ids(first(&message, HeaderName::References).map(|h| &h.value))
        .into_iter()
        .filter(|id| !id.is_empty())
        .collect();

    let subject = first(&message, HeaderName::Subject)
        .and_then(|h| h.value.as_text())
        .map(str::to_string);

    let from_all = addresses(
        message.header_values(HeaderName::From),
        "From",
        &mut problems,
    );
    let from = from_all.into_iter().next();
    let to = addresses(message.header_values(HeaderName::To), "To", &mut problems);
    let cc = addresses(message.header_values(HeaderName::Cc), "Cc", &mut problems);
    let bcc = addresses(message.header_values(HeaderName::Bcc), "Bcc", &mut problems);

    let date_header = first(&message, HeaderName::Date);
    let sent_at = match date_header.map(|h| (h, &h.value)) {
        Some((h, HeaderValue::DateTime(dt))) => {
            let utc = utc_rfc3339(dt);
            if utc.is_none() {
                problems.push(format!(
                    "the Date header '{}' is not a valid date; sent_at is left empty",
                    raw_value(bytes, h)
                ));
            }
            utc
        }
        _ => None,
    };

    note_part_problems(&message, &mut problems);

    let body_text = message
        .body_text(0)
        .map(Cow::into_owned)
        .filter(|t| !t.is_empty());
    let body_html = match message.html_part(0).map(|p| &p.body) {
        Some(PartType::Html(html)) if !html.is_empty() => Some(html.to_string()),
        _ => None,
    };

    Ok(ParsedEmail {
        message_id,
        synthetic_message_id: synthetic,
        in_reply_to,
        references,
        subject,
        from,
        to,
        cc,
        bcc,
        sent_at,
        body_text,
        body_html,
        problems,
    })
}

/// Up to five items, comma-separated, with "…" if there are more.
fn list_some(items: &[String]) -> String {
    let shown = items.len().min(5);
    let more = if items.len() > shown { ", …" } else { "" };
    format!("{}{more}", items[..shown].join(", "))
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Whether mail-parser's header is a real `name: value` field (it also
/// reports lines without a colon, such as garbage, as headers).
fn is_header_field(bytes: &[u8], h: &Header<'_>) -> bool {
    let name = h.name.as_str();
    !name.is_empty()
        && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
        && bytes
            .get(h.offset_field as usize..h.offset_start as usize)
            .is_some_and(|s| s.contains(&b':'))
}

/// The lines of the header section that are neither `name: value` fields
/// nor their continuation lines (mail-parser skips these silently).
fn lines_not_fields(bytes: &[u8]) -> Vec<&[u8]> {
    let (lines, _) = header_lines(bytes);
    lines
        .into_iter()
        .filter(|line| !line.first().is_some_and(|b| *b == b' ' || *b == b'\t'))
        .filter(|line| {
            let name = line
                .iter()
                .position(|&b| b == b':')
                .map(|colon| line[..colon].trim_ascii_end());
            !name.is_some_and(|n| !n.is_empty() && n.iter().all(|b| (33..=126).contains(b)))
        })
        .collect()
}

/// A header's raw value, unfolded and shortened, for messages.
fn raw_value(bytes: &[u8], h: &Header<'_>) -> String {
    let value = bytes
        .get(h.offset_start as usize..h.offset_end as usize)
        .unwrap_or_default();
    crate::field::shorten(&unfold(&String::from_utf8_lossy(value)))
}

/// The first header of a kind (mail-parser's own getters take the last).
fn first<'m, 'x>(message: &'m Message<'x>, name: HeaderName<'_>) -> Option<&'m Header<'x>> {
    message.headers().iter().find(|h| h.name == name)
}

fn unfold(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Notes headers that have a value mail-parser could not read.
fn note_unreadable(
    message: &Message<'_>,
    bytes: &[u8],
    name: HeaderName<'_>,
    label: &str,
    problems: &mut Vec<String>,
) {
    for h in message.headers().iter().filter(|h| h.name == name) {
        let value = raw_value(bytes, h);
        if matches!(h.value, HeaderValue::Empty) && !value.is_empty() {
            problems.push(format!("the {label} header '{value}' could not be read"));
        }
    }
}

/// The message ids of an id header (Message-ID, In-Reply-To, References).
fn ids(value: Option<&HeaderValue<'_>>) -> Vec<String> {
    match value {
        Some(HeaderValue::Text(id)) => vec![normalize_message_id(id)],
        Some(HeaderValue::TextList(ids)) => ids.iter().map(|id| normalize_message_id(id)).collect(),
        _ => Vec::new(),
    }
}

/// The addresses of all headers of one kind, flattened; notes entries
/// without an address (a display name only).
fn addresses<'a, 'x: 'a>(
    values: impl Iterator<Item = &'a HeaderValue<'x>>,
    label: &str,
    problems: &mut Vec<String>,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for address in values.filter_map(HeaderValue::as_address) {
        collect_addresses(address, &mut out, &mut missing);
    }
    if let Some(first) = missing.first() {
        problems.push(format!(
            "{label}: {} entr{} without an email address {} ignored (first: '{}')",
            missing.len(),
            if missing.len() == 1 { "y" } else { "ies" },
            if missing.len() == 1 { "was" } else { "were" },
            crate::field::shorten(first)
        ));
    }
    out
}

fn collect_addresses(address: &Address<'_>, out: &mut Vec<String>, missing: &mut Vec<String>) {
    for addr in address.iter() {
        match addr.address().map(str::trim).filter(|a| !a.is_empty()) {
            Some(a) => out.push(a.to_string()),
            None => {
                if let Some(name) = addr.name().map(str::trim).filter(|n| !n.is_empty()) {
                    missing.push(name.to_string());
                }
            }
        }
    }
}

/// The Date header's time in UTC, if it is a real date.
fn utc_rfc3339(dt: &mail_parser::DateTime) -> Option<String> {
    let month = Month::try_from(dt.month).ok()?;
    let date = Date::from_calendar_date(i32::from(dt.year), month, dt.day).ok()?;
    // RFC 5322 allows a leap second (60); `time` does not.
    let time = Time::from_hms(dt.hour, dt.minute, dt.second.min(59)).ok()?;
    if dt.tz_hour > 23 || dt.tz_minute > 59 {
        return None;
    }
    let sign = if dt.tz_before_gmt { -1 } else { 1 };
    let offset = UtcOffset::from_hms(sign * dt.tz_hour as i8, sign * dt.tz_minute as i8, 0).ok()?;
    let t = PrimitiveDateTime::new(date, time)
        .assume_offset(offset)
        .checked_to_offset(UtcOffset::UTC)?;
    Some(crate::time::format_datetime(t))
}

/// Notes MIME parts that could not be decoded and multiparts whose boundary
/// never appears.
fn note_part_problems(message: &Message<'_>, problems: &mut Vec<String>) {
    let mut undecodable = Vec::new();
    for (i, part) in message.parts.iter().enumerate() {
        let ctype = part
            .content_type()
            .map(|ct| match ct.subtype() {
                Some(sub) => format!("{}/{}", ct.ctype(), sub),
                None => ct.ctype().to_string(),
            })
            .unwrap_or_else(|| "text/plain".to_string());
        if part.is_encoding_problem {
            // mail-parser resets `encoding` on failure; the header names it.
            let encoding = part
                .content_transfer_encoding()
                .map(|e| crate::field::shorten(e.trim()))
                .unwrap_or_else(|| "unknown encoding".to_string());
            undecodable.push(format!("part {} ({ctype}, {encoding})", i + 1));
        }
        let multipart = part
            .content_type()
            .is_some_and(|ct| ct.ctype().eq_ignore_ascii_case("multipart"));
        if multipart && !matches!(part.body, PartType::Multipart(_)) {
            let boundary = part
                .content_type()
                .and_then(|ct| ct.attribute("boundary"))
                .map(|b| format!("its boundary '{}' never appears", crate::field::shorten(b)))
                .unwrap_or_else(|| "it names no boundary".to_string());
            problems.push(format!(
                "part {} is declared {ctype} but {boundary}; its content was not split into parts",
                i + 1
            ));
        }
    }
    if !undecodable.is_empty() {
        problems.push(format!(
            "{} MIME part{} could not be decoded and {} kept as raw text: {}",
            undecodable.len(),
            plural(undecodable.len()),
            if undecodable.len() == 1 {
                "was"
            } else {
                "were"
            },
            list_some(&undecodable)
        ));
    }
}

/// The header section's lines (each with its line ending) and the offset
/// where the body starts (after the empty line; the end if there is none).
fn header_lines(raw: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut lines = Vec::new();
    let mut offset = 0;
    for line in raw.split_inclusive(|&b| b == b'\n') {
        offset += line.len();
        if line == b"\n" || line == b"\r\n" {
            return (lines, offset);
        }
        lines.push(line);
    }
    (lines, raw.len())
}

/// The raw message with header lines that are not UTF-8 re-encoded from
/// Windows-1252 to UTF-8, and the names of those headers. Borrowed (no copy)
/// when every header line is UTF-8.
fn recode_8bit_header_lines(raw: &[u8]) -> (Cow<'_, [u8]>, Vec<String>) {
    let (lines, _) = header_lines(raw);
    if lines.iter().all(|l| std::str::from_utf8(l).is_ok()) {
        return (Cow::Borrowed(raw), Vec::new());
    }
    let decode = mail_parser::decoders::charsets::map::charset_decoder(b"windows-1252")
        .unwrap_or(latin1_to_string);
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 8);
    let mut names: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in &lines {
        let recoded = if std::str::from_utf8(line).is_ok() {
            out.extend_from_slice(line);
            None
        } else {
            let text = decode(line);
            out.extend_from_slice(text.as_bytes());
            Some(text)
        };
        let continuation = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if !continuation {
            let text = recoded
                .as_deref()
                .map(Cow::Borrowed)
                .unwrap_or_else(|| String::from_utf8_lossy(line));
            current = match text.split_once(':') {
                Some((name, _)) if !name.trim().is_empty() => name.trim().to_string(),
                _ => "(no name)".to_string(),
            };
        }
        if recoded.is_some() && !names.contains(&current) {
            names.push(current.clone());
        }
    }
    // The empty line that ends the header section, and the body, unchanged.
    let header_len: usize = lines.iter().map(|l| l.len()).sum();
    out.extend_from_slice(&raw[header_len..]);
    names.iter_mut().for_each(|n| *n = crate::field::shorten(n));
    (Cow::Owned(out), names)
}

fn latin1_to_string(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// The file names of a message's attachments, in order (those without a
/// name are left out). Never panics, whatever the bytes.
pub fn attachment_names(raw: &[u8]) -> Vec<String> {
    let Some(message) = MessageParser::default().parse(raw) else {
        return vec![];
    };
    message
        .attachments()
        .filter_map(|part| part.attachment_name().map(str::to_string))
        .collect()
}

/// A stable synthetic Message-ID for a message without one: derived from a
/// SHA-256 hash (truncated to 128 bits, hex) of the headers Date, From, To,
/// Subject and the body, formatted like `crmsync-<hex>@synthetic.invalid`;
/// the same bytes always give the same id.
///
/// Header values are unfolded and trimmed and the body's line endings are
/// normalized (CRLF to LF, trailing line breaks dropped), so the same email
/// stored with different line endings or received over different routes
/// (other Received headers) gets the same id. Bytes that are not a message
/// are hashed whole.
pub fn synthetic_message_id(raw: &[u8]) -> String {
    let (lines, body_start) = header_lines(raw);
    let mut fields: [Option<Vec<u8>>; 4] = Default::default();
    const NAMES: [&[u8]; 4] = [b"date", b"from", b"to", b"subject"];
    let mut current: Option<usize> = None;
    let mut any_field = false;
    for line in lines {
        let continuation = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if continuation {
            if let Some(value) = current.and_then(|i| fields[i].as_mut()) {
                value.push(b' ');
                value.extend_from_slice(line);
            }
            continue;
        }
        current = None;
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        any_field |= !name.is_empty();
        if let Some(i) = NAMES.iter().position(|n| name.eq_ignore_ascii_case(n)) {
            if fields[i].is_none() {
                fields[i] = Some(line[colon + 1..].to_vec());
                current = Some(i);
            }
        }
    }

    let mut hasher = Sha256::new();
    if any_field {
        hasher.update(b"crmsync synthetic message id v1\0");
        for (name, value) in NAMES.iter().zip(&fields) {
            hasher.update(name);
            hasher.update(b"\0");
            if let Some(value) = value {
                // Unfold: whitespace runs (including line breaks) become one space.
                let mut unfolded = Vec::with_capacity(value.len());
                for word in value
                    .split(|b| b.is_ascii_whitespace())
                    .filter(|w| !w.is_empty())
                {
                    if !unfolded.is_empty() {
                        unfolded.push(b' ');
                    }
                    unfolded.extend_from_slice(word);
                }
                hasher.update((unfolded.len() as u64).to_be_bytes());
                hasher.update(&unfolded);
            } else {
                hasher.update(u64::MAX.to_be_bytes());
            }
        }
        hasher.update(b"body\0");
        let mut body = raw.get(body_start..).unwrap_or_default();
        while let Some(rest) = body
            .strip_suffix(b"\r\n")
            .or_else(|| body.strip_suffix(b"\n"))
            .or_else(|| body.strip_suffix(b"\r"))
        {
            body = rest;
        }
        let mut start = 0;
        for (i, pair) in body.windows(2).enumerate() {
            if pair == b"\r\n" {
                hasher.update(&body[start..i]);
                start = i + 1;
            }
        }
        hasher.update(&body[start..]);
    } else {
        hasher.update(b"crmsync synthetic message id v1 raw\0");
        hasher.update(raw);
    }
    let digest = hasher.finalize();
    format!("crmsync-{}@synthetic.invalid", hex::encode(&digest[..16]))
}

/// Normalizes a Message-ID for comparison: trims whitespace and angle brackets.
pub fn normalize_message_id(id: &str) -> String {
    id.trim_matches(|c: char| c.is_whitespace() || c == '<' || c == '>')
        .to_string()
}

/// The reply/forward prefixes [`normalize_subject`] removes (compared
/// without regard to case).
const REPLY_PREFIXES: [&str; 5] = ["re", "fw", "fwd", "aw", "wg"];

/// Subject without any leading reply/forward prefixes (RE:, Re:, FW:, Fwd:,
/// AW:, WG:, repeated, with optional "[n]" or "(n)" counters like "Re[2]:"),
/// trimmed, whitespace collapsed, lowercased — for smart matching (SPEC R-M5
/// (3)).
pub fn normalize_subject(subject: &str) -> String {
    let mut rest = subject.trim_start();
    while let Some(after) = strip_reply_prefix(rest) {
        rest = after.trim_start();
    }
    unfold(rest).to_lowercase()
}

/// `rest` after one leading reply/forward prefix such as "Re:", "FWD :" or
/// "Re[2]:", or None if it does not start with one.
fn strip_reply_prefix(s: &str) -> Option<&str> {
    let word_len = s.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
    let word = &s[..word_len];
    if !REPLY_PREFIXES.iter().any(|p| word.eq_ignore_ascii_case(p)) {
        return None;
    }
    let mut rest = &s[word_len..];
    let spaced = rest.trim_start_matches([' ', '\t']);
    for (open, close) in [('[', ']'), ('(', ')')] {
        if let Some(inner) = spaced.strip_prefix(open) {
            let digits = inner.bytes().take_while(u8::is_ascii_digit).count();
            if digits > 0 {
                if let Some(after) = inner[digits..].strip_prefix(close) {
                    rest = after;
                }
            }
            break;
        }
    }
    let rest = rest.trim_start_matches([' ', '\t']);
    rest.strip_prefix(':')
        .or_else(|| rest.strip_prefix('\u{FF1A}')) // fullwidth colon
}

/// Finds a tracking token such as `[CRM:0001234]` with the given prefix in a
/// subject (SPEC R-M5 (2)); returns the token text inside the brackets, e.g.
/// "CRM:0001234". The number part is 1–12 digits. The prefix is matched
/// without regard to ASCII case and returned as given; the first token wins.
/// An empty prefix finds nothing.
pub fn find_tracking_token(subject: &str, prefix: &str) -> Option<String> {
    let prefix_bytes = prefix.as_bytes();
    if prefix_bytes.is_empty() {
        return None;
    }
    let s = subject.as_bytes();
    let mut from = 0;
    while let Some(pos) = s[from..].iter().position(|&b| b == b'[') {
        let start = from + pos + 1;
        from = start;
        let rest = &s[start..];
        let Some(candidate) = rest.get(..prefix_bytes.len()) else {
            break;
        };
        if !candidate.eq_ignore_ascii_case(prefix_bytes)
            || rest.get(prefix_bytes.len()) != Some(&b':')
        {
            continue;
        }
        let number = &rest[prefix_bytes.len() + 1..];
        let digits = number.iter().take_while(|b| b.is_ascii_digit()).count();
        if (1..=12).contains(&digits) && number.get(digits) == Some(&b']') {
            let digits: String = number[..digits].iter().map(|&b| char::from(b)).collect();
            return Some(format!("{prefix}:{digits}"));
        }
    }
    None
}

/// Formats a tracking token: prefix and a zero-padded 7-digit number, e.g.
/// ("CRM", 1234) -> "CRM:0001234". Numbers of more than 7 digits are written
/// in full ([`find_tracking_token`] finds up to 12 digits).
pub fn format_tracking_token(prefix: &str, n: u64) -> String {
    format!("{prefix}:{n:07}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A message as a mail client writes it: multipart/mixed with a
    /// multipart/alternative body (text and HTML) and a PDF attachment.
    const MULTIPART: &str = "Return-Path: <anna@example.com>\r\n\
Received: from mx.example.com by mail.example.org; Wed, 25 Nov 2026 10:30:05 +0100\r\n\
Message-ID: <msg-1.2026@example.com>\r\n\
In-Reply-To: <parent@example.com>\r\n\
References: <root@example.com>\r\n <parent@example.com>\r\n\
Date: Wed, 25 Nov 2026 10:30:00 +0100\r\n\
From: \"Anna Example\" <anna@example.com>\r\n\
To: Bob <bob@example.org>, carol@example.net\r\n\
Cc: Team: dave@example.com, \"Eve\" <eve@example.com>;, frank@example.com\r\n\
Bcc: grace@example.com\r\n\
Subject: Quarterly numbers\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"outer\"\r\n\
\r\n\
This is a multi-part message in MIME format.\r\n\
--outer\r\n\
Content-Type: multipart/alternative; boundary=\"inner\"\r\n\
\r\n\
--inner\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\
\r\n\
Hello Bob,\r\n\
the numbers are attached. Gr=C3=BC=C3=9Fe\r\n\
--inner\r\n\
Content-Type: text/html; charset=utf-8\r\n\
\r\n\
<p>Hello Bob,</p><p>the numbers are attached.</p>\r\n\
--inner--\r\n\
\r\n\
--outer\r\n\
Content-Type: application/pdf; name=\"numbers.pdf\"\r\n\
Content-Disposition: attachment; filename=\"numbers.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
JVBERi0xLjQKJeLjz9MK\r\n\
--outer--\r\n";

    fn simple(headers: &str, body: &str) -> Vec<u8> {
        format!("{headers}\r\n\r\n{body}").into_bytes()
    }

    #[test]
    fn multipart_message_with_attachment() {
        let e = parse_email(MULTIPART.as_bytes()).unwrap();
        assert_eq!(e.message_id, "msg-1.2026@example.com");
        assert!(!e.synthetic_message_id);
        assert_eq!(e.in_reply_to.as_deref(), Some("parent@example.com"));
        assert_eq!(e.references, ["root@example.com", "parent@example.com"]);
        assert_eq!(e.subject.as_deref(), Some("Quarterly numbers"));
        assert_eq!(e.from.as_deref(), Some("anna@example.com"));
        assert_eq!(e.to, ["bob@example.org", "carol@example.net"]);
        assert_eq!(
            e.cc,
            ["dave@example.com", "eve@example.com", "frank@example.com"]
        );
        assert_eq!(e.bcc, ["grace@example.com"]);
        assert_eq!(e.sent_at.as_deref(), Some("2026-11-25T09:30:00Z"));
        assert_eq!(
            e.body_text.as_deref().map(str::trim_end),
            Some("Hello Bob,\r\nthe numbers are attached. Grüße")
        );
        assert_eq!(
            e.body_html.as_deref().map(str::trim_end),
            Some("<p>Hello Bob,</p><p>the numbers are attached.</p>")
        );
        assert!(e.problems.is_empty(), "{:?}", e.problems);
        assert_eq!(attachment_names(MULTIPART.as_bytes()), ["numbers.pdf"]);
        // The attachment's bytes are not a body.
        assert!(!e.body_text.unwrap().contains("JVBER"));
    }

    #[test]
    fn serializes_to_json() {
        let e = parse_email(MULTIPART.as_bytes()).unwrap();
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["message_id"], "msg-1.2026@example.com");
        assert_eq!(json["to"][1], "carol@example.net");
        assert_eq!(json["synthetic_message_id"], false);
    }

    #[test]
    fn dates_are_converted_to_utc() {
        for (date, want) in [
            ("Tue, 1 Jul 2003 10:52:37 +0200", "2003-07-01T08:52:37Z"),
            ("1 Jan 2026 23:30:00 -0130", "2026-01-02T01:00:00Z"),
            ("Thu, 31 Dec 2026 23:59:60 +0000", "2026-12-31T23:59:59Z"),
            ("Mon, 2 Mar 2026 08:00:00 GMT", "2026-03-02T08:00:00Z"),
        ] {
            let raw = simple(&format!("Message-ID: <d@x>\r\nDate: {date}"), "hi");
            let e = parse_email(&raw).unwrap();
            assert_eq!(e.sent_at.as_deref(), Some(want), "{date}");
        }
    }

    #[test]
    fn text_only_and_html_only_messages() {
        let e = parse_email(&simple("Subject: plain", "just text\r\n")).unwrap();
        assert_eq!(e.body_text.as_deref(), Some("just text\r\n"));
        assert_eq!(e.body_html, None);

        let raw = simple(
            "Subject: html\r\nContent-Type: text/html; charset=utf-8",
            "<p>Hello <b>there</b></p>\r\n",
        );
        let e = parse_email(&raw).unwrap();
        assert_eq!(
            e.body_html.as_deref(),
            Some("<p>Hello <b>there</b></p>\r\n")
        );
        assert_eq!(e.body_text.as_deref().map(str::trim), Some("Hello there"));
    }

    #[test]
    fn rfc2047_encoded_subject_is_decoded() {
        let raw = simple(
            "Message-ID: <e@x>\r\nSubject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus?=\r\n =?ISO-8859-1?B?IEv2bG4=?=\r\n\
             From: =?UTF-8?B?SsO8cmdlbg==?= <juergen@example.de>",
            "hi",
        );
        let e = parse_email(&raw).unwrap();
        assert_eq!(e.subject.as_deref(), Some("Grüße aus Köln"));
        assert_eq!(e.from.as_deref(), Some("juergen@example.de"));
        assert!(e.problems.is_empty(), "{:?}", e.problems);
    }

    #[test]
    fn raw_8bit_latin1_headers_are_decoded_and_reported() {
        let raw = b"Message-ID: <l1@x>\r\nSubject: Gr\xfc\xdfe aus K\xf6ln \x80 5\r\n\
From: J\xfcrgen <juergen@example.de>\r\nTo: a@example.com\r\n\r\nBody \xe4\r\n";
        let e = parse_email(raw).unwrap();
        assert_eq!(e.subject.as_deref(), Some("Grüße aus Köln € 5"));
        assert_eq!(e.from.as_deref(), Some("juergen@example.de"));
        assert_eq!(e.to, ["a@example.com"]);
        let note = e.problems.join("\n");
        assert!(note.contains("Subject, From"), "{note}");
        assert!(note.contains("Windows-1252"), "{note}");
        // The body (not a header) is left to mail-parser: no panic, text kept.
        assert!(e.body_text.unwrap().starts_with("Body "));
    }

    #[test]
    fn utf8_headers_are_not_reported() {
        let raw = simple("Message-ID: <u@x>\r\nSubject: Grüße aus Köln", "hi");
        let e = parse_email(&raw).unwrap();
        assert_eq!(e.subject.as_deref(), Some("Grüße aus Köln"));
        assert!(e.problems.is_empty(), "{:?}", e.problems);
    }

    #[test]
    fn missing_message_id_gets_a_stable_synthetic_one() {
        let raw = simple(
            "Date: Wed, 25 Nov 2026 10:30:00 +0100\r\nFrom: a@example.com\r\nTo: b@example.com\r\nSubject: Hi",
            "Hello\r\n",
        );
        let a = parse_email(&raw).unwrap();
        let b = parse_email(&raw).unwrap();
        assert!(a.synthetic_message_id);
        assert_eq!(a.message_id, b.message_id);
        assert_eq!(a.message_id, synthetic_message_id(&raw));
        assert!(a.message_id.starts_with("crmsync-"), "{}", a.message_id);
        assert!(a.message_id.ends_with("@synthetic.invalid"));
        assert_eq!(a.message_id.len(), "crmsync-@synthetic.invalid".len() + 32);

        // Another body, subject, recipient or date: another id.
        for other in [
            simple(
                "Date: Wed, 25 Nov 2026 10:30:00 +0100\r\nFrom: a@example.com\r\nTo: b@example.com\r\nSubject: Hi",
                "Hello!\r\n",
            ),
            simple(
                "Date: Wed, 25 Nov 2026 10:30:00 +0100\r\nFrom: a@example.com\r\nTo: b@example.com\r\nSubject: Ho",
                "Hello\r\n",
            ),
            simple(
                "Date: Wed, 25 Nov 2026 10:30:00 +0100\r\nFrom: a@example.com\r\nTo: c@example.com\r\nSubject: Hi",
                "Hello\r\n",
            ),
            simple(
                "Date: Wed, 25 Nov 2026 10:31:00 +0100\r\nFrom: a@example.com\r\nTo: b@example.com\r\nSubject: Hi",
                "Hello\r\n",
            ),
        ] {
            assert_ne!(parse_email(&other).unwrap().message_id, a.message_id);
        }

        // Other headers, line endings and folding do not matter.
        let same = "Received: from somewhere\nDate: Wed, 25 Nov 2026 10:30:00 +0100\nFrom: a@example.com\nX-Mailer: other\nTo:\n b@example.com\nSubject: Hi\n\nHello\n\n";
        assert_eq!(synthetic_message_id(same.as_bytes()), a.message_id);
    }

    #[test]
    fn repeated_headers_take_the_first() {
        let raw = simple(
            "Message-ID: <one@x>\r\nMessage-ID: <two@x>\r\nSubject: first\r\nSubject: second\r\n\
             Date: Wed, 25 Nov 2026 10:30:00 +0000\r\nDate: Thu, 26 Nov 2026 10:30:00 +0000\r\n\
             From: a@example.com\r\nFrom: b@example.com\r\nTo: c@example.com\r\nTo: d@example.com",
            "b",
        );
        let e = parse_email(&raw).unwrap();
        assert_eq!(e.message_id, "one@x");
        assert_eq!(e.subject.as_deref(), Some("first"));
        assert_eq!(e.sent_at.as_deref(), Some("2026-11-25T10:30:00Z"));
        assert_eq!(e.from.as_deref(), Some("a@example.com"));
        // Recipients of every To header count (obsolete syntax, RFC 5322 4.5.3).
        assert_eq!(e.to, ["c@example.com", "d@example.com"]);
    }

    #[test]
    fn blank_or_unreadable_message_id_gets_a_synthetic_one() {
        for header in ["Message-ID: <>", "Message-ID:", "Message-ID: < >"] {
            let e = parse_email(&simple(&format!("{header}\r\nSubject: x"), "b")).unwrap();
            assert!(e.synthetic_message_id, "{header}");
            assert!(e.message_id.ends_with("@synthetic.invalid"));
            assert!(
                e.problems.iter().any(|p| p.contains("Message-ID header")),
                "{header}: {:?}",
                e.problems
            );
        }
        let e = parse_email(&simple("Message-ID: <a@b>\r\nSubject: x", "b")).unwrap();
        assert!(!e.synthetic_message_id);
    }

    #[test]
    fn synthetic_ids_of_non_messages_do_not_collide_trivially() {
        assert_ne!(synthetic_message_id(b""), synthetic_message_id(b"x"));
        assert_eq!(
            synthetic_message_id(b"\xff\x00"),
            synthetic_message_id(b"\xff\x00")
        );
    }

    #[test]
    fn broken_boundary_is_noted_not_fatal() {
        let raw = simple(
            "Message-ID: <b@x>\r\nSubject: broken\r\nContent-Type: multipart/mixed; boundary=\"abc\"",
            "--xyz\r\nContent-Type: text/plain\r\n\r\nhi\r\n--xyz--\r\n",
        );
        let e = parse_email(&raw).unwrap();
        assert_eq!(e.subject.as_deref(), Some("broken"));
        let note = e.problems.join("\n");
        assert!(note.contains("boundary 'abc' never appears"), "{note}");
    }

    #[test]
    fn undecodable_parts_and_bad_headers_are_noted() {
        let raw = simple(
            "Message-ID: <c@x>\r\nDate: yesterday at noon\r\nTo: Just A Name\r\n\
             Content-Type: text/plain\r\nContent-Transfer-Encoding: base64",
            "!!!! not base64 ****\r\n",
        );
        let e = parse_email(&raw).unwrap();
        assert_eq!(e.sent_at, None);
        assert!(e.to.is_empty());
        let note = e.problems.join("\n");
        assert!(
            note.contains("Date header 'yesterday at noon' could not be read"),
            "{note}"
        );
        assert!(
            note.contains("To: 1 entry without an email address"),
            "{note}"
        );
        assert!(note.contains("could not be decoded"), "{note}");
        assert!(note.contains("base64"), "{note}");
    }

    #[test]
    fn impossible_dates_are_noted() {
        let raw = simple(
            "Message-ID: <d@x>\r\nDate: Mon, 31 Feb 2026 10:00:00 +0000",
            "",
        );
        let e = parse_email(&raw).unwrap();
        assert_eq!(e.sent_at, None);
        assert!(
            e.problems.iter().any(|p| p.contains("not a valid date")),
            "{:?}",
            e.problems
        );
    }

    #[test]
    fn garbage_is_not_a_message() {
        for garbage in [
            &b"\x00\xff\xfe garbage bytes, no colon"[..],
            b"hello world\nthis is text\n",
            b"\r\n\r\nonly a body",
            b": no name\r\n\r\nbody",
        ] {
            let err = parse_email(garbage).unwrap_err();
            assert!(err.contains("no header section"), "{err}");
        }
    }

    #[test]
    fn garbage_lines_among_headers_are_noted() {
        let raw = b"Message-ID: <g@x>\r\n\x00\x01 garbage line\r\nSubject: ok\r\n\r\nbody";
        let e = parse_email(raw).unwrap();
        assert_eq!(e.subject.as_deref(), Some("ok"));
        assert!(
            e.problems.iter().any(|p| p.contains("not header fields")),
            "{:?}",
            e.problems
        );
    }

    #[test]
    fn empty_input_is_an_error_naming_the_problem() {
        assert!(parse_email(b"").unwrap_err().contains("empty"));
        assert!(parse_email(b" \r\n\t\n")
            .unwrap_err()
            .contains("whitespace"));
    }

    #[test]
    fn thousands_of_recipients() {
        let to: Vec<String> = (0..5000).map(|i| format!("r{i}@example.com")).collect();
        let raw = simple(
            &format!(
                "Message-ID: <many@x>\r\nFrom: a@example.com\r\nTo: {}\r\nCc: list: {};",
                to.join(",\r\n "),
                to[..1000].join(", ")
            ),
            "hi",
        );
        let e = parse_email(&raw).unwrap();
        assert_eq!(e.to.len(), 5000);
        assert_eq!(e.to, to);
        assert_eq!(e.cc.len(), 1000);
        assert!(e.problems.is_empty(), "{:?}", e.problems);
    }

    #[test]
    fn message_ids_are_normalized() {
        assert_eq!(normalize_message_id("  <abc@def>\r\n"), "abc@def");
        assert_eq!(normalize_message_id("abc@def"), "abc@def");
        assert_eq!(normalize_message_id("<>"), "");
    }

    #[test]
    fn subjects_are_normalized() {
        for (subject, want) in [
            ("RE: Fwd: AW: WG: Re[2]: Hello  World", "hello world"),
            ("Hello World", "hello world"),
            ("  re:re:RE:  Offer\t2026 ", "offer 2026"),
            ("FW: fw: Fwd (3): Angebot", "angebot"),
            ("Re : Réunion demain", "réunion demain"),
            ("Re: [CRM:0001234] Offer", "[crm:0001234] offer"),
            ("Re:", ""),
            ("", ""),
            // Not prefixes: words that merely start like one, or no colon.
            ("Reply needed: offer", "reply needed: offer"),
            ("Re offer", "re offer"),
            ("Awesome: news", "awesome: news"),
            ("Re[x]: odd", "re[x]: odd"),
        ] {
            assert_eq!(normalize_subject(subject), want, "{subject:?}");
        }
    }

    #[test]
    fn tracking_tokens_are_found() {
        assert_eq!(
            find_tracking_token("Re: Offer [CRM:0001234]", "CRM").as_deref(),
            Some("CRM:0001234")
        );
        assert_eq!(
            find_tracking_token("[x] [CRM:1] and [CRM:2]", "CRM").as_deref(),
            Some("CRM:1")
        );
        assert_eq!(
            find_tracking_token("[crm:000123456789] x", "CRM").as_deref(),
            Some("CRM:000123456789")
        );
        assert_eq!(
            find_tracking_token("Ünïcödé [TICKET:42]", "TICKET").as_deref(),
            Some("TICKET:42")
        );
    }

    #[test]
    fn tracking_tokens_are_not_found() {
        for (subject, prefix) in [
            ("Re: Offer [ABC:0001234]", "CRM"),       // wrong prefix
            ("Re: Offer CRM:0001234", "CRM"),         // no brackets
            ("Re: Offer [CRM:0001234", "CRM"),        // unclosed
            ("Re: Offer [CRM:]", "CRM"),              // no number
            ("Re: Offer [CRM:0000000000001]", "CRM"), // 13 digits
            ("Re: Offer [CRM: 1234]", "CRM"),         // space
            ("Re: Offer [CRM:12a]", "CRM"),           // not digits
            ("Re: Offer [XCRM:1234]", "CRM"),         // longer prefix
            ("[CRM", "CRM"),
            ("[", "CRM"),
            ("Offer [CRM:1234]", ""), // empty prefix
        ] {
            assert_eq!(find_tracking_token(subject, prefix), None, "{subject}");
        }
    }

    #[test]
    fn tracking_tokens_are_formatted_and_found_again() {
        assert_eq!(format_tracking_token("CRM", 1234), "CRM:0001234");
        assert_eq!(format_tracking_token("CRM", 0), "CRM:0000000");
        assert_eq!(format_tracking_token("T", 123_456_789), "T:123456789");
        let token = format_tracking_token("CRM", 98_765);
        let subject = format!("Re: Offer [{token}]");
        assert_eq!(find_tracking_token(&subject, "CRM"), Some(token));
    }

    /// Applies byte mutations (replace, insert, delete) to a message.
    fn mutate(base: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
        let mut bytes = base.to_vec();
        for &(at, byte, op) in edits {
            let at = at % (bytes.len() + 1);
            match op % 3 {
                0 if at < bytes.len() => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                _ if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => {}
            }
        }
        bytes
    }

    fn check_never_fails_badly(bytes: &[u8]) {
        match parse_email(bytes) {
            Ok(e) => assert!(!e.message_id.is_empty()),
            Err(err) => assert_ne!(err, PARSER_FAILED, "a panic reached the safety net"),
        }
        let id = synthetic_message_id(bytes);
        assert!(id.starts_with("crmsync-"));
    }

    /// Bytes that look like the pieces of a message, so that random
    /// sequences hit the parser's interesting paths.
    fn message_piece() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..16),
            Just(b"\r\n".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"--b\r\n".to_vec()),
            Just(b"--b--".to_vec()),
            Just(b"Content-Type: multipart/mixed; boundary=b\r\n".to_vec()),
            Just(b"Content-Type: message/rfc822\r\n".to_vec()),
            Just(b"Content-Transfer-Encoding: base64\r\n".to_vec()),
            Just(b"Content-Transfer-Encoding: quoted-printable\r\n".to_vec()),
            Just(b"Subject: =?utf-8?B?".to_vec()),
            Just(b"To: g: a@b, <c@d>;".to_vec()),
            Just(b"Date: ".to_vec()),
            Just(b"Message-ID: <".to_vec()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            check_never_fails_badly(&bytes);
        }

        #[test]
        fn never_panics_on_message_like_bytes(
            pieces in proptest::collection::vec(message_piece(), 0..40)
        ) {
            check_never_fails_badly(&pieces.concat());
        }

        #[test]
        fn never_panics_on_mutated_messages(
            edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..24),
            cut in any::<usize>(),
        ) {
            let mutated = mutate(MULTIPART.as_bytes(), &edits);
            check_never_fails_badly(&mutated);
            // And every truncation of the mutated message.
            let cut = cut % (mutated.len() + 1);
            check_never_fails_badly(&mutated[..cut]);
        }

        #[test]
        fn normalize_subject_is_idempotent(subject in "\\PC{0,40}") {
            let once = normalize_subject(&subject);
            prop_assert_eq!(normalize_subject(&once), once.clone());
        }

        #[test]
        fn formatted_tokens_are_found(n in 0u64..1_000_000_000_000, text in "[a-zA-Z :]{0,20}") {
            let token = format_tracking_token("CRM", n);
            let subject = format!("{text}[{token}]{text}");
            prop_assert_eq!(find_tracking_token(&subject, "CRM"), Some(token));
        }
    }
}
