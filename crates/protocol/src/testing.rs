//! Hostile servers for other crates' tests (feature `testing`): a TLS
//! server on loopback that answers every request with a head of the
//! test's choosing and then a body without end.

use crate::tls::{Fingerprint, Identity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves `head` and then bytes without end to every request, over TLS
/// with a certificate of its own. Returns its base URL and the
/// certificate's fingerprint.
pub async fn endless_server(head: &'static str) -> (String, Fingerprint) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let pin = Identity::create(dir.path(), &[]).expect("a certificate");
    let tls = Identity::load(dir.path())
        .and_then(|identity| identity.acceptor())
        .expect("a TLS acceptor");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let url = crate::url_for(listener.local_addr().expect("a bound address"));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tls = tls.clone();
            tokio::spawn(async move {
                let Ok(mut stream) = tls.accept(stream).await else {
                    return;
                };
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let _ = stream.write_all(head.as_bytes()).await;
                let filler = vec![b' '; 64 * 1024];
                while stream.write_all(&filler).await.is_ok() {}
            });
        }
    });
    (url, pin)
}
