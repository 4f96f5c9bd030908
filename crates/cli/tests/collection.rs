//! Issue 13: a site and a DP SIGKILLed while they remove the chunks no kept
//! version uses and while they compact their packs restart and converge:
//! every stored chunk verifies, every chunk a kept version names is there,
//! the others are gone and the disk is given back.

use crate::harness::*;
use cascade_content::ChunkHash;
use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

const MIB: usize = 1024 * 1024;
/// Files of the package, each of fresh random bytes.
const FILES: usize = 16;
/// Files rewritten by each new version: the packs of the one before end up
/// more than half dead, so collecting it compacts two packs or more.
const CHANGED: usize = 10;

/// Writes version `version` of the package into `source` (version 1: every
/// file; later: `CHANGED` of them) and returns the chunks it names.
fn write_version(source: &Path, version: usize) -> HashSet<ChunkHash> {
    std::fs::create_dir_all(source).unwrap();
    for i in 0..FILES {
        if version == 1 || (i + version) % FILES < CHANGED {
            let seed = (1000 * version + i) as u64;
            std::fs::write(
                source.join(format!("f{i:02}.bin")),
                random_bytes(seed, 4 * MIB),
            )
            .unwrap();
        }
    }
    files_of(source)
        .iter()
        .flat_map(|(_, data)| {
            cascade_content::chunks(data.as_slice()).map(|chunk| chunk.unwrap().hash)
        })
        .collect()
}

/// Where kills caught the collection with work left (chunks no kept
/// version uses still stored, or packs at least half dead).
#[derive(Default, Debug)]
struct Caught {
    /// Kills as the first chunk went (the drops are written in one append,
    /// so this catches the compaction that follows; a torn append is the
    /// store-level victim test's case, `a_store_killed_at_any_moment_…`).
    starting: usize,
    /// Kills as a compaction deleted a pack.
    compacting: usize,
}

/// Whether the collection had work left in the store as it was seen.
fn unfinished(seen: &StoreOnDisk, keep: &HashSet<ChunkHash>) -> bool {
    !seen.chunks.is_subset(keep) || seen.half_dead_packs() > 0
}

/// Polls the store at `dir` until `moment` holds for what it shows.
fn watch(dir: &Path, what: &str, timeout: Duration, moment: impl Fn(&StoreOnDisk) -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if moment(&StoreOnDisk::read(dir)) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A server whose store is collected: a site or a DP.
trait Server {
    fn dir(&self) -> std::path::PathBuf;
    fn process(&mut self) -> &mut Process;
    fn restart(&mut self);
}

impl Server for Dp {
    fn dir(&self) -> std::path::PathBuf {
        self.dir.clone()
    }
    fn process(&mut self) -> &mut Process {
        &mut self.process
    }
    fn restart(&mut self) {
        Dp::restart(self)
    }
}

impl Server for Site {
    fn dir(&self) -> std::path::PathBuf {
        self.dir.clone()
    }
    fn process(&mut self) -> &mut Process {
        &mut self.process
    }
    fn restart(&mut self) {
        Site::restart(self)
    }
}

/// After a version `keep` replaced `old`: kills `server` as the first
/// chunk only `old` used goes from its store, then, restarted, at every
/// pack a compaction deletes, until the store holds exactly `keep` with no
/// pack half dead. After every kill the store opens with every chunk
/// verifying.
fn kill_through_collection(
    server: &mut dyn Server,
    old: &HashSet<ChunkHash>,
    keep: &HashSet<ChunkHash>,
    caught: &mut Caught,
) {
    let dir = &server.dir();
    let gone: HashSet<ChunkHash> = old.difference(keep).copied().collect();
    watch(
        dir,
        "the collection to start",
        Duration::from_secs(120),
        |seen| keep.is_subset(&seen.chunks) && !gone.is_subset(&seen.chunks),
    );
    let seen = server
        .process()
        .freeze_look_and_kill(|| StoreOnDisk::read(dir));
    caught.starting += usize::from(unfinished(&seen, keep));
    verify_store(dir);
    for _ in 0..8 {
        server.restart();
        let packs: Vec<_> = StoreOnDisk::read(dir).packs.into_keys().collect();
        let settled = |seen: &StoreOnDisk| seen.chunks == *keep && seen.half_dead_packs() == 0;
        watch(
            dir,
            "a compaction or a settled store",
            Duration::from_secs(60),
            |seen| settled(seen) || packs.iter().any(|pack| !seen.packs.contains_key(pack)),
        );
        let seen = server
            .process()
            .freeze_look_and_kill(|| StoreOnDisk::read(dir));
        caught.compacting += usize::from(unfinished(&seen, keep));
        verify_store(dir);
        if settled(&seen) {
            server.restart();
            return;
        }
    }
    panic!(
        "the store never settled: {:?}",
        StoreOnDisk::read(dir).packs
    );
}

/// A DP SIGKILLed while it collects the chunks of the version it no longer
/// holds, and again at every pack its compaction deletes, restarts, holds
/// exactly the new version's chunks, serves the new version whole, and has
/// given the old version's disk back.
#[test]
fn a_dp_killed_while_collecting_and_compacting_converges() {
    let root = tempfile::tempdir().unwrap();
    let site = Site::start(root.path());
    let source = root.path().join("src");
    let mut old = write_version(&source, 1);
    site.create_package("app", &source);
    let mut dp = site.add_dp("dp1");
    site.json(&["package", "distribute", "app", "--dp", "dp1"]);
    site.wait_installed("app", &[&dp], 1, Duration::from_secs(120));
    let mut caught = Caught::default();
    for version in 2..=4 {
        let keep = write_version(&source, version);
        site.json(&[
            "package",
            "update",
            "app",
            "--source",
            source.to_str().unwrap(),
        ]);
        kill_through_collection(&mut dp, &old, &keep, &mut caught);
        site.wait_installed("app", &[&dp], version as u64, Duration::from_secs(120));
        dp.verify_against("app", &source);
        let disk = store_disk(&dp.dir);
        assert!(
            disk < (FILES * 4 * MIB) as u64 * 3 / 2,
            "the DP holds {disk} bytes for a {} MiB version",
            FILES * 4
        );
        old = keep;
        if caught.starting > 0 && caught.compacting > 0 {
            break;
        }
    }
    assert!(
        caught.starting > 0 && caught.compacting > 0,
        "no kill caught the collection half-way: {caught:?}"
    );
}

/// A site SIGKILLed while its retention removes the chunks of the version
/// it retired, and again at every pack its compaction deletes, restarts,
/// holds exactly the kept version's chunks, and a DP added afterwards gets
/// that version whole from it.
#[test]
fn a_site_killed_while_collecting_and_compacting_converges() {
    let root = tempfile::tempdir().unwrap();
    let mut site = Site::central_run_with(root.path(), "CEN", &["--chunk-grace", "1s"]);
    site.json(&["site", "settings", "--keep-versions", "1"]);
    let source = root.path().join("src");
    let mut old = write_version(&source, 1);
    site.create_package("app", &source);
    let mut caught = Caught::default();
    let mut last = 1;
    for version in 2..=4 {
        let keep = write_version(&source, version);
        site.json(&[
            "package",
            "update",
            "app",
            "--source",
            source.to_str().unwrap(),
        ]);
        kill_through_collection(&mut site, &old, &keep, &mut caught);
        old = keep;
        last = version;
        if caught.starting > 0 && caught.compacting > 0 {
            break;
        }
    }
    let disk = store_disk(&site.dir);
    assert!(
        disk < (FILES * 4 * MIB) as u64 * 3 / 2,
        "the site holds {disk} bytes for a {} MiB version",
        FILES * 4
    );
    let dp = site.add_dp("dp1");
    site.json(&["package", "distribute", "app", "--dp", "dp1"]);
    site.wait_installed("app", &[&dp], last as u64, Duration::from_secs(120));
    dp.verify_against("app", &source);
    assert!(
        caught.starting > 0 && caught.compacting > 0,
        "no kill caught the collection half-way: {caught:?}"
    );
}
