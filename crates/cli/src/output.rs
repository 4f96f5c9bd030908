//! What the CLI prints: tables for people, one JSON document with `-o json`.

use crate::ingest::IngestReport;
use anyhow::Result;
use cascade_protocol::*;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, UNIX_EPOCH};

/// The chosen output format.
#[derive(Clone, Copy)]
pub struct Output {
    /// `-o json`.
    pub json: bool,
}

/// A time for people: RFC 3339 to the second, UTC.
pub fn time(ms: i64) -> String {
    if ms <= 0 {
        return "-".to_owned();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms as u64)).to_string()
}

/// Bytes for people.
pub fn bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

fn print_json<T: Serialize>(value: &T) {
    outln!(
        "{}",
        serde_json::to_string_pretty(value).expect("serializable")
    );
}

fn opt(value: Option<u64>) -> String {
    value.map_or("-".to_owned(), |v| v.to_string())
}

/// Members listed in a table cell, at most [`MEMBERS_SHOWN`] of them.
fn member_list(members: &[String]) -> String {
    if members.len() <= MEMBERS_SHOWN {
        return members.join(",");
    }
    format!(
        "{},... ({} more; -o json lists all)",
        members[..MEMBERS_SHOWN].join(","),
        members.len() - MEMBERS_SHOWN
    )
}

/// Members of a collection a table shows by name.
const MEMBERS_SHOWN: usize = 20;

/// Prints rows as aligned columns: a header line, then a line per row,
/// columns two spaces apart, no borders. Cells are padded by their display
/// width (a CJK character takes two columns) by `comfy-table`; on a
/// terminal, wide tables wrap their cells to its width.
fn table(header: &[&str], rows: &[Vec<String>]) {
    outln!("{}", render_table(header, rows, terminal_width()));
}

/// The text of [`table`], wrapped to `width` columns if given.
fn render_table(header: &[&str], rows: &[Vec<String>], width: Option<u16>) -> String {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    table.set_header(header.iter().copied());
    for row in rows {
        table.add_row(row.iter().map(String::as_str));
    }
    match width {
        Some(width) => {
            table.set_content_arrangement(comfy_table::ContentArrangement::Dynamic);
            table.set_width(width);
        }
        None => {
            table.set_content_arrangement(comfy_table::ContentArrangement::Disabled);
        }
    }
    let last = header.len().saturating_sub(1);
    for (index, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, if index < last { 2 } else { 0 }));
    }
    table
        .lines()
        .map(|line| line.trim_end().to_owned())
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The width of the terminal stdout is, or `None` when it is not one (a
/// pipe or a file: lines are not wrapped there).
fn terminal_width() -> Option<u16> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        return None;
    }
    // SAFETY: `winsize` is plain integers, for which all zeroes is valid.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ fills a plain `winsize` struct we own.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    (ok && size.ws_col > 0).then_some(size.ws_col)
}

impl Output {
    pub fn site_init(&self, report: &cascade_site::InitReport) {
        if self.json {
            print_json(&serde_json::json!({
                "dir": report.dir,
                "site": report.code,
                "admin_token": report.admin_token,
                "join_token": report.join_token,
                "dp_join_token": report.dp_join_token,
                "site_join_token": report.site_join_token,
                "public_key": report.public_key,
                "certificate": report.certificate,
                "kind": report.kind.name(),
                "parent": report.parent,
            }));
            return;
        }
        match &report.parent {
            Some(parent) => outln!(
                "created {} site {} under {parent} in {}",
                report.kind,
                report.code,
                report.dir.display()
            ),
            None => outln!(
                "created central site {} in {}",
                report.code,
                report.dir.display()
            ),
        }
        outln!(
            "admin token: {}   (also in {}/admin.token)",
            report.admin_token,
            report.dir.display()
        );
        outln!(
            "join token:  {}   (workstations' agents; also in {}/join.token)",
            report.join_token,
            report.dir.display()
        );
        outln!(
            "dp join token: {}   (DPs, admitted with `cascade dp approve`; also in {}/dp-join.token)",
            report.dp_join_token,
            report.dir.display()
        );
        outln!(
            "site join token: {}   (child sites; also in {}/site-join.token)",
            report.site_join_token,
            report.dir.display()
        );
        match report.parent {
            Some(_) => outln!(
                "central key: {}   (every manifest is checked against it)",
                report.public_key
            ),
            None => outln!("signing key: {}", report.public_key),
        }
        outln!(
            "TLS certificate: {}   (SHA-256; every token above pins it; {}/tls/cert.pem)",
            report.certificate,
            report.dir.display()
        );
        outln!("next: cascade site run {}", report.dir.display());
    }

    pub fn listening(&self, what: &str, url: &str) {
        if self.json {
            print_json(&serde_json::json!({ "role": what, "url": url }));
        } else {
            outln!("{what} listening on {url}");
        }
    }

    /// What `dp init` and `agent init` print. `approved` is `None` for a DP.
    pub fn enrolled(
        &self,
        what: &str,
        dir: &Path,
        enrollment: &Enrollment,
        file: &str,
        approved: Option<bool>,
    ) {
        if self.json {
            let mut value = serde_json::json!({
                "dir": dir,
                what: enrollment.name,
                "site": enrollment.site_code,
                "site_url": enrollment.site_url,
            });
            if let Some(approved) = approved {
                value["approved"] = approved.into();
            }
            return print_json(&value);
        }
        outln!(
            "enrolled {what} {} with site {} ({}); credential stored in {}/{file}",
            enrollment.name,
            enrollment.site_code,
            enrollment.site_url,
            dir.display()
        );
        if approved == Some(false) {
            outln!(
                "the site requires approval: cascade agent approve {}",
                enrollment.name
            );
        }
        outln!("next: cascade {what} run {}", dir.display());
    }

    pub fn settings(&self, settings: &SiteSettings) {
        if self.json {
            return print_json(settings);
        }
        outln!("require approval:    {}", settings.require_approval);
        outln!(
            "agent poll interval: {}",
            humantime::format_duration(Duration::from_millis(settings.agent_poll_interval_ms))
        );
        outln!(
            "timestamp validity:  {}",
            humantime::format_duration(Duration::from_millis(settings.timestamp_validity_ms))
        );
        outln!("keep versions:       {}", settings.keep_versions);
    }

    /// One site: an object under `-o json`, a one-row table for people.
    pub fn site(&self, site: &SiteSummary) {
        if self.json {
            return print_json(site);
        }
        self.sites(std::slice::from_ref(site));
    }

    /// One DP group: an object under `-o json`.
    pub fn dp_group(&self, group: &DpGroupInfo) {
        if self.json {
            return print_json(group);
        }
        self.dp_groups(std::slice::from_ref(group));
    }

    /// One agent: an object under `-o json`.
    pub fn agent(&self, agent: &AgentInfo) {
        if self.json {
            return print_json(agent);
        }
        self.agents(std::slice::from_ref(agent));
    }

    /// One collection: an object under `-o json`.
    pub fn collection(&self, collection: &CollectionInfo) {
        if self.json {
            return print_json(collection);
        }
        self.collections(std::slice::from_ref(collection));
    }

    /// A rotated token: `{role, token, file}` under `-o json`.
    pub fn rotated(&self, role: &str, token: &str, file: &Path) {
        if self.json {
            return print_json(&serde_json::json!({
                "role": role,
                "token": token,
                "file": file,
            }));
        }
        outln!(
            "new {role} token (the old one is revoked), written to {}:",
            file.display()
        );
        outln!("{token}");
    }

    /// One job: an object under `-o json`.
    pub fn job(&self, job: &JobInfo) {
        if self.json {
            return print_json(job);
        }
        self.jobs(std::slice::from_ref(job));
    }

    /// A command's failure on stderr: `error: ` and the whole chain of
    /// causes, or under `-o json` one object
    /// `{"error": {"code", "message", "status"}}` — `code` and `status`
    /// those of the site's refusal, else a code of the CLI's own
    /// (`bad_url`, `unreachable`, `bad_answer`, `failed`) and `status` null.
    pub fn error(&self, err: &anyhow::Error) {
        let message = format!("{err:#}");
        if !self.json {
            errln!("error: {message}");
            return;
        }
        let protocol = err.chain().find_map(|cause| cause.downcast_ref::<Error>());
        let (code, status) = match protocol {
            Some(Error::Refused { code, status, .. }) => (code.as_str(), Some(*status)),
            Some(Error::BadUrl { .. }) => ("bad_url", None),
            Some(Error::Unreachable { .. }) => ("unreachable", None),
            Some(Error::BadAnswer { .. } | Error::Frame(_)) => ("bad_answer", None),
            None => ("failed", None),
        };
        let body = serde_json::json!({
            "error": { "code": code, "message": message, "status": status }
        });
        errln!(
            "{}",
            serde_json::to_string_pretty(&body).expect("serializable")
        );
    }

    pub fn agents(&self, agents: &[AgentInfo]) {
        if self.json {
            return print_json(&agents);
        }
        let rows: Vec<Vec<String>> = agents
            .iter()
            .map(|agent| {
                let tags: Vec<String> = agent
                    .report
                    .tags
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let reach = match agent.unreachable_since_ms {
                    Some(since) => format!("unreachable since {}", time(since)),
                    None => agent.reachability.to_string(),
                };
                vec![
                    agent.name.clone(),
                    format!("{}/{}", agent.report.os, agent.report.arch),
                    agent.report.hostname.clone(),
                    tags.join(","),
                    if agent.approved {
                        "yes".into()
                    } else {
                        "waiting".into()
                    },
                    reach,
                    agent.last_seen_ms.map_or("never".into(), time),
                ]
            })
            .collect();
        table(
            &[
                "AGENT",
                "OS",
                "HOSTNAME",
                "TAGS",
                "APPROVED",
                "REACHABILITY",
                "LAST SEEN",
            ],
            &rows,
        );
    }

    pub fn collections(&self, collections: &[CollectionInfo]) {
        if self.json {
            return print_json(&collections);
        }
        let rows: Vec<Vec<String>> = collections
            .iter()
            .map(|collection| {
                let mut definition = match (&collection.machines, &collection.rule) {
                    (Some(machines), _) => format!("machines {}", machines.join(",")),
                    (None, Some(rule)) => format!("rule {rule}"),
                    (None, None) => "-".into(),
                };
                if !collection.not_enrolled.is_empty() {
                    definition.push_str(&format!(
                        " (not enrolled: {})",
                        collection.not_enrolled.join(",")
                    ));
                }
                let windows = collection
                    .windows
                    .iter()
                    .map(window_text)
                    .collect::<Vec<_>>()
                    .join("; ");
                vec![
                    collection.name.clone(),
                    definition,
                    collection.members.len().to_string(),
                    member_list(&collection.members),
                    if windows.is_empty() {
                        "any time".into()
                    } else {
                        windows
                    },
                ]
            })
            .collect();
        table(
            &["COLLECTION", "DEFINITION", "COUNT", "MEMBERS", "WINDOWS"],
            &rows,
        );
    }

    pub fn offers(&self, offers: &[JobOffer]) {
        if self.json {
            return print_json(&offers);
        }
        let rows: Vec<Vec<String>> = offers
            .iter()
            .map(|offer| {
                vec![
                    offer.id.to_string(),
                    format!("{} v{}", offer.package, offer.version),
                    if offer.optional {
                        "optional".into()
                    } else {
                        "mandatory".into()
                    },
                    time(offer.offer_at_ms),
                    offer.expires_at_ms.map_or("-".into(), time),
                    offer.command.clone(),
                ]
            })
            .collect();
        table(
            &["JOB", "PACKAGE", "KIND", "OFFERED", "EXPIRES", "COMMAND"],
            &rows,
        );
    }

    pub fn jobs(&self, jobs: &[JobInfo]) {
        if self.json {
            return print_json(&jobs);
        }
        let rows: Vec<Vec<String>> = jobs
            .iter()
            .map(|job| {
                vec![
                    job.offer.id.to_string(),
                    job.state.to_string(),
                    job.outcome
                        .map_or("-", JobOutcome::as_str)
                        .replace('_', " "),
                    format!("{} v{}", job.offer.package, job.offer.version),
                    job.collection.clone(),
                    time(job.offer.offer_at_ms),
                    job.offer.expires_at_ms.map_or("-".into(), time),
                    job.offer.rerun.to_string(),
                    job.offer.command.clone(),
                ]
            })
            .collect();
        table(
            &[
                "JOB",
                "STATE",
                "OUTCOME",
                "PACKAGE",
                "COLLECTION",
                "OFFER AT",
                "EXPIRES",
                "RERUN",
                "COMMAND",
            ],
            &rows,
        );
    }

    pub fn job_status(&self, status: &JobStatus) {
        if self.json {
            return print_json(status);
        }
        let job = &status.job;
        outln!(
            "job {} ({}, {})  {} v{} on {}: {}",
            job.offer.id,
            job.state,
            status.outcome.as_str().replace('_', " "),
            job.offer.package,
            job.offer.version,
            job.collection,
            job.offer.command
        );
        if let Some(group) = &job.dp_group {
            outln!("distributes to dp group {group}");
        }
        let rows: Vec<Vec<String>> = status.sites.iter().map(site_job_row).collect();
        table(
            &["SITE", "INSTRUCTION", "TARGETS", "DISTRIBUTION", "RUNS"],
            &rows,
        );
        outln!("workstations: {}", counts(&status.counts));
        let rows: Vec<Vec<String>> = status
            .workstations
            .iter()
            .map(|ws| {
                let mut flags = Vec::new();
                if let Some(at) = ws.expired_at_ms {
                    flags.push(format!("expired {}", time(at)));
                }
                if let Some(at) = ws.canceled_at_ms {
                    flags.push(format!("canceled {}", time(at)));
                }
                if let Some(at) = ws.unreachable_since_ms {
                    flags.push(format!("unreachable since {}", time(at)));
                }
                if ws.state == WorkstationState::WaitingForWindow {
                    flags.push(match ws.window_opens_at_ms {
                        Some(at) => format!("window opens {}", time(at)),
                        None => "no window is long enough for its timeout".into(),
                    });
                }
                if ws.state == WorkstationState::Held {
                    flags.push("held until a current central timestamp arrives".into());
                }
                vec![
                    ws.site.clone(),
                    ws.agent.clone(),
                    run_state(ws),
                    ws.exit_code.map_or("-".into(), |code| code.to_string()),
                    ws.attempts.to_string(),
                    time(ws.since_ms),
                    flags.join(", "),
                ]
            })
            .collect();
        table(
            &[
                "SITE",
                "WORKSTATION",
                "STATE",
                "EXIT",
                "ATTEMPTS",
                "SINCE",
                "FLAGS",
            ],
            &rows,
        );
        if !status.distribution.is_empty() {
            outln!("distribution:");
            let rows: Vec<Vec<String>> = status
                .distribution
                .iter()
                .map(|dp| {
                    vec![
                        dp.site.clone(),
                        dp.dp.clone(),
                        opt(dp.installed_version),
                        dp.state.to_string(),
                    ]
                })
                .collect();
            table(&["SITE", "DP", "INSTALLED", "STATE"], &rows);
        }
    }

    /// One workstation of a job in detail.
    pub fn workstation(&self, status: &JobStatus, name: &str) -> Result<()> {
        let Some(ws) = status.workstations.iter().find(|ws| ws.agent == name) else {
            anyhow::bail!(
                "workstation {name:?} is not targeted by job {}",
                status.job.offer.id
            );
        };
        if self.json {
            print_json(ws);
            return Ok(());
        }
        outln!("job {} on {}", status.job.offer.id, ws.agent);
        outln!("state:     {} since {}", run_state(ws), time(ws.since_ms));
        outln!("attempts:  {}", ws.attempts);
        outln!(
            "exit code: {}",
            ws.exit_code.map_or("-".into(), |code| code.to_string())
        );
        if let Some(reason) = &ws.reason {
            outln!("reason:    {reason}");
        }
        if let Some(at) = ws.expired_at_ms {
            outln!("expired:   {}", time(at));
        }
        if let Some(at) = ws.canceled_at_ms {
            outln!("canceled:  {}", time(at));
        }
        if let Some(at) = ws.unreachable_since_ms {
            outln!("unreachable since {}", time(at));
        }
        if let Some(at) = ws.window_opens_at_ms {
            outln!("window:    opens {}", time(at));
        }
        if let Some(tail) = ws.output_tail.as_deref().filter(|tail| !tail.is_empty()) {
            outln!("output (last 4 KiB):");
            out!("{tail}");
            if !tail.ends_with('\n') {
                outln!();
            }
        }
        Ok(())
    }

    pub fn dps(&self, dps: &[DpInfo]) {
        if self.json {
            return print_json(&dps);
        }
        let rows: Vec<Vec<String>> = dps
            .iter()
            .map(|dp| {
                let url = match (&dp.url, &dp.announced_url) {
                    (Some(url), _) if dp.approved => url.clone(),
                    (_, Some(announced)) => format!("waiting for approval (announces {announced})"),
                    _ => "waiting for approval".into(),
                };
                vec![
                    dp.name.clone(),
                    url,
                    dp.packages.to_string(),
                    time(dp.enrolled_at_ms),
                    dp.last_seen_ms.map_or("never".into(), time),
                ]
            })
            .collect();
        table(&["DP", "URL", "PACKAGES", "ENROLLED", "LAST SEEN"], &rows);
    }

    pub fn content_ticket(&self, ticket: &cascade_protocol::ContentTicket) {
        if self.json {
            return print_json(ticket);
        }
        outln!("{}", ticket.ticket);
    }

    pub fn dp_approved(&self, dp: &DpInfo) {
        if self.json {
            return print_json(dp);
        }
        outln!(
            "dp {} approved at {}: agents download from it, and it holds {} package(s)",
            dp.name,
            dp.url.as_deref().unwrap_or("-"),
            dp.packages
        );
    }

    pub fn ingested(&self, report: &IngestReport) {
        if self.json {
            return print_json(report);
        }
        let v = &report.version;
        if v.unchanged {
            outln!(
                "package {} unchanged: version {} already holds this tree, so no version was made (--allow-unchanged makes one)",
                v.package, v.version
            );
            return;
        }
        let (how, bytes_how) = match report.ingest {
            crate::ingest::IngestPath::Upload => ("uploaded", "sent"),
            crate::ingest::IngestPath::Local => ("read and stored by the site", "stored"),
        };
        let unchanged = match report.files_unchanged {
            0 => String::new(),
            n => format!("; {n} files unchanged since the last update, not read again"),
        };
        outln!(
            "package {} version {}: {} files, {}, {} chunks ({} {how}, {} {bytes_how}; {} already stored{unchanged})",
            v.package,
            v.version,
            v.file_count,
            bytes(v.total_size),
            v.chunk_count,
            report.chunks_uploaded,
            bytes(report.bytes_uploaded),
            report.chunks_reused
        );
    }

    pub fn packages(&self, packages: &[PackageSummary]) {
        if self.json {
            return print_json(&packages);
        }
        let rows: Vec<Vec<String>> = packages
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.latest.version.to_string(),
                    p.latest.file_count.to_string(),
                    bytes(p.latest.total_size),
                    p.dp_count.to_string(),
                    time(p.latest.created_at_ms),
                ]
            })
            .collect();
        table(
            &["PACKAGE", "VERSION", "FILES", "SIZE", "DPS", "UPDATED"],
            &rows,
        );
    }

    pub fn package(&self, detail: &PackageDetail) {
        if self.json {
            return print_json(detail);
        }
        outln!("package {}", detail.name);
        let rows: Vec<Vec<String>> = detail
            .versions
            .iter()
            .map(|v| {
                vec![
                    v.version.to_string(),
                    v.file_count.to_string(),
                    bytes(v.total_size),
                    v.chunk_count.to_string(),
                    time(v.created_at_ms),
                    v.retired_at_ms.map_or_else(|| "-".to_owned(), time),
                ]
            })
            .collect();
        table(
            &["VERSION", "FILES", "SIZE", "CHUNKS", "CREATED", "RETIRED"],
            &rows,
        );
        outln!(
            "distributed to: {}",
            if detail.dps.is_empty() {
                "-".to_owned()
            } else {
                detail.dps.join(", ")
            }
        );
        outln!("files of the newest version:");
        for entry in &detail.entries {
            match &entry.kind {
                cascade_content::EntryKind::File { mode, size, .. } => {
                    outln!("  {:o}  {:>10}  {}", mode, bytes(*size), entry.path)
                }
                cascade_content::EntryKind::Dir { mode } => {
                    outln!("  {:o}  {:>10}  {}/", mode, "dir", entry.path)
                }
                cascade_content::EntryKind::Symlink { target } => {
                    outln!("  {:>4}  {:>10}  {} -> {}", "", "link", entry.path, target)
                }
            }
        }
    }

    pub fn targets(&self, verb: &str, report: &TargetReport) {
        if self.json {
            return print_json(report);
        }
        for change in &report.dps {
            let note = match (change.changed, change.version) {
                (false, _) => " (already there: nothing sent)",
                (true, 0) => " (once its content reaches this site)",
                (true, _) => "",
            };
            let version = match change.version {
                0 => String::new(),
                version => format!(" v{version}"),
            };
            outln!("{verb}: {}{version} -> {}{note}", report.package, change.dp);
        }
        if !report.sites.is_empty() {
            outln!(
                "{verb}: {} -> sent on to {} (each applies it to its own DPs)",
                report.package,
                report.sites.join(", ")
            );
        }
    }

    pub fn sites(&self, sites: &[SiteSummary]) {
        if self.json {
            return print_json(&sites);
        }
        let rows: Vec<Vec<String>> = sites
            .iter()
            .map(|site| {
                vec![
                    site.code.clone(),
                    site.kind.to_string(),
                    site.parent.clone().unwrap_or_else(|| "-".into()),
                    time(site.registered_at_ms),
                    site.last_seen_ms.map_or("-".into(), time),
                    site.max_rate
                        .map_or("-".into(), |rate| format!("{}/s", bytes(rate))),
                    bytes(site.bytes_sent),
                    site.pending_instructions.to_string(),
                ]
            })
            .collect();
        table(
            &[
                "SITE",
                "KIND",
                "PARENT",
                "JOINED",
                "LAST SEEN",
                "MAX RATE",
                "SENT",
                "PENDING",
            ],
            &rows,
        );
    }

    pub fn queues(&self, queues: &SiteQueues) {
        if self.json {
            return print_json(queues);
        }
        outln!("site {}", queues.site);
        if let Some(parent) = &queues.parent {
            let contact = parent
                .last_contact_ms
                .map_or("never since start".into(), time);
            match &parent.error {
                Some(error) => outln!(
                    "parent {} ({}): unreachable, last answer {contact}: {error}",
                    parent.code,
                    parent.url
                ),
                None => outln!(
                    "parent {} ({}): last answer {contact}",
                    parent.code,
                    parent.url
                ),
            }
        }
        let now_ms = UNIX_EPOCH.elapsed().unwrap_or_default().as_millis() as i64;
        match &queues.timestamp {
            Some(held) if held.expires_at_ms > now_ms => outln!(
                "central timestamp: signed {}, valid until {}",
                time(held.issued_at_ms),
                time(held.expires_at_ms)
            ),
            Some(held) => outln!(
                "central timestamp: signed {}, EXPIRED {}: agents here start no job until a current one arrives",
                time(held.issued_at_ms),
                time(held.expires_at_ms)
            ),
            None => outln!("central timestamp: none yet: agents here start no job until one arrives"),
        }
        outln!("inbox (from the parent): {} waiting", queues.inbox.len());
        for item in &queues.inbox {
            outln!(
                "  #{} {} (received {}): {}",
                item.seq,
                item.description,
                time(item.received_at_ms),
                item.why
            );
        }
        let pending: u64 = queues.outbox.iter().map(|queue| queue.pending).sum();
        outln!("outbox (to child sites): {pending} waiting");
        for queue in &queues.outbox {
            outln!(
                "  {}: {} since {}: {}",
                queue.child,
                queue.pending,
                queue.oldest_ms.map_or("-".into(), time),
                queue.why
            );
        }
        outln!("content being brought in: {}", queues.content.len());
        for item in &queues.content {
            outln!(
                "  {} v{} for {}: {} missing; {}",
                item.package,
                item.version,
                item.needed_by.join(", "),
                bytes(item.bytes_missing),
                item.why
            );
        }
        if queues.parent.is_some() {
            outln!(
                "status messages not yet relayed up: {}{}",
                queues.status_pending,
                queues
                    .status_oldest_ms
                    .map_or(String::new(), |at| format!(" (oldest {})", time(at)))
            );
        }
    }

    pub fn dp_groups(&self, groups: &[DpGroupInfo]) {
        if self.json {
            return print_json(&groups);
        }
        let rows: Vec<Vec<String>> = groups
            .iter()
            .map(|group| {
                let mut dps = group.dps.join(", ");
                if !group.not_enrolled.is_empty() {
                    dps.push_str(&format!(
                        " (not enrolled: {})",
                        group.not_enrolled.join(", ")
                    ));
                }
                vec![group.name.clone(), dps, time(group.created_at_ms)]
            })
            .collect();
        table(&["GROUP", "DPS", "CREATED"], &rows);
    }

    pub fn history(&self, records: &[StatusRecord]) {
        if self.json {
            return print_json(&records);
        }
        let rows: Vec<Vec<String>> = records
            .iter()
            .map(|record| {
                let detail = serde_json::to_value(&record.body)
                    .ok()
                    .and_then(|value| value.as_object().cloned())
                    .map(|fields| {
                        fields
                            .iter()
                            .filter(|(key, _)| !matches!(key.as_str(), "kind" | "package"))
                            .map(|(key, value)| format!("{key}={value}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default();
                vec![
                    time(record.at_ms),
                    record.source.clone(),
                    record.seq.to_string(),
                    record.body.kind().to_owned(),
                    detail,
                ]
            })
            .collect();
        table(&["TIME", "SOURCE", "SEQ", "KIND", "DETAIL"], &rows);
    }

    pub fn package_status(&self, status: &PackageStatus) {
        if self.json {
            return print_json(status);
        }
        outln!(
            "package {}  newest version {}",
            status.package,
            status.latest_version
        );
        let rows: Vec<Vec<String>> = status
            .dps
            .iter()
            .map(|dp| {
                let detail = match (&dp.reason, dp.bytes_done, dp.bytes_total) {
                    (Some(reason), _, _) => reason.clone(),
                    (None, Some(done), Some(total)) => {
                        format!("{} / {}", bytes(done), bytes(total))
                    }
                    _ => String::new(),
                };
                vec![
                    dp.site.clone(),
                    dp.dp.clone(),
                    opt(dp.target_version),
                    opt(dp.installed_version),
                    dp.state.to_string(),
                    time(dp.since_ms),
                    detail,
                ]
            })
            .collect();
        table(
            &[
                "SITE",
                "DP",
                "TARGET",
                "INSTALLED",
                "STATE",
                "SINCE",
                "DETAIL",
            ],
            &rows,
        );
    }
}

/// `complete 3, failed 1`, or `none`.
fn counts(counts: &BTreeMap<WorkstationState, u64>) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|(state, n)| format!("{state} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One site's line of a job: instruction, targets, distribution, runs.
fn site_job_row(site: &SiteJobStatus) -> Vec<String> {
    let instruction = match (site.arrived_at_ms, &site.reason) {
        (Some(at), _) => format!("arrived {}", time(at)),
        (None, Some(reason)) => format!("refused: {reason}"),
        (None, None) => site.instruction.as_str().replace('_', " "),
    };
    let dps: Vec<String> = site
        .dps
        .iter()
        .map(|dp| match (dp.state, dp.bytes_done, dp.bytes_total) {
            (DpState::Transferring, Some(done), Some(total)) => {
                format!("{} {}/{}", dp.dp, bytes(done), bytes(total))
            }
            (state, _, _) => format!(
                "{} {state}{}",
                dp.dp,
                dp.installed_version
                    .map_or(String::new(), |version| format!(" v{version}"))
            ),
        })
        .collect();
    let distribution = if dps.is_empty() {
        site.distribution.as_str().replace('_', " ")
    } else {
        format!(
            "{} ({})",
            site.distribution.as_str().replace('_', " "),
            dps.join(", ")
        )
    };
    vec![
        site.site.clone(),
        instruction,
        site.targets.to_string(),
        distribution,
        if site.runs.is_empty() {
            "-".into()
        } else {
            counts(&site.runs)
        },
    ]
}

/// True once nothing more will happen to the job on its own: it is
/// complete or failed everywhere, or it expired or was canceled.
pub fn job_finished(status: &JobStatus) -> bool {
    matches!(
        status.outcome,
        JobOutcome::Complete | JobOutcome::Failed | JobOutcome::Canceled | JobOutcome::Expired
    )
}

/// The exit code of `job status --watch`: 0 when the job completed, 3 when
/// it failed, 4 when it was canceled or expired before completing, 5 when
/// the watch gave up with the job still in progress (1 stays for errors of
/// the command itself, 2 for usage errors).
pub fn job_exit_code(status: &JobStatus) -> std::process::ExitCode {
    std::process::ExitCode::from(match status.outcome {
        JobOutcome::Complete => 0,
        JobOutcome::Failed => 3,
        JobOutcome::Canceled | JobOutcome::Expired => 4,
        JobOutcome::InProgress => 5,
    })
}

/// Shows a live line per site of a job until it is finished or `timeout`
/// passes; returns the last status.
pub async fn watch_job(
    client: &Client,
    id: u64,
    timeout: Duration,
    show: bool,
) -> Result<JobStatus> {
    let multi = MultiProgress::new();
    if !show {
        multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template("{prefix:>4} [{bar:24}] {pos}/{len} finished  {msg}")
        .expect("valid template")
        .progress_chars("=> ");
    let mut bars: BTreeMap<String, ProgressBar> = BTreeMap::new();
    let started = Instant::now();
    loop {
        let status = client.job_status(id).await?;
        for site in &status.sites {
            let bar = bars.entry(site.site.clone()).or_insert_with(|| {
                let bar = multi.add(ProgressBar::new(0));
                bar.set_style(style.clone());
                bar.set_prefix(site.site.clone());
                bar
            });
            let finished: u64 = site
                .runs
                .iter()
                .filter(|(state, _)| {
                    matches!(
                        state,
                        WorkstationState::Complete
                            | WorkstationState::Failed
                            | WorkstationState::Skipped
                    )
                })
                .map(|(_, n)| n)
                .sum();
            let row = site_job_row(site);
            bar.set_length(site.targets);
            bar.set_position(finished);
            bar.set_message(format!("{}; distribution {}; {}", row[1], row[3], row[4]));
        }
        if job_finished(&status) || started.elapsed() >= timeout {
            for bar in bars.values() {
                bar.finish();
            }
            let _ = multi.clear();
            return Ok(status);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// True when every DP holds the newest version.
pub fn all_installed(status: &PackageStatus) -> bool {
    !status.dps.is_empty()
        && status.dps.iter().all(|dp| {
            dp.state == DpState::Installed && dp.installed_version == Some(status.latest_version)
        })
}

/// Shows live per-DP progress bars until every DP holds the newest version
/// or `timeout` passes; returns the last status.
pub async fn watch_package(
    client: &Client,
    name: &str,
    timeout: Duration,
    show: bool,
) -> Result<PackageStatus> {
    let multi = MultiProgress::new();
    if !show {
        multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template("{prefix:>12} [{bar:30}] {percent:>3}% {msg}")
        .expect("valid template")
        .progress_chars("=> ");
    let mut bars: BTreeMap<String, ProgressBar> = BTreeMap::new();
    let started = Instant::now();
    loop {
        let status = client.package_status(name).await?;
        for dp in &status.dps {
            let name = format!("{}/{}", dp.site, dp.dp);
            let bar = bars.entry(name.clone()).or_insert_with(|| {
                let bar = multi.add(ProgressBar::new(100));
                bar.set_style(style.clone());
                bar.set_prefix(name);
                bar
            });
            let (position, message) = match (dp.state, dp.bytes_done, dp.bytes_total) {
                (DpState::Installed, _, _) => {
                    (100, format!("installed v{}", opt(dp.installed_version)))
                }
                (DpState::Transferring, Some(done), Some(total)) if total > 0 => (
                    done * 100 / total,
                    format!(
                        "transferring v{}: {} / {}",
                        opt(dp.target_version),
                        bytes(done),
                        bytes(total)
                    ),
                ),
                (state, _, _) => (
                    0,
                    match &dp.reason {
                        Some(reason) => format!("{state}: {reason}"),
                        None => format!("{state} v{}", opt(dp.target_version)),
                    },
                ),
            };
            bar.set_position(position);
            bar.set_message(message);
        }
        if all_installed(&status) || started.elapsed() >= timeout {
            for bar in bars.values() {
                bar.finish();
            }
            let _ = multi.clear();
            return Ok(status);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A maintenance window in a table: `2026-12-08T22:00:00 Europe/Paris for
/// 4h, every 1 day`.
fn window_text(window: &cascade_protocol::WindowSpec) -> String {
    let lasts = humantime::format_duration(std::time::Duration::from_millis(window.duration_ms));
    let every = match window.every_days {
        Some(1) => ", every day".to_owned(),
        Some(7) => ", every week".to_owned(),
        Some(days) => format!(", every {days} days"),
        None => ", once".to_owned(),
    };
    format!("{} {} for {lasts}{every}", window.start, window.zone)
}

/// A workstation's state, with the bytes so far while it downloads
/// (`downloading 312.0 MiB/1.0 GiB`).
fn run_state(ws: &cascade_protocol::WorkstationStatus) -> String {
    match (ws.bytes_done, ws.bytes_total) {
        (Some(done), Some(total)) if ws.state == WorkstationState::Downloading => {
            format!("downloading {}/{}", bytes(done), bytes(total))
        }
        _ => ws.state.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cell_wider_than_a_format_width_prints() {
        // `{:width$}` panics past 65,535 columns; a collection of 200,000
        // workstations once made `collection create` panic.
        let wide = "x".repeat(70_000);
        table(&["A", "B"], &[vec![wide.clone(), "y".into()]]);
        let text = render_table(&["A", "B"], &[vec![wide, "y".into()]], None);
        assert!(text.lines().nth(1).unwrap().ends_with("xx  y"));
    }

    #[test]
    fn tables_are_plain_and_pad_by_display_width() {
        let text = render_table(
            &["AGENT", "TAGS", "APPROVED"],
            &[
                vec!["tokyo1".into(), "loc=東京本社".into(), "yes".into()],
                vec!["paris1".into(), "loc=paris".into(), "waiting".into()],
            ],
            None,
        );
        assert_eq!(
            text,
            "AGENT   TAGS          APPROVED\n\
             tokyo1  loc=東京本社  yes\n\
             paris1  loc=paris     waiting"
        );
    }

    #[test]
    fn tables_wrap_to_the_terminal_width() {
        let long = "word ".repeat(40);
        let text = render_table(&["A", "TEXT"], &[vec!["a".into(), long]], Some(80));
        assert!(text.lines().count() > 2, "{text}");
        for line in text.lines() {
            assert!(line.chars().count() <= 80, "{line:?}");
        }
    }

    #[test]
    fn long_member_lists_are_cut() {
        let few: Vec<String> = (0..3).map(|i| format!("ws{i}")).collect();
        assert_eq!(member_list(&few), "ws0,ws1,ws2");
        let many: Vec<String> = (0..25).map(|i| format!("ws{i}")).collect();
        let shown = member_list(&many);
        assert!(shown.starts_with("ws0,ws1,"));
        assert!(
            shown.ends_with(",... (5 more; -o json lists all)"),
            "{shown}"
        );
    }
}
