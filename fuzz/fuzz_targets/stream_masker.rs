//! The streaming masker against the whole-body masker: for a body with secrets planted where the
//! input chooses, cut into chunks the input chooses, `StreamMasker` must not panic, must let no
//! planted secret through, and must return exactly what `mask_all` returns for the whole body
//! (output bytes and findings).
#![no_main]

use ghgate_mask::{Masker, Rules};
use ghgate_fuzz::{KEY, Plants, assert_same_output, chunk_sizes, chunks, key, self_check};
use libfuzzer_sys::{arbitrary::Unstructured, fuzz_target};

thread_local! {
    static MASKER: Masker = {
        let masker = Masker::new(Rules::builtin(), KEY);
        self_check(&masker);
        masker
    };
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let plants = Plants::arbitrary(&mut u);
    let sizes = chunk_sizes(&mut u);
    let filler = u.take_rest();
    let body = plants.plant(filler, None);

    MASKER.with(|masker| {
        let (whole, whole_findings) = masker.mask_all(&body);
        plants.assert_masked(&whole, filler, "mask_all output");

        let mut stream = masker.stream();
        let (mut out, mut findings) = (Vec::new(), Vec::new());
        for chunk in chunks(&body, &sizes) {
            findings.extend(stream.push(chunk, &mut out));
        }
        findings.extend(stream.finish(&mut out));

        plants.assert_masked(&out, filler, "streamed output");
        assert_same_output(&out, &whole, "StreamMasker vs mask_all");
        let (got, want): (Vec<_>, Vec<_>) = (
            findings.iter().map(key).collect(),
            whole_findings.iter().map(key).collect(),
        );
        assert_eq!(got, want, "StreamMasker and mask_all report different findings");
    });
});
