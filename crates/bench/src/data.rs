//! Test data: a deterministic tree of mixed text and incompressible
//! binaries, and the "next version" of it with a given share of its bytes
//! changed the way a new build changes them (edited regions and new files).

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Words the text files are made of: repetitive enough to compress about
/// 3–4× with zstd -1, like source code, logs and configuration.
const WORDS: &[&str] = &[
    "install",
    "package",
    "version",
    "config",
    "service",
    "error",
    "return",
    "struct",
    "impl",
    "fn",
    "let",
    "mut",
    "self",
    "match",
    "Some",
    "None",
    "Ok",
    "Err",
    "string",
    "value",
    "path",
    "file",
    "directory",
    "network",
    "policy",
    "agent",
    "site",
    "status",
    "message",
    "update",
    "registry",
    "HKEY_LOCAL_MACHINE",
    "Software",
    "Microsoft",
    "Windows",
    "CurrentVersion",
    "0x0001",
    "0x7fff",
    "true",
    "false",
    "null",
    "{",
    "}",
    "(",
    ")",
    ";",
    "=",
    "==",
    "->",
    "//",
    "<xml>",
    "</xml>",
    "timestamp",
    "2026-11-22T10:00:00Z",
    "INFO",
    "WARN",
    "DEBUG",
    "user",
];

/// What was generated.
#[derive(Debug, Clone, Copy)]
pub struct TreeStats {
    pub files: u64,
    pub bytes: u64,
}

/// Writes about `total` bytes into `dir` (created): half text files of
/// 1 KiB–256 KiB in nested directories, half incompressible binaries of
/// 1–64 MiB (smaller when `total` is small).
pub fn make_tree(dir: &Path, total: u64, seed: u64) -> Result<TreeStats> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut stats = TreeStats { files: 0, bytes: 0 };
    let text_budget = total / 2;
    let mut written = 0u64;
    while written < text_budget {
        let size = rng
            .gen_range(1024..=256 * 1024)
            .min(text_budget - written + 1024);
        let path = dir.join(format!(
            "src/mod{:02}/sub{:02}/file{:05}.txt",
            stats.files % 16,
            (stats.files / 16) % 8,
            stats.files
        ));
        write_file(&path, &text(&mut rng, size as usize))?;
        written += size;
        stats.files += 1;
        stats.bytes += size;
    }
    let max_binary = (total / 16).clamp(1 << 20, 64 << 20);
    let mut index = 0;
    while stats.bytes < total {
        let size = rng
            .gen_range((1u64 << 20)..=max_binary)
            .min(total - stats.bytes)
            .max(1);
        let path = dir.join(format!("bin/lib{index:03}.so"));
        write_file(&path, &binary(&mut rng, size as usize))?;
        index += 1;
        stats.files += 1;
        stats.bytes += size;
    }
    Ok(stats)
}

/// Changes about `share` of the tree's bytes in place, half as edited
/// regions of 4–64 KiB inside existing files (same length: a patched
/// build) and half as new files. Returns the bytes changed or added.
pub fn change_tree(dir: &Path, share: f64, seed: u64) -> Result<u64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let files = list_files(dir)?;
    let total: u64 = files.iter().map(|(_, size)| size).sum();
    let budget = (total as f64 * share) as u64;
    let mut changed = 0u64;
    // Edited regions in existing files, text and binary alike.
    while changed < budget / 2 {
        let (path, size) = &files[rng.gen_range(0..files.len())];
        if *size < 8192 {
            continue;
        }
        let len = rng.gen_range(4096..=64 * 1024).min(*size / 2);
        let at = rng.gen_range(0..size - len);
        let bytes = if path.extension().is_some_and(|ext| ext == "txt") {
            text(&mut rng, len as usize)
        } else {
            binary(&mut rng, len as usize)
        };
        let mut file = fs::OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        file.seek(SeekFrom::Start(at))?;
        file.write_all(&bytes)?;
        changed += len;
    }
    // New files.
    let mut index = 0;
    while changed < budget {
        let size = rng
            .gen_range(16 * 1024..=1024 * 1024)
            .min(budget - changed + 1024);
        let (name, bytes) = if index % 2 == 0 {
            (
                format!("src/new/added{index:04}.txt"),
                text(&mut rng, size as usize),
            )
        } else {
            (
                format!("bin/added{index:04}.so"),
                binary(&mut rng, size as usize),
            )
        };
        write_file(&dir.join(name), &bytes)?;
        changed += size;
        index += 1;
    }
    Ok(changed)
}

/// Every regular file under `dir` with its size, in a stable order.
pub fn list_files(dir: &Path) -> Result<Vec<(PathBuf, u64)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in
            fs::read_dir(&current).with_context(|| format!("listing {}", current.display()))?
        {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                out.push((entry.path(), entry.metadata()?.len()));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn text(rng: &mut StdRng, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 32);
    while out.len() < size {
        let word = WORDS[rng.gen_range(0..WORDS.len())];
        out.extend_from_slice(word.as_bytes());
        out.push(if rng.gen_ratio(1, 12) { b'\n' } else { b' ' });
    }
    out.truncate(size);
    out
}

fn binary(rng: &mut StdRng, size: usize) -> Vec<u8> {
    let mut out = vec![0u8; size];
    rng.fill_bytes(&mut out);
    out
}
