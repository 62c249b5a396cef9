//! The agent's TOML configuration (SPEC §13). Errors name the key and the fix.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crmsync_mailbox::settings::{
    parse_interval, DavSettings, ImapSettings, MailFolders, TrackedFolder,
};
use crmsync_mailbox::settings::{DavSection, ImapSection, Secret};

/// Environment variable holding the CRM token when the file names none.
pub const TOKEN_ENV: &str = "CRMSYNC_TOKEN";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub crm_url: String,
    pub token: String,
    pub client_name: String,
    pub cache: PathBuf,
    pub on_behalf_of: Option<String>,
    pub local_root: Option<PathBuf>,
    pub interval: Duration,
    /// `[sync] max_message_size` (an addition to §13): a message larger
    /// than this is not tracked; it is refused, unread, and reported. At
    /// most, and by default, the CRM's own limit.
    pub max_message_size: u64,
    /// The mail folders and their roles (SPEC §13 `[mailbox.imap]` inbox,
    /// sent, drafts, tracked_folders; R-M4, R-M8).
    pub mail: MailFolders,
    /// `[mailbox.dav]`: contacts, calendar and tasks on a CalDAV/CardDAV server.
    pub dav: Option<DavSettings>,
    /// `[mailbox.imap]`: mail folders on an IMAP server.
    pub imap: Option<ImapSettings>,
    /// `[offline]` (R-O1): where the offline copy is served, when it is
    /// kept (`enabled = true`).
    pub offline: Option<std::net::SocketAddr>,
}

/// `[offline] listen`'s default (SPEC §13).
pub const OFFLINE_LISTEN: &str = "127.0.0.1:8481";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The I/O error is in the message, not also a `source` (said once).
    #[error(
        "{path}: cannot read the configuration file ({error}); pass an existing file with --config"
    )]
    Read { path: String, error: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    crm: Option<RawCrm>,
    client: Option<RawClient>,
    mailbox: Option<RawMailbox>,
    sync: Option<RawSync>,
    offline: Option<RawOffline>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOffline {
    enabled: Option<bool>,
    listen: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCrm {
    url: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    name: Option<String>,
    cache: Option<PathBuf>,
    on_behalf_of: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMailbox {
    local: Option<RawLocal>,
    dav: Option<DavSection>,
    imap: Option<ImapSection>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocal {
    root: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSync {
    interval: Option<String>,
    max_message_size: Option<String>,
}

impl Config {
    /// Reads and checks `path`; relative paths in it are taken from the
    /// file's folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.display().to_string(),
            error,
        })?;
        let env = std::env::var(TOKEN_ENV).ok();
        Config::parse(&text, path, env.as_deref())
    }

    /// Parses the text of a configuration file found at `path`; `env_token`
    /// is the value of CRMSYNC_TOKEN, if set.
    pub fn parse(text: &str, path: &Path, env_token: Option<&str>) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let invalid = |message: String| ConfigError::Invalid {
            path: shown.clone(),
            message,
        };
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let raw: Raw = toml::from_str(text).map_err(|e| {
            invalid(format!(
                "not a valid agent configuration: {}",
                e.to_string().trim_end()
            ))
        })?;
        let crm = raw.crm.ok_or_else(|| {
            invalid(
                "[crm] is missing; add [crm] with url = \"http://127.0.0.1:8480\" and a token"
                    .into(),
            )
        })?;
        let url = crm
            .url
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| invalid("[crm] url is missing; set url = \"http://HOST:PORT\" (the address of `crmsync serve`)".into()))?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(invalid(format!(
                "[crm] url = {url:?} is not an http:// or https:// address; write it like \"http://127.0.0.1:8480\""
            )));
        }
        let token = match (crm.token, crm.token_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "[crm] has both token and token_file; keep one of them".into(),
                ))
            }
            (Some(t), None) => t,
            (None, Some(file)) => {
                let file = resolve(file);
                std::fs::read_to_string(&file)
                    .map_err(|e| {
                        invalid(format!(
                            "[crm] token_file = {}: cannot read it ({e}); point it at the file holding the token",
                            file.display()
                        ))
                    })?
                    .trim()
                    .to_string()
            }
            (None, None) => env_token.map(str::to_string).ok_or_else(|| {
                invalid(format!(
                    "[crm] token is missing; set token = \"…\" or token_file = \"…\", or the {TOKEN_ENV} environment variable (`crmsync admin user add` prints a token)"
                ))
            })?,
        };
        let token = token.trim().to_string();
        if token.is_empty() {
            return Err(invalid(
                "[crm] token is empty; set the token `crmsync admin user add` printed".into(),
            ));
        }
        let client = raw.client.unwrap_or(RawClient {
            name: None,
            cache: None,
            on_behalf_of: None,
        });
        let client_name =
            match client.name {
                Some(n) if n.trim().is_empty() => return Err(invalid(
                    "[client] name is empty; set name = \"desktop\" (usually the machine's name)"
                        .into(),
                )),
                Some(n) => n,
                None => std::env::var("HOSTNAME").unwrap_or_else(|_| "desktop".into()),
            };
        let cache = match client.cache {
            Some(c) => resolve(c),
            None => default_cache_dir().join("cache.db"),
        };
        let mailbox = raw.mailbox.ok_or_else(|| {
            invalid("[mailbox] is missing; add [mailbox.local] with root = \"…\" (the folder holding contacts/, calendar/, tasks/, mail/)".into())
        })?;
        let secret = |section: &str, s: Secret| read_secret(section, s, &resolve);
        let dav = mailbox
            .dav
            .map(|d| d.check("[mailbox.dav]", |s| secret("[mailbox.dav]", s)))
            .transpose()
            .map_err(invalid)?;
        let (imap, mail) = match mailbox.imap {
            None => (None, MailFolders::default()),
            Some(i) => {
                let (imap, mail) = i
                    .check("[mailbox.imap]", |s| secret("[mailbox.imap]", s))
                    .map_err(invalid)?;
                (Some(imap), mail)
            }
        };
        let local_root = match mailbox.local {
            Some(l) => Some(resolve(l.root.ok_or_else(|| {
                invalid("[mailbox.local] root is missing; set root = \"…\" (the folder holding contacts/, calendar/, tasks/, mail/)".into())
            })?)),
            None => None,
        };
        if local_root.is_none() && dav.is_none() && imap.is_none() {
            return Err(invalid(
                "[mailbox] names no mailbox; add [mailbox.local] with root = \"…\" (or [mailbox.dav] / [mailbox.imap])".into(),
            ));
        }
        let sync = raw.sync.unwrap_or(RawSync {
            interval: None,
            max_message_size: None,
        });
        let max_message_size = match sync.max_message_size {
            None => MAX_MESSAGE_SIZE,
            Some(text) => match parse_size(&text) {
                Some(n) if n > 0 && n <= MAX_MESSAGE_SIZE => n,
                Some(_) => {
                    return Err(invalid(format!(
                        "[sync] max_message_size = {text:?} is above the CRM's limit; write at most \"25MB\""
                    )))
                }
                None => {
                    return Err(invalid(format!(
                        "[sync] max_message_size = {text:?} is not a size; write it like \"10MB\", \"500KB\" or a number of bytes"
                    )))
                }
            },
        };
        let interval = match sync.interval {
            None => Duration::from_secs(15 * 60),
            Some(text) => parse_interval(&text).ok_or_else(|| {
                invalid(format!(
                    "[sync] interval = {text:?} is not a duration; write it like \"15m\", \"90s\" or \"1h\" (at least 1s)"
                ))
            })?,
        };
        let offline = match raw.offline {
            Some(RawOffline {
                enabled: Some(true),
                listen,
            }) => {
                let listen = listen.unwrap_or_else(|| OFFLINE_LISTEN.to_string());
                Some(listen.parse().map_err(|_| {
                    invalid(format!(
                        "[offline] listen = {listen:?} is not an address; write it like \"{OFFLINE_LISTEN}\""
                    ))
                })?)
            }
            _ => None,
        };
        Ok(Config {
            crm_url: url.trim_end_matches('/').to_string(),
            token,
            client_name,
            cache,
            on_behalf_of: client.on_behalf_of,
            local_root,
            interval,
            max_message_size,
            mail,
            dav,
            imap,
            offline,
        })
    }
}

/// The password of a `[mailbox.*]` section: `password`, `password_file`
/// (its first line) or `password_command` (its output), exactly one of them.
fn read_secret(
    section: &str,
    s: Secret,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<String, String> {
    match (s.password, s.password_file, s.password_command) {
        (None, None, None) => Ok(String::new()),
        (Some(p), None, None) => Ok(p),
        (None, Some(file), None) => {
            let file = resolve(file);
            std::fs::read_to_string(&file)
                .map(|t| t.lines().next().unwrap_or("").to_string())
                .map_err(|e| format!("{section} password_file = {}: cannot read it ({e}); point it at the file holding the password", file.display()))
        }
        (None, None, Some(cmd)) => {
            let out = std::process::Command::new("sh")
                .args(["-c", &cmd])
                .output()
                .map_err(|e| format!("{section} password_command: cannot run it ({e})"))?;
            if !out.status.success() {
                return Err(format!(
                    "{section} password_command = {cmd:?} failed ({}); run it by hand to see why",
                    out.status
                ));
            }
            Ok(String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string())
        }
        _ => Err(format!(
            "{section} has more than one of password, password_file, password_command; keep one"
        )),
    }
}

fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(d).join("crmsync");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".local/share/crmsync");
    }
    PathBuf::from("crmsync-data")
}

/// The largest message the CRM stores (the server's `MAX_RAW`).
pub const MAX_MESSAGE_SIZE: u64 = 25 * 1024 * 1024;

/// `"10MB"`, `"500 KB"`, `"1048576"`: bytes (KB and MB are 1,024 and
/// 1,048,576 bytes, as the CRM counts them).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim().to_ascii_uppercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let scale = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" => 1024,
        "M" | "MB" => 1024 * 1024,
        _ => return None,
    };
    digits.parse::<u64>().ok()?.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: Option<&str>) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/crmsync/agent.toml"), env).map_err(|e| e.to_string())
    }

    #[test]
    fn section_13_example_reads() {
        let c = parse(
            "[crm]\nurl = \"http://127.0.0.1:8480\"\ntoken = \"abc\"\n[client]\nname = \"desktop\"\ncache = \"cache.db\"\n[mailbox]\n[mailbox.local]\nroot = \"/home/ann/mail\"\n[sync]\ninterval = \"15m\"\n",
            None,
        )
        .unwrap();
        assert_eq!(c.token, "abc");
        assert_eq!(c.cache, PathBuf::from("/etc/crmsync/cache.db"));
        assert_eq!(c.local_root, Some(PathBuf::from("/home/ann/mail")));
        assert_eq!(c.interval, Duration::from_secs(900));
    }

    #[test]
    fn errors_name_the_key_and_the_fix() {
        let e = parse(
            "[crm]\nurl = \"http://x\"\n[mailbox.local]\nroot = \"/m\"\n",
            None,
        )
        .unwrap_err();
        assert!(
            e.contains("[crm] token") && e.contains("CRMSYNC_TOKEN"),
            "{e}"
        );
        let ok = parse(
            "[crm]\nurl = \"http://x\"\n[mailbox.local]\nroot = \"/m\"\n",
            Some("t"),
        )
        .unwrap();
        assert_eq!(ok.token, "t");
        let e = parse("[crm]\nurl = \"http://x\"\ntoken = \"t\"\n[mailbox.local]\nroot = \"/m\"\n[sync]\ninterval = \"soon\"\n", None).unwrap_err();
        assert!(e.contains("[sync] interval") && e.contains("15m"), "{e}");
        let e = parse(
            "[crm]\nurl = \"http://x\"\ntoken = \"t\"\ncolour = 1\n",
            None,
        )
        .unwrap_err();
        assert!(e.contains("colour"), "{e}");
        let e = parse("[crm]\ntoken = \"t\"\n", None).unwrap_err();
        assert!(e.contains("[crm] url"), "{e}");
    }

    const CRM: &str = "[crm]\nurl = \"http://x\"\ntoken = \"t\"\n";

    #[test]
    fn section_13_dav_and_imap_read() {
        let c = parse(
            &format!("{CRM}[mailbox.dav]\ncontacts = \"http://d/ab/\"\ncalendar = \"http://d/cal/\"\ntasks = \"http://d/todo/\"\nusername = \"ann\"\npassword_command = \"echo s3cret\"\n[mailbox.imap]\nhost = \"127.0.0.1\"\nport = 143\nsecurity = \"none\"\nusername = \"ann\"\npassword = \"pw\"\ninbox = \"INBOX\"\nsent = \"Sent Items\"\ndrafts = \"Drafts\"\ntracked_folders = [\"CRM\", \"Deals\"]\nfolder_regarding = {{ Deals = \"opportunities/1b4e28ba-2fa1-11d2-883f-0016d3cca427\" }}\n"),
            None,
        )
        .unwrap();
        let dav = c.dav.unwrap();
        assert_eq!(dav.tasks.as_deref(), Some("http://d/todo/"));
        assert_eq!(dav.password, "s3cret");
        assert_eq!(dav.poll_interval, Duration::from_secs(2));
        let imap = c.imap.unwrap();
        assert_eq!(
            (imap.port, imap.security.as_str(), imap.password.as_str()),
            (143, "none", "pw")
        );
        assert_eq!(imap.rescan_interval, Duration::from_secs(300));
        assert_eq!(imap.poll_interval, Duration::from_secs(2));
        assert_eq!(c.max_message_size, MAX_MESSAGE_SIZE);
        assert_eq!(c.mail.sent, "Sent Items");
        assert_eq!(c.mail.tracked_folders.len(), 2);
        assert_eq!(
            c.mail.tracked_folders[1].regarding.as_ref().unwrap().0,
            "opportunities"
        );
        assert_eq!(c.local_root, None);
    }

    #[test]
    fn dav_and_imap_errors_name_the_key_and_the_fix() {
        let e = parse(
            &format!("{CRM}[mailbox.dav]\ncontacts = \"ftp://x\"\n"),
            None,
        )
        .unwrap_err();
        assert!(
            e.contains("[mailbox.dav] contacts") && e.contains("http://"),
            "{e}"
        );
        let e = parse(&format!("{CRM}[mailbox.dav]\nusername = \"a\"\n"), None).unwrap_err();
        assert!(e.contains("names no collection"), "{e}");
        let e = parse(
            &format!("{CRM}[mailbox.imap]\nhost = \"h\"\nusername = \"u\"\nsecurity = \"ssl\"\n"),
            None,
        )
        .unwrap_err();
        assert!(
            e.contains("[mailbox.imap] security") && e.contains("starttls"),
            "{e}"
        );
        let e = parse(&format!("{CRM}[mailbox.imap]\nhost = \"h\"\nusername = \"u\"\npassword = \"a\"\npassword_file = \"b\"\n"), None).unwrap_err();
        assert!(e.contains("more than one"), "{e}");
        let e = parse(&format!("{CRM}[mailbox.imap]\nhost = \"h\"\nusername = \"u\"\nfolder_regarding = {{ X = \"accounts/1b4e28ba-2fa1-11d2-883f-0016d3cca427\" }}\n"), None).unwrap_err();
        assert!(e.contains("not in tracked_folders"), "{e}");
        for (size, fault) in [
            ("\"1GB\"", "not a size"),
            ("\"26MB\"", "above the CRM's limit"),
        ] {
            let e = parse(&format!("{CRM}[mailbox.imap]\nhost = \"h\"\nusername = \"u\"\n[sync]\nmax_message_size = {size}\n"), None).unwrap_err();
            assert!(e.contains("max_message_size") && e.contains(fault), "{e}");
        }
        let c = parse(&format!("{CRM}[mailbox.imap]\nhost = \"h\"\nusername = \"u\"\n[sync]\nmax_message_size = \"10 MB\"\n"), None).unwrap();
        assert_eq!(c.max_message_size, 10 * 1024 * 1024);
        let e = parse(&format!("{CRM}[mailbox.imap]\nhost = \"h\"\nusername = \"u\"\nrescan_interval = \"often\"\n"), None).unwrap_err();
        assert!(e.contains("rescan_interval") && e.contains("\"5m\""), "{e}");
        for bad in ["\"often\"", "\"0s\""] {
            let e = parse(
                &format!(
                    "{CRM}[mailbox.imap]\nhost = \"h\"\nusername = \"u\"\npoll_interval = {bad}\n"
                ),
                None,
            )
            .unwrap_err();
            assert!(e.contains("poll_interval") && e.contains("\"2s\""), "{e}");
        }
        let c = parse(
            &format!(
                "{CRM}[mailbox.imap]\nhost = \"h\"\nusername = \"u\"\npoll_interval = \"30s\"\n"
            ),
            None,
        )
        .unwrap();
        assert_eq!(c.imap.unwrap().poll_interval, Duration::from_secs(30));
        let c = parse(
            &format!(
                "{CRM}[mailbox.imap]\nhost = \"h\"\nusername = \"u\"\nrescan_interval = \"0s\"\n"
            ),
            None,
        )
        .unwrap();
        assert_eq!(c.imap.unwrap().rescan_interval, Duration::ZERO);
        let e = parse(&format!("{CRM}[mailbox.imap]\nhost = \"h\"\nusername = \"u\"\npassword_command = \"exit 3\"\n"), None).unwrap_err();
        assert!(
            e.contains("password_command") && e.contains("failed"),
            "{e}"
        );
    }

    #[test]
    fn r_o1_offline_section_is_off_by_default_and_listens_where_told() {
        let local = "[mailbox.local]\nroot = \"/m\"\n";
        assert_eq!(parse(&format!("{CRM}{local}"), None).unwrap().offline, None);
        let off = parse(&format!("{CRM}{local}[offline]\nenabled = false\n"), None).unwrap();
        assert_eq!(off.offline, None);
        let on = parse(&format!("{CRM}{local}[offline]\nenabled = true\n"), None).unwrap();
        assert_eq!(on.offline, Some(OFFLINE_LISTEN.parse().unwrap()));
        let elsewhere = parse(
            &format!("{CRM}{local}[offline]\nenabled = true\nlisten = \"127.0.0.1:9000\"\n"),
            None,
        )
        .unwrap();
        assert_eq!(elsewhere.offline, Some("127.0.0.1:9000".parse().unwrap()));
        let e = parse(
            &format!("{CRM}{local}[offline]\nenabled = true\nlisten = \"laptop\"\n"),
            None,
        )
        .unwrap_err();
        assert!(
            e.contains("[offline] listen") && e.contains("127.0.0.1:8481"),
            "{e}"
        );
        let e = parse(&format!("{CRM}{local}[offline]\nenable = true\n"), None).unwrap_err();
        assert!(e.contains("enable"), "{e}");
    }
}
