//! The structural check of one item before calcard reads it: size, text
//! encoding, line folding, BEGIN/END nesting. calcard is lenient by design
//! (it reads what it can of a broken file); this pass is what turns a cut-off
//! or garbled file into an error that names the line. It also notes, per
//! component, the line of each property (for problem messages) and the RRULE
//! exactly as written (so a CRM rule comes back in its own spelling).

use super::{MappingError, MAX_ITEM_BYTES};

/// Deeper than any real item (VCALENDAR > VEVENT > VALARM is 3).
const MAX_DEPTH: usize = 16;
/// Components in one item (a series with many exceptions stays well below).
const MAX_COMPONENTS: usize = 20_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Root {
    Vcard,
    Vcalendar,
}

#[derive(Debug, Default)]
pub(crate) struct Component {
    /// Upper-cased component name (VEVENT).
    pub name: String,
    /// The line of its BEGIN.
    pub line: usize,
    /// Upper-cased property names (group prefix removed) and their lines.
    pub props: Vec<(String, usize)>,
    /// The first RRULE's value as written.
    pub rrule: Option<String>,
}

#[derive(Debug)]
pub(crate) struct Scanned {
    pub text: String,
    pub root: Root,
    /// Components in BEGIN order: the index is calcard's component id.
    pub components: Vec<Component>,
    pub problems: Vec<String>,
}

impl Scanned {
    /// The line of the first `prop` in component `id` (0: the root).
    pub fn line(&self, id: Option<u32>, prop: &str) -> Option<usize> {
        let component = self.components.get(id? as usize)?;
        component
            .props
            .iter()
            .find(|(name, _)| name == prop)
            .map(|(_, line)| *line)
    }

    /// The line of the BEGIN of component `id`.
    pub fn begin_line(&self, id: Option<u32>) -> Option<usize> {
        self.components.get(id? as usize).map(|c| c.line)
    }

    /// "line 7: PROP" for messages, or the property name when the line is unknown.
    pub fn at(&self, id: Option<u32>, prop: &str) -> String {
        match self.line(id, prop) {
            Some(line) => format!("line {line}: {prop}"),
            None => prop.to_string(),
        }
    }
}

pub(crate) fn scan(bytes: &[u8]) -> Result<Scanned, MappingError> {
    if bytes.len() > MAX_ITEM_BYTES {
        return Err(MappingError::new(format!(
            "the item is {} bytes; items over {} MiB are not read",
            bytes.len(),
            MAX_ITEM_BYTES / (1024 * 1024)
        )));
    }
    let mut problems = Vec::new();
    let text = match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(e) => {
            // vCard 2.1/3.0 files from old clients are often Latin-1.
            problems.push(format!(
                "the item is not UTF-8 (byte {}); read as Latin-1",
                e.valid_up_to()
            ));
            bytes.iter().map(|&b| b as char).collect()
        }
    };
    let text = match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    };

    let mut components: Vec<Component> = Vec::new();
    // (component index, name, line of its BEGIN)
    let mut stack: Vec<(usize, String, usize)> = Vec::new();
    let mut root = None;
    let mut closed = false;
    let mut last_line = 0;

    for (line_no, logical) in logical_lines(&text) {
        last_line = line_no;
        if logical.trim().is_empty() {
            continue;
        }
        let (name, value) = split_line(&logical);
        let value_upper = value.trim().to_ascii_uppercase();
        if closed {
            return Err(MappingError::at(
                line_no,
                format!(
                    "content after the END of the item ('{}'); one file holds one vCard or one VCALENDAR",
                    shorten(&logical)
                ),
            ));
        }
        if stack.is_empty() {
            match (name.as_str(), value_upper.as_str()) {
                ("BEGIN", "VCARD") => root = Some(Root::Vcard),
                ("BEGIN", "VCALENDAR") => root = Some(Root::Vcalendar),
                _ => {
                    return Err(MappingError::at(
                        line_no,
                        format!(
                            "expected BEGIN:VCARD or BEGIN:VCALENDAR, found '{}'",
                            shorten(&logical)
                        ),
                    ))
                }
            }
        }
        match name.as_str() {
            "BEGIN" => {
                if stack.len() >= MAX_DEPTH {
                    return Err(MappingError::at(
                        line_no,
                        format!("components nested more than {MAX_DEPTH} deep"),
                    ));
                }
                if components.len() >= MAX_COMPONENTS {
                    return Err(MappingError::at(
                        line_no,
                        format!("more than {MAX_COMPONENTS} components in one item"),
                    ));
                }
                stack.push((components.len(), value_upper.clone(), line_no));
                components.push(Component {
                    name: value_upper,
                    line: line_no,
                    ..Component::default()
                });
            }
            "END" => {
                let Some((_, open, open_line)) = stack.pop() else {
                    return Err(MappingError::at(line_no, "END without BEGIN"));
                };
                if open != value_upper {
                    return Err(MappingError::at(
                        line_no,
                        format!(
                            "END:{} does not close BEGIN:{open} of line {open_line}",
                            shorten(value.trim())
                        ),
                    ));
                }
                closed = stack.is_empty();
            }
            _ => {
                let Some(component) = stack.last().and_then(|(i, _, _)| components.get_mut(*i))
                else {
                    return Err(MappingError::at(
                        line_no,
                        "a property outside any component",
                    ));
                };
                if name == "RRULE" && component.rrule.is_none() {
                    component.rrule = Some(value.trim().to_string());
                }
                component.props.push((name, line_no));
            }
        }
    }
    if let Some((_, open, open_line)) = stack.pop() {
        return Err(MappingError::at(
            last_line.max(1),
            format!(
                "BEGIN:{open} of line {open_line} has no END:{open}; the item is cut off or broken"
            ),
        ));
    }
    let Some(root) = root else {
        return Err(MappingError::new(
            "the item is empty: no BEGIN:VCARD or BEGIN:VCALENDAR",
        ));
    };
    Ok(Scanned {
        text,
        root,
        components,
        problems,
    })
}

/// Unfolded lines with the number of their first physical line.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    for (i, physical) in text.split('\n').enumerate() {
        let physical = physical.strip_suffix('\r').unwrap_or(physical);
        match (physical.as_bytes().first(), out.last_mut()) {
            (Some(b' ' | b'\t'), Some((_, current))) => current.push_str(&physical[1..]),
            _ => out.push((i + 1, physical.to_string())),
        }
    }
    out
}

/// The upper-cased property name (without a vCard group) and the value
/// (after the first colon outside a quoted parameter value).
fn split_line(line: &str) -> (String, &str) {
    let name_end = line.find([';', ':']).unwrap_or(line.len());
    let name = &line[..name_end];
    let name = name.rsplit('.').next().unwrap_or(name);
    let mut quoted = false;
    let mut value = "";
    for (i, c) in line.char_indices().skip_while(|(i, _)| *i < name_end) {
        match c {
            '"' => quoted = !quoted,
            ':' if !quoted => {
                value = &line[i + 1..];
                break;
            }
            _ => {}
        }
    }
    (name.trim().to_ascii_uppercase(), value)
}

fn shorten(s: &str) -> String {
    crate::field::shorten(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_and_quotes() {
        let lines = logical_lines("A:1\r\n 2\r\nB;X=\"a:b\":c\n\tcont\n");
        assert_eq!(lines[0], (1, "A:12".to_string()));
        assert_eq!(lines[1], (3, "B;X=\"a:b\":ccont".to_string()));
        assert_eq!(split_line(&lines[1].1), ("B".to_string(), "ccont"));
        assert_eq!(
            split_line("item1.EMAIL;TYPE=x:a@b"),
            ("EMAIL".to_string(), "a@b")
        );
    }
}
