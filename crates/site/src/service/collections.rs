//! Collections: listed workstations or a rule over their attributes,
//! created at the central site and applied at every site, whose membership
//! follows agents as they enroll or change.

use crate::db::{self, Membership, WriteTx};
use crate::error::{Entity, Error, Result};
use crate::service::{jobs, send};
use crate::state::AppState;
use cascade_domain::rule::Rule;
use cascade_domain::validate_name;
use cascade_protocol::{CollectionInfo, CollectionRequest, Instruction, WindowSpec};
use cascade_store::now_ms;

/// Creates a collection at the central site: listed workstations (each
/// enrolled somewhere in the hierarchy, unless `allow_unknown`) or a rule.
pub async fn create(state: &AppState, request: &CollectionRequest) -> Result<CollectionInfo> {
    state.require_central("creating collections")?;
    let (machines, rule) = definition(state, request).await?;
    let mut tx = state.db.write().await?;
    if db::collection_id(&mut *tx.tx, &request.name)
        .await?
        .is_some()
    {
        return Err(Error::Conflict(format!(
            "collection {} already exists",
            request.name
        )));
    }
    store_and_send(state, &mut tx, &request.name, machines, rule).await?;
    let info = collection_info(state, &mut tx, &request.name).await?;
    tx.commit().await?;
    state.notify_outbox_changed();
    Ok(info)
}

/// Changes a collection's definition at the central site (`machines` or
/// `rule`, checked as at creation): the new definition flows down like any
/// instruction, and every open job for the collection is signed again with
/// it as its target, so that its workstations everywhere follow
/// (`jobs::retarget`): a new member is offered the job, one no longer in
/// it is not (a run under way finishes).
pub async fn edit(state: &AppState, request: &CollectionRequest) -> Result<CollectionInfo> {
    state.require_central("changing collections")?;
    let (machines, rule) = definition(state, request).await?;
    let mut tx = state.db.write().await?;
    let id = db::collection_id(&mut *tx.tx, &request.name)
        .await?
        .ok_or_else(|| Error::not_found(Entity::Collection, &request.name))?;
    store_and_send(state, &mut tx, &request.name, machines, rule).await?;
    let jobs = jobs::retarget(state, &mut tx, id).await?;
    let info = collection_info(state, &mut tx, &request.name).await?;
    tx.commit().await?;
    state.notify_everything();
    tracing::info!(collection = %request.name, jobs, "collection changed");
    Ok(info)
}

/// Stores a collection's definition made here and passes it down.
async fn store_and_send(
    state: &AppState,
    tx: &mut WriteTx<'_>,
    name: &str,
    machines: Option<Vec<String>>,
    rule: Option<String>,
) -> Result<()> {
    apply_collection(tx, name, machines.clone(), rule.clone()).await?;
    let instruction = Instruction::Collection {
        name: name.to_owned(),
        machines,
        rule,
    };
    send::send_down(state, tx, &instruction).await
}

/// A collection's definition as a request gives it: listed workstations
/// (each enrolled somewhere in the hierarchy, unless `allow_unknown`) or a
/// rule that parses.
async fn definition(
    state: &AppState,
    request: &CollectionRequest,
) -> Result<(Option<Vec<String>>, Option<String>)> {
    validate_name("collection name", &request.name)?;
    Ok(match (&request.rule, request.machines.is_empty()) {
        (Some(_), false) => {
            return Err(Error::invalid(
                "conflicting_members",
                "give either --machines or --rule, not both",
            ))
        }
        (None, true) => {
            return Err(Error::invalid(
                "no_members",
                "give --machines a,b,c or --rule RULE",
            ));
        }
        (Some(text), true) => {
            Rule::parse(text)?;
            (None, Some(text.clone()))
        }
        (None, false) => {
            let mut unknown = Vec::new();
            for machine in &request.machines {
                validate_name("machine name", machine)?;
                if !db::agent_known(state.db.pool(), machine).await? {
                    unknown.push(machine.as_str());
                }
            }
            if !unknown.is_empty() && !request.allow_unknown {
                return Err(Error::invalid(
                    "unknown_machines",
                    format!(
                        "no workstation named {} is enrolled at {} or below; check the names, or pass --allow-unknown to name workstations before they enroll",
                        unknown.join(", "),
                        state.code
                    ),
                ));
            }
            (Some(request.machines.clone()), None)
        }
    })
}

/// Stores a collection (replacing one of the same name: applying it twice
/// changes nothing).
pub async fn apply_collection(
    tx: &mut WriteTx<'_>,
    name: &str,
    machines: Option<Vec<String>>,
    rule: Option<String>,
) -> Result<()> {
    validate_name("collection name", name)?;
    if let Some(rule) = &rule {
        Rule::parse(rule)?;
    }
    if machines.is_some() == rule.is_some() {
        return Err(Error::invalid(
            "conflicting_members",
            format!("collection {name} needs either machines or a rule"),
        ));
    }
    db::upsert_collection(tx, name, machines.as_deref(), rule.as_deref(), now_ms()).await
}

/// A collection and its members now.
async fn collection_info(
    state: &AppState,
    tx: &mut WriteTx<'_>,
    name: &str,
) -> Result<CollectionInfo> {
    let (machines, rule) = db::collection_definition(&mut *tx.tx, name)
        .await?
        .ok_or_else(|| Error::not_found(Entity::Collection, name))?;
    let id = db::collection_id(&mut *tx.tx, name)
        .await?
        .ok_or_else(|| Error::not_found(Entity::Collection, name))?;
    let windows = db::collection_windows(&mut *tx.tx, id).await?;
    let agents = db::all_agents(&mut *tx.tx).await?;
    let membership = Membership::new(machines.clone(), rule.as_deref())?;
    let members = agents
        .iter()
        .filter(|agent| membership.contains(&state.code.to_string(), agent))
        .map(|agent| agent.name.clone())
        .collect();
    let mut not_enrolled = Vec::new();
    for machine in machines.iter().flatten() {
        if !db::agent_known(&mut *tx.tx, machine).await? {
            not_enrolled.push(machine.clone());
        }
    }
    Ok(CollectionInfo {
        name: name.to_owned(),
        machines,
        rule,
        members,
        not_enrolled,
        windows,
    })
}

/// Most maintenance windows a collection holds.
const MAX_WINDOWS: usize = 32;

/// Adds a maintenance window to a collection (central site only): jobs
/// made for it afterwards carry its windows in their signed intent.
pub async fn add_window(
    state: &AppState,
    name: &str,
    window: &WindowSpec,
) -> Result<CollectionInfo> {
    state.require_central("changing maintenance windows")?;
    window
        .resolve()
        .map_err(|reason| Error::invalid("invalid_window", reason))?;
    let mut tx = state.db.write().await?;
    let id = db::collection_id(&mut *tx.tx, name)
        .await?
        .ok_or_else(|| Error::not_found(Entity::Collection, name))?;
    let mut windows = db::collection_windows(&mut *tx.tx, id).await?;
    if windows.len() >= MAX_WINDOWS {
        return Err(Error::invalid(
            "too_many_windows",
            format!("collection {name} holds {MAX_WINDOWS} windows, the most it may"),
        ));
    }
    windows.push(window.clone());
    db::set_collection_windows(&mut tx, id, &windows).await?;
    let info = collection_info(state, &mut tx, name).await?;
    tx.commit().await?;
    tracing::info!(collection = name, start = %window.start, zone = %window.zone, "maintenance window added");
    Ok(info)
}

/// Removes every maintenance window of a collection (central site only).
pub async fn clear_windows(state: &AppState, name: &str) -> Result<CollectionInfo> {
    state.require_central("changing maintenance windows")?;
    let mut tx = state.db.write().await?;
    let id = db::collection_id(&mut *tx.tx, name)
        .await?
        .ok_or_else(|| Error::not_found(Entity::Collection, name))?;
    db::set_collection_windows(&mut tx, id, &[]).await?;
    let info = collection_info(state, &mut tx, name).await?;
    tx.commit().await?;
    tracing::info!(collection = name, "maintenance windows cleared");
    Ok(info)
}

/// Every collection with its members now.
pub async fn list(state: &AppState) -> Result<Vec<CollectionInfo>> {
    let names = db::collection_names(state.db.pool()).await?;
    // Read in one transaction so every collection sees the same agents.
    let mut tx = state.db.write().await?;
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        out.push(collection_info(state, &mut tx, &name).await?);
    }
    tx.commit().await?;
    Ok(out)
}

/// One collection with its members now.
pub async fn show(state: &AppState, name: &str) -> Result<CollectionInfo> {
    let mut tx = state.db.write().await?;
    let info = collection_info(state, &mut tx, name).await?;
    tx.commit().await?;
    Ok(info)
}
