//! `handshake_client`: the server's answer into a fresh [`ClientHandshake`] started
//! against the fixed server key.
//!
//! Input: a control byte, then the rest. `ctl % 4` picks the mode:
//!
//! | mode | client | answer |
//! |---|---|---|
//! | 0 | `pqNK` | the rest, as is |
//! | 1 | `pqNK` | genuine `HandshakeAck`, mutated |
//! | 2 | `pqIK` | genuine `HandshakeAck`, mutated |
//! | 3 | `pqNK` | genuine `Retry`, mutated |
//!
//! and the answer is handled `1 + (ctl >> 2) % 3` times. A mutation is a big-endian `u16`
//! offset followed by a mask XORed in from there (see [`crate::input::mutate`]).
//!
//! Invariants beyond "no panic":
//! * A mutated `HandshakeAck` never establishes a session: header and prefix are checked
//!   against fixed values or covered by the CRC, and everything else is in the
//!   transcript that authenticates the encrypted ack payload.
//! * An established session carries the session id of the ack's header.
//! * A `Retry` answer is message 1 again with the received cookie appended, and the
//!   client follows at most `MAX_RETRIES` of them.
//! * State unchanged on failure: whatever happened, the genuine ack still establishes
//!   the expected session afterwards.

use xtmp_proto::handshake::MAX_RETRIES;
use xtmp_proto::header::HEADER_LEN;
use xtmp_proto::{
    parse_frame, ClientHandshake, ClientOutcome, HandshakeFailure, MessageType, Pattern, XTMPError,
};

use crate::fixtures;
use crate::input::{mutate, Input};

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let Some(ctl) = input.byte() else {
        return;
    };
    let fx = fixtures::handshake();
    let repeat = 1 + usize::from(ctl >> 2) % 3;
    let (pattern, answer, base) = match ctl % 4 {
        0 => (Pattern::NK, input.rest().to_vec(), None),
        1 => (Pattern::NK, mutate(&fx.ack_nk, input), Some(&fx.ack_nk)),
        2 => (Pattern::IK, mutate(&fx.ack_ik, input), Some(&fx.ack_ik)),
        _ => (Pattern::NK, mutate(&fx.retry, input), None),
    };
    let (mut client, msg1) = fixtures::start_client(pattern);
    let mut retries = 0u8;
    for _ in 0..repeat {
        match client.handle(fixtures::now(), &answer) {
            Ok(ClientOutcome::Established(session)) => {
                if let Some(base) = base {
                    assert_eq!(&answer, base, "a mutated HandshakeAck was accepted");
                }
                match parse_frame(&answer, u32::MAX) {
                    Ok((h, _)) => {
                        assert_eq!(h.message_type, MessageType::HandshakeAck);
                        assert_eq!(h.session_id, session.session_id());
                    }
                    Err(e) => panic!("accepted an ack that does not parse: {e:?}"),
                }
                assert_eq!(session.side(), xtmp_proto::Side::Client);
            }
            Ok(ClientOutcome::Retry(again)) => {
                retries += 1;
                assert!(
                    retries <= MAX_RETRIES,
                    "followed more than MAX_RETRIES Retry"
                );
                check_retry(&msg1, &answer, &again);
            }
            Err(XTMPError::Handshake(HandshakeFailure::TooManyRetries)) => {
                assert_eq!(retries, MAX_RETRIES, "TooManyRetries too early");
            }
            Err(e) => {
                let genuine = fx.ack(pattern);
                assert_ne!(&answer[..], genuine, "the genuine ack was refused: {e:?}");
            }
        }
    }
    genuine_ack_still_accepted(&mut client, pattern);
}

/// A followed `Retry` is message 1 with the received cookie appended.
fn check_retry(msg1: &[u8], retry: &[u8], again: &[u8]) {
    let cookie = match parse_frame(retry, u32::MAX) {
        Ok((h, cookie)) => {
            assert_eq!(h.message_type, MessageType::Retry);
            cookie
        }
        Err(e) => panic!("followed a Retry that does not parse: {e:?}"),
    };
    match parse_frame(again, u32::MAX) {
        Ok((h, payload)) => {
            assert_eq!(h.message_type, MessageType::Handshake);
            assert_eq!(payload.len(), msg1.len() - HEADER_LEN + cookie.len());
            assert_eq!(payload[..msg1.len() - HEADER_LEN], msg1[HEADER_LEN..]);
            assert_eq!(&payload[msg1.len() - HEADER_LEN..], cookie);
        }
        Err(e) => panic!("message 1 with cookie does not parse: {e:?}"),
    }
}

fn genuine_ack_still_accepted(client: &mut ClientHandshake, pattern: Pattern) {
    let fx = fixtures::handshake();
    match client.handle(fixtures::now(), fx.ack(pattern)) {
        Ok(ClientOutcome::Established(s)) => {
            assert_eq!(
                (s.session_id(), *s.handshake_hash()),
                fx.established(pattern),
                "the genuine ack established a different session"
            );
        }
        other => panic!("the genuine ack was refused after a failed answer: {other:?}"),
    }
}
