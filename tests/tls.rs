//! TLS: with a certificate configured Ward speaks TLS 1.2 and 1.3 and refuses anything older.

use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ProtocolVersion, RootCertStore, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{Backend, TestApp};

struct TlsFixture {
    _dir: tempfile::TempDir,
    app: TestApp,
    cert_der: rustls::pki_types::CertificateDer<'static>,
    port: u16,
}

async fn tls_app() -> Option<TlsFixture> {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();
    let app = TestApp::builder(Backend::Sqlite)
        .env("WARD_TLS_CERT", cert_path.to_str().unwrap())
        .env("WARD_TLS_KEY", key_path.to_str().unwrap())
        .start()
        .await?;
    let port = app.base.rsplit(':').next().unwrap().parse().unwrap();
    Some(TlsFixture {
        _dir: dir,
        app,
        cert_der: certified.cert.der().clone(),
        port,
    })
}

/// One HTTPS GET over a client restricted to `version`; returns the negotiated version and
/// the raw response.
async fn get_over(
    fixture: &TlsFixture,
    version: &'static SupportedProtocolVersion,
    path: &str,
) -> (Option<ProtocolVersion>, String) {
    let mut roots = RootCertStore::empty();
    roots.add(fixture.cert_der.clone()).unwrap();
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let stream = TcpStream::connect(("127.0.0.1", fixture.port))
        .await
        .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), stream)
        .await
        .expect("handshake");
    let negotiated = tls.get_ref().1.protocol_version();
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    (negotiated, String::from_utf8_lossy(&response).into_owned())
}

/// A TLS 1.1 ClientHello, byte by byte, as an old client would send it.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend([0x42; 32]); // random
    body.push(0); // no session id
    body.extend([0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]); // ECDHE-RSA-AES128-SHA, AES128-SHA
    body.extend([0x01, 0x00]); // null compression
    let mut handshake = vec![0x01, 0x00];
    handshake.extend((body.len() as u16).to_be_bytes());
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_and_tls13_work_and_tls11_is_refused() {
    let Some(fixture) = tls_app().await else {
        return;
    };

    let (version, response) = get_over(&fixture, &rustls::version::TLS12, "/healthz").await;
    assert_eq!(version, Some(ProtocolVersion::TLSv1_2));
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("strict-transport-security: max-age="),
        "HSTS must be sent over TLS: {response}"
    );

    // Over HTTPS cookies are `__Host-` cookies: Secure, host-only, Path=/.
    let (_, login) = get_over(&fixture, &rustls::version::TLS13, "/login").await;
    let cookie = login
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie: {login}"));
    assert!(
        cookie.contains("__Host-ward_browser=")
            && cookie.contains("Secure")
            && cookie.contains("Path=/")
            && !cookie.contains("Domain"),
        "{cookie}"
    );

    let (version, response) = get_over(&fixture, &rustls::version::TLS13, "/jwks").await;
    assert_eq!(version, Some(ProtocolVersion::TLSv1_3));
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    let mut raw = TcpStream::connect(("127.0.0.1", fixture.port))
        .await
        .unwrap();
    raw.write_all(&tls11_client_hello()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        raw.read_to_end(&mut answer),
    )
    .await;
    assert!(answer.len() >= 7, "expected a TLS alert, got {answer:?}");
    assert_eq!(
        answer[0], 0x15,
        "expected an alert record, not a ServerHello: {answer:?}"
    );
    assert_eq!(answer[5], 2, "alert must be fatal");
    // protocol_version (70) or handshake_failure (40): either way no TLS 1.1 session.
    assert!(
        [40, 70].contains(&answer[6]),
        "unexpected alert: {answer:?}"
    );

    assert_eq!(fixture.app.base.split("://").next(), Some("https"));
}
