//! R-F7 on real-world items: the calendar and address book files of other
//! projects' test suites (tests/data/realworld, origins and licenses in its
//! README). Every sound item maps to a valid CRM record; every broken one
//! (listed in `broken.txt` with the reason expected) gives its own error.

use std::path::{Path, PathBuf};

use crmsync_core::mapping::{parse_item, render_item, MailboxItem, RenderOptions};
use crmsync_core::record::{apply_input, parse_input};
use serde_json::{Map, Value};
use time::OffsetDateTime;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/realworld")
}

/// `file → the error it must give` for the items that cannot be read.
fn broken() -> Vec<(String, String)> {
    std::fs::read_to_string(corpus().join("broken.txt"))
        .expect("broken.txt")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (file, why) = l.split_once(' ').expect("`<file> <error>`");
            (file.to_string(), why.trim().to_string())
        })
        .collect()
}

fn items() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(corpus())
        .expect("corpus")
        .map(|e| e.expect("entry").path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("ics" | "vcf")))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            (name, std::fs::read(&p).expect("read"))
        })
        .collect();
    out.sort();
    out
}

/// The CRM's own validation of a record made of these mailbox fields.
fn crm_record(item: &MailboxItem, fields: &Map<String, Value>) -> Result<(), String> {
    let input = parse_input(item.set, &Value::Object(fields.clone())).map_err(|e| e.to_string())?;
    apply_input(item.set, None, &input)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The components a mapping does not own, in order (VALARM, VJOURNAL, X-…).
fn unmapped_components(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("BEGIN:"))
        .filter(|c| {
            !matches!(
                *c,
                "VCALENDAR" | "VEVENT" | "VTODO" | "VTIMEZONE" | "VCARD" | "STANDARD" | "DAYLIGHT"
            )
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn r_f7_realworld_items_map_to_valid_records_or_give_their_own_error() {
    let broken = broken();
    let mut failures = Vec::new();
    let mut sound = 0;
    for (name, bytes) in items() {
        let expected_error = broken.iter().find(|(f, _)| *f == name).map(|(_, w)| w);
        match (parse_item(&bytes), expected_error) {
            (Ok(item), None) => {
                sound += 1;
                if let Err(e) = crm_record(&item, &item.fields) {
                    failures.push(format!("{name}: not a valid CRM record: {e}"));
                }
                for ex in &item.exceptions {
                    if let Err(e) = crm_record(&item, &ex.fields) {
                        failures.push(format!("{name}: exception {}: {e}", ex.recurrence_id));
                    }
                }
                // Written back over itself (the CRM's answer to a track):
                // the same item, its unmapped components kept.
                let mut opts = RenderOptions::new(OffsetDateTime::now_utc());
                opts.existing = Some(&bytes);
                match render_item(&item, &opts) {
                    Ok(out) => {
                        let again = parse_item(&out).map(|i| (i.fields, i.exceptions));
                        if again.as_ref().ok()
                            != Some(&(item.fields.clone(), item.exceptions.clone()))
                        {
                            failures.push(format!(
                                "{name}: reads differently once written back: {again:?}"
                            ));
                        }
                        if unmapped_components(&out) != unmapped_components(&bytes) {
                            failures.push(format!("{name}: unmapped components not kept"));
                        }
                    }
                    Err(e) => failures.push(format!("{name}: cannot be written back: {e}")),
                }
            }
            (Ok(_), Some(why)) => failures.push(format!("{name}: read, but expected `{why}`")),
            (Err(e), Some(why)) => {
                if !e.to_string().contains(why.as_str()) {
                    failures.push(format!("{name}: error `{e}`, expected `{why}`"));
                }
            }
            (Err(e), None) => failures.push(format!("{name}: refused: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(sound >= 30, "only {sound} sound items in the corpus");
}
