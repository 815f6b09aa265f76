//! The data dir's permissions: it holds the local log, the SQLite database (stored prompts of
//! keys that opted in) and the generated secrets, so it is created 0700 and every file in it
//! is kept 0600, whatever the umask.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;

/// Files SQLite creates itself: created empty beforehand with mode 0600, so the WAL and
/// shared-memory files it adds beside them inherit that mode.
const DATABASE_FILES: [&str; 2] = ["events.db", "lumina.db"];

/// Creates `dir` (0700) and its database files (0600) if missing, and takes back any access
/// of others to what is already there.
pub fn prepare(dir: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create data dir {}", dir.display()))?;
    for name in DATABASE_FILES {
        let path = dir.join(name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
        }
    }
    tighten(dir)
}

/// Makes `dir` 0700 and every regular file directly in it 0600.
pub fn tighten(dir: &Path) -> anyhow::Result<()> {
    restrict(dir, 0o700)?;
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            restrict(&entry.path(), 0o600)?;
        }
    }
    Ok(())
}

fn restrict(path: &Path, mode: u32) -> anyhow::Result<()> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot stat {}", path.display()))?;
    if meta.permissions().mode() & 0o777 != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot restrict access to {}", path.display()))?;
    }
    Ok(())
}
