//! The IDX file format of (Fashion-)MNIST: a big-endian header `0x00 0x00 type ndim`, one u32 per
//! dimension, then the values. Only unsigned bytes (`type` 0x08) are used by the dataset.

use std::fmt;

/// IDX element type code for unsigned bytes.
const UNSIGNED_BYTE: u8 = 0x08;

/// A parsed IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// Dimensions, outermost first (`[count, rows, cols]` for images, `[count]` for labels).
    pub dims: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<u8>,
}

/// Why a byte buffer is not a valid IDX array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdxError {
    /// Fewer bytes than the header needs.
    TooShort { len: usize },
    /// The first two bytes are not zero: not an IDX file.
    BadMagic { magic: u32 },
    /// The element type is not unsigned byte.
    UnsupportedType { code: u8 },
    /// The body holds fewer values than the header announces.
    Truncated { expected: usize, actual: usize },
    /// The body holds more bytes than the header announces.
    TrailingBytes { expected: usize, actual: usize },
    /// The dimensions multiply to more values than memory can address.
    TooLarge { dims: Vec<usize> },
}

impl fmt::Display for IdxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdxError::TooShort { len } => {
                write!(f, "only {len} bytes, too short for an IDX header")
            }
            IdxError::BadMagic { magic } => {
                write!(f, "wrong IDX magic number 0x{magic:08x} (not an IDX file)")
            }
            IdxError::UnsupportedType { code } => {
                write!(
                    f,
                    "IDX element type 0x{code:02x} is not unsigned byte (0x08)"
                )
            }
            IdxError::Truncated { expected, actual } => write!(
                f,
                "truncated: the header announces {expected} values but only {actual} are present"
            ),
            IdxError::TrailingBytes { expected, actual } => write!(
                f,
                "{actual} value bytes where the header announces {expected}: extra bytes at the end"
            ),
            IdxError::TooLarge { dims } => {
                write!(
                    f,
                    "impossible dimensions {dims:?}: more values than memory can hold"
                )
            }
        }
    }
}

impl std::error::Error for IdxError {}

impl IdxArray {
    /// Parses an IDX array from decompressed bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, IdxError> {
        if bytes.len() < 4 {
            return Err(IdxError::TooShort { len: bytes.len() });
        }
        let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if bytes[0] != 0 || bytes[1] != 0 || bytes[3] == 0 || bytes[3] > 4 {
            return Err(IdxError::BadMagic { magic });
        }
        if bytes[2] != UNSIGNED_BYTE {
            return Err(IdxError::UnsupportedType { code: bytes[2] });
        }
        let ndim = bytes[3] as usize;
        let header = 4 + 4 * ndim;
        if bytes.len() < header {
            return Err(IdxError::TooShort { len: bytes.len() });
        }
        let dims: Vec<usize> = (0..ndim)
            .map(|i| {
                let at = 4 + 4 * i;
                u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
                    as usize
            })
            .collect();
        let expected = dims
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| IdxError::TooLarge { dims: dims.clone() })?;
        let actual = bytes.len() - header;
        if actual < expected {
            return Err(IdxError::Truncated { expected, actual });
        }
        if actual > expected {
            return Err(IdxError::TrailingBytes { expected, actual });
        }
        Ok(IdxArray {
            dims,
            data: bytes[header..].to_vec(),
        })
    }

    /// Serialises the array as IDX bytes (used to write test fixtures and exports).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 4 * self.dims.len() + self.data.len());
        out.extend_from_slice(&[0, 0, UNSIGNED_BYTE, self.dims.len() as u8]);
        for &d in &self.dims {
            out.extend_from_slice(&(d as u32).to_be_bytes());
        }
        out.extend_from_slice(&self.data);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(n: usize) -> IdxArray {
        IdxArray {
            dims: vec![n, 28, 28],
            data: (0..n * 784).map(|i| (i % 251) as u8).collect(),
        }
    }

    #[test]
    fn round_trip() -> Result<(), IdxError> {
        let a = images(3);
        assert_eq!(IdxArray::parse(&a.to_bytes())?, a);
        let labels = IdxArray {
            dims: vec![5],
            data: vec![0, 9, 3, 1, 2],
        };
        assert_eq!(IdxArray::parse(&labels.to_bytes())?, labels);
        Ok(())
    }

    #[test]
    fn corruptions_are_named() {
        let good = images(2).to_bytes();
        assert_eq!(
            IdxArray::parse(&good[..3]),
            Err(IdxError::TooShort { len: 3 })
        );
        let mut bad = good.clone();
        bad[0] = 0x1f;
        assert!(matches!(
            IdxArray::parse(&bad),
            Err(IdxError::BadMagic { .. })
        ));
        let mut bad = good.clone();
        bad[2] = 0x0d;
        assert_eq!(
            IdxArray::parse(&bad),
            Err(IdxError::UnsupportedType { code: 0x0d })
        );
        assert_eq!(
            IdxArray::parse(&good[..good.len() - 10]),
            Err(IdxError::Truncated {
                expected: 1568,
                actual: 1558
            })
        );
        // Found by the fuzzer: dimensions whose product overflows.
        let huge = [
            0, 0, 8, 3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ];
        assert!(matches!(
            IdxArray::parse(&huge),
            Err(IdxError::TooLarge { .. })
        ));
        let mut long = good.clone();
        long.push(7);
        assert!(matches!(
            IdxArray::parse(&long),
            Err(IdxError::TrailingBytes { .. })
        ));
    }
}
