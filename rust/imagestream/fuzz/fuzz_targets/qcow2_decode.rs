//! Coverage-guided fuzzing of the streaming qcow2 decoder: any input must end in `Ok` or an
//! error, never a panic, and the decoder must never write outside the virtual size (the
//! in-memory output checks every write).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    // The first two bytes steer how the stream is cut and whether ranges are available.
    let chunk = 1 + usize::from(data[0]) * 61;
    let with_ranges = data[1] & 1 == 1;
    let max_buffer = if data[1] & 2 == 2 { 1 << 10 } else { 1 << 16 };
    let image = &data[2..];
    let _ = _imagestream::qcow2::decode_in_memory(image, chunk, max_buffer, with_ranges, 8 << 20);
    let _ = _imagestream::pipeline::detect(image);
});
