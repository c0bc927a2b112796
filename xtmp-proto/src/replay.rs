//! Anti-replay: the sliding-window bitmap of RFC 6479, for datagram transports.
//!
//! [`ReplayWindow::check`] is cheap and does not change state, so it runs before the AEAD;
//! [`ReplayWindow::mark`] runs only after the AEAD accepted the message (so forged
//! packets cannot move the window).

use crate::error::XTMPError;

const WORDS: usize = 32;
const BITS: u64 = (WORDS as u64) * 64;
/// Width of the window: a sequence number this far or further behind the highest one
/// accepted is rejected as too old. (RFC 6479 keeps one spare word so advancing the window
/// never has to clear the word that holds the current bit.)
pub const WINDOW: u64 = BITS - 64;

/// Per-direction sliding replay window (1984 sequence numbers wide).
#[derive(Clone)]
pub struct ReplayWindow {
    /// Highest accepted sequence number plus one; 0 while nothing was accepted.
    top: u64,
    bitmap: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("top", &self.top)
            .finish_non_exhaustive()
    }
}

impl ReplayWindow {
    /// An empty window.
    pub fn new() -> Self {
        Self {
            top: 0,
            bitmap: [0; WORDS],
        }
    }

    /// Highest accepted sequence number, if any.
    pub fn highest(&self) -> Option<u64> {
        self.top.checked_sub(1)
    }

    fn bit(seq: u64) -> (usize, u64) {
        (((seq / 64) % WORDS as u64) as usize, 1u64 << (seq % 64))
    }

    /// Would `seq` be accepted? Does not change the window.
    ///
    /// # Errors
    /// [`XTMPError::Replay`] for a number already marked, [`XTMPError::TooOld`] for one
    /// behind the window.
    pub fn check(&self, seq: u64) -> Result<(), XTMPError> {
        if seq >= self.top {
            return Ok(());
        }
        // seq < top, so top >= 1 and the subtraction cannot underflow.
        let highest = self.top - 1;
        if highest - seq >= WINDOW {
            return Err(XTMPError::TooOld(seq));
        }
        let (w, b) = Self::bit(seq);
        if self.bitmap[w] & b != 0 {
            Err(XTMPError::Replay(seq))
        } else {
            Ok(())
        }
    }

    /// Records `seq` as received. Call only after [`ReplayWindow::check`] passed and the
    /// message authenticated.
    pub fn mark(&mut self, seq: u64) {
        if seq >= self.top {
            // Advance: clear the words between the old top block and the new one.
            let cur_block = if self.top == 0 {
                None
            } else {
                Some((self.top - 1) / 64)
            };
            let new_block = seq / 64;
            match cur_block {
                None => self.bitmap = [0; WORDS],
                Some(cur) => {
                    let diff = (new_block - cur).min(WORDS as u64);
                    for i in 1..=diff {
                        let idx = ((cur + i) % WORDS as u64) as usize;
                        self.bitmap[idx] = 0;
                    }
                }
            }
            self.top = seq.saturating_add(1);
        }
        let (w, b) = Self::bit(seq);
        self.bitmap[w] |= b;
    }

    /// `check` then `mark`, for callers that verified authenticity already.
    ///
    /// # Errors
    /// As [`ReplayWindow::check`].
    pub fn check_and_mark(&mut self, seq: u64) -> Result<(), XTMPError> {
        self.check(seq)?;
        self.mark(seq);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_is_at_least_1024() {
        const { assert!(WINDOW >= 1024) };
    }

    #[test]
    fn fresh_sequence_accepted_then_replay_rejected() {
        let mut w = ReplayWindow::new();
        for s in [0u64, 1, 2, 5, 4, 3] {
            w.check_and_mark(s).unwrap();
        }
        for s in [0u64, 1, 2, 3, 4, 5] {
            assert_eq!(w.check(s), Err(XTMPError::Replay(s)));
        }
        assert_eq!(w.highest(), Some(5));
    }

    #[test]
    fn check_does_not_mark() {
        let mut w = ReplayWindow::new();
        w.check(7).unwrap();
        w.check(7).unwrap();
        w.mark(7);
        assert_eq!(w.check(7), Err(XTMPError::Replay(7)));
    }

    #[test]
    fn edges_of_the_window() {
        let mut w = ReplayWindow::new();
        let top = 10_000u64;
        w.mark(top);
        // Exactly WINDOW-1 behind: still inside.
        w.check_and_mark(top - (WINDOW - 1)).unwrap();
        // WINDOW behind: too old.
        assert_eq!(w.check(top - WINDOW), Err(XTMPError::TooOld(top - WINDOW)));
        assert_eq!(w.check(0), Err(XTMPError::TooOld(0)));
        // Large jump clears everything but keeps correctness.
        w.mark(top + 5 * BITS);
        assert_eq!(w.check(top), Err(XTMPError::TooOld(top)));
        w.check_and_mark(top + 5 * BITS - 1).unwrap();
        assert!(w.check(top + 5 * BITS - 1).is_err());
    }

    #[test]
    fn advancing_clears_stale_bits() {
        let mut w = ReplayWindow::new();
        // Mark 0..64, then jump exactly one ring size: bits for the old block must not
        // make new numbers look replayed.
        for s in 0..64 {
            w.mark(s);
        }
        w.mark(BITS + 63);
        for s in BITS..BITS + 63 {
            w.check(s).unwrap();
        }
    }

    #[test]
    fn max_sequence_does_not_overflow() {
        let mut w = ReplayWindow::new();
        w.mark(u64::MAX - 1);
        assert_eq!(w.check(u64::MAX - 1), Err(XTMPError::Replay(u64::MAX - 1)));
        w.check(u64::MAX - 2).unwrap();
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Against a model: a number is accepted iff never accepted before and within
            /// WINDOW of the highest accepted number.
            #[test]
            fn matches_model(seqs in proptest::collection::vec(0u64..6000, 1..400)) {
                let mut w = ReplayWindow::new();
                let mut seen = std::collections::BTreeSet::new();
                for s in seqs {
                    let highest = seen.iter().next_back().copied();
                    let expect_ok = !seen.contains(&s)
                        && highest.is_none_or(|h: u64| s > h || h - s < WINDOW);
                    let got = w.check_and_mark(s);
                    prop_assert_eq!(got.is_ok(), expect_ok, "seq {}", s);
                    if expect_ok { seen.insert(s); }
                }
            }
        }
    }
}
