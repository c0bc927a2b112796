//! Wallet files: ML-DSA-65 keys of the application layer (`xtmp wallet new`).
//!
//! * A **wallet file** (`alice.wallet`) holds the wallet's 32-byte ML-DSA-65 seed as 64
//!   hex digits. It is created with mode 0600 (owner read/write only) and never
//!   overwritten. `#` lines are comments (the file starts with one naming the address).
//! * Its **public key file** (`alice.wallet.pub`) holds the 1952-byte public key as 3904
//!   hex digits — what a server's `mint_authority` setting takes.
//!
//! Wherever a command needs only an address (`--to`, `wallet balance --wallet`, `subscribe
//! live --wallet`) it accepts an address (`xw` and 64 hex digits), a wallet file or a
//! public key file.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xtmp_services::crypto::{PUBLIC_KEY_LEN, SEED_LEN};
use xtmp_services::{Address, PublicKey, SigningKey};
use zeroize::Zeroizing;

/// Largest wallet or public key file read.
pub const WALLET_FILE_MAX: u64 = 64 * 1024;

/// `<wallet>.pub`: the public key file of a wallet file.
pub fn public_key_path(wallet: &Path) -> PathBuf {
    let mut s = wallet.as_os_str().to_os_string();
    s.push(".pub");
    PathBuf::from(s)
}

/// The hex text of a key file: comment lines dropped, whitespace removed.
fn hex_body(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
        .collect()
}

/// What a key file holds.
enum KeyFile {
    Secret(SigningKey),
    Public(PublicKey),
}

fn read_key_file(path: &Path) -> Result<KeyFile> {
    let text = Zeroizing::new(
        crate::read_capped_string(path, WALLET_FILE_MAX)
            .with_context(|| format!("cannot read {}", path.display()))?,
    );
    let body = Zeroizing::new(hex_body(&text));
    let h = body.strip_prefix("0x").unwrap_or(&body);
    if !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!(
            "{}: not a wallet file (expected hex digits and # comment lines)",
            path.display()
        );
    }
    if h.len() == 2 * SEED_LEN {
        let mut seed = Zeroizing::new([0u8; SEED_LEN]);
        hex::decode_to_slice(h, seed.as_mut())
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        warn_if_exposed(path);
        let key =
            SigningKey::from_seed(&seed).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        return Ok(KeyFile::Secret(key));
    }
    if h.len() == 2 * PUBLIC_KEY_LEN {
        let bytes = hex::decode(h).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let pk = PublicKey::from_bytes(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        return Ok(KeyFile::Public(pk));
    }
    bail!(
        "{}: expected a wallet file ({} hex digits) or a wallet public key file ({} hex digits), found {} hex digits",
        path.display(),
        2 * SEED_LEN,
        2 * PUBLIC_KEY_LEN,
        h.len()
    )
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
                "the wallet file is readable by other users; run `chmod 600` on it"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_exposed(_path: &Path) {}

/// Reads a wallet file (the secret key).
///
/// # Errors
/// The file is unreadable or does not hold a 32-byte seed as hex (a public key file is
/// refused with a hint).
pub fn read_wallet(path: &Path) -> Result<SigningKey> {
    match read_key_file(path)? {
        KeyFile::Secret(k) => Ok(k),
        KeyFile::Public(_) => bail!(
            "{} is a public key file; this command signs, so it needs the wallet file itself",
            path.display()
        ),
    }
}

/// The public key in a wallet file or a wallet public key file.
///
/// # Errors
/// As [`read_wallet`], for either kind of file.
pub fn read_public_key(path: &Path) -> Result<PublicKey> {
    Ok(match read_key_file(path)? {
        KeyFile::Secret(k) => k.public_key().clone(),
        KeyFile::Public(p) => p,
    })
}

/// An address given on the command line: `xw…`, or a wallet or public key file.
///
/// # Errors
/// Neither a valid address nor a readable key file.
pub fn parse_address_arg(arg: &str) -> Result<Address> {
    let t = arg.trim();
    if let Ok(a) = t.parse::<Address>() {
        return Ok(a);
    }
    let p = Path::new(t);
    if p.is_file() {
        return Ok(Address::of(&read_public_key(p)?));
    }
    if t.starts_with("xw") {
        bail!("{arg:?} is not an address (\"xw\" and 64 lowercase hex digits) or a wallet file");
    }
    bail!("{arg:?} is neither an address (\"xw\" and 64 lowercase hex digits) nor a readable wallet file")
}

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
        .with_context(|| format!("cannot write {}", path.display()))
}

fn create_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => {
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
        _ => Ok(()),
    }
}

/// Writes the public key file of `key` next to `wallet` (replacing it).
///
/// # Errors
/// The write fails.
pub fn write_public_key(wallet: &Path, key: &PublicKey) -> Result<PathBuf> {
    let path = public_key_path(wallet);
    let text = format!(
        "# XTMP wallet public key (ML-DSA-65)\n# address {}\n{}\n",
        Address::of(key),
        hex::encode(key.as_bytes())
    );
    fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Creates a new wallet: the seed in `path` (mode 0600; refuses to overwrite) and the
/// public key in [`public_key_path`].
///
/// # Errors
/// `path` exists, a directory cannot be created, or a write fails.
pub fn create_wallet(path: &Path) -> Result<SigningKey> {
    if path.exists() {
        bail!(
            "{} already exists; refusing to overwrite a wallet (remove it first to replace it)",
            path.display()
        );
    }
    create_parent(path)?;
    let key = SigningKey::generate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let text = Zeroizing::new(format!(
        "# XTMP wallet (ML-DSA-65 secret key seed). Keep it private.\n# address {}\n{}\n",
        key.address(),
        hex::encode(key.seed())
    ));
    create_private(path, text.as_bytes())?;
    write_public_key(path, key.public_key())?;
    Ok(key)
}

/// The wallet at `path`, created first if missing (the server's automatic mint
/// authority). Returns the key and whether it was created.
///
/// # Errors
/// As [`create_wallet`] and [`read_wallet`].
pub fn load_or_create_wallet(path: &Path) -> Result<(SigningKey, bool)> {
    if path.exists() {
        let key = read_wallet(path)?;
        if !public_key_path(path).exists() {
            write_public_key(path, key.public_key())?;
        }
        Ok((key, false))
    } else {
        Ok((create_wallet(path)?, true))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn create_read_and_refuse_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w/alice.wallet");
        let k = create_wallet(&p).unwrap();
        assert!(create_wallet(&p).is_err());
        assert_eq!(read_wallet(&p).unwrap().address(), k.address());
        let pub_path = public_key_path(&p);
        assert_eq!(
            Address::of(&read_public_key(&pub_path).unwrap()),
            k.address()
        );
        assert!(read_wallet(&pub_path).is_err());
        let a = k.address().to_string();
        assert_eq!(parse_address_arg(&a).unwrap(), k.address());
        assert_eq!(parse_address_arg(p.to_str().unwrap()).unwrap(), k.address());
        assert!(parse_address_arg("xw00").is_err());
        assert!(parse_address_arg("nope").is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }

    #[test]
    fn junk_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        for (i, junk) in ["", "zz", "# only a comment\n", &"ab".repeat(33), "\u{0}"]
            .iter()
            .enumerate()
        {
            let p = dir.path().join(format!("j{i}"));
            fs::write(&p, junk).unwrap();
            assert!(read_wallet(&p).is_err(), "{junk:?}");
            assert!(read_public_key(&p).is_err(), "{junk:?}");
        }
        assert!(read_wallet(&dir.path().join("missing")).is_err());
        assert!(read_wallet(dir.path()).is_err());
    }
}
