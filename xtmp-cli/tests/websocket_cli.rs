//! End-to-end test of the WebSocket transport through the `xtmp` binary: `server start`
//! with `ws_bind_address`, `client ping --transport ws` (and a `tcp,ws` order falling
//! back), `server status --json` listing the WebSocket listener, and `config check` on the
//! WebSocket keys. Bounded waits; the server is killed when the test ends.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn xtmp() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xtmp"));
    c.env_remove("RUST_LOG")
        .env_remove("XTMP_CONFIG")
        .env_remove("XTMP_ADMIN_TOKEN")
        .env_remove("XTMP_DATA_DIR")
        .env_remove("XTMP_SERVER")
        .env_remove("XTMP_SERVER_KEY")
        .stdin(Stdio::null());
    c
}

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

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn websocket_listener_status_and_clients() {
    let dir = tempfile::tempdir().unwrap();
    let (bind, admin, ws) = (free_addr(), free_addr(), free_addr());
    let config = dir.path().join("xtmp.toml");
    std::fs::write(
        &config,
        format!(
            "[xtmp_server]\nbind_address = \"{bind}\"\nadmin_address = \"{admin}\"\ndata_dir = \"data\"\nws_bind_address = \"{ws}\"\nws_path = \"/v1/xtmp\"\n"
        ),
    )
    .unwrap();
    ok(&run(xtmp().args(["config", "check"]).arg(&config)));
    let stdout = std::fs::File::create(dir.path().join("stdout.txt")).unwrap();
    let stderr = std::fs::File::create(dir.path().join("stderr.txt")).unwrap();
    let mut server = Killed(
        xtmp()
            .args(["server", "start", "--config"])
            .arg(&config)
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect_timeout(&admin, Duration::from_millis(200)).is_err()
        || TcpStream::connect_timeout(&ws, Duration::from_millis(200)).is_err()
    {
        if let Some(s) = server.0.try_wait().unwrap() {
            panic!(
                "server exited with {s:?}: {}",
                std::fs::read_to_string(dir.path().join("stderr.txt")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "server not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("ws://{ws}/v1/xtmp");
    let banner = std::fs::read_to_string(dir.path().join("stdout.txt")).unwrap();
    assert!(
        banner.contains(&format!("websocket:       {url}")),
        "{banner}"
    );
    let key = dir.path().join("data/server.pub");

    // Over WebSocket only.
    let out = ok(&run(xtmp()
        .args(["client", "ping", "--server", &url, "--server-key"])
        .arg(&key)
        .args(["--json", "--timeout", "10s"])));
    let hello: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(hello["event"], "connected");
    assert_eq!(hello["transport"], "ws", "{hello}");
    assert_eq!(hello["connection_type"], "WebSocketFallback");
    assert_eq!(hello["endpoint"], url.as_str());

    // The order tcp,ws: TCP refused (nothing listens there), so WebSocket.
    let dead = free_addr();
    let out = ok(&run(xtmp()
        .args([
            "client",
            "ping",
            "--server",
            &dead.to_string(),
            "--server-key",
        ])
        .arg(&key)
        .args([
            "--ws-url",
            &url,
            "--transport",
            "tcp,ws",
            "--step-timeout",
            "3s",
            "--json",
        ])));
    let hello: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(hello["transport"], "ws", "{hello}");
    assert_eq!(
        hello["transports_skipped"][0]["connection_type"],
        "TcpReliable"
    );
    // TCP works: it stays on TCP, and the text output says so.
    let out = ok(&run(xtmp()
        .args([
            "client",
            "ping",
            "--server",
            &bind.to_string(),
            "--server-key",
        ])
        .arg(&key)
        .args(["--ws-url", &url, "--transport", "tcp,ws"])));
    assert!(out.contains(" over tcp "), "{out}");

    // Errors a user can act on.
    let err = fails(&run(xtmp()
        .args([
            "client",
            "ping",
            "--server",
            &format!("ws://{ws}/wrong"),
            "--server-key",
        ])
        .arg(&key)));
    assert!(err.contains("404"), "{err}");
    let err = fails(&run(xtmp()
        .args([
            "client",
            "ping",
            "--server",
            &bind.to_string(),
            "--server-key",
        ])
        .arg(&key)
        .args(["--transport", "ws"])));
    assert!(err.contains("--ws-url"), "{err}");

    // The status document lists both listeners.
    let out = ok(&run(xtmp().args([
        "server",
        "status",
        "--json",
        "--admin",
        &admin.to_string(),
    ])));
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    let listeners = status["listeners"].as_array().unwrap();
    assert!(listeners
        .iter()
        .any(|l| l["kind"] == "tcp" && l["address"] == bind.to_string().as_str()));
    assert!(
        listeners
            .iter()
            .any(|l| l["kind"] == "websocket" && l["address"] == url.as_str()),
        "{status}"
    );
    drop(server);

    // config check on the WebSocket keys.
    let bad = dir.path().join("bad.toml");
    for (body, key) in [
        (
            "ws_bind_address = \"127.0.0.1:9\"\nws_tls_cert_file = \"cert.pem\"\n",
            "xtmp_server.ws_tls_cert_file",
        ),
        (
            "ws_tls_key_file = \"key.pem\"\n",
            "xtmp_server.ws_tls_key_file",
        ),
        (
            "ws_bind_address = \"127.0.0.1:9\"\nws_path = \"xtmp\"\n",
            "xtmp_server.ws_path",
        ),
        (
            "bind_address = \"127.0.0.1:9\"\nws_bind_address = \"127.0.0.1:9\"\n",
            "xtmp_server.ws_bind_address",
        ),
    ] {
        std::fs::write(&bad, format!("[xtmp_server]\n{body}")).unwrap();
        let err = fails(&run(xtmp().args(["config", "check"]).arg(&bad)));
        assert!(err.contains(key), "{body}: {err}");
    }
}
