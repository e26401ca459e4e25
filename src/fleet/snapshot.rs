//! Each partition's reducer state, handed from owner to owner through a JetStream KV bucket
//! (`snapshot.<p>`), with the stream sequence it covers: the next owner of a partition
//! restores its meters' states and reads the partition again from just after that sequence,
//! so every series continues as if one worker had read the partition throughout. What the
//! previous owner had read after its last snapshot is read twice; its records come out the
//! same both times, and the stores keep each once.
//!
//! A snapshot holds only what is committed to this worker's outbox: the commit task updates
//! [`Partitions`] after each commit, and the source writes them to the bucket every few
//! seconds and when it hands a partition over. Each write is a compare-and-set on the
//! revision this worker last read or wrote, so a worker that has lost a partition without
//! noticing cannot overwrite its new owner's snapshot.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};

/// The format byte of an encoded snapshot.
const FORMAT: u8 = 1;

/// What is committed of one partition: how far its stream, and its meters' states then.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PartitionState {
    /// The stream's sequence the partition is committed through; 0 for none.
    pub through: u64,
    /// Each meter's state (normalised id, state as the reducer saved it).
    meters: HashMap<Box<[u8]>, Box<[u8]>>,
    /// Changed since the last snapshot was taken.
    changed: bool,
}

/// A snapshot as stored.
#[derive(Serialize, Deserialize)]
struct Stored<'a> {
    through: u64,
    #[serde(borrow)]
    meters: Vec<(&'a [u8], &'a [u8])>,
}

impl PartitionState {
    /// The snapshot, encoded: a format byte, then postcard.
    pub fn encode(&self) -> Vec<u8> {
        let mut meters: Vec<(&[u8], &[u8])> = (self.meters.iter())
            .map(|(id, state)| (&id[..], &state[..]))
            .collect();
        meters.sort_unstable();
        let stored = Stored {
            through: self.through,
            meters,
        };
        let mut bytes = vec![FORMAT];
        bytes.extend(postcard::to_stdvec(&stored).expect("a snapshot always serialises"));
        bytes
    }

    /// A snapshot [`PartitionState::encode`] made.
    pub fn decode(bytes: &[u8]) -> anyhow::Result<PartitionState> {
        let Some((&FORMAT, body)) = bytes.split_first() else {
            bail!("not a snapshot of this version");
        };
        let stored: Stored<'_> = postcard::from_bytes(body).context("a damaged snapshot")?;
        Ok(PartitionState {
            through: stored.through,
            meters: (stored.meters.into_iter())
                .map(|(id, state)| (id.into(), state.into()))
                .collect(),
            changed: false,
        })
    }

    /// The meters' states, for the reducer to continue from.
    pub fn states(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        (self.meters.iter())
            .map(|(id, state)| (id.to_vec(), state.to_vec()))
            .collect()
    }

    /// The number of meters.
    pub fn meters(&self) -> usize {
        self.meters.len()
    }
}

/// The partitions this worker reads, as committed to its outbox. Shared by the commit task,
/// which updates them after each commit, and the source, which claims, snapshots and
/// forgets them.
#[derive(Debug, Default)]
pub struct Partitions(Mutex<BTreeMap<u16, PartitionState>>);

impl Partitions {
    /// Starts keeping `partition`, from `state` (its last snapshot).
    pub fn claim(&self, partition: u16, state: PartitionState) {
        self.lock().insert(partition, state);
    }

    /// Stops keeping `partition`: handed over or lost.
    pub fn forget(&self, partition: u16) {
        self.lock().remove(&partition);
    }

    /// A batch is committed: each partition's stream through `positions`, and `states`
    /// (partition, meter, state) are the states of the meters it moved. Partitions not kept
    /// (lost or handed over meanwhile) are passed over.
    pub fn committed(&self, positions: &BTreeMap<u16, u64>, states: &[(u16, Vec<u8>, Vec<u8>)]) {
        let mut partitions = self.lock();
        for (partition, id, state) in states {
            if let Some(kept) = partitions.get_mut(partition) {
                kept.meters.insert(id[..].into(), state[..].into());
                kept.changed = true;
            }
        }
        for (partition, &through) in positions {
            if let Some(kept) = partitions.get_mut(partition) {
                kept.changed |= kept.through != through;
                kept.through = kept.through.max(through);
            }
        }
    }

    /// Stops keeping any partition: the connection to the fleet is gone.
    pub fn forget_all(&self) {
        self.lock().clear();
    }

    /// `partition`'s snapshot, encoded, if it changed since the last one was taken (or
    /// `even_unchanged`); `None` if it is not kept.
    pub fn take_snapshot(&self, partition: u16, even_unchanged: bool) -> Option<Vec<u8>> {
        let mut partitions = self.lock();
        let kept = partitions.get_mut(&partition)?;
        if !(kept.changed || even_unchanged) {
            return None;
        }
        kept.changed = false;
        Some(kept.encode())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u16, PartitionState>> {
        // A panic elsewhere cannot leave a half-made entry: each change is one insert.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The snapshot bucket, and the revision of each partition's snapshot this worker last read
/// or wrote.
pub struct Snapshots {
    kv: kv::Store,
    revisions: HashMap<u16, u64>,
}

/// Why a snapshot was not written.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// Someone else wrote the partition's snapshot since: it is theirs now.
    #[error("partition {0}'s snapshot was written by another worker")]
    Lost(u16),
    /// The server did not take it.
    #[error("cannot write partition {partition}'s snapshot: {error}")]
    Failed {
        /// The partition.
        partition: u16,
        /// What the server said.
        error: kv::UpdateError,
    },
}

impl Snapshots {
    /// The snapshot bucket `bucket`, made if missing. Its requests time out after `timeout`.
    pub async fn open(
        jetstream: &jetstream::Context,
        bucket: &str,
        timeout: Duration,
    ) -> anyhow::Result<Snapshots> {
        let mut jetstream = jetstream.clone();
        jetstream.set_timeout(timeout);
        let (kv, _) = super::open_bucket(&jetstream, bucket, "snapshot", Duration::ZERO).await?;
        Ok(Snapshots {
            kv,
            revisions: HashMap::new(),
        })
    }

    /// `partition`'s last snapshot (empty if it has none), remembering its revision.
    pub async fn load(&mut self, partition: u16) -> anyhow::Result<PartitionState> {
        let entry = (self.kv.entry(key(partition)).await)
            .with_context(|| format!("cannot read partition {partition}'s snapshot"))?;
        let Some(entry) = entry else {
            self.revisions.insert(partition, 0);
            return Ok(PartitionState::default());
        };
        self.revisions.insert(partition, entry.revision);
        match entry.operation {
            kv::Operation::Put => PartitionState::decode(&entry.value)
                .with_context(|| format!("partition {partition}'s snapshot")),
            kv::Operation::Delete | kv::Operation::Purge => Ok(PartitionState::default()),
        }
    }

    /// Writes `partition`'s snapshot `encoded`, unless someone else wrote one since this
    /// worker last read or wrote it.
    pub async fn save(&mut self, partition: u16, encoded: Vec<u8>) -> Result<(), SaveError> {
        let revision = self.revisions.get(&partition).copied().unwrap_or(0);
        match self
            .kv
            .update(key(partition), encoded.into(), revision)
            .await
        {
            Ok(revision) => {
                self.revisions.insert(partition, revision);
                Ok(())
            }
            Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Err(SaveError::Lost(partition))
            }
            Err(error) => Err(SaveError::Failed { partition, error }),
        }
    }
}

fn key(partition: u16) -> String {
    format!("snapshot.{partition}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_round_trips_and_follows_commits_of_its_partition_only() {
        let partitions = Partitions::default();
        partitions.claim(3, PartitionState::default());
        let positions = BTreeMap::from([(3, 17), (4, 9)]);
        let states = vec![
            (3, b"E0001".to_vec(), b"state one".to_vec()),
            (4, b"E0002".to_vec(), b"not kept".to_vec()),
        ];
        partitions.committed(&positions, &states);

        let encoded = partitions.take_snapshot(3, false).expect("changed");
        let decoded = PartitionState::decode(&encoded).unwrap();
        assert_eq!(decoded.through, 17);
        assert_eq!(
            decoded.states(),
            vec![(b"E0001".to_vec(), b"state one".to_vec())]
        );
        assert_eq!(partitions.take_snapshot(3, false), None, "unchanged since");
        assert!(partitions.take_snapshot(3, true).is_some());
        assert_eq!(partitions.take_snapshot(4, true), None, "never claimed");

        partitions.forget(3);
        partitions.committed(&positions, &states);
        assert_eq!(partitions.take_snapshot(3, true), None, "forgotten");
    }

    #[test]
    fn a_snapshot_of_another_format_or_damaged_is_refused() {
        let encoded = PartitionState::default().encode();
        assert!(PartitionState::decode(&encoded).is_ok());
        let mut other = encoded.clone();
        other[0] = FORMAT + 1;
        assert!(PartitionState::decode(&other).is_err());
        assert!(PartitionState::decode(&[FORMAT, 0xff]).is_err());
        assert!(PartitionState::decode(&[]).is_err());
    }
}
