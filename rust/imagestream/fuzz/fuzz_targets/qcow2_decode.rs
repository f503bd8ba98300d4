//! Coverage-guided fuzzing of the streaming qcow2 decoder: any input must end in `Ok` or an
//! error, never a panic, and the decoder must never write outside the virtual size (the
//! in-memory output checks every write). The same input also goes through format detection
//! and the gzip/xz trailer readers, which parse bytes fetched from the end of a source.
#![no_main]

use imagestream::error::Result;
use imagestream::stream::RangeFetch;
use libfuzzer_sys::fuzz_target;

/// Range requests answered from the input, refusing ranges past its end as a server would.
struct Tail<'a>(&'a [u8]);

impl RangeFetch for Tail<'_> {
    fn fetch(&mut self, offset: u64, len: u64) -> Result<Option<Vec<u8>>> {
        let end = offset.saturating_add(len);
        assert!(end <= self.0.len() as u64, "fetch past the end: {offset}+{len}");
        Ok(Some(self.0[offset as usize..end as usize].to_vec()))
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    // The first two bytes steer how the stream is cut and whether ranges are available.
    let chunk = 1 + usize::from(data[0]) * 61;
    let with_ranges = data[1] & 1 == 1;
    let max_buffer = if data[1] & 2 == 2 { 1 << 10 } else { 1 << 16 };
    let image = &data[2..];
    let _ = imagestream::qcow2::decode_in_memory(image, chunk, max_buffer, with_ranges, 8 << 20);
    let _ = imagestream::pipeline::detect(image);
    let len = image.len() as u64;
    let _ = imagestream::container_size::from_tail(true, len, &mut Tail(image));
    let _ = imagestream::container_size::from_tail(false, len, &mut Tail(image));
});
