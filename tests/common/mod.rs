//! Test helpers: a real PostgreSQL ([`pg`]), a cuttable TCP proxy ([`proxy`]),
//! the service in-process on port 0 ([`Service`]) or as the real binary
//! ([`Binary`]), and event builders.

#![allow(dead_code)]

pub mod challenge_service;
pub mod pg;
pub mod proxy;
pub mod workload;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use challenge_event_handler::config::ServeArgs;
use challenge_event_handler::proto::iam::account::v1::user_authentication_user_logged_in_service_client::UserAuthenticationUserLoggedInServiceClient;
use challenge_event_handler::proto::iam::account::v1::user_authentication_user_third_party_logged_in_service_client::UserAuthenticationUserThirdPartyLoggedInServiceClient;
use challenge_event_handler::proto::iam::account::v1::deletion_account_gdpr_gdpr_request_data_deletion_response_service_client::DeletionAccountGdprGdprRequestDataDeletionResponseServiceClient;
use challenge_event_handler::proto::iam::account::v1::{
    AnonymousSchema21, GdprRequestDataDeletionResponse, UserAccount, UserLoggedIn,
    UserThirdPartyLoggedIn,
};
use challenge_event_handler::proto::social::statistic::v1::statistic_stat_item_updated_service_client::StatisticStatItemUpdatedServiceClient;
use challenge_event_handler::proto::social::statistic::v1::StatItemUpdated;
use challenge_event_handler::App;
use clap::Parser;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub const NAMESPACE: &str = "testgame";

/// Settings of a replica that never flushes on its own: what it acknowledges
/// stays in its WAL until it stops (or is killed, or drained).
pub const HOLDING: [(&str, &str); 2] = [("FLUSH_INTERVAL", "1h"), ("BUFFER_MAX_KEYS", "100000000")];

/// Goals of every kind; `kills` moves two goals at once; `login-opt` is not
/// assigned by default.
pub const CHALLENGES: &str = r#"{"challenges":[
 {"challengeId":"logins","name":"Logins","goals":[
  {"goalId":"login-count","name":"3 logins","type":"increment","eventSource":"login",
   "requirement":{"operator":">=","targetValue":3},"reward":{"type":"WALLET","rewardId":"GOLD","quantity":1}},
  {"goalId":"login-days","name":"2 days","type":"increment","daily":true,"eventSource":"login",
   "requirement":{"operator":">=","targetValue":2},"reward":{"type":"WALLET","rewardId":"GOLD","quantity":1}},
  {"goalId":"login-daily","name":"today","type":"daily","eventSource":"login",
   "requirement":{"operator":">=","targetValue":1},"reward":{"type":"WALLET","rewardId":"GOLD","quantity":1}},
  {"goalId":"login-opt","name":"opt-in: 2 logins","type":"increment","eventSource":"login","defaultAssigned":false,
   "requirement":{"operator":">=","targetValue":2},"reward":{"type":"WALLET","rewardId":"GOLD","quantity":1}}]},
 {"challengeId":"combat","name":"Combat","goals":[
  {"goalId":"kills","name":"10 kills","type":"increment","eventSource":"statistic",
   "requirement":{"statCode":"kills","operator":">=","targetValue":10},"reward":{"type":"ITEM","rewardId":"sword","quantity":1}},
  {"goalId":"kills-total","name":"kill stat 100","type":"absolute","eventSource":"statistic",
   "requirement":{"statCode":"kills","operator":">=","targetValue":100},"reward":{"type":"ITEM","rewardId":"axe","quantity":1}},
  {"goalId":"level","name":"level 10","eventSource":"statistic",
   "requirement":{"statCode":"level","operator":">=","targetValue":10},"reward":{"type":"ITEM","rewardId":"armor","quantity":1}},
  {"goalId":"wins-daily","name":"win today","type":"daily","eventSource":"statistic",
   "requirement":{"statCode":"wins","operator":">=","targetValue":1},"reward":{"type":"WALLET","rewardId":"GOLD","quantity":1}},
  {"goalId":"wins-days","name":"win on 3 days","type":"increment","daily":true,"eventSource":"statistic",
   "requirement":{"statCode":"wins","operator":">=","targetValue":3},"reward":{"type":"WALLET","rewardId":"GOLD","quantity":1}}]}
]}"#;

/// Writes [`CHALLENGES`] into `dir` and returns its path.
pub fn write_challenges(dir: &Path) -> PathBuf {
    let path = dir.join("challenges.json");
    std::fs::write(&path, CHALLENGES).expect("write challenges.json");
    path
}

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    serve: ServeArgs,
}

/// The service running in this process on port 0.
pub struct Service {
    pub channel: Channel,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    token: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Service {
    /// Starts the service and waits until `/healthz` says it serves.
    pub async fn start(db_url: &str, dir: &Path, extra: &[&str]) -> Service {
        let app = Service::build(db_url, dir, extra)
            .await
            .expect("build the service");
        Service::run(app).await
    }

    pub async fn build(db_url: &str, dir: &Path, extra: &[&str]) -> anyhow::Result<App> {
        // Quiet unless TEST_LOG is set (e.g. TEST_LOG=debug).
        if let Ok(level) = std::env::var("TEST_LOG") {
            challenge_event_handler::telemetry::init(
                &level,
                challenge_event_handler::telemetry::LogFormat::Text,
            );
        }
        let config = write_challenges(dir);
        let wal = dir.join("wal");
        let config = config.display().to_string();
        let wal = wal.display().to_string();
        let defaults = [
            ("--namespace", NAMESPACE),
            ("--database-url", db_url),
            ("--grpc-port", "0"),
            ("--metrics-port", "0"),
            ("--bind-address", "127.0.0.1"),
            ("--flush-interval", "50ms"),
            ("--config-path", config.as_str()),
            ("--wal-dir", wal.as_str()),
            // A fresh test database has no challenge service: the handler
            // owns the table (tests of the drop-in say otherwise).
            ("--table-owner", "handler"),
        ];
        let mut argv: Vec<String> = vec!["test".into()];
        for (flag, value) in defaults {
            if !extra.contains(&flag) {
                argv.push(flag.into());
                argv.push(value.into());
            }
        }
        argv.extend(extra.iter().map(|s| s.to_string()));
        let settings = Args::try_parse_from(argv)?.serve.validate()?;
        App::build(settings).await
    }

    pub async fn run(app: App) -> Service {
        let grpc_addr = app.grpc_addr();
        let http_addr = app.http_addr();
        let token = CancellationToken::new();
        let handle = tokio::spawn(app.run_until_stopped(token.clone()));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(http_get_quiet(http_addr, "/healthz").await, Ok((200, _))) {
            if handle.is_finished() {
                let result = handle.await.expect("service task panicked");
                panic!("the service stopped before serving: {result:?}");
            }
            assert!(Instant::now() < deadline, "service not healthy within 30 s");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let channel = Channel::from_shared(format!("http://{grpc_addr}"))
            .unwrap()
            .connect()
            .await
            .expect("connect to the service");
        Service {
            channel,
            grpc_addr,
            http_addr,
            token,
            handle,
        }
    }

    /// Waits for the service to stop by itself (e.g. after a fatal error).
    pub async fn wait_stopped(self, timeout: Duration) -> anyhow::Result<()> {
        tokio::time::timeout(timeout, self.handle)
            .await
            .expect("the service did not stop by itself")
            .expect("service task panicked")
    }

    /// Graceful stop (as on SIGTERM); returns the service's result.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.token.cancel();
        self.handle.await.expect("service task panicked")
    }

    pub fn login_client(&self) -> UserAuthenticationUserLoggedInServiceClient<Channel> {
        UserAuthenticationUserLoggedInServiceClient::new(self.channel.clone())
    }

    pub fn third_party_client(
        &self,
    ) -> UserAuthenticationUserThirdPartyLoggedInServiceClient<Channel> {
        UserAuthenticationUserThirdPartyLoggedInServiceClient::new(self.channel.clone())
    }

    pub fn stat_client(&self) -> StatisticStatItemUpdatedServiceClient<Channel> {
        StatisticStatItemUpdatedServiceClient::new(self.channel.clone())
    }

    pub async fn login(&self, msg: UserLoggedIn) -> Result<(), tonic::Status> {
        self.login_client().on_message(msg).await.map(|_| ())
    }

    pub async fn stat(&self, msg: StatItemUpdated) -> Result<(), tonic::Status> {
        self.stat_client().on_message(msg).await.map(|_| ())
    }

    pub async fn gdpr_deletion(
        &self,
        msg: GdprRequestDataDeletionResponse,
    ) -> Result<(), tonic::Status> {
        DeletionAccountGdprGdprRequestDataDeletionResponseServiceClient::new(self.channel.clone())
            .on_message(msg)
            .await
            .map(|_| ())
    }

    pub async fn metrics(&self) -> String {
        http_get(self.http_addr, "/metrics").await.1
    }
}

/// A login event of `user` at `timestamp` (RFC 3339, or empty for arrival time).
pub fn login(user: &str, id: &str, timestamp: &str) -> UserLoggedIn {
    challenge_event_handler::cli::send::login_message(NAMESPACE, user, id, timestamp)
}

pub fn third_party_login(user: &str, id: &str) -> UserThirdPartyLoggedIn {
    UserThirdPartyLoggedIn {
        payload: Some(AnonymousSchema21 {
            user_account: Some(UserAccount {
                user_id: user.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        id: id.into(),
        namespace: NAMESPACE.into(),
        ..Default::default()
    }
}

/// A GDPR data deletion of `user` (named in the payload).
pub fn gdpr_deletion(user: &str, id: &str) -> GdprRequestDataDeletionResponse {
    challenge_event_handler::cli::send::gdpr_deletion_message(NAMESPACE, user, id, "")
}

/// A stat update of `user`.
pub fn stat(
    user: &str,
    code: &str,
    latest: f64,
    inc: f64,
    id: &str,
    timestamp: &str,
) -> StatItemUpdated {
    challenge_event_handler::cli::send::stat_message(
        NAMESPACE, code, user, latest, inc, id, timestamp,
    )
}

/// A row of `user_goal_progress` as the tests look at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub progress: i32,
    pub status: String,
    pub completed: bool,
    pub claimed: bool,
}

pub async fn row(db: &PgPool, user: &str, goal: &str) -> Option<Row> {
    sqlx::query_as::<_, (i32, String, bool, bool)>(
        "SELECT progress, status, completed_at IS NOT NULL, claimed_at IS NOT NULL
         FROM user_goal_progress WHERE user_id = $1 AND goal_id = $2",
    )
    .bind(user)
    .bind(goal)
    .fetch_optional(db)
    .await
    .expect("query user_goal_progress")
    .map(|(progress, status, completed, claimed)| Row {
        progress,
        status,
        completed,
        claimed,
    })
}

/// The row's `completed_at`.
pub async fn completed_at(db: &PgPool, user: &str, goal: &str) -> Option<chrono::NaiveDateTime> {
    sqlx::query_scalar(
        "SELECT completed_at FROM user_goal_progress WHERE user_id = $1 AND goal_id = $2",
    )
    .bind(user)
    .bind(goal)
    .fetch_one(db)
    .await
    .expect("read completed_at")
}

pub async fn count_rows(db: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM user_goal_progress")
        .fetch_one(db)
        .await
        .expect("count rows")
}

/// Waits until `user`'s `goal` row exists with `progress`, or panics after `timeout`.
pub async fn wait_for_progress(
    db: &PgPool,
    user: &str,
    goal: &str,
    progress: i32,
    timeout: Duration,
) -> Row {
    let deadline = Instant::now() + timeout;
    loop {
        let current = row(db, user, goal).await;
        if let Some(r) = &current {
            if r.progress == progress {
                return r.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{user}/{goal} did not reach progress {progress} within {timeout:?}; last seen {current:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends a login of a fresh sentinel user and waits for its row: everything
/// acknowledged before it is then in the database (flushes follow WAL order).
pub async fn barrier(service: &Service, db: &PgPool) {
    let user = format!("sentinel-{}", uuid_like());
    service
        .login(login(&user, "", ""))
        .await
        .expect("sentinel login");
    wait_for_progress(db, &user, "login-count", 1, Duration::from_secs(20)).await;
}

pub fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        Instant::now().elapsed().as_nanos()
    )
}

/// A minimal HTTP/1.0 GET: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect http");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("write http request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read http response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

pub async fn wait_healthy(addr: SocketAddr, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Ok((200, _))) =
            tokio::time::timeout(Duration::from_secs(2), http_get_quiet(addr, "/healthz")).await
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "service at {addr} not healthy within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn http_get_quiet(addr: SocketAddr, path: &str) -> Result<(u16, String), ()> {
    if tokio::net::TcpStream::connect(addr).await.is_err() {
        return Err(());
    }
    Ok(http_get(addr, path).await)
}

/// The real binary, for crash tests.
pub struct Binary {
    pub child: Child,
    pub grpc_port: u16,
    pub http_port: u16,
    pub log: PathBuf,
}

impl Binary {
    /// Starts `challenge-event-handler` with its WAL and config in `dir`.
    pub fn spawn(db_url: &str, dir: &Path, extra_env: &[(&str, &str)]) -> Binary {
        Binary::spawn_with_config(db_url, dir, CHALLENGES, extra_env)
    }

    /// Like [`Binary::spawn`], with `challenges` as the challenges file.
    pub fn spawn_with_config(
        db_url: &str,
        dir: &Path,
        challenges: &str,
        extra_env: &[(&str, &str)],
    ) -> Binary {
        Binary::spawn_under(&[], db_url, dir, challenges, extra_env)
    }

    /// Like [`Binary::spawn_with_config`], the binary run by `launcher` (a
    /// command that executes its last argument, e.g. `taskset -c 0`).
    pub fn spawn_under(
        launcher: &[&str],
        db_url: &str,
        dir: &Path,
        challenges: &str,
        extra_env: &[(&str, &str)],
    ) -> Binary {
        let wal = dir.join("wal");
        let mut env = vec![
            ("AB_NAMESPACE", NAMESPACE),
            ("DATABASE_URL", db_url),
            ("WAL_DIR", wal.to_str().expect("a UTF-8 temp path")),
        ];
        // A fresh test database has no challenge service: the handler owns
        // the table, unless the test says otherwise.
        if !extra_env.iter().any(|(k, _)| *k == "TABLE_OWNER") {
            env.push(("TABLE_OWNER", "handler"));
        }
        env.extend_from_slice(extra_env);
        Binary::spawn_bare_under(launcher, dir, challenges, &env)
    }

    /// The binary with only its challenges file, ports and log settings
    /// given: everything else is `env` or the binary's defaults.
    pub fn spawn_bare(dir: &Path, challenges: &str, env: &[(&str, &str)]) -> Binary {
        Binary::spawn_bare_under(&[], dir, challenges, env)
    }

    /// Like [`Binary::spawn_bare`], the binary run by `launcher` (a
    /// command that executes its last argument, e.g. `taskset -c 0`).
    pub fn spawn_bare_under(
        launcher: &[&str],
        dir: &Path,
        challenges: &str,
        env: &[(&str, &str)],
    ) -> Binary {
        let config = dir.join("challenges.json");
        std::fs::write(&config, challenges).expect("write challenges.json");
        let log = dir.join(format!("service-{}.log", uuid_like()));
        let log_file = std::fs::File::create(&log).expect("create service log");
        let binary = env!("CARGO_BIN_EXE_challenge-event-handler");
        let mut command = match launcher.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CONFIG_PATH", &config)
            .current_dir(dir)
            // Port 0: the service logs the ports it bound ("starting grpc=… http=…").
            .env("GRPC_PORT", "0")
            .env("METRICS_PORT", "0")
            .env("BIND_ADDRESS", "127.0.0.1")
            .env("LOG_LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log handle"))
            .stderr(log_file);
        // Later pairs win; an empty value unsets the variable (e.g.
        // TABLE_OWNER or AB_NAMESPACE, which the harness would otherwise set).
        for (k, v) in env {
            if v.is_empty() {
                command.env_remove(k);
            } else {
                command.env(k, v);
            }
        }
        let child = command.spawn().expect("spawn the service binary");
        Binary {
            child,
            grpc_port: 0,
            http_port: 0,
            log,
        }
    }

    /// HTTP ingest's address (its own port when `HTTP_INGEST_PORT` is set),
    /// from the "starting" log line; call after [`Binary::wait_healthy`].
    pub fn ingest_addr(&self) -> SocketAddr {
        let port = self
            .logged_port("ingest=")
            .expect("an ingest= address in the starting line");
        ([127, 0, 0, 1], port).into()
    }

    /// The HTTP address from the "starting" log line, once it is there:
    /// for a service that is not healthy (yet).
    pub fn logged_http_addr(&self) -> Option<SocketAddr> {
        Some(([127, 0, 0, 1], self.logged_port("http=")?).into())
    }

    /// The port after `key=` in the service's "starting" log line.
    fn logged_port(&self, key: &str) -> Option<u16> {
        let log = self.log_text();
        let value = match log.lines().find(|l| l.contains(" starting ")) {
            Some(line) => line
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key))?
                .to_owned(),
            // LOG_FORMAT=json: "grpc":"127.0.0.1:41535".
            None => {
                let line = log
                    .lines()
                    .find(|l| l.contains(r#""message":"starting""#))?;
                let event: serde_json::Value = serde_json::from_str(line).ok()?;
                event[key.trim_end_matches('=')].as_str()?.to_owned()
            }
        };
        value.rsplit(':').next()?.parse().ok()
    }

    pub fn http_addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.http_port).into()
    }

    pub async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the service exited with {status} before serving; log:\n{}",
                    self.log_text()
                );
            }
            if self.http_port == 0 {
                if let (Some(grpc), Some(http)) =
                    (self.logged_port("grpc="), self.logged_port("http="))
                {
                    self.grpc_port = grpc;
                    self.http_port = http;
                }
            }
            if self.http_port != 0 {
                if let Ok((200, _)) = http_get_quiet(self.http_addr(), "/healthz").await {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "service not healthy in 60 s; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://127.0.0.1:{}", self.grpc_port))
            .unwrap()
            .connect()
            .await
            .expect("connect to the service binary")
    }

    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL the service");
        self.child.wait().expect("reap the service");
    }

    /// The process id (the binary's own: a launcher such as `taskset`
    /// executes it in its place).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn sigterm(&self) {
        let pid = self.child.id() as libc::pid_t;
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "send SIGTERM");
    }

    /// Waits for the process to exit; returns its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the service") {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "service did not exit within {timeout:?}; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the service's log contains `needle` (a log line may come a
    /// moment after the effect it reports); returns the log.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log_text();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the service log within {timeout:?}:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// Runs `challenge-event-handler args…` with only `env` (and PATH) set, in
/// `dir`; returns (exit code, stdout, stderr).
/// `wal inspect --json` on the WAL of a test directory (`<dir>/wal`), its
/// watermark read from `db_url`; the command must succeed.
pub fn wal_inspect(dir: &Path, db_url: &str) -> serde_json::Value {
    let wal = dir.join("wal");
    let (code, out, err) = cli(
        dir,
        &["wal", "inspect", "--json"],
        &[("DATABASE_URL", db_url), ("WAL_DIR", wal.to_str().unwrap())],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    serde_json::from_str(&out).unwrap()
}

pub fn cli(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_challenge-event-handler"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run the binary");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What was acknowledged: (user, goal) → expected progress.
pub type Oracle = BTreeMap<(String, String), i32>;

/// A service on `db_url` and `dir` that never flushes (FLUSH_INTERVAL 1h)
/// acknowledges [`send_acknowledged`]'s events of `users` × `tag` and is
/// killed with SIGKILL: what it acknowledged is in its WAL only.
pub async fn acknowledged_then_killed(db_url: &str, dir: &Path, users: usize, tag: &str) -> Oracle {
    let mut service = Binary::spawn(db_url, dir, &[("FLUSH_INTERVAL", "1h")]);
    service.wait_healthy().await;
    let oracle = send_acknowledged(&service, users, tag).await;
    service.kill9();
    oracle
}

/// Sends `users` × (3 increments of 2 + one level stat + one login) and returns the oracle.
pub async fn send_acknowledged(binary: &Binary, users: usize, tag: &str) -> Oracle {
    let channel = binary.channel().await;
    let mut stats = StatisticStatItemUpdatedServiceClient::new(channel.clone());
    let mut logins = UserAuthenticationUserLoggedInServiceClient::new(channel);
    let mut oracle = Oracle::new();
    for u in 0..users {
        let user = format!("{tag}-{u}");
        for i in 0..3 {
            stats
                .on_message(stat(&user, "kills", 0.0, 2.0, &format!("{user}-k{i}"), ""))
                .await
                .expect("acknowledged");
        }
        stats
            .on_message(stat(
                &user,
                "level",
                (u % 9) as f64,
                1.0,
                &format!("{user}-lvl"),
                "",
            ))
            .await
            .expect("acknowledged");
        logins
            .on_message(login(&user, &format!("{user}-login"), ""))
            .await
            .expect("acknowledged");
        oracle.insert((user.clone(), "kills".into()), 6);
        oracle.insert((user.clone(), "level".into()), (u % 9) as i32);
        oracle.insert((user.clone(), "login-count".into()), 1);
    }
    oracle
}

pub async fn progress_of(db: &PgPool, tag: &str) -> Oracle {
    sqlx::query_as::<_, (String, String, i32)>(
        "SELECT user_id, goal_id, progress FROM user_goal_progress
         WHERE user_id LIKE $1 AND goal_id IN ('kills', 'level', 'login-count')",
    )
    .bind(format!("{tag}-%"))
    .fetch_all(db)
    .await
    .expect("read progress")
    .into_iter()
    .map(|(u, g, p)| ((u, g), p))
    .collect()
}

pub async fn wait_for_oracle(db: &PgPool, tag: &str, oracle: &Oracle) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let seen = progress_of(db, tag).await;
        if &seen == oracle {
            return;
        }
        if std::time::Instant::now() > deadline {
            assert_eq!(
                &seen, oracle,
                "the database does not match what was acknowledged"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HTTP/1.1 request on a fresh connection: (status, headers, body).
pub async fn http_request(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    // A server may answer (413) before reading a large body; ignore a reset.
    let _ = stream.write_all(body).await;
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// The value of one sample line of a Prometheus text exposition.
pub fn metric(exposition: &str, sample: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {sample} in:\n{exposition}"))
}

/// The sum of every sample of the labelled metric `name` in `exposition`.
pub fn sum_of(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .filter_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix('{')?
                .split_once("} ")?
                .1
                .trim()
                .parse::<f64>()
                .ok()
        })
        .sum()
}

/// The shipped `config/challenges.json`.
pub fn shipped_challenges() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/challenges.json"
    ))
    .expect("config/challenges.json")
}

/// Runs `progress --user <user> --json` in `dir` with `env` until `check`
/// accepts the rows (20 s at most); returns them.
pub fn wait_for_rows(
    dir: &Path,
    env: &[(&str, &str)],
    user: &str,
    check: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, out, err) = cli(dir, &["progress", "--user", user, "--json"], env);
        assert_eq!(code, 0, "progress failed: {err}");
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out).expect("progress --json");
        if check(&rows) {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "rows of {user} never matched: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The row of `goal` among `progress --json`'s rows.
pub fn json_row<'a>(rows: &'a [serde_json::Value], goal: &str) -> Option<&'a serde_json::Value> {
    rows.iter().find(|r| r["goal_id"] == goal)
}

/// A response header's value (names are lower-cased by [`http_request`]).
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// user → the progress of goal `logins` for users named `tag-…` (the
/// counting configs of the crash and cluster tests).
pub async fn counted(db: &PgPool, tag: &str) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i32)>(
        "SELECT user_id, progress FROM user_goal_progress WHERE goal_id = 'logins' AND user_id LIKE $1",
    )
    .bind(format!("{tag}-%"))
    .fetch_all(db)
    .await
    .unwrap()
    .into_iter()
    .map(|(u, p)| (u, i64::from(p)))
    .collect()
}

/// The shipped M5 example, `config/challenges.m5.json`.
pub fn m5_config() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/challenges.m5.json"
    ))
    .expect("read config/challenges.m5.json")
}
