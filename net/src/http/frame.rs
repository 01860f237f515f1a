//! Where one HTTP/1.1 request ends in a connection's byte stream, so that
//! [`crate::http::conn::GlommioIo`] hands hyper one request at a time.
//!
//! hyper reads pipelined requests ahead and, when one of them is malformed,
//! drops the answers it has not yet written. So the connection gives hyper the
//! next request only once the previous one is answered; [`Framer`] finds the
//! end of each request (its head, then a `Content-Length` body or a chunked
//! one) and refuses a head with both `Content-Length` and `Transfer-Encoding`
//! (a smuggling vector hyper would accept). It also refuses a chunked body
//! that hyper would not read, as strictly as hyper reads it: hyper ends the
//! connection on such a body without an answer. It never judges anything
//! else: a head it cannot make sense of is passed on whole, and hyper answers
//! it. A head is read line by line as it passes, keeping only the lines that
//! decide its framing, so the framer never holds a copy of it.

/// What the framer is reading.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// The current head, read as it passes.
    Head(HeadScan),
    /// Bytes of a `Content-Length` body still to come.
    Body(u64),
    /// A chunk-size line (or a trailer line, after the last chunk) so far.
    ChunkLine { line: Vec<u8>, trailers: bool },
    /// Bytes of chunk data, then its CRLF, still to come.
    ChunkData(u64),
    /// The request is complete: nothing more until [`Framer::next_request`].
    Done,
    /// Framing is unknown (an unreadable head): everything goes to hyper.
    Opaque,
}

/// A head read line by line as its bytes pass, keeping only what decides
/// its framing: a copy of the whole head would double what a big head holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct HeadScan {
    /// Bytes of the head passed on so far.
    passed: usize,
    /// A byte other than the empty lines hyper skips before a request line came.
    started: bool,
    /// The request line has ended.
    past_request_line: bool,
    /// The current line so far, while it may be a `Content-Length` or
    /// `Transfer-Encoding` line; no other line is kept.
    line: Vec<u8>,
    /// The current line is of no interest: its bytes are not kept.
    skipping: bool,
    /// The last `Content-Length` value, when it was a number.
    length: Option<u64>,
    /// `Content-Length` lines seen.
    lengths: u32,
    /// A `Transfer-Encoding` line was seen.
    encoded: bool,
    /// The last `Transfer-Encoding` ends in `chunked`.
    chunked: bool,
}

/// The header names that decide a request's framing, lower case with their colon.
const FRAMING_HEADERS: [&[u8]; 2] = [b"content-length:", b"transfer-encoding:"];

impl HeadScan {
    /// Reads `bytes` of the head as they pass.
    fn read(&mut self, mut bytes: &[u8]) {
        self.passed += bytes.len();
        while let Some(newline) = memchr::memchr(b'\n', bytes) {
            self.keep(&bytes[..newline]);
            self.end_line();
            bytes = &bytes[newline + 1..];
        }
        self.keep(bytes);
    }

    /// Keeps part of the current line while it may name a framing header.
    fn keep(&mut self, part: &[u8]) {
        if self.skipping || !self.past_request_line || part.is_empty() {
            return;
        }
        // The line so far, then as much of `part` as a header name still needs:
        // a line is copied only while it may be one.
        let line = &self.line;
        let possible = FRAMING_HEADERS.iter().any(|header| {
            let (had, has) = (line.len().min(header.len()), (line.len() + part.len()).min(header.len()));
            line[..had].eq_ignore_ascii_case(&header[..had])
                && part[..has - had].eq_ignore_ascii_case(&header[had..has])
        });
        if possible {
            self.line.extend_from_slice(part);
        } else {
            self.skipping = true;
            // Cleared, not dropped: the head's next line reuses the room.
            self.line.clear();
        }
    }

    /// A line ended: a framing header's value is noted.
    fn end_line(&mut self) {
        if !self.past_request_line {
            self.past_request_line = true;
            return;
        }
        self.skipping = false;
        let mut line = std::mem::take(&mut self.line);
        self.note(line.strip_suffix(b"\r").unwrap_or(&line));
        // Kept with its room for the next line: one allocation per head, not per line.
        line.clear();
        self.line = line;
    }

    /// Notes a whole header `line` if it is a framing header.
    fn note(&mut self, line: &[u8]) {
        let Some(colon) = line.iter().position(|&b| b == b':') else { return };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.eq_ignore_ascii_case(b"content-length") {
            self.lengths += 1;
            self.length = std::str::from_utf8(value).ok().and_then(|v| v.parse::<u64>().ok());
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.encoded = true;
            self.chunked = value.eq_ignore_ascii_case(b"chunked") || value.ends_with(b"chunked");
        }
    }

    /// What follows the head, or why the request is refused.
    fn framing(&self) -> Result<State, Refused> {
        Ok(match (self.encoded, self.lengths, self.length) {
            (true, 1.., _) => return Err(Refused("a request with both Content-Length and Transfer-Encoding")),
            (true, _, _) if self.chunked => State::ChunkLine { line: Vec::new(), trailers: false },
            // A bad or repeated length, or an encoding hyper refuses: hyper answers it.
            (true, _, _) | (false, 2.., _) | (false, 1, None) => State::Opaque,
            (false, 1, Some(0)) | (false, 0, _) => State::Done,
            (false, 1, Some(n)) => State::Body(n),
        })
    }
}

/// Finds request boundaries; see the module documentation.
#[derive(Debug)]
pub struct Framer {
    state: State,
    max_head: usize,
    /// The length of the last whole head passed on.
    last_head: usize,
    /// What the current chunked body has sent besides its data.
    extras: ChunkExtras,
}

/// What a chunked body sends besides its data, which hyper limits (16 KiB,
/// 100 trailers) and the framer holds to [`MAX_CHUNK_EXTRA_BYTES`] and
/// [`MAX_TRAILERS`].
#[derive(Debug, Default)]
struct ChunkExtras {
    /// Bytes of chunk extensions and trailers.
    bytes: usize,
    /// Trailer lines.
    trailers: usize,
}

/// A request the framer refuses before hyper sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused(pub &'static str);

impl Framer {
    pub fn new(max_head: usize) -> Self {
        Self { state: State::Head(HeadScan::default()), max_head, last_head: 0, extras: ChunkExtras::default() }
    }

    /// A framer that passes everything on (the stream's framing is lost).
    pub fn opaque() -> Self {
        Self { state: State::Opaque, max_head: 0, last_head: 0, extras: ChunkExtras::default() }
    }

    /// True when the current request has been passed on whole.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The bytes of capacity the framer holds for the current head's framing
    /// line (or chunk line), which the connection's memory charge follows.
    pub fn held(&self) -> usize {
        match &self.state {
            State::Head(scan) => scan.line.capacity(),
            State::ChunkLine { line, .. } => line.capacity(),
            _ => 0,
        }
    }

    /// Bytes of the current head passed on so far; past it, the whole head's.
    pub fn head_passed(&self) -> usize {
        match &self.state {
            State::Head(scan) => scan.passed,
            _ => self.last_head,
        }
    }

    /// True once a byte of the current request's head has come: passed on,
    /// or among the `unpassed` bytes the connection still holds.
    pub fn head_begun(&self, unpassed: usize) -> bool {
        matches!(&self.state, State::Head(scan) if scan.passed + unpassed > 0)
    }

    /// True while the framer reads a head or a chunk line, not a body.
    pub fn in_head(&self) -> bool {
        matches!(self.state, State::Head(_) | State::ChunkLine { .. })
    }

    /// Starts looking for the next request's head.
    pub fn next_request(&mut self) {
        if self.state == State::Done {
            self.state = State::Head(HeadScan::default());
            self.extras = ChunkExtras::default();
        }
    }

    /// How many bytes at the front of `pending` belong to the current request
    /// and may go to hyper now; the state moves past them (the caller hands
    /// them all before asking again). 0 means more bytes are needed, or the
    /// request is done.
    pub fn take(&mut self, pending: &[u8]) -> Result<usize, Refused> {
        let mut at = 0;
        while at < pending.len() {
            let rest = &pending[at..];
            let used = match &mut self.state {
                State::Done => break,
                State::Opaque => rest.len(),
                State::Head(_) => match self.head(rest)? {
                    0 => break,
                    used => used,
                },
                State::Body(left) => {
                    let used = rest.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= used as u64;
                    if *left == 0 {
                        self.state = State::Done;
                    }
                    used
                }
                State::ChunkData(left) => {
                    let used = rest.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    // The last two bytes of `left` are the CRLF after the data.
                    let data = usize::try_from(left.saturating_sub(2)).unwrap_or(usize::MAX).min(used);
                    let crlf = &b"\r\n"[2 - (*left).min(2) as usize..];
                    if !crlf.starts_with(&rest[data..used]) {
                        return Err(Refused("a chunked body whose chunk is not followed by CRLF"));
                    }
                    *left -= used as u64;
                    if *left == 0 {
                        self.state = State::ChunkLine { line: Vec::new(), trailers: false };
                    }
                    used
                }
                State::ChunkLine { .. } => self.chunk_line(rest)?,
            };
            at += used;
        }
        Ok(at)
    }

    /// Reads a head at the front of `rest`: the bytes it takes, or 0 while
    /// nothing more can go. A head's bytes go on as they come (no copy of
    /// the head is held), all but the last three, which may begin the blank
    /// line that ends it: hyper gets the whole head only once it is checked.
    /// Those three are the front of the next `rest`, so the blank line is
    /// always found in `rest` alone. Lines end in CRLF or, as hyper also
    /// reads them, a bare LF; empty lines before the request line, which hyper
    /// skips (RFC 9112, section 2.2), pass on as they come.
    fn head(&mut self, rest: &[u8]) -> Result<usize, Refused> {
        let State::Head(scan) = &mut self.state else { unreachable!("in a head") };
        let lead = if scan.started { 0 } else { rest.iter().take_while(|&&b| b == b'\r' || b == b'\n').count() };
        scan.passed += lead;
        if lead == rest.len() {
            return Ok(lead);
        }
        scan.started = true;
        let line = &rest[lead..];
        let Some((newline, blank)) = blank_line(line) else {
            if scan.passed + line.len() > self.max_head {
                // hyper answers 431 for it.
                self.state = State::Opaque;
                return Ok(rest.len());
            }
            let more = line.len().saturating_sub(3);
            scan.read(&line[..more]);
            return Ok(lead + more);
        };
        // The last line's newline ends it; the blank line's is not part of any.
        scan.read(&line[..=newline]);
        self.last_head = scan.passed + blank;
        self.state = scan.framing()?;
        Ok(lead + newline + 1 + blank)
    }

    /// Reads part of a chunk-size or trailer line; returns the bytes taken,
    /// or why the body is refused. The lines are read as strictly as hyper
    /// reads them: hyper ends a connection on a chunked body it cannot read
    /// without answering it, so the framer refuses it first, with an answer.
    fn chunk_line(&mut self, rest: &[u8]) -> Result<usize, Refused> {
        let State::ChunkLine { line, trailers } = &mut self.state else { unreachable!("in a chunk line") };
        let (used, complete) = match memchr::memchr(b'\n', rest) {
            Some(i) => (i + 1, true),
            None => (rest.len(), false),
        };
        line.extend_from_slice(&rest[..used]);
        if line.len() > MAX_CHUNK_LINE {
            return Err(Refused("a chunked body with a line longer than 4096 bytes"));
        }
        if !complete {
            return Ok(used);
        }
        let text = match line.strip_suffix(b"\r\n") {
            Some(text) if !text.contains(&b'\r') => text,
            _ => return Err(Refused("a chunked body with a line that does not end in CRLF")),
        };
        let extras = &mut self.extras;
        let next = match (*trailers, text.is_empty()) {
            (true, true) => State::Done,
            (true, false) => {
                (extras.bytes, extras.trailers) = (extras.bytes + text.len(), extras.trailers + 1);
                State::ChunkLine { line: Vec::new(), trailers: true }
            }
            (false, _) => {
                let (size, extension) = chunk_size(text).ok_or(Refused(BAD_CHUNK_SIZE))?;
                extras.bytes += extension;
                match size {
                    0 => State::ChunkLine { line: Vec::new(), trailers: true },
                    // The data, then its CRLF.
                    n => State::ChunkData(n.checked_add(2).ok_or(Refused(BAD_CHUNK_SIZE))?),
                }
            }
        };
        if extras.bytes > MAX_CHUNK_EXTRA_BYTES || extras.trailers > MAX_TRAILERS {
            return Err(Refused(
                "a chunked body with more than 8 KiB of chunk extensions and trailers, or 64 trailers",
            ));
        }
        self.state = next;
        Ok(used)
    }
}

/// The longest chunk-size or trailer line the framer reads.
const MAX_CHUNK_LINE: usize = 4096;

/// The most bytes of chunk extensions and trailers a body may have: well
/// inside hyper's limit, so that hyper never ends the connection on them
/// unanswered.
const MAX_CHUNK_EXTRA_BYTES: usize = 8 * 1024;

/// The most trailers a body may have, likewise.
const MAX_TRAILERS: usize = 64;

const BAD_CHUNK_SIZE: &str = "a chunked body with a chunk size that is not a hexadecimal number of 64 bits";

/// Where a head ends in `bytes`: the newline that ends its last line, and
/// the length of the blank line after it (LF or CRLF).
fn blank_line(bytes: &[u8]) -> Option<(usize, usize)> {
    memchr::memchr_iter(b'\n', bytes).find_map(|newline| match &bytes[newline + 1..] {
        [b'\n', ..] => Some((newline, 1)),
        [b'\r', b'\n', ..] => Some((newline, 2)),
        _ => None,
    })
}

/// The size a chunk-size line (its CRLF removed) gives, as hyper reads it
/// (hexadecimal digits, spaces or tabs, then an optional `;` extension), and
/// the length of its extension.
fn chunk_size(line: &[u8]) -> Option<(u64, usize)> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let spaces = line[digits..].iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    let after = &line[digits + spaces..];
    if digits == 0 || !(after.is_empty() || after[0] == b';') {
        return None;
    }
    let size = line[..digits].iter().try_fold(0u64, |size, &b| {
        let digit = (b as char).to_digit(16)?;
        size.checked_mul(16)?.checked_add(u64::from(digit))
    })?;
    Some((size, after.len()))
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(stream: &[u8]) -> Result<Vec<usize>, Refused> {
        let mut framer = Framer::new(1024);
        let mut sizes = Vec::new();
        let mut at = 0;
        while at < stream.len() {
            let n = framer.take(&stream[at..])?;
            assert!(framer.is_done(), "request at {at} incomplete");
            sizes.push(n);
            at += n;
            framer.next_request();
        }
        Ok(sizes)
    }

    #[test]
    fn pipelined_requests_split_at_their_ends() {
        let post = b"POST /e HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        let get = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
        let chunked = b"POST /e HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n0\r\nA: b\r\n\r\n";
        let stream = [&post[..], get, chunked, get].concat();
        assert_eq!(split(&stream).unwrap(), [post.len(), get.len(), chunked.len(), get.len()]);
    }

    #[test]
    fn a_request_arriving_in_pieces_is_taken_as_it_comes() {
        let mut framer = Framer::new(1024);
        let start = b"POST / HTTP/1.1\r\nContent-Le";
        assert_eq!(framer.take(start).unwrap(), start.len() - 3, "a head goes on but for its last bytes");
        let whole = b"ngth: 4\r\n\r\nab";
        assert_eq!(framer.take(&[&start[start.len() - 3..], whole].concat()).unwrap(), 3 + whole.len());
        assert!(!framer.is_done());
        assert_eq!(framer.take(b"cdGET").unwrap(), 2);
        assert!(framer.is_done());
    }

    proptest::proptest! {
        /// Any bytes, in any pieces: the framer never panics, never takes more
        /// than it was given, and takes a whole stream of valid requests.
        #[test]
        fn any_bytes_in_any_pieces_are_framed_safely(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            cuts in proptest::collection::vec(1usize..64, 1..16),
        ) {
            let mut framer = Framer::new(256);
            let (mut pending, mut at) = (Vec::new(), 0);
            for cut in cuts.iter().cycle().take(64) {
                let end = (at + cut).min(bytes.len());
                pending.extend_from_slice(&bytes[at..end]);
                at = end;
                match framer.take(&pending) {
                    Ok(n) => {
                        proptest::prop_assert!(n <= pending.len());
                        pending.drain(..n);
                    }
                    Err(_) => break,
                }
                if framer.is_done() {
                    framer.next_request();
                }
            }
        }
    }

    /// Feeds `stream` to a framer in pieces of the `cuts` sizes, as a
    /// connection does: the bytes taken when the first request is done, the
    /// refusal, or `None` when it never is (hyper gets the rest unframed).
    fn first_request(stream: &[u8], cuts: &[usize]) -> Result<Option<usize>, Refused> {
        let mut framer = Framer::new(64 * 1024);
        let (mut pending, mut at, mut taken) = (Vec::new(), 0, 0);
        for cut in cuts.iter().cycle() {
            let end = (at + cut).min(stream.len());
            pending.extend_from_slice(&stream[at..end]);
            at = end;
            let n = framer.take(&pending)?;
            pending.drain(..n);
            taken += n;
            if framer.is_done() {
                return Ok(Some(taken));
            }
            if at == stream.len() && n == 0 {
                return Ok(None);
            }
        }
        unreachable!("cuts is never empty")
    }

    /// A header line of the kinds that decide framing, and others.
    fn header_line() -> impl proptest::strategy::Strategy<Value = (String, String)> {
        use proptest::prelude::*;
        let value = prop_oneof![
            (0u32..40).prop_map(|n| ("Content-Length".to_string(), n.to_string())),
            prop_oneof![Just("chunked"), Just("gzip"), Just("gzip, chunked"), Just("CHUNKED"), Just("gzip, CHUNKED")]
                .prop_map(|v| ("Transfer-Encoding".to_string(), v.to_string())),
            "[a-z ]{0,300}".prop_map(|v| ("X-Pad".to_string(), v)),
            Just(("Content-Lengthy".to_string(), "7".to_string())),
        ];
        (value, any::<u32>()).prop_map(|((name, value), case)| {
            let name = name
                .chars()
                .enumerate()
                .map(|(i, c)| if case >> (i % 32) & 1 == 1 { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() })
                .collect();
            (name, value)
        })
    }

    proptest::proptest! {
        /// A head's framing does not depend on how its bytes arrive, and is
        /// the one its lines call for: one length, a chunked encoding, no
        /// body, or refused for both (or left to hyper otherwise).
        #[test]
        fn a_heads_framing_is_what_its_lines_say_however_it_arrives(
            headers in proptest::collection::vec(header_line(), 0..6),
            cuts in proptest::collection::vec(1usize..40, 1..8),
            ends in proptest::collection::vec(proptest::prop_oneof!["\r\n", "\n"], 8),
            lead in "(\r\n|\n){0,3}",
        ) {
            // Lines end in CRLF or a bare LF, as hyper reads them, and empty
            // lines before the request line are hyper's to skip.
            let mut ends = ends.iter().cycle();
            let mut head = format!("{lead}POST /api/v1/events HTTP/1.1{}", ends.next().unwrap());
            for (name, value) in &headers {
                head.push_str(&format!("{name}: {value}{}", ends.next().unwrap()));
            }
            head.push_str(ends.next().unwrap());
            let named = |wanted: &'static str| headers.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(wanted));
            let lengths: Vec<u64> = named("content-length").map(|(_, v)| v.parse().unwrap()).collect();
            let chunked = named("transfer-encoding")
                .next_back()
                .map(|(_, v)| v.eq_ignore_ascii_case("chunked") || v.ends_with("chunked"));
            let chunks = "5\r\nhello\r\n0\r\n\r\n";
            let (body, expected) = match (chunked, lengths.as_slice()) {
                (Some(_), [_, ..]) => (String::new(), Err(Refused("a request with both Content-Length and Transfer-Encoding"))),
                (Some(true), []) => (chunks.to_string(), Ok(Some(head.len() + chunks.len()))),
                (Some(false), []) | (None, [_, _, ..]) => (String::new(), Ok(None)),
                (None, [n]) => ("b".repeat(*n as usize), Ok(Some(head.len() + *n as usize))),
                (None, []) => (String::new(), Ok(Some(head.len()))),
            };
            let stream = format!("{head}{body}GET /health HTTP/1.1\r\n\r\n").into_bytes();
            proptest::prop_assert_eq!(first_request(&stream, &[stream.len()]), expected);
            proptest::prop_assert_eq!(first_request(&stream, &cuts), expected);
        }
    }

    #[test]
    fn a_long_head_is_passed_on_without_a_copy_of_it() {
        let mut framer = Framer::new(64 * 1024);
        let head = format!("POST / HTTP/1.1\r\nX-Pad: {}\r\nContent-Length: 2\r\n\r\nab", "h".repeat(60_000));
        let (mut pending, mut taken) = (Vec::new(), 0);
        for piece in head.as_bytes().chunks(16 * 1024) {
            pending.extend_from_slice(piece);
            let n = framer.take(&pending).unwrap();
            pending.drain(..n);
            taken += n;
            assert!(framer.held() < 1024, "the framer holds {} bytes", framer.held());
        }
        assert!(framer.is_done());
        assert_eq!(taken, head.len());
        assert_eq!(framer.head_passed(), head.len() - 2, "hyper was handed the whole head, then its body");
    }

    /// A chunked POST whose body is `chunks`, with a request after it.
    fn chunked(chunks: &[u8]) -> Vec<u8> {
        [b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", chunks, b"GET / HTTP/1.1\r\n\r\n"].concat()
    }

    #[test]
    fn chunked_bodies_hyper_reads_are_framed_whole() {
        let bodies: [&[u8]; 5] = [
            b"0\r\n\r\n",
            b"A\r\n0123456789\r\n0\r\n\r\n",
            b"1 \t;name=value\r\nx\r\n0;last\r\nTrailer: yes\r\nAnother: one\r\n\r\n",
            b"00000002\r\nab\r\n0\r\n\r\n",
            b"ffFF\r\n",
        ];
        for body in &bodies[..4] {
            let stream = chunked(body);
            let whole = stream.len() - b"GET / HTTP/1.1\r\n\r\n".len();
            for cuts in [&[stream.len()][..], &[1], &[3, 1, 7]] {
                assert_eq!(first_request(&stream, cuts), Ok(Some(whole)), "{}", String::from_utf8_lossy(body));
            }
        }
        let mut framer = Framer::new(1024);
        framer.take(&[b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", bodies[4]].concat()).unwrap();
        assert_eq!(framer.state, State::ChunkData(0xffff + 2), "a size in either case");
    }

    #[test]
    fn chunked_bodies_hyper_would_not_read_are_refused() {
        let refused: [(&[u8], &str); 10] = [
            (b"zz\r\nab\r\n0\r\n\r\n", "not hexadecimal"),
            (b"+2\r\nab\r\n0\r\n\r\n", "a sign"),
            (b" 2\r\nab\r\n0\r\n\r\n", "space before the size"),
            (b"2 x\r\nab\r\n0\r\n\r\n", "text after the size's spaces"),
            (b"10000000000000000\r\n", "past 64 bits"),
            (b"2\r\nabc\r\n0\r\n\r\n", "data past its size"),
            (b"2\r\nabXX0\r\n\r\n", "data not followed by CRLF"),
            (b"2\nab\r\n0\r\n\r\n", "a size line ending in a bare LF"),
            (b"2;a\rb\r\nab\r\n0\r\n\r\n", "a bare CR in an extension"),
            (b"0\r\nTrailer: x\n\r\n", "a trailer ending in a bare LF"),
        ];
        for (body, what) in refused {
            let stream = chunked(body);
            for cuts in [&[stream.len()][..], &[1], &[2, 5]] {
                assert!(first_request(&stream, cuts).is_err(), "{what}, in pieces of {cuts:?}");
            }
        }
        let long_line = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(MAX_CHUNK_LINE));
        assert!(first_request(&chunked(long_line.as_bytes()), &[100]).is_err(), "a line past 4096 bytes");
        let extensions = format!("1;{}\r\nx\r\n", "e".repeat(3000)).repeat(3) + "0\r\n\r\n";
        assert!(first_request(&chunked(extensions.as_bytes()), &[512]).is_err(), "extensions past 8 KiB");
        let trailers = "0\r\n".to_string() + &"T: t\r\n".repeat(MAX_TRAILERS + 1) + "\r\n";
        assert!(first_request(&chunked(trailers.as_bytes()), &[64]).is_err(), "more than 64 trailers");
        let at_the_limits = "0\r\n".to_string() + &"T: t\r\n".repeat(MAX_TRAILERS) + "\r\n";
        assert!(first_request(&chunked(at_the_limits.as_bytes()), &[64]).unwrap().is_some(), "64 trailers");
    }

    #[test]
    fn empty_lines_before_a_request_line_go_on_with_its_head() {
        let stream = b"\r\n\n\r\nGET /health HTTP/1.1\r\n\r\nGET /health HTTP/1.1\r\n\r\n";
        let first = stream.len() / 2 + 3;
        for cuts in [&[stream.len()][..], &[1], &[2, 3]] {
            assert_eq!(first_request(stream, cuts), Ok(Some(first)), "in pieces of {cuts:?}");
        }
        let mut framer = Framer::new(1024);
        assert_eq!(framer.take(b"\r\n\r\n").unwrap(), 4, "empty lines alone go on, and are no request");
        assert!(!framer.is_done());
    }

    #[test]
    fn length_with_encoding_is_refused_and_odd_heads_go_to_hyper() {
        let both = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert!(Framer::new(1024).take(both).is_err());
        let twice = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcGET";
        assert_eq!(Framer::new(1024).take(twice).unwrap(), twice.len(), "hyper answers it");
        let garbage = vec![b'x'; 2000];
        assert_eq!(Framer::new(1024).take(&garbage).unwrap(), 2000, "past the head limit hyper answers 431");
    }
}
