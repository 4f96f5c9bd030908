//! The signals that stop a Cascade process, for every binary (the site
//! server, the DP and the agents): here because this is the lowest crate
//! they all depend on, like `logging.rs`.

/// Resolves on SIGTERM or SIGINT (Ctrl-C). A signal handler that cannot be
/// installed leaves the other one waiting.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let wait_for = |kind: SignalKind| async move {
        match signal(kind) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = wait_for(SignalKind::terminate()) => {}
        _ = wait_for(SignalKind::interrupt()) => {}
    }
}
