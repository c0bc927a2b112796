//! `xtmp inspect`: decode one frame without keys and explain every header field and
//! every validation step, in the order the decoder applies them (`PROTOCOL.md` §2.3).
//!
//! The verdict is the real decoder's ([`xtmp_proto::parse_frame`]); the step-by-step list
//! evaluates each check independently so that every problem in a frame shows at once.
//! Checks that need session keys or state (authentication tag, replay window,
//! decryption) are listed as not checked.

use serde::Serialize;
use xtmp_proto::control::{decode_ack, split_response, DisconnectPayload, ErrorPayload};
use xtmp_proto::handshake::{Pattern, COOKIE_LEN, HANDSHAKE_VERSION, KEM_XWING};
use xtmp_proto::header::{MAGIC, VERSION};
use xtmp_proto::keys::Direction;
use xtmp_proto::{crc32, parse_frame, EncryptionType, MessageType, XTMPFlags, HEADER_LEN};

/// Result of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The check passed.
    Pass,
    /// The check failed.
    Fail,
    /// Not a protocol violation, but worth knowing (e.g. an unassigned message type).
    Warn,
    /// Could not be evaluated (not enough bytes, or an earlier field is unusable).
    Skipped,
}

/// One validation step.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// 1-based position in the decoder's order; structural checks follow the decoder's.
    pub step: usize,
    /// Short name.
    pub name: &'static str,
    /// Result.
    pub outcome: Outcome,
    /// What was found.
    pub detail: String,
}

/// One header field.
#[derive(Debug, Clone, Serialize)]
pub struct Field {
    /// Byte offset in the frame.
    pub offset: usize,
    /// Size in bytes.
    pub size: usize,
    /// Field name as in the seed.
    pub name: &'static str,
    /// Raw bytes as hex (empty when the frame is too short).
    pub hex: String,
    /// Decoded value and meaning.
    pub value: String,
}

/// A line of payload interpretation.
#[derive(Debug, Clone, Serialize)]
pub struct PayloadPart {
    /// What this part is.
    pub name: String,
    /// Its value or description.
    pub value: String,
}

/// Everything `inspect` found.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// Bytes given.
    pub length: usize,
    /// The decoder's verdict and, for valid frames, the keyless structural checks.
    pub valid: bool,
    /// The decoder's error, if it rejected the frame.
    pub decoder_error: Option<String>,
    /// The wire error code the receiver would report (`ErrorCode` name).
    pub error_code: Option<String>,
    /// Header fields in wire order.
    pub fields: Vec<Field>,
    /// Checks in order.
    pub checks: Vec<Check>,
    /// Payload interpretation.
    pub payload: Vec<PayloadPart>,
    /// What cannot be checked without keys.
    pub not_checked: Vec<&'static str>,
}

/// Parses hex as typed by a person: whitespace, `:` and `-` separators and a `0x` prefix
/// are ignored.
///
/// # Errors
/// An odd number of digits or a non-hex character, with its position.
pub fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let t = text.trim();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    let mut digits = String::with_capacity(t.len());
    for (i, c) in t.chars().enumerate() {
        if c.is_ascii_hexdigit() {
            digits.push(c);
        } else if !(c.is_whitespace() || c == ':' || c == '-') {
            return Err(format!(
                "character {c:?} at position {} is not a hex digit",
                i + 1
            ));
        }
    }
    if !digits.len().is_multiple_of(2) {
        return Err(format!("odd number of hex digits ({})", digits.len()));
    }
    hex::decode(&digits).map_err(|e| e.to_string())
}

/// Bytes of a file given to `inspect --file`: hex text when the file is nothing but hex
/// digits and separators, raw binary otherwise.
pub fn file_bytes(raw: Vec<u8>) -> Vec<u8> {
    match std::str::from_utf8(&raw) {
        Ok(s)
            if !s.trim().is_empty()
                && s.chars().all(|c| {
                    c.is_ascii_hexdigit() || c.is_whitespace() || c == ':' || c == '-'
                }) =>
        {
            parse_hex(s).unwrap_or(raw)
        }
        _ => raw,
    }
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn type_name(t: MessageType) -> String {
    match t.name() {
        Some(n) => format!("{n} (0x{:02x})", t.0),
        None => format!("unassigned (0x{:02x})", t.0),
    }
}

fn flags_text(raw: u16) -> String {
    let known = XTMPFlags::from_bits_truncate(u32::from(raw));
    let mut names: Vec<String> = known.iter_names().map(|(n, _)| n.to_string()).collect();
    let unknown = u32::from(raw) & !XTMPFlags::all().bits();
    if unknown != 0 {
        names.push(format!("reserved bits 0x{unknown:04x}"));
    }
    if names.is_empty() {
        "none".into()
    } else {
        names.join(" | ")
    }
}

fn enc_name(b: u8) -> String {
    match EncryptionType::from_u8(b) {
        Some(EncryptionType::None) => "None (integrity only: truncated HMAC-SHA-256)".into(),
        Some(EncryptionType::Aes256Gcm) => "Aes256Gcm (AES-256-GCM, 12-byte nonce)".into(),
        Some(EncryptionType::ChaCha20Poly1305) => {
            "ChaCha20Poly1305 (ChaCha20-Poly1305, 12-byte nonce)".into()
        }
        Some(EncryptionType::PostQuantum) => "PostQuantum (XAES-256-GCM, 24-byte nonce)".into(),
        None => format!("unassigned (0x{b:02x})"),
    }
}

fn direction_name(b: u8) -> &'static str {
    match b {
        x if x == Direction::ClientToServer as u8 => "client→server",
        x if x == Direction::ServerToClient as u8 => "server→client",
        0 => "none",
        _ => "invalid",
    }
}

fn is_handshake_class(t: MessageType) -> bool {
    matches!(
        t,
        MessageType::Handshake | MessageType::HandshakeAck | MessageType::Retry
    )
}

/// Describes a byte string for display: UTF-8 text when printable, hex otherwise
/// (both cut at 256 bytes).
fn preview(b: &[u8]) -> String {
    const MAX: usize = 256;
    let cut = &b[..b.len().min(MAX)];
    let more = if b.len() > MAX {
        format!(" … ({} bytes in all)", b.len())
    } else {
        String::new()
    };
    match std::str::from_utf8(cut) {
        Ok(s) if s.chars().all(|c| !c.is_control() || c == '\n' || c == '\t') => {
            format!("{s:?}{more}")
        }
        _ => format!("hex {}{more}", hex::encode(cut)),
    }
}

/// Inspects `buf` as exactly one frame, with `max_payload` as the receiver's limit.
pub fn inspect(buf: &[u8], max_payload: u32) -> Inspection {
    let mut fields = Vec::new();
    let layout: [(usize, usize, &'static str); 13] = [
        (0, 4, "magic"),
        (4, 1, "version"),
        (5, 1, "message_type"),
        (6, 2, "flags"),
        (8, 8, "session_id"),
        (16, 8, "sequence_number"),
        (24, 4, "payload_length"),
        (28, 4, "checksum"),
        (32, 1, "encryption_type"),
        (33, 7, "reserved"),
        (40, 16, "key_id"),
        (56, 24, "nonce"),
        (80, 16, "auth_tag"),
    ];
    for (offset, size, name) in layout {
        let bytes = buf.get(offset..offset + size);
        let value = match bytes {
            None => "(missing: frame too short)".to_string(),
            Some(b) => match name {
                "magic" => {
                    if b == MAGIC {
                        "\"XTMP\"".into()
                    } else {
                        format!("{:?} (expected \"XTMP\")", String::from_utf8_lossy(b))
                    }
                }
                "version" => format!("{}", b[0]),
                "message_type" => type_name(MessageType(b[0])),
                "flags" => flags_text(u16::from_be_bytes([b[0], b[1]])),
                "session_id" => {
                    let v = be_u64(b);
                    format!("{v} (0x{v:016x})")
                }
                "sequence_number" => be_u64(b).to_string(),
                "payload_length" => format!("{} bytes", be_u32(b)),
                "checksum" => format!("CRC-32 0x{:08x}", be_u32(b)),
                "encryption_type" => enc_name(b[0]),
                "reserved" => {
                    if b.iter().all(|&x| x == 0) {
                        "zero".into()
                    } else {
                        "NOT zero".into()
                    }
                }
                "key_id" => {
                    if b.iter().all(|&x| x == 0) {
                        "zero (no key: handshake-class frame)".into()
                    } else {
                        format!(
                            "session 0x{:016x}, key generation {}, direction {}",
                            be_u64(&b[0..8]),
                            be_u32(&b[8..12]),
                            direction_name(b[12])
                        )
                    }
                }
                "nonce" => {
                    if b.iter().all(|&x| x == 0) {
                        "zero".into()
                    } else if buf.get(32).copied() == Some(EncryptionType::PostQuantum as u8) {
                        format!(
                            "XAES layout: direction {}, key generation {}, sequence {}",
                            direction_name(b[0]),
                            be_u32(&b[1..5]),
                            be_u64(&b[16..24])
                        )
                    } else {
                        format!(
                            "12-byte layout: direction {}, sequence {}",
                            direction_name(b[0]),
                            be_u64(&b[4..12])
                        )
                    }
                }
                "auth_tag" => {
                    if b.iter().all(|&x| x == 0) {
                        "zero".into()
                    } else {
                        "AEAD tag / truncated HMAC (verifiable only with the session keys)".into()
                    }
                }
                _ => String::new(),
            },
        };
        fields.push(Field {
            offset,
            size,
            name,
            hex: bytes.map(hex::encode).unwrap_or_default(),
            value,
        });
    }

    let mut checks = Vec::new();
    let mut push = |name: &'static str, outcome: Outcome, detail: String| {
        let step = checks.len() + 1;
        checks.push(Check {
            step,
            name,
            outcome,
            detail,
        });
    };
    let pf = |ok: bool| if ok { Outcome::Pass } else { Outcome::Fail };
    let h = buf.get(..HEADER_LEN);

    // 1. length
    push(
        "header length",
        pf(h.is_some()),
        format!("{} bytes given, the header needs {HEADER_LEN}", buf.len()),
    );
    // 2. magic
    match buf.get(..4) {
        Some(m) => push(
            "magic",
            pf(m == MAGIC),
            format!("{} (expected 58544d50 \"XTMP\")", hex::encode(m)),
        ),
        None => {
            let n = buf.len().min(4);
            let prefix_ok = buf[..n] == MAGIC[..n];
            push(
                "magic",
                if prefix_ok {
                    Outcome::Skipped
                } else {
                    Outcome::Fail
                },
                format!("only {n} bytes: {}", hex::encode(&buf[..n])),
            );
        }
    }
    if let Some(h) = h {
        push(
            "version",
            pf(h[4] == VERSION),
            format!("{} (this implementation speaks {VERSION})", h[4]),
        );
        push(
            "reserved bytes 33..40 are zero",
            pf(h[33..40].iter().all(|&b| b == 0)),
            hex::encode(&h[33..40]),
        );
        let raw = u16::from_be_bytes([h[6], h[7]]);
        let unknown = u32::from(raw) & !XTMPFlags::all().bits();
        push(
            "flags: no reserved bit set",
            pf(unknown == 0),
            format!("0x{raw:04x} = {}", flags_text(raw)),
        );
        push(
            "encryption type is assigned",
            pf(EncryptionType::from_u8(h[32]).is_some()),
            enc_name(h[32]),
        );
        match EncryptionType::from_u8(h[32]) {
            Some(e) => {
                let flag =
                    XTMPFlags::from_bits_truncate(u32::from(raw)).contains(XTMPFlags::ENCRYPTED);
                push(
                    "ENCRYPTED flag matches the encryption type",
                    pf(flag == (e != EncryptionType::None)),
                    format!(
                        "ENCRYPTED is {}, encryption type is {}",
                        if flag { "set" } else { "clear" },
                        e.name()
                    ),
                );
            }
            None => push(
                "ENCRYPTED flag matches the encryption type",
                Outcome::Skipped,
                "encryption type unknown".into(),
            ),
        }
        let len = be_u32(&h[24..28]);
        push(
            "payload length within the limit",
            pf(len <= max_payload),
            format!("{len} bytes, limit {max_payload}"),
        );
        let len = len as usize;
        let have = buf.len() - HEADER_LEN;
        push(
            "payload complete",
            pf(have >= len),
            format!("{have} payload bytes present, {len} declared"),
        );
        push(
            "no trailing bytes",
            if have < len {
                Outcome::Skipped
            } else {
                pf(have == len)
            },
            format!("{} bytes after the payload", have.saturating_sub(len)),
        );
        if have >= len {
            let payload = &buf[HEADER_LEN..HEADER_LEN + len];
            let actual = crc32(payload);
            let expected = be_u32(&h[28..32]);
            push(
                "CRC-32 of the payload",
                pf(actual == expected),
                format!("header 0x{expected:08x}, computed 0x{actual:08x}"),
            );
        } else {
            push(
                "CRC-32 of the payload",
                Outcome::Skipped,
                "payload incomplete".into(),
            );
        }
    } else {
        for name in [
            "version",
            "reserved bytes 33..40 are zero",
            "flags: no reserved bit set",
            "encryption type is assigned",
            "ENCRYPTED flag matches the encryption type",
            "payload length within the limit",
            "payload complete",
            "no trailing bytes",
            "CRC-32 of the payload",
        ] {
            push(name, Outcome::Skipped, "header incomplete".into());
        }
    }

    let verdict = parse_frame(buf, max_payload);
    let mut payload_parts = Vec::new();
    let mut structural_ok = true;
    if let Ok((hd, payload)) = &verdict {
        let t = hd.message_type;
        push(
            "message type is assigned",
            if t.is_known() {
                Outcome::Pass
            } else {
                Outcome::Warn
            },
            if t.is_known() {
                type_name(t)
            } else {
                format!(
                    "{}: a receiver answers with Error UNKNOWN_MESSAGE_TYPE",
                    type_name(t)
                )
            },
        );
        if is_handshake_class(t) {
            let plain = hd.encryption_type == EncryptionType::None
                && hd.flags.is_empty()
                && hd.sequence_number == 0
                && hd.key_id == [0; 16]
                && hd.nonce == [0; 24]
                && hd.auth_tag == [0; 16];
            structural_ok &= plain;
            push(
                "handshake frame: no record protection",
                pf(plain),
                "encryption None, no flags, sequence 0, zero key id, nonce and tag".into(),
            );
            let sid_ok = if t == MessageType::HandshakeAck {
                hd.session_id != 0
            } else {
                hd.session_id == 0
            };
            structural_ok &= sid_ok;
            push(
                "handshake frame: session id",
                pf(sid_ok),
                if t == MessageType::HandshakeAck {
                    "HandshakeAck assigns a non-zero session id".into()
                } else {
                    format!("{} carries session id 0", t)
                },
            );
            let (ok, detail, parts) = explain_handshake(t, payload);
            structural_ok &= ok;
            push("handshake payload layout", pf(ok), detail);
            payload_parts = parts;
        } else {
            let k = hd.key_id;
            let sid_ok = k[0..8] == hd.session_id.to_be_bytes() && hd.session_id != 0;
            let dir = k[12];
            let dir_ok =
                dir == Direction::ClientToServer as u8 || dir == Direction::ServerToClient as u8;
            let tail_ok = k[13..16] == [0, 0, 0];
            let layout_ok = sid_ok && dir_ok && tail_ok;
            structural_ok &= layout_ok;
            push(
                "key id names this session",
                pf(layout_ok),
                format!(
                    "key id session 0x{:016x} vs header 0x{:016x}, direction byte {dir} ({}), tail {}",
                    be_u64(&k[0..8]),
                    hd.session_id,
                    direction_name(dir),
                    hex::encode(&k[13..16])
                ),
            );
            if dir_ok {
                let direction = if dir == Direction::ClientToServer as u8 {
                    Direction::ClientToServer
                } else {
                    Direction::ServerToClient
                };
                let generation = be_u32(&k[8..12]);
                let expected = xtmp_proto::keys::nonce(
                    hd.encryption_type,
                    direction,
                    generation,
                    hd.sequence_number,
                );
                let ok = expected == hd.nonce;
                structural_ok &= ok;
                push(
                    "nonce matches key id and sequence number",
                    pf(ok),
                    if ok {
                        format!("generation {generation}, sequence {}", hd.sequence_number)
                    } else {
                        format!("expected {}", hex::encode(expected))
                    },
                );
            } else {
                push(
                    "nonce matches key id and sequence number",
                    Outcome::Skipped,
                    "the key id's direction is invalid".into(),
                );
            }
            payload_parts = explain_record(t, hd.flags, hd.encryption_type, payload, max_payload);
        }
    }

    let (decoder_error, error_code) = match &verdict {
        Ok(_) => (None, None),
        Err(e) => (
            Some(e.to_string()),
            Some(
                e.code()
                    .name()
                    .map_or_else(|| format!("0x{:04x}", e.code().0), str::to_string),
            ),
        ),
    };
    Inspection {
        length: buf.len(),
        valid: verdict.is_ok() && structural_ok,
        decoder_error,
        error_code,
        fields,
        checks,
        payload: payload_parts,
        not_checked: vec![
            "authentication tag (AEAD or HMAC): needs the session keys",
            "sequence number against the replay window: needs the session state",
            "decryption and decompression of encrypted payloads: needs the session keys",
        ],
    }
}

fn part(name: impl Into<String>, value: impl Into<String>) -> PayloadPart {
    PayloadPart {
        name: name.into(),
        value: value.into(),
    }
}

fn explain_handshake(t: MessageType, p: &[u8]) -> (bool, String, Vec<PayloadPart>) {
    use xtmp_crypto::xwing::{CIPHERTEXT_LEN, PUBLIC_KEY_LEN};
    const TAG: usize = 16;
    let mut parts = Vec::new();
    match t {
        MessageType::Retry => {
            let ok = p.len() == COOKIE_LEN;
            parts.push(part("cookie", hex::encode(p)));
            (
                ok,
                format!("{} bytes (a cookie is {COOKIE_LEN})", p.len()),
                parts,
            )
        }
        MessageType::Handshake => {
            let Some(pre) = p.get(..8) else {
                return (false, format!("{} bytes: no 8-byte prefix", p.len()), parts);
            };
            let pattern = match pre[1] {
                1 => Some(Pattern::NK),
                2 => Some(Pattern::IK),
                _ => None,
            };
            let offered: Vec<&str> = [
                EncryptionType::None,
                EncryptionType::Aes256Gcm,
                EncryptionType::ChaCha20Poly1305,
                EncryptionType::PostQuantum,
            ]
            .into_iter()
            .filter(|e| pre[3] & e.offer_bit() != 0)
            .map(EncryptionType::name)
            .collect();
            parts.push(part("handshake version", pre[0].to_string()));
            parts.push(part(
                "pattern",
                match pattern {
                    Some(Pattern::NK) => "pqNK (server authenticated, client anonymous)".into(),
                    Some(Pattern::IK) => "pqIK (mutual authentication)".into(),
                    None => format!("invalid ({})", pre[1]),
                },
            ));
            parts.push(part(
                "KEM",
                if pre[2] == KEM_XWING {
                    "X-Wing (ML-KEM-768 + X25519)".to_string()
                } else {
                    format!("unknown ({})", pre[2])
                },
            ));
            parts.push(part(
                "encryption offered",
                format!("0x{:02x} = {}", pre[3], offered.join(", ")),
            ));
            parts.push(part(
                "encryption preferred",
                EncryptionType::from_u8(pre[4])
                    .map_or_else(|| format!("invalid ({})", pre[4]), |e| e.name().to_string()),
            ));
            let Some(pattern) = pattern else {
                return (false, "unknown pattern".into(), parts);
            };
            let base = pattern.message1_len();
            let cookie = match p.len() {
                n if n == base => false,
                n if n == base + COOKIE_LEN => true,
                n => {
                    return (
                        false,
                        format!(
                            "{n} bytes; {pattern:?} needs {base} (or {} with a cookie)",
                            base + COOKIE_LEN
                        ),
                        parts,
                    )
                }
            };
            parts.push(part(
                "KEM ciphertext to the server's static key",
                format!("{CIPHERTEXT_LEN} bytes"),
            ));
            parts.push(part(
                "client ephemeral public key",
                format!("{PUBLIC_KEY_LEN} bytes"),
            ));
            if pattern == Pattern::IK {
                parts.push(part(
                    "client static public key (encrypted)",
                    format!("{} bytes", PUBLIC_KEY_LEN + TAG),
                ));
            }
            parts.push(part("timestamp (encrypted)", format!("{} bytes", 8 + TAG)));
            if cookie {
                parts.push(part("cookie", hex::encode(&p[base..])));
            }
            let ok = pre[0] == HANDSHAKE_VERSION
                && pre[2] == KEM_XWING
                && pre[5..].iter().all(|&b| b == 0)
                && EncryptionType::from_u8(pre[4]).is_some();
            (
                ok,
                format!(
                    "{} bytes, {pattern:?}{}",
                    p.len(),
                    if cookie { " with cookie" } else { "" }
                ),
                parts,
            )
        }
        _ => {
            // HandshakeAck
            let Some(pre) = p.get(..8) else {
                return (false, format!("{} bytes: no 8-byte prefix", p.len()), parts);
            };
            let pattern = match pre[1] {
                1 => Some(Pattern::NK),
                2 => Some(Pattern::IK),
                _ => None,
            };
            parts.push(part("handshake version", pre[0].to_string()));
            parts.push(part("pattern", format!("{pattern:?}")));
            parts.push(part(
                "encryption chosen",
                EncryptionType::from_u8(pre[2])
                    .map_or_else(|| format!("invalid ({})", pre[2]), |e| e.name().to_string()),
            ));
            let Some(pattern) = pattern else {
                return (false, "unknown pattern".into(), parts);
            };
            parts.push(part(
                "KEM ciphertext to the client's ephemeral key",
                format!("{CIPHERTEXT_LEN} bytes"),
            ));
            if pattern == Pattern::IK {
                parts.push(part(
                    "KEM ciphertext to the client's static key",
                    format!("{CIPHERTEXT_LEN} bytes"),
                ));
            }
            parts.push(part(
                "session parameters (encrypted)",
                format!("{} bytes", 16 + TAG),
            ));
            let ok = p.len() == pattern.message2_len()
                && pre[0] == HANDSHAKE_VERSION
                && EncryptionType::from_u8(pre[2]).is_some()
                && pre[3..].iter().all(|&b| b == 0);
            (
                ok,
                format!(
                    "{} bytes; {pattern:?} needs {}",
                    p.len(),
                    pattern.message2_len()
                ),
                parts,
            )
        }
    }
}

fn explain_record(
    t: MessageType,
    flags: XTMPFlags,
    enc: EncryptionType,
    p: &[u8],
    max_payload: u32,
) -> Vec<PayloadPart> {
    let mut parts = Vec::new();
    if enc != EncryptionType::None {
        parts.push(part(
            "payload",
            format!(
                "{} bytes of {} ciphertext (needs the session keys)",
                p.len(),
                enc.name()
            ),
        ));
        return parts;
    }
    parts.push(part(
        "payload",
        format!("{} bytes of plaintext (integrity-protected only)", p.len()),
    ));
    let plain: Vec<u8> = if flags.contains(XTMPFlags::COMPRESSED) {
        match xtmp_proto::compress::decompress(p, max_payload) {
            Ok(d) => {
                parts.push(part("decompressed", format!("{} bytes (LZ4)", d.len())));
                d
            }
            Err(e) => {
                parts.push(part("decompression", format!("failed: {e}")));
                return parts;
            }
        }
    } else {
        p.to_vec()
    };
    match t {
        MessageType::Error => match ErrorPayload::decode(&plain) {
            Ok(e) => {
                parts.push(part(
                    "error code",
                    format!("{:?} (0x{:04x})", e.code, e.code.0),
                ));
                parts.push(part("about request", e.request_seq.to_string()));
                parts.push(part("reason", format!("{:?}", e.reason)));
            }
            Err(e) => parts.push(part("Error payload", format!("malformed: {e}"))),
        },
        MessageType::Disconnect => match DisconnectPayload::decode(&plain) {
            Ok(d) => {
                parts.push(part("code", format!("{:?} (0x{:04x})", d.code, d.code.0)));
                parts.push(part("reason", format!("{:?}", d.reason)));
            }
            Err(e) => parts.push(part("Disconnect payload", format!("malformed: {e}"))),
        },
        MessageType::Ack => match decode_ack(&plain) {
            Ok(s) => parts.push(part("acknowledges sequence", s.to_string())),
            Err(e) => parts.push(part("Ack payload", format!("malformed: {e}"))),
        },
        MessageType::Response | MessageType::QLOCKResponse | MessageType::TLSLSResponse => {
            match split_response(t, &plain) {
                Ok((seq, body)) => {
                    parts.push(part("answers request", seq.to_string()));
                    parts.push(part("body", preview(body)));
                }
                Err(e) => parts.push(part("Response payload", format!("malformed: {e}"))),
            }
        }
        _ => parts.push(part("body", preview(&plain))),
    }
    parts
}

/// Renders an inspection as a human-readable report.
pub fn render(i: &Inspection) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "Frame: {} bytes", i.length);
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<6} {:<4} {:<16} {:<48}  VALUE",
        "OFFSET", "SIZE", "FIELD", "RAW"
    );
    for f in &i.fields {
        let raw = if f.hex.len() > 48 {
            format!("{}…", &f.hex[..47])
        } else {
            f.hex.clone()
        };
        let _ = writeln!(
            s,
            "{:<6} {:<4} {:<16} {:<48}  {}",
            f.offset, f.size, f.name, raw, f.value
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "Checks, in the decoder's order:");
    for c in &i.checks {
        let mark = match c.outcome {
            Outcome::Pass => "pass",
            Outcome::Fail => "FAIL",
            Outcome::Warn => "warn",
            Outcome::Skipped => "skip",
        };
        let _ = writeln!(s, "  {:>2}. [{mark}] {}: {}", c.step, c.name, c.detail);
    }
    if !i.payload.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(s, "Payload:");
        for p in &i.payload {
            let _ = writeln!(s, "  {}: {}", p.name, p.value);
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "Not checked without keys:");
    for n in &i.not_checked {
        let _ = writeln!(s, "  - {n}");
    }
    let _ = writeln!(s);
    match (&i.decoder_error, &i.error_code) {
        (Some(e), Some(c)) => {
            let _ = writeln!(
                s,
                "Result: INVALID: the decoder rejects it: {e} (a receiver reports {c})"
            );
        }
        _ if i.valid => {
            let _ = writeln!(s, "Result: VALID (as far as can be checked without keys)");
        }
        _ => {
            let _ = writeln!(
                s,
                "Result: INVALID: the decoder accepts the framing but a structural check failed (see FAIL above)"
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;
    use xtmp_crypto::xwing::XWingSecretKey;
    use xtmp_proto::*;

    fn handshake_frame() -> Vec<u8> {
        let mut rng = InsecureDeterministicRngForTestingOnly::new([7; 32]);
        let sk = XWingSecretKey::from_seed(&[1; 32]);
        let (_, msg1) =
            ClientHandshake::start(ClientConfig::new(sk.public_key().clone()), 1, &mut rng)
                .unwrap();
        msg1
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
        let ServerOutcome::Accepted { ack, .. } =
            server.handle(now, b"x", false, &msg1, &mut rng).unwrap()
        else {
            panic!("retry")
        };
        let ClientOutcome::Established(mut c) = client.handle(now, &ack).unwrap() else {
            panic!("retry")
        };
        let mut frame = Vec::new();
        c.seal(
            MessageType::WalletBalance,
            XTMPFlags::empty(),
            b"{}",
            &mut frame,
        )
        .unwrap();
        frame
    }

    #[test]
    fn valid_handshake() {
        let i = inspect(&handshake_frame(), 1 << 24);
        assert!(i.valid, "{}", render(&i));
        assert!(
            i.checks.iter().all(|c| c.outcome == Outcome::Pass),
            "{}",
            render(&i)
        );
        assert!(render(&i).contains("pqNK"));
    }

    #[test]
    fn valid_record() {
        let i = inspect(&sealed_frame(), 1 << 24);
        assert!(i.valid, "{}", render(&i));
        assert!(render(&i).contains("WalletBalance (0x12)"));
    }

    #[test]
    fn each_corruption_is_named() {
        let good = sealed_frame();
        type Corrupt = Box<dyn Fn(&mut Vec<u8>)>;
        let cases: Vec<(Corrupt, &str)> = vec![
            (Box::new(|f: &mut Vec<u8>| f[0] = b'Y'), "magic"),
            (Box::new(|f: &mut Vec<u8>| f[4] = 9), "version"),
            (
                Box::new(|f: &mut Vec<u8>| f[35] = 1),
                "reserved bytes 33..40 are zero",
            ),
            (
                Box::new(|f: &mut Vec<u8>| f[6] = 0x80),
                "flags: no reserved bit set",
            ),
            (
                Box::new(|f: &mut Vec<u8>| f[32] = 9),
                "encryption type is assigned",
            ),
            (
                Box::new(|f: &mut Vec<u8>| f[32] = 0),
                "ENCRYPTED flag matches the encryption type",
            ),
            (
                Box::new(|f: &mut Vec<u8>| f[24] = 0x7f),
                "payload length within the limit",
            ),
            (
                Box::new(|f: &mut Vec<u8>| {
                    f.pop();
                }),
                "payload complete",
            ),
            (Box::new(|f: &mut Vec<u8>| f.push(0)), "no trailing bytes"),
            (
                Box::new(|f: &mut Vec<u8>| {
                    let n = f.len();
                    f[n - 1] ^= 1;
                }),
                "CRC-32 of the payload",
            ),
            (
                Box::new(|f: &mut Vec<u8>| f[41] ^= 1),
                "key id names this session",
            ),
            (
                Box::new(|f: &mut Vec<u8>| f[79] ^= 1),
                "nonce matches key id and sequence number",
            ),
        ];
        for (corrupt, name) in cases {
            let mut f = good.clone();
            corrupt(&mut f);
            let i = inspect(&f, 1 << 20);
            assert!(!i.valid, "{name}: {}", render(&i));
            let failed: Vec<_> = i
                .checks
                .iter()
                .filter(|c| c.outcome == Outcome::Fail)
                .map(|c| c.name)
                .collect();
            assert!(failed.contains(&name), "{name}: {failed:?}\n{}", render(&i));
        }
    }

    #[test]
    fn short_and_garbage_inputs_do_not_panic() {
        for n in 0..200 {
            let junk: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            let _ = render(&inspect(&junk, 1 << 20));
            let mut f = sealed_frame();
            f.truncate(n.min(f.len()));
            let i = inspect(&f, 1 << 20);
            let _ = render(&i);
            if n < 96 {
                assert!(!i.valid);
            }
        }
        let mut hs = handshake_frame();
        hs[96 + 1] = 7;
        let _ = render(&inspect(&hs, 1 << 24));
    }

    #[test]
    fn hex_input() {
        assert_eq!(parse_hex("0x58 54:4d-50").unwrap(), b"XTMP");
        assert!(parse_hex("585").is_err());
        assert!(parse_hex("58zz").unwrap_err().contains("position 3"));
        assert_eq!(file_bytes(b"5854 4d50\n".to_vec()), b"XTMP");
        assert_eq!(file_bytes(b"XTMP\x01".to_vec()), b"XTMP\x01");
    }
}
