//! git's delta format: the base's size and the result's size (little-endian 7-bit varints), then
//! instructions: copy a range of the base (bit 7 set, then up to four offset and three size
//! bytes as the low bits say; size 0 means 0x10000), or insert the next 1–127 bytes literally.
//! Every bound is checked; nothing panics.

/// Why a delta cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("its delta ends inside the {0} size")]
    EndedInSize(&'static str),
    #[error("its delta's {0} size does not fit in 64 bits")]
    SizeOverflow(&'static str),
    #[error("its delta expects a base of {expected} bytes, but the base has {actual}")]
    BaseSize { expected: u64, actual: usize },
    #[error("its delta rebuilds {size} bytes, more than the limit max_object_bytes ({max})")]
    TooLarge { size: u64, max: usize },
    #[error("its delta ends inside a copy instruction")]
    EndedInCopy,
    #[error("its delta copies bytes {start}..{end} of a {len}-byte base")]
    CopyOutside { start: usize, end: usize, len: usize },
    #[error("its delta ends inside an insert instruction")]
    EndedInInsert,
    #[error("its delta holds the reserved instruction 0")]
    Reserved,
    #[error("its delta writes more than the {0} bytes it declares")]
    Overlong(usize),
    #[error("its delta writes {got} bytes, but declares {declared}")]
    Short { got: usize, declared: usize },
}

/// The sizes a delta starts with: of its base and of its result; and where its instructions
/// start.
pub fn sizes(delta: &[u8]) -> Result<(u64, u64, usize), DeltaError> {
    let mut at = 0;
    let mut varint = |what: &'static str| -> Result<u64, DeltaError> {
        let (mut n, mut shift) = (0u64, 0u32);
        loop {
            let b = *delta.get(at).ok_or(DeltaError::EndedInSize(what))?;
            at += 1;
            let part = u64::from(b & 0x7f);
            if shift > 63 || (part << shift) >> shift != part {
                return Err(DeltaError::SizeOverflow(what));
            }
            n |= part << shift;
            shift += 7;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
    };
    let base = varint("base")?;
    let result = varint("result")?;
    Ok((base, result, at))
}

/// Rebuilds an object from its base and a delta, refusing results over `max` bytes.
pub fn apply(base: &[u8], delta: &[u8], max: usize) -> Result<Vec<u8>, DeltaError> {
    let (base_size, result_size, mut at) = sizes(delta)?;
    if base_size != base.len() as u64 {
        return Err(DeltaError::BaseSize {
            expected: base_size,
            actual: base.len(),
        });
    }
    let result_size =
        usize::try_from(result_size)
            .ok()
            .filter(|&s| s <= max)
            .ok_or(DeltaError::TooLarge {
                size: result_size,
                max,
            })?;
    let mut out = Vec::with_capacity(result_size);
    while let Some(&op) = delta.get(at) {
        at += 1;
        let piece = if op & 0x80 != 0 {
            let mut field = |bits: std::ops::Range<u32>| -> Result<usize, DeltaError> {
                let mut n = 0usize;
                for bit in bits.clone() {
                    if op & (1 << bit) != 0 {
                        let b = *delta.get(at).ok_or(DeltaError::EndedInCopy)?;
                        at += 1;
                        n |= usize::from(b) << (8 * (bit - bits.start));
                    }
                }
                Ok(n)
            };
            let offset = field(0..4)?;
            let size = match field(4..7)? {
                0 => 0x10000,
                n => n,
            };
            offset
                .checked_add(size)
                .and_then(|end| base.get(offset..end))
                .ok_or(DeltaError::CopyOutside {
                    start: offset,
                    end: offset.saturating_add(size),
                    len: base.len(),
                })?
        } else if op != 0 {
            let n = usize::from(op);
            let piece = delta.get(at..at + n).ok_or(DeltaError::EndedInInsert)?;
            at += n;
            piece
        } else {
            return Err(DeltaError::Reserved);
        };
        if out.len() + piece.len() > result_size {
            return Err(DeltaError::Overlong(result_size));
        }
        out.extend_from_slice(piece);
    }
    if out.len() != result_size {
        return Err(DeltaError::Short {
            got: out.len(),
            declared: result_size,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_are_applied_within_bounds() {
        let base = b"0123456789abcdef";
        // base 16, result 9: copy 4 bytes from offset 2, insert "xyz", copy 2 from offset 14.
        let delta = [16, 9, 0x91, 2, 4, 3, b'x', b'y', b'z', 0x91, 14, 2];
        assert_eq!(apply(base, &delta, 100).unwrap(), b"2345xyzef");
        assert_eq!(sizes(&delta), Ok((16, 9, 2)));
        let err = |delta: &[u8]| apply(base, delta, 100).unwrap_err().to_string();
        assert!(err(&[15, 1, 1, b'a']).contains("expects a base of 15 bytes"));
        assert!(err(&[16, 0xc8, 0x01]).contains("more than the limit max_object_bytes (100)"));
        assert!(err(&[16, 4, 0x91, 14, 4]).contains("copies bytes 14..18 of a 16-byte base"));
        // Size 0 in a copy means 0x10000.
        assert!(err(&[16, 4, 0x81, 0]).contains("copies bytes 0..65536"));
        assert!(err(&[16, 2, 3, b'a', b'b', b'c']).contains("writes more than the 2 bytes"));
        assert!(err(&[16, 3, 0]).contains("reserved instruction 0"));
        assert!(err(&[16, 3, 1, b'a']).contains("writes 1 bytes, but declares 3"));
        assert!(err(&[16, 3, 5, b'a']).contains("ends inside an insert"));
        assert!(err(&[16, 3, 0x83, 1]).contains("ends inside a copy"));
        assert!(err(&[0x80]).contains("ends inside the base size"));
        assert!(err(&[0xff; 12]).contains("base size does not fit in 64 bits"));
    }
}
