//! Test support: a site server started in-process on a real socket.

use crate::error::Result;
use cascade_protocol::{Client, EnrollRequest};

/// A site served on a real socket, on a runtime of its own, until stopped.
pub struct TestSite {
    /// Its URL.
    pub url: String,
    /// What `init` reported (tokens).
    pub report: crate::InitReport,
    /// Holds its data directory, `site`, and room for more.
    pub dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<std::thread::JoinHandle<Result<()>>>,
}

impl TestSite {
    /// Creates a central site `CEN` and serves it.
    pub async fn start() -> TestSite {
        let dir = tempfile::tempdir().unwrap();
        let site_dir = dir.path().join("site");
        let report = crate::init(&site_dir, "CEN", None, None).await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, url) = tokio::sync::oneshot::channel();
        // On a runtime of its own, as in its own process.
        let task = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(crate::run(
                &site_dir,
                "127.0.0.1:0",
                Default::default(),
                Default::default(),
                async {
                    let _ = stopped.await;
                },
                move |running| {
                    let _ = ready.send(running.url.clone());
                },
            ))
        });
        TestSite {
            url: url.await.unwrap(),
            report,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A client of the site pinning its certificate, with `token` (or none).
    pub fn client(&self, token: Option<&str>) -> Client {
        let pin = cascade_protocol::tls::Fingerprint::parse(&self.report.certificate);
        Client::new(&self.url, token, pin).unwrap()
    }

    /// A client with the credential of a newly enrolled DP, admitted and
    /// given package `tools` (created with one small file if it is not
    /// there yet), so that it may report on it.
    pub async fn dp(&self, name: &str) -> Client {
        let client = self.client(None);
        let enrolled = client
            .enroll_dp(&EnrollRequest {
                name: name.into(),
                join_token: self.report.dp_join_token.clone(),
                public_key: None,
            })
            .await
            .unwrap();
        let admin = client.with_token(&self.report.admin_token);
        if admin.package("tools").await.is_err() {
            let data = b"echo tools\n";
            let hash = cascade_content::ChunkHash::of(data);
            let mut frames = bytes::BytesMut::new();
            cascade_protocol::frames::put_frame(&mut frames, &hash, &cascade_content::encode(data));
            admin.upload_chunks(frames.freeze()).await.unwrap();
            admin
                .new_version(&cascade_protocol::NewVersionRequest {
                    name: "tools".into(),
                    intent: cascade_protocol::VersionIntent::Create,
                    entries: vec![cascade_content::Entry {
                        path: "install.sh".into(),
                        kind: cascade_content::EntryKind::File {
                            mode: 0o644,
                            size: data.len() as u64,
                            chunks: vec![cascade_content::ChunkRef {
                                hash,
                                size: data.len() as u32,
                            }],
                        },
                    }],
                    allow_unchanged: false,
                    allow_setuid: false,
                    uninstall_command: None,
                })
                .await
                .unwrap();
        }
        admin
            .approve_dp(name, Some("https://127.0.0.1:9"))
            .await
            .unwrap();
        admin
            .distribute(
                "tools",
                &cascade_protocol::DistributeRequest {
                    dps: vec![name.into()],
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        client.with_token(&enrolled.credential)
    }

    /// Shuts it down cleanly.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let task = self.task.take().unwrap();
        tokio::task::spawn_blocking(move || task.join().unwrap().unwrap())
            .await
            .unwrap();
    }
}

/// A central site `CEN` initialised in a temporary directory and opened,
/// not served: its state for calling the router in-process.
pub struct TestState {
    /// The opened site's state.
    pub state: crate::state::AppState,
    /// What `init` reported (tokens).
    pub report: crate::InitReport,
    /// Holds its data directory.
    _dir: tempfile::TempDir,
    /// The status writer, running on the state.
    writer: tokio::task::JoinHandle<()>,
}

impl TestState {
    /// Creates and opens the site, with its status writer running.
    pub async fn open() -> TestState {
        let dir = tempfile::tempdir().unwrap();
        let site_dir = dir.path().join("site");
        let report = crate::init(&site_dir, "CEN", None, None).await.unwrap();
        let opened = crate::open(&site_dir).await.unwrap();
        let writer = tokio::spawn(crate::workers::status_writer::status_writer(
            opened.state.clone(),
            opened.status_pending,
        ));
        // Kept open for the test's life: dropping it would not end
        // anything, but the state's receiver needs a live sender.
        std::mem::forget(opened.shutdown_tx);
        TestState {
            state: opened.state,
            report,
            _dir: dir,
            writer,
        }
    }
}

impl Drop for TestState {
    fn drop(&mut self) {
        self.writer.abort();
    }
}
