//! A TCP proxy the test owns, in front of the machine's PostgreSQL: pointing a Ward at it lets
//! a test make "the database" vanish and return without touching the shared server.
//!
//! `cut()` closes every live connection and refuses new ones (accepted, then closed at once, so
//! libpq fails fast instead of waiting for a timeout); `restore()` forwards again.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

pub struct TcpProxy {
    pub port: u16,
    shared: Arc<Shared>,
    accept: AbortHandle,
}

struct Shared {
    upstream: String,
    cut: AtomicBool,
    live: Mutex<Vec<AbortHandle>>,
    /// Connections refused while cut.
    refused: AtomicUsize,
}

impl TcpProxy {
    /// Forwards a free loopback port to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let shared = Arc::new(Shared {
            upstream: upstream.to_owned(),
            cut: AtomicBool::new(false),
            live: Mutex::new(Vec::new()),
            refused: AtomicUsize::new(0),
        });
        let accepting = Arc::clone(&shared);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                if accepting.cut.load(Ordering::SeqCst) {
                    accepting.refused.fetch_add(1, Ordering::SeqCst);
                    drop(inbound);
                    continue;
                }
                let upstream = accepting.upstream.clone();
                let task = tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let mut inbound = inbound;
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
                let mut live = accepting.live.lock().unwrap();
                live.retain(|t| !t.is_finished());
                live.push(task.abort_handle());
            }
        })
        .abort_handle();
        Self {
            port,
            shared,
            accept,
        }
    }

    /// `url` (a PostgreSQL URL on 127.0.0.1:5432) rewritten to go through this proxy.
    pub fn url_for(&self, url: &str) -> String {
        url.replacen("127.0.0.1:5432", &format!("127.0.0.1:{}", self.port), 1)
    }

    /// The database goes away: live connections are closed, new ones refused.
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        for task in self.shared.live.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// How many connections were refused while cut.
    pub fn refused(&self) -> usize {
        self.shared.refused.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
