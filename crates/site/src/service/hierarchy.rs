//! The hierarchy: a child site joining its parent, the registry of every
//! site below this one (so that codes stay unique in the whole hierarchy),
//! and the links to direct children with their rate limits.
//!
//! **Architecture Invariant:** connections are opened from below. A child
//! site enrolls, fetches instructions and content, reports what it needs and
//! relays status, all as requests to its parent; a parent never connects to
//! a child and needs no route to it.

use crate::db::{self, SiteRow, WriteTx};
use crate::error::{Entity, Error, Result};
use crate::service::{auth, groups, jobs, send};
use crate::state::{upstream, AppState, ParentConfig};
use cascade_content::SignedManifest;
use cascade_domain::hierarchy::SiteKind;
use cascade_domain::SiteCode;
use cascade_protocol::{
    Enrollment, Instruction, LinkRequest, SignedManifestWire, SiteEnrollRequest,
    SiteEnrollResponse, SiteRegistration, SiteSummary,
};
use cascade_store::now_ms;
use std::collections::HashMap;

/// How a new child site joins its parent.
#[derive(Clone, Debug)]
pub struct Join {
    /// `Primary` or `Secondary`.
    pub kind: SiteKind,
    /// The parent site's URL.
    pub parent_url: String,
    /// The parent's site join token.
    pub join_token: String,
    /// Hex of the central key, when the administrator pins it; the join is
    /// refused if the parent answers with another.
    pub central_key: Option<String>,
    /// Bytes per second the parent may send this site.
    pub max_rate: Option<u64>,
    /// Take over the code if the parent holds it registered for a site
    /// that never connected (an earlier init that failed half-way).
    pub replace: bool,
}

/// `cascade site init --parent`: checks the parent (and the central key,
/// when pinned) and enrolls with it.
pub async fn join(code: &SiteCode, kind: SiteKind, join: &Join) -> Result<ParentConfig> {
    let client = cascade_protocol::client_for_token(&join.parent_url, &join.join_token)
        .map_err(|err| upstream("connecting to the parent", err))?;
    let parent = client
        .site_info()
        .await
        .map_err(|err| upstream("asking the parent who it is", err))?;
    let pinned = join
        .central_key
        .as_deref()
        .or_else(|| cascade_protocol::pinned_key(&join.join_token));
    check_pin(pinned, &parent, client.base())?;
    let answer = client
        .enroll_site(&SiteEnrollRequest {
            code: code.to_string(),
            kind,
            join_token: join.join_token.trim().to_owned(),
            max_rate: join.max_rate,
            replace: join.replace,
        })
        .await
        .map_err(|err| upstream(&format!("joining {}", client.base()), err))?;
    // The key kept is the one in the enrollment answer: it must be the
    // pinned one too, and the same the parent showed before.
    check_pin(pinned, &answer.parent, client.base())?;
    if answer.parent.public_key != parent.public_key || answer.parent.code != parent.code {
        return Err(Error::invalid(
            "central_key_mismatch",
            format!(
                "{} answered as {} with central key {} and then enrolled this site as {} with key {}; not joining",
                client.base(),
                parent.code,
                parent.public_key,
                answer.parent.code,
                answer.parent.public_key
            ),
        ));
    }
    let central_code = answer
        .parent
        .central
        .clone()
        .unwrap_or_else(|| answer.parent.code.clone());
    Ok(ParentConfig {
        enrollment: Enrollment::granted(
            code.as_str(),
            &client,
            answer.credential,
            answer.parent,
            // A site's own messages are not signed (yet).
            None,
        ),
        central_code,
    })
}

/// Refuses a parent whose central key is not the one pinned (if any).
fn check_pin(pinned: Option<&str>, parent: &cascade_protocol::SiteInfo, url: &str) -> Result<()> {
    match pinned {
        Some(pinned) if !pinned.trim().eq_ignore_ascii_case(&parent.public_key) => {
            Err(Error::invalid(
                "central_key_mismatch",
                format!(
                    "the parent {} at {url} answers with central key {}, not the pinned {}; not joining",
                    parent.code,
                    parent.public_key,
                    pinned.trim()
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// Registers a new site with the parent, which passes it on up to the
/// central site, where codes are checked against the whole hierarchy.
async fn register_up(state: &AppState, registration: &SiteRegistration) -> Result<()> {
    if let Some(parent) = &state.parent {
        parent
            .client
            .register_site(registration)
            .await
            .map_err(|err| {
                upstream(
                    &format!(
                        "registering site {} with {}",
                        registration.code,
                        parent.code()
                    ),
                    err,
                )
            })?;
    }
    Ok(())
}

/// `POST /api/v1/sites/enroll`: a new child site presents the join token.
pub async fn enroll(state: &AppState, request: &SiteEnrollRequest) -> Result<SiteEnrollResponse> {
    let code = SiteCode::new(&request.code)?;
    let kind = request.kind;
    auth::require_site_join_token(state, &request.join_token).await?;
    state.kind.check_child(kind)?;
    if code == state.code || code == state.central {
        return Err(Error::Conflict(format!(
            "site code {code} is already used in the hierarchy"
        )));
    }
    let own = state.code.to_string();
    // A child that enrolled but never connected (its init failed after the
    // parent answered) may enroll again, when asked for explicitly; any
    // other existing code is taken.
    let rejoin =
        |row: &SiteRow| row.parent == own && row.kind == kind.name() && row.last_seen_ms.is_none();
    match db::site_by_code(state.db.pool(), code.as_str()).await? {
        Some(row) if rejoin(&row) && request.replace => {}
        Some(row) if rejoin(&row) => {
            return Err(Error::Conflict(format!(
                "site code {code} is registered under {own} but has not connected yet; if its earlier `site init` failed, or to replace it, run `site init` again with --replace (the registered site's credential is revoked)"
            )))
        }
        Some(_) => {
            return Err(Error::Conflict(format!(
                "site code {code} is already used in the hierarchy"
            )))
        }
        None => {
            register_up(
                state,
                &SiteRegistration {
                    code: code.to_string(),
                    kind,
                    parent: own.clone(),
                },
            )
            .await?
        }
    }
    let credential = auth::mint_token("cas_site");
    let now = now_ms();
    let mut tx = state.db.write().await?;
    // Again inside the transaction: a registration from below may have
    // taken the code while this site was registering it upwards.
    // Two inits of one code at once both see no row before; the second
    // must not take over the first's without --replace.
    if let Some(row) = db::site_by_code(&mut *tx.tx, code.as_str()).await? {
        if !(rejoin(&row) && request.replace) {
            return Err(Error::Conflict(format!(
                "site code {code} is already used in the hierarchy"
            )));
        }
    }
    db::delete_credentials(&mut tx, "site", code.as_str()).await?;
    db::outbox_clear(&mut tx, code.as_str()).await?;
    db::upsert_child_site(
        &mut tx,
        code.as_str(),
        kind.name(),
        &own,
        now,
        request.max_rate.map(|rate| rate as i64),
    )
    .await?;
    auth::store_credential(&mut tx, &credential, "site", code.as_str(), now).await?;
    let queued = snapshot(&mut tx, code.as_str()).await?;
    tx.commit().await?;
    state.notify_outbox_changed();
    tracing::info!(site = %code, %kind, instructions = queued, "child site joined");
    Ok(SiteEnrollResponse {
        credential,
        parent: state.site_info(),
    })
}

/// `POST /api/v1/sites/register`: a child reports a site that joined at or
/// below it.
pub async fn register(state: &AppState, caller: &str, request: &SiteRegistration) -> Result<()> {
    let code = SiteCode::new(&request.code)?;
    let kind = request.kind;
    SiteCode::new(&request.parent)?;
    let sites = db::subtree(state.db.pool()).await?;
    if !db::contains(&sites, caller, &request.parent) {
        return Err(Error::Forbidden(format!(
            "site {caller} may not register a site under {}, which is not in its subtree",
            request.parent
        )));
    }
    let parent_kind = sites
        .iter()
        .find(|row| row.code == request.parent)
        .map(|row| SiteKind::parse(&row.kind))
        .transpose()?
        .ok_or_else(|| Error::not_found(Entity::Site, &request.parent))?;
    parent_kind.check_child(kind)?;
    if code == state.code {
        return Err(Error::Conflict(format!(
            "site code {code} is already used in the hierarchy"
        )));
    }
    let existing = sites.iter().find(|row| row.code == code.as_str());
    if already_registered(existing, request)? {
        return Ok(());
    }
    register_up(state, request).await?;
    let mut tx = state.db.write().await?;
    // Again inside the transaction: another child may have registered the
    // same code meanwhile.
    if already_registered(
        db::site_by_code(&mut *tx.tx, code.as_str()).await?.as_ref(),
        request,
    )? {
        return Ok(());
    }
    db::insert_site(
        &mut tx,
        code.as_str(),
        kind.name(),
        &request.parent,
        now_ms(),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(site = %code, parent = %request.parent, "site registered below");
    Ok(())
}

/// Whether the site is registered just as asked (a repeated registration,
/// fine), or not at all; a code registered otherwise is a conflict.
fn already_registered(existing: Option<&SiteRow>, request: &SiteRegistration) -> Result<bool> {
    match existing {
        None => Ok(false),
        Some(row) if row.parent == request.parent && row.kind == request.kind.name() => Ok(true),
        Some(_) => Err(Error::Conflict(format!(
            "site code {} is already used in the hierarchy",
            request.code
        ))),
    }
}

/// This site and every site below it, with the links to direct children.
pub async fn summaries(state: &AppState) -> Result<Vec<SiteSummary>> {
    let pool = state.db.pool();
    let own = db::own_site(pool).await?;
    let (created_at_ms, parent) = (own.created_at_ms, own.parent_code);
    let pending: HashMap<String, i64> = db::outbox_waiting(pool)
        .await?
        .into_iter()
        .map(|(child, count, _)| (child, count))
        .collect();
    let mut out = vec![SiteSummary {
        code: state.code.to_string(),
        kind: state.kind,
        parent,
        registered_at_ms: created_at_ms,
        last_seen_ms: None,
        max_rate: None,
        bytes_sent: 0,
        pending_instructions: 0,
    }];
    for row in db::subtree(pool).await? {
        out.push(SiteSummary {
            bytes_sent: state.links.bytes_sent(&row.code),
            pending_instructions: pending.get(&row.code).copied().unwrap_or(0) as u64,
            code: row.code,
            kind: SiteKind::parse(&row.kind)?,
            parent: Some(row.parent),
            registered_at_ms: row.registered_at_ms,
            last_seen_ms: row.last_seen_ms,
            max_rate: row.max_rate.map(|rate| rate as u64),
        });
    }
    Ok(out)
}

/// `PUT /api/v1/sites/{code}/link`: the rate limit of content sent to a
/// direct child.
pub async fn set_link(state: &AppState, code: &str, request: &LinkRequest) -> Result<SiteSummary> {
    if request.max_rate == Some(0) {
        return Err(Error::invalid(
            "invalid_rate",
            "a rate limit must be more than 0 bytes per second; give none for no limit",
        ));
    }
    let mut tx = state.db.write().await?;
    let changed = db::set_child_rate(
        &mut tx,
        code,
        state.code.as_str(),
        request.max_rate.map(|rate| rate as i64),
    )
    .await?;
    if !changed {
        let known = db::site_by_code(&mut *tx.tx, code).await?;
        return Err(match known {
            Some(_) => Error::invalid(
                "not_a_direct_child",
                format!(
                    "site {code} is not a direct child of {}; set its link at its parent",
                    state.code
                ),
            ),
            None => Error::not_found(Entity::Site, code),
        });
    }
    tx.commit().await?;
    summaries(state)
        .await?
        .into_iter()
        .find(|summary| summary.code == code)
        .ok_or_else(|| Error::Internal(format!("site {code} vanished")))
}

/// Records that a direct child was heard from.
pub async fn touch(state: &AppState, child: &str) -> Result<()> {
    let mut tx = state.db.write().await?;
    db::touch_site(&mut tx, child, now_ms()).await?;
    Ok(tx.commit().await?)
}

/// Queues for a new child everything it must know to catch up: every
/// package version's manifest, the collections, the DP groups and their
/// distributions, and the jobs still active. Returns how many.
pub async fn snapshot(tx: &mut WriteTx<'_>, child: &str) -> Result<usize> {
    let mut instructions = Vec::new();
    let versions = db::all_manifests(&mut *tx.tx).await?;
    for (package, version, manifest, signature) in versions {
        let signed = SignedManifest {
            bytes: manifest,
            signature: signature.try_into().map_err(|_| {
                Error::Internal(format!(
                    "stored signature of {package} v{version} is damaged"
                ))
            })?,
        };
        instructions.push(Instruction::PackageVersion {
            package,
            version: version as u64,
            manifest: SignedManifestWire::from_signed(&signed),
        });
    }
    for (name, machines, rule) in db::all_collections(&mut *tx.tx).await? {
        instructions.push(Instruction::Collection {
            name,
            machines,
            rule,
        });
    }
    instructions.extend(groups::snapshot(tx).await?);
    instructions.extend(jobs::snapshot(tx).await?);
    for instruction in &instructions {
        let body = serde_json::to_string(instruction).map_err(Error::json("encoding JSON"))?;
        send::queue(tx, child, instruction, &body).await?;
    }
    Ok(instructions.len())
}
