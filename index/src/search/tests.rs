//! Unit tests of the orders and cuts.
use super::collector::{by_score, keep_best};
use super::Hit;

/// Equal scores are ordered by the shard's key, then the document, whatever the positions.
#[test]
fn ties_follow_the_shard_key_not_the_position() {
    // Shard 0 is keyed 9, shard 1 keyed 2: at equal scores, shard 1's documents come first.
    let keys = [9u64, 2];
    let mut hits = vec![
        Hit {
            shard: 0,
            doc: 0,
            score: 1.0,
        },
        Hit {
            shard: 1,
            doc: 5,
            score: 1.0,
        },
        Hit {
            shard: 1,
            doc: 3,
            score: 1.0,
        },
        Hit {
            shard: 0,
            doc: 1,
            score: 2.0,
        },
    ];
    keep_best(&mut hits, 3, &keys);
    hits.sort_by(by_score(&keys));
    let got: Vec<(usize, usize)> = hits.iter().map(|h| (h.shard, h.doc)).collect();
    assert_eq!(got, [(0, 1), (1, 3), (1, 5)]);
}
