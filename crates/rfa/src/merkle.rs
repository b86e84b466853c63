//! The forgotten ids as a Merkle tree over salted SHA-256 hashes: a receipt commits to the set
//! with one root and reveals no id without the salt; an id's membership is proven by the path
//! from its leaf to the root.
//!
//! Leaf = SHA-256(0x00 ‖ salt ‖ id), node = SHA-256(0x01 ‖ left ‖ right) (the prefixes keep a
//! leaf from passing for a node). Leaves are sorted, so the root depends on the set only; a level
//! of odd length carries its last node up unchanged.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

pub fn leaf(salt: &[u8], id: &str) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(salt);
    h.update(id.as_bytes());
    h.finalize().into()
}

fn node(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The leaves of `ids`, sorted and without repeats.
pub fn leaves<'a>(salt: &[u8], ids: impl IntoIterator<Item = &'a str>) -> Vec<Hash> {
    let mut v: Vec<Hash> = ids.into_iter().map(|id| leaf(salt, id)).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The root over sorted `leaves`; the empty set's root is SHA-256 of nothing.
pub fn root(leaves: &[Hash]) -> Hash {
    if leaves.is_empty() {
        return Sha256::digest([]).into();
    }
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| if let [l, r] = pair { node(l, r) } else { pair[0] })
            .collect();
    }
    level[0]
}

/// One step of a path: the sibling's hash and whether it sits on the left.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Step {
    pub sibling: String,
    pub sibling_is_left: bool,
}

/// The path from `leaf` to the root of sorted `leaves`, or None when it is not a leaf.
pub fn proof(leaves: &[Hash], leaf: &Hash) -> Option<Vec<Step>> {
    let mut index = leaves.binary_search(leaf).ok()?;
    let mut level = leaves.to_vec();
    let mut path = Vec::new();
    while level.len() > 1 {
        let sibling = index ^ 1;
        if sibling < level.len() {
            path.push(Step { sibling: hex(&level[sibling]), sibling_is_left: sibling < index });
        }
        level = level
            .chunks(2)
            .map(|pair| if let [l, r] = pair { node(l, r) } else { pair[0] })
            .collect();
        index /= 2;
    }
    Some(path)
}

/// Whether `path` leads from `leaf` to `root`.
pub fn verify(root: &Hash, leaf: &Hash, path: &[Step]) -> bool {
    let mut h = *leaf;
    for step in path {
        let Some(sibling) = unhex(&step.sibling) else { return false };
        h = if step.sibling_is_left { node(&sibling, &h) } else { node(&h, &sibling) };
    }
    h == *root
}

pub fn hex(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex digits as bytes; `None` for an odd length or a non-hex character.
pub fn bytes_of_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.is_ascii() {
        return None;
    }
    (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()).collect()
}

/// 64 hex digits as a hash.
pub fn unhex(s: &str) -> Option<Hash> {
    bytes_of_hex(s)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn every_member_proves_and_no_other_id_does(
            ids in proptest::collection::btree_set(0u32..5000, 0..70),
            others in proptest::collection::vec(0u32..5000, 1..20),
            salt in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let names: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
            let leaves = leaves(&salt, names.iter().map(String::as_str));
            prop_assert_eq!(leaves.len(), ids.len());
            let r = root(&leaves);
            for id in &names {
                let l = leaf(&salt, id);
                let path = proof(&leaves, &l).expect("a member has a path");
                prop_assert!(verify(&r, &l, &path));
            }
            for o in others.iter().filter(|o| !ids.contains(o)) {
                let l = leaf(&salt, &o.to_string());
                prop_assert!(proof(&leaves, &l).is_none());
                // Nor does a member's path prove it.
                if let Some(first) = names.first() {
                    let path = proof(&leaves, &leaf(&salt, first)).unwrap();
                    prop_assert!(!verify(&r, &l, &path));
                }
            }
        }
    }

    #[test]
    fn the_root_depends_on_the_set_and_the_salt_only() {
        let a = root(&leaves(b"salt", ["3", "1", "2"]));
        assert_eq!(a, root(&leaves(b"salt", ["2", "3", "1", "3"])));
        assert_ne!(a, root(&leaves(b"pepper", ["3", "1", "2"])));
        assert_ne!(a, root(&leaves(b"salt", ["3", "1"])));
        assert_eq!(unhex(&hex(&a)), Some(a));
        assert_eq!(unhex("zz"), None);
    }
}
