//! Credentials: minting tokens, storing their hashes, and who presents a
//! token (a [`Principal`]); `http::extract` reads the token from the
//! `Authorization: Bearer` header.

use crate::db::{self, WriteTx};
use crate::error::{Error, Result};
use crate::state::AppState;
use rand::RngCore;

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// An administrator (the site's admin token).
    Admin,
    /// A distribution point, by its database id and name.
    Dp { id: i64, name: String },
    /// A workstation's agent, by its database id and name.
    Agent { id: i64, name: String },
    /// A direct child site, by its code.
    Site { code: String },
}

impl Principal {
    /// Refuses anyone but an administrator.
    pub fn require_admin(&self) -> Result<()> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Dp { name, .. } => Err(Error::Forbidden(format!(
                "dp {name} may not call administrator routes"
            ))),
            Principal::Agent { name, .. } => Err(Error::Forbidden(format!(
                "agent {name} may not call administrator routes"
            ))),
            Principal::Site { code } => Err(Error::Forbidden(format!(
                "site {code} may not call administrator routes"
            ))),
        }
    }

    /// Refuses anyone but a direct child site; returns its code.
    pub fn require_site(&self) -> Result<&str> {
        match self {
            Principal::Site { code } => Ok(code),
            other => Err(Error::Forbidden(format!(
                "this route is for child sites; {} may not call it",
                other.describe()
            ))),
        }
    }

    /// Refuses anyone but a DP; returns its id and name.
    pub fn require_dp(&self) -> Result<(i64, &str)> {
        match self {
            Principal::Dp { id, name } => Ok((*id, name)),
            other => Err(Error::Forbidden(format!(
                "this route is for distribution points; {} may not call it",
                other.describe()
            ))),
        }
    }

    /// Refuses anyone but an agent; returns its id and name.
    pub fn require_agent(&self) -> Result<(i64, &str)> {
        match self {
            Principal::Agent { id, name } => Ok((*id, name)),
            other => Err(Error::Forbidden(format!(
                "this route is for agents; {} may not call it",
                other.describe()
            ))),
        }
    }

    fn describe(&self) -> String {
        match self {
            Principal::Admin => "the admin token".to_owned(),
            Principal::Dp { name, .. } => format!("dp {name}"),
            Principal::Agent { name, .. } => format!("agent {name}"),
            Principal::Site { code } => format!("site {code}"),
        }
    }
}

/// A new random token with a readable prefix saying what it is for.
pub fn mint_token(prefix: &str) -> String {
    let mut bytes = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{prefix}_{}", hex::encode(bytes))
}

/// What is stored for a token.
pub fn token_hash(token: &str) -> Vec<u8> {
    blake3::hash(token.as_bytes()).as_bytes().to_vec()
}

/// A sender's public key as given at enrollment, checked to be one.
pub fn check_public_key(key: Option<&str>) -> Result<Option<String>> {
    key.map(|key| {
        cascade_content::public_key_from_hex(key)
            .map(|key| cascade_content::public_key_hex(&key))
            .map_err(|err| Error::invalid("invalid_public_key", err.to_string()))
    })
    .transpose()
}

/// Refuses anything but the site's join token of workstations.
pub async fn require_join_token(state: &AppState, token: &str) -> Result<()> {
    require_role(
        state,
        token,
        "join",
        "the join token `cascade site init` printed (DIR/join.token)",
    )
    .await
}

/// Refuses anything but the site's join token of DPs: the workstations'
/// does not enroll a DP, which every agent of the site would download from.
pub async fn require_dp_join_token(state: &AppState, token: &str) -> Result<()> {
    require_role(
        state,
        token,
        "dp_join",
        "the DP join token `cascade site init` printed (DIR/dp-join.token); the join token of workstations does not enroll DPs",
    )
    .await
}

/// Refuses anything but the site's join token for child sites.
pub async fn require_site_join_token(state: &AppState, token: &str) -> Result<()> {
    require_role(
        state,
        token,
        "site_join",
        "the site join token `cascade site init` printed (DIR/site-join.token); the join token of DPs and agents does not enroll sites",
    )
    .await
}

async fn require_role(state: &AppState, token: &str, role: &str, hint: &str) -> Result<()> {
    match lookup(state, token.trim()).await? {
        Some((found, _)) if found == role => Ok(()),
        _ => Err(Error::Unauthorized(format!(
            "invalid join token: use {hint}"
        ))),
    }
}

/// Stores a credential's hash for `principal` in `role`, inside `tx`.
pub async fn store_credential(
    tx: &mut WriteTx<'_>,
    token: &str,
    role: &str,
    principal: &str,
    now_ms: i64,
) -> Result<()> {
    db::insert_credential(tx, &token_hash(token), role, principal, now_ms).await
}

/// Revokes every credential of `role` held by `principal` but `token`.
pub async fn revoke_all_but(
    tx: &mut WriteTx<'_>,
    role: &str,
    principal: &str,
    token: &str,
) -> Result<()> {
    db::delete_credentials_but(tx, role, principal, &token_hash(token)).await
}

/// Looks up a token: its role and principal name.
pub async fn lookup(state: &AppState, token: &str) -> Result<Option<(String, String)>> {
    db::credential(state.db.pool(), &token_hash(token)).await
}

/// Who presents `token`: an administrator, one of this site's DPs or agents,
/// or a direct child site. Agents' credentials, once checked, are kept in
/// memory (agents poll often, and are never removed).
pub async fn authenticate(state: &AppState, token: &str) -> Result<Principal> {
    let known = state
        .agent_credentials
        .lock()
        .expect("credential cache lock")
        .get(&token_hash(token))
        .cloned();
    if let Some((id, name)) = known {
        return Ok(Principal::Agent { id, name });
    }
    match lookup(state, token).await? {
        Some((role, _)) if role == "admin" => Ok(Principal::Admin),
        Some((role, name)) if role == "dp" => {
            let dp = db::dp_by_name(state.db.pool(), &name)
                .await?
                .ok_or_else(|| Error::Unauthorized(format!("dp {name} is no longer enrolled")))?;
            Ok(Principal::Dp { id: dp.id, name })
        }
        Some((role, name)) if role == "agent" => {
            let id = db::agent_id(state.db.pool(), &name).await?.ok_or_else(|| {
                Error::Unauthorized(format!("agent {name} is no longer enrolled"))
            })?;
            state
                .agent_credentials
                .lock()
                .expect("credential cache lock")
                .insert(token_hash(token), (id, name.clone()));
            Ok(Principal::Agent { id, name })
        }
        Some((role, code)) if role == "site" => {
            db::site_by_code(state.db.pool(), &code)
                .await?
                .filter(|row| row.parent == state.code.as_str())
                .ok_or_else(|| {
                    Error::Unauthorized(format!("site {code} is no longer a child of this site"))
                })?;
            Ok(Principal::Site { code })
        }
        Some((role, _)) => Err(Error::Unauthorized(format!(
            "a {role} token is not a credential for this API"
        ))),
        None => Err(Error::Unauthorized("unknown credential".into())),
    }
}
