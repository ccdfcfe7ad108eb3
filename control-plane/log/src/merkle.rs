//! The Merkle tree over audit records, as RFC 6962 (and RFC 9162 §2.1) defines it:
//! `leaf = SHA-256(0x00 || record)`, `node = SHA-256(0x01 || left || right)`, the tree over `n`
//! leaves split at the largest power of two below `n`.
//!
//! The log keeps only a [`Frontier`] (the roots of the perfect subtrees that make up the tree,
//! at most 64 hashes) to append in O(log n) and to compute the root; proofs are built from the
//! perfect-subtree hashes a [`NodeSource`] supplies (the store keeps them in sled).

use sha2::{Digest, Sha256};

use crate::chain::Hash;

/// `MTH({})`: the root of the empty tree, SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// `SHA-256(0x00 || record)`.
pub fn leaf_hash(record: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0u8]);
    hasher.update(record);
    hasher.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([1u8]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The compact range `[0, size)`: one hash per set bit of `size`, largest subtree first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    hashes: Vec<Hash>,
}

impl Frontier {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf; `completed(level, index, hash)` is called for every perfect subtree of
    /// height >= 1 the leaf completes (node `index` at `level` covers leaves
    /// `[index << level, (index + 1) << level)`).
    pub fn push(&mut self, leaf: Hash, mut completed: impl FnMut(u32, u64, &Hash)) {
        let mut hash = leaf;
        let mut index = self.size;
        let mut level = 0;
        while index & 1 == 1 {
            // A set low bit means the last frontier hash is this node's left sibling.
            let Some(left) = self.hashes.pop() else {
                break;
            };
            hash = node_hash(&left, &hash);
            index >>= 1;
            level += 1;
            completed(level, index, &hash);
        }
        self.hashes.push(hash);
        self.size += 1;
    }

    /// Appends the perfect subtree of height `level` whose hash is `hash`: the next
    /// `2^level` leaves at once. `None` when the tree's size is not a multiple of `2^level`
    /// (the subtree would not be one of the tree's own nodes).
    pub fn push_subtree(&mut self, level: u32, hash: Hash) -> Option<()> {
        let width = 1u64.checked_shl(level)?;
        if !self.size.is_multiple_of(width) || self.size.checked_add(width).is_none() {
            return None;
        }
        let mut hash = hash;
        let mut index = self.size >> level;
        while index & 1 == 1 {
            let left = self.hashes.pop()?;
            hash = node_hash(&left, &hash);
            index >>= 1;
        }
        self.hashes.push(hash);
        self.size += width;
        Some(())
    }

    /// Splits `[start, end)` into the tree's own perfect subtrees, left to right, as
    /// `(level, index)`: what a range of leaves left out of a bundle is replaced by.
    pub fn aligned_cover(start: u64, end: u64) -> Vec<(u32, u64)> {
        let mut cover = Vec::new();
        let mut at = start;
        while at < end {
            let mut level = if at == 0 { 63 } else { at.trailing_zeros() };
            while level > 0 && (end - at) < (1u64 << level) {
                level -= 1;
            }
            cover.push((level, at >> level));
            at += 1u64 << level;
        }
        cover
    }

    /// `MTH(D[0:size])`.
    pub fn root(&self) -> Hash {
        let mut hashes = self.hashes.iter().rev();
        let Some(last) = hashes.next() else {
            return empty_root();
        };
        hashes.fold(*last, |right, left| node_hash(left, &right))
    }

    /// `size` (8 bytes big-endian) then the hashes, as kept in sled.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 32 * self.hashes.len());
        out.extend_from_slice(&self.size.to_be_bytes());
        for hash in &self.hashes {
            out.extend_from_slice(hash);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (size, rest) = bytes.split_at_checked(8)?;
        let size = u64::from_be_bytes(size.try_into().ok()?);
        if rest.len() != 32 * size.count_ones() as usize {
            return None;
        }
        let hashes = rest
            .chunks_exact(32)
            .map(|c| c.try_into().ok())
            .collect::<Option<Vec<Hash>>>()?;
        Some(Self { size, hashes })
    }
}

/// Supplies the hash of the perfect subtree `index` at `level` (level 0: a leaf hash). Only
/// subtrees within the tree asked about are requested.
pub trait NodeSource {
    type Error;
    fn node(&mut self, level: u32, index: u64) -> Result<Hash, Self::Error>;
}

/// Largest power of two strictly below `n` (n >= 2).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// `MTH(D[start:end])` for a range that RFC 6962's recursion produces: `start` is a multiple of
/// the smallest power of two >= `end - start`.
pub fn subtree_root<S: NodeSource>(source: &mut S, start: u64, end: u64) -> Result<Hash, S::Error> {
    let size = end - start;
    if size == 0 {
        return Ok(empty_root());
    }
    if size.is_power_of_two() {
        let level = size.trailing_zeros();
        return source.node(level, start >> level);
    }
    let k = split(size);
    let left = source.node(k.trailing_zeros(), start >> k.trailing_zeros())?;
    let right = subtree_root(source, start + k, end)?;
    Ok(node_hash(&left, &right))
}

/// `PATH(index, D[0:size])`, leaf to root.
pub fn inclusion_proof<S: NodeSource>(
    source: &mut S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, S::Error> {
    let mut proof = Vec::new();
    let (mut start, mut end) = (0, size);
    // Walk from the root down, collecting siblings; reversed at the end.
    while end - start > 1 {
        let k = split(end - start);
        if index < start + k {
            proof.push(subtree_root(source, start + k, end)?);
            end = start + k;
        } else {
            proof.push(subtree_root(source, start, start + k)?);
            start += k;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// `PROOF(old, D[0:new])` (RFC 6962 §2.1.2).
pub fn consistency_proof<S: NodeSource>(
    source: &mut S,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, S::Error> {
    let mut proof = Vec::new();
    if old == 0 || old >= new {
        return Ok(proof);
    }
    let (mut start, mut end, mut m, mut complete) = (0u64, new, old, true);
    loop {
        let size = end - start;
        if m == size {
            if !complete {
                proof.push(subtree_root(source, start, end)?);
            }
            break;
        }
        let k = split(size);
        if m <= k {
            proof.push(subtree_root(source, start + k, end)?);
            end = start + k;
        } else {
            proof.push(subtree_root(source, start, start + k)?);
            start += k;
            m -= k;
            complete = false;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// RFC 9162 §2.1.3.2: whether `proof` shows leaf `index` (hash `leaf`) in the tree of `size`
/// with root `root`.
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && r == *root
}

/// RFC 9162 §2.1.4.2: whether `proof` shows the tree of `old_size` (root `old_root`) is a prefix
/// of the tree of `new_size` (root `new_root`).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old_size > new_size {
        return false;
    }
    if old_size == new_size {
        return proof.is_empty() && old_root == new_root;
    }
    if old_size == 0 {
        return proof.is_empty();
    }
    let mut proof = proof.iter();
    let mut path: Vec<&Hash> = Vec::new();
    // When old_size is a power of two, the old root is itself the first node of the proof.
    if old_size.is_power_of_two() {
        path.push(old_root);
    }
    path.extend(proof.by_ref());
    let mut path = path.into_iter();
    let (mut fn_, mut sn) = (old_size - 1, new_size - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let Some(first) = path.next() else {
        return false;
    };
    let (mut fr, mut sr) = (*first, *first);
    for c in path {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    fr == *old_root && sr == *new_root && sn == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Leaves held in memory; perfect subtrees computed by the definition.
    struct Leaves(Vec<Hash>);

    impl NodeSource for Leaves {
        type Error = std::convert::Infallible;
        fn node(&mut self, level: u32, index: u64) -> Result<Hash, Self::Error> {
            let start = (index << level) as usize;
            Ok(mth(&self.0[start..start + (1 << level)]))
        }
    }

    /// `MTH` straight from RFC 6962 §2.1.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    #[test]
    fn leaves_and_aligned_subtrees_rebuild_every_root() {
        let all = leaves(70);
        let mut source = Leaves(all.clone());
        // Every way of keeping leaves [a, b) and covering the rest with subtrees.
        for a in 0..70u64 {
            for b in [a, a + 1, a + 7, 70]
                .into_iter()
                .filter(|b| *b <= 70 && *b >= a)
            {
                let mut frontier = Frontier::new();
                for (level, index) in Frontier::aligned_cover(0, a) {
                    let hash = source.node(level, index).unwrap();
                    frontier.push_subtree(level, hash).unwrap();
                }
                for leaf in &all[a as usize..b as usize] {
                    frontier.push(*leaf, |_, _, _| {});
                }
                for (level, index) in Frontier::aligned_cover(b, 70) {
                    assert_eq!(index << level, frontier.size());
                    let hash = source.node(level, index).unwrap();
                    frontier.push_subtree(level, hash).unwrap();
                }
                assert_eq!(frontier.size(), 70);
                assert_eq!(frontier.root(), mth(&all), "kept {a}..{b}");
            }
        }
        // A subtree that is not one of the tree's nodes is refused.
        let mut frontier = Frontier::new();
        frontier.push(all[0], |_, _, _| {});
        assert_eq!(frontier.push_subtree(1, all[1]), None);
    }

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(format!("{i}").as_bytes()))
            .collect()
    }

    #[test]
    fn hashes_use_the_rfc_6962_prefixes() {
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // SHA-256 of the single byte 0x00: the hash of an empty leaf.
        assert_eq!(
            hex::encode(leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
        let (a, b) = (leaf_hash(b"a"), leaf_hash(b"b"));
        let mut input = vec![1u8];
        input.extend_from_slice(&a);
        input.extend_from_slice(&b);
        assert_eq!(node_hash(&a, &b), <Hash>::from(Sha256::digest(&input)));
    }

    #[test]
    fn frontier_root_and_completed_nodes_match_the_definition() {
        let all = leaves(70);
        let mut frontier = Frontier::new();
        let mut nodes = std::collections::HashMap::new();
        for (i, leaf) in all.iter().enumerate() {
            frontier.push(*leaf, |level, index, hash| {
                nodes.insert((level, index), *hash);
            });
            let size = i as u64 + 1;
            assert_eq!(frontier.root(), mth(&all[..=i]), "size {size}");
            let decoded = Frontier::decode(&frontier.encode()).unwrap();
            assert_eq!(decoded, frontier);
            assert_eq!(decoded.size(), size);
        }
        for ((level, index), hash) in nodes {
            let start = (index << level) as usize;
            assert_eq!(hash, mth(&all[start..start + (1 << level)]));
        }
        assert_eq!(Frontier::new().root(), empty_root());
        assert!(Frontier::decode(&[0; 7]).is_none());
        assert!(Frontier::decode(&3u64.to_be_bytes()).is_none());
    }

    #[test]
    fn inclusion_proofs_verify_and_tampering_fails() {
        for size in 1..=40u64 {
            let all = leaves(size);
            let root = mth(&all);
            let mut source = Leaves(all.clone());
            for index in 0..size {
                let proof = inclusion_proof(&mut source, index, size).unwrap();
                let leaf = &all[index as usize];
                assert!(verify_inclusion(leaf, index, size, &proof, &root));
                assert!(!verify_inclusion(
                    &leaf_hash(b"x"),
                    index,
                    size,
                    &proof,
                    &root
                ));
                if size > 1 {
                    assert!(!verify_inclusion(
                        leaf,
                        (index + 1) % size,
                        size,
                        &proof,
                        &root
                    ));
                    let mut bad = proof.clone();
                    bad[0][0] ^= 1;
                    assert!(!verify_inclusion(leaf, index, size, &bad, &root));
                    assert!(!verify_inclusion(leaf, index, size, &proof[1..], &root));
                }
            }
        }
    }

    #[test]
    fn consistency_proofs_verify_and_forks_fail() {
        for new in 1..=40u64 {
            let all = leaves(new);
            let new_root = mth(&all);
            let mut source = Leaves(all.clone());
            for old in 1..=new {
                let old_root = mth(&all[..old as usize]);
                let proof = consistency_proof(&mut source, old, new).unwrap();
                assert!(
                    verify_consistency(old, new, &old_root, &new_root, &proof),
                    "{old} -> {new}"
                );
                // A fork: the same old size with another root.
                let mut forked = all.clone();
                forked[0] = leaf_hash(b"forged");
                let forked_root = mth(&forked[..old as usize]);
                assert!(!verify_consistency(
                    old,
                    new,
                    &forked_root,
                    &new_root,
                    &proof
                ));
                if !proof.is_empty() {
                    let mut bad = proof.clone();
                    let last = bad.len() - 1;
                    bad[last][5] ^= 1;
                    assert!(!verify_consistency(old, new, &old_root, &new_root, &bad));
                }
            }
            assert!(verify_consistency(0, new, &empty_root(), &new_root, &[]));
            assert!(!verify_consistency(new + 1, new, &new_root, &new_root, &[]));
        }
    }

    #[test]
    fn subtree_roots_of_unaligned_tails() {
        let all = leaves(13);
        let mut source = Leaves(all.clone());
        assert_eq!(subtree_root(&mut source, 0, 13).unwrap(), mth(&all));
        assert_eq!(subtree_root(&mut source, 8, 13).unwrap(), mth(&all[8..]));
        assert_eq!(subtree_root(&mut source, 12, 13).unwrap(), all[12]);
    }
}
