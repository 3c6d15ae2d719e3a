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

/// The instance id recorded in the WAL directory, if any.
pub fn recorded_instance_id(dir: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(dir.join("instance_id")) {
        Ok(id) if !id.trim().is_empty() => Ok(Some(id.trim().to_owned())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The instance id the WAL directory's records belong to: `configured`
/// (INSTANCE_ID) or, without it, the one recorded there (generated on the
/// first start). The id is recorded in the directory, and a configured id
/// that differs from the recorded one is refused: the WAL's records would
/// be replayed against another instance's watermark and applied again.
pub fn instance_id(dir: &Path, configured: Option<&str>) -> Result<String> {
    let recorded = recorded_instance_id(dir)?;
    match (recorded, configured) {
        (Some(recorded), Some(configured)) if recorded != configured => {
            Err(WalError::OtherInstance {
                dir: dir.to_owned(),
                recorded,
                configured: configured.to_owned(),
            })
        }
        (Some(recorded), _) => Ok(recorded),
        (None, configured) => {
            let id = configured.map_or_else(
                || format!("ceh-{}", uuid::Uuid::new_v4().simple()),
                str::to_owned,
            );
            record_instance_id(dir, &id)?;
            Ok(id)
        }
    }
}

fn record_instance_id(dir: &Path, id: &str) -> Result<()> {
    create_dir_durable(dir)?;
    let path = dir.join("instance_id");
    let tmp = dir.join("instance_id.tmp");
    {
        let mut f = File::create(&tmp)?;
        std::io::Write::write_all(&mut f, id.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    fsync_dir(dir)?;
    Ok(())
}
