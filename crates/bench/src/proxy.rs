//! A byte-counting TCP relay on loopback, put between a DP and its site so
//! that the bytes a transfer really costs on the wire (headers, manifests,
//! status traffic and TLS records and all) are counted, as rsync's
//! `--stats` counts its own.

use anyhow::Result;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// A running relay; counting goes on until the bench ends.
pub struct CountingProxy {
    /// `https://127.0.0.1:PORT`, to give the client instead of the server's URL.
    pub url: String,
    bytes: Arc<AtomicU64>,
}

impl CountingProxy {
    /// Relays connections made to a new loopback port to `upstream`
    /// (`https://HOST:PORT`).
    pub async fn start(upstream: &str) -> Result<CountingProxy> {
        let upstream = upstream
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("https://{}", listener.local_addr()?);
        let bytes = Arc::new(AtomicU64::new(0));
        let counter = bytes.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    tokio::join!(
                        relay(in_read, out_write, &counter),
                        relay(out_read, in_write, &counter)
                    );
                });
            }
        });
        Ok(CountingProxy { url, bytes })
    }

    /// Bytes relayed so far, both directions.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// Copies one direction, counting every byte as it passes (a keep-alive
/// connection may stay open for the whole run).
async fn relay(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, counter: &AtomicU64) {
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                counter.fetch_add(n as u64, Ordering::Relaxed);
                if to.write_all(&buffer[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}
