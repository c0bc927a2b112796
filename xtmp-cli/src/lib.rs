//! # xtmp-cli: the `xtmp` command
//!
//! A thin binary over the `xtmp` runtime: it reads `xtmp.toml` ([`config`]), manages key
//! files ([`keys`]), runs the server with an admin HTTP endpoint ([`server`], [`admin`],
//! [`prom`]) and the application services ([`app_server`]), talks to servers
//! ([`client`], and [`app`] for wallets, bundles, registry, streams, QLOCK and TLSLS, with
//! wallet key files in [`wallet_file`]) and decodes frames ([`inspect`]).
//!
//! The modules are a library so they can be unit-tested; the binary (`src/main.rs`) only
//! parses the command line ([`cli`]) and dispatches. Integration tests in `tests/` run the
//! real binary as a process.

pub mod admin;
pub mod app;
pub mod app_cli;
pub mod app_server;
pub mod cli;
pub mod client;
pub mod config;
pub mod duration;
pub mod inspect;
pub mod keys;
pub mod prom;
pub mod render;
pub mod server;
pub mod transport_args;
pub mod wallet_file;

/// Reads at most `max` bytes from a file (or standard input for `-`), so a wrong path
/// such as `/dev/zero` or a huge file is an error instead of exhausting memory.
///
/// # Errors
/// The file is unreadable or longer than `max` bytes.
pub fn read_capped(path: &std::path::Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut v = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin().lock().take(max + 1).read_to_end(&mut v)?;
    } else {
        std::fs::File::open(path)?
            .take(max + 1)
            .read_to_end(&mut v)?;
    }
    if v.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(v)
}

/// [`read_capped`] as UTF-8 text.
///
/// # Errors
/// As [`read_capped`], or the content is not UTF-8.
pub fn read_capped_string(path: &std::path::Path, max: u64) -> std::io::Result<String> {
    String::from_utf8(read_capped(path, max)?)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// Writes to standard output. A closed pipe (`xtmp server status | head -1`) ends the
/// process quietly with status 0 instead of panicking as `println!` does.
pub fn write_stdout(text: &str) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_all(text.as_bytes()).and_then(|()| o.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

/// `println!` through [`write_stdout`].
#[macro_export]
macro_rules! outln {
    () => { $crate::write_stdout("\n") };
    ($($t:tt)*) => { $crate::write_stdout(&format!("{}\n", format_args!($($t)*))) };
}

/// `print!` through [`write_stdout`].
#[macro_export]
macro_rules! out {
    ($($t:tt)*) => { $crate::write_stdout(&format!($($t)*)) };
}
