//! Files and directories that survive a power cut: directory fsyncs, the
//! first-start marker, the instance id.

use std::fs::File;
use std::path::Path;

use super::{Result, WalError};

pub(super) fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `create_dir_all`, then an fsync of the parent of every directory it made:
/// a new directory's entry is only durable once its parent is synced, and a
/// power cut must not take the WAL directory (and all it holds) away.
pub fn create_dir_durable(dir: &Path) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        missing.push(path);
        at = path.parent();
    }
    std::fs::create_dir_all(dir)?;
    for made in missing.iter().rev() {
        match made.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => fsync_dir(parent)?,
            _ => fsync_dir(Path::new("."))?,
        }
    }
    Ok(())
}

/// A WAL directory held by this process: an exclusive lock on its `lock`
/// file, released when dropped (or when the process dies, kill -9 too).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Takes the WAL directory for this process before anything in it is read
/// or written: its identity, a first start's marker, sled's files. Two
/// processes started on one new directory would otherwise race there (the
/// second could remove the first's half-made log as an interrupted first
/// start). sled's own lock is taken only later, when it opens its files.
pub fn lock_dir(dir: &Path) -> Result<DirLock> {
    create_dir_durable(dir)?;
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| WalError::Lock {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(DirLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(WalError::Busy {
            dir: dir.to_owned(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(WalError::Lock { path, source }),
    }
}

/// Marks a first start with a durable `log.creating` file until sled's files
/// are all synced (the caller removes it, durably, before anything is
/// acknowledged). sled writes its `conf` file once, on creation, and never
/// syncs it: a power cut during the first start can leave it torn, and sled
/// then refuses to open (found by the torn cuts of tests/power_loss.rs). A
/// marker left over means exactly that interrupted first start, whose `log`
/// holds nothing acknowledged: it is removed and made again. Returns whether
/// this is a first start.
pub(super) fn begin_first_start(dir: &Path, creating: &Path) -> Result<bool> {
    if creating.exists() {
        if dir.exists() {
            tracing::warn!(dir = %dir.display(), "removing a WAL directory left half-made by an interrupted first start");
            std::fs::remove_dir_all(dir)?;
        }
    } else if dir.exists() {
        return Ok(false);
    }
    let parent = creating.parent().unwrap_or(Path::new("."));
    create_dir_durable(parent)?;
    File::create(creating)?.sync_all()?;
    fsync_dir(parent)?;
    create_dir_durable(dir)?;
    Ok(true)
}

/// The name of the instance recorded in the WAL directory, if any.
fn recorded_name(dir: &Path) -> Result<Option<String>> {
    read_trimmed(&dir.join("instance_id"))
}

fn read_trimmed(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(id) if !id.trim().is_empty() => Ok(Some(id.trim().to_owned())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The id of the watermark row the WAL directory's records belong to, if
/// one is recorded: the instance's name, and after it `@` and the volume's
/// id where the directory has one (see [`instance_id`]).
pub fn recorded_instance_id(dir: &Path) -> Result<Option<String>> {
    let Some(name) = recorded_name(dir)? else {
        return Ok(None);
    };
    Ok(Some(match read_trimmed(&dir.join("volume_id"))? {
        Some(volume) => volume_key(&name, &volume),
        None => name,
    }))
}

/// The instance id the WAL directory's records belong to, which names their
/// watermark row: `configured` (INSTANCE_ID) or, without it, a generated
/// name, recorded in the directory on its first start; a configured name
/// that differs from the recorded one is refused (the WAL's records would be
/// replayed against another instance's watermark and applied again).
///
/// A directory made by this build also records a random volume id, and the
/// instance id is `name@volume`. A replica whose volume was lost comes back
/// with its INSTANCE_ID on a new volume: the new volume's records get a
/// watermark of their own, and the old volume, drained later, is still
/// replayed against its own, not against one the new volume moved past it.
/// A directory an older build made keeps its plain name (its records are
/// counted in the row of that name).
pub fn instance_id(dir: &Path, configured: Option<&str>) -> Result<String> {
    match (recorded_name(dir)?, configured) {
        (Some(recorded), Some(configured)) if recorded != configured => {
            Err(WalError::OtherInstance {
                dir: dir.to_owned(),
                recorded,
                configured: configured.to_owned(),
            })
        }
        (Some(_), _) => Ok(recorded_instance_id(dir)?.expect("a name is recorded")),
        (None, None) if dir.join("log").exists() => Err(WalError::UnknownInstance {
            dir: dir.to_owned(),
        }),
        (None, configured) => {
            let name = configured.map_or_else(
                || format!("ceh-{}", uuid::Uuid::new_v4().simple()),
                str::to_owned,
            );
            // A directory without a log holds no records yet: it is a new
            // volume. One with a log keeps the volume id it recorded, if
            // any (its name was lost and is given again); without one it was
            // made before names were recorded, and its records belong to the
            // row of the plain name.
            let volume = if dir.join("log").exists() {
                read_trimmed(&dir.join("volume_id"))?
            } else {
                let random = uuid::Uuid::new_v4().simple().to_string();
                let volume = random[..VOLUME_ID_LEN].to_owned();
                record(dir, "volume_id", &volume)?;
                Some(volume)
            };
            // The name last: a directory that records one is complete.
            record(dir, "instance_id", &name)?;
            // What this process wrote, not read back: a writer that does not
            // take the directory's lock (an older build) may have written
            // over it, and the check after the WAL opens must see that.
            Ok(match volume {
                Some(volume) => volume_key(&name, &volume),
                None => name,
            })
        }
    }
}

/// Hex digits of a volume id: 48 random bits, unique among the volumes one
/// instance name ever has.
const VOLUME_ID_LEN: usize = 12;

/// `name@volume`, within the 100 characters the handler's tables hold for
/// an instance id: a name longer than 87 characters is cut (the volume id
/// keeps the key unique). The tables are not widened: a replica of the
/// previous build, mid-rollout, has statements prepared on their columns,
/// and PostgreSQL refuses a prepared statement whose result type changed.
fn volume_key(name: &str, volume: &str) -> String {
    let room = (crate::event::MAX_ID_LEN - 1).saturating_sub(volume.chars().count());
    let name: String = name.chars().take(room).collect();
    format!("{name}@{volume}")
}

/// Writes `name` in `dir` with `value`, durably (a temporary file synced,
/// renamed, the directory synced).
fn record(dir: &Path, name: &str, value: &str) -> Result<()> {
    create_dir_durable(dir)?;
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        std::io::Write::write_all(&mut f, value.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    fsync_dir(dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_at_a_time_holds_a_wal_directory() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("wal");
        let held = lock_dir(&wal).unwrap();
        let refused = lock_dir(&wal).unwrap_err();
        assert!(matches!(refused, WalError::Busy { .. }), "{refused}");
        assert!(refused.to_string().contains("another process"), "{refused}");
        drop(held);
        lock_dir(&wal).expect("free again once dropped");
    }

    #[test]
    fn a_new_directory_names_its_volume_and_keeps_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("wal");
        let id = instance_id(&wal, Some("replica-1")).unwrap();
        let (name, volume) = id.split_once('@').expect("name@volume");
        assert_eq!(name, "replica-1");
        assert_eq!(volume.len(), VOLUME_ID_LEN);
        assert!(volume.chars().all(|c| c.is_ascii_hexdigit()), "{volume}");
        // Kept: the same with the name configured, or without it.
        assert_eq!(instance_id(&wal, Some("replica-1")).unwrap(), id);
        assert_eq!(instance_id(&wal, None).unwrap(), id);
        assert_eq!(recorded_instance_id(&wal).unwrap(), Some(id.clone()));
        // Another volume under the same name is another watermark.
        let other = instance_id(&dir.path().join("other"), Some("replica-1")).unwrap();
        assert_ne!(other, id);
        assert!(other.starts_with("replica-1@"));
        // Another name for this directory is refused.
        let err = instance_id(&wal, Some("replica-2")).unwrap_err();
        assert!(matches!(err, WalError::OtherInstance { .. }), "{err}");
    }

    #[test]
    fn a_long_name_is_cut_to_fit_the_watermark_row() {
        let dir = tempfile::tempdir().unwrap();
        let name = "n".repeat(100);
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let id = instance_id(&a, Some(&name)).unwrap();
        assert_eq!(id.chars().count(), crate::event::MAX_ID_LEN);
        assert!(id.starts_with(&format!("{}@", "n".repeat(87))), "{id}");
        // The name recorded whole: the same INSTANCE_ID is accepted.
        assert_eq!(instance_id(&a, Some(&name)).unwrap(), id);
        assert_ne!(instance_id(&b, Some(&name)).unwrap(), id);
    }

    #[test]
    fn a_directory_an_older_build_made_keeps_its_plain_name() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("wal");
        std::fs::create_dir_all(wal.join("log")).unwrap();
        std::fs::write(wal.join("instance_id"), "replica-1\n").unwrap();
        assert_eq!(instance_id(&wal, Some("replica-1")).unwrap(), "replica-1");
        // One that predates recorded names: its records are the name's.
        let older = dir.path().join("older");
        std::fs::create_dir_all(older.join("log")).unwrap();
        assert_eq!(instance_id(&older, Some("replica-0")).unwrap(), "replica-0");
        assert!(!older.join("volume_id").exists());
        assert_eq!(
            recorded_instance_id(&older).unwrap().as_deref(),
            Some("replica-0")
        );
        // Without the name it ran with, its records' watermark is unknown.
        let unnamed = dir.path().join("unnamed");
        std::fs::create_dir_all(unnamed.join("log")).unwrap();
        let err = instance_id(&unnamed, None).unwrap_err();
        assert!(matches!(err, WalError::UnknownInstance { .. }), "{err}");
        assert!(!unnamed.join("instance_id").exists());
    }
}
