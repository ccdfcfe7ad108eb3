//! How the sled store keeps a record's canonical JSON: one zstd frame per record, compressed
//! with a dictionary trained on the store's own first records once there is one.
//!
//! sled's own page compression cost a zstd context per message on the writer thread (the
//! largest cost `make profile` showed there); one record per frame with a reused context costs
//! a fraction of it. The dictionary shrinks a frame about fourfold (records share almost all
//! their keys and much of their values), though sled's pages of 16 records compressed better
//! still: the store takes more disk than it did (BENCHMARKS.md).
//!
//! A dictionary is stored in the store (`meta`, durable) before the first record packed with
//! it is logged, and is never removed: a frame names its dictionary by id. A frame whose
//! dictionary is missing, or that does not unpack, is passed on as stored, so the verifier
//! reports the record as changed rather than the store hiding it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, RwLock};

use zstd::zstd_safe::{self, CCtx, CDict, DCtx, DDict};

/// How a packed record's canonical part begins: a zstd frame. Canonical JSON begins with `{`.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// zstd's fastest level.
const LEVEL: i32 = 1;
/// The largest record a frame's stated size is trusted for.
const MAX_UNPACKED: usize = 64 << 20;
/// Size of a trained dictionary: larger ones gained nothing on Tollgate's records.
const DICTIONARY_BYTES: usize = 16 * 1024;
/// Samples kept for training at most, however large the first records are.
const MAX_SAMPLE_BYTES: usize = 8 << 20;
/// Bytes of a record sampled for training: response records can be large, and their keys and
/// first fields are what records share.
const SAMPLE_PREFIX: usize = 4096;

fn zstd_error(code: usize) -> io::Error {
    io::Error::other(zstd_safe::get_error_name(code))
}

/// The writer's side: packs values, with the store's dictionary once it has one.
pub struct Packer {
    context: CCtx<'static>,
    dictionary: Option<CDict<'static>>,
    frame: Vec<u8>,
}

impl Default for Packer {
    fn default() -> Self {
        Self {
            context: zstd_safe::create_cctx(),
            dictionary: None,
            frame: Vec::new(),
        }
    }
}

impl Packer {
    /// Packs with `dictionary` from now on.
    pub fn use_dictionary(&mut self, dictionary: &[u8]) {
        self.dictionary = Some(zstd_safe::create_cdict(dictionary, LEVEL));
    }

    /// A stored value (chain hash, canonical JSON) with its canonical part as one zstd frame.
    pub fn pack(&mut self, value: &[u8]) -> io::Result<Vec<u8>> {
        let (hash, canonical) = value.split_at(value.len().min(32));
        // zstd writes from the start of a buffer: the frame goes to one kept for it.
        self.frame.clear();
        self.frame
            .reserve(zstd_safe::compress_bound(canonical.len()));
        match &self.dictionary {
            Some(dictionary) => {
                self.context
                    .compress_using_cdict(&mut self.frame, canonical, dictionary)
            }
            None => self.context.compress(&mut self.frame, canonical, LEVEL),
        }
        .map_err(zstd_error)?;
        let mut packed = Vec::with_capacity(hash.len() + self.frame.len());
        packed.extend_from_slice(hash);
        packed.extend_from_slice(&self.frame);
        Ok(packed)
    }
}

/// The readers' side: every dictionary of the store, by id.
#[derive(Default)]
pub struct Dictionaries {
    by_id: RwLock<HashMap<u32, Arc<DDict<'static>>>>,
}

impl Dictionaries {
    /// Adds a stored dictionary; returns its id.
    pub fn add(&self, dictionary: &[u8]) -> u32 {
        let id = zstd_safe::get_dict_id_from_dict(dictionary);
        let prepared = Arc::new(zstd_safe::create_ddict(dictionary));
        self.by_id
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, prepared);
        id
    }

    /// A stored value as readers see it: a packed one unpacked, a plain one (a store created
    /// with sled's compression) as it is, and one that does not unpack as stored.
    pub fn unpack<'a>(&self, value: &'a [u8]) -> Cow<'a, [u8]> {
        let Some(frame) = value.get(32..).filter(|c| c.starts_with(&ZSTD_MAGIC)) else {
            return value.into();
        };
        match self.unpack_frame(frame) {
            Some(canonical) => {
                let mut plain = Vec::with_capacity(32 + canonical.len());
                plain.extend_from_slice(&value[..32]);
                plain.extend_from_slice(&canonical);
                plain.into()
            }
            None => value.into(),
        }
    }

    fn unpack_frame(&self, frame: &[u8]) -> Option<Vec<u8>> {
        thread_local! {
            // Reading a million records must not create a million contexts.
            static CONTEXT: std::cell::RefCell<DCtx<'static>> =
                std::cell::RefCell::new(zstd_safe::create_dctx());
        }
        // The writer's frames state their size; an unknown or absurd one (the error values are
        // near `u64::MAX`) is not trusted with an allocation.
        let size = usize::try_from(zstd_safe::get_frame_content_size(frame))
            .ok()
            .filter(|size| *size <= MAX_UNPACKED)?;
        let dictionary = match zstd_safe::get_dict_id_from_frame(frame) {
            0 => None,
            id => Some(
                self.by_id
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&id)?
                    .clone(),
            ),
        };
        let mut canonical = Vec::with_capacity(size);
        let written = CONTEXT.with(|context| {
            let mut context = context.borrow_mut();
            match &dictionary {
                Some(dictionary) => {
                    context.decompress_using_ddict(&mut canonical, frame, dictionary)
                }
                None => context.decompress(&mut canonical, frame),
            }
        });
        (written.ok()? == size).then_some(canonical)
    }
}

/// The first records' canonical JSON, kept until there are enough to train a dictionary on.
pub struct Samples {
    wanted: usize,
    samples: Vec<Vec<u8>>,
    bytes: usize,
}

impl Samples {
    /// Collects `wanted` records.
    pub fn new(wanted: usize) -> Self {
        Self {
            wanted,
            samples: Vec::with_capacity(wanted.min(4096)),
            bytes: 0,
        }
    }

    /// Keeps the canonical part of `value`; true once there are enough samples.
    pub fn add(&mut self, value: &[u8]) -> bool {
        if let Some(canonical) = value.get(32..) {
            let sample = &canonical[..canonical.len().min(SAMPLE_PREFIX)];
            self.bytes += sample.len();
            self.samples.push(sample.to_vec());
        }
        self.samples.len() >= self.wanted || self.bytes >= MAX_SAMPLE_BYTES
    }

    /// A dictionary trained on the samples.
    pub fn train(self) -> io::Result<Vec<u8>> {
        zstd::dict::from_samples(&self.samples, DICTIONARY_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: usize) -> Vec<u8> {
        let mut value = vec![n as u8; 32];
        value.extend_from_slice(
            format!(
                r#"{{"decision":"allow","event":"mcp.request","identity":{{"iss":"https://issuer.example","sub":"user{}@example.com"}},"receivedAt":"2026-12-07T04:24:{:02}.{:06}Z","requestId":"{:08x}-6881-4689-a5af-97fe46713ca9","route":"/mcp","tool":"tool{}"}}"#,
                n % 7,
                n % 60,
                n * 7919 % 1_000_000,
                n * 2_654_435_761usize % (1 << 32),
                n % 5
            )
            .as_bytes(),
        );
        value
    }

    #[test]
    fn values_round_trip_with_and_without_a_dictionary() {
        let mut packer = Packer::default();
        let dictionaries = Dictionaries::default();
        let plain: Vec<Vec<u8>> = (0..200).map(record).collect();
        let without: Vec<Vec<u8>> = plain.iter().map(|v| packer.pack(v).unwrap()).collect();

        let mut samples = Samples::new(150);
        let enough = plain.iter().any(|v| samples.add(v));
        assert!(enough);
        let dictionary = samples.train().unwrap();
        packer.use_dictionary(&dictionary);
        let id = dictionaries.add(&dictionary);
        let with: Vec<Vec<u8>> = plain.iter().map(|v| packer.pack(v).unwrap()).collect();
        assert_eq!(zstd_safe::get_dict_id_from_frame(&with[0][32..]), id);

        for ((plain, without), with) in plain.iter().zip(&without).zip(&with) {
            assert_eq!(&dictionaries.unpack(without)[..], &plain[..]);
            assert_eq!(&dictionaries.unpack(with)[..], &plain[..]);
            assert_eq!(
                &with[..32],
                &plain[..32],
                "the chain hash stays in the clear"
            );
        }
        let size = |values: &[Vec<u8>]| values.iter().map(Vec::len).sum::<usize>();
        assert!(
            size(&with) * 2 < size(&without),
            "{} with the dictionary, {} without",
            size(&with),
            size(&without)
        );
    }

    #[test]
    fn what_does_not_unpack_is_passed_on_as_stored() {
        let mut packer = Packer::default();
        let mut samples = Samples::new(100);
        (0..100).for_each(|n| {
            samples.add(&record(n));
        });
        let dictionary = samples.train().unwrap();
        packer.use_dictionary(&dictionary);
        let packed = packer.pack(&record(5)).unwrap();

        // Its dictionary unknown to the reader.
        let strangers = Dictionaries::default();
        assert_eq!(&strangers.unpack(&packed)[..], &packed[..]);

        // A changed or cut frame.
        let dictionaries = Dictionaries::default();
        dictionaries.add(&dictionary);
        let mut changed = packed.clone();
        let last = changed.len() - 1;
        changed[last] ^= 0x5a;
        let unpacked = dictionaries.unpack(&changed);
        assert!(unpacked[..] == changed[..] || unpacked[..] != record(5)[..]);
        let cut = &packed[..packed.len() - 3];
        assert_eq!(&dictionaries.unpack(cut)[..], cut);

        // Plain JSON, as a store created with sled's compression holds it.
        assert_eq!(&dictionaries.unpack(&record(5))[..], &record(5)[..]);
    }
}
