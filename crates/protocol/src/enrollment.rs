//! What a DP or an agent keeps after enrolling with its site: who it is, how
//! to reach the site, and which key every manifest must be signed with.

use crate::{Client, Result, SiteInfo};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// An enrolled DP's or agent's identity, stored (mode 0600) in its
/// configuration file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Enrollment {
    /// The DP's or workstation's name, unique in its site.
    pub name: String,
    /// The site server's URL.
    pub site_url: String,
    /// The site's code.
    pub site_code: String,
    /// Its own credential.
    pub credential: String,
    /// Hex of the key every manifest must be signed with, pinned at enrollment.
    pub site_public_key: String,
}

impl Enrollment {
    /// The identity granted by an enrollment answer.
    pub fn granted(name: &str, site_url: &str, credential: String, site: SiteInfo) -> Enrollment {
        Enrollment {
            name: name.to_owned(),
            site_url: site_url.to_owned(),
            site_code: site.code,
            credential,
            site_public_key: site.public_key,
        }
    }

    /// A client of the site that presents this credential.
    pub fn client(&self) -> Result<Client> {
        Client::new(&self.site_url, Some(&self.credential))
    }
}

/// Reads a JSON configuration file written at `init`; the error says which
/// command creates it.
pub fn read_config<T: DeserializeOwned>(
    path: &Path,
    init_command: &str,
) -> std::result::Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        format!(
            "reading {}: {err} (run `{init_command}` first)",
            path.display()
        )
    })?;
    serde_json::from_str(&text).map_err(|err| format!("{} is damaged: {err}", path.display()))
}
