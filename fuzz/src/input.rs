//! Reading structure out of fuzz input, and the XOR mutation used by the "mutate a
//! genuine message" modes.

/// A cursor over the fuzz input that never fails: past the end it yields nothing.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// A cursor at the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// Whether everything was consumed.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next byte.
    pub fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }

    /// The next big-endian `u16`, or as much of it as is left (zero-padded).
    pub fn u16(&mut self) -> Option<u16> {
        let hi = self.byte()?;
        let lo = self.byte().unwrap_or(0);
        Some(u16::from_be_bytes([hi, lo]))
    }

    /// Up to `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// Everything left.
    pub fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// `base` with `mask` XORed in from `offset` on (both wrapping around the end of `base`).
///
/// An empty or all-zero mask leaves `base` unchanged; callers compare the result with
/// `base` rather than inspecting the mask, since a long mask can cancel itself out.
pub fn xor_at(base: &[u8], offset: usize, mask: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    if out.is_empty() {
        return out;
    }
    for (i, m) in mask.iter().enumerate() {
        let j = (offset + i) % out.len();
        out[j] ^= m;
    }
    out
}

/// A mutation of `base` described by the input: a big-endian `u16` offset, then the
/// XOR mask (the rest of the input).
pub fn mutate(base: &[u8], input: Input<'_>) -> Vec<u8> {
    let mut input = input;
    let offset = usize::from(input.u16().unwrap_or(0));
    xor_at(base, offset, input.rest())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xor_wraps_and_cancels() {
        assert_eq!(xor_at(&[1, 2, 3], 2, &[0xff, 0xff]), vec![0xfe, 2, 0xfc]);
        assert_eq!(xor_at(&[1, 2, 3], 0, &[7, 0, 0, 7]), vec![1, 2, 3]);
        assert_eq!(xor_at(&[], 5, &[1]), Vec::<u8>::new());
        assert_eq!(mutate(&[1, 2, 3], Input::new(&[0, 1, 1])), vec![1, 3, 3]);
        assert_eq!(mutate(&[1, 2, 3], Input::new(&[])), vec![1, 2, 3]);
    }

    #[test]
    fn cursor_never_fails() {
        let mut i = Input::new(&[1, 2, 3]);
        assert_eq!(i.u16(), Some(0x0102));
        assert_eq!(i.u16(), Some(0x0300));
        assert_eq!(i.byte(), None);
        assert!(i.is_empty());
        assert!(i.take(10).is_empty());
    }
}
