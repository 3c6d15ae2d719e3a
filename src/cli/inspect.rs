//! The operator's looking glass: `progress` (a user's rows from the
//! configured store) and `wal inspect` (a stopped service's WAL directory).

use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;

use crate::clock::{rfc3339, unix_ms};
use crate::config::StoreArgs;
use crate::store::{Database, ProgressRow, ProgressStore, Store, Watermark};
use crate::wal::{self, Recovery, WalConfig, WalStore, WalSummary};

#[derive(Debug, Clone, clap::Args)]
pub struct ProgressArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The user whose rows to show.
    #[arg(long)]
    pub user: String,
    /// Only this goal.
    #[arg(long)]
    pub goal: Option<String>,
    /// Print JSON (one array of rows) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// How long the commands wait for a database before saying it is unreachable.
const CONNECT_WAIT: Duration = Duration::from_secs(5);

fn open_store(args: &StoreArgs) -> anyhow::Result<(Database, Store)> {
    let database = args.database()?;
    if let Database::Sqlite(path) = &database {
        if !path.exists() {
            bail!(
                "no embedded store at {} (the service has not run with DATA_DIR={} yet; \
                 set DATABASE_URL or DB_HOST to read PostgreSQL)",
                path.display(),
                args.data_dir.display()
            );
        }
    }
    let store = Store::connect_lazy(&database, 1, 1);
    Ok((database, store))
}

pub async fn progress(args: ProgressArgs) -> anyhow::Result<()> {
    let (database, store) = open_store(&args.store)?;
    let rows = tokio::time::timeout(
        CONNECT_WAIT,
        store.user_progress(&args.user, args.goal.as_deref()),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "{} did not answer within {CONNECT_WAIT:?}",
            database.describe()
        )
    })?
    .with_context(|| format!("cannot read progress from {}", database.describe()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if rows.is_empty() {
        println!(
            "no rows for user {:?} in {}",
            args.user,
            database.describe()
        );
    } else {
        print!("{}", progress_table(&rows));
    }
    Ok(())
}

/// The rows as an aligned text table.
pub fn progress_table(rows: &[ProgressRow]) -> String {
    let time = |t: &Option<chrono::NaiveDateTime>| {
        t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|| "-".into())
    };
    let header = [
        "GOAL",
        "CHALLENGE",
        "PROGRESS",
        "BASELINE",
        "STATUS",
        "ACTIVE",
        "COMPLETED AT",
        "CLAIMED AT",
        "UPDATED AT",
        "EXPIRES AT",
    ];
    let cells: Vec<[String; 10]> = rows
        .iter()
        .map(|r| {
            [
                r.goal_id.clone(),
                r.challenge_id.clone(),
                r.progress.to_string(),
                r.baseline_value
                    .map_or_else(|| "-".to_owned(), |b| b.to_string()),
                r.status.clone(),
                if r.is_active { "yes" } else { "no" }.to_owned(),
                time(&r.completed_at),
                time(&r.claimed_at),
                time(&Some(r.updated_at)),
                time(&r.expires_at),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut out = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(&header.map(String::from));
    for row in &cells {
        out.push_str(&line(row));
    }
    out
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum WalCommand {
    /// Report on a stopped service's WAL directory: instance id, epoch and
    /// watermark (when the store is reachable), pending records and bytes,
    /// the oldest pending event, dedup marks.
    Inspect(WalInspectArgs),
    /// Write a stopped replica's WAL into the database and empty it (a
    /// replica scaled away for good). Takes the service's settings; exits 0
    /// once the WAL is empty. Refuses a WAL a running service holds; safe to
    /// run again.
    Drain(Box<WalDrainArgs>),
}

#[derive(Debug, Clone, clap::Args)]
pub struct WalDrainArgs {
    #[command(flatten)]
    pub serve: crate::config::ServeArgs,
    /// How long to keep trying while the database is unreachable or not ready.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Clone, clap::Args)]
pub struct WalInspectArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The instance id, for a WAL directory that records none (one a build
    /// before December 2026 made; the id the directory records wins).
    #[arg(long, env = "INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct WalReport {
    wal_dir: String,
    instance_id: Option<String>,
    store: String,
    /// The watermark, or why it could not be read.
    watermark: Result<Option<Watermark>, String>,
    #[serde(flatten)]
    summary: WalSummary,
    oldest_written: Option<String>,
    oldest_written_age_seconds: Option<i64>,
}

pub async fn wal(command: WalCommand) -> anyhow::Result<()> {
    match command {
        WalCommand::Inspect(args) => wal_inspect(args).await,
        WalCommand::Drain(args) => {
            let settings = args.serve.validate()?;
            for warning in &settings.warnings {
                tracing::warn!("{warning}");
            }
            crate::app::drain(settings, args.timeout).await
        }
    }
}

async fn wal_inspect(args: WalInspectArgs) -> anyhow::Result<()> {
    let dir = args.store.wal_dir();
    if !dir.join("log").is_dir() {
        bail!(
            "no WAL in {} (set WAL_DIR or DATA_DIR to the service's)",
            dir.display()
        );
    }
    // The directory's lock, as the service takes it: never open a WAL a
    // process is still making or writing (a first start's half-made log
    // would look like an interrupted one and be removed).
    let dir_lock = crate::wal::lock_dir(&dir).map_err(|e| match e {
        wal::WalError::Busy { .. } => anyhow::anyhow!(
            "{e}\n(`wal inspect` reads a stopped service's WAL: scale the replica away, or run \
             it in a Job on the replica's volume)"
        ),
        other => other.into(),
    })?;
    let instance_id = crate::wal::recorded_instance_id(&dir)?.or(args.instance_id.clone());
    let store_args = args.store.clone();
    let watermark = match (&instance_id, open_store(&store_args)) {
        (None, _) => Err("no instance id in the WAL directory (pass --instance-id)".to_owned()),
        (_, Err(e)) => Err(format!("{e:#}")),
        (Some(id), Ok((database, store))) => {
            match tokio::time::timeout(CONNECT_WAIT, store.watermark(id)).await {
                Ok(Ok(w)) => Ok(w),
                Ok(Err(e)) => Err(format!("{}: {e}", database.describe())),
                Err(_) => Err(format!("{} did not answer", database.describe())),
            }
        }
    };
    let config = WalConfig {
        dir: dir.clone(),
        max_bytes: u64::MAX,
        dedup_window: Duration::from_secs(600),
        dedup_max_marks: usize::MAX,
        recovery: Recovery::Strict,
        cache_bytes: 64 << 20,
    };
    let applied = watermark
        .as_ref()
        .ok()
        .and_then(|w| w.map(|w| w.applied_seq));
    let summary = tokio::task::spawn_blocking(move || {
        let wal = WalStore::open(config)?;
        let summary = wal.summary(applied);
        drop(wal);
        drop(dir_lock);
        summary
    })
    .await?
    .map_err(|e| match e {
        wal::WalError::Open { .. } => anyhow::anyhow!(
            "{e}\n(is the service still running on this WAL? `wal inspect` reads a stopped service's WAL)"
        ),
        other => other.into(),
    })?;
    let store = args
        .store
        .database()
        .map(|d| d.describe())
        .unwrap_or_else(|e| e.to_string());
    let report = WalReport {
        wal_dir: dir.display().to_string(),
        instance_id,
        store,
        watermark,
        oldest_written: summary.oldest_written_ms.map(rfc3339),
        oldest_written_age_seconds: summary
            .oldest_written_ms
            .map(|ms| (unix_ms() as i64 - ms) / 1000),
        summary,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", wal_text(&report));
    }
    Ok(())
}

fn wal_text(r: &WalReport) -> String {
    let s = &r.summary;
    let opt = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<27}{v}\n"));
    line("wal directory", r.wal_dir.clone());
    line(
        "instance id",
        r.instance_id.clone().unwrap_or_else(|| "-".into()),
    );
    line("store", r.store.clone());
    match &r.watermark {
        Ok(Some(w)) => {
            line("epoch", w.epoch.to_string());
            line("watermark (applied seq)", w.applied_seq.to_string());
        }
        Ok(None) => line(
            "watermark",
            "none: this instance never flushed to this store".into(),
        ),
        Err(why) => line("watermark", format!("unknown ({why})")),
    }
    line(
        "records in the WAL",
        format!("{} in {} frames", s.records, s.frames),
    );
    line("bytes in the WAL", s.bytes.to_string());
    line(
        "sequence numbers",
        format!("{} .. {}", opt(s.first_seq), opt(s.last_seq)),
    );
    line(
        "pending (above watermark)",
        s.pending_above_watermark
            .map_or("unknown (no watermark)".into(), |n| {
                format!("{n} records: replayed into the database at the next start")
            }),
    );
    line(
        "oldest record written",
        match (&r.oldest_written, r.oldest_written_age_seconds) {
            (Some(at), Some(age)) => format!("{at} ({age} s ago)"),
            _ => "-".into(),
        },
    );
    line(
        "corrupt entries",
        if s.corrupt.is_empty() {
            "none".into()
        } else {
            format!("starting at {:?} (see WAL_RECOVERY)", s.corrupt)
        },
    );
    line(
        "dedup marks",
        format!(
            "{} saved (the records' own event ids count too until they are truncated)",
            s.dedup_marks
        ),
    );
    line("on disk", format!("{} bytes (log and marks)", s.disk_bytes));
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn health_asks_where_serve_binds() {
        let target = |addr: Option<&str>, port: u16, bind: &str| {
            HealthArgs {
                addr: addr.map(str::to_owned),
                metrics_port: port,
                bind_address: bind.parse().unwrap(),
            }
            .target()
        };
        assert_eq!(target(None, 8080, "0.0.0.0"), "127.0.0.1:8080");
        assert_eq!(target(None, 9100, "::"), "[::1]:9100");
        assert_eq!(target(None, 9100, "10.1.2.3"), "10.1.2.3:9100");
        assert_eq!(target(Some("db:1"), 9100, "0.0.0.0"), "db:1");
    }

    use super::*;

    #[test]
    fn the_progress_table_aligns_its_columns() {
        let row = |goal: &str, progress: i32| ProgressRow {
            user_id: "alice".into(),
            goal_id: goal.into(),
            challenge_id: "combat".into(),
            namespace: "mygame".into(),
            progress,
            status: "in_progress".into(),
            completed_at: None,
            claimed_at: None,
            is_active: true,
            assigned_at: None,
            updated_at: chrono::NaiveDateTime::default(),
            expires_at: None,
            baseline_value: None,
            last_event_at: None,
            last_counted_day: None,
        };
        let table = progress_table(&[row("kill-10", 3), row("reach-level-10", 12)]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].starts_with("GOAL            CHALLENGE  PROGRESS"),
            "{table}"
        );
        assert!(
            lines[2].starts_with("reach-level-10  combat     12"),
            "{table}"
        );
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct HealthArgs {
    /// The service's HTTP address [default: from METRICS_PORT and
    /// BIND_ADDRESS, as `serve` binds it; 127.0.0.1 for 0.0.0.0, ::1 for ::].
    #[arg(long, env = "HEALTH_ADDR")]
    pub addr: Option<String>,
    /// The service's HTTP port, as `serve` reads it.
    #[arg(long, env = "METRICS_PORT", default_value_t = 8080)]
    pub metrics_port: u16,
    /// The address `serve` binds, as it reads it.
    #[arg(long, env = "BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: std::net::IpAddr,
}

impl HealthArgs {
    /// Where `serve` with the same settings answers.
    pub fn target(&self) -> String {
        if let Some(addr) = &self.addr {
            return addr.clone();
        }
        let ip = match self.bind_address {
            ip if ip.is_unspecified() && ip.is_ipv4() => std::net::Ipv4Addr::LOCALHOST.into(),
            ip if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
            ip => ip,
        };
        std::net::SocketAddr::new(ip, self.metrics_port).to_string()
    }
}

/// `GET /healthz` of a running service: Ok when it serves (a container
/// HEALTHCHECK that needs no curl in the image).
pub async fn health(args: HealthArgs) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let target = args.target();
    let answer = async {
        let mut stream = tokio::net::TcpStream::connect(&target).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(CONNECT_WAIT, answer)
        .await
        .map_err(|_| anyhow::anyhow!("{target} did not answer within {CONNECT_WAIT:?}"))?
        .with_context(|| format!("cannot reach {target}"))?;
    let status = response.split_whitespace().nth(1).unwrap_or("");
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    if status == "200" {
        println!("{body}");
        Ok(())
    } else {
        bail!("not serving (HTTP {status}): {body}")
    }
}
