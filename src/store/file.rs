//! The embedded backend: one redb file, held by one process (redb locks it), written by
//! one thread. Every operation waits for the commit that holds it (redb's immediate
//! durability: the file is synced), and the thread puts every operation that queued while
//! it committed into the next transaction: one sync for many rotations. Operations on a
//! key apply in the order they were asked, so a removal and a later write never swap.

use std::{
    fs::{DirBuilder, OpenOptions},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::Path,
    sync::mpsc,
    time::Duration,
};

use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use super::{StoreError, record::Record};

/// Records by (org, user); the org's own token has user "".
const TOKENS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("tokens");

/// The most operations put in one transaction.
const MAX_BATCH: usize = 1024;

/// The most operations waiting for the writer. Past it an operation fails at once (a put
/// is then served from memory, a take means the primary grant, a removal is left for the
/// idle drop after the next start) rather than the queue growing without bound.
const MAX_QUEUED: usize = 64 * 1024;

/// redb's page cache: the broker reads the file once, at start; writes need little.
const CACHE_BYTES: usize = 4 * 1024 * 1024;

/// A record's key: org and user ("" for the org token).
pub(super) type Key = (String, String);

/// What the writer thread is asked to do.
enum Op {
    Put {
        key: Key,
        record: Vec<u8>,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// Removes and returns the record's sealed refresh token, if it is at `generation`.
    Take {
        key: Key,
        generation: u64,
        done: oneshot::Sender<Result<Option<Vec<u8>>, String>>,
    },
    Remove {
        key: Key,
    },
    RemoveOrg {
        org: String,
    },
}

/// The file's writer: operations go to its thread in order. Dropping it waits for the
/// thread to finish what was asked and close the file (so the file is free again).
#[derive(Debug)]
pub(super) struct FileStore {
    ops: Option<mpsc::SyncSender<Op>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FileStore {
    fn drop(&mut self) {
        self.ops = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// What [`FileStore::open`] read: every record, as stored.
pub(super) type Records = Vec<(Key, Vec<u8>)>;

impl FileStore {
    /// Opens (or creates, `0600` in a folder made `0700`) the store at `path`, reads every
    /// record, and starts the writer thread.
    pub fn open(path: &Path) -> Result<(Self, Records), StoreError> {
        let problem = |detail: String| StoreError::Open {
            path: path.display().to_string(),
            detail,
        };
        if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(folder)
                .map_err(|e| problem(format!("cannot create its folder: {e}")))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| problem(e.to_string()))?;
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create_file(file)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
                    path: path.display().to_string(),
                },
                e => problem(e.to_string()),
            })?;
        let records = read_all(&db).map_err(|e| problem(e.to_string()))?;
        let (ops, queue) = mpsc::sync_channel(MAX_QUEUED);
        let writer = std::thread::Builder::new()
            .name("tokenbroker-store".into())
            .spawn(move || write_loop(&db, &queue))
            .map_err(|e| problem(format!("cannot start its writer thread: {e}")))?;
        Ok((
            Self {
                ops: Some(ops),
                writer: Some(writer),
            },
            records,
        ))
    }

    /// A store with no writer: every operation fails as if its thread had died.
    #[cfg(test)]
    pub fn stopped() -> Self {
        Self {
            ops: None,
            writer: None,
        }
    }

    pub async fn put(&self, key: Key, record: Vec<u8>) -> Result<(), StoreError> {
        let (done, answer) = oneshot::channel();
        self.send(Op::Put { key, record, done })?;
        answer
            .await
            .map_err(|_| StoreError::Stopped)?
            .map_err(StoreError::Write)
    }

    pub async fn take(&self, key: Key, generation: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let (done, answer) = oneshot::channel();
        self.send(Op::Take {
            key,
            generation,
            done,
        })?;
        answer
            .await
            .map_err(|_| StoreError::Stopped)?
            .map_err(StoreError::Write)
    }

    pub fn remove(&self, key: Key) {
        let _ = self.send(Op::Remove { key });
    }

    pub fn remove_org(&self, org: String) {
        let _ = self.send(Op::RemoveOrg { org });
    }

    fn send(&self, op: Op) -> Result<(), StoreError> {
        let ops = self.ops.as_ref().ok_or(StoreError::Stopped)?;
        // Never blocks the caller's thread (an async runtime's): a full queue is an error.
        ops.try_send(op).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => StoreError::Busy,
            mpsc::TrySendError::Disconnected(_) => StoreError::Stopped,
        })
    }
}

fn read_all(db: &Database) -> Result<Records, redb::Error> {
    let read = db.begin_read()?;
    let table = match read.open_table(TOKENS) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut records = Vec::new();
    for entry in table.iter()? {
        let (key, value) = entry?;
        let (org, user) = key.value();
        records.push(((org.to_owned(), user.to_owned()), value.value().to_vec()));
    }
    Ok(records)
}

/// The writer thread: a batch of what queued, one transaction, one commit, then the
/// answers. Ends when the store is dropped.
fn write_loop(db: &Database, queue: &mpsc::Receiver<Op>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH
            && let Ok(op) = queue.recv_timeout(Duration::ZERO)
        {
            batch.push(op);
        }
        let mut answers = Vec::with_capacity(batch.len());
        let outcome = apply(db, batch, &mut answers);
        for answer in answers {
            answer.send(outcome.as_ref().copied().map_err(ToString::to_string));
        }
    }
}

/// An operation's answer, sent once the transaction that holds it committed (or failed).
enum Answer {
    Put(oneshot::Sender<Result<(), String>>),
    Take(
        oneshot::Sender<Result<Option<Vec<u8>>, String>>,
        Option<Vec<u8>>,
    ),
}

impl Answer {
    fn send(self, committed: Result<(), String>) {
        match self {
            Self::Put(done) => {
                let _ = done.send(committed);
            }
            // A refresh token is handed out only once its removal is committed.
            Self::Take(done, taken) => {
                let _ = done.send(committed.map(|()| taken));
            }
        }
    }
}

fn apply(db: &Database, batch: Vec<Op>, answers: &mut Vec<Answer>) -> Result<(), redb::Error> {
    let write = db.begin_write()?;
    {
        let mut table = write.open_table(TOKENS)?;
        for op in batch {
            match op {
                Op::Put { key, record, done } => {
                    table.insert((key.0.as_str(), key.1.as_str()), record.as_slice())?;
                    answers.push(Answer::Put(done));
                }
                Op::Take {
                    key,
                    generation,
                    done,
                } => {
                    let k = (key.0.as_str(), key.1.as_str());
                    let stored = table.get(k)?.map(|v| v.value().to_vec());
                    let mut taken = None;
                    if let Some(mut record) = stored.and_then(|b| Record::decode(b.as_slice()).ok())
                        && record.generation == generation
                        && let Some(refresh) = record.refresh_token.take()
                    {
                        table.insert(k, record.encode_to_vec().as_slice())?;
                        taken = Some(refresh);
                    }
                    answers.push(Answer::Take(done, taken));
                }
                Op::Remove { key } => {
                    table.remove((key.0.as_str(), key.1.as_str()))?;
                }
                Op::RemoveOrg { org } => {
                    table
                        .retain_in((org.as_str(), "")..=(org.as_str(), "\u{10FFFF}"), |k, _| {
                            k.0 != org
                        })?;
                }
            }
        }
    }
    write.commit()?;
    Ok(())
}
