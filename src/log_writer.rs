//! Where log lines go: a shared buffer that callers append to and one thread writes out in
//! batches. Under load (an audit line per token handed out, tens of thousands a second) the
//! lines cost a copy each, not a wake-up of a writer thread and a system call each; nothing
//! is ever dropped: a caller waits only when the writer is megabytes behind.

use std::{
    io::{self, Write},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread::JoinHandle,
    time::Duration,
};

use tracing_subscriber::fmt::MakeWriter;

/// Lines wait at most this long to be written.
const FLUSH_INTERVAL: Duration = Duration::from_millis(20);
/// A batch this large is written at once.
const FLUSH_AT: usize = 64 * 1024;
/// Callers wait while this much is buffered (the writer is stuck or far behind).
const MAX_BUFFERED: usize = 8 * 1024 * 1024;

/// The log's writer, for `tracing_subscriber::fmt().with_writer(..)`.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

/// Writes out what is buffered and stops the writer thread when dropped.
#[must_use = "dropping the guard stops the log writer"]
pub struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<Buffer>,
    /// Lines arrived in an empty buffer, or a batch is full, or the guard was dropped.
    data: Condvar,
    /// The writer took a batch: room again.
    space: Condvar,
}

#[derive(Default)]
struct Buffer {
    lines: Vec<u8>,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Buffer> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl LogWriter {
    /// A writer whose lines a new thread writes to `out`.
    pub fn new(mut out: impl Write + Send + 'static) -> io::Result<(Self, FlushGuard)> {
        let shared = Arc::new(Shared {
            state: Mutex::new(Buffer::default()),
            data: Condvar::new(),
            space: Condvar::new(),
        });
        let writer = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || write_batches(&writer, &mut out))?;
        Ok((
            Self {
                shared: Arc::clone(&shared),
            },
            FlushGuard {
                shared,
                thread: Some(thread),
            },
        ))
    }
}

/// The writer thread: waits for lines, lets a batch gather for up to
/// [`FLUSH_INTERVAL`], writes it, until the guard is dropped and all is written.
fn write_batches(shared: &Shared, out: &mut impl Write) {
    let mut batch = Vec::with_capacity(FLUSH_AT);
    loop {
        {
            let mut buffer = shared.lock();
            while buffer.lines.is_empty() && !buffer.closed {
                buffer = shared.data.wait(buffer).unwrap_or_else(|p| p.into_inner());
            }
            if !buffer.closed && buffer.lines.len() < FLUSH_AT {
                buffer = shared
                    .data
                    .wait_timeout_while(buffer, FLUSH_INTERVAL, |b| {
                        b.lines.len() < FLUSH_AT && !b.closed
                    })
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            std::mem::swap(&mut buffer.lines, &mut batch);
            if batch.is_empty() && buffer.closed {
                return;
            }
        }
        shared.space.notify_all();
        // A log that cannot be written has nowhere to report it; the lines are dropped.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
    }
}

// By reference: the log's `make_writer` lends the writer for each event rather than
// cloning it (an `Arc` count every core would bump on every audit line).
impl Write for &LogWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let shared = &self.shared;
        let mut buffer = shared.lock();
        while buffer.lines.len() >= MAX_BUFFERED && !buffer.closed {
            buffer = shared.space.wait(buffer).unwrap_or_else(|p| p.into_inner());
        }
        let was_empty = buffer.lines.is_empty();
        buffer.lines.extend_from_slice(line);
        let full = buffer.lines.len() >= FLUSH_AT;
        drop(buffer);
        if was_empty || full {
            shared.data.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Write for LogWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        (&*self).write(line)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = &'a LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.data.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `io::Write` that records into shared memory.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_from_every_thread_is_written_whole_by_the_time_the_guard_drops() {
        let sink = Sink::default();
        let (writer, guard) = LogWriter::new(sink.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut w = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000 {
                        w.write_all(format!("thread {t} line {i}\n").as_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 80_000);
        for t in 0..4 {
            let own: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|l| l.starts_with(&format!("thread {t} ")))
                .collect();
            let expected: Vec<String> = (0..20_000)
                .map(|i| format!("thread {t} line {i}"))
                .collect();
            assert_eq!(own, expected, "thread {t}'s lines, whole and in order");
        }
    }

    #[test]
    fn a_line_is_written_soon_without_more_lines_or_a_flush() {
        let sink = Sink::default();
        let (mut writer, _guard) = LogWriter::new(sink.clone()).unwrap();
        writer.write_all(b"alone\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.0.lock().unwrap().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the line was never written"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"alone\n");
    }
}
