//! A safe wrapper over `matrixmultiply::sgemm` (runtime-dispatched AVX/FMA micro-kernels).

/// `c[i * n + j] = <a row i, b row j>` for row-major `a` (`m x k`) and `b` (`n x k`): C = A Bᵀ.
/// Returns false (and leaves `c` untouched) when a slice is too short for the shapes.
pub(crate) fn matmul_abt(
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
) -> bool {
    let fits =
        |len: usize, r: usize, cols: usize| r.checked_mul(cols).is_some_and(|need| len >= need);
    if !fits(a.len(), m, k) || !fits(b.len(), n, k) || !fits(c.len(), m, n) || m == 0 || n == 0 {
        return false;
    }
    // SAFETY: a holds m*k, b n*k and c m*n elements (checked above); the strides describe exactly those
    // row-major layouts (A: rows of k; B read transposed: element (p, j) at j*k + p; C: rows of n), so every
    // address sgemm computes lies inside the slices; c is exclusively borrowed and does not alias a or b.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            1,
            k as isize,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
    true
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_naive_product() {
        let (m, n, k) = (5, 7, 13);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 11) as f32 - 5.0).collect();
        let b: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 * 0.5).collect();
        let mut c = vec![0.0; m * n];
        assert!(super::matmul_abt(&a, &b, &mut c, m, n, k));
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|p| a[i * k + p] * b[j * k + p]).sum();
                assert!((c[i * n + j] - want).abs() < 1e-3);
            }
        }
        assert!(!super::matmul_abt(&a[..3], &b, &mut c, m, n, k));
    }
}
