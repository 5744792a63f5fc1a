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
