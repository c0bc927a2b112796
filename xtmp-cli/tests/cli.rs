//! End-to-end tests of the `xtmp` binary: each test runs the real executable as a
//! process, against real loopback sockets, with a temporary data directory and random
//! free ports. Every wait is bounded; servers and clients are killed when a test ends.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xtmp_proto::xtmp_crypto::xwing::XWingSecretKey;
use xtmp_proto::{
    ClientConfig, ClientHandshake, ClientOutcome, InsecureDeterministicRngForTestingOnly,
    MessageType, ServerConfig, ServerHandshaker, ServerOutcome, XTMPFlags,
};

const SEED_CONFIG: &str = r#"[xtmp_server]
bind_address = "127.0.0.1:8080"
max_connections = 10000
session_timeout = "3600s"
enable_compression = true
enable_encryption = true

[xtmp_security]
encryption_type = "PostQuantum"
key_rotation_interval = "300s"
require_authentication = true
"#;

fn xtmp() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xtmp"));
    c.env_remove("RUST_LOG")
        .env_remove("XTMP_CONFIG")
        .env_remove("XTMP_ADMIN_TOKEN")
        .env_remove("XTMP_DATA_DIR")
        .stdin(Stdio::null());
    c
}

/// Runs to completion with a deadline.
fn run(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn xtmp");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("command did not finish within 60 s: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "expected success, got {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

#[track_caller]
fn fails(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "expected failure\nstdout:\n{}\nstderr:\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stderr)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Minimal blocking HTTP GET (or another method) for the admin endpoint.
fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let code = buf
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (code, body)
}

struct Server {
    child: Child,
    dir: tempfile::TempDir,
    config: PathBuf,
    bind: SocketAddr,
    admin: SocketAddr,
}

impl Server {
    /// Starts `xtmp server start` with a config made of `[xtmp_server]` lines
    /// `server_extra` and `[xtmp_security]` lines `security_extra`.
    fn start(server_extra: &str, security_extra: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let bind: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = dir.path().join("xtmp.toml");
        std::fs::write(
            &config,
            format!(
                "[xtmp_server]\nbind_address = \"{bind}\"\nadmin_address = \"{admin}\"\ndata_dir = \"data\"\nheartbeat_interval = \"500ms\"\n{server_extra}\n[xtmp_security]\n{security_extra}\n"
            ),
        )
        .unwrap();
        Self::spawn(dir, config, bind, admin)
    }

    fn spawn(
        dir: tempfile::TempDir,
        config: PathBuf,
        bind: SocketAddr,
        admin: SocketAddr,
    ) -> Server {
        let stdout = std::fs::File::create(dir.path().join("stdout.txt")).unwrap();
        let stderr = std::fs::File::create(dir.path().join("stderr.txt")).unwrap();
        let child = xtmp()
            .args(["server", "start", "--config"])
            .arg(&config)
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut s = Server {
            child,
            dir,
            config,
            bind,
            admin,
        };
        s.wait_ready();
        s
    }

    fn token(&self) -> Option<String> {
        let t = std::fs::read_to_string(&self.config).unwrap();
        t.lines()
            .find_map(|l| l.strip_prefix("admin_token = \""))
            .map(|v| v.trim_end_matches('"').to_string())
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let token = self.token();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "server exited early with {status:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            if TcpStream::connect_timeout(&self.admin, Duration::from_millis(200)).is_ok()
                && http(self.admin, "GET", "/healthz", token.as_deref()).0 == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "server not ready within 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout.txt")).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.txt")).unwrap_or_default()
    }

    fn pub_key(&self) -> PathBuf {
        self.dir.path().join("data/server.pub")
    }

    fn client(&self, sub: &str) -> Command {
        let mut c = xtmp();
        c.args([
            "client",
            sub,
            "--server",
            &self.bind.to_string(),
            "--server-key",
        ])
        .arg(self.pub_key())
        .args(["--timeout", "10s"]);
        c
    }

    fn admin_cmd(&self, args: &[&str]) -> Command {
        let mut c = xtmp();
        c.args(["server"])
            .args(args)
            .arg("--config")
            .arg(&self.config);
        c
    }

    /// SIGTERM, then the exit status (bounded wait).
    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit within 30 s of SIGTERM\nstderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills a background child when dropped.
struct Bg(Child);
impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn server_status_metrics_clients_and_sigterm() {
    let mut server = Server::start("", "");
    let out = server.stdout();
    assert!(
        out.contains(&format!("listening on {}", server.bind)),
        "{out}"
    );
    assert!(out.contains("fingerprint:"), "{out}");
    // The public key printed on start is the one in server.pub.
    let pub_hex = std::fs::read_to_string(server.pub_key()).unwrap();
    assert_eq!(pub_hex.trim().len(), 2 * 1216);
    assert!(out.contains(pub_hex.trim()), "{out}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = server.dir.path().join("data/server.key");
        let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    // status: human and JSON, through --config and through --admin.
    let s = ok(&run(&mut server.admin_cmd(&["status"])));
    assert!(s.contains("uptime"), "{s}");
    assert!(s.contains("sessions active"), "{s}");
    assert!(s.contains(&server.bind.to_string()), "{s}");
    let j: serde_json::Value =
        serde_json::from_str(&ok(&run(&mut server.admin_cmd(&["status", "--json"])))).unwrap();
    assert!(j["uptime_secs"].as_f64().is_some(), "{j}");
    assert!(j["listeners"].is_array(), "{j}");
    let s = ok(&run(xtmp().args([
        "server",
        "status",
        "--admin",
        &server.admin.to_string(),
    ])));
    assert!(s.contains("handshakes completed"), "{s}");

    // Request/response (the application services answer out of the box), acknowledged
    // send, and error replies.
    let o = ok(&run(server.client("request").args([
        "--type",
        "RegistryQuery",
        "--data",
        "{\"prefix\":\"\"}",
    ])));
    assert_eq!(o.trim(), "{\"entries\":[],\"more\":false}");
    let o = ok(&run(server.client("request").args([
        "--type",
        "0x30",
        "--data",
        "{\"prefix\":\"\"}",
        "--json",
    ])));
    let j: serde_json::Value = serde_json::from_str(o.trim()).unwrap();
    assert_eq!(j["body_json"]["more"], false, "{j}");
    ok(&run(server.client("send").args([
        "--type",
        "RegistryQuery",
        "--data",
        "{\"prefix\":\"\"}",
        "--ack",
    ])));
    let e = fails(&run(server
        .client("request")
        .args(["--type", "0x20", "--data", "bundle"])));
    assert!(e.contains("0x0100"), "{e}");
    let e = fails(&run(server
        .client("request")
        .args(["--type", "Unknown", "--data", "x"])));
    assert!(e.contains("UNKNOWN_MESSAGE_TYPE"), "{e}");

    // A long-lived client: its session shows up in `server metrics`.
    let mut ping = Bg(server
        .client("ping")
        .args(["--count", "100", "--interval", "100ms", "--json"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(server.dir.path().join("ping.err")).unwrap())
        .spawn()
        .unwrap());
    let mut first = String::new();
    // Keep the pipe open for the client's whole life (a closed stdout ends it).
    let mut ping_out = BufReader::new(ping.0.stdout.take().unwrap());
    ping_out.read_line(&mut first).unwrap();
    let hello: serde_json::Value = serde_json::from_str(first.trim()).expect(&first);
    assert_eq!(hello["event"], "connected");
    let id = hello["session_id"].as_u64().unwrap();
    let id_hex = hello["session_id_hex"].as_str().unwrap().to_string();
    // The client reports the session once its side of the handshake is done; the server
    // lists it once it has confirmed it. Wait (bounded) for that.
    let deadline = Instant::now() + Duration::from_secs(10);
    while http(server.admin, "GET", &format!("/sessions/{id}"), None).0 != 200 {
        assert!(
            Instant::now() < deadline,
            "session {id_hex} never listed by the server"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let m = ok(&run(&mut server.admin_cmd(&[
        "metrics",
        "--session-id",
        &id_hex,
    ])));
    for field in [
        "key generation",
        "latency_ms",
        "packet_loss",
        "throughput_mbps",
        "error_rate",
        "frames received",
    ] {
        assert!(m.contains(field), "{field} missing in\n{m}");
    }
    let m = ok(&run(&mut server.admin_cmd(&[
        "metrics",
        "--session-id",
        &id.to_string(),
        "--json",
    ])));
    let j: serde_json::Value = serde_json::from_str(&m).unwrap();
    assert_eq!(j["session_id"].as_u64(), Some(id));
    assert!(j["quality"]["latency_ms"].is_number(), "{j}");
    let m = ok(&run(&mut server.admin_cmd(&[
        "metrics",
        "--session-id",
        &format!("0x{id:x}"),
        "--json",
    ])));
    assert!(m.contains(&id_hex));
    let e = fails(&run(&mut server.admin_cmd(&[
        "metrics",
        "--session-id",
        "0x1",
    ])));
    assert!(e.contains("no session"), "{e}");
    let e = fails(&run(&mut server.admin_cmd(&[
        "metrics",
        "--session-id",
        "xyz",
    ])));
    assert!(e.contains("session id"), "{e}");
    let l = ok(&run(&mut server.admin_cmd(&["sessions"])));
    assert!(l.contains(&id_hex), "{l}");

    // The admin endpoint answers bad requests with the right codes.
    assert_eq!(http(server.admin, "POST", "/status", None).0, 405);
    assert_eq!(http(server.admin, "GET", "/nope", None).0, 404);
    assert_eq!(http(server.admin, "GET", "/sessions/zz", None).0, 400);
    assert_eq!(http(server.admin, "GET", "/sessions/1", None).0, 404);
    let (c, body) = http(server.admin, "GET", &format!("/sessions/{id}"), None);
    assert_eq!(c, 200, "{body}");
    let (c, body) = http(server.admin, "GET", "/sessions", None);
    assert_eq!(c, 200);
    assert!(body.contains(&id_hex));

    // /metrics is valid Prometheus exposition.
    let (c, metrics) = http(server.admin, "GET", "/metrics", None);
    assert_eq!(c, 200);
    assert!(metrics.contains("xtmp_sessions_active"), "{metrics}");
    assert!(
        metrics.contains("xtmp_handshakes_completed_total"),
        "{metrics}"
    );
    promtool_check(&metrics);

    // SIGTERM with a live session: the server exits 0 and the client is told why.
    let ping_err = server.dir.path().join("ping.err");
    let status = server.terminate();
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let ping_status = loop {
        if let Some(s) = ping.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the ping client did not notice the shutdown"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut rest = String::new();
    let _ = ping_out.read_to_string(&mut rest);
    let err = std::fs::read_to_string(&ping_err).unwrap_or_default();
    assert!(!ping_status.success(), "{rest}\n{err}");
    assert!(
        err.contains("SHUTTING_DOWN") || err.contains("disconnected"),
        "{err}"
    );
}

fn promtool_check(metrics: &str) {
    let promtool =
        std::env::var_os("PROMTOOL").map_or_else(|| PathBuf::from("promtool"), PathBuf::from);
    let child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        println!("NOTICE: promtool not found; skipping `promtool check metrics` (install Debian's prometheus package)");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n---\n{metrics}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn seed_config_with_mutual_authentication() {
    let dir = tempfile::tempdir().unwrap();
    // The seed's file is valid as it is.
    let seed = dir.path().join("seed.toml");
    std::fs::write(&seed, SEED_CONFIG).unwrap();
    let o = ok(&run(xtmp().args(["config", "check"]).arg(&seed)));
    assert!(o.contains("OK"), "{o}");

    // A client key pair, authorized by fingerprint.
    let ck = dir.path().join("client.key");
    let kg: serde_json::Value = serde_json::from_str(&ok(&run(xtmp()
        .args(["keygen", "--json", "--out"])
        .arg(&ck))))
    .unwrap();
    let fp = kg["fingerprint"].as_str().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(
        dir.path().join("data/authorized_keys"),
        format!("# test clients\n{fp} test client\n"),
    )
    .unwrap();

    // The seed's file with only the addresses and the data directory changed.
    let bind: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text_cfg = SEED_CONFIG
        .replace("127.0.0.1:8080", &bind.to_string())
        .replace(
            "[xtmp_server]\n",
            &format!("[xtmp_server]\nadmin_address = \"{admin}\"\ndata_dir = \"data\"\n"),
        );
    let config = dir.path().join("xtmp.toml");
    std::fs::write(&config, text_cfg).unwrap();
    let mut server = Server::spawn(dir, config, bind, admin);

    let e = fails(&run(&mut server.client("ping")));
    assert!(
        e.contains("UNAUTHORIZED") || e.contains("client authentication"),
        "{e}"
    );
    let o = ok(&run(server
        .client("ping")
        .arg("--client-key")
        .arg(&ck)
        .args(["--count", "2", "--interval", "50ms"])));
    assert!(o.contains("heartbeat 2"), "{o}");
    // A client key that is not authorized is refused too.
    let other = server.dir.path().join("other.key");
    ok(&run(xtmp().args(["keygen", "--out"]).arg(&other)));
    fails(&run(server.client("ping").arg("--client-key").arg(&other)));
    assert!(server.terminate().success());
}

#[test]
fn admin_token_is_enforced() {
    let mut server = Server::start("admin_token = \"0123456789abcdef-secret\"\n", "");
    assert_eq!(http(server.admin, "GET", "/status", None).0, 401);
    assert_eq!(
        http(server.admin, "GET", "/status", Some("wrong-token-wrong")).0,
        401
    );
    assert_eq!(
        http(
            server.admin,
            "GET",
            "/status",
            Some("0123456789abcdef-secret")
        )
        .0,
        200
    );
    // --config supplies the token; --admin alone does not.
    ok(&run(&mut server.admin_cmd(&["status"])));
    let e = fails(&run(xtmp().args([
        "server",
        "status",
        "--admin",
        &server.admin.to_string(),
    ])));
    assert!(e.contains("401"), "{e}");
    ok(&run(xtmp()
        .args(["server", "status", "--admin", &server.admin.to_string()])
        .env("XTMP_ADMIN_TOKEN", "0123456789abcdef-secret")));
    // The token never appears in the server's output.
    assert!(!server.stdout().contains("0123456789abcdef-secret"));
    assert!(!server.stderr().contains("0123456789abcdef-secret"));
    assert!(server.terminate().success());
}

#[test]
fn config_check_names_key_value_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let check = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        run(xtmp().args(["config", "check"]).arg(&p))
    };
    let o = ok(&check("good.toml", SEED_CONFIG));
    assert!(o.contains("good.toml: OK"), "{o}");

    let e = fails(&check(
        "unknown.toml",
        &SEED_CONFIG.replace("max_connections", "max_conections"),
    ));
    assert!(e.contains("line 3"), "{e}");
    assert!(e.contains("xtmp_server.max_conections"), "{e}");
    assert!(e.contains("10000"), "{e}");
    assert!(e.contains("unknown field"), "{e}");

    let e = fails(&check(
        "value.toml",
        &SEED_CONFIG.replace("\"3600s\"", "\"an hour\""),
    ));
    assert!(e.contains("line 4"), "{e}");
    assert!(e.contains("xtmp_server.session_timeout"), "{e}");
    assert!(e.contains("\"an hour\""), "{e}");

    let e = fails(&check(
        "type.toml",
        &SEED_CONFIG.replace("max_connections = 10000", "max_connections = \"many\""),
    ));
    assert!(e.contains("line 3") && e.contains("\"many\""), "{e}");

    let e = fails(&check(
        "enc.toml",
        &SEED_CONFIG.replace("\"PostQuantum\"", "\"Kyber\""),
    ));
    assert!(
        e.contains("line 9") && e.contains("xtmp_security.encryption_type"),
        "{e}"
    );
    assert!(e.contains("\"Kyber\""), "{e}");

    let e = fails(&check(
        "syntax.toml",
        &SEED_CONFIG.replace("\"127.0.0.1:8080\"", "127.0.0.1:8080"),
    ));
    assert!(
        e.contains("line 2") && e.contains("TOML syntax error"),
        "{e}"
    );
    assert!(e.contains("xtmp_server.bind_address"), "{e}");

    let e = fails(&check(
        "plain.toml",
        &SEED_CONFIG.replace("enable_encryption = true", "enable_encryption = false"),
    ));
    assert!(e.contains("line 6") && e.contains("allow_plaintext"), "{e}");

    let e = fails(&run(xtmp()
        .args(["config", "check"])
        .arg(dir.path().join("missing.toml"))));
    assert!(e.contains("cannot read"), "{e}");

    // The embedded defaults, saved as a file, are a valid configuration.
    let defaults = ok(&run(xtmp().args(["config", "defaults"])));
    let o = ok(&check("defaults.toml", &defaults));
    assert!(o.contains("OK"), "{o}");
    let o = ok(&run(xtmp()
        .args(["config", "check", "--print"])
        .arg(dir.path().join("good.toml"))));
    assert!(o.contains("require_authentication = true"), "{o}");
    assert!(o.contains("session_timeout = \"1h\""), "{o}");

    // `server start` refuses the same file before binding anything.
    let p = dir.path().join("value.toml");
    let e = fails(&run(xtmp().args(["server", "start", "--config"]).arg(&p)));
    assert!(e.contains("xtmp_server.session_timeout"), "{e}");
}

#[test]
fn keygen_writes_private_seed_and_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("keys/id.key");
    let o = ok(&run(xtmp().args(["keygen", "--out"]).arg(&key)));
    assert!(o.contains("fingerprint"), "{o}");
    let seed = std::fs::read_to_string(&key).unwrap();
    assert_eq!(seed.trim().len(), 64);
    assert!(seed.trim().chars().all(|c| c.is_ascii_hexdigit()));
    let pubk = std::fs::read_to_string(dir.path().join("keys/id.pub")).unwrap();
    assert_eq!(pubk.trim().len(), 2432);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    // The public key is derived from the seed.
    let mut s = [0u8; 32];
    hex::decode_to_slice(seed.trim(), &mut s).unwrap();
    let sk = XWingSecretKey::from_seed(&s);
    assert_eq!(hex::encode(sk.public_key().as_bytes()), pubk.trim());
    assert!(o.contains(&hex::encode(xtmp_proto::fingerprint(sk.public_key()))));
    // Never overwritten.
    let e = fails(&run(xtmp().args(["keygen", "--out"]).arg(&key)));
    assert!(e.contains("already exists"), "{e}");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), seed);
}

fn sealed_frame() -> Vec<u8> {
    let mut rng = InsecureDeterministicRngForTestingOnly::new([7; 32]);
    let server_key = Arc::new(XWingSecretKey::from_seed(&[1; 32]));
    let mut server = ServerHandshaker::new(ServerConfig::new(server_key.clone()));
    let now = Instant::now();
    let (mut client, msg1) = ClientHandshake::start(
        ClientConfig::new(server_key.public_key().clone()),
        1,
        &mut rng,
    )
    .unwrap();
    let Ok(ServerOutcome::Accepted { ack, .. }) = server.handle(now, b"a", false, &msg1, &mut rng)
    else {
        panic!("handshake")
    };
    let Ok(ClientOutcome::Established(mut c)) = client.handle(now, &ack) else {
        panic!("handshake")
    };
    let mut frame = Vec::new();
    c.seal(
        MessageType::WalletBalance,
        XTMPFlags::REQUIRES_ACK,
        b"{\"wallet\":\"abc\"}",
        &mut frame,
    )
    .unwrap();
    frame
}

#[test]
fn inspect_explains_valid_and_invalid_frames() {
    let frame = sealed_frame();
    let o = ok(&run(xtmp().args(["inspect", &hex::encode(&frame)])));
    assert!(o.contains("WalletBalance (0x12)"), "{o}");
    assert!(o.contains("ENCRYPTED | REQUIRES_ACK"), "{o}");
    assert!(o.contains("Result: VALID"), "{o}");
    for field in [
        "magic",
        "version",
        "message_type",
        "flags",
        "session_id",
        "sequence_number",
        "payload_length",
        "checksum",
        "encryption_type",
        "reserved",
        "key_id",
        "nonce",
        "auth_tag",
    ] {
        assert!(o.contains(field), "{field} missing in\n{o}");
    }

    // A flipped payload bit: the CRC check fails, earlier checks pass.
    let mut bad = frame.clone();
    let n = bad.len();
    bad[n - 1] ^= 1;
    let out = run(xtmp().args(["inspect", &hex::encode(&bad)]));
    let o = text(&out.stdout);
    assert!(!out.status.success(), "{o}");
    assert!(o.contains("[FAIL] CRC-32"), "{o}");
    assert!(o.contains("[pass] magic"), "{o}");
    assert!(o.contains("CHECKSUM_MISMATCH"), "{o}");

    // From a binary file, as JSON.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("frame.bin");
    let mut garbage = frame.clone();
    garbage[0] = b'Q';
    std::fs::write(&f, &garbage).unwrap();
    let out = run(xtmp().args(["inspect", "--json", "--file"]).arg(&f));
    assert!(!out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["valid"], false);
    assert_eq!(j["checks"][1]["name"], "magic");
    assert_eq!(j["checks"][1]["outcome"], "fail");

    // From standard input, as hex text.
    let mut child = xtmp()
        .arg("inspect")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(hex::encode(&frame).as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());

    // Not hex at all: a clear error, no panic.
    let e = fails(&run(xtmp().args(["inspect", "zz"])));
    assert!(e.contains("not a hex digit"), "{e}");
    // Too short to hold a header.
    let o = text(&run(xtmp().args(["inspect", "58544d50"])).stdout);
    assert!(o.contains("[FAIL] header length"), "{o}");
}

#[test]
fn help_and_version() {
    let o = ok(&run(xtmp().arg("--help")));
    for c in ["server", "config", "keygen", "client", "inspect"] {
        assert!(o.contains(c), "{o}");
    }
    ok(&run(xtmp().arg("--version")));
    fails(&run(xtmp().args(["server", "frobnicate"])));
    // No server there: a clear error, not a hang.
    let port = free_port().to_string();
    let e = fails(&run(xtmp().args([
        "server",
        "status",
        "--admin",
        &format!("127.0.0.1:{port}"),
    ])));
    assert!(e.contains("cannot connect to the admin endpoint"), "{e}");
}

/// UDP listener in the configuration: listed by `server status --json`; a client over
/// `--transport udp` and one over `--transport hybrid` get answers; the session's metrics
/// show the datagram path.
#[test]
fn udp_and_hybrid_transports() {
    let udp_port = free_port();
    let server = Server::start(
        &format!("udp_bind_address = \"127.0.0.1:{udp_port}\"\n[xtmp_services]\nenabled = false"),
        "",
    );
    let udp = format!("127.0.0.1:{udp_port}");
    let status: serde_json::Value =
        serde_json::from_str(&ok(&run(&mut server.admin_cmd(&["status", "--json"])))).unwrap();
    let listeners = status["listeners"].as_array().unwrap();
    assert!(
        listeners
            .iter()
            .any(|l| l["kind"] == "udp" && l["address"] == udp.as_str()),
        "{status}"
    );
    assert!(listeners.iter().any(|l| l["kind"] == "tcp"), "{status}");
    assert!(server.stdout().contains(&format!("udp:             {udp}")));
    // UdpFast: --server is the UDP address.
    let mut c = xtmp();
    c.args([
        "client",
        "request",
        "--transport",
        "udp",
        "--server",
        &udp,
        "--server-key",
    ])
    .arg(server.pub_key())
    .args([
        "--type",
        "WalletBalance",
        "--data",
        "over udp",
        "--timeout",
        "10s",
    ]);
    let out = ok(&run(&mut c));
    assert!(out.contains("over udp"), "{out}");
    // Too large for a datagram: refused with MESSAGE_TOO_LARGE.
    let mut c = xtmp();
    c.args([
        "client",
        "request",
        "--transport",
        "udp",
        "--server",
        &udp,
        "--server-key",
    ])
    .arg(server.pub_key())
    .args([
        "--type",
        "WalletBalance",
        "--data",
        &"x".repeat(1500),
        "--timeout",
        "10s",
    ]);
    let err = fails(&run(&mut c));
    // (Compressible: it goes out, and the echo's reply cannot fit a datagram.)
    let e = err.to_ascii_lowercase();
    assert!(e.contains("too large") || e.contains("too_large"), "{err}");
    // Hybrid: TCP address; the UDP port comes from the server.
    let mut c = server.client("ping");
    c.args([
        "--transport",
        "hybrid",
        "-n",
        "2",
        "--interval",
        "100ms",
        "--json",
    ]);
    let out = ok(&run(&mut c));
    assert!(
        out.contains("\"hybrid\"") || out.contains("TcpUdpHybrid"),
        "{out}"
    );
}
