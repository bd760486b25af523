//! `multir upload`: a local folder (a cohort: scans, masks, manifest) into
//! S3, keeping relative paths, so that a manifest's relative paths resolve
//! the same way under the object prefix.

use std::path::{Path, PathBuf};

use multir_worker::store::{S3Url, Store};

use super::remote::runtime;
use crate::cli::UploadArgs;

pub fn run(args: UploadArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let to = S3Url::parse(&args.to)?;
        let store = Store::connect(&args.store).await?;
        if args.create_bucket {
            store.ensure_bucket(&to.bucket).await?;
        }
        let mut files = Vec::new();
        walk(&args.from, &mut files)?;
        files.sort();
        let mut bytes = 0u64;
        let t = std::time::Instant::now();
        for f in &files {
            let rel = f.strip_prefix(&args.from).map_err(|_| {
                anyhow::anyhow!("{} is outside {}", f.display(), args.from.display())
            })?;
            let rel = rel.to_string_lossy().replace('\\', "/");
            store.put_file(&to.join(&rel), f).await?;
            bytes += std::fs::metadata(f).map_or(0, |m| m.len());
        }
        super::emit(format_args!(
            "uploaded {} files ({:.1} MB) to {to} in {:.1} s",
            files.len(),
            bytes as f64 / 1e6,
            t.elapsed().as_secs_f64()
        ))?;
        Ok(())
    })
}

/// Every regular file under `dir` (symbolic links followed to files).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if path.is_file() {
            out.push(path);
        }
    }
    Ok(())
}
