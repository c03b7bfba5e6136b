//! The portable kernel: scalar Rust over the packed layout, the reference every SIMD kernel is
//! tested bit-exact against. It walks the packed groups exactly as the SIMD kernels do (one block of
//! 16 channels, four K values per step), so a layout bug shows up here too.

use super::{dequant_one, Output, Problem, BLOCK_N, GROUP_K};

/// The four activations of group `g` of one row, zero-padded past the row's end.
fn activation_group(row: &[u8], g: usize) -> [u8; GROUP_K] {
    let start = g * GROUP_K;
    let end = row.len().min(start + GROUP_K);
    let mut a4 = [0u8; GROUP_K];
    a4[..end - start].copy_from_slice(&row[start..end]);
    a4
}

pub(super) fn run(p: &Problem, out: &mut Output) {
    let (k, n) = (p.k, p.w.n());
    for t in 0..p.rows {
        let row = &p.a[t * k..(t + 1) * k];
        for b in 0..p.w.num_blocks() {
            let mut acc = [0i32; BLOCK_N];
            for (g, group) in p.w.block(b).iter().enumerate() {
                let [a0, a1, a2, a3] = activation_group(row, g).map(i32::from);
                for (acc, w) in acc.iter_mut().zip(group.0.chunks_exact(GROUP_K)) {
                    let dot = a0 * i32::from(w[0])
                        + a1 * i32::from(w[1])
                        + a2 * i32::from(w[2])
                        + a3 * i32::from(w[3]);
                    // Exact for k <= MAX_K; wrapping only mirrors the SIMD adds.
                    *acc = acc.wrapping_add(dot);
                }
            }
            let o0 = b * BLOCK_N;
            let valid = BLOCK_N.min(n - o0);
            let dst = t * n + o0..t * n + o0 + valid;
            match out {
                Output::I32(o) => o[dst].copy_from_slice(&acc[..valid]),
                Output::F32 {
                    out,
                    a_scales,
                    a_zps,
                    bias,
                } => {
                    let col_sums = &p.w.padded_col_sums()[o0..o0 + valid];
                    let w_scales = &p.w.padded_scales()[o0..o0 + valid];
                    for (j, y) in out[dst].iter_mut().enumerate() {
                        *y = dequant_one(
                            acc[j],
                            a_zps[t],
                            col_sums[j],
                            a_scales[t],
                            w_scales[j],
                            bias.map(|bias| bias[o0 + j]),
                        );
                    }
                }
            }
        }
    }
}
