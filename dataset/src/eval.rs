//! Retrieval quality metrics against exact ground truth and relevance labels.
use std::collections::HashMap;

/// |returned top-k ∩ ground-truth top-k| / k (ground truth as document rows).
pub fn recall_at_k(returned: &[usize], gt: &[i32], k: usize) -> f64 {
    if k == 0 {
        return 0.0;
    }
    let truth: Vec<usize> = gt.iter().take(k).map(|&g| g as usize).collect();
    let hits = returned
        .iter()
        .take(k)
        .filter(|r| truth.contains(r))
        .count();
    hits as f64 / k.min(truth.len()).max(1) as f64
}

/// nDCG@k with graded relevance (`qrels`: doc id -> grade) of the ranked ids `returned`.
pub fn ndcg_at_k(returned: &[&str], qrels: &HashMap<String, f32>, k: usize) -> f64 {
    let gain = |g: f32| 2f64.powf(g as f64) - 1.0;
    let dcg: f64 = returned
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, id)| {
            qrels
                .get(*id)
                .map(|&g| gain(g) / ((i + 2) as f64).log2())
                .unwrap_or(0.0)
        })
        .sum();
    let mut ideal: Vec<f32> = qrels.values().copied().filter(|&g| g > 0.0).collect();
    ideal.sort_by(|a, b| b.total_cmp(a));
    let idcg: f64 = ideal
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, &g)| gain(g) / ((i + 2) as f64).log2())
        .sum();
    if idcg == 0.0 {
        0.0
    } else {
        dcg / idcg
    }
}

/// Median and 99th percentile (nearest rank) of `v`, in the unit of `v`.
pub fn percentiles(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let at = |p: f64| s[((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
    (at(0.5), at(0.99))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_and_ndcg() {
        assert_eq!(recall_at_k(&[1, 2, 3], &[3, 2, 9], 3), 2.0 / 3.0);
        let q: HashMap<String, f32> = [("a".to_string(), 1.0)].into();
        assert!((ndcg_at_k(&["a", "b"], &q, 10) - 1.0).abs() < 1e-12);
        assert!((ndcg_at_k(&["b", "a"], &q, 10) - 1.0 / 3f64.log2()).abs() < 1e-12);
        assert_eq!(ndcg_at_k(&["b"], &q, 10), 0.0);
        assert_eq!(percentiles(&[3.0, 1.0, 2.0]), (2.0, 3.0));
    }
}
