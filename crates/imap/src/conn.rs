//! One IMAP connection: TCP, TLS or STARTTLS, authentication, ENABLE, and
//! tagged commands (pipelined when asked) whose untagged answers go to a
//! handler one at a time.
//!
//! Why imap-codec and our own transport rather than async-imap: the backend
//! needs CONDSTORE/QRESYNC end to end (`MODSEQ` in FETCH, `VANISHED
//! (EARLIER)`, `HIGHESTMODSEQ`, `UNCHANGEDSINCE` with the `MODIFIED` code),
//! `APPENDUID`, command pipelining (one round trip per sync of a folder) and
//! a count of round trips. async-imap 0.12 hides `MODIFIED` and `VANISHED`
//! and answers one command at a time. imap-codec (the parser behind
//! imap-next, fuzzed, `#![forbid(unsafe_code)]`) parses every response kind
//! we need into typed values and never panics on bad input; the framing
//! here (a line, then `{n}` literals read with `read_exact`) hands it one
//! complete response at a time, so a 5 MB message is parsed once and memory
//! holds one message, never the mailbox.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use imap_codec::decode::Decoder;
use imap_codec::imap_types::core::Vec1;
use imap_codec::imap_types::response::{
    Capability, Code, Data, GreetingKind, Response, Status, StatusKind,
};
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use imap_codec::{GreetingCodec, ResponseCodec};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::config::{ImapConfig, Security};

/// Longest response line accepted (literals excluded).
const MAX_LINE: u64 = 8 * 1024 * 1024;
/// Largest literal (one message) accepted; a bigger one ends the connection.
pub(crate) const MAX_LITERAL: usize = 512 * 1024 * 1024;

pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Counts shared by every connection of one mailbox (for tests and metrics).
#[derive(Debug, Default)]
pub struct Stats {
    /// Round trips: one per write of one or more pipelined commands that
    /// waits for their answers.
    pub round_trips: AtomicU64,
    /// Commands sent (a pipelined round trip counts each).
    pub commands: AtomicU64,
    /// Connections opened (logins).
    pub connects: AtomicU64,
}

/// Why a connection failed. Everything but `No` leaves the connection
/// unusable: the caller drops it and the next call reconnects.
#[derive(Debug)]
pub(crate) enum ConnError {
    Io(std::io::Error),
    Timeout,
    /// The server closed the connection (BYE or end of stream).
    Closed(String),
    /// The server sent something that is not IMAP, or not what we asked.
    Protocol(String),
    /// A tagged NO/BAD where the caller cannot go on (ENABLE...).
    Refused(String),
    /// The server refused the user name or password.
    LoginFailed(String),
    Tls(String),
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnError::Io(e) => write!(f, "connection failed: {e}"),
            ConnError::Timeout => f.write_str("the server did not answer in time"),
            ConnError::Closed(why) => write!(f, "the server closed the connection ({why})"),
            ConnError::Protocol(why) => write!(f, "unexpected answer from the server: {why}"),
            ConnError::Refused(why) => write!(f, "refused by the server: {why}"),
            ConnError::LoginFailed(why) => write!(f, "refused by the server: {why}"),
            ConnError::Tls(why) => write!(f, "TLS: {why}"),
        }
    }
}

impl From<std::io::Error> for ConnError {
    fn from(e: std::io::Error) -> Self {
        ConnError::Io(e)
    }
}

/// The outcome of one tagged command.
#[derive(Debug, Clone)]
pub(crate) struct Done {
    pub kind: DoneKind,
    pub code: DoneCode,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DoneKind {
    Ok,
    No,
    Bad,
}

/// The response codes of a tagged answer the backend acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DoneCode {
    None,
    AppendUid {
        uid_validity: u32,
        uid: u32,
    },
    /// `MODIFIED`: UIDs (for UID STORE) that failed `UNCHANGEDSINCE`.
    Modified(Vec<(u32, u32)>),
    TryCreate,
    Nonexistent,
    Capability(Vec<String>),
    Other,
}

impl Done {
    pub fn is_ok(&self) -> bool {
        self.kind == DoneKind::Ok
    }

    /// `NO [TRYCREATE]`/`[NONEXISTENT]` or a text saying so: the folder is not there.
    pub fn no_such_mailbox(&self) -> bool {
        self.kind != DoneKind::Ok
            && (matches!(self.code, DoneCode::TryCreate | DoneCode::Nonexistent)
                || self.text.to_ascii_lowercase().contains("doesn't exist")
                || self.text.to_ascii_lowercase().contains("does not exist"))
    }
}

impl fmt::Display for Done {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            DoneKind::Ok => "OK",
            DoneKind::No => "NO",
            DoneKind::Bad => "BAD",
        };
        write!(f, "{kind} {}", self.text)
    }
}

/// One untagged answer given to a command's handler: parsed, or the raw
/// bytes of a response imap-codec could not parse (the connection goes on).
pub(crate) enum Untagged<'r, 'a> {
    Parsed(&'r Response<'a>),
    Malformed(&'r [u8]),
}

/// Capabilities as upper-case text (`IMAP4REV1`, `AUTH=PLAIN`, `QRESYNC`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Caps(Vec<String>);

impl Caps {
    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|c| c.eq_ignore_ascii_case(name))
    }

    fn from_list(list: &Vec1<Capability<'_>>) -> Self {
        Caps(
            list.as_ref()
                .iter()
                .map(|c| c.to_string().to_ascii_uppercase())
                .collect(),
        )
    }
}

/// The folder selected on this connection and what its SELECT said.
#[derive(Debug, Clone, Default)]
pub(crate) struct Selected {
    pub folder: String,
    pub uid_validity: u32,
    pub highest_modseq: Option<u64>,
    /// PERMANENTFLAGS contains `\*`: new keywords may be created.
    pub new_keywords: bool,
    /// Keywords the folder already knows (FLAGS / PERMANENTFLAGS).
    pub known_flags: Vec<String>,
    /// The message count of the last EXISTS.
    pub exists: Option<u32>,
    /// The UIDNEXT SELECT announced.
    pub uid_next: Option<u32>,
}

impl Selected {
    /// Takes what an untagged answer of SELECT tells about the folder.
    pub fn observe(&mut self, resp: &Response<'_>) {
        match resp {
            Response::Status(Status::Untagged(body)) => match &body.code {
                Some(Code::UidValidity(v)) => self.uid_validity = v.get(),
                Some(Code::UidNext(n)) => self.uid_next = Some(n.get()),
                Some(Code::HighestModSeq(m)) => self.highest_modseq = Some(m.get()),
                Some(Code::NoModSeq) => self.highest_modseq = None,
                Some(Code::PermanentFlags(flags)) => {
                    use imap_codec::imap_types::flag::FlagPerm;
                    self.new_keywords = flags.iter().any(|f| matches!(f, FlagPerm::Asterisk));
                    for f in flags {
                        if let FlagPerm::Flag(flag) = f {
                            self.known_flags.push(flag.to_string());
                        }
                    }
                }
                _ => {}
            },
            Response::Data(Data::Exists(n)) => self.exists = Some(*n),
            Response::Data(Data::Flags(flags)) => {
                for flag in flags {
                    self.known_flags.push(flag.to_string());
                }
            }
            _ => {}
        }
    }
}

pub(crate) struct Conn {
    io: BufReader<Box<dyn Io>>,
    next_tag: u64,
    pub caps: Caps,
    pub condstore: bool,
    pub qresync: bool,
    pub selected: Option<Selected>,
    /// A command was interrupted (its future dropped): answers may still be
    /// on the way, so the connection must not be used again.
    pub poisoned: bool,
    /// When the last command was sent.
    pub last_used: std::time::Instant,
    stats: Arc<Stats>,
    timeout: Duration,
}

impl Conn {
    /// Connects, authenticates and enables CONDSTORE/QRESYNC when offered.
    pub async fn open(config: &ImapConfig, stats: Arc<Stats>) -> Result<Conn, ConnError> {
        let timeout = config.timeout();
        let tcp = tokio::time::timeout(
            timeout,
            TcpStream::connect((config.host.as_str(), config.port)),
        )
        .await
        .map_err(|_| ConnError::Timeout)??;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match config.security {
            Security::Tls => Box::new(tls_wrap(config, tcp).await?),
            Security::None | Security::StartTls => Box::new(tcp),
        };
        let mut conn = Conn {
            io: BufReader::with_capacity(64 * 1024, io),
            next_tag: 0,
            caps: Caps::default(),
            condstore: false,
            qresync: false,
            selected: None,
            poisoned: false,
            last_used: std::time::Instant::now(),
            stats: stats.clone(),
            timeout,
        };
        conn.greeting().await?;
        if config.security == Security::StartTls {
            if !conn.caps.has("STARTTLS") {
                conn.capability().await?;
            }
            if !conn.caps.has("STARTTLS") {
                return Err(ConnError::Refused(
                    "the server does not offer STARTTLS; use security = \"tls\" or \"none\"".into(),
                ));
            }
            let done = conn.run_one("STARTTLS", |_| {}).await?;
            if !done.is_ok() {
                return Err(ConnError::Refused(format!("STARTTLS: {done}")));
            }
            if !conn.io.buffer().is_empty() {
                return Err(ConnError::Protocol(
                    "data after the STARTTLS answer (possible injection attack)".into(),
                ));
            }
            let placeholder: Box<dyn Io> = Box::new(tokio::io::duplex(1).0);
            let old = std::mem::replace(&mut conn.io, BufReader::new(placeholder));
            let inner = old.into_inner();
            let tls = tls_wrap(config, inner).await?;
            conn.io = BufReader::with_capacity(64 * 1024, Box::new(tls));
            conn.caps = Caps::default();
        }
        if conn.caps.0.is_empty() {
            conn.capability().await?;
        }
        conn.login(config).await?;
        stats.connects.fetch_add(1, Ordering::Relaxed);
        if conn.caps.has("QRESYNC") && conn.caps.has("ENABLE") {
            let done = conn.run_one("ENABLE QRESYNC", |_| {}).await?;
            conn.qresync = done.is_ok();
            conn.condstore = done.is_ok();
        }
        if !conn.condstore && conn.caps.has("CONDSTORE") {
            if conn.caps.has("ENABLE") {
                let done = conn.run_one("ENABLE CONDSTORE", |_| {}).await?;
                conn.condstore = done.is_ok();
            } else {
                conn.condstore = true;
            }
        }
        Ok(conn)
    }

    async fn greeting(&mut self) -> Result<(), ConnError> {
        let frame = self.read_frame().await?;
        match GreetingCodec::default().decode(&frame) {
            Ok((_, greeting)) => {
                if greeting.kind == GreetingKind::Bye {
                    return Err(ConnError::Closed(greeting.text.to_string()));
                }
                if let Some(Code::Capability(list)) = &greeting.code {
                    self.caps = Caps::from_list(list);
                }
                Ok(())
            }
            Err(_) if frame.starts_with(b"* OK") || frame.starts_with(b"* PREAUTH") => Ok(()),
            Err(_) => Err(ConnError::Protocol(format!(
                "not an IMAP greeting: {}",
                printable(&frame)
            ))),
        }
    }

    async fn capability(&mut self) -> Result<(), ConnError> {
        let mut caps = None;
        let done = self
            .run_one("CAPABILITY", |u| {
                if let Untagged::Parsed(Response::Data(Data::Capability(list))) = u {
                    caps = Some(Caps::from_list(list));
                }
            })
            .await?;
        if !done.is_ok() {
            return Err(ConnError::Refused(format!("CAPABILITY: {done}")));
        }
        self.caps = caps.unwrap_or_default();
        Ok(())
    }

    async fn login(&mut self, config: &ImapConfig) -> Result<(), ConnError> {
        if self.caps.has("AUTH=PLAIN") {
            let mut token = Vec::new();
            token.push(0);
            token.extend_from_slice(config.username.as_bytes());
            token.push(0);
            token.extend_from_slice(config.password.as_bytes());
            let token = base64::engine::general_purpose::STANDARD.encode(token);
            let done = if self.caps.has("SASL-IR") {
                self.run_one(&format!("AUTHENTICATE PLAIN {token}"), |_| {})
                    .await?
            } else {
                self.run_continued("AUTHENTICATE PLAIN\r\n", format!("{token}\r\n").as_bytes())
                    .await?
            };
            return self.after_login(done).await;
        }
        if self.caps.has("LOGINDISABLED") {
            return Err(ConnError::Refused(
                "the server refuses LOGIN on this connection; use security = \"starttls\" or \"tls\""
                    .into(),
            ));
        }
        let (user, pass) = match (astring(&config.username), astring(&config.password)) {
            (Some(u), Some(p)) => (u, p),
            _ => {
                return Err(ConnError::Refused(
                    "the user name or password holds a line break or non-ASCII and the server offers no AUTH=PLAIN".into(),
                ))
            }
        };
        let done = self
            .run_one(&format!("LOGIN {user} {pass}"), |_| {})
            .await?;
        self.after_login(done).await
    }

    async fn after_login(&mut self, done: Done) -> Result<(), ConnError> {
        if !done.is_ok() {
            return Err(ConnError::LoginFailed(format!(
                "login failed ({}); check username and password in [mailbox.imap]",
                done.text
            )));
        }
        match done.code {
            DoneCode::Capability(list) => self.caps = Caps(list),
            _ => self.capability().await?,
        }
        Ok(())
    }

    fn tag(&mut self) -> String {
        self.next_tag += 1;
        format!("c{}", self.next_tag)
    }

    /// Runs one command.
    pub async fn run_one(
        &mut self,
        command: &str,
        on: impl FnMut(Untagged<'_, '_>) + Send,
    ) -> Result<Done, ConnError> {
        let mut done = self.run(&[command], on).await?;
        done.pop()
            .ok_or_else(|| ConnError::Protocol("no tagged answer".into()))
    }

    /// Sends `commands` in one write (pipelined) and reads until each has its
    /// tagged answer; every untagged answer meanwhile goes to `on`. One round trip.
    pub async fn run<S: AsRef<str>>(
        &mut self,
        commands: &[S],
        mut on: impl FnMut(Untagged<'_, '_>) + Send,
    ) -> Result<Vec<Done>, ConnError> {
        let mut out = Vec::new();
        let mut tags = Vec::new();
        for c in commands {
            let tag = self.tag();
            out.extend_from_slice(tag.as_bytes());
            out.push(b' ');
            out.extend_from_slice(c.as_ref().as_bytes());
            out.extend_from_slice(b"\r\n");
            tags.push(tag);
        }
        self.poisoned = true;
        self.stats.round_trips.fetch_add(1, Ordering::Relaxed);
        self.stats
            .commands
            .fetch_add(commands.len() as u64, Ordering::Relaxed);
        self.write(&out).await?;
        let results = self.read_until_all_tagged(&tags, &mut on).await?;
        self.poisoned = false;
        Ok(results)
    }

    /// A command whose first line ends in a synchronizing literal (or an
    /// AUTHENTICATE waiting for `+`): sends `first`, waits for the
    /// continuation, then sends `rest`. With LITERAL+ (`{n+}` in `first`) the
    /// caller passes everything in `first` and `rest` is empty.
    pub async fn run_continued(&mut self, first: &str, rest: &[u8]) -> Result<Done, ConnError> {
        let tag = self.tag();
        self.poisoned = true;
        self.stats.round_trips.fetch_add(1, Ordering::Relaxed);
        self.stats.commands.fetch_add(1, Ordering::Relaxed);
        let mut head = Vec::with_capacity(tag.len() + 1 + first.len());
        head.extend_from_slice(tag.as_bytes());
        head.push(b' ');
        head.extend_from_slice(first.as_bytes());
        if rest.is_empty() {
            self.write(&head).await?;
        } else {
            self.write(&head).await?;
            loop {
                let frame = self.read_frame().await?;
                if frame.starts_with(b"+") {
                    break;
                }
                if frame.starts_with(tag.as_bytes()) {
                    let done = self.tagged(&frame)?;
                    self.poisoned = false;
                    return Ok(done);
                }
                self.check_bye(&frame)?;
            }
            self.write(rest).await?;
        }
        let done = self.read_until_tagged(&tag, &mut |_| {}).await?;
        self.poisoned = false;
        Ok(done)
    }

    /// APPENDs one message (no flags); the data is sent as a literal.
    pub async fn append(&mut self, mailbox: &str, data: &[u8]) -> Result<Done, ConnError> {
        if self.caps.has("LITERAL+") {
            let tag = self.tag();
            self.poisoned = true;
            self.stats.round_trips.fetch_add(1, Ordering::Relaxed);
            self.stats.commands.fetch_add(1, Ordering::Relaxed);
            let head = format!("{tag} APPEND {mailbox} {{{}+}}\r\n", data.len());
            // Three writes, so the message is never copied.
            self.write(head.as_bytes()).await?;
            self.write(data).await?;
            self.write(b"\r\n").await?;
            let done = self.read_until_tagged(&tag, &mut |_| {}).await?;
            self.poisoned = false;
            Ok(done)
        } else {
            let mut rest = Vec::with_capacity(data.len() + 2);
            rest.extend_from_slice(data);
            rest.extend_from_slice(b"\r\n");
            self.run_continued(&format!("APPEND {mailbox} {{{}}}\r\n", data.len()), &rest)
                .await
        }
    }

    /// Starts IDLE; returns once the server accepted it.
    pub async fn idle_start(&mut self) -> Result<String, ConnError> {
        let tag = self.tag();
        self.poisoned = true;
        self.stats.round_trips.fetch_add(1, Ordering::Relaxed);
        self.stats.commands.fetch_add(1, Ordering::Relaxed);
        self.write(format!("{tag} IDLE\r\n").as_bytes()).await?;
        loop {
            let frame = self.read_frame().await?;
            if frame.starts_with(b"+") {
                return Ok(tag);
            }
            if frame.starts_with(tag.as_bytes()) {
                let done = self.tagged(&frame)?;
                self.poisoned = false;
                return Err(ConnError::Refused(format!("IDLE: {done}")));
            }
            self.check_bye(&frame)?;
        }
    }

    /// While idling: the next untagged answer, or `None` when `wait` passed.
    /// Calls `on` with it and returns whether one came.
    pub async fn idle_wait(
        &mut self,
        wait: Duration,
        on: &mut (dyn FnMut(Untagged<'_, '_>) + Send),
    ) -> Result<bool, ConnError> {
        let frame = match tokio::time::timeout(wait, self.read_frame_untimed()).await {
            Err(_) => return Ok(false),
            Ok(frame) => frame?,
        };
        self.check_bye(&frame)?;
        match ResponseCodec::default().decode(&frame) {
            Ok((_, resp)) => on(Untagged::Parsed(&resp)),
            Err(_) => on(Untagged::Malformed(&frame)),
        }
        Ok(true)
    }

    /// Ends IDLE (DONE) and reads its tagged answer.
    pub async fn idle_done(
        &mut self,
        tag: &str,
        on: &mut (dyn FnMut(Untagged<'_, '_>) + Send),
    ) -> Result<(), ConnError> {
        self.write(b"DONE\r\n").await?;
        self.read_until_tagged(tag, on).await?;
        self.poisoned = false;
        Ok(())
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        self.last_used = std::time::Instant::now();
        let io = self.io.get_mut();
        tokio::time::timeout(self.timeout, async {
            io.write_all(bytes).await?;
            io.flush().await
        })
        .await
        .map_err(|_| ConnError::Timeout)??;
        Ok(())
    }

    async fn read_until_tagged(
        &mut self,
        tag: &str,
        on: &mut (dyn FnMut(Untagged<'_, '_>) + Send),
    ) -> Result<Done, ConnError> {
        let mut done = self.read_until_all_tagged(&[tag], on).await?;
        done.pop()
            .ok_or_else(|| ConnError::Protocol("no tagged answer".into()))
    }

    /// Reads until every one of `tags` has its tagged answer, returned in the
    /// order of `tags`. A server may complete pipelined commands in any order
    /// (RFC 9051 5.5; Dovecot answers a STATUS before the NOOP or UNSELECT
    /// sent ahead of it while that one waits for another session's changes).
    async fn read_until_all_tagged<S: AsRef<str>>(
        &mut self,
        tags: &[S],
        on: &mut (dyn FnMut(Untagged<'_, '_>) + Send),
    ) -> Result<Vec<Done>, ConnError> {
        let mut done: Vec<Option<Done>> = tags.iter().map(|_| None).collect();
        while done.iter().any(Option::is_none) {
            let frame = self.read_frame().await?;
            let answered = tags.iter().position(|tag| {
                let tag = tag.as_ref().as_bytes();
                frame.starts_with(tag) && frame.get(tag.len()) == Some(&b' ')
            });
            if let Some(i) = answered {
                done[i] = Some(self.tagged(&frame)?);
                continue;
            }
            if frame.starts_with(b"+") {
                // A continuation nobody asked for: the server is waiting for
                // data we do not have. The connection is out of step.
                return Err(ConnError::Protocol(format!(
                    "unexpected continuation request: {}",
                    printable(&frame)
                )));
            }
            self.check_bye(&frame)?;
            match ResponseCodec::default().decode(&frame) {
                Ok((_, resp)) => on(Untagged::Parsed(&resp)),
                Err(_) => {
                    tracing::debug!(frame = %printable(&frame), "IMAP answer not understood; skipped");
                    on(Untagged::Malformed(&frame))
                }
            }
        }
        Ok(done.into_iter().flatten().collect())
    }

    fn check_bye(&self, frame: &[u8]) -> Result<(), ConnError> {
        if frame.len() >= 5 && frame[..5].eq_ignore_ascii_case(b"* BYE") {
            return Err(ConnError::Closed(printable(frame)));
        }
        Ok(())
    }

    fn tagged(&self, frame: &[u8]) -> Result<Done, ConnError> {
        if let Ok((_, Response::Status(Status::Tagged(tagged)))) =
            ResponseCodec::default().decode(frame)
        {
            let kind = match tagged.body.kind {
                StatusKind::Ok => DoneKind::Ok,
                StatusKind::No => DoneKind::No,
                StatusKind::Bad => DoneKind::Bad,
            };
            let code = match &tagged.body.code {
                None => DoneCode::None,
                Some(Code::AppendUid { uid_validity, uid }) => DoneCode::AppendUid {
                    uid_validity: uid_validity.get(),
                    uid: uid.get(),
                },
                Some(Code::Modified(set)) => DoneCode::Modified(ranges(set)),
                Some(Code::TryCreate) => DoneCode::TryCreate,
                Some(Code::Capability(list)) => DoneCode::Capability(Caps::from_list(list).0),
                Some(Code::Other(other)) => {
                    if format!("{other:?}")
                        .to_ascii_uppercase()
                        .contains("NONEXISTENT")
                    {
                        DoneCode::Nonexistent
                    } else {
                        DoneCode::Other
                    }
                }
                Some(_) => DoneCode::Other,
            };
            return Ok(Done {
                kind,
                code,
                text: tagged.body.text.to_string(),
            });
        }
        // Not parseable: still find OK/NO/BAD so a command's outcome is known.
        let text = String::from_utf8_lossy(frame).trim_end().to_string();
        let mut words = text.splitn(3, ' ');
        let _tag = words.next();
        let kind = match words.next().map(|w| w.to_ascii_uppercase()) {
            Some(w) if w == "OK" => DoneKind::Ok,
            Some(w) if w == "NO" => DoneKind::No,
            Some(w) if w == "BAD" => DoneKind::Bad,
            _ => {
                return Err(ConnError::Protocol(format!(
                    "bad tagged answer: {}",
                    printable(frame)
                )))
            }
        };
        let rest = words.next().unwrap_or("").to_string();
        let code = if rest.to_ascii_uppercase().starts_with("[NONEXISTENT") {
            DoneCode::Nonexistent
        } else if rest.starts_with('[') {
            DoneCode::Other
        } else {
            DoneCode::None
        };
        Ok(Done {
            kind,
            code,
            text: rest,
        })
    }

    async fn read_frame(&mut self) -> Result<Vec<u8>, ConnError> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.read_frame_untimed())
            .await
            .map_err(|_| ConnError::Timeout)?
    }

    /// One complete response: a line, and for each `{n}` at its end the n
    /// bytes of the literal and the line after them. Literals are read with
    /// `read_exact` (no scanning); only a line is limited in length.
    async fn read_frame_untimed(&mut self) -> Result<Vec<u8>, ConnError> {
        let mut frame = Vec::new();
        loop {
            let start = frame.len();
            let n = (&mut self.io)
                .take(MAX_LINE)
                .read_until(b'\n', &mut frame)
                .await?;
            if n == 0 {
                return Err(ConnError::Closed("end of stream".into()));
            }
            if !frame.ends_with(b"\n") {
                return if n as u64 >= MAX_LINE {
                    Err(ConnError::Protocol("response line too long".into()))
                } else {
                    Err(ConnError::Closed("end of stream in a response".into()))
                };
            }
            match literal_len(&frame[start..]) {
                None => return Ok(frame),
                Some(len) if len > MAX_LITERAL => {
                    return Err(ConnError::Protocol(format!(
                        "literal of {len} bytes is larger than the limit of {MAX_LITERAL}"
                    )))
                }
                Some(len) => {
                    let at = frame.len();
                    frame.resize(at + len, 0);
                    self.io.read_exact(&mut frame[at..]).await.map_err(|e| {
                        if e.kind() == std::io::ErrorKind::UnexpectedEof {
                            ConnError::Closed("end of stream in the middle of a message".into())
                        } else {
                            ConnError::Io(e)
                        }
                    })?;
                }
            }
        }
    }
}

/// `{n}` or `{n+}` at the end of a line (before CRLF).
fn literal_len(line: &[u8]) -> Option<usize> {
    let line = line.strip_suffix(b"\n")?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = line.strip_suffix(b"}")?;
    let open = line.iter().rposition(|&b| b == b'{')?;
    let digits = &line[open + 1..];
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    if digits.is_empty() || digits.len() > 12 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// A sequence set as inclusive ranges (`*` as `u32::MAX`).
pub(crate) fn ranges(set: &SequenceSet) -> Vec<(u32, u32)> {
    let value = |s: &SeqOrUid| match s {
        SeqOrUid::Value(v) => v.get(),
        SeqOrUid::Asterisk => u32::MAX,
    };
    set.0
        .as_ref()
        .iter()
        .map(|seq| match seq {
            Sequence::Single(s) => (value(s), value(s)),
            Sequence::Range(a, b) => {
                let (a, b) = (value(a), value(b));
                (a.min(b), a.max(b))
            }
        })
        .collect()
}

/// A string argument: a quoted string, or `None` if it cannot be one
/// (CR, LF, NUL or non-ASCII need a literal).
pub(crate) fn astring(value: &str) -> Option<String> {
    if value
        .bytes()
        .any(|b| b == b'\r' || b == b'\n' || b == 0 || !b.is_ascii())
    {
        return None;
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    Some(out)
}

/// At most 200 characters of a frame, printable, for messages.
pub(crate) fn printable(frame: &[u8]) -> String {
    let text = String::from_utf8_lossy(&frame[..frame.len().min(200)]);
    text.trim_end().escape_debug().to_string()
}

async fn tls_wrap<S>(
    config: &ImapConfig,
    stream: S,
) -> Result<tokio_rustls::client::TlsStream<S>, ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    let host = config.host.as_str();
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &config.tls_ca_file {
        let pem =
            std::fs::read(path).map_err(|e| ConnError::Tls(format!("{}: {e}", path.display())))?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| ConnError::Tls(format!("{}: {e}", path.display())))?;
            roots
                .add(cert)
                .map_err(|e| ConnError::Tls(format!("{}: {e}", path.display())))?;
            added += 1;
        }
        if added == 0 {
            return Err(ConnError::Tls(format!(
                "{}: no PEM certificate in it",
                path.display()
            )));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| ConnError::Tls(format!("{host}: {e}")))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
        .map_err(|e| ConnError::Tls(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_lengths() {
        assert_eq!(literal_len(b"* 1 FETCH (BODY[] {12}\r\n"), Some(12));
        assert_eq!(literal_len(b"* 1 FETCH (BODY[] {12+}\r\n"), Some(12));
        assert_eq!(literal_len(b"* OK done\r\n"), None);
        assert_eq!(literal_len(b"* OK {x}\r\n"), None);
        assert_eq!(literal_len(b"* OK {}\r\n"), None);
        assert_eq!(literal_len(b"* OK {99999999999999999}\r\n"), None);
    }

    #[test]
    fn quoting() {
        assert_eq!(astring("a\"b\\c").unwrap(), "\"a\\\"b\\\\c\"");
        assert!(astring("a\r\nb").is_none());
    }
}
