//! Payload compression (`COMPRESSED` flag): LZ4 block format with a 4-byte big-endian
//! uncompressed length in front, bounded on decompression (`PROTOCOL.md` §6).

use crate::error::XTMPError;

/// Compresses `data`; `None` when the result would not be smaller (then the message is
/// sent uncompressed) or when `data` exceeds `max`.
pub fn compress(data: &[u8], max: u32) -> Option<Vec<u8>> {
    let len = u32::try_from(data.len()).ok()?;
    if len > max {
        return None;
    }
    let bound = lz4_flex::block::get_maximum_output_size(data.len());
    let mut out = vec![0u8; 4 + bound];
    out[..4].copy_from_slice(&len.to_be_bytes());
    let n = lz4_flex::block::compress_into(data, &mut out[4..]).ok()?;
    out.truncate(4 + n);
    (out.len() < data.len()).then_some(out)
}

/// Decompresses a `COMPRESSED` payload. The declared size is checked against `max`
/// before anything is allocated, and the output must have exactly that size.
///
/// # Errors
/// [`XTMPError::DecompressedTooLarge`] or [`XTMPError::DecompressionFailed`].
pub fn decompress(data: &[u8], max: u32) -> Result<Vec<u8>, XTMPError> {
    let Some(hdr) = data.get(..4) else {
        return Err(XTMPError::DecompressionFailed);
    };
    let size = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    if size > max {
        return Err(XTMPError::DecompressedTooLarge { size, max });
    }
    let mut out = vec![0u8; size as usize];
    let n = lz4_flex::block::decompress_into(&data[4..], &mut out)
        .map_err(|_| XTMPError::DecompressionFailed)?;
    if n != out.len() {
        return Err(XTMPError::DecompressionFailed);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip_and_incompressible() {
        let text = b"wallet balance update ".repeat(100);
        let c = compress(&text, 1 << 20).unwrap();
        assert!(c.len() < text.len());
        assert_eq!(decompress(&c, 1 << 20).unwrap(), text);
        let random: Vec<u8> = (0..256u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        assert!(
            compress(&random, 1 << 20).is_none()
                || compress(&random, 1 << 20).unwrap().len() < random.len()
        );
    }

    #[test]
    fn bomb_is_refused_before_allocation() {
        // Declares 4 GiB.
        let bomb = [0xFF, 0xFF, 0xFF, 0xFF, 0x00];
        assert_eq!(
            decompress(&bomb, 16 << 20),
            Err(XTMPError::DecompressedTooLarge {
                size: u32::MAX,
                max: 16 << 20
            })
        );
        // A real 1 MiB of zeros, limit 64 KiB.
        let c = compress(&vec![0u8; 1 << 20], 1 << 21).unwrap();
        assert!(matches!(
            decompress(&c, 1 << 16),
            Err(XTMPError::DecompressedTooLarge { .. })
        ));
    }

    #[test]
    fn wrong_declared_size_or_garbage_fails() {
        let text = b"abcabcabcabcabcabcabcabcabcabc".repeat(10);
        let mut c = compress(&text, 1 << 20).unwrap();
        c[3] = c[3].wrapping_add(1);
        assert_eq!(decompress(&c, 1 << 20), Err(XTMPError::DecompressionFailed));
        assert_eq!(
            decompress(&[0, 0], 1 << 20),
            Err(XTMPError::DecompressionFailed)
        );
        assert!(decompress(&[0, 0, 0, 10, 0xff, 0xff, 0xff], 1 << 20).is_err());
    }
}
