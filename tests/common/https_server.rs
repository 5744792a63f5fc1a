//! A tiny HTTPS server the tests own, on loopback, with a test CA: it plays a client's JWKS URL
//! (well-behaved, slow, huge, invalid, redirecting) so Ward's fetcher meets real TLS and HTTP.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub struct TestCa {
    pub ca_file: PathBuf,
    cert_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key_der: Vec<u8>,
}

impl TestCa {
    /// A CA (written to `dir/test-ca.pem`) and a leaf for localhost / 127.0.0.1 signed by it.
    pub fn new(dir: &std::path::Path) -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let ca_file = dir.join("test-ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        Self {
            ca_file,
            cert_chain: vec![leaf.der().clone()],
            key_der: leaf_key.serialize_der(),
        }
    }
}

/// What the server answers for a path.
#[derive(Clone, Debug)]
pub enum Reply {
    Json(String),
    /// JSON with this Cache-Control header.
    JsonCached(String, &'static str),
    /// Wait, then answer.
    Slow(Duration, String),
    /// Stream this many bytes with no Content-Length.
    Huge(usize),
    Redirect(String),
}

/// Maps a request path to what the server answers (`None`: 404).
pub type Routes = Arc<dyn Fn(&str) -> Option<Reply> + Send + Sync>;

pub struct HttpsServer {
    pub port: u16,
}

impl HttpsServer {
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }
}

pub async fn serve(ca: &TestCa, routes: Routes) -> HttpsServer {
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            ca.cert_chain.clone(),
            rustls::pki_types::PrivateKeyDer::Pkcs8(ca.key_der.clone().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let routes = routes.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head);
                let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let reply = routes(&path);
                let _ = match reply {
                    None => tls.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await,
                    Some(Reply::Json(body)) => write_json(&mut tls, &body, "max-age=300").await,
                    Some(Reply::JsonCached(body, cache)) => write_json(&mut tls, &body, cache).await,
                    Some(Reply::Slow(delay, body)) => {
                        tokio::time::sleep(delay).await;
                        write_json(&mut tls, &body, "max-age=300").await
                    }
                    Some(Reply::Redirect(to)) => {
                        tls.write_all(format!("HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes()).await
                    }
                    Some(Reply::Huge(size)) => {
                        let _ = tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n").await;
                        let chunk = vec![b' '; 16 * 1024];
                        let mut sent = 0;
                        while sent < size {
                            if tls.write_all(&chunk).await.is_err() {
                                break;
                            }
                            sent += chunk.len();
                        }
                        Ok(())
                    }
                };
                let _ = tls.shutdown().await;
            });
        }
    });
    HttpsServer { port }
}

async fn write_json<S: AsyncWriteExt + Unpin>(
    stream: &mut S,
    body: &str,
    cache_control: &str,
) -> std::io::Result<()> {
    stream
        .write_all(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: {cache_control}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
}

/// One request a recording server received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub head: String,
    pub body: String,
}

impl Recorded {
    /// A header's value (names compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

/// An HTTPS server that records every request (head and body) and answers 503 to the first
/// `fail_first` of them, 200 afterwards: a webhook receiver that is briefly down.
pub async fn serve_recording(
    ca: &TestCa,
    fail_first: usize,
) -> (HttpsServer, Arc<std::sync::Mutex<Vec<Recorded>>>) {
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            ca.cert_chain.clone(),
            rustls::pki_types::PrivateKeyDer::Pkcs8(ca.key_der.clone().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Arc<std::sync::Mutex<Vec<Recorded>>> = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let Ok(mut tls) = acceptor.accept(stream).await else {
                continue;
            };
            let mut data = Vec::new();
            let mut buf = [0u8; 4096];
            let (head, body) = loop {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => break (String::new(), String::new()),
                    Ok(n) => data.extend_from_slice(&buf[..n]),
                }
                let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&data[..end]).to_string();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (n, v) = l.split_once(':')?;
                        n.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                if data.len() >= end + 4 + length {
                    let body =
                        String::from_utf8_lossy(&data[end + 4..end + 4 + length]).to_string();
                    break (head, body);
                }
            };
            let n = {
                let mut all = record.lock().unwrap();
                all.push(Recorded { head, body });
                all.len()
            };
            let status = if n <= fail_first {
                "503 Service Unavailable"
            } else {
                "200 OK"
            };
            let _ = tls
                .write_all(
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await;
            let _ = tls.shutdown().await;
        }
    });
    (HttpsServer { port }, seen)
}
