//! Captures every `tracing` event of the process at TRACE level into memory, so tests can
//! assert that no secret ever reaches a log line.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

/// The captured log text of the whole process.
#[derive(Clone, Debug, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    /// Everything logged so far.
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

struct Writer(LogBuffer);

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capturing subscriber as the global default (once per process) and returns the
/// buffer. If another global subscriber was installed first, events go there instead and the
/// buffer stays empty; [`capture`] then reports that by returning `None`.
pub fn capture() -> Option<LogBuffer> {
    static BUFFER: OnceLock<Option<LogBuffer>> = OnceLock::new();
    BUFFER
        .get_or_init(|| {
            let buffer = LogBuffer::default();
            let writer = buffer.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_ansi(false)
                .with_writer(move || Writer(writer.clone()))
                .finish();
            tracing::subscriber::set_global_default(subscriber).ok().map(|()| buffer)
        })
        .clone()
}
