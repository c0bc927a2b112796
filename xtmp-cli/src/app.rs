//! The application commands: `xtmp wallet|bundle|registry|subscribe|qlock|tlsls`.
//!
//! Each command opens one connection (the common client options of `xtmp client`), does
//! its requests in that session — authenticating as `--wallet` first where the operation
//! acts for a wallet (`WalletAuth` binds the session, so it must be the same connection)
//! — and closes it. Payloads are the JSON of `docs/PROTOCOL.md` §12 (built with
//! `xtmp_services::client` and `xtmp_services::types`).
//!
//! Output is human-readable by default; with `--json` a command prints its result as one
//! JSON document (streams: one JSON object per line) and a failure as
//! `{"error": {"code", "code_hex", "name", "reason"}}` on stdout. Failures always also go
//! to stderr as `error: NAME (0xCODE): reason`, with exit status 1.

use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::time::Instant;
use xtmp::{ClientError, ErrorCode, MessageType, XTMPClient};
use xtmp_services::encoding::Hex32;
use xtmp_services::error::codes;
use xtmp_services::types::{
    BundleIdRequest, BundleStatusResponse, BundleSubmitRequest, BundleSubmitResponse,
    BundleSyncRequest, BundleSyncResponse, Certificate, EventStreamRequest, LiveUpdatesRequest,
    MetricsStreamRequest, QlockRequest, QlockResponse, RegistryQueryRequest, RegistryQueryResponse,
    RegistryStampRequest, RegistryUpdateResponse, SignedTransaction, StampReceipt,
    SubscribeResponse, TlslsRequest, TlslsResponse, TxKind, WalletAuthResponse,
    WalletBalanceRequest, WalletBalanceResponse, WalletRegisterResponse, WalletTransactionResponse,
};
use xtmp_services::{client as build, Address, AppError, SigningKey};

use crate::app_cli::{
    BundleCommand, CertRef, DigestInput, OptDigestInput, QlockCommand, RegistryCommand,
    StreamLimit, SubscribeCommand, TlslsCommand, TransferArgs, WalletCommand,
};
use crate::cli::ClientConn;
use crate::{keys, out, outln, wallet_file};

/// Largest JSON file read (certificates, receipts, transaction files).
const JSON_FILE_MAX: u64 = 16 * 1024 * 1024;
/// Largest registry value file read (the server's limit is 64 KiB; larger values are
/// sent so the server names its limit).
const VALUE_FILE_MAX: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------------------
// Failures
// ---------------------------------------------------------------------------------------

/// An application failure: an `Error` reply from the server, or a failed offline check,
/// with its wire code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppFailure {
    /// The code (`0x0100`–`0x01FF` for the application layer).
    pub code: ErrorCode,
    /// The server's (or the offline check's) reason.
    pub reason: String,
    /// What to do about it, when there is an obvious answer.
    pub hint: Option<String>,
}

/// The registered name of a code: application codes first, then the transport's.
pub fn code_name(code: ErrorCode) -> String {
    xtmp_services::error::code_name(code)
        .or_else(|| code.name())
        .map_or_else(|| format!("0x{:04x}", code.0), str::to_string)
}

impl AppFailure {
    fn from_app(e: &AppError) -> Self {
        Self {
            code: e.code(),
            reason: e.reason(),
            hint: None,
        }
    }

    /// The JSON form printed with `--json`.
    pub fn to_json(&self) -> Value {
        json!({
            "code": self.code.0,
            "code_hex": format!("0x{:04x}", self.code.0),
            "name": code_name(self.code),
            "reason": self.reason,
        })
    }
}

impl std::fmt::Display for AppFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (0x{:04x}): {}",
            code_name(self.code),
            self.code.0,
            self.reason
        )?;
        if let Some(h) = &self.hint {
            write!(f, "\nhint: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for AppFailure {}

fn hint_for(code: ErrorCode, t: MessageType) -> Option<String> {
    let h = match code {
        c if c == ErrorCode::UNKNOWN_MESSAGE_TYPE => {
            "this server does not serve the application operations; is `enabled = false` in its [xtmp_services]?"
        }
        c if c == codes::RECIPIENT_NOT_FOUND => {
            "the recipient must register first: xtmp wallet register --wallet <its wallet file>"
        }
        c if c == codes::WALLET_NOT_FOUND => {
            "register the wallet first: xtmp wallet register --wallet <file>"
        }
        c if c == codes::FORBIDDEN && t == MessageType::WalletTransaction => {
            "only the server's mint authority may mint; by default it is the wallet <data_dir>/mint-authority.wallet on the server"
        }
        c if c == codes::KEY_PROOF_REQUIRED => {
            "connect with --client-key set to the certified key's secret file, or pass --wallet with the mint authority's wallet"
        }
        c if c == codes::STALE_VERSION => {
            "the entry changed since that version was read: read it again with `xtmp registry get` and retry"
        }
        _ => return None,
    };
    Some(h.to_string())
}

fn remote(e: ClientError, t: MessageType) -> anyhow::Error {
    match e {
        ClientError::Remote { code, reason } => AppFailure {
            code,
            reason,
            hint: hint_for(code, t),
        }
        .into(),
        other => anyhow!(other),
    }
}

fn is_code(e: &anyhow::Error, code: ErrorCode) -> bool {
    e.downcast_ref::<AppFailure>()
        .is_some_and(|f| f.code == code)
}

/// The `--json` form of any failure.
pub fn error_json(e: &anyhow::Error) -> Value {
    match e.downcast_ref::<AppFailure>() {
        Some(f) => json!({ "error": f.to_json() }),
        None => json!({ "error": { "reason": format!("{e:#}") } }),
    }
}

// ---------------------------------------------------------------------------------------
// Plumbing
// ---------------------------------------------------------------------------------------

/// A one-shot command's result in both forms.
struct Report {
    json: Value,
    text: String,
}

impl Report {
    fn new(json: impl Serialize, text: String) -> Self {
        Self {
            json: serde_json::to_value(json).unwrap_or(Value::Null),
            text,
        }
    }
}

/// Runs a one-shot command and prints its report (or, with `--json`, its failure).
async fn one_shot(json_out: bool, f: impl Future<Output = Result<Report>>) -> Result<ExitCode> {
    match f.await {
        Ok(r) => {
            if json_out {
                outln!("{}", r.json);
            } else {
                out!("{}", r.text);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if json_out {
                outln!("{}", error_json(&e));
            }
            Err(e)
        }
    }
}

/// Connects, runs `f` on the connection, and closes it.
async fn connected<T>(
    conn: &ClientConn,
    f: impl AsyncFnOnce(&XTMPClient) -> Result<T>,
) -> Result<T> {
    let (client, _) = crate::client::connect(conn).await?;
    let r = f(&client).await;
    client.close().await;
    r
}

fn type_name(t: MessageType) -> String {
    t.name()
        .map_or_else(|| format!("0x{:02x}", t.0), str::to_string)
}

/// Sends a JSON request and decodes the JSON response.
async fn call<Req: Serialize, Resp: DeserializeOwned>(
    c: &XTMPClient,
    t: MessageType,
    req: &Req,
) -> Result<Resp> {
    let body = serde_json::to_vec(req).context("cannot encode the request")?;
    let resp = c.request(t, body).await.map_err(|e| remote(e, t))?;
    serde_json::from_slice(&resp.body).with_context(|| {
        format!(
            "the server's answer to {} is not the expected JSON (does it serve the application operations?)",
            type_name(t)
        )
    })
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, ms)
}

/// `2026-01-01T12:00:00.000Z` for milliseconds since the Unix epoch.
pub fn fmt_time(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

fn parse_hex32(s: &str, what: &str) -> Result<Hex32> {
    s.trim()
        .parse::<Hex32>()
        .map_err(|e| anyhow!("{what} {s:?}: {e}"))
}

fn read_json_file<T: DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let bytes = crate::read_capped(path, JSON_FILE_MAX)
        .with_context(|| format!("cannot read the {what} {}", path.display()))?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a valid {what}", path.display()))
}

fn write_json_file(path: &Path, v: &impl Serialize) -> Result<()> {
    let mut text = serde_json::to_string_pretty(v).context("cannot encode")?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Waits for SIGINT or SIGTERM (never returns if the handlers cannot be installed).
async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut i), Ok(mut t)) => {
                tokio::select! {
                    _ = i.recv() => {}
                    _ = t.recv() => {}
                }
            }
            _ => std::future::pending::<()>().await,
        }
    }
    #[cfg(not(unix))]
    {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

// ---------------------------------------------------------------------------------------
// Wallets
// ---------------------------------------------------------------------------------------

/// Authenticates the connection's session as `key`'s wallet (registering the key first
/// if the server does not know it yet).
async fn authenticate(c: &XTMPClient, key: &SigningKey) -> Result<WalletAuthResponse> {
    let step1: WalletAuthResponse = match call(
        c,
        MessageType::WalletAuth,
        &build::auth_challenge_request(key),
    )
    .await
    {
        Ok(r) => r,
        Err(e) if is_code(&e, codes::WALLET_NOT_FOUND) => {
            let _: WalletRegisterResponse = call(
                c,
                MessageType::WalletRegister,
                &build::register_request(key),
            )
            .await?;
            call(
                c,
                MessageType::WalletAuth,
                &build::auth_challenge_request(key),
            )
            .await?
        }
        Err(e) => return Err(e),
    };
    let answer = build::auth_answer_request(key, &step1).map_err(|e| anyhow!("{e}"))?;
    let done: WalletAuthResponse = call(c, MessageType::WalletAuth, &answer)
        .await
        .context("wallet authentication failed")?;
    if !done.authenticated {
        bail!("the server did not confirm the wallet authentication");
    }
    Ok(done)
}

async fn balance_of(c: &XTMPClient, address: Address) -> Result<WalletBalanceResponse> {
    call(
        c,
        MessageType::WalletBalance,
        &WalletBalanceRequest {
            address: Some(address),
        },
    )
    .await
}

fn balance_text(b: &WalletBalanceResponse) -> String {
    format!(
        "{}: balance {}, next nonce {}{}\n",
        b.address,
        b.balance,
        b.next_nonce,
        if b.registered {
            ""
        } else {
            " (not registered)"
        }
    )
}

/// `xtmp wallet ...`
///
/// # Errors
/// Any failure of the command (printed by the caller).
pub async fn wallet(cmd: WalletCommand) -> Result<ExitCode> {
    match cmd {
        WalletCommand::New { out, json } => one_shot(json, async {
            let key = wallet_file::create_wallet(&out)?;
            let pub_path = wallet_file::public_key_path(&out);
            Ok(Report::new(
                json!({
                    "wallet_file": out,
                    "public_key_file": pub_path,
                    "address": key.address(),
                }),
                format!(
                    "wallet:      {} (secret key, mode 0600: keep it private)\npublic key:  {}\naddress:     {}\n",
                    out.display(),
                    pub_path.display(),
                    key.address()
                ),
            ))
        })
        .await,
        WalletCommand::Address { wallet, json } => one_shot(json, async {
            let a = wallet_file::parse_address_arg(&wallet)?;
            Ok(Report::new(json!({ "address": a }), format!("{a}\n")))
        })
        .await,
        WalletCommand::Register { conn, wallet, json } => one_shot(json, async {
            let key = wallet_file::read_wallet(&wallet)?;
            let r: WalletRegisterResponse = connected(&conn, async |c| {
                call(c, MessageType::WalletRegister, &build::register_request(&key)).await
            })
            .await?;
            let text = format!(
                "{} {}\nbalance {}, next nonce {}\n",
                if r.created {
                    "registered"
                } else {
                    "already registered:"
                },
                r.address,
                r.balance,
                r.next_nonce
            );
            Ok(Report::new(&r, text))
        })
        .await,
        WalletCommand::Auth { conn, wallet, json } => one_shot(json, async {
            let key = wallet_file::read_wallet(&wallet)?;
            let (r, session) = connected(&conn, async |c| {
                let r = authenticate(c, &key).await?;
                Ok((r, c.session_id()))
            })
            .await?;
            let text = match session {
                Some(id) => format!(
                    "authenticated as {} on session {id} (0x{id:016x}); the binding ended with the session\n",
                    r.address
                ),
                None => format!("authenticated as {}\n", r.address),
            };
            Ok(Report::new(
                json!({ "address": r.address, "authenticated": r.authenticated, "session_id": session }),
                text,
            ))
        })
        .await,
        WalletCommand::Balance { conn, wallet, json } => one_shot(json, async {
            let a = wallet_file::parse_address_arg(&wallet)?;
            let b = connected(&conn, async |c| balance_of(c, a).await).await?;
            Ok(Report::new(&b, balance_text(&b)))
        })
        .await,
        WalletCommand::Send(args) => transfer(args, TxKind::Transfer).await,
        WalletCommand::Mint(args) => transfer(args, TxKind::Mint).await,
        WalletCommand::Sign {
            wallet,
            to,
            amount,
            nonce,
        } => {
            let key = wallet_file::read_wallet(&wallet)?;
            let to = wallet_file::parse_address_arg(&to)?;
            let tx = build::sign_transaction(&key, TxKind::Transfer, to, amount, nonce)
                .map_err(|e| anyhow!("{e}"))?;
            outln!("{}", serde_json::to_string(&tx)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn transfer(a: TransferArgs, kind: TxKind) -> Result<ExitCode> {
    one_shot(a.json, async {
        let key = wallet_file::read_wallet(&a.wallet)?;
        let to = wallet_file::parse_address_arg(&a.to)?;
        let from = key.address();
        let r: WalletTransactionResponse = connected(&a.conn, async |c| {
            authenticate(c, &key).await?;
            let nonce = match a.nonce {
                Some(n) => n,
                None => balance_of(c, from).await?.next_nonce,
            };
            let tx = build::sign_transaction(&key, kind, to, a.amount, nonce)
                .map_err(|e| anyhow!("{e}"))?;
            call(c, MessageType::WalletTransaction, &tx).await
        })
        .await?;
        let text = match kind {
            TxKind::Mint => format!(
                "minted {} for {to}: txid {}\n{to}: balance {}\n",
                a.amount, r.txid, r.to_balance
            ),
            TxKind::Transfer => format!(
                "sent {} from {from} to {to}: txid {}\n{from}: balance {}, next nonce {}\n{to}: balance {}\n",
                a.amount, r.txid, r.from_balance, r.next_nonce, r.to_balance
            ),
        };
        let mut v = serde_json::to_value(&r)?;
        v["from"] = json!(from);
        v["to"] = json!(to);
        v["amount"] = json!(a.amount);
        Ok(Report { json: v, text })
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Bundles
// ---------------------------------------------------------------------------------------

/// Signed transactions from a file: a JSON array, `{"transactions": [...]}`, single
/// objects, or JSON lines.
fn read_tx_file(path: &Path) -> Result<Vec<SignedTransaction>> {
    let bytes = crate::read_capped(path, JSON_FILE_MAX)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (i, v) in serde_json::Deserializer::from_slice(&bytes)
        .into_iter::<Value>()
        .enumerate()
    {
        let v = v.with_context(|| format!("{}: not JSON", path.display()))?;
        let what = || format!("{}: item {}", path.display(), i + 1);
        match v {
            Value::Array(items) => {
                for item in items {
                    out.push(serde_json::from_value(item).with_context(what)?);
                }
            }
            Value::Object(ref m) if m.contains_key("transactions") => {
                let b: BundleSubmitRequest = serde_json::from_value(v).with_context(what)?;
                out.extend(b.transactions);
            }
            other => out.push(serde_json::from_value(other).with_context(what)?),
        }
    }
    Ok(out)
}

fn parse_transfer_arg(s: &str) -> Result<(Address, u64)> {
    let (to, amount) = s
        .rsplit_once(':')
        .with_context(|| format!("--transfer {s:?}: expected TO:AMOUNT"))?;
    let amount: u64 = amount
        .trim()
        .parse()
        .with_context(|| format!("--transfer {s:?}: {amount:?} is not an amount"))?;
    Ok((wallet_file::parse_address_arg(to)?, amount))
}

fn bundle_text(b: &BundleStatusResponse) -> String {
    let mut s = format!("bundle {}: {}", b.bundle_id, b.state.as_str());
    if let Some(r) = &b.reason {
        s.push_str(&format!(" ({r})"));
    }
    s.push_str(&format!(
        "\n  {} transaction(s), submitted by {} at {}",
        b.transaction_count,
        b.submitter,
        fmt_time(b.submitted_at_ms)
    ));
    if let Some(f) = b.finalized_at_ms {
        s.push_str(&format!(", {} at {}", b.state.as_str(), fmt_time(f)));
    }
    s.push('\n');
    s
}

/// `xtmp bundle ...`
///
/// # Errors
/// Any failure of the command.
pub async fn bundle(cmd: BundleCommand) -> Result<ExitCode> {
    match cmd {
        BundleCommand::Submit {
            conn,
            wallet,
            transfers,
            tx_files,
            nonce,
            json,
        } => {
            one_shot(json, async {
                let key = wallet_file::read_wallet(&wallet)?;
                let me = key.address();
                let mut txs = Vec::new();
                for f in &tx_files {
                    txs.extend(read_tx_file(f)?);
                }
                let transfers = transfers
                    .iter()
                    .map(|t| parse_transfer_arg(t))
                    .collect::<Result<Vec<_>>>()?;
                if txs.is_empty() && transfers.is_empty() {
                    bail!("nothing to submit: pass --transfer TO:AMOUNT or --tx-file FILE");
                }
                let r: BundleSubmitResponse = connected(&conn, async |c| {
                    authenticate(c, &key).await?;
                    if !transfers.is_empty() {
                        let first = match nonce {
                            Some(n) => n,
                            None => {
                                let mine = txs.iter().filter(|t| t.from == me).count() as u64;
                                balance_of(c, me).await?.next_nonce.saturating_add(mine)
                            }
                        };
                        for (i, (to, amount)) in transfers.iter().enumerate() {
                            let n = first.saturating_add(i as u64);
                            txs.push(
                                build::sign_transaction(&key, TxKind::Transfer, *to, *amount, n)
                                    .map_err(|e| anyhow!("{e}"))?,
                            );
                        }
                    }
                    call(
                        c,
                        MessageType::BundleSubmit,
                        &BundleSubmitRequest { transactions: txs },
                    )
                    .await
                })
                .await?;
                let mut text = bundle_text(&r.status);
                if !r.created {
                    text.push_str("  (submitted before: this is the stored bundle)\n");
                }
                Ok(Report::new(&r, text))
            })
            .await
        }
        BundleCommand::Status {
            conn,
            bundle_id,
            json,
        } => {
            one_shot(json, async {
                let id = parse_hex32(&bundle_id, "bundle id")?;
                let r: BundleStatusResponse = connected(&conn, async |c| {
                    call(
                        c,
                        MessageType::BundleStatus,
                        &BundleIdRequest { bundle_id: id },
                    )
                    .await
                })
                .await?;
                Ok(Report::new(&r, bundle_text(&r)))
            })
            .await
        }
        BundleCommand::Confirm {
            conn,
            wallet,
            bundle_id,
            json,
        } => {
            one_shot(json, async {
                let key = wallet_file::read_wallet(&wallet)?;
                let id = parse_hex32(&bundle_id, "bundle id")?;
                let r: BundleStatusResponse = connected(&conn, async |c| {
                    authenticate(c, &key).await?;
                    call(
                        c,
                        MessageType::BundleConfirm,
                        &BundleIdRequest { bundle_id: id },
                    )
                    .await
                })
                .await?;
                Ok(Report::new(&r, bundle_text(&r)))
            })
            .await
        }
        BundleCommand::Sync {
            conn,
            cursor,
            limit,
            include_transactions,
            all,
            json,
        } => {
            one_shot(json, async {
                let r = connected(&conn, async |c| {
                    let mut req = BundleSyncRequest {
                        cursor,
                        limit,
                        include_transactions,
                    };
                    let mut acc: Option<BundleSyncResponse> = None;
                    loop {
                        let page: BundleSyncResponse =
                            call(c, MessageType::BundleSync, &req).await?;
                        let (next, more) = (page.next_cursor, page.more);
                        match &mut acc {
                            None => acc = Some(page),
                            Some(a) => {
                                a.entries.extend(page.entries);
                                a.next_cursor = next;
                                a.more = more;
                            }
                        }
                        if !(all && more) || next <= req.cursor {
                            break;
                        }
                        req.cursor = next;
                    }
                    acc.context("no answer")
                })
                .await?;
                let mut text = String::new();
                for e in &r.entries {
                    text.push_str(&format!(
                        "{:>6}  bundle {} -> {} ({} transaction(s), by {})\n",
                        e.cursor,
                        e.bundle.bundle_id,
                        e.state.as_str(),
                        e.bundle.transaction_count,
                        e.bundle.submitter
                    ));
                }
                text.push_str(&format!(
                    "next cursor {}{}\n",
                    r.next_cursor,
                    if r.more {
                        " (more entries: run again with --cursor, or use --all)"
                    } else {
                        ""
                    }
                ));
                Ok(Report::new(&r, text))
            })
            .await
        }
    }
}

// ---------------------------------------------------------------------------------------
// Registry
// ---------------------------------------------------------------------------------------

fn sha256_file(path: &Path) -> Result<[u8; 32]> {
    use sha2::Digest;
    use std::io::Read;
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

fn sha256_text(s: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes()).into()
}

fn digest_of(
    file: Option<&PathBuf>,
    text: Option<&String>,
    digest: Option<&String>,
) -> Result<Option<Hex32>> {
    Ok(match (file, text, digest) {
        (Some(f), _, _) => Some(Hex32(sha256_file(f)?)),
        (None, Some(t), _) => Some(Hex32(sha256_text(t))),
        (None, None, Some(d)) => Some(parse_hex32(d, "--digest")?),
        (None, None, None) => None,
    })
}

/// An ML-DSA-65 public key argument: a file (public key file, or a wallet/seed file) or
/// the hex itself.
fn ml_dsa_key_arg(arg: &str, what: &str) -> Result<Vec<u8>> {
    let p = Path::new(arg);
    if p.is_file() {
        return Ok(wallet_file::read_public_key(p)
            .with_context(|| what.to_string())?
            .as_bytes()
            .to_vec());
    }
    let h = arg.trim();
    let h = h.strip_prefix("0x").unwrap_or(h);
    if h.len() == 2 * xtmp_services::crypto::PUBLIC_KEY_LEN {
        if let Ok(b) = hex::decode(h) {
            return Ok(b);
        }
    }
    bail!(
        "{what}: {arg:?} is neither a readable file nor an ML-DSA-65 public key ({} hex digits)",
        2 * xtmp_services::crypto::PUBLIC_KEY_LEN
    )
}

fn entry_text(e: &xtmp_services::types::RegistryEntry) -> String {
    format!(
        "{} = {}\n  version {}, owner {}, updated {}\n",
        e.key,
        e.value,
        e.version,
        e.owner,
        fmt_time(e.updated_at_ms)
    )
}

/// `xtmp registry ...`
///
/// # Errors
/// Any failure of the command.
pub async fn registry(cmd: RegistryCommand) -> Result<ExitCode> {
    match cmd {
        RegistryCommand::Get {
            conn,
            key,
            prefix,
            after,
            limit,
            json,
        } => one_shot(json, async {
            let single = key.is_some();
            let req = RegistryQueryRequest {
                key,
                prefix,
                after,
                limit,
            };
            let r: RegistryQueryResponse = connected(&conn, async |c| {
                call(c, MessageType::RegistryQuery, &req).await
            })
            .await?;
            let mut text: String = r.entries.iter().map(entry_text).collect();
            if !single {
                if r.entries.is_empty() {
                    text.push_str("no entries\n");
                }
                if r.more {
                    if let Some(last) = r.entries.last() {
                        text.push_str(&format!("(more: continue with --after {:?})\n", last.key));
                    }
                }
            }
            if single {
                if let Some(e) = r.entries.first() {
                    return Ok(Report::new(e, text));
                }
            }
            Ok(Report::new(&r, text))
        })
        .await,
        RegistryCommand::Set {
            conn,
            wallet,
            key,
            value,
            value_file,
            expected_version,
            json,
        } => one_shot(json, async {
            let signer = wallet_file::read_wallet(&wallet)?;
            let value = match (value, value_file) {
                (Some(v), _) => v,
                (None, Some(f)) => crate::read_capped_string(&f, VALUE_FILE_MAX)
                    .with_context(|| format!("--value-file {}", f.display()))?,
                (None, None) => bail!("give the VALUE or --value-file"),
            };
            let r: RegistryUpdateResponse = connected(&conn, async |c| {
                let expected = match expected_version {
                    Some(v) => v,
                    None => {
                        let q = RegistryQueryRequest {
                            key: Some(key.clone()),
                            ..RegistryQueryRequest::default()
                        };
                        match call::<_, RegistryQueryResponse>(c, MessageType::RegistryQuery, &q)
                            .await
                        {
                            Ok(r) => r.entries.first().map_or(0, |e| e.version),
                            Err(e) if is_code(&e, codes::REGISTRY_KEY_NOT_FOUND) => 0,
                            Err(e) => return Err(e),
                        }
                    }
                };
                let req = build::sign_registry_update(&signer, &key, &value, expected)
                    .map_err(|e| anyhow!("{e}"))?;
                call(c, MessageType::RegistryUpdate, &req).await
            })
            .await?;
            let text = format!(
                "{}: version {} (owner {}, {})\n",
                r.key,
                r.version,
                r.owner,
                fmt_time(r.updated_at_ms)
            );
            Ok(Report::new(&r, text))
        })
        .await,
        RegistryCommand::Stamp {
            conn,
            input,
            out,
            json,
        } => one_shot(json, async {
            let DigestInput { file, text, digest } = &input;
            let d = digest_of(file.as_ref(), text.as_ref(), digest.as_ref())?
                .context("give --file, --text or --digest")?;
            let r: StampReceipt = connected(&conn, async |c| {
                call(c, MessageType::RegistryStamp, &RegistryStampRequest { digest: d }).await
            })
            .await?;
            let mut text = format!(
                "stamp serial {}: digest {} at {}\nserver key id {}\n",
                r.serial,
                r.digest,
                fmt_time(r.timestamp_ms),
                r.server_key_id
            );
            match &out {
                Some(p) => {
                    write_json_file(p, &r)?;
                    text.push_str(&format!(
                        "receipt written to {} (check it offline with `xtmp registry verify-stamp`)\n",
                        p.display()
                    ));
                }
                None => text.push_str(&format!("receipt: {}\n", serde_json::to_string(&r)?)),
            }
            Ok(Report::new(&r, text))
        })
        .await,
        RegistryCommand::VerifyStamp {
            receipt,
            signing_key,
            input,
            json,
        } => one_shot(json, async {
            let r: StampReceipt = read_json_file(&receipt, "stamp receipt")?;
            let pk = ml_dsa_key_arg(&signing_key, "--signing-key")?;
            xtmp_services::verify_stamp(&r, &pk).map_err(|e| AppFailure::from_app(&e))?;
            let OptDigestInput { file, text, digest } = &input;
            let content = digest_of(file.as_ref(), text.as_ref(), digest.as_ref())?;
            if let Some(d) = content {
                if d != r.digest {
                    return Err(AppFailure {
                        code: codes::INVALID_STAMP,
                        reason: format!(
                            "the receipt is valid but covers digest {}, not {d}",
                            r.digest
                        ),
                        hint: None,
                    }
                    .into());
                }
            }
            let text = format!(
                "valid stamp: serial {}, digest {}{}, stamped at {} by server key {}\n",
                r.serial,
                r.digest,
                if content.is_some() {
                    " (matches the content)"
                } else {
                    ""
                },
                fmt_time(r.timestamp_ms),
                r.server_key_id
            );
            Ok(Report::new(
                json!({
                    "valid": true,
                    "serial": r.serial,
                    "digest": r.digest,
                    "timestamp_ms": r.timestamp_ms,
                    "server_key_id": r.server_key_id,
                    "content_checked": content.is_some(),
                }),
                text,
            ))
        })
        .await,
    }
}

// ---------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("?")
}

fn n(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

/// One `LiveUpdates` / `EventStream` push as a line of text.
fn render_event(v: &Value) -> String {
    let at = v.get("at_ms").and_then(Value::as_u64).map(fmt_time);
    let body = match s(v, "kind") {
        "wallet" => {
            let mut t = format!(
                "wallet {}: balance {}, next nonce {}",
                s(v, "address"),
                n(v, "balance"),
                n(v, "next_nonce")
            );
            if let Some(tx) = v.get("txid").and_then(Value::as_str) {
                t.push_str(&format!(" (tx {tx})"));
            }
            t
        }
        "bundle" => {
            let mut t = format!("bundle {}: {}", s(v, "bundle_id"), s(v, "state"));
            if let Some(r) = v.get("reason").and_then(Value::as_str) {
                t.push_str(&format!(" ({r})"));
            }
            t
        }
        "registry" => format!(
            "registry {}: version {} by {}",
            s(v, "key"),
            n(v, "version"),
            s(v, "owner")
        ),
        "lock" => format!(
            "lock {}: {} (fencing token {})",
            s(v, "name"),
            s(v, "state"),
            n(v, "fencing_token")
        ),
        "certificate" => format!(
            "certificate {} ({}): {}",
            n(v, "serial"),
            s(v, "subject"),
            s(v, "state")
        ),
        "stamp" => format!("stamp {}: digest {}", n(v, "serial"), s(v, "digest")),
        "lagged" => format!(
            "missed {} notifications (too slow); resynchronize with `wallet balance`, `bundle sync` or `registry get`",
            n(v, "missed")
        ),
        _ => v.to_string(),
    };
    match at {
        Some(at) => format!("{at}  {body}"),
        None => body,
    }
}

/// One `MetricsStream` push as a line of text.
fn render_metrics(v: &Value) -> String {
    let sv = v.get("services").cloned().unwrap_or(Value::Null);
    let (mut req, mut err) = (0u64, 0u64);
    if let Some(ops) = sv.get("operations").and_then(Value::as_array) {
        for o in ops {
            req = req.saturating_add(n(o, "requests"));
            err = err.saturating_add(n(o, "errors"));
        }
    }
    let mut t = format!(
        "{}  #{}: {req} requests ({err} failed), {} commits, {} accounts, supply {}, {} locks held, {} wallet sessions, {} subscribers",
        fmt_time(n(v, "unix_ms")),
        n(v, "index"),
        n(&sv, "store_commits"),
        n(&sv, "accounts"),
        n(&sv, "supply"),
        n(&sv, "locks_held"),
        n(&sv, "sessions"),
        n(&sv, "event_subscribers"),
    );
    if let Some(server) = v.get("server") {
        if let Some(sessions) = server.get("sessions_active").and_then(Value::as_u64) {
            t.push_str(&format!(", {sessions} sessions"));
        }
    }
    t
}

async fn stream(
    conn: &ClientConn,
    t: MessageType,
    body: Vec<u8>,
    limit: &StreamLimit,
    json_out: bool,
    render: fn(&Value) -> String,
) -> Result<ExitCode> {
    let r = connected(conn, async |c| {
        let mut sub = c.subscribe(t, body).await.map_err(|e| remote(e, t))?;
        let answer: SubscribeResponse = sub
            .response()
            .context("no answer to the subscription")?
            .json()
            .map_err(|e| anyhow!("{e}"))?;
        if json_out {
            outln!("{}", serde_json::to_string(&answer)?);
        } else {
            outln!(
                "subscribed to {} (stream {}); waiting for pushes, Ctrl-C to stop",
                answer.subscribed,
                answer.stream_id
            );
        }
        let deadline = limit.for_.map(|d| Instant::now() + d);
        let mut seen = 0u64;
        if limit.count == Some(0) {
            return Ok(());
        }
        // Created once, so a signal between two loop turns is not lost.
        let stop_signal = interrupted();
        tokio::pin!(stop_signal);
        loop {
            tokio::select! {
                item = sub.recv() => match item {
                    Some(Ok(m)) => {
                        let v: Value = serde_json::from_slice(&m.body)
                            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&m.body).into_owned()));
                        if json_out {
                            outln!("{v}");
                        } else {
                            outln!("{}", render(&v));
                        }
                        seen += 1;
                        if limit.count.is_some_and(|c| seen >= c) {
                            return Ok(());
                        }
                    }
                    Some(Err(e)) => return Err(anyhow!(e).context("the subscription was interrupted")),
                    None => bail!("the subscription ended (the server closed it)"),
                },
                () = sleep_until(deadline) => return Ok(()),
                () = &mut stop_signal => return Ok(()),
            }
        }
    })
    .await;
    match r {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            if json_out {
                outln!("{}", error_json(&e));
            }
            Err(e)
        }
    }
}

/// `xtmp subscribe ...`
///
/// # Errors
/// Any failure of the command.
pub async fn subscribe(cmd: SubscribeCommand) -> Result<ExitCode> {
    match cmd {
        SubscribeCommand::Live {
            conn,
            wallet,
            bundle,
            key,
            limit,
            json,
        } => {
            let req = LiveUpdatesRequest {
                wallets: wallet
                    .iter()
                    .map(|w| wallet_file::parse_address_arg(w))
                    .collect::<Result<_>>()?,
                bundles: bundle
                    .iter()
                    .map(|b| parse_hex32(b, "--bundle"))
                    .collect::<Result<_>>()?,
                registry_keys: key,
            };
            if req.wallets.is_empty() && req.bundles.is_empty() && req.registry_keys.is_empty() {
                bail!("name something to watch: --wallet, --bundle or --key");
            }
            let body = serde_json::to_vec(&req)?;
            stream(
                &conn,
                MessageType::LiveUpdates,
                body,
                &limit,
                json,
                render_event,
            )
            .await
        }
        SubscribeCommand::Events {
            conn,
            kind,
            limit,
            json,
        } => {
            let body = serde_json::to_vec(&EventStreamRequest { kinds: kind })?;
            stream(
                &conn,
                MessageType::EventStream,
                body,
                &limit,
                json,
                render_event,
            )
            .await
        }
        SubscribeCommand::Metrics {
            conn,
            interval,
            limit,
            json,
        } => {
            let body = serde_json::to_vec(&MetricsStreamRequest {
                interval_ms: Some(ms(interval)),
            })?;
            stream(
                &conn,
                MessageType::MetricsStream,
                body,
                &limit,
                json,
                render_metrics,
            )
            .await
        }
    }
}

// ---------------------------------------------------------------------------------------
// QLOCK
// ---------------------------------------------------------------------------------------

fn lock_text(what: &str, r: &QlockResponse) -> String {
    if !r.held {
        return format!("{what} {}: free", r.name);
    }
    let mut t = format!(
        "{what} {}: held{}, fencing token {}",
        r.name,
        if r.held_by_you { " by you" } else { "" },
        r.fencing_token
            .map_or_else(|| "?".into(), |t| t.to_string())
    );
    if let Some(e) = r.expires_at_ms {
        t.push_str(&format!(", lease until {}", fmt_time(e)));
    }
    if let Some(w) = &r.holder_wallet {
        t.push_str(&format!(", holder wallet {w}"));
    }
    t
}

fn emit_lock(json_out: bool, event: &str, r: &QlockResponse) {
    if json_out {
        let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
        v["event"] = json!(event);
        outln!("{v}");
    } else {
        outln!("{}", lock_text(event, r));
    }
}

/// The operations a holder performs for itself or for its control socket.
struct Holder<'a> {
    client: &'a XTMPClient,
    name: String,
    token: u64,
}

impl Holder<'_> {
    async fn renew(&self, lease_ms: u64) -> Result<QlockResponse> {
        call(
            self.client,
            MessageType::QLOCKRequest,
            &QlockRequest::Renew {
                name: self.name.clone(),
                fencing_token: self.token,
                lease_ms,
            },
        )
        .await
    }
    async fn release(&self) -> Result<QlockResponse> {
        call(
            self.client,
            MessageType::QLOCKRequest,
            &QlockRequest::Release {
                name: self.name.clone(),
                fencing_token: self.token,
            },
        )
        .await
    }
    async fn inspect(&self) -> Result<QlockResponse> {
        call(
            self.client,
            MessageType::QLOCKRequest,
            &QlockRequest::Inspect {
                name: self.name.clone(),
            },
        )
        .await
    }
}

fn exit_code_of(status: std::process::ExitStatus) -> ExitCode {
    if let Some(c) = status.code() {
        return ExitCode::from(u8::try_from(c & 0xff).unwrap_or(1));
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return ExitCode::from(u8::try_from((128 + sig) & 0xff).unwrap_or(1));
        }
    }
    ExitCode::FAILURE
}

fn stop_child(child: &mut Option<std::process::Child>) {
    if let Some(c) = child.as_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
    *child = None;
}

/// Waits (polling) until the child exits; pending forever without a child.
async fn child_exit(
    child: &mut Option<std::process::Child>,
) -> std::io::Result<std::process::ExitStatus> {
    let Some(c) = child.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        if let Some(s) = c.try_wait()? {
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[cfg(unix)]
mod control {
    //! The holder's control socket: one line in (`renew [LEASE_MS]`, `release`,
    //! `inspect`), one JSON line out (`{"ok": true, "response": …}` or
    //! `{"ok": false, "error": …}`).
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use anyhow::{bail, Context, Result};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{UnixListener, UnixStream};

    /// A bound control socket, removed on drop.
    pub struct Control {
        pub listener: UnixListener,
        path: PathBuf,
    }

    impl Control {
        pub fn bind(path: &Path) -> Result<Self> {
            if path.exists() {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    bail!("{} is in use by another holder", path.display());
                }
                // A stale socket from a holder that died.
                std::fs::remove_file(path)
                    .with_context(|| format!("cannot remove the stale {}", path.display()))?;
            }
            let listener = UnixListener::bind(path)
                .with_context(|| format!("cannot create the control socket {}", path.display()))?;
            Ok(Self {
                listener,
                path: path.to_path_buf(),
            })
        }
    }

    impl Drop for Control {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// Reads one command line from a control connection.
    pub async fn read_command(stream: &mut UnixStream) -> Result<String> {
        let mut line = String::new();
        let mut r = BufReader::new(stream.take(4096));
        tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line))
            .await
            .context("no command within 5 s")??;
        Ok(line.trim().to_string())
    }

    pub async fn answer(stream: &mut UnixStream, v: &serde_json::Value) {
        let _ = stream.write_all(format!("{v}\n").as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    /// Sends a command to a holder and returns its answer.
    pub async fn request(path: &Path, line: &str, timeout: Duration) -> Result<serde_json::Value> {
        let fut = async {
            let mut s = UnixStream::connect(path).await.with_context(|| {
                format!(
                    "cannot reach the holder at {} (is `xtmp qlock acquire --control` running?)",
                    path.display()
                )
            })?;
            s.write_all(format!("{line}\n").as_bytes()).await?;
            let mut answer = String::new();
            BufReader::new(s.take(1 << 20))
                .read_line(&mut answer)
                .await?;
            serde_json::from_str::<serde_json::Value>(answer.trim())
                .context("the holder's answer is not JSON")
        };
        tokio::time::timeout(timeout, fut)
            .await
            .context("the holder did not answer in time")?
    }
}

#[cfg(unix)]
type ControlSocket = control::Control;
#[cfg(not(unix))]
type ControlSocket = ();

#[cfg(unix)]
async fn accept_control(c: &Option<ControlSocket>) -> Option<tokio::net::UnixStream> {
    match c {
        Some(c) => c.listener.accept().await.ok().map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn accept_control(_c: &Option<ControlSocket>) -> Option<()> {
    std::future::pending().await
}

fn op_json(r: Result<QlockResponse>) -> Value {
    match r {
        Ok(resp) => json!({ "ok": true, "response": resp }),
        Err(e) => json!({ "ok": false, "error": error_json(&e)["error"] }),
    }
}

#[allow(clippy::too_many_arguments)]
async fn qlock_hold(
    c: &XTMPClient,
    name: String,
    lease: Duration,
    wallet: Option<PathBuf>,
    control: Option<PathBuf>,
    hold: Option<Duration>,
    auto_renew: bool,
    json_out: bool,
    command: Vec<OsString>,
) -> Result<ExitCode> {
    if let Some(w) = &wallet {
        authenticate(c, &wallet_file::read_wallet(w)?).await?;
    }
    #[cfg(unix)]
    let control: Option<ControlSocket> = match &control {
        Some(p) => Some(control::Control::bind(p)?),
        None => None,
    };
    #[cfg(not(unix))]
    let control: Option<ControlSocket> = match &control {
        Some(_) => bail!("--control needs Unix domain sockets"),
        None => None,
    };
    let lease_ms = ms(lease);
    let acquired: QlockResponse = call(
        c,
        MessageType::QLOCKRequest,
        &QlockRequest::Acquire {
            name: name.clone(),
            lease_ms,
        },
    )
    .await?;
    let token = acquired
        .fencing_token
        .context("the server's answer carries no fencing token")?;
    emit_lock(json_out, "acquired", &acquired);
    let h = Holder {
        client: c,
        name,
        token,
    };
    let mut child = None;
    if let Some((prog, args)) = command.split_first() {
        match std::process::Command::new(prog)
            .args(args)
            .env("XTMP_QLOCK_NAME", &h.name)
            .env("XTMP_QLOCK_FENCING_TOKEN", token.to_string())
            .spawn()
        {
            Ok(ch) => child = Some(ch),
            Err(e) => {
                let _ = h.release().await;
                bail!("cannot run {:?}: {e}", prog);
            }
        }
    }
    let mut expires = Instant::now() + lease;
    let every = (lease / 3).max(Duration::from_millis(10));
    let mut renew_tick = tokio::time::interval_at(Instant::now() + every, every);
    renew_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let hold_until = hold.map(|d| Instant::now() + d);
    // Created once, so a signal between two loop turns is not lost.
    let stop_signal = interrupted();
    tokio::pin!(stop_signal);
    let exit = loop {
        tokio::select! {
            _ = renew_tick.tick(), if auto_renew => {
                match h.renew(lease_ms).await {
                    Ok(_) => expires = Instant::now() + lease,
                    Err(e) => {
                        stop_child(&mut child);
                        return Err(e.context(format!("lost the lock {}: renewing failed", h.name)));
                    }
                }
            }
            () = tokio::time::sleep_until(expires), if !auto_renew => {
                stop_child(&mut child);
                let r = h.inspect().await;
                if json_out {
                    outln!("{}", json!({ "event": "expired", "name": h.name, "fencing_token": token }));
                }
                if let Ok(r) = r {
                    if r.held_by_you {
                        // The local clock ran ahead; keep going until the server agrees.
                        expires = Instant::now() + Duration::from_millis(100);
                        continue;
                    }
                }
                bail!("the lease of {} ran out (fencing token {token} is no longer valid)", h.name);
            }
            () = sleep_until(hold_until) => break ExitCode::SUCCESS,
            status = child_exit(&mut child) => {
                let status = status.context("cannot wait for the command")?;
                break exit_code_of(status);
            }
            stream = accept_control(&control) => {
                #[cfg(unix)]
                if let Some(mut s) = stream {
                    let line = control::read_command(&mut s).await.unwrap_or_default();
                    let mut words = line.split_whitespace();
                    match (words.next(), words.next()) {
                        (Some("renew"), lease_arg) => {
                            let l = match lease_arg.map(str::parse::<u64>) {
                                Some(Ok(v)) => v,
                                Some(Err(_)) => {
                                    control::answer(&mut s, &json!({"ok": false, "error": {"reason": "bad lease"}})).await;
                                    continue;
                                }
                                None => lease_ms,
                            };
                            let r = h.renew(l).await;
                            if let Ok(resp) = &r {
                                expires = Instant::now() + Duration::from_millis(l);
                                emit_lock(json_out, "renewed", resp);
                            }
                            control::answer(&mut s, &op_json(r)).await;
                        }
                        (Some("inspect"), _) => {
                            let r = h.inspect().await;
                            control::answer(&mut s, &op_json(r)).await;
                        }
                        (Some("release"), _) => {
                            stop_child(&mut child);
                            let r = h.release().await;
                            let ok = r.is_ok();
                            if let Ok(resp) = &r {
                                emit_lock(json_out, "released", resp);
                            }
                            control::answer(&mut s, &op_json(r)).await;
                            if ok {
                                return Ok(ExitCode::SUCCESS);
                            }
                            bail!("releasing {} failed", h.name);
                        }
                        _ => {
                            control::answer(&mut s, &json!({"ok": false, "error": {"reason": format!("unknown command {line:?}: expected renew [LEASE_MS], release or inspect")}})).await;
                        }
                    }
                }
                #[cfg(not(unix))]
                let _ = stream;
            }
            () = &mut stop_signal => {
                stop_child(&mut child);
                break ExitCode::from(130);
            }
        }
    };
    let r = h.release().await?;
    emit_lock(json_out, "released", &r);
    Ok(exit)
}

/// `xtmp qlock ...`
///
/// # Errors
/// Any failure of the command.
pub async fn qlock(cmd: QlockCommand) -> Result<ExitCode> {
    match cmd {
        QlockCommand::Acquire {
            conn,
            name,
            lease,
            wallet,
            control,
            hold,
            no_auto_renew,
            json,
            command,
        } => {
            let r = connected(&conn, async |c| {
                qlock_hold(
                    c,
                    name,
                    lease,
                    wallet,
                    control,
                    hold,
                    !no_auto_renew,
                    json,
                    command,
                )
                .await
            })
            .await;
            if let (Err(e), true) = (&r, json) {
                outln!("{}", error_json(e));
            }
            r
        }
        QlockCommand::Inspect { conn, name, json } => {
            one_shot(json, async {
                let r: QlockResponse = connected(&conn, async |c| {
                    call(
                        c,
                        MessageType::QLOCKRequest,
                        &QlockRequest::Inspect { name },
                    )
                    .await
                })
                .await?;
                Ok(Report::new(&r, format!("{}\n", lock_text("lock", &r))))
            })
            .await
        }
        QlockCommand::Renew {
            control,
            lease,
            timeout,
            json,
        } => {
            one_shot(json, async {
                let line = match lease {
                    Some(l) => format!("renew {}", ms(l)),
                    None => "renew".to_string(),
                };
                let r = control_op(&control, &line, timeout).await?;
                Ok(Report::new(&r, format!("{}\n", lock_text("renewed", &r))))
            })
            .await
        }
        QlockCommand::Release {
            control,
            timeout,
            json,
        } => {
            one_shot(json, async {
                let r = control_op(&control, "release", timeout).await?;
                Ok(Report::new(&r, format!("{}\n", lock_text("released", &r))))
            })
            .await
        }
    }
}

#[cfg(unix)]
async fn control_op(path: &Path, line: &str, timeout: Duration) -> Result<QlockResponse> {
    let v = control::request(path, line, timeout).await?;
    if v.get("ok").and_then(Value::as_bool) == Some(true) {
        return serde_json::from_value(v.get("response").cloned().unwrap_or(Value::Null))
            .context("the holder's answer is malformed");
    }
    let err = v.get("error").cloned().unwrap_or(Value::Null);
    let reason = err
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or("failed")
        .to_string();
    match err
        .get("code")
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
    {
        Some(code) => Err(AppFailure {
            code: ErrorCode(code),
            reason,
            hint: None,
        }
        .into()),
        None => Err(anyhow!("the holder refused: {reason}")),
    }
}

#[cfg(not(unix))]
async fn control_op(_path: &Path, _line: &str, _timeout: Duration) -> Result<QlockResponse> {
    bail!("--control needs Unix domain sockets")
}

// ---------------------------------------------------------------------------------------
// TLSLS
// ---------------------------------------------------------------------------------------

/// A certificate file: the certificate itself or an object with a `certificate` field.
fn read_cert(path: &Path) -> Result<Certificate> {
    let v: Value = read_json_file(path, "certificate file")?;
    let inner = match v.get("certificate") {
        Some(c) => c.clone(),
        None => v,
    };
    serde_json::from_value(inner)
        .with_context(|| format!("{} does not hold a TLSLS certificate", path.display()))
}

fn cert_text(c: &Certificate) -> String {
    format!(
        "certificate serial {}: subject {:?}\n  key fingerprint {}\n  issuer {}\n  valid from {} until {}\n",
        c.serial,
        c.subject,
        c.key_fingerprint,
        c.issuer,
        fmt_time(c.not_before_ms),
        fmt_time(c.not_after_ms)
    )
}

fn serial_of(which: &CertRef) -> Result<u64> {
    match (which.serial, &which.cert) {
        (Some(s), _) => Ok(s),
        (None, Some(p)) => Ok(read_cert(p)?.serial),
        (None, None) => bail!("give --serial or --cert"),
    }
}

async fn tlsls_call(
    c: &XTMPClient,
    wallet: Option<&PathBuf>,
    req: &TlslsRequest,
) -> Result<TlslsResponse> {
    if let Some(w) = wallet {
        authenticate(c, &wallet_file::read_wallet(w)?).await?;
    }
    call(c, MessageType::TLSLSRequest, req).await
}

fn with_cert_out(resp: &TlslsResponse, out: Option<&PathBuf>) -> Result<Report> {
    let cert = resp
        .certificate
        .as_ref()
        .context("the server's answer carries no certificate")?;
    let mut text = cert_text(cert);
    if let Some(p) = out {
        write_json_file(p, cert)?;
        text.push_str(&format!("written to {}\n", p.display()));
    }
    Ok(Report::new(cert, text))
}

/// `xtmp tlsls ...`
///
/// # Errors
/// Any failure of the command.
pub async fn tlsls(cmd: TlslsCommand) -> Result<ExitCode> {
    match cmd {
        TlslsCommand::Issue {
            conn,
            subject,
            key,
            fingerprint,
            validity,
            wallet,
            out,
            json,
        } => one_shot(json, async {
            let fp = match (fingerprint, key, &conn.client_key) {
                (Some(f), _, _) => parse_hex32(&f, "--fingerprint")?,
                (None, Some(k), _) => Hex32(xtmp_proto::fingerprint(
                    &keys::parse_public_key_arg(&k).context("--key")?,
                )),
                (None, None, Some(ck)) => Hex32(xtmp_proto::fingerprint(
                    keys::read_secret_key(ck).context("--client-key")?.public_key(),
                )),
                (None, None, None) => bail!(
                    "name the static key to certify: --client-key (this client's key), --key or --fingerprint"
                ),
            };
            let req = TlslsRequest::Issue {
                subject,
                key_fingerprint: fp,
                validity_secs: validity.map(|d| d.as_secs()),
            };
            let r = connected(&conn, async |c| tlsls_call(c, wallet.as_ref(), &req).await).await?;
            with_cert_out(&r, out.as_ref())
        })
        .await,
        TlslsCommand::Validate { conn, cert, json } => one_shot(json, async {
            let cert = read_cert(&cert)?;
            let req = TlslsRequest::Validate { certificate: cert };
            let r = connected(&conn, async |c| tlsls_call(c, None, &req).await).await?;
            let cert = r
                .certificate
                .as_ref()
                .context("the server's answer carries no certificate")?;
            let text = format!(
                "valid: certificate serial {} for {:?}, until {}\n",
                cert.serial,
                cert.subject,
                fmt_time(cert.not_after_ms)
            );
            Ok(Report::new(&r, text))
        })
        .await,
        TlslsCommand::Verify {
            cert,
            issuer_key,
            json,
        } => one_shot(json, async {
            let cert = read_cert(&cert)?;
            let pk = ml_dsa_key_arg(&issuer_key, "--issuer-key")?;
            xtmp_services::verify_certificate(&cert, &pk, now_ms(), |_| None)
                .map_err(|e| AppFailure::from_app(&e))?;
            let text = format!(
                "valid (offline: issuer, signature and validity period; ask the server with `xtmp tlsls validate` for revocation): serial {} for {:?}, until {}\n",
                cert.serial,
                cert.subject,
                fmt_time(cert.not_after_ms)
            );
            Ok(Report::new(
                json!({ "valid": true, "revocation_checked": false, "certificate": cert }),
                text,
            ))
        })
        .await,
        TlslsCommand::Renew {
            conn,
            which,
            validity,
            wallet,
            out,
            json,
        } => one_shot(json, async {
            let req = TlslsRequest::Renew {
                serial: serial_of(&which)?,
                validity_secs: validity.map(|d| d.as_secs()),
            };
            let r = connected(&conn, async |c| tlsls_call(c, wallet.as_ref(), &req).await).await?;
            with_cert_out(&r, out.as_ref())
        })
        .await,
        TlslsCommand::Revoke {
            conn,
            which,
            reason,
            wallet,
            json,
        } => one_shot(json, async {
            let req = TlslsRequest::Revoke {
                serial: serial_of(&which)?,
                reason,
            };
            let r = connected(&conn, async |c| tlsls_call(c, wallet.as_ref(), &req).await).await?;
            let rev = r
                .revocation
                .as_ref()
                .context("the server's answer carries no revocation")?;
            let text = format!(
                "revoked certificate serial {} at {}{}\n",
                rev.serial,
                fmt_time(rev.revoked_at_ms),
                rev.reason
                    .as_ref()
                    .map_or_else(String::new, |r| format!(" ({r})"))
            );
            Ok(Report::new(rev, text))
        })
        .await,
        TlslsCommand::Crl {
            conn,
            after,
            limit,
            json,
        } => one_shot(json, async {
            let req = TlslsRequest::Crl { after, limit };
            let r = connected(&conn, async |c| tlsls_call(c, None, &req).await).await?;
            let list = r.revocations.clone().unwrap_or_default();
            let mut text: String = list
                .iter()
                .map(|x| {
                    format!(
                        "serial {} revoked at {}{}\n",
                        x.serial,
                        fmt_time(x.revoked_at_ms),
                        x.reason
                            .as_ref()
                            .map_or_else(String::new, |r| format!(" ({r})"))
                    )
                })
                .collect();
            if list.is_empty() {
                text.push_str("no revocations\n");
            }
            if r.more == Some(true) {
                if let Some(last) = list.last() {
                    text.push_str(&format!("(more: continue with --after {})\n", last.serial));
                }
            }
            Ok(Report::new(&r, text))
        })
        .await,
        TlslsCommand::Issuer { conn, out, json } => one_shot(json, async {
            let r = connected(&conn, async |c| {
                tlsls_call(c, None, &TlslsRequest::Issuer {}).await
            })
            .await?;
            let key = r
                .issuer_public_key
                .as_ref()
                .context("the server's answer carries no issuer key")?;
            let id = r
                .issuer_key_id
                .map_or_else(|| "?".to_string(), |k| k.to_string());
            let key_hex = hex::encode(key.as_slice());
            let text = match &out {
                Some(p) => {
                    std::fs::write(p, format!("{key_hex}\n"))
                        .with_context(|| format!("cannot write {}", p.display()))?;
                    format!("issuer key id {id}\npublic key written to {}\n", p.display())
                }
                None => format!("issuer key id {id}\npublic key {key_hex}\n"),
            };
            Ok(Report::new(&r, text))
        })
        .await,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn times_format_as_utc() {
        assert_eq!(fmt_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(fmt_time(1_767_225_600_000), "2026-01-01T00:00:00.000Z");
        assert_eq!(fmt_time(951_782_400_123), "2000-02-29T00:00:00.123Z");
        let _ = fmt_time(u64::MAX);
    }

    #[test]
    fn failures_name_their_code() {
        let f = AppFailure {
            code: codes::INSUFFICIENT_FUNDS,
            reason: "insufficient funds: balance 1, amount 5".into(),
            hint: None,
        };
        assert_eq!(
            f.to_string(),
            "INSUFFICIENT_FUNDS (0x0115): insufficient funds: balance 1, amount 5"
        );
        let e: anyhow::Error = f.into();
        assert_eq!(error_json(&e)["error"]["name"], "INSUFFICIENT_FUNDS");
        assert_eq!(error_json(&e)["error"]["code_hex"], "0x0115");
        assert_eq!(
            code_name(ErrorCode::UNKNOWN_MESSAGE_TYPE),
            "UNKNOWN_MESSAGE_TYPE"
        );
        assert_eq!(code_name(ErrorCode(0x01ff)), "0x01ff");
    }

    #[test]
    fn transfer_and_tx_file_parsing() {
        let k = SigningKey::from_seed(&[3; 32]).unwrap();
        let (a, n) = parse_transfer_arg(&format!("{}:25", k.address())).unwrap();
        assert_eq!((a, n), (k.address(), 25));
        assert!(parse_transfer_arg("nope").is_err());
        assert!(parse_transfer_arg(&format!("{}:x", k.address())).is_err());
        let tx = build::sign_transaction(&k, TxKind::Transfer, k.address(), 1, 0).unwrap();
        let line = serde_json::to_string(&tx).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for (i, body) in [
            format!("{line}\n{line}\n"),
            format!("[{line},{line}]"),
            format!("{{\"transactions\":[{line},{line}]}}"),
        ]
        .iter()
        .enumerate()
        {
            let p = dir.path().join(format!("t{i}"));
            std::fs::write(&p, body).unwrap();
            assert_eq!(read_tx_file(&p).unwrap().len(), 2, "{body}");
        }
        let p = dir.path().join("bad");
        std::fs::write(&p, "{\"x\":1}").unwrap();
        assert!(read_tx_file(&p).is_err());
        std::fs::write(&p, "[1,").unwrap();
        assert!(read_tx_file(&p).is_err());
    }
}
