//! A real PostgreSQL for tests. With `DATABASE_URL` set, tests use that server;
//! otherwise one throwaway cluster per test binary is started (`initdb` +
//! `pg_ctl` on a temp dir and a free port; as root through `runuser -u
//! postgres`) and stopped by a watchdog when the test binary exits. Every test
//! gets a database of its own.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

struct Server {
    /// URL of the maintenance database, ending in `/postgres` (or the user's DATABASE_URL).
    admin_url: String,
}

static SERVER: OnceLock<Server> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// A fresh, empty database for one test.
pub struct TestDb {
    pub url: String,
    pub name: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let server = SERVER.get_or_init(start_server);
        TestDb::on(&server.admin_url).await
    }

    /// A fresh database on the server at `admin_url`.
    pub async fn on(admin_url: &str) -> TestDb {
        let name = format!(
            "ceh_test_{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(admin_url)
            .await
            .unwrap_or_else(|e| {
                panic!("cannot connect to the test PostgreSQL at {admin_url}: {e}")
            });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        TestDb {
            url: with_database(admin_url, &name),
            name,
        }
    }

    pub async fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.url)
            .await
            .expect("connect to test database")
    }

    /// Migrates the database as AccelByte's challenge service does at its
    /// start (tests/fixtures/challenge-service).
    pub async fn migrate_as_the_challenge_service(&self) {
        let pool = self.pool().await;
        golang_migrate_up(&pool, &challenge_service_migrations())
            .await
            .expect("the challenge service's migrations");
        pool.close().await;
    }

    /// `pg_dump --schema-only -t <table>` of this database.
    pub fn dump_schema(&self, table: &str) -> String {
        let server = SERVER.get_or_init(start_server);
        pg_dump_schema(&server.admin_url, &self.name, table)
    }
}

/// The challenge service's migrations (tests/fixtures/challenge-service),
/// as golang-migrate reads them: (version, up SQL), by version.
pub fn challenge_service_migrations() -> Vec<(i64, String)> {
    let migrations = migrations_in("tests/fixtures/challenge-service");
    assert_eq!(
        migrations.len(),
        2,
        "the fixtures hold migrations 001 and 002"
    );
    migrations
}

/// The service's migrations with its unmerged M6 branch's 003
/// (tests/fixtures/challenge-service-m6).
pub fn challenge_service_migrations_m6() -> Vec<(i64, String)> {
    let mut migrations = challenge_service_migrations();
    migrations.extend(migrations_in("tests/fixtures/challenge-service-m6"));
    assert_eq!(migrations.len(), 3, "001, 002 and M6's 003");
    migrations
}

/// The `<version>_<name>.up.sql` files of a fixture directory, by version.
fn migrations_in(fixtures: &str) -> Vec<(i64, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(fixtures);
    let mut migrations: Vec<(i64, String)> = std::fs::read_dir(&dir)
        .expect("read the migration fixtures")
        .filter_map(|e| {
            let path = e.ok()?.path();
            let name = path.file_name()?.to_str()?.to_owned();
            let version = name
                .strip_suffix(".up.sql")?
                .split('_')
                .next()?
                .parse()
                .ok()?;
            Some((version, std::fs::read_to_string(&path).ok()?))
        })
        .collect();
    migrations.sort();
    migrations
}

/// `migrate up` as golang-migrate's PostgreSQL driver does it: on one
/// connection under its advisory lock (the id the handler computes), the
/// version table created if missing, a dirty version refused, and each
/// migration above the recorded version marked dirty, run as one
/// multi-statement query, and marked clean. Returns the migrations it ran.
pub async fn golang_migrate_up(
    pool: &PgPool,
    migrations: &[(i64, String)],
) -> Result<Vec<i64>, String> {
    use sqlx::Executor;
    let mut conn = pool.acquire().await.map_err(|e| e.to_string())?;
    let (database, schema): (String, String) =
        sqlx::query_as("SELECT current_database()::text, current_schema()::text")
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| e.to_string())?;
    let lock = challenge_event_handler::store::postgres::golang_migrate_lock_id(
        &database,
        &schema,
        "schema_migrations",
    );
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(lock)
        .execute(&mut *conn)
        .await
        .map_err(|e| e.to_string())?;
    let result = async {
        let exists: i64 = sqlx::query_scalar(
            "SELECT COUNT(1) FROM information_schema.tables WHERE table_schema = $1 AND table_name = $2",
        )
        .bind(&schema)
        .bind("schema_migrations")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| e.to_string())?;
        if exists == 0 {
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version bigint not null primary key, dirty boolean not null)")
                .await
                .map_err(|e| e.to_string())?;
        }
        let current: Option<(i64, bool)> =
            sqlx::query_as("SELECT version, dirty FROM schema_migrations LIMIT 1")
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| e.to_string())?;
        if let Some((version, true)) = current {
            return Err(format!("Dirty database version {version}. Fix and force version."));
        }
        let from = current.map_or(-1, |(v, _)| v);
        let mut ran = Vec::new();
        for (version, sql) in migrations.iter().filter(|(v, _)| *v > from) {
            for dirty in [true, false] {
                if !dirty {
                    conn.execute(sql.as_str())
                        .await
                        .map_err(|e| format!("migration {version} failed: {e}"))?;
                }
                let mut tx = sqlx::Connection::begin(&mut *conn).await.map_err(|e| e.to_string())?;
                tx.execute("TRUNCATE schema_migrations").await.map_err(|e| e.to_string())?;
                sqlx::query("INSERT INTO schema_migrations (version, dirty) VALUES ($1, $2)")
                    .bind(version)
                    .bind(dirty)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| e.to_string())?;
                tx.commit().await.map_err(|e| e.to_string())?;
            }
            ran.push(*version);
        }
        Ok(ran)
    }
    .await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(lock)
        .execute(&mut *conn)
        .await;
    result
}

/// `pg_dump --schema-only -t <table>` of database `name` on the server at `admin_url`.
pub fn pg_dump_schema(admin_url: &str, name: &str, table: &str) -> String {
    let url = with_database(admin_url, name);
    let pg_dump = find_pg_binary("pg_dump");
    let mut command = Command::new(&pg_dump);
    command.args(["--schema-only", "--no-owner", "-t", table, "--dbname", &url]);
    // Since 15.14 pg_dump wraps its output in \restrict with a random key.
    let help = Command::new(&pg_dump)
        .arg("--help")
        .output()
        .expect("run pg_dump --help");
    if String::from_utf8_lossy(&help.stdout).contains("--restrict-key") {
        command.arg("--restrict-key=challengeeventhandler");
    }
    let output = command.output().expect("run pg_dump");
    assert!(
        output.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("pg_dump prints UTF-8")
}

/// Replaces the database name in a PostgreSQL URL.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    format!("{base}/{name}{query}")
}

fn start_server() -> Server {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        if !url.is_empty() {
            return Server { admin_url: url };
        }
    }
    let cluster = Cluster::start();
    Server {
        admin_url: cluster.admin_url.clone(),
    }
}

/// A PostgreSQL cluster of this test process's own (always local, whatever
/// `DATABASE_URL` says), which a test may stop and start.
pub struct Cluster {
    pub admin_url: String,
    as_root: bool,
    pg_ctl: PathBuf,
    data: PathBuf,
    options: String,
    log: PathBuf,
}

impl Cluster {
    pub fn start() -> Cluster {
        let initdb = find_pg_binary("initdb");
        let pg_ctl = find_pg_binary("pg_ctl");
        let root = tempfile::Builder::new()
            .prefix("ceh-pg-")
            .tempdir()
            .expect("temp dir for PostgreSQL")
            .keep();
        let data = root.join("data");
        let as_root = unsafe { libc::geteuid() } == 0;
        if as_root {
            run(Command::new("chown").arg("postgres:postgres").arg(&root));
        }
        let port = free_port();
        run(pg_command(as_root, &initdb).arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        ]));
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=200",
            root.display()
        );
        let cluster = Cluster {
            admin_url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            as_root,
            pg_ctl,
            log: root.join("server.log"),
            data,
            options,
        };
        cluster.start_server();
        spawn_watchdog(as_root, &cluster.pg_ctl, &root, &cluster.data);
        cluster
    }

    /// (Re)starts the server and waits until it accepts connections.
    pub fn start_server(&self) {
        // The server inherits pg_ctl's stdout and stderr: point them at a file, or
        // reading pg_ctl's output would wait for the server to exit.
        let status = pg_command(self.as_root, &self.pg_ctl)
            .arg("-D")
            .arg(&self.data)
            .arg("-o")
            .arg(&self.options)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "60", "start"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run pg_ctl start");
        assert!(
            status.success(),
            "pg_ctl start failed ({status}); server log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// Stops the server the hard way (`pg_ctl stop -m immediate`: no checkpoint,
    /// connections dropped), as a crash would.
    pub fn stop_immediately(&self) {
        run(pg_command(self.as_root, &self.pg_ctl)
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"]));
    }
}

/// Stops the cluster and removes its files once this test process is gone.
fn spawn_watchdog(as_root: bool, pg_ctl: &Path, root: &Path, data: &Path) {
    let stop = format!(
        "{} {} -D {} stop -m immediate",
        if as_root {
            "runuser -u postgres --"
        } else {
            ""
        },
        pg_ctl.display(),
        data.display()
    );
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf {root}",
        pid = std::process::id(),
        root = root.display()
    );
    // Deliberately not waited for: it must outlive this process.
    #[allow(clippy::zombie_processes)]
    let _watchdog = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the PostgreSQL watchdog");
}

fn pg_command(as_root: bool, binary: &Path) -> Command {
    if as_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(binary);
        c
    } else {
        Command::new(binary)
    }
}

fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn find_pg_binary(name: &str) -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect())
        .unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        versions.sort();
        candidates.extend(versions.into_iter().rev().map(|v| v.join("bin").join(name)));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "PostgreSQL's {name} was not found on PATH or in /usr/lib/postgresql/*/bin. \
             Install PostgreSQL (apt-get install -y postgresql) or set DATABASE_URL to a server \
             whose user may CREATE DATABASE."
            )
        })
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[test]
fn database_names_are_replaced_in_urls() {
    assert_eq!(
        with_database("postgres://u:p@h:5/postgres?sslmode=disable", "x"),
        "postgres://u:p@h:5/x?sslmode=disable"
    );
    assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
}
