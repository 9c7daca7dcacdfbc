//! Block decoders for the latin-1 payload of an upload (x86-64): many tokens per step
//! instead of one ([`super::fast_latin1`] picks one at run time).
//!
//! A block decoder takes `data[0..end]` (with `end + 7 == data.len()`), decodes tokens
//! (printable ASCII, two-byte UTF-8 of latin-1 characters, `\u00XX`, two-character
//! escapes) into `out` and stops before anything else (the closing quote, a control
//! character, a bad escape, a byte that is not two-byte UTF-8 of a latin-1 character), or
//! near the end; it returns the bytes consumed. All of them must give exactly what the
//! token loop ([`super::run`]) gives on the same input: the byte loop takes over where
//! they stop and judges what stopped them.
//!
//! Each block's bytes are classified at once, every position also seeing the five bytes
//! after it (five more loads): backslashes that start escapes ([`escape_starts`]),
//! `\u00XX` and two-character escapes with their values, C2/C3 leads with their
//! continuation bytes. The bytes a token covers after its first are dropped; every token
//! start yields one byte, and the kept bytes are packed to the front. A stop ends the
//! block there. Blocks follow each other at fixed strides, so that the next block's loads
//! and classification do not wait for this one's bit work: a token reaching past the
//! block (by up to five bytes) is carried over as the bytes it covers at the start of the
//! next.

use std::arch::x86_64::*;

use super::run;

/// A block decoder (see the module's documentation). Unsafe: the processor must have the
/// features it is compiled for, which [`best`] and [`available`] check.
pub(super) type BlockDecoder = unsafe fn(&[u8], usize, &mut Vec<u8>) -> usize;

/// The fastest block decoder this processor can run, and whether it also pays when
/// escapes are dense (Python's `ensure_ascii` output, mostly `\u00XX`): the 16-byte one
/// does not beat the token loop there.
pub(super) fn best() -> Option<(BlockDecoder, bool)> {
    available().into_iter().next().map(|(name, decode)| (decode, name == "avx512"))
}

/// Every block decoder this processor can run, fastest first (tests check them all).
pub(super) fn available() -> Vec<(&'static str, BlockDecoder)> {
    let mut found: Vec<(&'static str, BlockDecoder)> = Vec::new();
    if is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vbmi2") && is_x86_feature_detected!("popcnt") {
        found.push(("avx512", blocks_of_64));
    }
    if is_x86_feature_detected!("ssse3") && is_x86_feature_detected!("popcnt") {
        found.push(("ssse3", blocks_of_16));
    }
    found
}

/// Which backslashes of a block (bit mask, the block starting at a token boundary)
/// start an escape: in a run of backslashes the first, third, ... (the others are the
/// escaped characters of `\\`). Adding a run's first bit carries through the run, which
/// finds the runs that start at even positions without a loop.
#[inline(always)]
pub(super) fn escape_starts(bs: u64) -> u64 {
    const EVEN: u64 = 0x5555_5555_5555_5555;
    let run_starts = bs & !(bs << 1);
    let even_runs = bs & !bs.wrapping_add(run_starts & EVEN);
    (even_runs & EVEN) | (bs & !even_runs & !EVEN)
}

/// For each 8-bit mask: the positions of its set bits in order (then zeros), i.e. the
/// shuffle that packs the kept bytes of eight to the front.
static PACK: [[u8; 8]; 256] = {
    let mut t = [[0u8; 8]; 256];
    let mut m = 0;
    while m < 256 {
        let (mut bit, mut n) = (0, 0);
        while bit < 8 {
            if m & (1 << bit) != 0 {
                t[m][n] = bit as u8;
                n += 1;
            }
            bit += 1;
        }
        m += 1;
    }
    t
};

/// What the bit work of a block decides, from its masks (bit i = byte i of the block; the
/// `next_cont` of the last byte looks at the first byte of the next block).
struct Masks {
    backslash: u64,
    unicode: u64,
    short: u64,
    lead: u64,
    cont: u64,
    next_cont: u64,
    high: u64,
    control: u64,
    quote: u64,
}

/// For a block of `width` bytes after `carry`: the bytes covered by tokens (up to five
/// bits past the block), the token starts kept (up to the first stop) and where it
/// stopped, if it did.
#[inline(always)]
fn decide(m: &Masks, carry: u64, width: u32) -> (u128, u64, Option<u32>) {
    let starts = escape_starts(m.backslash & !carry);
    let unicode = starts & m.unicode;
    let short = starts & m.short;
    let covered = carry as u128 | ((unicode as u128) * 0b11_1110) | (short as u128) << 1 | (m.lead as u128) << 1;
    let inside = covered as u64;
    // a byte ≥ 0x80 is a lead followed by a continuation, or a continuation after a lead
    let bad_utf8 = (m.high & !(m.lead | m.cont)) | (m.cont & !(m.lead << 1 | carry)) | (m.lead & !m.next_cont);
    let block = if width == 64 { u64::MAX } else { (1u64 << width) - 1 };
    let stop = ((m.quote & !inside) | m.control | (starts & !(unicode | short)) | bad_utf8) & block;
    let (upto, stopped) = if stop == 0 { (block, None) } else { ((1u64 << stop.trailing_zeros()) - 1, Some(stop.trailing_zeros())) };
    (covered, !inside & upto, stopped)
}

/// What one block's step did: the bytes covered by tokens (up to five bits past the block),
/// where it stopped (if it did) and how many bytes it wrote.
type Step = (u128, Option<u32>, usize);

/// The loop every block decoder runs: blocks of `WIDTH` bytes at fixed strides, each
/// decoded by `step(block start, carry, output position)` (which may read five bytes past
/// the block and write `WIDTH` bytes), the tail of a token carried into the next block,
/// and the last tokens left to the token loop.
#[inline(always)]
unsafe fn blocks<const WIDTH: usize>(
    data: &[u8],
    end: usize,
    out: &mut Vec<u8>,
    mut step: impl FnMut(*const u8, u64, *mut u8) -> Step,
) -> usize {
    out.reserve(end + WIDTH);
    let base = out.as_mut_ptr();
    let mut o = out.len();
    let (mut i, mut carry) = (0, 0u64);
    while i < end && i + WIDTH + 5 <= data.len() {
        let (covered, stopped, written) = step(data.as_ptr().add(i), carry, base.add(o));
        o += written;
        if let Some(at) = stopped {
            out.set_len(o);
            return i + at as usize;
        }
        carry = (covered >> WIDTH) as u64;
        i += WIDTH;
    }
    out.set_len(o);
    // the last tokens, one at a time
    run(data, i + carry.count_ones() as usize, end, out)
}

/// Hex digit values of each byte (0 where it is not one) and where they are digits.
#[inline(always)]
unsafe fn hex_digits_16(v: __m128i) -> (__m128i, __m128i) {
    let d = _mm_sub_epi8(v, _mm_set1_epi8(b'0' as i8));
    let is_d = _mm_cmpeq_epi8(_mm_subs_epu8(d, _mm_set1_epi8(9)), _mm_setzero_si128());
    let a = _mm_sub_epi8(_mm_or_si128(v, _mm_set1_epi8(0x20)), _mm_set1_epi8(b'a' as i8));
    let is_a = _mm_cmpeq_epi8(_mm_subs_epu8(a, _mm_set1_epi8(5)), _mm_setzero_si128());
    let value = _mm_or_si128(_mm_and_si128(is_d, d), _mm_and_si128(is_a, _mm_add_epi8(a, _mm_set1_epi8(10))));
    (value, _mm_or_si128(is_d, is_a))
}

/// Sixteen bytes a step (SSSE3: classification with compares and `pmovmskb`, packing
/// with `pshufb` and [`PACK`], eight bytes at a time).
#[target_feature(enable = "ssse3,popcnt")]
unsafe fn blocks_of_16(data: &[u8], end: usize, out: &mut Vec<u8>) -> usize {
    let splat = |b: u8| _mm_set1_epi8(b as i8);
    let mask = |v: __m128i| _mm_movemask_epi8(v) as u32 as u64;
    blocks::<16>(data, end, out, |src, carry, dst| {
        let at = |k: usize| _mm_loadu_si128(src.add(k) as *const __m128i);
        let (v0, v1, v2, v3, v4, v5) = (at(0), at(1), at(2), at(3), at(4), at(5));
        let is = |v: __m128i, b: u8| _mm_cmpeq_epi8(v, splat(b));

        // escapes, as if every position started one
        let (h4, hex4) = hex_digits_16(v4);
        let (h5, hex5) = hex_digits_16(v5);
        let unicode = _mm_and_si128(_mm_and_si128(is(v1, b'u'), _mm_and_si128(is(v2, b'0'), is(v3, b'0'))), _mm_and_si128(hex4, hex5));
        let hex_value = _mm_or_si128(_mm_slli_epi16(h4, 4), h5);
        let (b, f, n, r, t) = (is(v1, b'b'), is(v1, b'f'), is(v1, b'n'), is(v1, b'r'), is(v1, b't'));
        let same = _mm_or_si128(_mm_or_si128(is(v1, b'"'), is(v1, b'\\')), is(v1, b'/'));
        let short = _mm_or_si128(_mm_or_si128(_mm_or_si128(b, f), _mm_or_si128(n, r)), _mm_or_si128(t, same));
        let short_value = _mm_or_si128(
            _mm_or_si128(
                _mm_or_si128(_mm_and_si128(b, splat(0x08)), _mm_and_si128(f, splat(0x0C))),
                _mm_or_si128(_mm_and_si128(n, splat(b'\n')), _mm_and_si128(r, splat(b'\r'))),
            ),
            _mm_or_si128(_mm_and_si128(t, splat(b'\t')), _mm_and_si128(same, v1)),
        );
        let backslash = is(v0, b'\\');
        let lead = is(_mm_or_si128(v0, splat(1)), 0xC3);
        let continuation = |v: __m128i| is(_mm_and_si128(v, splat(0xC0)), 0x80);
        let masks = Masks {
            backslash: mask(backslash),
            unicode: mask(unicode),
            short: mask(short),
            lead: mask(lead),
            cont: mask(continuation(v0)),
            next_cont: mask(continuation(v1)),
            high: mask(v0),
            control: mask(_mm_cmpeq_epi8(_mm_and_si128(v0, splat(0xE0)), _mm_setzero_si128())),
            quote: mask(is(v0, b'"')),
        };
        let (covered, keep, stopped) = decide(&masks, carry, 16);

        let paired = _mm_or_si128(_mm_and_si128(_mm_slli_epi16(v0, 6), splat(0xC0)), _mm_and_si128(v1, splat(0x3F)));
        let escaped = _mm_or_si128(_mm_and_si128(unicode, hex_value), _mm_andnot_si128(unicode, short_value));
        let plain = _mm_or_si128(_mm_and_si128(lead, paired), _mm_andnot_si128(lead, v0));
        let value = _mm_or_si128(_mm_and_si128(backslash, escaped), _mm_andnot_si128(backslash, plain));

        let (lo, hi) = ((keep & 0xFF) as usize, ((keep >> 8) & 0xFF) as usize);
        let pack_lo = _mm_loadl_epi64(PACK[lo].as_ptr() as *const __m128i);
        let pack_hi = _mm_add_epi8(_mm_loadl_epi64(PACK[hi].as_ptr() as *const __m128i), splat(8));
        let first = lo.count_ones() as usize;
        _mm_storel_epi64(dst as *mut __m128i, _mm_shuffle_epi8(value, pack_lo));
        _mm_storel_epi64(dst.add(first) as *mut __m128i, _mm_shuffle_epi8(value, pack_hi));
        (covered, stopped, first + hi.count_ones() as usize)
    })
}

/// Sixty-four bytes a step (AVX-512 BW: compares straight into mask registers; VBMI2:
/// `vpcompressb` packs the kept bytes).
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi2,popcnt")]
unsafe fn blocks_of_64(data: &[u8], end: usize, out: &mut Vec<u8>) -> usize {
    let splat = |b: u8| _mm512_set1_epi8(b as i8);
    blocks::<64>(data, end, out, |src, carry, dst| {
        let at = |k: usize| _mm512_loadu_si512(src.add(k) as *const __m512i);
        let (v0, v1, v2, v3, v4, v5) = (at(0), at(1), at(2), at(3), at(4), at(5));
        let is = |v: __m512i, b: u8| _mm512_cmpeq_epi8_mask(v, splat(b));
        let hex = |v: __m512i| {
            let d = _mm512_sub_epi8(v, splat(b'0'));
            let a = _mm512_sub_epi8(_mm512_or_si512(v, splat(0x20)), splat(b'a'));
            let (is_d, is_a) = (_mm512_cmple_epu8_mask(d, splat(9)), _mm512_cmple_epu8_mask(a, splat(5)));
            (_mm512_maskz_mov_epi8(is_d | is_a, _mm512_mask_blend_epi8(is_a, d, _mm512_add_epi8(a, splat(10)))), is_d | is_a)
        };

        // escapes, as if every position started one
        let (h4, hex4) = hex(v4);
        let (h5, hex5) = hex(v5);
        let unicode = is(v1, b'u') & is(v2, b'0') & is(v3, b'0') & hex4 & hex5;
        let hex_value = _mm512_or_si512(_mm512_slli_epi16(h4, 4), h5);
        let (b, f, n, r, t) = (is(v1, b'b'), is(v1, b'f'), is(v1, b'n'), is(v1, b'r'), is(v1, b't'));
        let short = b | f | n | r | t | is(v1, b'"') | is(v1, b'\\') | is(v1, b'/');
        let mut short_value = v1;
        for (k, value) in [(b, 0x08), (f, 0x0C), (n, b'\n'), (r, b'\r'), (t, b'\t')] {
            short_value = _mm512_mask_mov_epi8(short_value, k, splat(value));
        }
        let backslash = is(v0, b'\\');
        let lead = _mm512_cmpeq_epi8_mask(_mm512_or_si512(v0, splat(1)), splat(0xC3));
        let continuation = |v: __m512i| _mm512_cmpeq_epi8_mask(_mm512_and_si512(v, splat(0xC0)), splat(0x80));
        let masks = Masks {
            backslash,
            unicode,
            short,
            lead,
            cont: continuation(v0),
            next_cont: continuation(v1),
            high: _mm512_movepi8_mask(v0),
            control: _mm512_cmplt_epu8_mask(v0, splat(0x20)),
            quote: is(v0, b'"'),
        };
        let (covered, keep, stopped) = decide(&masks, carry, 64);

        let paired = _mm512_or_si512(_mm512_and_si512(_mm512_slli_epi16(v0, 6), splat(0xC0)), _mm512_and_si512(v1, splat(0x3F)));
        let escaped = _mm512_mask_blend_epi8(unicode, short_value, hex_value);
        let plain = _mm512_mask_blend_epi8(lead, v0, paired);
        let value = _mm512_mask_blend_epi8(backslash, plain, escaped);
        _mm512_storeu_si512(dst as *mut __m512i, _mm512_maskz_compress_epi8(keep, value));
        (covered, stopped, keep.count_ones() as usize)
    })
}
