//! Where the site may read packages on its own machine (`site run
//! --local-ingest-root`, the local ingest path of `service::local_ingest`).

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Where the site may read packages from, as given to `site run`.
#[derive(Clone, Debug)]
pub struct LocalIngest {
    /// The root, resolved (no symbolic link in it).
    root: PathBuf,
    /// The site's own directory, resolved.
    site_dir: PathBuf,
}

impl LocalIngest {
    /// Resolves `root` (which must be a directory) for a site in `site_dir`.
    pub fn new(root: &Path, site_dir: &Path) -> std::io::Result<LocalIngest> {
        let root = root.canonicalize()?;
        if !root.is_dir() {
            return Err(std::io::Error::other(format!(
                "{} is not a directory",
                root.display()
            )));
        }
        Ok(LocalIngest {
            root,
            site_dir: site_dir.canonicalize()?,
        })
    }

    /// The directory to read for `path`, resolved, or why it may not be.
    pub(crate) fn allowed(&self, path: &str) -> Result<PathBuf> {
        let refused = |why: String| Error::invalid("outside_local_ingest_root", why);
        let given = Path::new(path);
        if !given.is_absolute() {
            return Err(refused(format!("{path:?} is not an absolute path")));
        }
        let resolved = given.canonicalize().map_err(|err| {
            refused(format!(
                "{path:?} cannot be read on the site's machine: {err}"
            ))
        })?;
        if !resolved.starts_with(&self.root) {
            return Err(refused(format!(
                "{} is not under the site's local ingest root {}",
                resolved.display(),
                self.root.display()
            )));
        }
        if self.site_dir.starts_with(&resolved) || resolved.starts_with(&self.site_dir) {
            return Err(refused(format!(
                "{} holds or is inside the site's own directory",
                resolved.display()
            )));
        }
        Ok(resolved)
    }
}
