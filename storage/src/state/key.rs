//! Key encoding for the state store: big-endian integers (so byte order is numeric order),
//! signed integers with the sign bit flipped (so negative sorts before positive), and
//! variable-length byte strings with a length prefix (so no key is a prefix of another
//! key's field).

/// Builds one key field by field.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyBuf(Vec<u8>);

impl KeyBuf {
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder with room for a key of `bytes` bytes.
    pub fn with_capacity(bytes: usize) -> Self {
        Self(Vec::with_capacity(bytes))
    }

    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn i64(mut self, v: i64) -> Self {
        self.0.extend_from_slice(&encode_i64(v));
        self
    }

    /// A byte string of at most `u16::MAX` bytes, length first.
    pub fn bytes(mut self, v: &[u8]) -> Self {
        let len = u16::try_from(v.len()).expect("key fields are limited to 64 KiB");
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(v);
        self
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }
}

pub fn encode_i64(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

pub fn decode_i64(b: [u8; 8]) -> i64 {
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

/// Reads a key field by field, in the order it was built.
#[derive(Clone, Debug)]
pub struct KeyReader<'a>(&'a [u8]);

impl<'a> KeyReader<'a> {
    pub fn new(key: &'a [u8]) -> Self {
        Self(key)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    pub fn i64(&mut self) -> Option<i64> {
        Some(decode_i64(self.take(8)?.try_into().ok()?))
    }

    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = u16::from_be_bytes(self.take(2)?.try_into().ok()?) as usize;
        self.take(len)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The smallest key greater than every key starting with `prefix` (`None`: no bound).
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut upper = prefix.to_vec();
    while let Some(last) = upper.pop() {
        if last < u8::MAX {
            upper.push(last + 1);
            return Some(upper);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Encoded keys sort exactly as their fields do, field by field.
        #[test]
        fn order_is_preserved(a: (u32, i64, Vec<u8>, u64), b: (u32, i64, Vec<u8>, u64)) {
            let enc = |k: &(u32, i64, Vec<u8>, u64)| KeyBuf::new().u32(k.0).i64(k.1).bytes(&k.2).u64(k.3).into_vec();
            let (ka, kb) = (enc(&a), enc(&b));
            // Byte strings compare by (length, bytes) under a length prefix.
            let field_order = (a.0, a.1, a.2.len(), &a.2, a.3).cmp(&(b.0, b.1, b.2.len(), &b.2, b.3));
            prop_assert_eq!(ka.cmp(&kb), field_order);
            let mut r = KeyReader::new(&ka);
            prop_assert_eq!((r.u32(), r.i64(), r.bytes().map(<[u8]>::to_vec), r.u64()), (Some(a.0), Some(a.1), Some(a.2.clone()), Some(a.3)));
            prop_assert!(r.is_empty());
        }
    }

    #[test]
    fn successor() {
        assert_eq!(prefix_successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_successor(&[1, 255]), Some(vec![2]));
        assert_eq!(prefix_successor(&[255, 255]), None);
    }
}
