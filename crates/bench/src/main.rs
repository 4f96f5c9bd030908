//! `cascade-bench`: measures Cascade side by side with the tools an
//! administrator would script instead (tar + zstd, rsync, nginx + curl),
//! in one run, and writes the figures, the peers' figures and their ratios
//! to `bench/RESULTS.md`.
//!
//! Every Cascade component is the real binary (`cascade` beside this one),
//! each site, DP and agent its own process on loopback. `bench/run` builds
//! the binaries, installs the peers and runs this; `--quick` uses small
//! inputs so that CI can check the harness in well under two minutes.

mod data;
mod fleet;
mod load;
mod peers;
mod procfs;
mod proxy;
mod report;

use anyhow::{Context, Result};
use clap::Parser;
use fleet::{Fleet, Site};
use report::{bytes, rate, secs, Report, Row};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Benchmarks Cascade against tar+zstd, rsync and nginx+curl")]
struct Args {
    /// Small inputs and short runs: checks the harness (used by CI).
    #[arg(long)]
    quick: bool,
    /// Where to write the results [default: bench/RESULTS.md, or
    /// target/bench/RESULTS-quick.md with --quick].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Scratch directory for trees, sites and peers (emptied first)
    /// [default: target/bench/work].
    #[arg(long)]
    work: Option<PathBuf>,
    /// Run only these rows (comma-separated, e.g. 1,3): a number stands
    /// for its lettered rows too (4 runs 4 and 4b); 4b runs 4b alone.
    #[arg(long, value_delimiter = ',')]
    rows: Vec<String>,
    /// Keep the scratch directory afterwards (logs of every process).
    #[arg(long)]
    keep: bool,
}

/// Sizes of one run.
pub struct Plan {
    pub quick: bool,
    /// Bytes of the generated tree.
    pub tree_bytes: u64,
    /// Simulated agent counts tried in turn (row 5).
    pub agent_steps: Vec<u64>,
    /// Measured seconds per load step, after warm-up.
    pub step_seconds: u64,
    pub warmup_seconds: u64,
    /// Seconds of status ingestion (row 6).
    pub ingest_seconds: u64,
    /// Seconds the idle agent is watched (row 7).
    pub idle_seconds: u64,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                tree_bytes: 24 << 20,
                agent_steps: vec![500, 1000],
                step_seconds: 4,
                warmup_seconds: 1,
                ingest_seconds: 3,
                idle_seconds: 4,
            }
        } else {
            Plan {
                quick,
                tree_bytes: 1 << 30,
                agent_steps: vec![50_000, 100_000, 150_000, 200_000],
                step_seconds: 30,
                // One whole poll interval: every agent has polled once, as on
                // a server that has been up a while.
                warmup_seconds: 60,
                ingest_seconds: 20,
                idle_seconds: 60,
            }
        }
    }
}

#[tokio::main]
async fn main() {
    if let Err(err) = run(Args::parse()).await {
        eprintln!("cascade-bench: {err:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    let plan = Plan::new(args.quick);
    let out = args.out.clone().unwrap_or_else(|| {
        if args.quick {
            PathBuf::from("target/bench/RESULTS-quick.md")
        } else {
            PathBuf::from("bench/RESULTS.md")
        }
    });
    let work = args
        .work
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/bench/work"));
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("emptying {}", work.display()))?;
    }
    std::fs::create_dir_all(&work)?;
    let work = work.canonicalize()?;
    let bin = fleet::sibling("cascade")?;
    let wanted = |row: &str| {
        args.rows.is_empty()
            || args.rows.iter().any(|asked| {
                row.strip_prefix(asked.as_str())
                    .is_some_and(|rest| rest.chars().all(|c| c.is_ascii_lowercase()))
            })
    };

    let tree = work.join("tree");
    let needs_tree = ["1", "2", "3", "4"].into_iter().any(wanted);
    let mut tree_bytes = 0;
    if needs_tree {
        say(&format!("generating a {} tree", bytes(plan.tree_bytes)));
        let stats = data::make_tree(&tree, plan.tree_bytes, 1)?;
        tree_bytes = stats.bytes;
        say(&format!("{} files, {}", stats.files, bytes(stats.bytes)));
        // Both sides read the tree from the page cache.
        peers::shell(&format!("tar cf - -C '{}' . > /dev/null", tree.display()))?;
    }

    let mut rows: Vec<Row> = Vec::new();
    let central = Fleet {
        bin: bin.clone(),
        root: work.join("one-site"),
    };
    std::fs::create_dir_all(&central.root)?;
    let mut site = None;
    if ["1", "2", "3"].into_iter().any(wanted) {
        // The tree is on the site's machine: the site reads it itself.
        let local = ["--local-ingest-root", fleet::path_str(&tree)?];
        site = Some(central.site_with("CEN", None, &local)?);
    }
    // A row that fails is reported as failed, with its error, and the run
    // goes on: one broken row must not lose the figures of the others.
    if wanted("1") {
        let site = site.as_mut().context("site")?;
        let row = row_ingest(&central, site, &tree, tree_bytes, &work).await;
        rows.push(row.unwrap_or_else(|err| failed("1", "ingest", err)));
    }
    let mut one_hop = None;
    if wanted("3") {
        let site = site.as_mut().context("site")?;
        match row_one_hop(&central, site, &tree, tree_bytes, &work).await {
            Ok((row, took)) => {
                one_hop = Some(took);
                rows.push(row);
            }
            Err(err) => rows.push(failed("3", "one hop, site → DP", err)),
        }
    }
    if wanted("4") {
        let row = row_hierarchy(&bin, &work, &tree, tree_bytes, one_hop).await;
        rows.push(row.unwrap_or_else(|err| failed("4", "every DP of a hierarchy", err)));
    }
    if wanted("4b") {
        let row = row_chain(&bin, &work, &tree, tree_bytes, one_hop).await;
        rows.push(row.unwrap_or_else(|err| failed("4b", "a chain of sites", err)));
    }
    if wanted("2") {
        let site = site.as_mut().context("site")?;
        match row_delta(&central, site, &tree, &work).await {
            Ok(delta) => rows.extend(delta),
            Err(err) => rows.push(failed("2a", "a DP from version n to n+1", err)),
        }
    }
    drop(site);
    if wanted("8") {
        match row_retention(&bin, &work, &plan).await {
            Ok(retention) => rows.extend(retention),
            Err(err) => rows.push(failed("8", "disk at a site with retention", err)),
        }
    }
    if ["5", "6", "7"].into_iter().any(wanted) {
        let fleet = Fleet {
            bin: bin.clone(),
            root: work.join("load"),
        };
        std::fs::create_dir_all(&fleet.root)?;
        rows.extend(load::rows(&fleet, &plan, &wanted).await?);
    }
    rows.sort_by(|a, b| a.number.cmp(b.number));

    let report = Report {
        quick: plan.quick,
        date: peers::version("date -u '+%Y-%m-%d %H:%M UTC'"),
        machine: report::machine(),
        peers: vec![
            peers::version("tar --version"),
            peers::version("zstd --version"),
            peers::version("rsync --version"),
            peers::version("nginx -v 2>&1"),
            peers::version("curl --version"),
        ],
        rows,
        took: started.elapsed(),
    };
    let notes_path = Path::new("bench/NOTES.md");
    let notes = if plan.quick {
        String::new()
    } else {
        std::fs::read_to_string(notes_path).unwrap_or_default()
    };
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, report.markdown(&notes))
        .with_context(|| format!("writing {}", out.display()))?;
    say(&format!("wrote {}", out.display()));
    if !args.keep {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(())
}

/// The row of a measurement that failed, with its error.
pub fn failed(number: &'static str, measure: &str, err: anyhow::Error) -> Row {
    say(&format!("row {number} failed: {err:#}"));
    Row {
        number,
        measure: measure.to_owned(),
        cascade: "failed".into(),
        peer: "—".into(),
        ratio: "—".into(),
        target: "—".into(),
        met: Some(false),
        details: vec![format!("The measurement failed: {err:#}")],
    }
}

/// Progress on stderr.
pub fn say(text: &str) {
    eprintln!("[bench] {text}");
}

/// Row 1: ingest the tree, against `tar c | zstd -1 -T0` of it.
async fn row_ingest(
    fleet: &Fleet,
    site: &mut Site,
    tree: &Path,
    tree_bytes: u64,
    work: &Path,
) -> Result<Row> {
    say("row 1: tar | zstd -1 -T0");
    let archive = peers::scratch(work, "tree.tar.zst");
    std::fs::create_dir_all(archive.parent().context("scratch")?)?;
    let (peer, archive_bytes) = peers::tar_zstd(tree, &archive)?;
    std::fs::remove_file(&archive)?;
    say("row 1: cascade package create");
    let cpu_before = fleet::cpu_time(site.process.pid())?;
    let started = Instant::now();
    let out = site.run(
        fleet,
        &[
            "-o",
            "json",
            "package",
            "create",
            "big",
            "--source",
            fleet::path_str(tree)?,
        ],
    )?;
    let took = started.elapsed();
    let server_cpu = fleet::cpu_time(site.process.pid())? - cpu_before;
    let report: Value = serde_json::from_slice(&out)?;
    let ratio = took.as_secs_f64() / peer.as_secs_f64();
    Ok(Row {
        number: "1",
        measure: format!("ingest a {} tree into the content library", bytes(tree_bytes)),
        cascade: format!("{} ({})", secs(took), rate(tree_bytes, took)),
        peer: format!("`tar c \\| zstd -1 -T0`: {} ({})", secs(peer), rate(tree_bytes, peer)),
        ratio: format!("{ratio:.2}× the time"),
        target: "≤ 0.8× the time".into(),
        met: Some(ratio <= 0.8),
        details: vec![
            format!(
                "Cascade: `cascade package create` end to end, run on the central site's machine \
                 against a directory under its `--local-ingest-root`, so the site reads the tree \
                 itself (path: {}): scan, chunk, hash once, compress on every core, append to \
                 packs with a sync per 16 MiB batch, sign the manifest: {}; {} chunks stored, {} \
                 stored (compressed); the site server used {} of CPU.",
                report["ingest"].as_str().unwrap_or("?"),
                secs(took),
                report["chunks_uploaded"],
                bytes(report["bytes_uploaded"].as_u64().unwrap_or(0)),
                secs(server_cpu)
            ),
            format!(
                "Peer: `tar cf - | zstd -1 -T0 -o FILE` of the same tree (no fsync): {}, archive {}.",
                secs(peer),
                bytes(archive_bytes)
            ),
        ],
    })
}

/// Downloads of the peer in row 3, of which the fastest counts.
const PEER_RUNS: u32 = 3;

/// Row 3: one hop, site → DP, against curl from nginx.
async fn row_one_hop(
    fleet: &Fleet,
    site: &mut Site,
    tree: &Path,
    tree_bytes: u64,
    work: &Path,
) -> Result<(Row, Duration)> {
    say("row 3: nginx + curl");
    let www = work.join("www");
    std::fs::create_dir_all(&www)?;
    peers::shell(&format!(
        "tar cf '{}/tree.tar' -C '{}' .",
        www.display(),
        tree.display()
    ))?;
    let download = peers::scratch(work, "tree.tar");
    std::fs::create_dir_all(download.parent().context("scratch")?)?;
    let nginx = peers::Nginx::start(work, &www, false)?;
    let (peer, peer_bytes) = nginx.fastest_download("tree.tar", &download, PEER_RUNS)?;
    drop(nginx);
    say("row 3: nginx + curl over HTTPS");
    let nginx = peers::Nginx::start(work, &www, true)?;
    let (peer_tls, _) = nginx.fastest_download("tree.tar", &download, PEER_RUNS)?;
    drop(nginx);
    std::fs::remove_dir_all(&www)?;

    say("row 3: site → DP");
    let dp = fleet.dp(site, "dpa", &site.url.clone())?;
    if !site_has_package(site, "big").await {
        site.run(
            fleet,
            &[
                "package",
                "create",
                "big",
                "--source",
                fleet::path_str(tree)?,
            ],
        )?;
    }
    let started = Instant::now();
    site.run(fleet, &["package", "distribute", "big", "--dp", &dp.name])?;
    site.wait_installed(
        "big",
        &[format!("CEN/{}", dp.name)],
        1,
        Duration::from_secs(1800),
    )
    .await?;
    let took = started.elapsed();
    let ours = tree_bytes as f64 / took.as_secs_f64();
    let theirs = peer_bytes as f64 / peer.as_secs_f64();
    let ratio = ours / theirs;
    let theirs_tls = peer_bytes as f64 / peer_tls.as_secs_f64();
    Ok((
        Row {
            number: "3",
            measure: format!(
                "one hop, site → DP, {} package on loopback",
                bytes(tree_bytes)
            ),
            cascade: format!("{} ({})", secs(took), rate(tree_bytes, took)),
            peer: format!(
                "curl from nginx: {} ({})",
                secs(peer),
                rate(peer_bytes, peer)
            ),
            ratio: format!("{ratio:.2}× the throughput"),
            target: "≥ 0.9× the throughput".into(),
            met: Some(ratio >= 0.9),
            details: vec![
                format!(
                    "Cascade: from `cascade package distribute` to the site's status showing the \
                     DP holding the version (manifest verified, every chunk fetched, verified and \
                     stored durably, `dp_installed` reported): {}.",
                    secs(took)
                ),
                format!(
                    "Peer: `curl -o FILE` of one uncompressed tar of the tree ({}) from nginx \
                     with sendfile over plain HTTP (no verification, no fsync): {}, the fastest \
                     of {PEER_RUNS} downloads (one slow run on this shared machine once showed \
                     the peer ten times slower than it is).",
                    bytes(peer_bytes),
                    secs(peer)
                ),
                format!(
                    "What TLS costs: Cascade speaks only HTTPS (rustls, ECDSA P-256, the pinned \
                     certificate), so this row pays for it. The same download from nginx over \
                     HTTPS (an ECDSA P-256 certificate, OpenSSL, no sendfile), fastest of \
                     {PEER_RUNS}: {} ({}), {:.0}% of \
                     its plain-HTTP throughput; against it Cascade reaches {:.2}× the throughput.",
                    secs(peer_tls),
                    rate(peer_bytes, peer_tls),
                    100.0 * theirs_tls / theirs,
                    ours / theirs_tls
                ),
            ],
        },
        took,
    ))
}

async fn site_has_package(site: &Site, name: &str) -> bool {
    site.client.package(name).await.is_ok()
}

/// Row 4: the package to every DP of a three-level hierarchy of 13 sites.
async fn row_hierarchy(
    bin: &Path,
    work: &Path,
    tree: &Path,
    tree_bytes: u64,
    one_hop: Option<Duration>,
) -> Result<Row> {
    say("row 4: starting 13 sites with a DP each");
    let fleet = Fleet {
        bin: bin.to_owned(),
        root: work.join("hierarchy"),
    };
    std::fs::create_dir_all(&fleet.root)?;
    let mut central = fleet.site("CEN", None)?;
    let mut sites: Vec<Site> = Vec::new();
    for p in 1..=3 {
        let primary = fleet.site(&format!("P0{p}"), Some(("primary", &central)))?;
        for s in 1..=3 {
            sites.push(fleet.site(&format!("S{p}{s}"), Some(("secondary", &primary)))?);
        }
        sites.push(primary);
    }
    let mut dps = vec![fleet.dp(&central, "dp", &central.url)?];
    for site in &sites {
        dps.push(fleet.dp(site, "dp", &site.url)?);
    }
    let members: Vec<String> = dps
        .iter()
        .map(|dp| format!("{}/{}", dp.site, dp.name))
        .collect();
    central.create_group(&fleet, "all", &members).await?;
    central.run(
        &fleet,
        &[
            "package",
            "create",
            "big",
            "--source",
            fleet::path_str(tree)?,
        ],
    )?;
    say("row 4: distributing to all 13 DPs");
    let mut pids: Vec<u32> = sites.iter().map(|site| site.process.pid()).collect();
    pids.push(central.process.pid());
    pids.extend(dps.iter().map(|dp| dp.pid()));
    let cpu_before = fleet::total_cpu(&pids)?;
    let started = Instant::now();
    central.run(
        &fleet,
        &["package", "distribute", "big", "--dp-group", "all"],
    )?;
    central
        .wait_installed("big", &members, 1, Duration::from_secs(3600))
        .await?;
    let took = started.elapsed();
    let cpu = fleet::total_cpu(&pids)? - cpu_before;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let cpu_per_gib_hop = cpu.as_secs_f64() / 25.0 / (tree_bytes as f64 / (1u64 << 30) as f64);
    let (ratio, met) = match one_hop {
        Some(hop) => {
            let ratio = took.as_secs_f64() / hop.as_secs_f64();
            (
                format!("{ratio:.2}× one hop, {cpu_per_gib_hop:.2} CPU-s per GiB per hop"),
                Some(ratio <= 10.0 && cpu_per_gib_hop <= 1.5),
            )
        }
        None => ("— (row 3 not run)".to_owned(), None),
    };
    Ok(Row {
        number: "4",
        measure: format!(
            "{} to every DP of a 3-level hierarchy (13 sites, a DP each)",
            bytes(tree_bytes)
        ),
        cascade: format!("{} ({} per DP)", secs(took), rate(tree_bytes, took)),
        peer: one_hop.map_or("—".to_owned(), |hop| {
            format!("one hop (#3): {}", secs(hop))
        }),
        ratio,
        target: "≤ 10× one hop on this machine, ≤ 1.5 CPU-s per GiB per hop".into(),
        met,
        details: vec![
            format!(
                "Central, 3 primaries, 9 secondaries (3 under each primary), a DP at each: 26 \
                 processes on this machine's cores, where a real hierarchy has a machine each. \
                 Timed from `cascade package distribute --dp-group all` at central to central's \
                 status showing all 13 DPs holding the version (status relayed up two levels): {}.",
                secs(took)
            ),
            format!(
                "Every site stores and verifies the content it passes on: {} moved site to site \
                 and site to DP in all (25 hops).",
                bytes(tree_bytes * 25),
            ),
            format!(
                "The 26 processes used {} of CPU in all, {:.0}% of the {cores} cores for the whole \
                 time: {:.2} CPU-seconds per GiB per hop. With a machine per site, as deployed, \
                 the transfers run in parallel (each site passes on every chunk as soon as it \
                 stored it) and the longest path is three hops (central → primary → secondary → \
                 DP), which row 4b measures alone.",
                secs(cpu),
                cpu.as_secs_f64() / took.as_secs_f64() / cores * 100.0,
                cpu_per_gib_hop,
            ),
        ],
    })
}

/// Row 4b: the package down a chain central → primary → secondary → DP,
/// against one hop.
async fn row_chain(
    bin: &Path,
    work: &Path,
    tree: &Path,
    tree_bytes: u64,
    one_hop: Option<Duration>,
) -> Result<Row> {
    say("row 4b: a chain of three sites and a DP");
    let fleet = Fleet {
        bin: bin.to_owned(),
        root: work.join("chain"),
    };
    std::fs::create_dir_all(&fleet.root)?;
    let local = ["--local-ingest-root", fleet::path_str(tree)?];
    let mut central = fleet.site_with("CEN", None, &local)?;
    let primary = fleet.site("P01", Some(("primary", &central)))?;
    let secondary = fleet.site("S11", Some(("secondary", &primary)))?;
    let dp = fleet.dp(&secondary, "dp", &secondary.url)?;
    let member = format!("{}/{}", dp.site, dp.name);
    central
        .create_group(&fleet, "chain", std::slice::from_ref(&member))
        .await?;
    central.run(
        &fleet,
        &[
            "package",
            "create",
            "big",
            "--source",
            fleet::path_str(tree)?,
        ],
    )?;
    let started = Instant::now();
    central.run(
        &fleet,
        &["package", "distribute", "big", "--dp-group", "chain"],
    )?;
    central
        .wait_installed("big", &[member], 1, Duration::from_secs(3600))
        .await?;
    let took = started.elapsed();
    let (ratio, met) = match one_hop {
        Some(hop) => {
            let ratio = took.as_secs_f64() / hop.as_secs_f64();
            (format!("{ratio:.2}× one hop"), Some(ratio <= 2.0))
        }
        None => ("— (row 3 not run)".to_owned(), None),
    };
    Ok(Row {
        number: "4b",
        measure: format!(
            "{} down a chain central → primary → secondary → DP",
            bytes(tree_bytes)
        ),
        cascade: format!("{} ({})", secs(took), rate(tree_bytes, took)),
        peer: one_hop.map_or("—".to_owned(), |hop| {
            format!("one hop (#3): {}", secs(hop))
        }),
        ratio,
        target: "≤ 2× one hop".into(),
        met,
        details: vec![format!(
            "Three sites and a DP on this machine, the DP at the secondary: timed from `cascade \
             package distribute` at central to central's status showing the DP holding the \
             version: {}. Cut-through: each site and the DP fetch the chunks their parent has \
             stored while the parent is still receiving the rest, so the hops overlap; every \
             hop still verifies every chunk (decompression and BLAKE3) and pays TLS on both \
             ends, all four processes on this machine's two cores.",
            secs(took)
        )],
    })
}

/// Row 8: a site's disk after ten versions of a package with `site settings
/// --keep-versions 3`, against the stored size of the three it keeps.
async fn row_retention(bin: &Path, work: &Path, plan: &Plan) -> Result<Vec<Row>> {
    say("row 8: ten versions at a site keeping three");
    let fleet = Fleet {
        bin: bin.to_owned(),
        root: work.join("retention"),
    };
    std::fs::create_dir_all(&fleet.root)?;
    let versions_dir = work.join("versions");
    std::fs::create_dir_all(&versions_dir)?;
    let local = ["--local-ingest-root", fleet::path_str(&versions_dir)?];
    let grace = ["--chunk-grace", "2s"];
    let args: Vec<&str> = local.iter().chain(&grace).copied().collect();
    let site = fleet.site_with("CEN", None, &args)?;
    site.run(&fleet, &["site", "settings", "--keep-versions", "3"])?;
    let version_bytes = plan.tree_bytes / 8;
    let source = versions_dir.join("app");
    let mut stored = Vec::new();
    for version in 1..=10u64 {
        // Every version new bytes: what each keeps is its own.
        if source.exists() {
            std::fs::remove_dir_all(&source)?;
        }
        data::make_tree(&source, version_bytes, 100 + version)?;
        let verb = if version == 1 { "create" } else { "update" };
        let out = site.run(
            &fleet,
            &[
                "-o",
                "json",
                "package",
                verb,
                "app",
                "--source",
                fleet::path_str(&source)?,
            ],
        )?;
        let report: Value = serde_json::from_slice(&out)?;
        stored.push(report["bytes_uploaded"].as_u64().unwrap_or(0));
    }
    let kept: u64 = stored[7..].iter().sum();
    let packs = fleet.root.join("site-CEN").join("chunks").join("packs");
    // The grace passes, the retention runs, the packs are compacted.
    let on_disk = settled(|| dir_bytes(&packs)).await?;
    let all: u64 = stored.iter().sum();
    let ratio = on_disk as f64 / kept as f64;
    let workstation = row_workstation_disk(&fleet, &site, version_bytes).await;
    let site_row = Row {
        number: "8",
        measure: format!(
            "a site's disk after 10 versions of {} each (all new bytes), keeping 3",
            bytes(version_bytes)
        ),
        cascade: bytes(on_disk),
        peer: format!("the 3 kept versions' stored chunks: {}", bytes(kept)),
        ratio: format!("{ratio:.2}× what is kept"),
        target: "bounded by the retention (≤ 1.5× what is kept)".into(),
        met: Some(ratio <= 1.5),
        details: vec![format!(
            "Ten versions stored {} in all; with `site settings --keep-versions 3` and `site run \
             --chunk-grace 2s` the site's packs (data and indexes) hold {} once the retention \
             retired versions 1 to 7 and compacted: the three kept versions' chunks, {}, and \
             the dead part of packs not yet half dead.",
            bytes(all),
            bytes(on_disk),
            bytes(kept)
        )],
    };
    Ok(vec![
        site_row,
        workstation.unwrap_or_else(|err| failed("8b", "a workstation's disk after a job", err)),
    ])
}

/// Row 8b: a workstation's disk after a job of the newest version of row
/// 8's package (`version_bytes` of new bytes), while the job is offered and
/// once it no longer is, against the cache bound its agent was given.
async fn row_workstation_disk(fleet: &Fleet, site: &Site, version_bytes: u64) -> Result<Row> {
    say("row 8b: a workstation's disk after a job");
    let cache = version_bytes / 2;
    let lean = fleet::sibling("cascade-agent")?;
    let _agent = fleet.agent_with(
        site,
        "ws",
        &["--cache-size", &cache.to_string()],
        &lean,
        &[],
    )?;
    let agent_dir = fleet.agent_dir(site, "ws");
    site.run(fleet, &["collection", "create", "one", "--machines", "ws"])?;
    let job: Value = serde_json::from_slice(&site.run(
        fleet,
        &[
            "-o",
            "json",
            "job",
            "create",
            "--package",
            "app",
            "--collection",
            "one",
            "--command",
            "true",
        ],
    )?)?;
    let id = job["id"].as_u64().context("the job's id")?.to_string();
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let status: Value =
            serde_json::from_slice(&site.run(fleet, &["-o", "json", "job", "status", &id])?)?;
        let states: Vec<&str> = status["workstations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|row| row["state"].as_str())
            .collect();
        if states.contains(&"complete") {
            break;
        }
        if states.contains(&"failed") || Instant::now() > deadline {
            anyhow::bail!("the job did not complete on the workstation: {status}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let during = dir_bytes(&agent_dir.join("chunks"))? + dir_bytes(&agent_dir.join("jobs"))?;
    site.run(fleet, &["job", "cancel", &id])?;
    let after =
        settled(|| Ok(dir_bytes(&agent_dir.join("chunks"))? + dir_bytes(&agent_dir.join("jobs"))?))
            .await?;
    let ratio = after as f64 / cache as f64;
    Ok(Row {
        number: "8b",
        measure: format!(
            "a workstation's disk after a job of {} (its chunks and the job's directory), once \
             the job is no longer offered",
            bytes(version_bytes)
        ),
        cascade: bytes(after),
        peer: format!(
            "the agent's cache bound (`agent init --cache-size`): {}",
            bytes(cache)
        ),
        ratio: format!("{ratio:.2}× the bound"),
        target: "bounded by the cache (≤ 1.5× the bound: packs are compacted once half dead)"
            .into(),
        met: Some(ratio <= 1.5),
        details: vec![format!(
            "The real agent (`cascade-agent`, enrolled with `--cache-size {}`) runs a job of row \
             8's newest version, downloaded from the site: right after it reported the job \
             complete, while the job is still offered, its chunk store and job directories \
             held {} (the chunks the open job needs are kept whatever the cache bound, and the \
             job's tree); once the job was canceled and the agent tidied (the job's directory \
             removed, the chunks trimmed to the bound, the packs compacted), {}.",
            bytes(cache),
            bytes(during),
            bytes(after)
        )],
    })
}

/// Bytes of the files under `dir` (none when it does not exist).
fn dir_bytes(dir: &Path) -> Result<u64> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(err) => return Err(err).with_context(|| format!("reading {}", dir.display())),
    };
    let mut total = 0;
    for entry in entries {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            total += dir_bytes(&entry.path())?;
        } else if kind.is_file() {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

/// `measure` once it has not changed for five seconds (at most two
/// minutes): what a disk holds once a collection has run its course.
async fn settled(measure: impl Fn() -> Result<u64>) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut value = measure()?;
    let mut steady_since = Instant::now();
    while steady_since.elapsed() < Duration::from_secs(5) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = measure()?;
        if now != value {
            value = now;
            steady_since = Instant::now();
        }
    }
    Ok(value)
}

/// Row 2: a DP from version n to n+1 with 1% of the bytes changed, against
/// rsync of the same change (bytes and time: two rows).
async fn row_delta(fleet: &Fleet, site: &mut Site, tree: &Path, work: &Path) -> Result<Vec<Row>> {
    say("row 2: version n on a DP (through a byte-counting relay) and on an rsync daemon");
    let proxy = proxy::CountingProxy::start(&site.url).await?;
    let dp = fleet.dp(site, "dpb", &proxy.url)?;
    site.run(
        fleet,
        &[
            "package",
            "create",
            "delta",
            "--source",
            fleet::path_str(tree)?,
        ],
    )?;
    site.run(fleet, &["package", "distribute", "delta", "--dp", &dp.name])?;
    let member = vec![format!("CEN/{}", dp.name)];
    site.wait_installed("delta", &member, 1, Duration::from_secs(1800))
        .await?;
    let rsync = peers::RsyncDaemon::start(work, &work.join("rsync-dest"))?;
    rsync.sync(tree)?;

    let changed = data::change_tree(tree, 0.01, 2)?;
    say(&format!("row 2: changed {} of the tree", bytes(changed)));
    let (rsync_time, rsync_bytes) = rsync.sync(tree)?;

    let before = proxy.bytes();
    let started = Instant::now();
    let report = site.run(
        fleet,
        &[
            "-o",
            "json",
            "package",
            "update",
            "delta",
            "--source",
            fleet::path_str(tree)?,
        ],
    )?;
    let ingested = started.elapsed();
    let report: Value = serde_json::from_slice(&report).context("the update's report")?;
    let files_unchanged = report["files_unchanged"].as_u64().unwrap_or(0);
    let files = report["file_count"].as_u64().unwrap_or(0);
    let transfer_start = Instant::now();
    site.wait_installed("delta", &member, 2, Duration::from_secs(1800))
        .await?;
    let transfer = transfer_start.elapsed();
    // Row 1b's peer: the same archiver as row 1's, of the changed tree.
    let archive = peers::scratch(work, "changed.tar.zst");
    let (reingest_peer, _) = peers::tar_zstd(tree, &archive)?;
    std::fs::remove_file(&archive)?;
    // Let the DP's last status reports and poll answers pass the relay.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let wire = proxy.bytes() - before;
    drop(rsync);
    let _ = std::fs::remove_dir_all(work.join("rsync-dest"));

    let byte_ratio = wire as f64 / rsync_bytes as f64;
    let time_ratio = transfer.as_secs_f64() / rsync_time.as_secs_f64();
    let details = vec![
        format!(
            "The change: {} of the tree's bytes, half as 4–64 KiB regions rewritten inside \
             existing text and binary files, half as new files.",
            bytes(changed)
        ),
        format!(
            "Cascade: the DP reaches its site through a byte-counting relay, so every byte on the \
             wire counts (HTTP, manifest, chunk frames, status reports): {} from the new version's \
             commit to the DP reporting it installed, {} on the wire. Ingesting the new version \
             (`cascade package update`, row 1b) took {} more, at the central site, once for \
             every DP.",
            secs(transfer),
            bytes(wire),
            secs(ingested)
        ),
        format!(
            "Peer: `rsync -a --delete --stats` to an rsync daemon on loopback (delta transfer), \
             bytes sent + received as rsync counts them: {} and {}.",
            secs(rsync_time),
            bytes(rsync_bytes)
        ),
    ];
    let reingest_ratio = ingested.as_secs_f64() / reingest_peer.as_secs_f64();
    Ok(vec![
        Row {
            number: "1b",
            measure: "re-ingest the tree after a 1% change (a new version)".into(),
            cascade: secs(ingested),
            peer: format!("`tar c \\| zstd -1 -T0`: {}", secs(reingest_peer)),
            ratio: format!("{reingest_ratio:.2}× the time"),
            target: "≤ 0.2× the time".into(),
            met: Some(reingest_ratio <= 0.2),
            details: vec![format!(
                "Cascade: `cascade package update` of the changed tree (row 2's change), read by \
                 the site itself (its local ingest root): the tree is scanned, and the files whose \
                 size, modification and change times and inode are those the previous version \
                 read them with ({files_unchanged} of {files}) are not read again (as rsync's \
                 quick check); the others are read and cut, and only their new chunks are \
                 compressed and stored: {}. Peer: the whole changed tree archived again as in \
                 row 1: {}.",
                secs(ingested),
                secs(reingest_peer)
            )],
        },
        Row {
            number: "2a",
            measure: "bytes to bring a DP from version n to n+1 (1% of the bytes changed)".into(),
            cascade: bytes(wire),
            peer: format!("rsync: {}", bytes(rsync_bytes)),
            ratio: format!("{byte_ratio:.2}× the bytes"),
            target: "≤ rsync's".into(),
            met: Some(byte_ratio <= 1.0),
            details: details.clone(),
        },
        Row {
            number: "2b",
            measure: "time to bring a DP from version n to n+1 (1% of the bytes changed)".into(),
            cascade: secs(transfer),
            peer: format!("rsync: {}", secs(rsync_time)),
            ratio: format!("{time_ratio:.2}× the time"),
            target: "≤ rsync's".into(),
            met: Some(time_ratio <= 1.0),
            details: vec!["As 2a.".into()],
        },
    ])
}
