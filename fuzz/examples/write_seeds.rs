//! Writes the seed corpus: `cargo run --example write_seeds` (from `fuzz/`).
//!
//! Replaces every `corpus/<target>/seed-*` file with the current output of
//! [`xtmp_fuzz::seeds::seeds`]; other files in `corpus/` (libFuzzer's own finds) are left.

use std::fs;
use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut total = 0usize;
    for (target, _) in xtmp_fuzz::TARGETS {
        let dir = root.join(target);
        fs::create_dir_all(&dir)?;
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seed-"))
            {
                fs::remove_file(path)?;
            }
        }
        for (name, bytes) in xtmp_fuzz::seeds::seeds(target) {
            total += bytes.len();
            fs::write(dir.join(format!("seed-{name}")), bytes)?;
        }
    }
    println!("wrote {total} bytes of seeds under {}", root.display());
    Ok(())
}
