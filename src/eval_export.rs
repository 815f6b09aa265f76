//! `lumina eval export`: writes the eval dataset to a file (or standard output) with a progress
//! bar on a terminal. The file is written beside its destination and renamed into place, so a
//! failed export never leaves a truncated dataset behind.

use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lumina_projector::ReadModel;
use lumina_projector::eval::ExportRange;

/// Exports `range` from `views` to `out` (`-` for standard output) and reports the count on
/// standard error.
pub async fn export(views: &ReadModel, range: &ExportRange, out: &Path) -> anyhow::Result<()> {
    let total = views.count_settled(range).await?;
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} exporting [{bar:40}] {pos}/{len} requests ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let written = if out == Path::new("-") {
        let stdout = std::io::stdout();
        let mut w = BufWriter::new(stdout.lock());
        views
            .export_eval(range, &mut w, |n| bar.set_position(n))
            .await?
    } else {
        let dir = out.parent().filter(|p| !p.as_os_str().is_empty());
        let dir = dir.unwrap_or_else(|| Path::new("."));
        let tmp = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("cannot write in {}", dir.display()))?;
        let mut w = BufWriter::new(tmp);
        let n = views
            .export_eval(range, &mut w, |n| bar.set_position(n))
            .await?;
        let tmp = w.into_inner().map_err(|e| e.into_error())?;
        tmp.as_file().sync_all()?;
        tmp.persist(out)
            .with_context(|| format!("cannot write {}", out.display()))?;
        n
    };
    bar.finish_and_clear();
    let mut err = std::io::stderr().lock();
    writeln!(
        err,
        "exported {written} requests to {}",
        if out == Path::new("-") {
            "standard output".to_string()
        } else {
            out.display().to_string()
        }
    )?;
    Ok(())
}
