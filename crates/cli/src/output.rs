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
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("serializable")
    );
}

fn opt(value: Option<u64>) -> String {
    value.map_or("-".to_owned(), |v| v.to_string())
}

/// Prints rows as aligned columns.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

impl Output {
    pub fn site_init(&self, report: &cascade_site::InitReport) {
        if self.json {
            print_json(&serde_json::json!({
                "dir": report.dir,
                "code": report.code,
                "admin_token": report.admin_token,
                "join_token": report.join_token,
                "public_key": report.public_key,
            }));
            return;
        }
        println!("created site {} in {}", report.code, report.dir.display());
        println!(
            "admin token: {}   (also in {}/admin.token)",
            report.admin_token,
            report.dir.display()
        );
        println!(
            "join token:  {}   (also in {}/join.token)",
            report.join_token,
            report.dir.display()
        );
        println!("signing key: {}", report.public_key);
        println!("next: cascade site run {}", report.dir.display());
    }

    pub fn listening(&self, what: &str, url: &str) {
        if self.json {
            print_json(&serde_json::json!({ "role": what, "url": url }));
        } else {
            println!("{what} listening on {url}");
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
                "name": enrollment.name,
                "site": enrollment.site_code,
                "site_url": enrollment.site_url,
            });
            if let Some(approved) = approved {
                value["approved"] = approved.into();
            }
            return print_json(&value);
        }
        println!(
            "enrolled {what} {} with site {} ({}); credential stored in {}/{file}",
            enrollment.name,
            enrollment.site_code,
            enrollment.site_url,
            dir.display()
        );
        if approved == Some(false) {
            println!(
                "the site requires approval: cascade agent approve {}",
                enrollment.name
            );
        }
        println!("next: cascade {what} run {}", dir.display());
    }

    pub fn settings(&self, settings: &SiteSettings) {
        if self.json {
            return print_json(settings);
        }
        println!("require approval:    {}", settings.require_approval);
        println!(
            "agent poll interval: {}",
            humantime::format_duration(Duration::from_millis(settings.agent_poll_interval_ms))
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
                    None => agent.reachability.clone(),
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
                let definition = match (&collection.machines, &collection.rule) {
                    (Some(machines), _) => format!("machines {}", machines.join(",")),
                    (None, Some(rule)) => format!("rule {rule}"),
                    (None, None) => "-".into(),
                };
                vec![
                    collection.name.clone(),
                    definition,
                    collection.members.len().to_string(),
                    collection.members.join(","),
                ]
            })
            .collect();
        table(&["COLLECTION", "DEFINITION", "COUNT", "MEMBERS"], &rows);
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
                    job.state.clone(),
                    format!("{} v{}", job.offer.package, job.offer.version),
                    job.collection.clone(),
                    time(job.offer.offer_at_ms),
                    job.offer.expires_at_ms.map_or("-".into(), time),
                    job.offer.command.clone(),
                ]
            })
            .collect();
        table(
            &[
                "JOB",
                "STATE",
                "PACKAGE",
                "COLLECTION",
                "OFFER AT",
                "EXPIRES",
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
        println!(
            "job {} ({})  {} v{} on {}: {}",
            job.offer.id,
            job.state,
            job.offer.package,
            job.offer.version,
            job.collection,
            job.offer.command
        );
        let counts: Vec<String> = status
            .counts
            .iter()
            .map(|(state, n)| format!("{state} {n}"))
            .collect();
        println!(
            "workstations: {}",
            if counts.is_empty() {
                "none".into()
            } else {
                counts.join(", ")
            }
        );
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
                vec![
                    ws.agent.clone(),
                    ws.state.clone(),
                    ws.exit_code.map_or("-".into(), |code| code.to_string()),
                    ws.attempts.to_string(),
                    time(ws.since_ms),
                    flags.join(", "),
                ]
            })
            .collect();
        table(
            &["WORKSTATION", "STATE", "EXIT", "ATTEMPTS", "SINCE", "FLAGS"],
            &rows,
        );
        if !status.distribution.is_empty() {
            println!("distribution:");
            let rows: Vec<Vec<String>> = status
                .distribution
                .iter()
                .map(|dp| vec![dp.dp.clone(), opt(dp.installed_version), dp.state.clone()])
                .collect();
            table(&["DP", "INSTALLED", "STATE"], &rows);
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
        println!("job {} on {}", status.job.offer.id, ws.agent);
        println!("state:     {} since {}", ws.state, time(ws.since_ms));
        println!("attempts:  {}", ws.attempts);
        println!(
            "exit code: {}",
            ws.exit_code.map_or("-".into(), |code| code.to_string())
        );
        if let Some(reason) = &ws.reason {
            println!("reason:    {reason}");
        }
        if let Some(at) = ws.expired_at_ms {
            println!("expired:   {}", time(at));
        }
        if let Some(at) = ws.canceled_at_ms {
            println!("canceled:  {}", time(at));
        }
        if let Some(at) = ws.unreachable_since_ms {
            println!("unreachable since {}", time(at));
        }
        if let Some(tail) = ws.output_tail.as_deref().filter(|tail| !tail.is_empty()) {
            println!("output (last 4 KiB):");
            print!("{tail}");
            if !tail.ends_with('\n') {
                println!();
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
                vec![
                    dp.name.clone(),
                    dp.url.clone().unwrap_or_else(|| "-".into()),
                    dp.packages.to_string(),
                    time(dp.enrolled_at_ms),
                    dp.last_seen_ms.map_or("never".into(), time),
                ]
            })
            .collect();
        table(&["DP", "URL", "PACKAGES", "ENROLLED", "LAST SEEN"], &rows);
    }

    pub fn ingested(&self, report: &IngestReport) {
        if self.json {
            return print_json(report);
        }
        let v = &report.version;
        println!(
            "package {} version {}: {} files, {}, {} chunks ({} uploaded, {} sent; {} already stored)",
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
        println!("package {}", detail.name);
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
                ]
            })
            .collect();
        table(&["VERSION", "FILES", "SIZE", "CHUNKS", "CREATED"], &rows);
        println!(
            "distributed to: {}",
            if detail.dps.is_empty() {
                "-".to_owned()
            } else {
                detail.dps.join(", ")
            }
        );
        println!("files of the newest version:");
        for entry in &detail.entries {
            match &entry.kind {
                cascade_content::EntryKind::File { mode, size, .. } => {
                    println!("  {:o}  {:>10}  {}", mode, bytes(*size), entry.path)
                }
                cascade_content::EntryKind::Dir { mode } => {
                    println!("  {:o}  {:>10}  {}/", mode, "dir", entry.path)
                }
                cascade_content::EntryKind::Symlink { target } => {
                    println!("  {:>4}  {:>10}  {} -> {}", "", "link", entry.path, target)
                }
            }
        }
    }

    pub fn targets(&self, verb: &str, report: &TargetReport) {
        if self.json {
            return print_json(report);
        }
        for change in &report.dps {
            let note = if change.changed {
                ""
            } else {
                " (already there: nothing sent)"
            };
            println!(
                "{verb}: {} v{} -> {}{note}",
                report.package, change.version, change.dp
            );
        }
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
        println!(
            "package {}  newest version {}",
            status.package, status.latest_version
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
                    dp.dp.clone(),
                    opt(dp.target_version),
                    opt(dp.installed_version),
                    dp.state.clone(),
                    time(dp.since_ms),
                    detail,
                ]
            })
            .collect();
        table(
            &["DP", "TARGET", "INSTALLED", "STATE", "SINCE", "DETAIL"],
            &rows,
        );
    }
}

/// True once nothing more will happen to the job on its own: every
/// workstation finished, or the job expired or was canceled.
pub fn job_finished(status: &JobStatus) -> bool {
    matches!(status.job.state.as_str(), "expired" | "canceled")
        || (!status.workstations.is_empty()
            && status
                .workstations
                .iter()
                .all(|ws| matches!(ws.state.as_str(), "complete" | "failed")))
}

/// Shows a live progress bar of a job until it is finished or `timeout`
/// passes; returns the last status.
pub async fn watch_job(
    client: &Client,
    id: u64,
    timeout: Duration,
    show: bool,
) -> Result<JobStatus> {
    let bar = if show {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("job {prefix} [{bar:30}] {pos}/{len} finished  {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(id.to_string());
    let started = Instant::now();
    loop {
        let status = client.job_status(id).await?;
        let finished = status
            .workstations
            .iter()
            .filter(|ws| matches!(ws.state.as_str(), "complete" | "failed"))
            .count();
        bar.set_length(status.workstations.len() as u64);
        bar.set_position(finished as u64);
        let counts: Vec<String> = status
            .counts
            .iter()
            .map(|(state, n)| format!("{state} {n}"))
            .collect();
        bar.set_message(counts.join(", "));
        if job_finished(&status) || started.elapsed() >= timeout {
            bar.finish_and_clear();
            return Ok(status);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// True when every DP holds the newest version.
pub fn all_installed(status: &PackageStatus) -> bool {
    !status.dps.is_empty()
        && status.dps.iter().all(|dp| {
            dp.state == "installed" && dp.installed_version == Some(status.latest_version)
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
            let bar = bars.entry(dp.dp.clone()).or_insert_with(|| {
                let bar = multi.add(ProgressBar::new(100));
                bar.set_style(style.clone());
                bar.set_prefix(dp.dp.clone());
                bar
            });
            let (position, message) = match (dp.state.as_str(), dp.bytes_done, dp.bytes_total) {
                ("installed", _, _) => (100, format!("installed v{}", opt(dp.installed_version))),
                ("transferring", Some(done), Some(total)) if total > 0 => (
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
