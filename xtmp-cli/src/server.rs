//! `xtmp server start|status|metrics|sessions`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tokio::net::TcpListener;
use xtmp::{ServerHandle, ServerOptions, XTMPServer};

use crate::admin::{self, AdminOptions, AdminSource};
use crate::cli::AdminArgs;
use crate::config::XtmpConfig;
use crate::{keys, out, outln, prom, render};

/// Serves the admin endpoint from a running server's handle.
struct HandleSource(Arc<ServerHandle>);

impl AdminSource for HandleSource {
    fn status_json(&self) -> String {
        serde_json::to_string(&self.0.status()).unwrap_or_else(|e| error_json(&e))
    }
    fn sessions_json(&self) -> String {
        serde_json::to_string(&self.0.sessions()).unwrap_or_else(|e| error_json(&e))
    }
    fn session_json(&self, id: u64) -> Option<String> {
        self.0
            .session_metrics(id)
            .map(|m| serde_json::to_string(&m).unwrap_or_else(|e| error_json(&e)))
    }
    fn prometheus(&self) -> String {
        prom::render(&self.0.status(), &self.0.sessions())
    }
}

fn error_json(e: &serde_json::Error) -> String {
    serde_json::json!({ "error": e.to_string() }).to_string()
}

/// Builds the runtime's options from the configuration.
pub fn server_options(
    cfg: &XtmpConfig,
    static_key: Arc<xtmp_crypto::xwing::XWingSecretKey>,
    authorized: HashSet<[u8; 32]>,
) -> ServerOptions {
    let s = &cfg.xtmp_server;
    let sec = &cfg.xtmp_security;
    let mut o = ServerOptions::new(static_key);
    o.bind_address = s.bind_address;
    o.max_connections = s.max_connections;
    o.session_timeout = s.session_timeout;
    o.enable_compression = s.enable_compression;
    o.compression_threshold = s.compression_threshold;
    o.encryption_types = cfg.encryption_types();
    o.allow_plaintext = sec.allow_plaintext || !s.enable_encryption;
    o.key_rotation_interval = sec.key_rotation_interval;
    o.require_authentication = sec.require_authentication;
    o.authorized_clients = authorized;
    o.max_payload = s.max_payload;
    o.handshake_timeout = s.handshake_timeout;
    o.read_timeout = s.read_timeout;
    o.handshakes_per_second_per_ip = s.handshakes_per_second_per_ip;
    o.max_queue_per_connection = s.max_queue_per_connection;
    o.drain_timeout = s.drain_timeout;
    o.heartbeat_interval = s.heartbeat_interval;
    o.write_timeout = s.write_timeout;
    o.retry_threshold = s.retry_threshold;
    o.max_inflight_per_connection = s.max_inflight_per_connection;
    o.max_streams_per_connection = s.max_streams_per_connection;
    o.udp_bind_address = s.udp_bind_address;
    o.allow_udp_sessions = s.enable_udp_sessions;
    o.allow_hybrid = s.enable_hybrid;
    o.datagram.budget = s.datagram_budget;
    o.datagram.hybrid_policy = cfg.hybrid_policy();
    o
}

/// The WebSocket listener from `ws_bind_address`, `ws_path` and the TLS files (`None`
/// without `ws_bind_address`).
///
/// # Errors
/// The TLS certificate or key file cannot be read or does not hold a usable pair.
pub fn websocket_options(cfg: &XtmpConfig) -> Result<Option<xtmp::WebSocketListenerOptions>> {
    let s = &cfg.xtmp_server;
    let Some(addr) = s.ws_bind_address else {
        return Ok(None);
    };
    let mut w = xtmp::WebSocketListenerOptions::new(addr);
    w.path = s.ws_path.clone();
    if let (Some(cert), Some(key)) = (&s.ws_tls_cert_file, &s.ws_tls_key_file) {
        w.tls = Some(
            xtmp::WsServerTls::from_pem_files(cert, key)
                .context("xtmp_server.ws_tls_cert_file / ws_tls_key_file")?,
        );
    }
    Ok(Some(w))
}

fn load_authorized(cfg: &XtmpConfig) -> Result<HashSet<[u8; 32]>> {
    let sec = &cfg.xtmp_security;
    let path = &sec.authorized_keys_file;
    if path.exists() {
        keys::read_authorized_keys(path)
    } else if sec.authorized_keys_file_explicit {
        bail!(
            "xtmp_security.authorized_keys_file: {} does not exist",
            path.display()
        )
    } else {
        Ok(HashSet::new())
    }
}

async fn wait_for_signal() -> Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term =
            signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
        let mut int =
            signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
        tokio::select! {
            _ = term.recv() => Ok("SIGTERM"),
            _ = int.recv() => Ok("SIGINT"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .context("cannot wait for Ctrl-C")?;
        Ok("Ctrl-C")
    }
}

/// `xtmp server start`: runs until SIGINT/SIGTERM, then shuts down gracefully.
///
/// # Errors
/// Bad configuration, unreadable key files, or a listener that cannot be bound.
pub async fn start(config: Option<&Path>) -> Result<()> {
    let (cfg, warnings) = match config {
        Some(p) => XtmpConfig::load(p)?,
        None => (XtmpConfig::default(), Vec::new()),
    };
    for w in &warnings {
        tracing::warn!("{w}");
    }
    match config {
        Some(p) => tracing::info!(file = %p.display(), "configuration loaded"),
        None => tracing::info!("no --config given: using the embedded defaults"),
    }
    let s = &cfg.xtmp_server;
    let sec = &cfg.xtmp_security;

    let key_path = &sec.static_key_file;
    let (sk, created) = keys::load_or_create_static_key(key_path)?;
    let sk = Arc::new(sk);
    let pub_path = keys::public_key_path(key_path);
    let fingerprint = keys::fingerprint_hex(sk.public_key());
    let authorized = load_authorized(&cfg)?;
    if sec.require_authentication {
        tracing::info!(
            file = %sec.authorized_keys_file.display(),
            keys = authorized.len(),
            "client authentication required"
        );
    }

    let services = crate::app_server::open(&cfg).await?;

    let admin_listener = TcpListener::bind(s.admin_address)
        .await
        .with_context(|| format!("cannot bind the admin endpoint on {}", s.admin_address))?;
    let admin_addr = admin_listener.local_addr()?;

    let mut opts = server_options(&cfg, sk.clone(), authorized.clone());
    opts.websocket = websocket_options(&cfg)?;
    let handle = XTMPServer::bind(opts, crate::app_server::router(services.as_ref()))
        .await
        .with_context(|| format!("cannot start the XTMP server on {}", s.bind_address))?;
    let handle = Arc::new(handle);
    let local = handle.local_addr();

    if created {
        tracing::info!(file = %key_path.display(), "created a new static key pair");
    }
    // The banner goes to stdout; a closed stdout must not stop the server.
    let banner = format!(
        "XTMP server listening on {local} (tcp)\n\
         admin endpoint:  http://{admin_addr}/ (GET /metrics, /status, /sessions, /sessions/{{id}})\n\
         static key:      {}{}\n\
         public key file: {}\n\
         fingerprint:     {fingerprint}\n\
         public key:      {}\n\
         encryption:      {}; client authentication {}\n",
        key_path.display(),
        if created { " (created now)" } else { "" },
        pub_path.display(),
        hex::encode(sk.public_key().as_bytes()),
        cfg.encryption_types()
            .iter()
            .map(|e| e.name())
            .collect::<Vec<_>>()
            .join(", "),
        if sec.require_authentication {
            format!("required ({} authorized keys)", authorized.len())
        } else {
            "optional".to_string()
        }
    );
    let banner = match handle.udp_local_addr() {
        Some(u) => format!("{banner}udp:             {u} (UdpFast sessions, hybrid UDP paths)\n"),
        None => banner,
    };
    let banner = match handle.websocket_url() {
        Some(url) => format!("{banner}websocket:       {url}\n"),
        None => banner,
    };
    let banner = match &services {
        Some(sv) => format!("{banner}{}", sv.banner()),
        None => format!("{banner}services:        off (xtmp_services.enabled = false): built-in demo handlers\n"),
    };
    {
        use std::io::Write;
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(banner.as_bytes()).and_then(|()| o.flush());
    }
    tracing::info!(%local, admin = %admin_addr, %fingerprint, "server started");

    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        Arc::new(HandleSource(handle.clone())),
        AdminOptions {
            token: s.admin_token.clone(),
            ..AdminOptions::default()
        },
        async {
            let _ = admin_stopped.await;
        },
    ));

    let reason = tokio::select! {
        sig = wait_for_signal() => sig?,
        () = handle.wait() => "the server stopped",
    };
    tracing::info!(reason, drain_timeout = ?s.drain_timeout, "shutting down");
    // A second signal during the drain ends the process at once.
    let forced = tokio::select! {
        () = handle.shutdown() => None,
        sig = wait_for_signal() => Some(sig?),
    };
    if let Some(sig) = forced {
        bail!("{sig} during the graceful shutdown: exiting without waiting for in-flight requests");
    }
    let _ = stop_admin.send(());
    let _ = admin_task.await;
    tracing::info!("shutdown complete");
    Ok(())
}

/// The admin address and token from `--admin`/`--config`/defaults.
fn admin_target(a: &AdminArgs) -> Result<(SocketAddr, Option<String>)> {
    let (addr, token) = match (&a.admin, &a.config) {
        (Some(addr), _) => (*addr, None),
        (None, Some(p)) => {
            let (cfg, _) = XtmpConfig::load(p)?;
            let addr = cfg.xtmp_server.admin_address;
            // A wildcard bind is reached through loopback.
            let addr = if addr.ip().is_unspecified() {
                let ip: std::net::IpAddr = if addr.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                };
                SocketAddr::new(ip, addr.port())
            } else {
                addr
            };
            (addr, cfg.xtmp_server.admin_token)
        }
        (None, None) => (XtmpConfig::default().xtmp_server.admin_address, None),
    };
    Ok((addr, a.admin_token.clone().or(token)))
}

async fn fetch(a: &AdminArgs, path: &str) -> Result<(u16, serde_json::Value, String)> {
    let (addr, token) = admin_target(a)?;
    let (code, body) = admin::get(addr, path, token.as_deref(), a.timeout).await?;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    if code == 401 {
        bail!("the admin endpoint at {addr} refused the request (401): pass --admin-token or set XTMP_ADMIN_TOKEN");
    }
    Ok((code, json, body))
}

fn remote_error(code: u16, json: &serde_json::Value, body: &str) -> anyhow::Error {
    let msg = json
        .get("error")
        .and_then(|e| e.as_str())
        .map_or_else(|| body.trim().to_string(), str::to_string);
    anyhow::anyhow!("the admin endpoint answered {code}: {msg}")
}

/// `xtmp server status`.
///
/// # Errors
/// The admin endpoint is unreachable or answers with an error.
pub async fn status(a: &AdminArgs, json: bool) -> Result<()> {
    let (code, v, body) = fetch(a, "/status").await?;
    if code != 200 {
        return Err(remote_error(code, &v, &body));
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        out!("{}", render::status(&v));
    }
    Ok(())
}

/// `xtmp server metrics --session-id`.
///
/// # Errors
/// Unknown session, or the admin endpoint is unreachable.
pub async fn metrics(a: &AdminArgs, id: u64, json: bool) -> Result<()> {
    let (code, v, body) = fetch(a, &format!("/sessions/{id}")).await?;
    if code == 404 {
        bail!("no session {id} (0x{id:016x}) on this server; `xtmp server sessions` lists the live ones");
    }
    if code != 200 {
        return Err(remote_error(code, &v, &body));
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        out!("{}", render::session(&v));
    }
    Ok(())
}

/// `xtmp server sessions`.
///
/// # Errors
/// The admin endpoint is unreachable or answers with an error.
pub async fn sessions(a: &AdminArgs, json: bool) -> Result<()> {
    let (code, v, body) = fetch(a, "/sessions").await?;
    if code != 200 {
        return Err(remote_error(code, &v, &body));
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        out!("{}", render::sessions(&v));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    fn key() -> Arc<xtmp_crypto::xwing::XWingSecretKey> {
        Arc::new(xtmp_crypto::xwing::XWingSecretKey::from_seed(&[9; 32]))
    }

    /// Whatever `config check` accepts, the runtime accepts too.
    #[test]
    fn checked_configs_are_valid_runtime_options() {
        for text in [
            "",
            "[xtmp_server]\nmax_payload = 4096\nmax_connections = 1\nmax_queue_per_connection = 1\nmax_inflight_per_connection = 1\nread_timeout = \"1ms\"\nhandshake_timeout = \"1ms\"\nheartbeat_interval = \"1ms\"\nwrite_timeout = \"1ms\"\nsession_timeout = \"1ms\"\n[xtmp_security]\nkey_rotation_interval = \"1s\"\n",
            "[xtmp_server]\nenable_encryption = false\n[xtmp_security]\nallow_plaintext = true\n",
            "[xtmp_security]\nencryption_type = \"Aes256Gcm\"\nallow_plaintext = true\n",
        ] {
            let (cfg, _) = XtmpConfig::from_toml(text, None, Path::new("")).unwrap();
            let o = server_options(&cfg, key(), HashSet::new());
            o.validate().unwrap();
        }
        let e = XtmpConfig::from_toml("[xtmp_server]\nmax_payload = 4095\n", None, Path::new(""))
            .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("xtmp_server.max_payload"));
    }

    #[test]
    fn options_carry_every_setting() {
        let (cfg, _) = XtmpConfig::from_toml(
            "[xtmp_server]\nbind_address = \"127.0.0.1:9\"\nmax_connections = 7\nsession_timeout = \"2m\"\nretry_threshold = 3\n[xtmp_security]\nrequire_authentication = true\nkey_rotation_interval = \"90s\"\n",
            None,
            Path::new(""),
        )
        .unwrap();
        let mut auth = HashSet::new();
        auth.insert([1u8; 32]);
        let o = server_options(&cfg, key(), auth);
        assert_eq!(o.bind_address.to_string(), "127.0.0.1:9");
        assert_eq!(o.max_connections, 7);
        assert_eq!(o.session_timeout, Duration::from_secs(120));
        assert_eq!(o.retry_threshold, 3);
        assert!(o.require_authentication);
        assert_eq!(o.authorized_clients.len(), 1);
        assert_eq!(o.key_rotation_interval, Duration::from_secs(90));
    }
}
