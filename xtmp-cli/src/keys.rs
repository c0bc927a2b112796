//! Key files.
//!
//! * A **secret key file** holds the 32-byte X-Wing seed as 64 hex digits and a newline.
//!   It is created with mode 0600 (owner read/write only) and never overwritten.
//! * A **public key file** (`.pub` beside it) holds the 1216-byte X-Wing public key as
//!   2432 hex digits and a newline.
//! * An **authorized keys file** lists client keys, one a line: either the 64-hex-digit
//!   SHA-256 fingerprint or the 2432-hex-digit public key, optionally followed by
//!   whitespace and a comment. Empty lines and lines starting with `#` are ignored.
//!
//! Files may contain `#` comment lines; surrounding whitespace is ignored.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xtmp_crypto::xwing::{XWingPublicKey, XWingSecretKey, PUBLIC_KEY_LEN, SEED_LEN};
use zeroize::Zeroizing;

/// Largest key file read (a public key file is about 2.5 KB).
pub const KEY_FILE_MAX: u64 = 64 * 1024;
/// Largest authorized keys file read (about 6,500 public keys or 250,000 fingerprints).
pub const AUTHORIZED_KEYS_MAX: u64 = 16 * 1024 * 1024;
/// Length of a fingerprint in bytes.
pub const FINGERPRINT_LEN: usize = 32;

/// The public key file that goes with a secret key file: `server.key` → `server.pub`,
/// anything else → `<name>.pub`.
pub fn public_key_path(secret: &Path) -> PathBuf {
    if secret.extension().is_some_and(|e| e == "key") {
        secret.with_extension("pub")
    } else {
        let mut s = secret.as_os_str().to_os_string();
        s.push(".pub");
        PathBuf::from(s)
    }
}

/// The hex text of a key file: comment lines dropped, whitespace removed.
fn hex_body(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
        .collect()
}

/// Decodes hex (an optional `0x` prefix is allowed) into exactly `N` bytes.
fn decode_exact<const N: usize>(hex_text: &str, what: &str) -> Result<Zeroizing<[u8; N]>> {
    let h = hex_text.strip_prefix("0x").unwrap_or(hex_text);
    if h.len() != 2 * N {
        bail!(
            "{what}: expected {} hex digits ({N} bytes), found {} characters",
            2 * N,
            h.len()
        );
    }
    let mut out = Zeroizing::new([0u8; N]);
    hex::decode_to_slice(h, &mut out[..]).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    Ok(out)
}

/// Hex of a fingerprint.
pub fn fingerprint_hex(pk: &XWingPublicKey) -> String {
    hex::encode(xtmp_proto::fingerprint(pk))
}

/// Reads a secret key file.
///
/// # Errors
/// The file is unreadable or does not hold exactly 32 bytes of hex.
pub fn read_secret_key(path: &Path) -> Result<XWingSecretKey> {
    let text = Zeroizing::new(
        crate::read_capped_string(path, KEY_FILE_MAX)
            .with_context(|| format!("cannot read the secret key file {}", path.display()))?,
    );
    let body = Zeroizing::new(hex_body(&text));
    let seed = decode_exact::<SEED_LEN>(&body, &format!("secret key file {}", path.display()))?;
    warn_if_exposed(path);
    Ok(XWingSecretKey::from_seed(&seed))
}

#[cfg(unix)]
fn warn_if_exposed(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = fs::metadata(path) {
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                file = %path.display(),
                mode = format_args!("{mode:o}"),
                "the secret key file is readable by other users; run `chmod 600` on it"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_exposed(_path: &Path) {}

/// Creates `path` with mode 0600 and writes `contents`; fails if it exists.
fn create_private(path: &Path, contents: &[u8]) -> Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(contents)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn create_dir_private(dir: &Path) -> Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
        .with_context(|| format!("cannot create the directory {}", dir.display()))
}

/// Generates a fresh key pair and writes the secret seed to `path` (mode 0600, must not
/// exist yet) and the public key to [`public_key_path`].
///
/// # Errors
/// `path` exists, a directory cannot be created, or a write fails.
pub fn generate_key_file(path: &Path) -> Result<XWingSecretKey> {
    if path.exists() {
        bail!(
            "{} already exists; refusing to overwrite a key (remove it first to replace it)",
            path.display()
        );
    }
    if let Some(dir) = path.parent() {
        create_dir_private(dir)?;
    }
    let mut seed = Zeroizing::new([0u8; SEED_LEN]);
    xtmp_crypto::fill_random(&mut seed[..])
        .map_err(|e| anyhow::anyhow!("the system random generator failed: {e}"))?;
    let sk = XWingSecretKey::from_seed(&seed);
    let mut text = Zeroizing::new(hex::encode(&seed[..]));
    text.push('\n');
    create_private(path, text.as_bytes())?;
    write_public_key(&public_key_path(path), sk.public_key())?;
    Ok(sk)
}

/// Writes (or replaces) a public key file.
///
/// # Errors
/// The write fails.
pub fn write_public_key(path: &Path, pk: &XWingPublicKey) -> Result<()> {
    let mut text = hex::encode(pk.as_bytes());
    text.push('\n');
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The server's static key: read from `path`, or created there on first start.
/// The public key file beside it is (re)written when missing or stale.
/// Returns the key and whether it was created now.
///
/// # Errors
/// The file exists but is unreadable or malformed, or it cannot be created.
pub fn load_or_create_static_key(path: &Path) -> Result<(XWingSecretKey, bool)> {
    let (sk, created) = if path.exists() {
        (read_secret_key(path)?, false)
    } else {
        (generate_key_file(path)?, true)
    };
    let pub_path = public_key_path(path);
    let current = crate::read_capped_string(&pub_path, KEY_FILE_MAX)
        .ok()
        .map(|t| hex_body(&t));
    if current.as_deref() != Some(hex::encode(sk.public_key().as_bytes()).as_str()) {
        write_public_key(&pub_path, sk.public_key())?;
    }
    Ok((sk, created))
}

/// A public key given on the command line: a path to a `.pub` file, or the hex itself.
///
/// # Errors
/// Neither a readable file nor 2432 hex digits, or not a valid X-Wing public key.
pub fn parse_public_key_arg(arg: &str) -> Result<XWingPublicKey> {
    let p = Path::new(arg);
    let (text, what) = if p.is_file() {
        (
            crate::read_capped_string(p, KEY_FILE_MAX)
                .with_context(|| format!("cannot read {}", p.display()))?,
            format!("public key file {}", p.display()),
        )
    } else {
        let looks_hex = arg
            .trim()
            .trim_start_matches("0x")
            .chars()
            .all(|c| c.is_ascii_hexdigit());
        if !looks_hex || arg.trim().len() < 2 * PUBLIC_KEY_LEN {
            bail!(
                "{arg:?} is neither a readable file nor a hex public key ({} hex digits)",
                2 * PUBLIC_KEY_LEN
            );
        }
        (arg.to_string(), "public key argument".to_string())
    };
    let body = hex_body(&text);
    let bytes = decode_exact::<PUBLIC_KEY_LEN>(&body, &what)?;
    XWingPublicKey::from_bytes(&bytes[..]).map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

/// Reads an authorized keys file into a set of fingerprints.
///
/// # Errors
/// The file is unreadable, or a line is neither a fingerprint nor a valid public key
/// (the error names the line).
pub fn read_authorized_keys(path: &Path) -> Result<HashSet<[u8; FINGERPRINT_LEN]>> {
    let text = crate::read_capped_string(path, AUTHORIZED_KEYS_MAX)
        .with_context(|| format!("cannot read the authorized keys file {}", path.display()))?;
    parse_authorized_keys(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Parses the text of an authorized keys file (see the module docs).
///
/// # Errors
/// A line that is neither a fingerprint nor a valid public key, naming the line.
pub fn parse_authorized_keys(text: &str) -> Result<HashSet<[u8; FINGERPRINT_LEN]>> {
    let mut set = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let token = line.split_whitespace().next().unwrap_or("");
        let token = token.strip_prefix("0x").unwrap_or(token);
        let shown: String = token.chars().take(20).collect();
        if token.len() == 2 * FINGERPRINT_LEN {
            let mut fp = [0u8; FINGERPRINT_LEN];
            hex::decode_to_slice(token, &mut fp)
                .map_err(|e| anyhow::anyhow!("line {n}: {shown}…: {e}"))?;
            set.insert(fp);
        } else if token.len() == 2 * PUBLIC_KEY_LEN {
            let bytes =
                hex::decode(token).map_err(|e| anyhow::anyhow!("line {n}: {shown}…: {e}"))?;
            let pk = XWingPublicKey::from_bytes(&bytes)
                .map_err(|e| anyhow::anyhow!("line {n}: {shown}…: {e}"))?;
            set.insert(xtmp_proto::fingerprint(&pk));
        } else {
            bail!(
                "line {n}: {shown:?} is {} characters; expected a fingerprint ({} hex digits) or a public key ({} hex digits)",
                token.len(),
                2 * FINGERPRINT_LEN,
                2 * PUBLIC_KEY_LEN
            );
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn create_then_load_same_key() {
        let d = tmp();
        let p = d.path().join("sub/server.key");
        let (a, created) = load_or_create_static_key(&p).unwrap();
        assert!(created);
        let (b, created) = load_or_create_static_key(&p).unwrap();
        assert!(!created);
        assert_eq!(a.public_key(), b.public_key());
        let pk = parse_public_key_arg(public_key_path(&p).to_str().unwrap()).unwrap();
        assert_eq!(&pk, a.public_key());
        let text = fs::read_to_string(&p).unwrap();
        assert_eq!(text.trim().len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert!(generate_key_file(&p).is_err());
    }

    #[test]
    fn stale_pub_file_is_rewritten() {
        let d = tmp();
        let p = d.path().join("server.key");
        let (sk, _) = load_or_create_static_key(&p).unwrap();
        fs::write(public_key_path(&p), "00").unwrap();
        load_or_create_static_key(&p).unwrap();
        let pk = parse_public_key_arg(public_key_path(&p).to_str().unwrap()).unwrap();
        assert_eq!(&pk, sk.public_key());
    }

    #[test]
    fn bad_secret_files() {
        let d = tmp();
        let p = d.path().join("bad.key");
        for junk in ["", "zz", &"0".repeat(63), &"g".repeat(64), &"0".repeat(66)] {
            fs::write(&p, junk).unwrap();
            assert!(read_secret_key(&p).is_err(), "{junk:?}");
        }
        fs::write(&p, format!("# comment\n{}\n", "ab".repeat(32))).unwrap();
        read_secret_key(&p).unwrap();
    }

    #[test]
    fn public_key_args() {
        let sk = XWingSecretKey::from_seed(&[3; 32]);
        let h = hex::encode(sk.public_key().as_bytes());
        assert_eq!(&parse_public_key_arg(&h).unwrap(), sk.public_key());
        assert!(parse_public_key_arg("nope").is_err());
        assert!(parse_public_key_arg(&h[..100]).is_err());
        assert!(parse_public_key_arg(&format!("{h}00")).is_err());
    }

    #[test]
    fn authorized_keys() {
        let a = XWingSecretKey::from_seed(&[1; 32]);
        let b = XWingSecretKey::from_seed(&[2; 32]);
        let text = format!(
            "# clients\n\n{} alice\n  {}  bob's laptop\n",
            fingerprint_hex(a.public_key()),
            hex::encode(b.public_key().as_bytes())
        );
        let set = parse_authorized_keys(&text).unwrap();
        assert_eq!(set.len(), 2);
        assert!(set.contains(&xtmp_proto::fingerprint(a.public_key())));
        assert!(set.contains(&xtmp_proto::fingerprint(b.public_key())));
        let e = parse_authorized_keys("# x\nabc\n").unwrap_err().to_string();
        assert!(e.starts_with("line 2"), "{e}");
        let e = parse_authorized_keys(&"zz".repeat(32))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("line 1"), "{e}");
    }

    #[test]
    fn pub_path() {
        assert_eq!(
            public_key_path(Path::new("a/server.key")),
            Path::new("a/server.pub")
        );
        assert_eq!(public_key_path(Path::new("a/id")), Path::new("a/id.pub"));
    }
}
