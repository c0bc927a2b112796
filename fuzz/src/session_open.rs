//! `session_open`: frames into an established [`Session`] via [`Session::open`].
//!
//! Each run starts from a fresh receiver ([`fixtures::fresh_receiver`]: a deterministic
//! handshake, so the recorded genuine frames of [`fixtures::world`] are valid for it).
//!
//! Input: a control byte — bits 0–1 the encryption type (wire code), bit 2 the receiving
//! side (0 server, 1 client), bit 3 the initial replay mode (0 `Ordered`, 1 `Window`) —
//! then up to [`MAX_OPS`] operations, `op % 4`:
//!
//! * 0 `i`: open genuine frame `i` (mod their count) unchanged;
//! * 1 `i` `off:u16` `n` `mask[n]`: open genuine frame `i` with `mask` XORed in at `off`;
//! * 2 `len:u16` `bytes[len]`: open arbitrary bytes;
//! * 3: toggle the replay mode (`set_replay_mode`).
//!
//! Invariants beyond "no panic", per open:
//! * A frame authenticates (the `frames_received` counter moves) only if it is
//!   byte-for-byte one of the genuine frames: every byte is in the AEAD's associated
//!   data, the tag, the authenticated ciphertext, or the CRC of that ciphertext. So a
//!   mutated genuine frame never opens unless the mutation cancelled out.
//! * `Ok` only for an authenticated frame; an application message delivers exactly the
//!   type and plaintext that were sealed.
//! * A frame that does not authenticate leaves the session as it was (all observable
//!   state except the failure counters), unless it trips the integrity limit, which
//!   only happens in `Window` mode and closes the session with `IntegrityLimit`.
//! * A closed session returns its close reason and nothing else.

use std::time::{Duration, Instant};

use xtmp_proto::{EncryptionType, Header, Received, ReplayMode, Session, Side, XTMPError};

use crate::fixtures::{self, Genuine, ENCRYPTION_TYPES};
use crate::input::{xor_at, Input};

/// Most operations per input.
pub const MAX_OPS: usize = 32;

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let Some(ctl) = input.byte() else {
        return;
    };
    let enc = ENCRYPTION_TYPES[usize::from(ctl & 3)];
    let side = if ctl & 4 == 0 {
        Side::Server
    } else {
        Side::Client
    };
    let mut mode = if ctl & 8 == 0 {
        ReplayMode::Ordered
    } else {
        ReplayMode::Window
    };
    let genuine = fixtures::world(enc).received_by(side);
    let mut session = fixtures::fresh_receiver(enc, side);
    session.set_replay_mode(mode);
    let mut rng = fixtures::session_rng();

    for _ in 0..MAX_OPS {
        let Some(op) = input.byte() else {
            break;
        };
        let frame = match op % 4 {
            0 => pick(genuine, &mut input).frame.clone(),
            1 => {
                let base = &pick(genuine, &mut input).frame;
                let offset = usize::from(input.u16().unwrap_or(0));
                let n = usize::from(input.byte().unwrap_or(0));
                xor_at(base, offset, input.take(n))
            }
            2 => {
                let len = usize::from(input.u16().unwrap_or(0));
                input.take(len).to_vec()
            }
            _ => {
                mode = match mode {
                    ReplayMode::Ordered => ReplayMode::Window,
                    ReplayMode::Window => ReplayMode::Ordered,
                };
                session.set_replay_mode(mode);
                continue;
            }
        };
        open_one(&mut session, enc, genuine, &frame, &mut rng);
    }
}

fn pick<'a>(genuine: &'a [Genuine], input: &mut Input<'_>) -> &'a Genuine {
    &genuine[usize::from(input.byte().unwrap_or(0)) % genuine.len()]
}

/// The observable state of a session, minus the failure counters.
#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    key_generation: u32,
    recv_key_generation: u32,
    has_previous_keys: bool,
    key_update_in_progress: bool,
    next_send_sequence: u64,
    close_reason: Option<XTMPError>,
    confirmed: bool,
    frames_received: u64,
    bytes_received: u64,
    frames_sent: u64,
    bytes_sent: u64,
    key_updates: u64,
    poll_timeout: Option<Instant>,
    srtt: Option<Duration>,
    replay_mode: ReplayMode,
    encryption_type: EncryptionType,
}

impl Snapshot {
    fn of(s: &Session) -> Self {
        let st = s.stats();
        Self {
            key_generation: s.key_generation(),
            recv_key_generation: s.recv_key_generation(),
            has_previous_keys: s.has_previous_keys(),
            key_update_in_progress: s.key_update_in_progress(),
            next_send_sequence: s.next_send_sequence(),
            close_reason: s.close_reason().cloned(),
            confirmed: s.is_confirmed(),
            frames_received: st.frames_received,
            bytes_received: st.bytes_received,
            frames_sent: st.frames_sent,
            bytes_sent: st.bytes_sent,
            key_updates: st.key_updates,
            poll_timeout: s.poll_timeout(),
            srtt: s.rtt().smoothed(),
            replay_mode: s.config().replay_mode,
            encryption_type: s.encryption_type(),
        }
    }
}

/// What `open` returned, without the borrow of the frame buffer.
#[derive(Debug)]
enum Opened {
    Message {
        header: Header,
        payload: Vec<u8>,
    },
    Other(
        #[allow(dead_code)] // read through `Debug`, in failure messages
        String,
    ),
    Failed(XTMPError),
}

fn open_one(
    session: &mut Session,
    enc: EncryptionType,
    genuine: &[Genuine],
    frame: &[u8],
    rng: &mut fixtures::Rng,
) {
    let before = Snapshot::of(session);
    let mut buf = frame.to_vec();
    let opened = match session.open(fixtures::now(), &mut buf, rng) {
        Ok(Received::Message { header, payload }) => Opened::Message {
            header,
            payload: payload.into_owned(),
        },
        Ok(other) => Opened::Other(format!("{other:?}")),
        Err(e) => Opened::Failed(e),
    };
    assert_eq!(buf.len(), frame.len(), "open changed the frame length");
    let after = Snapshot::of(session);

    if let Some(reason) = &before.close_reason {
        assert!(
            matches!(&opened, Opened::Failed(e) if e == reason),
            "a closed session ({reason:?}) returned {opened:?}"
        );
    }

    let authenticated = after.frames_received != before.frames_received;
    if authenticated {
        assert_eq!(after.frames_received, before.frames_received + 1);
        let Some(g) = genuine.iter().find(|g| g.frame == frame) else {
            panic!("a frame that was never sent authenticated ({enc:?}): {opened:?}\n{frame:02x?}")
        };
        assert!(after.confirmed);
        if let Opened::Message { header, payload } = &opened {
            let Some((t, plaintext)) = &g.message else {
                panic!("a control frame was delivered as an application message: {header:?}")
            };
            assert_eq!(header.message_type, *t);
            assert_eq!(header.session_id, session.session_id());
            assert_eq!(
                payload, plaintext,
                "the delivered plaintext is not what was sealed"
            );
        }
    } else {
        let Opened::Failed(e) = &opened else {
            panic!("open succeeded without authenticating the frame: {opened:?}")
        };
        if *e == XTMPError::IntegrityLimit && before.close_reason.is_none() {
            assert_eq!(before.replay_mode, ReplayMode::Window);
            assert!(session.stats().auth_failures >= fixtures::INTEGRITY_LIMIT);
            assert_eq!(after.close_reason, Some(XTMPError::IntegrityLimit));
        } else {
            assert_eq!(
                after, before,
                "a frame that failed ({e:?}) changed the session"
            );
        }
    }
}
