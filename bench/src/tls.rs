//! rustls and quinn configurations for the peers: TLS 1.3 only, aws-lc-rs provider,
//! X25519MLKEM768 as the **only** key-exchange group, an ECDSA P-256 self-signed server
//! certificate, no session resumption (every handshake is a full one).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::NoServerSessionStorage;

/// ALPN used by the QUIC peer.
pub const ALPN: &[u8] = b"xtmp-bench";
/// Server name in the certificate.
pub const SERVER_NAME: &str = "localhost";

/// The aws-lc-rs provider restricted to X25519MLKEM768.
pub fn pq_provider() -> Arc<CryptoProvider> {
    let base = rustls::crypto::aws_lc_rs::default_provider();
    Arc::new(CryptoProvider {
        kx_groups: vec![rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768],
        ..base
    })
}

/// A fresh self-signed ECDSA P-256 certificate for `localhost`: (certificate DER, PKCS#8 key DER).
pub fn self_signed() -> Result<(Vec<u8>, Vec<u8>)> {
    let ck = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
        .context("generating the peer certificate")?;
    Ok((ck.cert.der().to_vec(), ck.signing_key.serialize_der()))
}

/// The TLS server configuration.
pub fn server_config(cert: &[u8], key: &[u8], alpn: bool) -> Result<rustls::ServerConfig> {
    let mut c = rustls::ServerConfig::builder_with_provider(pq_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| anyhow!("rustls server versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec())),
        )
        .map_err(|e| anyhow!("rustls server certificate: {e}"))?;
    c.session_storage = Arc::new(NoServerSessionStorage {});
    c.send_tls13_tickets = 0;
    if alpn {
        c.alpn_protocols = vec![ALPN.to_vec()];
        c.max_early_data_size = 0;
    }
    Ok(c)
}

/// The TLS client configuration trusting `cert`.
pub fn client_config(cert: &[u8], alpn: bool) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.to_vec()))
        .map_err(|e| anyhow!("peer certificate as trust anchor: {e}"))?;
    let mut c = rustls::ClientConfig::builder_with_provider(pq_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| anyhow!("rustls client versions: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.resumption = Resumption::disabled();
    if alpn {
        c.alpn_protocols = vec![ALPN.to_vec()];
    }
    Ok(c)
}

fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(120)).unwrap_or(quinn::VarInt::MAX.into()),
    ));
    t.datagram_receive_buffer_size(Some(4 << 20));
    t.datagram_send_buffer_size(1 << 20);
    t
}

/// The QUIC server configuration.
pub fn quinn_server(cert: &[u8], key: &[u8]) -> Result<quinn::ServerConfig> {
    let tls = server_config(cert, key, true)?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| anyhow!("quinn server crypto: {e}"))?;
    let mut c = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    c.transport_config(Arc::new(transport_config()));
    Ok(c)
}

/// The QUIC client configuration trusting `cert`.
pub fn quinn_client(cert: &[u8]) -> Result<quinn::ClientConfig> {
    let tls = client_config(cert, true)?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| anyhow!("quinn client crypto: {e}"))?;
    let mut c = quinn::ClientConfig::new(Arc::new(crypto));
    c.transport_config(Arc::new(transport_config()));
    Ok(c)
}
