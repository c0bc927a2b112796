//! `handshake_server`: message 1 into a fresh [`ServerHandshaker`] (fixed static key,
//! deterministic randomness).
//!
//! Input: a control byte, then the rest. `ctl % 6` picks the mode:
//!
//! | mode | server | `require_cookie` | message 1 |
//! |---|---|---|---|
//! | 0 | open | no | the rest, as is |
//! | 1 | open | yes | the rest, as is |
//! | 2 | mutual-auth only | bit 6 of `ctl` | the rest, as is |
//! | 3 | open | no | genuine `pqNK` message 1, mutated |
//! | 4 | mutual-auth only | no | genuine `pqIK` message 1, mutated |
//! | 5 | open | yes | genuine `pqNK` message 1 with its cookie, mutated |
//!
//! A mutation is a big-endian `u16` offset followed by a mask XORed into the message
//! from there (wrapping), see [`crate::input::mutate`].
//!
//! Invariants beyond "no panic":
//! * `Retry` only when a cookie is required, always smaller than what was received, and a
//!   well-formed `Retry` frame; `Accepted` only with a well-formed `HandshakeAck` that
//!   matches the returned session.
//! * A mutated message is never accepted: every byte of message 1 is either checked
//!   against a fixed value (header, prefix, lengths), covered by the CRC, mixed into the
//!   transcript that authenticates the encrypted timestamp, or (the cookie, mode 5
//!   only) compared with the expected cookie, which leads to `Retry`, not `Accepted`.
//!   The unmodified genuine message is always accepted, with the recorded ack.
//! * With bit 7 of `ctl`, after a mutated message fails, the same responder still
//!   accepts the genuine one (a rejected message leaves the responder usable).
//! * `pqIK`: the same genuine message accepted twice is refused as `Replayed`.

use xtmp_proto::header::HEADER_LEN;
use xtmp_proto::{
    parse_frame, HandshakeFailure, MessageType, Pattern, ServerHandshaker, ServerOutcome, XTMPError,
};

use crate::fixtures::{self, ServerKind, PEER_ADDRESS};
use crate::input::{mutate, Input};

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let Some(ctl) = input.byte() else {
        return;
    };
    let fx = fixtures::handshake();
    let recheck = ctl & 0x80 != 0;
    match ctl % 6 {
        0 => raw(ServerKind::Open, false, input.rest()),
        1 => raw(ServerKind::Open, true, input.rest()),
        2 => raw(ServerKind::MutualOnly, ctl & 0x40 != 0, input.rest()),
        3 => mutated(
            ServerKind::Open,
            false,
            &fx.msg1_nk,
            &fx.ack_nk,
            input,
            recheck,
        ),
        4 => mutated(
            ServerKind::MutualOnly,
            false,
            &fx.msg1_ik,
            &fx.ack_ik,
            input,
            recheck,
        ),
        _ => mutated(
            ServerKind::Open,
            true,
            &fx.msg1_nk_cookie,
            &fx.ack_nk_cookie,
            input,
            recheck,
        ),
    }
}

fn handle(
    server: &mut ServerHandshaker,
    require_cookie: bool,
    msg: &[u8],
    rng: &mut fixtures::Rng,
) -> Result<ServerOutcome, XTMPError> {
    let out = server.handle(fixtures::now(), PEER_ADDRESS, require_cookie, msg, rng);
    check_outcome(server, require_cookie, msg, &out);
    out
}

fn raw(kind: ServerKind, require_cookie: bool, msg: &[u8]) {
    let mut server = fixtures::server(kind);
    let _ = handle(
        &mut server,
        require_cookie,
        msg,
        &mut fixtures::server_rng(),
    );
}

fn mutated(
    kind: ServerKind,
    require_cookie: bool,
    base: &[u8],
    base_ack: &[u8],
    input: Input<'_>,
    recheck: bool,
) {
    let msg = mutate(base, input);
    let unchanged = msg == base;
    let mut server = fixtures::server(kind);
    let mut rng = fixtures::server_rng();
    match handle(&mut server, require_cookie, &msg, &mut rng) {
        Ok(ServerOutcome::Accepted { ack, .. }) => {
            assert!(unchanged, "a mutated message 1 was accepted");
            assert_eq!(ack, base_ack, "a fresh responder answered differently");
            if kind == ServerKind::MutualOnly {
                let again = handle(&mut server, require_cookie, base, &mut rng);
                assert!(
                    matches!(again, Err(XTMPError::Handshake(HandshakeFailure::Replayed))),
                    "a replayed pqIK message 1 was not refused: {again:?}"
                );
            }
        }
        Ok(ServerOutcome::Retry(_)) => {
            assert!(
                !unchanged,
                "the genuine message 1 with its cookie got a Retry"
            );
        }
        Err(e) => {
            assert!(!unchanged, "the genuine message 1 was refused: {e:?}");
            if recheck {
                let again = handle(&mut server, require_cookie, base, &mut rng);
                assert!(
                    matches!(again, Ok(ServerOutcome::Accepted { .. })),
                    "after refusing a mutated message 1 ({e:?}) the responder refused the genuine one: {again:?}"
                );
            }
        }
    }
}

/// What any outcome must look like, whatever the input.
fn check_outcome(
    server: &ServerHandshaker,
    require_cookie: bool,
    msg: &[u8],
    out: &Result<ServerOutcome, XTMPError>,
) {
    match out {
        Ok(ServerOutcome::Retry(retry)) => {
            assert!(require_cookie, "Retry although no cookie is required");
            assert!(
                retry.len() < msg.len(),
                "Retry of {} bytes for {} received (amplification)",
                retry.len(),
                msg.len()
            );
            match parse_frame(retry, u32::MAX) {
                Ok((h, cookie)) => {
                    assert_eq!(h.message_type, MessageType::Retry);
                    assert_eq!(h.session_id, 0);
                    assert_eq!(cookie.len(), xtmp_proto::handshake::COOKIE_LEN);
                }
                Err(e) => panic!("the server's Retry does not parse: {e:?}"),
            }
        }
        Ok(ServerOutcome::Accepted {
            ack,
            session,
            client_key,
            ..
        }) => {
            let pattern = match msg.get(HEADER_LEN + 1) {
                Some(1) => Pattern::NK,
                Some(2) => Pattern::IK,
                other => panic!("accepted a message 1 with pattern byte {other:?}"),
            };
            if server.config().require_client_auth {
                assert_eq!(pattern, Pattern::IK);
            }
            match parse_frame(ack, u32::MAX) {
                Ok((h, payload)) => {
                    assert_eq!(h.message_type, MessageType::HandshakeAck);
                    assert_ne!(h.session_id, 0);
                    assert_eq!(h.session_id, session.session_id());
                    assert_eq!(payload.len(), pattern.message2_len());
                }
                Err(e) => panic!("the server's ack does not parse: {e:?}"),
            }
            assert_eq!(client_key.is_some(), pattern == Pattern::IK);
            assert_eq!(session.peer_key(), client_key.as_ref());
            assert_eq!(session.side(), xtmp_proto::Side::Server);
            assert!(!session.is_confirmed());
            assert!(server
                .config()
                .encryption_types
                .contains(&session.encryption_type()));
        }
        Err(_) => {}
    }
}
