//! Files and directories that survive a power cut: directory fsyncs, the
//! first-start marker, the instance id.

use std::fs::File;
use std::path::Path;

use super::Result;

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

/// Reads the instance id stored in the WAL directory, creating one on first start.
pub fn instance_id(dir: &Path) -> Result<String> {
    let path = dir.join("instance_id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    create_dir_durable(dir)?;
    let id = format!("ceh-{}", uuid::Uuid::new_v4().simple());
    let tmp = dir.join("instance_id.tmp");
    {
        let mut f = File::create(&tmp)?;
        std::io::Write::write_all(&mut f, id.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    fsync_dir(dir)?;
    Ok(id)
}
