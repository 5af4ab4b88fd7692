//! Helpers of this crate's unit tests: pkt-lines written by hand, and reading an input split
//! every way.

/// `data` as one pkt-line (test-side framing, independent of the crate's writer).
pub(crate) fn pkt(data: impl AsRef<[u8]>) -> Vec<u8> {
    let data = data.as_ref();
    let mut out = format!("{:04x}", data.len() + 4).into_bytes();
    out.extend_from_slice(data);
    out
}

/// Each of `lines` as a pkt-line, but "0000", "0001" and "0002" as they are.
pub(crate) fn pkts<S: AsRef<[u8]>>(lines: &[S]) -> Vec<u8> {
    lines
        .iter()
        .flat_map(|l| match l.as_ref() {
            b"0000" | b"0001" | b"0002" => l.as_ref().to_vec(),
            data => pkt(data),
        })
        .collect()
}

pub(crate) fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

/// Runs `read` on `input` whole, in 1-byte pieces, cut once at every offset (small inputs) and
/// at random offsets (`read` gets the cut points), asserting every way gives the same result.
pub(crate) fn split_all_ways<T: PartialEq + std::fmt::Debug>(input: &[u8], mut read: impl FnMut(&[usize]) -> T) -> T {
    let whole = read(&[]);
    let ones: Vec<usize> = (1..input.len()).collect();
    assert_eq!(read(&ones), whole, "1-byte pieces");
    if input.len() <= 2048 {
        for cut in 0..=input.len() {
            assert_eq!(read(&[cut]), whole, "cut at {cut}");
        }
    }
    let mut next = xorshift(0x9E37_79B9_7F4A_7C15);
    for _ in 0..30 {
        let mut cuts = Vec::new();
        let mut at = 0;
        loop {
            at += 1 + (next() % 700) as usize;
            if at >= input.len() {
                break;
            }
            cuts.push(at);
        }
        assert_eq!(read(&cuts), whole, "cuts {cuts:?}");
    }
    whole
}
