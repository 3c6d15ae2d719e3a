//! A full disk under the WAL: no OK for anything not durable, a clear error,
//! and recovery once space returns. The WAL directory is put on a small tmpfs
//! (mounting needs root; elsewhere the test says why it cannot run).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use challenge_event_handler::proto::iam::account::v1::user_authentication_user_logged_in_service_client::UserAuthenticationUserLoggedInServiceClient;
use common::*;

/// A tmpfs mounted for one test and unmounted when dropped.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(path: &Path, size: &str) -> Result<SmallDisk, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(SmallDisk {
            path: path.to_owned(),
        })
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(status.success(), "remount tmpfs");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[tokio::test]
async fn a_full_disk_gets_no_ok_a_clear_error_and_recovers_when_space_returns() {
    let db = pg::TestDb::new().await;
    let pool = db.pool().await;
    let dir = tempfile::tempdir().unwrap();
    let disk = match SmallDisk::mount(&dir.path().join("disk"), "3m") {
        Ok(disk) => disk,
        Err(why) => {
            println!("SKIPPED disk-full test: cannot mount a tmpfs here ({why}); it needs root (CAP_SYS_ADMIN)");
            return;
        }
    };
    let wal = disk.path.join("wal");
    let wal_env = wal.display().to_string();
    let env = [("FLUSH_INTERVAL", "1h"), ("WAL_DIR", wal_env.as_str())];
    let mut service = Binary::spawn(&db.url, dir.path(), &env);
    service.wait_healthy().await;
    let mut client = UserAuthenticationUserLoggedInServiceClient::new(service.channel().await);
    let mut acknowledged = 0u64;
    let refusal = loop {
        assert!(acknowledged < 1_000_000, "the disk never filled");
        let user = format!("df-{acknowledged}");
        match client.on_message(login(&user, &user, "")).await {
            Ok(_) => acknowledged += 1,
            Err(status) => break status,
        }
    };
    println!("disk full after {acknowledged} acknowledged logins: {refusal:?}");
    assert_eq!(refusal.code(), tonic::Code::Unavailable, "{refusal:?}");
    // Nothing after the failure is acknowledged.
    assert!(client
        .on_message(login("df-after", "df-after", ""))
        .await
        .is_err());
    assert_eq!(
        service.wait_exit(Duration::from_secs(30)).await,
        1,
        "{}",
        service.log_text()
    );
    assert!(
        service.log_text().contains("WAL write or fsync failed"),
        "{}",
        service.log_text()
    );

    // Space returns; the restart replays and applies every acknowledged login once.
    disk.resize("64m");
    let mut again = Binary::spawn(
        &db.url,
        dir.path(),
        &[("FLUSH_INTERVAL", "50ms"), ("WAL_DIR", wal_env.as_str())],
    );
    again.wait_healthy().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (rows, sum): (i64, Option<i64>) = sqlx::query_as(
            "SELECT count(*), sum(progress) FROM user_goal_progress WHERE goal_id = 'login-count' AND user_id LIKE 'df-%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        // Acknowledged logins all arrive; the refused one may or may not have
        // reached the disk (it was never acknowledged), but counts at most once.
        if rows >= acknowledged as i64 {
            assert!(
                rows <= acknowledged as i64 + 1,
                "{rows} rows for {acknowledged} acknowledged"
            );
            assert_eq!(sum, Some(rows), "a login was counted twice");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {rows} of {acknowledged} acknowledged logins arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(row(&pool, "df-after", "login-count").await, None);
    again.sigterm();
    assert_eq!(again.wait_exit(Duration::from_secs(30)).await, 0);
}
