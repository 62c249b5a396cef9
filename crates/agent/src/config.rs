//! The agent's TOML configuration (SPEC §13). Errors name the key and the fix.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

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
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the configuration file ({source}); pass an existing file with --config")]
    Read {
        path: String,
        source: std::io::Error,
    },
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
    dav: Option<toml::Value>,
    imap: Option<toml::Value>,
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
}

impl Config {
    /// Reads and checks `path`; relative paths in it are taken from the
    /// file's folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
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
        if mailbox.dav.is_some() || mailbox.imap.is_some() {
            return Err(invalid(
                "[mailbox.dav] and [mailbox.imap] are not supported by this agent yet; use [mailbox.local] with root = \"…\"".into(),
            ));
        }
        let local_root = match mailbox.local {
            Some(l) => Some(resolve(l.root.ok_or_else(|| {
                invalid("[mailbox.local] root is missing; set root = \"…\" (the folder holding contacts/, calendar/, tasks/, mail/)".into())
            })?)),
            None => None,
        };
        if local_root.is_none() {
            return Err(invalid(
                "[mailbox] names no mailbox; add [mailbox.local] with root = \"…\"".into(),
            ));
        }
        let interval = match raw.sync.and_then(|s| s.interval) {
            None => Duration::from_secs(15 * 60),
            Some(text) => parse_interval(&text).ok_or_else(|| {
                invalid(format!(
                    "[sync] interval = {text:?} is not a duration; write it like \"15m\", \"90s\" or \"1h\" (at least 1s)"
                ))
            })?,
        };
        Ok(Config {
            crm_url: url.trim_end_matches('/').to_string(),
            token,
            client_name,
            cache,
            on_behalf_of: client.on_behalf_of,
            local_root,
            interval,
        })
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

/// `90s`, `15m`, `1h`, `2d` (the syntax of the CRM's settings, R-T1).
pub fn parse_interval(text: &str) -> Option<Duration> {
    crmsync_core::settings::parse_interval(text.trim())
        .ok()
        .map(Duration::from_secs)
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
}
