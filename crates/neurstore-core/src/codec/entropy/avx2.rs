//! AVX2 decoding of whole groups: eight states per vector, the table read with one gather per
//! vector, the renormalization words moved to the lanes that need them with one permutation.
//! Bit-identical to the scalar loop in the parent module (same formulas, same word order);
//! callers check the CPU first.

#[cfg(target_arch = "x86_64")]
pub(super) use imp::decode_groups;

#[cfg(target_arch = "x86_64")]
mod imp {
    use std::arch::x86_64::*;

    use super::super::{LANES, PROB_BITS, PROB_MASK, PROB_SCALE};

    /// For each mask of renormalizing lanes, lane `j`'s word index: the lanes below `j` that
    /// renormalize too.
    static PERM: [[u32; 8]; 256] = {
        let mut t = [[0u32; 8]; 256];
        let mut m = 0;
        while m < 256 {
            let mut j = 0;
            while j < 8 {
                t[m][j] = (m & ((1 << j) - 1)).count_ones();
                j += 1;
            }
            m += 1;
        }
        t
    };

    /// States per vector.
    const VEC: usize = 8;
    const VECS: usize = LANES / VEC;

    /// Decodes groups of `LANES` symbols into `body` (a multiple of `LANES` bytes) while at
    /// least `2 * LANES` stream bytes remain from `*pos`; returns the bytes decoded. `st` and
    /// `pos` are left where the scalar loop continues. The `VECS` vectors of a group are
    /// independent until their words are read, so their gathers overlap.
    ///
    /// # Safety
    /// The CPU must support AVX2 and POPCNT.
    #[target_feature(enable = "avx2,popcnt")]
    pub(in super::super) unsafe fn decode_groups(
        table: &[u32; PROB_SCALE as usize],
        st: &mut [u32; LANES],
        stream: &[u8],
        pos: &mut usize,
        body: &mut [u8],
    ) -> usize {
        let mask = _mm256_set1_epi32(PROB_MASK as i32);
        let one = _mm256_set1_epi32(1);
        let zero = _mm256_setzero_si256();
        // Byte 0 of each 32-bit lane to the low 4 bytes of its 128-bit half.
        let first_bytes = _mm256_setr_epi8(
            0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8, 12, -1, -1, -1,
            -1, -1, -1, -1, -1, -1, -1, -1, -1,
        );
        let mut x: [__m256i; VECS] = std::array::from_fn(|k| {
            // SAFETY: `st` holds VECS * VEC u32.
            unsafe { _mm256_loadu_si256(st.as_ptr().add(k * VEC).cast()) }
        });
        let mut done = 0;
        let mut p = *pos;
        while done + LANES <= body.len() && p + 2 * LANES <= stream.len() {
            let e: [__m256i; VECS] = std::array::from_fn(|k| {
                let slot = _mm256_and_si256(x[k], mask);
                // SAFETY: every index is below PROB_SCALE, the table's length.
                unsafe { _mm256_i32gather_epi32::<4>(table.as_ptr().cast(), slot) }
            });
            for k in 0..VECS {
                let f = _mm256_add_epi32(_mm256_srli_epi32::<20>(e[k]), one);
                let bias = _mm256_and_si256(_mm256_srli_epi32::<8>(e[k]), mask);
                let y = _mm256_add_epi32(
                    _mm256_mullo_epi32(f, _mm256_srli_epi32::<{ PROB_BITS as i32 }>(x[k])),
                    bias,
                );
                let need = _mm256_cmpeq_epi32(_mm256_srli_epi32::<16>(y), zero);
                let m = _mm256_movemask_ps(_mm256_castsi256_ps(need)) as usize;
                // SAFETY: p + 16 <= stream.len(): p grew by at most 2 * VEC per vector before
                // this one, and the loop started with 2 * LANES bytes left.
                let words = unsafe { _mm_loadu_si128(stream.as_ptr().add(p).cast()) };
                // SAFETY: PERM[m] holds 8 u32.
                let perm = unsafe { _mm256_loadu_si256(PERM[m].as_ptr().cast()) };
                let w = _mm256_permutevar8x32_epi32(_mm256_cvtepu16_epi32(words), perm);
                let renormed = _mm256_or_si256(_mm256_slli_epi32::<16>(y), w);
                x[k] = _mm256_blendv_epi8(y, renormed, need);
                p += 2 * m.count_ones() as usize;
                let bytes = _mm256_shuffle_epi8(e[k], first_bytes);
                let packed = _mm_unpacklo_epi32(
                    _mm256_castsi256_si128(bytes),
                    _mm256_extracti128_si256::<1>(bytes),
                );
                // SAFETY: done + LANES <= body.len() (loop condition).
                unsafe { _mm_storel_epi64(body.as_mut_ptr().add(done + k * VEC).cast(), packed) };
            }
            done += LANES;
        }
        for (k, v) in x.iter().enumerate() {
            // SAFETY: `st` holds VECS * VEC u32.
            unsafe { _mm256_storeu_si256(st.as_mut_ptr().add(k * VEC).cast(), *v) };
        }
        *pos = p;
        done
    }
}
