//! End-to-end tests of the application commands (`xtmp wallet|bundle|registry|subscribe|
//! qlock|tlsls`): the real binary against a real `xtmp server start` process, over
//! loopback sockets, with temporary directories and random free ports. Every wait is
//! bounded; processes are killed when a test ends.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn xtmp() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xtmp"));
    for v in [
        "RUST_LOG",
        "XTMP_CONFIG",
        "XTMP_ADMIN_TOKEN",
        "XTMP_DATA_DIR",
        "XTMP_SERVER",
        "XTMP_SERVER_KEY",
    ] {
        c.env_remove(v);
    }
    c.stdin(Stdio::null());
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
fn ok_json(o: &Output) -> Value {
    let s = ok(o);
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// Asserts failure and that stderr names the application error (`NAME (0xCODE)`).
#[track_caller]
fn fails_with(o: &Output, name: &str, code: &str) -> String {
    let err = text(&o.stderr);
    assert!(
        !o.status.success(),
        "expected failure with {name}\nstdout:\n{}\nstderr:\n{err}",
        text(&o.stdout)
    );
    assert!(
        err.contains(&format!("{name} ({code})")),
        "expected {name} ({code}) in:\n{err}"
    );
    err
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server {
    child: Child,
    dir: tempfile::TempDir,
    bind: SocketAddr,
}

impl Server {
    /// `xtmp server start` with `[xtmp_server]` addresses and `data_dir = "data"`, and
    /// `services` as the `[xtmp_services]` section.
    fn start(services: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, services)
    }

    fn start_in(dir: tempfile::TempDir, services: &str) -> Server {
        let bind: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = dir.path().join("xtmp.toml");
        std::fs::write(
            &config,
            format!(
                "[xtmp_server]\nbind_address = \"{bind}\"\nadmin_address = \"{admin}\"\ndata_dir = \"data\"\n\n[xtmp_services]\n{services}\n"
            ),
        )
        .unwrap();
        let stdout = std::fs::File::create(dir.path().join("stdout.txt")).unwrap();
        let stderr = std::fs::File::create(dir.path().join("stderr.txt")).unwrap();
        let child = xtmp()
            .args(["server", "start", "--config"])
            .arg(&config)
            .current_dir(dir.path())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut s = Server { child, dir, bind };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = s.child.try_wait().unwrap() {
                panic!(
                    "server exited early with {status:?}\nstdout:\n{}\nstderr:\n{}",
                    s.file("stdout.txt"),
                    s.file("stderr.txt")
                );
            }
            // The banner is printed once the server listens.
            if s.file("stdout.txt").contains("services:")
                && TcpStream::connect_timeout(&bind, Duration::from_millis(200)).is_ok()
            {
                break;
            }
            assert!(Instant::now() < deadline, "server not ready within 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// An `xtmp` command in the test directory, reaching this server through the
    /// `XTMP_SERVER` / `XTMP_SERVER_KEY` environment variables (as in the README).
    fn xtmp(&self, args: &[&str]) -> Command {
        let mut c = xtmp();
        c.current_dir(self.dir.path())
            .env("XTMP_SERVER", self.bind.to_string())
            .env("XTMP_SERVER_KEY", "data/server.pub")
            .args(args);
        c
    }

    /// SIGTERM, then the exit status (bounded wait); the directory stays.
    fn stop(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "server did not stop");
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

/// A background `xtmp` process whose stdout is read line by line; killed when dropped.
struct Bg {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Bg {
    fn spawn(cmd: &mut Command) -> Bg {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out: ChildStdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(l) = line else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Bg { child, lines: rx }
    }

    /// The next stdout line (bounded wait).
    #[track_caller]
    fn line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(30))
            .expect("no line from the background command within 30 s")
    }

    #[track_caller]
    fn json_line(&self) -> Value {
        let l = self.line();
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))
    }

    /// Waits (bounded) for the process to exit.
    #[track_caller]
    fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "background command did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn address(server: &Server, wallet: &str) -> String {
    let v = ok_json(&run(
        &mut server.xtmp(&["wallet", "address", "--wallet", wallet, "--json"])
    ));
    v["address"].as_str().unwrap().to_string()
}

fn balance(server: &Server, wallet: &str) -> u64 {
    let v = ok_json(&run(
        &mut server.xtmp(&["wallet", "balance", "--wallet", wallet, "--json"])
    ));
    v["balance"].as_u64().unwrap()
}

/// The README's walk-through: start the server, create two wallets, fund one, transfer,
/// watch the live update arrive; then the wallet and bundle failure cases.
#[test]
fn newcomer_walkthrough_wallets_and_bundles() {
    let server = Server::start("");
    let banner = server.file("stdout.txt");
    assert!(banner.contains("services:"), "{banner}");
    assert!(
        banner.contains("data/mint-authority.wallet, created now"),
        "{banner}"
    );
    assert!(server.path("data/xtmp-services.redb").is_file());

    // Two wallets (offline), registered.
    let o = ok(&run(&mut server.xtmp(&[
        "wallet",
        "new",
        "--out",
        "alice.wallet",
    ])));
    assert!(o.contains("address:"), "{o}");
    let bob: Value = ok_json(&run(&mut server.xtmp(&[
        "wallet",
        "new",
        "--out",
        "bob.wallet",
        "--json",
    ])));
    let bob_addr = bob["address"].as_str().unwrap().to_string();
    assert!(bob_addr.starts_with("xw") && bob_addr.len() == 66);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(server.path("alice.wallet"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
    let alice_addr = address(&server, "alice.wallet");
    assert_eq!(address(&server, "alice.wallet.pub"), alice_addr);
    let e = run(&mut server.xtmp(&["wallet", "new", "--out", "alice.wallet"]));
    assert!(text(&e.stderr).contains("already exists"));

    let o = ok(&run(&mut server.xtmp(&[
        "wallet",
        "register",
        "--wallet",
        "alice.wallet",
    ])));
    assert!(o.contains(&format!("registered {alice_addr}")), "{o}");
    let r = ok_json(&run(&mut server.xtmp(&[
        "wallet",
        "register",
        "--wallet",
        "bob.wallet",
        "--json",
    ])));
    assert_eq!(r["created"], true);
    let o = ok(&run(&mut server.xtmp(&[
        "wallet",
        "auth",
        "--wallet",
        "bob.wallet",
    ])));
    assert!(o.contains(&format!("authenticated as {bob_addr}")), "{o}");

    // Fund alice through the mint authority the server created.
    let m = ok_json(&run(&mut server.xtmp(&[
        "wallet",
        "mint",
        "--wallet",
        "data/mint-authority.wallet",
        "--to",
        "alice.wallet",
        "--amount",
        "100",
        "--json",
    ])));
    assert_eq!(m["to_balance"], 100);
    // Nobody else may mint.
    fails_with(
        &run(&mut server.xtmp(&[
            "wallet",
            "mint",
            "--wallet",
            "bob.wallet",
            "--to",
            "alice.wallet",
            "--amount",
            "5",
        ])),
        "FORBIDDEN",
        "0x0104",
    );

    // Watch bob's wallet in a child process; transfer; the live update arrives.
    let mut live = Bg::spawn(&mut server.xtmp(&[
        "subscribe",
        "live",
        "--wallet",
        "bob.wallet",
        "--json",
        "--count",
        "1",
        "--for",
        "30s",
    ]));
    let sub = live.json_line();
    assert_eq!(sub["subscribed"], "LiveUpdates", "{sub}");
    let o = ok(&run(&mut server.xtmp(&[
        "wallet",
        "send",
        "--wallet",
        "alice.wallet",
        "--to",
        "bob.wallet",
        "--amount",
        "25",
    ])));
    assert!(o.contains("sent 25"), "{o}");
    assert!(
        o.contains(&format!("{alice_addr}: balance 75, next nonce 1")),
        "{o}"
    );
    let push = live.json_line();
    assert_eq!(push["kind"], "wallet", "{push}");
    assert_eq!(push["address"], bob_addr.as_str(), "{push}");
    assert_eq!(push["balance"], 25, "{push}");
    assert!(push["txid"].is_string(), "{push}");
    assert!(live.wait().success());
    assert_eq!(balance(&server, &bob_addr), 25);
    assert_eq!(balance(&server, "alice.wallet"), 75);

    // Failures carry their application code.
    fails_with(
        &run(&mut server.xtmp(&[
            "wallet",
            "send",
            "--wallet",
            "bob.wallet",
            "--to",
            "alice.wallet",
            "--amount",
            "500",
        ])),
        "INSUFFICIENT_FUNDS",
        "0x0115",
    );
    let o = run(&mut server.xtmp(&[
        "wallet",
        "send",
        "--wallet",
        "bob.wallet",
        "--to",
        "alice.wallet",
        "--amount",
        "500",
        "--json",
    ]));
    assert!(!o.status.success());
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["error"]["code_hex"], "0x0115", "{j}");
    assert_eq!(j["error"]["name"], "INSUFFICIENT_FUNDS", "{j}");
    // A replayed nonce (alice's nonce 0 was used by the transfer above).
    fails_with(
        &run(&mut server.xtmp(&[
            "wallet",
            "send",
            "--wallet",
            "alice.wallet",
            "--to",
            "bob.wallet",
            "--amount",
            "1",
            "--nonce",
            "0",
        ])),
        "NONCE_REPLAYED",
        "0x0116",
    );
    // Bad input files are errors, not panics.
    std::fs::write(server.path("junk.wallet"), "not a key\n").unwrap();
    let o = run(&mut server.xtmp(&[
        "wallet",
        "send",
        "--wallet",
        "junk.wallet",
        "--to",
        "bob.wallet",
        "--amount",
        "1",
    ]));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("junk.wallet"));

    // Bundles: alice submits two transfers plus one signed by bob; confirm applies all.
    let signed = ok(&run(&mut server.xtmp(&[
        "wallet",
        "sign",
        "--wallet",
        "bob.wallet",
        "--to",
        "alice.wallet",
        "--amount",
        "3",
        "--nonce",
        "0",
    ])));
    std::fs::write(server.path("txs.jsonl"), &signed).unwrap();
    let b = ok_json(&run(&mut server.xtmp(&[
        "bundle",
        "submit",
        "--wallet",
        "alice.wallet",
        "--transfer",
        "bob.wallet:10",
        "--transfer",
        &format!("{bob_addr}:5"),
        "--tx-file",
        "txs.jsonl",
        "--json",
    ])));
    assert_eq!(b["state"], "pending", "{b}");
    assert_eq!(b["transaction_count"], 3, "{b}");
    let id = b["bundle_id"].as_str().unwrap().to_string();
    let s = ok(&run(&mut server.xtmp(&["bundle", "status", &id])));
    assert!(s.contains("pending"), "{s}");
    // Only the submitter (or the mint authority) may confirm.
    fails_with(
        &run(&mut server.xtmp(&["bundle", "confirm", "--wallet", "bob.wallet", &id])),
        "FORBIDDEN",
        "0x0104",
    );
    let c = ok_json(&run(&mut server.xtmp(&[
        "bundle",
        "confirm",
        "--wallet",
        "alice.wallet",
        &id,
        "--json",
    ])));
    assert_eq!(c["state"], "confirmed", "{c}");
    assert_eq!(balance(&server, "alice.wallet"), 75 - 15 + 3);
    assert_eq!(balance(&server, "bob.wallet"), 25 + 15 - 3);
    fails_with(
        &run(&mut server.xtmp(&["bundle", "confirm", "--wallet", "alice.wallet", &id])),
        "BUNDLE_FINAL",
        "0x0123",
    );
    let sync = ok_json(&run(
        &mut server.xtmp(&["bundle", "sync", "--limit", "1", "--all", "--json"])
    ));
    let entries = sync["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{sync}");
    assert_eq!(entries[1]["state"], "confirmed");
    assert_eq!(sync["next_cursor"], 2);
    let again = ok_json(&run(
        &mut server.xtmp(&["bundle", "sync", "--cursor", "2", "--json"])
    ));
    assert_eq!(again["entries"].as_array().unwrap().len(), 0);
    // An overdrawing bundle is refused at submission with the failing transaction's code.
    let e = fails_with(
        &run(&mut server.xtmp(&[
            "bundle",
            "submit",
            "--wallet",
            "bob.wallet",
            "--transfer",
            "alice.wallet:1000",
        ])),
        "INSUFFICIENT_FUNDS",
        "0x0115",
    );
    assert!(e.contains("transaction 0"), "{e}");
    let e = fails_with(
        &run(&mut server.xtmp(&["bundle", "status", &"ab".repeat(32)])),
        "BUNDLE_NOT_FOUND",
        "0x0121",
    );
    assert!(!e.is_empty());

    // Nothing panicked, and SIGTERM still ends the server cleanly.
    let mut server = server;
    assert!(server.stop().success());
}

#[test]
fn registry_set_get_stamp_and_verify() {
    let server = Server::start("");
    for w in ["alice.wallet", "bob.wallet"] {
        ok(&run(&mut server.xtmp(&["wallet", "new", "--out", w])));
        ok(&run(
            &mut server.xtmp(&["wallet", "register", "--wallet", w])
        ));
    }
    let o = ok(&run(&mut server.xtmp(&[
        "registry",
        "set",
        "--wallet",
        "alice.wallet",
        "services/alice/endpoint",
        "tcp://10.0.0.7:7000",
    ])));
    assert!(o.contains("version 1"), "{o}");
    // Without --expected-version the current version is read first.
    let r = ok_json(&run(&mut server.xtmp(&[
        "registry",
        "set",
        "--wallet",
        "alice.wallet",
        "services/alice/endpoint",
        "tcp://10.0.0.8:7000",
        "--json",
    ])));
    assert_eq!(r["version"], 2);
    // A writer that read version 1 loses: STALE_VERSION.
    let e = fails_with(
        &run(&mut server.xtmp(&[
            "registry",
            "set",
            "--wallet",
            "alice.wallet",
            "services/alice/endpoint",
            "tcp://10.0.0.9:7000",
            "--expected-version",
            "1",
        ])),
        "STALE_VERSION",
        "0x0131",
    );
    assert!(e.contains("current 2"), "{e}");
    fails_with(
        &run(&mut server.xtmp(&[
            "registry",
            "set",
            "--wallet",
            "bob.wallet",
            "services/alice/endpoint",
            "mine now",
        ])),
        "NOT_OWNER",
        "0x0132",
    );
    let g = ok_json(&run(&mut server.xtmp(&[
        "registry",
        "get",
        "services/alice/endpoint",
        "--json",
    ])));
    assert_eq!(g["value"], "tcp://10.0.0.8:7000", "{g}");
    assert_eq!(g["version"], 2);
    let o = ok(&run(&mut server.xtmp(&[
        "registry",
        "get",
        "--prefix",
        "services/",
    ])));
    assert!(
        o.contains("services/alice/endpoint = tcp://10.0.0.8:7000"),
        "{o}"
    );
    fails_with(
        &run(&mut server.xtmp(&["registry", "get", "nothing/here"])),
        "REGISTRY_KEY_NOT_FOUND",
        "0x0130",
    );

    // Stamp a document; verify the receipt offline, with the key from the data directory
    // and with the one fetched through TLSLS `issuer`.
    std::fs::write(server.path("contract.txt"), "signed on the dotted line\n").unwrap();
    let receipt = ok_json(&run(&mut server.xtmp(&[
        "registry",
        "stamp",
        "--file",
        "contract.txt",
        "--out",
        "receipt.json",
        "--json",
    ])));
    assert!(receipt["serial"].as_u64().unwrap() >= 1);
    ok(&run(&mut server.xtmp(&[
        "tlsls",
        "issuer",
        "--out",
        "issuer.pub",
    ])));
    for key in ["data/services-signing.key.pub", "issuer.pub"] {
        let o = ok(&run(&mut server.xtmp(&[
            "registry",
            "verify-stamp",
            "--receipt",
            "receipt.json",
            "--signing-key",
            key,
            "--file",
            "contract.txt",
        ])));
        assert!(o.contains("valid stamp"), "{o}");
        assert!(o.contains("matches the content"), "{o}");
    }
}

/// Offline stamp checks need no server: run from the test directory after it stopped.
#[test]
fn verify_stamp_rejects_tampering_offline() {
    let server = Server::start("");
    std::fs::write(server.path("doc.txt"), "v1\n").unwrap();
    ok(&run(&mut server.xtmp(&[
        "registry",
        "stamp",
        "--file",
        "doc.txt",
        "--out",
        "receipt.json",
    ])));
    ok(&run(
        &mut server.xtmp(&["wallet", "new", "--out", "w.wallet"])
    ));
    // Offline: the server is stopped.
    let mut server = server;
    assert!(server.stop().success());
    let status: &Path = server.dir.path();
    let offline = |args: &[&str]| {
        let mut c = xtmp();
        c.current_dir(status).args(args);
        run(&mut c)
    };
    let key = "data/services-signing.key.pub";
    ok(&offline(&[
        "registry",
        "verify-stamp",
        "--receipt",
        "receipt.json",
        "--signing-key",
        key,
    ]));
    // Other content.
    std::fs::write(status.join("doc.txt"), "v2\n").unwrap();
    fails_with(
        &offline(&[
            "registry",
            "verify-stamp",
            "--receipt",
            "receipt.json",
            "--signing-key",
            key,
            "--file",
            "doc.txt",
        ]),
        "INVALID_STAMP",
        "0x0135",
    );
    // A tampered timestamp.
    let mut r: Value =
        serde_json::from_str(&std::fs::read_to_string(status.join("receipt.json")).unwrap())
            .unwrap();
    r["timestamp_ms"] = Value::from(r["timestamp_ms"].as_u64().unwrap() - 1000);
    std::fs::write(status.join("forged.json"), r.to_string()).unwrap();
    let o = offline(&[
        "registry",
        "verify-stamp",
        "--receipt",
        "forged.json",
        "--signing-key",
        key,
        "--json",
    ]);
    fails_with(&o, "INVALID_STAMP", "0x0135");
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["error"]["code_hex"], "0x0135");
    // Another key.
    fails_with(
        &offline(&[
            "registry",
            "verify-stamp",
            "--receipt",
            "receipt.json",
            "--signing-key",
            "w.wallet.pub",
        ]),
        "INVALID_STAMP",
        "0x0135",
    );
    // Junk receipt and key: errors, not panics.
    std::fs::write(status.join("junk.json"), "{\"serial\": \"x\"}").unwrap();
    let o = offline(&[
        "registry",
        "verify-stamp",
        "--receipt",
        "junk.json",
        "--signing-key",
        key,
    ]);
    assert_eq!(o.status.code(), Some(1));
    let o = offline(&[
        "registry",
        "verify-stamp",
        "--receipt",
        "receipt.json",
        "--signing-key",
        "abcd",
    ]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn qlock_conflict_between_two_clients() {
    let server = Server::start("");
    ok(&run(
        &mut server.xtmp(&["wallet", "new", "--out", "a.wallet"])
    ));
    let a_addr = address(&server, "a.wallet");
    let sock = server.path("jobs.sock");
    let sock_s = sock.to_str().unwrap();
    // Client A takes the lock and holds it (auto-renewing) in the background.
    let mut holder = Bg::spawn(&mut server.xtmp(&[
        "qlock",
        "acquire",
        "jobs",
        "--lease",
        "3s",
        "--wallet",
        "a.wallet",
        "--control",
        sock_s,
        "--json",
    ]));
    let acquired = holder.json_line();
    assert_eq!(acquired["event"], "acquired", "{acquired}");
    let token = acquired["fencing_token"].as_u64().unwrap();

    // Client B is refused while A holds it.
    let e = fails_with(
        &run(&mut server.xtmp(&["qlock", "acquire", "jobs", "--lease", "5s", "--hold", "0s"])),
        "LOCK_HELD",
        "0x0140",
    );
    assert!(!e.is_empty());
    let i = ok_json(&run(
        &mut server.xtmp(&["qlock", "inspect", "jobs", "--json"])
    ));
    assert_eq!(i["held"], true, "{i}");
    assert_eq!(i["held_by_you"], false, "{i}");
    assert_eq!(i["fencing_token"], token, "{i}");
    assert_eq!(i["holder_wallet"], a_addr.as_str(), "{i}");

    // The lease outlives its 3 s because A renews it.
    std::thread::sleep(Duration::from_millis(3500));
    let i = ok_json(&run(
        &mut server.xtmp(&["qlock", "inspect", "jobs", "--json"])
    ));
    assert_eq!(i["held"], true, "auto-renew kept it: {i}");

    // Renew and release through A's control socket; A exits 0 after releasing.
    let r = ok_json(&run(&mut server.xtmp(&[
        "qlock",
        "renew",
        "--control",
        sock_s,
        "--lease",
        "10s",
        "--json",
    ])));
    assert_eq!(r["fencing_token"], token, "{r}");
    assert_eq!(holder.json_line()["event"], "renewed");
    let r = ok_json(&run(&mut server.xtmp(&[
        "qlock",
        "release",
        "--control",
        sock_s,
        "--json",
    ])));
    assert_eq!(r["held"], false, "{r}");
    assert_eq!(holder.json_line()["event"], "released");
    assert!(holder.wait().success());
    assert!(!sock.exists(), "the control socket is removed");
    let o = run(&mut server.xtmp(&["qlock", "release", "--control", sock_s]));
    assert!(!o.status.success());

    // Now B gets it, with a larger fencing token, and runs a command under it.
    let out = run(&mut server.xtmp(&[
        "qlock",
        "acquire",
        "jobs",
        "--lease",
        "5s",
        "--json",
        "--",
        "sh",
        "-c",
        "echo \"token=$XTMP_QLOCK_FENCING_TOKEN\"; exit 3",
    ]));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let first: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    let t2 = first["fencing_token"].as_u64().unwrap();
    assert!(
        t2 > token,
        "fencing tokens only increase: {token} then {t2}"
    );
    assert!(stdout.contains(&format!("token={t2}")), "{stdout}");
    assert!(stdout.contains("\"released\""), "{stdout}");

    // A lease that is not renewed runs out; the holder says so and fails.
    let o = run(&mut server.xtmp(&[
        "qlock",
        "acquire",
        "short",
        "--lease",
        "300ms",
        "--no-auto-renew",
    ]));
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("ran out"), "{}", text(&o.stderr));
    let i = ok_json(&run(
        &mut server.xtmp(&["qlock", "inspect", "short", "--json"])
    ));
    assert_eq!(i["held"], false, "{i}");

    // A holder that dies frees the lock with its session.
    let mut h = Bg::spawn(&mut server.xtmp(&["qlock", "acquire", "crash", "--json"]));
    assert_eq!(h.json_line()["event"], "acquired");
    let _ = h.child.kill();
    let _ = h.child.wait();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let i = ok_json(&run(
            &mut server.xtmp(&["qlock", "inspect", "crash", "--json"])
        ));
        if i["held"] == false {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dead holder's lock was never freed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn tlsls_issue_validate_renew_revoke() {
    let server = Server::start("");
    ok(&run(&mut server.xtmp(&["keygen", "--out", "node.key"])));
    // Issuing needs proof of the key: without it, KEY_PROOF_REQUIRED.
    fails_with(
        &run(&mut server.xtmp(&[
            "tlsls",
            "issue",
            "--subject",
            "node-1.example",
            "--key",
            "node.pub",
        ])),
        "KEY_PROOF_REQUIRED",
        "0x0156",
    );
    // A pqIK session with that key proves it.
    let cert = ok_json(&run(&mut server.xtmp(&[
        "tlsls",
        "issue",
        "--subject",
        "node-1.example",
        "--client-key",
        "node.key",
        "--validity",
        "1d",
        "--out",
        "cert.json",
        "--json",
    ])));
    assert_eq!(cert["subject"], "node-1.example");
    let serial = cert["serial"].as_u64().unwrap();
    let o = ok(&run(&mut server.xtmp(&[
        "tlsls",
        "validate",
        "--cert",
        "cert.json",
    ])));
    assert!(o.contains("valid"), "{o}");
    ok(&run(&mut server.xtmp(&[
        "tlsls",
        "issuer",
        "--out",
        "issuer.pub",
    ])));
    let o = ok(&run(&mut server.xtmp(&[
        "tlsls",
        "verify",
        "--cert",
        "cert.json",
        "--issuer-key",
        "issuer.pub",
    ])));
    assert!(o.contains("valid"), "{o}");
    // The mint authority may manage any key.
    let other = ok_json(&run(&mut server.xtmp(&[
        "tlsls",
        "issue",
        "--subject",
        "other.example",
        "--key",
        "node.pub",
        "--wallet",
        "data/mint-authority.wallet",
        "--json",
    ])));
    assert!(other["serial"].as_u64().unwrap() > serial);
    let renewed = ok_json(&run(&mut server.xtmp(&[
        "tlsls",
        "renew",
        "--cert",
        "cert.json",
        "--client-key",
        "node.key",
        "--out",
        "cert2.json",
        "--json",
    ])));
    assert!(renewed["serial"].as_u64().unwrap() > serial);
    let rev = ok_json(&run(&mut server.xtmp(&[
        "tlsls",
        "revoke",
        "--serial",
        &serial.to_string(),
        "--reason",
        "superseded",
        "--client-key",
        "node.key",
        "--json",
    ])));
    assert_eq!(rev["serial"], serial);
    fails_with(
        &run(&mut server.xtmp(&["tlsls", "validate", "--cert", "cert.json"])),
        "CERT_REVOKED",
        "0x0152",
    );
    ok(&run(&mut server.xtmp(&[
        "tlsls",
        "validate",
        "--cert",
        "cert2.json",
    ])));
    let crl = ok_json(&run(&mut server.xtmp(&["tlsls", "crl", "--json"])));
    assert_eq!(crl["revocations"][0]["serial"], serial, "{crl}");
    // A forged certificate fails both checks.
    let mut forged = cert.clone();
    forged["subject"] = Value::from("evil.example");
    std::fs::write(server.path("forged.json"), forged.to_string()).unwrap();
    fails_with(
        &run(&mut server.xtmp(&["tlsls", "validate", "--cert", "forged.json"])),
        "CERT_INVALID",
        "0x0153",
    );
    fails_with(
        &run(&mut server.xtmp(&[
            "tlsls",
            "verify",
            "--cert",
            "forged.json",
            "--issuer-key",
            "issuer.pub",
        ])),
        "CERT_INVALID",
        "0x0153",
    );
}

#[test]
fn services_section_genesis_limits_and_off_switch() {
    // A wallet funded by genesis, no mint authority.
    let dir = tempfile::tempdir().unwrap();
    let v = ok_json(&run(xtmp().current_dir(dir.path()).args([
        "wallet",
        "new",
        "--out",
        "carol.wallet",
        "--json",
    ])));
    let carol = v["address"].as_str().unwrap().to_string();
    let section = format!(
        "auto_mint_authority = false\nmax_lease = \"1s\"\ngenesis = [\n  {{ address = \"{carol}\", amount = 1000 }},\n]\n"
    );
    // `config check` validates the section, naming key, value and line.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[xtmp_services]\ngenesis = [\n  { address = \"xw00\", amount = 5 },\n]\n",
    )
    .unwrap();
    let o = run(xtmp().args(["config", "check"]).arg(&bad));
    let e = text(&o.stderr);
    assert!(!o.status.success());
    assert!(e.contains("line 3"), "{e}");
    assert!(e.contains("xtmp_services.genesis[0].address"), "{e}");
    assert!(e.contains("\"xw00\""), "{e}");
    std::fs::write(&bad, "[xtmp_services]\nmax_leese = \"1s\"\n").unwrap();
    let e = text(&run(xtmp().args(["config", "check"]).arg(&bad)).stderr);
    assert!(
        e.contains("line 2") && e.contains("did you mean `max_lease`?"),
        "{e}"
    );

    let server = Server::start_in(dir, &section);
    assert!(server.file("stdout.txt").contains("mint authority:  none"));
    assert_eq!(balance(&server, "carol.wallet"), 1000);
    // Genesis funds are spendable once the key is registered (send registers it).
    ok(&run(&mut server.xtmp(&[
        "wallet",
        "new",
        "--out",
        "dave.wallet",
    ])));
    ok(&run(&mut server.xtmp(&[
        "wallet",
        "register",
        "--wallet",
        "dave.wallet",
    ])));
    ok(&run(&mut server.xtmp(&[
        "wallet",
        "send",
        "--wallet",
        "carol.wallet",
        "--to",
        "dave.wallet",
        "--amount",
        "1",
    ])));
    fails_with(
        &run(&mut server.xtmp(&[
            "wallet",
            "mint",
            "--wallet",
            "carol.wallet",
            "--to",
            "dave.wallet",
            "--amount",
            "1",
        ])),
        "FORBIDDEN",
        "0x0104",
    );
    // The configured limit applies.
    fails_with(
        &run(&mut server.xtmp(&["qlock", "acquire", "x", "--lease", "5s", "--hold", "0s"])),
        "INVALID_LEASE",
        "0x0143",
    );
    // Metrics stream: two pushes.
    let o = ok(&run(&mut server.xtmp(&[
        "subscribe",
        "metrics",
        "--interval",
        "100ms",
        "--count",
        "2",
        "--json",
    ])));
    let lines: Vec<&str> = o.lines().collect();
    assert_eq!(lines.len(), 3, "{o}");
    let m: Value = serde_json::from_str(lines[2]).unwrap();
    assert_eq!(m["services"]["supply"], 1000, "{m}");
    let mut server = server;
    assert!(server.stop().success());
    let dir = &server.dir;

    // Restarting with different genesis allocations is refused, naming the problem.
    let changed = section.replace("1000", "2000");
    let bind = free_port();
    let admin = free_port();
    std::fs::write(
        dir.path().join("changed.toml"),
        format!(
            "[xtmp_server]\nbind_address = \"127.0.0.1:{bind}\"\nadmin_address = \"127.0.0.1:{admin}\"\ndata_dir = \"data\"\n[xtmp_services]\n{changed}"
        ),
    )
    .unwrap();
    let o =
        run(xtmp()
            .current_dir(dir.path())
            .args(["server", "start", "--config", "changed.toml"]));
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("genesis"), "{}", text(&o.stderr));

    // With the services off, the runtime's built-in demo handlers answer (echo).
    let off = Server::start("enabled = false");
    assert!(off.file("stdout.txt").contains("services:        off"));
    let o = ok(&run(&mut off.xtmp(&[
        "client",
        "request",
        "--type",
        "WalletBalance",
        "--data",
        "{\"wallet\":\"abc\"}",
    ])));
    assert_eq!(o.trim(), "{\"wallet\":\"abc\"}");
}

/// One attempted operation of the durability test and whether the CLI reported success.
#[derive(Debug, Clone)]
struct Attempt {
    to: usize,
    amount: u64,
    acked: bool,
}

/// SIGKILL in the middle of a steady load of transfers (each `xtmp wallet send` with an
/// explicit nonce) and bundle confirmations; after a restart every acknowledged write is
/// there, every wallet's state is exactly its applied prefix of attempts (nothing
/// half-applied), and the total of all balances is unchanged.
#[test]
fn sigkill_under_load_keeps_acknowledged_writes() {
    const SENDERS: usize = 3;
    const GENESIS_EACH: u64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    // Wallets 0..SENDERS send transfers; wallet SENDERS submits and confirms bundles.
    let mut addrs = Vec::new();
    for i in 0..=SENDERS {
        let v = ok_json(&run(xtmp().current_dir(dir.path()).args([
            "wallet",
            "new",
            "--out",
            &format!("w{i}.wallet"),
            "--json",
        ])));
        addrs.push(v["address"].as_str().unwrap().to_string());
    }
    let genesis: String = addrs
        .iter()
        .map(|a| format!("  {{ address = \"{a}\", amount = {GENESIS_EACH} }},\n"))
        .collect();
    let section = format!("auto_mint_authority = false\ngenesis = [\n{genesis}]\n");
    let mut server = Server::start_in(dir, &section);
    for i in 0..=SENDERS {
        ok(&run(&mut server.xtmp(&[
            "wallet",
            "register",
            "--wallet",
            &format!("w{i}.wallet"),
        ])));
    }

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bind = server.bind.to_string();
    let root = server.dir.path().to_path_buf();
    let cmd = {
        let bind = bind.clone();
        let root = root.clone();
        move |args: &[String]| {
            let mut c = xtmp();
            c.current_dir(&root)
                .env("XTMP_SERVER", &bind)
                .env("XTMP_SERVER_KEY", "data/server.pub")
                .args(args)
                .args(["--timeout", "5s"]);
            run(&mut c)
        }
    };
    // Transfer threads: sender i sends to (i + 1) % SENDERS with nonces 0, 1, 2, ...
    let mut threads = Vec::new();
    for i in 0..SENDERS {
        let stop = stop.clone();
        let cmd = cmd.clone();
        threads.push(std::thread::spawn(move || {
            let mut attempts: Vec<Attempt> = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let to = (i + 1) % SENDERS;
                let amount = 1 + attempts.len() as u64 % 7;
                let nonce = attempts.len();
                let o = cmd(&[
                    "wallet".into(),
                    "send".into(),
                    "--wallet".into(),
                    format!("w{i}.wallet"),
                    "--to".into(),
                    format!("w{to}.wallet"),
                    "--amount".into(),
                    amount.to_string(),
                    "--nonce".into(),
                    nonce.to_string(),
                ]);
                let acked = o.status.success();
                attempts.push(Attempt { to, amount, acked });
                if !acked {
                    // The server is gone (or the outcome is unknown): stop here, so every
                    // later nonce is certainly unused.
                    break;
                }
            }
            attempts
        }));
    }
    // Bundle thread: two transfers per bundle (to wallets 0 and 1), submit then confirm.
    let bundle_thread = {
        let stop = stop.clone();
        let cmd = cmd.clone();
        std::thread::spawn(move || {
            let mut bundles: Vec<(String, bool)> = Vec::new(); // (id, confirm acked)
            let mut nonce = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let o = cmd(&[
                    "bundle".into(),
                    "submit".into(),
                    "--wallet".into(),
                    format!("w{SENDERS}.wallet"),
                    "--transfer".into(),
                    "w0.wallet:2".into(),
                    "--transfer".into(),
                    "w1.wallet:3".into(),
                    "--nonce".into(),
                    nonce.to_string(),
                    "--json".into(),
                ]);
                if !o.status.success() {
                    break;
                }
                let v: Value = serde_json::from_slice(&o.stdout).unwrap();
                let id = v["bundle_id"].as_str().unwrap().to_string();
                let c = cmd(&[
                    "bundle".into(),
                    "confirm".into(),
                    "--wallet".into(),
                    format!("w{SENDERS}.wallet"),
                    id.clone(),
                ]);
                bundles.push((id, c.status.success()));
                if !c.status.success() {
                    break;
                }
                nonce += 2;
            }
            bundles
        })
    };

    // Let the load run, then SIGKILL the server mid-stream.
    std::thread::sleep(Duration::from_secs(3));
    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap()
        .success());
    let _ = server.child.wait();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let attempts: Vec<Vec<Attempt>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let bundles = bundle_thread.join().unwrap();
    let acked: usize = attempts
        .iter()
        .map(|a| a.iter().filter(|x| x.acked).count())
        .sum();
    assert!(acked > 0, "no transfer was acknowledged before the kill");
    println!(
        "killed after {acked} acknowledged transfers ({} attempted) and {} confirmed bundles ({} attempted)",
        attempts.iter().map(Vec::len).sum::<usize>(),
        bundles.iter().filter(|b| b.1).count(),
        bundles.len()
    );

    // Restart on the same data directory (same config).
    let dir = std::mem::replace(&mut server.dir, tempfile::tempdir().unwrap());
    drop(server);
    let server = Server::start_in(dir, &section);
    let state = |i: usize| {
        ok_json(&run(
            &mut server.xtmp(&["wallet", "balance", "--wallet", &addrs[i], "--json"])
        ))
    };
    let mut expected = [i128::from(GENESIS_EACH); SENDERS + 1];
    for (i, a) in attempts.iter().enumerate() {
        let next_nonce = state(i)["next_nonce"].as_u64().unwrap() as usize;
        let acked_here = a.iter().filter(|x| x.acked).count();
        assert!(
            next_nonce >= acked_here,
            "wallet {i}: {acked_here} acknowledged transfers but next nonce {next_nonce}"
        );
        assert!(
            next_nonce <= a.len(),
            "wallet {i}: next nonce {next_nonce} beyond the {} attempts",
            a.len()
        );
        // The applied transfers are exactly the first `next_nonce` attempts.
        for x in &a[..next_nonce] {
            expected[i] -= i128::from(x.amount);
            expected[x.to] += i128::from(x.amount);
        }
    }
    let mut bundle_nonce = 0u64;
    for (id, confirm_acked) in &bundles {
        let s = ok_json(&run(&mut server.xtmp(&["bundle", "status", id, "--json"])));
        let state = s["state"].as_str().unwrap().to_string();
        if *confirm_acked {
            assert_eq!(state, "confirmed", "acknowledged confirmation lost: {s}");
        }
        assert_ne!(state, "rejected", "{s}");
        if state == "confirmed" {
            expected[SENDERS] -= 5;
            expected[0] += 2;
            expected[1] += 3;
            bundle_nonce += 2;
        }
    }
    assert_eq!(
        state(SENDERS)["next_nonce"].as_u64().unwrap(),
        bundle_nonce,
        "the bundle wallet's nonce matches its confirmed bundles"
    );
    let mut total: i128 = 0;
    for (i, e) in expected.iter().enumerate() {
        let b = i128::from(state(i)["balance"].as_u64().unwrap());
        assert_eq!(
            b, *e,
            "wallet {i}: balance {b}, expected {e} from its applied writes"
        );
        total += b;
    }
    assert_eq!(total, i128::from(GENESIS_EACH) * (SENDERS as i128 + 1));
}
