//! The results file: one table of figures, peers and ratios, then the
//! details of each row and the machine it ran on.

use std::fmt::Write;
use std::time::Duration;

/// One row of the results table.
pub struct Row {
    pub number: &'static str,
    pub measure: String,
    pub cascade: String,
    pub peer: String,
    pub ratio: String,
    pub target: String,
    /// Whether the target is met (`None`: not comparable in this run).
    pub met: Option<bool>,
    /// Raw figures and remarks, shown under the table.
    pub details: Vec<String>,
}

/// Everything the results file says.
pub struct Report {
    pub quick: bool,
    pub date: String,
    pub machine: Vec<String>,
    pub peers: Vec<String>,
    pub rows: Vec<Row>,
    pub took: Duration,
}

impl Report {
    /// The Markdown text of `RESULTS.md`.
    pub fn markdown(&self, preamble: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# Cascade benchmarks\n");
        let _ = writeln!(
            out,
            "Written by `bench/run{}` on {} in {:.0} s. Every figure below comes from that one run; \
             each peer ran on the same data on the same machine just before or after Cascade, so \
             the ratios are the figures to read (the machine is shared and noisy).\n",
            if self.quick { " --quick" } else { "" },
            self.date,
            self.took.as_secs_f64()
        );
        if self.quick {
            let _ = writeln!(
                out,
                "**Quick mode:** small inputs, to check that the harness works; the figures say \
                 little about performance.\n"
            );
        }
        let _ = writeln!(
            out,
            "| # | measure | Cascade | peer | ratio | target | met |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|");
        for row in &self.rows {
            let met = match row.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {met} |",
                row.number, row.measure, row.cascade, row.peer, row.ratio, row.target
            );
        }
        let _ = writeln!(out, "\n## Machine\n");
        for line in &self.machine {
            let _ = writeln!(out, "- {line}");
        }
        let _ = writeln!(out, "\nPeers: {}.\n", self.peers.join("; "));
        let _ = writeln!(out, "## Details of this run\n");
        for row in &self.rows {
            let _ = writeln!(out, "### {}. {}\n", row.number, row.measure);
            for line in &row.details {
                let _ = writeln!(out, "- {line}");
            }
            let _ = writeln!(out);
        }
        if !preamble.is_empty() {
            let _ = writeln!(out, "{preamble}");
        }
        out
    }
}

/// Bytes as MiB/GiB with one decimal.
pub fn bytes(n: u64) -> String {
    let n = n as f64;
    if n >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", n / (1u64 << 30) as f64)
    } else if n >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", n / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KiB", n / 1024.0)
    }
}

/// Seconds with two decimals.
pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Throughput in MiB/s.
pub fn rate(bytes: u64, d: Duration) -> String {
    format!(
        "{:.0} MiB/s",
        bytes as f64 / (1u64 << 20) as f64 / d.as_secs_f64().max(1e-9)
    )
}

/// The machine: cores, memory, kernel, CPU model.
pub fn machine() -> Vec<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or("unknown".to_owned(), |kib| {
            format!("{:.1} GiB", kib as f64 / 1048576.0)
        });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    vec![
        format!("CPU: {cores} cores ({model})"),
        format!("Memory: {memory}"),
        format!("Kernel: Linux {}", kernel.trim()),
        "Storage: the work directory's file system; every process on loopback".to_owned(),
    ]
}
