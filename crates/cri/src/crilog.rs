//! CRI container logs: `<RFC3339Nano time> <stdout|stderr> <F|P> <text>\n` per line, as
//! kubelet reads them. A line longer than [`MAX_LINE`] is cut into `P` (partial) pieces, and
//! output left without a newline when the stream ends is written as a `P` line.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The longest text of one log line (containerd's default `max_container_log_line_size`).
pub const MAX_LINE: usize = 16 * 1024;

/// The two output streams of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// `nanos` since the Unix epoch as Go's RFC3339Nano in UTC (`2006-01-02T15:04:05.999999999Z`:
/// trailing zeros of the fraction dropped, no fraction at all when it is zero).
pub fn rfc3339_nano(nanos: i64) -> String {
    let secs = nanos.div_euclid(1_000_000_000);
    let frac = nanos.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut s = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    );
    if frac != 0 {
        let f = format!("{frac:09}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// One formatted log line.
pub fn format_line(nanos: i64, stream: Stream, partial: bool, text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 48);
    out.extend_from_slice(rfc3339_nano(nanos).as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.name().as_bytes());
    out.extend_from_slice(if partial { b" P " } else { b" F " });
    out.extend_from_slice(text);
    out.push(b'\n');
    out
}

/// Splits a process's output into log lines; holds the unfinished line of each stream.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: [Vec<u8>; 2],
}

fn slot(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

impl LineSplitter {
    /// Feeds a chunk of `stream`; returns the finished lines as (partial, text) pairs.
    pub fn push(&mut self, stream: Stream, data: &[u8]) -> Vec<(bool, Vec<u8>)> {
        let buf = &mut self.pending[slot(stream)];
        let mut out = Vec::new();
        for &b in data {
            if b == b'\n' {
                out.push((false, std::mem::take(buf)));
            } else {
                buf.push(b);
                if buf.len() >= MAX_LINE {
                    out.push((true, std::mem::take(buf)));
                }
            }
        }
        out
    }

    /// The unfinished line of `stream` (at the end of the output), as a partial line.
    pub fn flush(&mut self, stream: Stream) -> Option<(bool, Vec<u8>)> {
        let buf = std::mem::take(&mut self.pending[slot(stream)]);
        (!buf.is_empty()).then_some((true, buf))
    }
}

/// A container's CRI log file; [`LogWriter::reopen`] follows a rotation (the old file was
/// renamed away: a new one is created at the same path).
#[derive(Debug)]
pub struct LogWriter {
    path: PathBuf,
    file: File,
    lines: LineSplitter,
}

fn open(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).mode(0o640).open(path)
}

impl LogWriter {
    pub fn open(path: &Path) -> std::io::Result<LogWriter> {
        Ok(LogWriter {
            path: path.to_path_buf(),
            file: open(path)?,
            lines: LineSplitter::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the complete lines of a chunk, stamped `now` (nanoseconds).
    pub fn write(&mut self, now: i64, stream: Stream, data: &[u8]) -> std::io::Result<()> {
        let mut out = Vec::new();
        for (partial, text) in self.lines.push(stream, data) {
            out.extend(format_line(now, stream, partial, &text));
        }
        if !out.is_empty() {
            self.file.write_all(&out)?;
        }
        Ok(())
    }

    /// Writes what is left of both streams as partial lines (the output ended).
    pub fn finish(&mut self, now: i64) -> std::io::Result<()> {
        for stream in [Stream::Stdout, Stream::Stderr] {
            if let Some((partial, text)) = self.lines.flush(stream) {
                self.file.write_all(&format_line(now, stream, partial, &text))?;
            }
        }
        self.file.flush()
    }

    /// Opens the path again (after log rotation); unfinished lines are kept.
    pub fn reopen(&mut self) -> std::io::Result<()> {
        self.file = open(&self.path)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_like_go_rfc3339nano() {
        assert_eq!(rfc3339_nano(0), "1970-01-01T00:00:00Z");
        // 2016-10-06T00:17:09.669794202Z (the CRI log design doc's example)
        assert_eq!(rfc3339_nano(1_475_713_029_669_794_202), "2016-10-06T00:17:09.669794202Z");
        assert_eq!(rfc3339_nano(1_475_713_029_500_000_000), "2016-10-06T00:17:09.5Z");
        // Leap day and a year end.
        assert_eq!(rfc3339_nano(951_782_400_000_000_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_nano(1_798_761_599_000_000_001), "2026-12-31T23:59:59.000000001Z");
    }

    #[test]
    fn lines_and_tags() {
        assert_eq!(
            format_line(0, Stream::Stderr, false, b"err"),
            b"1970-01-01T00:00:00Z stderr F err\n".to_vec()
        );
        assert_eq!(
            format_line(0, Stream::Stdout, true, b""),
            b"1970-01-01T00:00:00Z stdout P \n".to_vec()
        );
    }

    #[test]
    fn splitter_keeps_streams_apart_and_cuts_long_lines() {
        let mut s = LineSplitter::default();
        assert!(s.push(Stream::Stdout, b"hel").is_empty());
        assert_eq!(s.push(Stream::Stderr, b"e1\ne"), vec![(false, b"e1".to_vec())]);
        assert_eq!(
            s.push(Stream::Stdout, b"lo\n\nx"),
            vec![(false, b"hello".to_vec()), (false, Vec::new())]
        );
        assert_eq!(s.flush(Stream::Stdout), Some((true, b"x".to_vec())));
        assert_eq!(s.flush(Stream::Stdout), None);
        assert_eq!(s.flush(Stream::Stderr), Some((true, b"e".to_vec())));
        let long = vec![b'a'; MAX_LINE * 2 + 3];
        let mut data = long.clone();
        data.push(b'\n');
        let out = s.push(Stream::Stdout, &data);
        assert_eq!(out.len(), 3);
        assert!(out[0].0 && out[1].0 && !out[2].0);
        assert_eq!(out[0].1.len(), MAX_LINE);
        assert_eq!(out[2].1, b"aaa".to_vec());
    }

    #[test]
    fn writer_appends_finishes_and_follows_rotation() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("pod/c/0.log");
        let mut w = LogWriter::open(&path).unwrap();
        w.write(0, Stream::Stdout, b"out\npart").unwrap();
        w.write(0, Stream::Stderr, b"err\n").unwrap();
        std::fs::rename(&path, d.path().join("rotated")).unwrap();
        w.reopen().unwrap();
        w.write(0, Stream::Stdout, b"ial\nlast").unwrap();
        w.finish(0).unwrap();
        let old = std::fs::read_to_string(d.path().join("rotated")).unwrap();
        assert_eq!(old, "1970-01-01T00:00:00Z stdout F out\n1970-01-01T00:00:00Z stderr F err\n");
        let new = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            new,
            "1970-01-01T00:00:00Z stdout F partial\n1970-01-01T00:00:00Z stdout P last\n"
        );
    }
}
