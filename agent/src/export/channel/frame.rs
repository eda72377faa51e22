//! Frames: a length, the format's version and a message type, then the
//! fields, written and read with every length bounded (the layout: the
//! channel's module documentation).

use std::{io, time::Duration};

use tokio::io::{AsyncRead, AsyncReadExt as _};

use super::{Malformed, Stats, VERSION, kind, malformed};

/// A frame being written.
pub(super) struct Writer(pub(super) Vec<u8>);

impl Writer {
    pub(super) fn new(kind: u8) -> Self {
        Self(vec![0, 0, 0, 0, VERSION, kind])
    }

    pub(super) fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    pub(super) fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }

    pub(super) fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub(super) fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub(super) fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub(super) fn len(&mut self, n: usize) -> &mut Self {
        self.u32(u32::try_from(n).expect("bounded by the frame size"))
    }

    pub(super) fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.len(v.len());
        self.0.extend_from_slice(v);
        self
    }

    pub(super) fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }

    pub(super) fn option_str(&mut self, v: Option<&str>) -> &mut Self {
        self.bool(v.is_some());
        if let Some(v) = v {
            self.str(v);
        }
        self
    }

    pub(super) fn duration(&mut self, v: Duration) -> &mut Self {
        self.u64(u64::try_from(v.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn stats(&mut self, s: &Stats) -> &mut Self {
        self.u32(s.open).u32(s.scrapes_in_flight);
        for v in s.dropped.iter().chain(&s.scrapes) {
            self.u64(*v);
        }
        self
    }

    /// The whole frame, its length filled in.
    pub(super) fn finish(&mut self) -> Vec<u8> {
        let len = u32::try_from(self.0.len() - 4).expect("bounded by the frame size");
        self.0[..4].copy_from_slice(&len.to_le_bytes());
        std::mem::take(&mut self.0)
    }
}

/// A frame being read: every read is bounds-checked, and [`Reader::end`]
/// refuses bytes left over.
pub(super) struct Reader<'a>(pub(super) &'a [u8]);

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Malformed> {
        if self.0.len() < n {
            return malformed(format!("{what}: the frame ends early"));
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(taken)
    }

    pub(super) fn u8(&mut self, what: &str) -> Result<u8, Malformed> {
        Ok(self.take(1, what)?[0])
    }

    pub(super) fn bool(&mut self, what: &str) -> Result<bool, Malformed> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            v => malformed(format!("{what}: {v} is not a boolean")),
        }
    }

    pub(super) fn u16(&mut self, what: &str) -> Result<u16, Malformed> {
        Ok(u16::from_le_bytes(
            self.take(2, what)?.try_into().expect("2 bytes"),
        ))
    }

    pub(super) fn u32(&mut self, what: &str) -> Result<u32, Malformed> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }

    pub(super) fn u64(&mut self, what: &str) -> Result<u64, Malformed> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }

    pub(super) fn bytes(&mut self, max: usize, what: &str) -> Result<&'a [u8], Malformed> {
        let n = self.u32(what)? as usize;
        if n > max {
            return malformed(format!("{what}: {n} bytes, at most {max}"));
        }
        self.take(n, what)
    }

    pub(super) fn string(&mut self, max: usize, what: &str) -> Result<String, Malformed> {
        let bytes = self.bytes(max, what)?;
        String::from_utf8(bytes.to_vec()).or_else(|_| malformed(format!("{what}: not UTF-8")))
    }

    pub(super) fn option_string(
        &mut self,
        max: usize,
        what: &str,
    ) -> Result<Option<String>, Malformed> {
        self.bool(what)?.then(|| self.string(max, what)).transpose()
    }

    /// A list's count, which cannot be more than the bytes left (each item
    /// takes at least one).
    pub(super) fn count(&mut self, what: &str) -> Result<usize, Malformed> {
        let n = self.u32(what)? as usize;
        if n > self.0.len() {
            return malformed(format!("{what}: {n} items in {} bytes", self.0.len()));
        }
        Ok(n)
    }

    pub(super) fn duration(&mut self, what: &str) -> Result<Duration, Malformed> {
        match self.u64(what)? {
            0 => malformed(format!("{what}: 0")),
            ms => Ok(Duration::from_millis(ms)),
        }
    }

    pub(super) fn stats(&mut self) -> Result<Stats, Malformed> {
        let mut s = Stats {
            open: self.u32("open connections")?,
            scrapes_in_flight: self.u32("scrapes in flight")?,
            ..Stats::default()
        };
        for v in s.dropped.iter_mut() {
            *v = self.u64("dropped connections")?;
        }
        for v in s.scrapes.iter_mut() {
            *v = self.u64("scrapes")?;
        }
        Ok(s)
    }

    pub(super) fn end(self) -> Result<(), Malformed> {
        match self.0.len() {
            0 => Ok(()),
            n => malformed(format!("{n} bytes after the message")),
        }
    }
}

/// The version and type of a frame's body.
pub(super) fn open(body: &[u8]) -> Result<(u8, Reader<'_>), Malformed> {
    let mut r = Reader(body);
    let version = r.u8("version")?;
    if version != VERSION {
        return malformed(format!("version {version}, expected {VERSION}"));
    }
    let kind = r.u8("type")?;
    Ok((kind, r))
}

/// The start of a body frame of `len` bytes, which follow it: written
/// apart, so a large body is not copied into a frame first.
pub fn body_header(id: u32, last: bool, len: usize) -> Vec<u8> {
    let mut w = Writer::new(kind::BODY);
    w.u32(id).bool(last).len(len);
    let mut header = w.0;
    let frame = header.len() - 4 + len;
    header[..4].copy_from_slice(&u32::try_from(frame).expect("a bounded body").to_le_bytes());
    header
}

/// Reads one frame's body (after its length, at most `max` bytes); `None`
/// at the end of the stream between frames. A length over `max`, or under
/// the version and type, is an error before anything more is read.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if !(2..=max).contains(&len) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            Malformed(format!("a frame of {len} bytes (2 to {max})")),
        ));
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).await?;
    Ok(Some(body))
}
