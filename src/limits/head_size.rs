//! `large_client_header_buffers`: how large a request head may be, checked as its bytes arrive.
//!
//! Pingora takes a head of up to 1 MiB in one header line, parses it again after every read, and
//! copies and forwards all of it, so a 150 KB Cookie costs six normal requests however little of
//! it graysplit itself looks at. nginx refuses such a head before parsing it: with its default
//! `large_client_header_buffers 4 8k` a request line or header line must fit 8 KB, and the head
//! the four buffers. [`HeadScan`] is that rule as pure logic over the bytes of one head:
//! [`super::head_deadline::HeadDeadline`] feeds it what each read brings and acts on the
//! verdict. It finds the end of the head itself (the first empty line), so the body and
//! pipelined requests that come in the same read are not counted.

use memchr::memchr;

/// The limits as configured: each line (request line or header) at most `line_max` bytes, the
/// whole head at most `head_max` bytes. Line ends (CRLF or a bare LF) count towards the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    pub line_max: usize,
    pub head_max: usize,
}

/// Which rule a head broke, for the answer (414 or 431) and the counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Oversize {
    /// The request line is longer than a buffer (nginx: 414 Request-URI Too Large).
    RequestLine,
    /// One header line is longer than a buffer.
    HeaderLine,
    /// Every line fits, but all of them do not.
    Head,
}

impl Oversize {
    /// The answer. nginx sends 400 "Request Header Or Cookie Too Large" for a header; 431 is the
    /// status RFC 6585 made for it, which clients and CDNs report as what it is.
    pub fn response(self) -> &'static [u8] {
        match self {
            Oversize::RequestLine => {
                b"HTTP/1.1 414 URI Too Long\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            }
            Oversize::HeaderLine | Oversize::Head => {
                b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n\
                  Content-Length: 0\r\n\r\n"
            }
        }
    }
}

/// What the bytes fed so far make of the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// Within the limits, not complete yet.
    Partial,
    /// The empty line that ends the head came, within the limits.
    Complete,
    TooLarge(Oversize),
}

/// One head being read. Cheap per byte: one `memchr` for line ends.
#[derive(Debug)]
pub struct HeadScan {
    limits: HeadLimits,
    /// Head bytes so far (all lines and their ends).
    total: usize,
    /// Bytes of the current line so far, a `\r` included.
    line: usize,
    /// Non-empty lines completed: 0 while the request line is being read.
    lines: usize,
    /// The current line's last byte so far is `\r` (it may end in the next read).
    ends_in_cr: bool,
}

impl HeadScan {
    pub fn new(limits: HeadLimits) -> Self {
        Self {
            limits,
            total: 0,
            line: 0,
            lines: 0,
            ends_in_cr: false,
        }
    }

    /// Nothing of this head has arrived yet (not even an empty line).
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Starts over for the next head on the same connection.
    pub fn reset(&mut self) {
        *self = Self::new(self.limits);
    }

    /// Takes the next bytes of the connection. After `Complete` or `TooLarge` the caller stops
    /// feeding (the rest is the body, the next request, or not read at all).
    pub fn feed(&mut self, mut bytes: &[u8]) -> Scan {
        while let Some(i) = memchr(b'\n', bytes) {
            let line = self.line + i;
            self.total += i + 1;
            // The line without its `\r`, if it has one (in this read or at the end of the last).
            let cr = if i > 0 {
                bytes[i - 1] == b'\r'
            } else {
                self.ends_in_cr
            };
            let content = line - usize::from(cr && line > 0);
            if let Some(over) = self.over(line) {
                return Scan::TooLarge(over);
            }
            if content == 0 {
                // Empty lines before the request line are skipped (RFC 9112 §2.2, as nginx
                // and httparse do); after it, one ends the head.
                if self.lines > 0 {
                    return Scan::Complete;
                }
            } else {
                self.lines += 1;
            }
            self.line = 0;
            self.ends_in_cr = false;
            bytes = &bytes[i + 1..];
        }
        if let Some(&last) = bytes.last() {
            self.line += bytes.len();
            self.total += bytes.len();
            self.ends_in_cr = last == b'\r';
        }
        match self.over(self.line) {
            Some(over) => Scan::TooLarge(over),
            None => Scan::Partial,
        }
    }

    /// The rule a line of `line` bytes (so far) and the head so far break, if any.
    fn over(&self, line: usize) -> Option<Oversize> {
        if line > self.limits.line_max {
            Some(if self.lines == 0 {
                Oversize::RequestLine
            } else {
                Oversize::HeaderLine
            })
        } else if self.total > self.limits.head_max {
            Some(Oversize::Head)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        line_max: 16,
        head_max: 48,
    };

    /// Feeds `head` in pieces of `step` bytes and returns the first verdict that is not
    /// `Partial` (or `Partial`), with the number of bytes fed up to it.
    fn scan_in_steps(head: &[u8], step: usize) -> (Scan, usize) {
        let mut s = HeadScan::new(LIMITS);
        let mut fed = 0;
        for piece in head.chunks(step) {
            fed += piece.len();
            match s.feed(piece) {
                Scan::Partial => {}
                other => return (other, fed),
            }
        }
        (Scan::Partial, fed)
    }

    fn every_step(head: &[u8]) -> Scan {
        let (first, _) = scan_in_steps(head, head.len().max(1));
        for step in 1..=head.len() {
            assert_eq!(
                scan_in_steps(head, step).0,
                first,
                "step {step} of {head:?}"
            );
        }
        first
    }

    #[test]
    fn a_head_within_the_limits_is_complete_at_its_empty_line_however_it_arrives() {
        assert_eq!(
            every_step(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Scan::Complete
        );
        assert_eq!(every_step(b"GET / HTTP/1.1\nHost: a\n\n"), Scan::Complete);
        assert_eq!(
            every_step(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"),
            Scan::Complete
        );
        assert_eq!(every_step(b"GET / HTTP/1.1\r\nHost: a\r\n"), Scan::Partial);
        // A line of exactly the limit (CR included) is allowed.
        assert_eq!(every_step(b"GET /12345 HTTP\r\n\r\n"), Scan::Complete);
    }

    #[test]
    fn what_follows_the_head_is_not_counted() {
        let mut head = b"POST / HTTP/1.1\r\nA: b\r\n\r\n".to_vec();
        head.extend_from_slice(&[b'x'; 500]);
        assert_eq!(every_step(&head), Scan::Complete);
    }

    #[test]
    fn each_rule_is_named_as_soon_as_it_is_broken() {
        assert_eq!(
            every_step(b"GET /0123456789ab HTTP/1.1\r\n\r\n"),
            Scan::TooLarge(Oversize::RequestLine)
        );
        assert_eq!(
            every_step(b"GET / HTTP/1.1\r\nCookie: 0123456789\r\n\r\n"),
            Scan::TooLarge(Oversize::HeaderLine)
        );
        assert_eq!(
            every_step(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\nF: 6\r\n\r\n"),
            Scan::TooLarge(Oversize::Head)
        );
        // Without waiting for the line to end: a header that never ends is refused at its
        // limit, however it is sent.
        let mut endless = b"GET / HTTP/1.1\r\nCookie: ".to_vec();
        endless.extend_from_slice(&[b'a'; 1000]);
        for step in [1, 7, 1000] {
            let (verdict, fed) = scan_in_steps(&endless, step);
            assert_eq!(verdict, Scan::TooLarge(Oversize::HeaderLine), "step {step}");
            assert!(
                fed <= 16 + 17 + step,
                "refused after {fed} bytes at step {step}"
            );
        }
    }

    #[test]
    fn reset_starts_the_next_head() {
        let mut s = HeadScan::new(LIMITS);
        assert_eq!(
            s.feed(b"GET / HTTP/1.1\r\nA: 0123456\r\n\r\n"),
            Scan::Complete
        );
        s.reset();
        // A fresh head: its first line is a request line again, and the total starts at 0.
        assert_eq!(
            s.feed(b"GET /0123456789ab"),
            Scan::TooLarge(Oversize::RequestLine)
        );
        s.reset();
        assert_eq!(
            s.feed(b"GET / HTTP/1.1\r\nA: 0123456\r\n\r\n"),
            Scan::Complete
        );
    }
}
