//! Who may write through HTTP ingest, and how fast.
//!
//! Challenge progress becomes rewards when a player claims, so a write
//! endpoint nobody guards is a way to hand out rewards. [`Access`] decides:
//! bearer tokens when any are configured (`HTTP_INGEST_TOKEN`, several
//! separated by commas, and `HTTP_INGEST_TOKEN_FILE`, one per line, re-read
//! when it changes: a Kubernetes Secret mounted as a file), else open when
//! the operator says the network is trusted (`HTTP_INGEST_OPEN`) or the
//! store is the embedded development one, else closed. Tokens are compared
//! in constant time and never logged. [`RateLimit`] is a token bucket per
//! client (per token, else per address), counted in events.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// How often `HTTP_INGEST_TOKEN_FILE` is checked for a change.
pub const TOKEN_FILE_POLL: Duration = Duration::from_secs(2);

/// Reads of a missing token file after which its tokens are forgotten
/// (about 6 s: Kubernetes swaps a Secret's files atomically, so a file is
/// missing for good only when its key was removed).
pub const GONE_POLLS: u32 = 3;

/// Whether HTTP ingest accepts writes, and from whom.
#[derive(Debug, Clone)]
pub enum Access {
    /// Refused with 404 and how to enable (PostgreSQL without a token).
    Closed,
    /// No token needed; `why` is logged at every start.
    Open { why: OpenBecause },
    /// A bearer token from this set is needed.
    Tokens(Arc<Tokens>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenBecause {
    /// `HTTP_INGEST_OPEN=true`: the operator vouches for the network.
    TrustedNetwork,
    /// The embedded store: a development setup on one machine.
    EmbeddedStore,
}

impl Access {
    /// What start-up logs about HTTP ingest: (a warning?, the line).
    pub fn describe(&self) -> (bool, String) {
        match self {
            Access::Closed => (
                false,
                "HTTP ingest is closed: no HTTP_INGEST_TOKEN or HTTP_INGEST_TOKEN_FILE is set, \
                 so POST /v1/events answers 404 (gRPC OnMessage is the ingest path; \
                 docs/SECURITY.md)"
                    .into(),
            ),
            Access::Open {
                why: OpenBecause::TrustedNetwork,
            } => (
                true,
                "HTTP ingest is OPEN: HTTP_INGEST_OPEN is set, so anyone who can reach the \
                 ingest port can write any player's progress; keep that port on a trusted \
                 network or set HTTP_INGEST_TOKEN_FILE instead (docs/SECURITY.md)"
                    .into(),
            ),
            Access::Open {
                why: OpenBecause::EmbeddedStore,
            } => (
                false,
                "HTTP ingest is open without a token because the store is the embedded \
                 development one; with PostgreSQL it is closed unless a token is set \
                 (HTTP_INGEST_TOKEN, HTTP_INGEST_TOKEN_FILE; docs/SECURITY.md)"
                    .into(),
            ),
            Access::Tokens(tokens) if tokens.count() == 0 => (
                true,
                format!(
                    "HTTP ingest needs a bearer token and none is configured yet ({} holds \
                     none): every HTTP write is refused with 401 until one is added",
                    tokens
                        .file
                        .as_ref()
                        .map_or("HTTP_INGEST_TOKEN".into(), |f| f.display().to_string())
                ),
            ),
            Access::Tokens(tokens) => (
                false,
                format!(
                    "HTTP ingest needs a bearer token ({} accepted{})",
                    tokens.count(),
                    tokens
                        .file
                        .as_ref()
                        .map(|f| format!(", {} re-read when it changes", f.display()))
                        .unwrap_or_default()
                ),
            ),
        }
    }
}

/// The accepted tokens: those of the environment and those of the file.
#[derive(Debug)]
pub struct Tokens {
    env: Vec<String>,
    file: Option<PathBuf>,
    /// The file's tokens as last read.
    from_file: RwLock<Vec<String>>,
    /// The file's words left out as too short, as last read.
    left_out: std::sync::Mutex<Vec<String>>,
}

/// Splits a list of tokens (commas, white space or lines); `#` starts a
/// comment line in a file.
pub fn parse_tokens(text: &str) -> Vec<String> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .flat_map(|line| line.split(|c: char| c == ',' || c.is_whitespace()))
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A token file's tokens: `#` starts a comment to the end of its line
/// (so a token holds no `#`), the rest splits as [`parse_tokens`] does.
/// Words shorter than [`MIN_TOKEN_BYTES`](crate::config::MIN_TOKEN_BYTES)
/// are left out, never accepted (a comment's words without its `#`, a
/// typo), and returned apart to be reported.
pub fn parse_token_file(text: &str) -> (Vec<String>, Vec<String>) {
    let uncommented: String = text
        .lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    parse_tokens(&uncommented)
        .into_iter()
        .partition(|t| t.len() >= crate::config::MIN_TOKEN_BYTES)
}

fn read_token_file(path: &Path) -> std::io::Result<(Vec<String>, Vec<String>)> {
    std::fs::read_to_string(path).map(|text| parse_token_file(&text))
}

/// Says that a token file's short words are left out (once per content).
fn report_short(path: &Path, short: &[String], accepted: usize) {
    if !short.is_empty() {
        tracing::error!(
            file = %path.display(),
            left_out = short.len(),
            accepted,
            "HTTP_INGEST_TOKEN_FILE has words shorter than {} bytes: they are not accepted as \
             tokens (a comment needs its `#`; a token needs at least {} random bytes, e.g. \
             `openssl rand -hex 32`)",
            crate::config::MIN_TOKEN_BYTES,
            crate::config::MIN_TOKEN_BYTES
        );
    }
}

impl Tokens {
    /// The tokens of `env` and of `file` (read now: a missing or unreadable
    /// file is an error naming it).
    pub fn load(env: Vec<String>, file: Option<PathBuf>) -> Result<Tokens, String> {
        let (from_file, left_out) = match &file {
            Some(path) => {
                let (tokens, short) = read_token_file(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                report_short(path, &short, tokens.len());
                (tokens, short)
            }
            None => (Vec::new(), Vec::new()),
        };
        Ok(Tokens {
            env,
            file,
            from_file: RwLock::new(from_file),
            left_out: std::sync::Mutex::new(left_out),
        })
    }

    /// How many tokens are accepted now.
    pub fn count(&self) -> usize {
        self.env.len() + self.from_file.read().expect("tokens lock").len()
    }

    /// The accepted token equal to `given`, compared in constant time
    /// against every token (where they differ and which one matched do not
    /// change the time taken).
    pub fn find(&self, given: &str) -> Option<String> {
        let from_file = self.from_file.read().expect("tokens lock");
        let given = digest(given.as_bytes());
        let mut found = None;
        for token in self.env.iter().chain(from_file.iter()) {
            if same_digest(&given, &digest(token.as_bytes())) {
                found = Some(token.clone());
            }
        }
        found
    }

    /// Reads the file again: `Ok(Some(n))` when its tokens changed (n now
    /// accepted in all), `Ok(None)` when they did not.
    pub fn reload(&self) -> std::io::Result<Option<usize>> {
        let Some(path) = &self.file else {
            return Ok(None);
        };
        let (fresh, short) = match read_token_file(path) {
            // Read, but not text: whatever it held is no token now (a
            // revocation written so must not leave the old tokens on).
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                if !self.from_file.read().expect("tokens lock").is_empty() {
                    tracing::error!(
                        file = %path.display(),
                        error = %e,
                        "HTTP_INGEST_TOKEN_FILE is not UTF-8 text: none of its tokens is accepted"
                    );
                }
                (Vec::new(), Vec::new())
            }
            read => read?,
        };
        {
            let mut left_out = self.left_out.lock().expect("left-out lock");
            if *left_out != short {
                report_short(path, &short, fresh.len());
                *left_out = short;
            }
        }
        let mut current = self.from_file.write().expect("tokens lock");
        if *current == fresh {
            return Ok(None);
        }
        *current = fresh;
        drop(current);
        Ok(Some(self.count()))
    }

    /// Forgets the file's tokens; returns how many are accepted now.
    fn forget_file(&self) -> usize {
        self.from_file.write().expect("tokens lock").clear();
        self.count()
    }

    /// Re-reads the file every [`TOKEN_FILE_POLL`] until `stop`. A file that
    /// cannot be read keeps the tokens read before (a Secret being
    /// replaced), with a warning, unless it is gone for [`GONE_POLLS`] reads
    /// in a row: a key removed from the Secret revokes its tokens. A file
    /// with no token refuses every write.
    pub async fn watch(self: Arc<Self>, metrics: Arc<Metrics>, stop: CancellationToken) {
        let Some(path) = self.file.clone() else {
            return;
        };
        let mut failing = false;
        let mut gone = 0u32;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(TOKEN_FILE_POLL) => {}
            }
            let tokens = self.clone();
            let read = tokio::task::spawn_blocking(move || tokens.reload()).await;
            match read {
                Ok(Ok(changed)) => {
                    gone = 0;
                    if failing {
                        tracing::info!(file = %path.display(), "HTTP_INGEST_TOKEN_FILE readable again");
                        failing = false;
                    }
                    if let Some(accepted) = changed {
                        metrics.http_ingest_tokens.set(accepted as i64);
                        if accepted == 0 {
                            tracing::warn!(file = %path.display(), "HTTP ingest tokens reloaded: the file holds no token, every HTTP write is refused");
                        } else {
                            tracing::info!(file = %path.display(), accepted, "HTTP ingest tokens reloaded");
                        }
                    }
                }
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                    gone += 1;
                    if gone == GONE_POLLS {
                        let accepted = self.forget_file();
                        metrics.http_ingest_tokens.set(accepted as i64);
                        tracing::error!(file = %path.display(), accepted, "HTTP_INGEST_TOKEN_FILE is gone: its tokens are no longer accepted (a key removed from the Secret revokes them)");
                        failing = true;
                    } else if gone == 1 && !failing {
                        tracing::warn!(file = %path.display(), accepted = self.count(), "HTTP_INGEST_TOKEN_FILE is missing; its tokens stay accepted unless it stays missing");
                    }
                }
                Ok(Err(e)) => {
                    if !failing {
                        tracing::warn!(file = %path.display(), error = %e, accepted = self.count(), "cannot read HTTP_INGEST_TOKEN_FILE; keeping the tokens read before");
                        failing = true;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "the token file reload task failed"),
            }
        }
    }
}

/// Compares two secrets in time that depends neither on where they differ
/// nor on their lengths: their SHA-256 digests, byte by byte to the end.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    same_digest(&digest(a), &digest(b))
}

fn digest(secret: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(secret).into()
}

fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who a request counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Client {
    Token(String),
    Address(IpAddr),
}

/// A token bucket per client, in events: `burst` at most, refilled at
/// `rate` per second.
#[derive(Debug)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<Client, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    level: f64,
    at: Instant,
}

/// Clients remembered before idle ones (full buckets) are forgotten.
const MAX_CLIENTS: usize = 10_000;

impl RateLimit {
    pub fn new(rate: u32, burst: u32) -> RateLimit {
        RateLimit {
            rate: f64::from(rate),
            burst: f64::from(burst),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `events` from `client`'s bucket, or says how long until they
    /// would be there.
    pub fn take(&self, client: &Client, events: usize, now: Instant) -> Result<(), Duration> {
        self.settle(client, events as f64, true, now)
    }

    /// Whether `client`'s bucket holds one, without taking it (a client
    /// without a bucket is not given one: its bucket would be full).
    pub fn holds_one(&self, client: &Client, now: Instant) -> Result<(), Duration> {
        self.settle(client, 1.0, false, now)
    }

    fn settle(&self, client: &Client, need: f64, take: bool, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().expect("rate limit lock");
        if !take && !buckets.contains_key(client) {
            return Ok(());
        }
        if buckets.len() >= MAX_CLIENTS && !buckets.contains_key(client) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| b.level + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let bucket = buckets.entry(client.clone()).or_insert(Bucket {
            level: self.burst,
            at: now,
        });
        let level = (bucket.level + now.duration_since(bucket.at).as_secs_f64() * self.rate)
            .min(self.burst);
        bucket.at = now;
        if level >= need {
            bucket.level = if take { level - need } else { level };
            Ok(())
        } else {
            bucket.level = level;
            Err(Duration::from_secs_f64((need - level) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_lists_split_on_commas_space_and_lines_and_skip_comments() {
        assert_eq!(
            parse_tokens("# rotated 2026-12-01\nnew-token\n old-token , third\n\n"),
            ["new-token", "old-token", "third"]
        );
        assert!(parse_tokens("").is_empty());
    }

    /// A token file's comments start anywhere on a line; its words shorter
    /// than 16 bytes are left out, never accepted.
    #[test]
    fn a_token_files_inline_comment_and_short_words_are_not_tokens() {
        let (tokens, short) = parse_token_file(
            "# rotated 2026-12-01\n\
             3f9a0c1d2e4b5a6978877665  # game-server-eu, added 2026-12\n\
             \tsecond-token-77aa99bb,short\n",
        );
        assert_eq!(
            tokens,
            ["3f9a0c1d2e4b5a6978877665", "second-token-77aa99bb"]
        );
        assert_eq!(short, ["short"]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "3f9a0c1d2e4b5a6978877665 # game-server-eu\nshort\n").unwrap();
        let loaded = Tokens::load(vec![], Some(path)).unwrap();
        assert_eq!(loaded.count(), 1);
        for word in ["#", "game-server-eu", "short"] {
            assert!(loaded.find(word).is_none(), "{word}");
        }
    }

    #[test]
    fn every_configured_token_is_accepted_and_nothing_else() {
        let tokens = Tokens::load(vec!["a1".into(), "b2".into()], None).unwrap();
        assert_eq!(tokens.find("a1").as_deref(), Some("a1"));
        assert_eq!(tokens.find("b2").as_deref(), Some("b2"));
        assert_eq!(tokens.find("a"), None);
        assert_eq!(tokens.find("a10"), None);
        assert_eq!(tokens.find(""), None);
    }

    #[test]
    fn a_token_file_is_read_again_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "old-token-4a1f9c2e\n").unwrap();
        let tokens = Tokens::load(vec![], Some(path.clone())).unwrap();
        assert!(tokens.find("old-token-4a1f9c2e").is_some());
        assert_eq!(tokens.reload().unwrap(), None);
        std::fs::write(&path, "old-token-4a1f9c2e\nnew-token-8d3b7e60\n").unwrap();
        assert_eq!(tokens.reload().unwrap(), Some(2));
        std::fs::write(&path, "new-token-8d3b7e60\n").unwrap();
        assert_eq!(tokens.reload().unwrap(), Some(1));
        assert!(tokens.find("old-token-4a1f9c2e").is_none());
        assert!(tokens.find("new-token-8d3b7e60").is_some());
        // Not text: its tokens are no longer accepted.
        std::fs::write(&path, b"new-token-8d3b7e60\n\xff\xfe\n").unwrap();
        assert_eq!(tokens.reload().unwrap(), Some(0));
        assert!(tokens.find("new-token-8d3b7e60").is_none());
        std::fs::write(&path, "new-token-8d3b7e60\n").unwrap();
        assert_eq!(tokens.reload().unwrap(), Some(1));
        std::fs::remove_file(&path).unwrap();
        assert!(tokens.reload().is_err());
        assert!(
            tokens.find("new-token-8d3b7e60").is_some(),
            "kept while unreadable"
        );
        let missing = Tokens::load(vec![], Some(dir.path().join("nope"))).unwrap_err();
        assert!(missing.contains("nope"), "{missing}");
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"ab"));
        assert!(!same_secret(b"", b"a"));
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate_and_says_when_to_retry() {
        let limit = RateLimit::new(10, 20);
        let t0 = Instant::now();
        let a = Client::Address([10, 0, 0, 1].into());
        let b = Client::Token("t".into());
        assert!(limit.take(&a, 20, t0).is_ok());
        let wait = limit.take(&a, 5, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-9, "{wait:?}");
        // Another client has its own bucket.
        assert!(limit.take(&b, 20, t0).is_ok());
        // Half a second refills five events.
        assert!(limit.take(&a, 5, t0 + Duration::from_millis(500)).is_ok());
        assert!(limit.take(&a, 1, t0 + Duration::from_millis(500)).is_err());
        // The bucket never holds more than the burst.
        let later = t0 + Duration::from_secs(3600);
        assert!(limit.take(&a, 20, later).is_ok());
        assert!(limit.take(&a, 1, later).is_err());
    }
}
