//! Sessions, topic names, subscription patterns and the session-to-shard map.
//!
//! A topic is dot-separated tokens: `balatro.<session>.<event_type>`,
//! `balatro.<session>.aggregated` and `deadletter`. Patterns use NATS wildcards
//! (`*` one token, `>` the rest). Every topic of a session maps to the same shard,
//! which is what keeps a session in order. This module must never hold state of
//! its own (a [`TopicWriter`] belongs to its caller).

use std::borrow::Cow;
use std::net::IpAddr;

/// The topic of everything that could not be accepted.
pub const DEADLETTER: &str = "deadletter";

/// The session key of a client that named none. Field mods send no session id,
/// and a mod's requests each use a new connection, so the best stable key is the
/// peer's IP address plus the `source` it reports: game instances on one host that
/// run field mods share a session (their events still keep arrival order).
pub fn derived_session(peer: IpAddr, source: &str) -> String {
    let source = if source.is_empty() { "unknown" } else { source };
    format!("{peer}-{source}")
}

/// Makes a value usable as one topic token: `.`, `*`, `>` and white space become `_`.
pub fn token(value: &str) -> Cow<'_, str> {
    if value.is_empty() {
        Cow::Borrowed("_")
    } else if value.contains(is_token_breaker) {
        let mut owned = String::with_capacity(value.len());
        push_token(value, &mut owned);
        Cow::Owned(owned)
    } else {
        Cow::Borrowed(value)
    }
}

/// `balatro.<session>.<event_type>`.
pub fn raw_topic(session: &str, event_type: &str) -> String {
    let mut topic = String::new();
    write_session_part(session, &mut topic);
    push_token(event_type, &mut topic);
    topic
}

/// `balatro.<session>.`, the part of a raw topic before its type, into
/// `out` (cleared first).
fn write_session_part(session: &str, out: &mut String) {
    out.clear();
    out.push_str("balatro.");
    push_token(session, out);
    out.push('.');
}

/// Writes raw topics on the hot path into one reused buffer, keeping the
/// last session's part: a shard's events come in runs of one session, and a
/// derived session (`127.0.0.1-BalatroMCP`) has dots to replace in each.
#[derive(Default)]
pub struct TopicWriter {
    /// The last topic written; its first `prefix_len` bytes are
    /// `balatro.<token of session>.`.
    topic: String,
    /// The session `topic`'s prefix was written for.
    session: String,
    /// The length of that prefix (0 before the first topic).
    prefix_len: usize,
}

impl TopicWriter {
    /// [`raw_topic`] of `session` and `event_type`, borrowed from the writer.
    pub fn write(&mut self, session: &str, event_type: &str) -> &str {
        if self.prefix_len == 0 || self.session != session {
            write_session_part(session, &mut self.topic);
            self.prefix_len = self.topic.len();
            self.session.clear();
            self.session.push_str(session);
        } else {
            self.topic.truncate(self.prefix_len);
        }
        push_token(event_type, &mut self.topic);
        &self.topic
    }
}

/// [`token`] appended to `out`, with no copy of its own: a derived session
/// (`127.0.0.1-BalatroMCP`) has dots in every event's topic.
fn push_token(value: &str, out: &mut String) {
    if value.is_empty() {
        out.push('_');
    } else if value.bytes().any(may_break_token) && value.contains(is_token_breaker) {
        out.extend(value.chars().map(|c| if is_token_breaker(c) { '_' } else { c }));
    } else {
        out.push_str(value);
    }
}

/// Characters a topic token cannot hold: the separator, the wildcards and white space.
fn is_token_breaker(c: char) -> bool {
    matches!(c, '.' | '*' | '>') || c.is_whitespace()
}

/// Whether a byte may be part of a [`is_token_breaker`] character: one of the
/// ASCII ones, or any byte of a non-ASCII character (white space beyond ASCII).
/// A byte scan first, as event types are short ASCII: decoding each character
/// for `char::is_whitespace` cost about 140 instructions an event
/// (docs/perf.md, "Twenty-ninth pass").
fn may_break_token(byte: u8) -> bool {
    matches!(byte, b'.' | b'*' | b'>' | b'\t' | b'\n' | b'\x0B' | b'\x0C' | b'\r' | b' ') || !byte.is_ascii()
}

/// `balatro.<session>.aggregated`.
pub fn aggregated_topic(session: &str) -> String {
    format!("balatro.{}.aggregated", token(session))
}

/// The shard that owns a session.
pub fn shard_for(session: &str, shards: usize) -> usize {
    (xxhash_rust::xxh3::xxh3_64(session.as_bytes()) % shards.max(1) as u64) as usize
}

/// A subscription pattern in NATS syntax, optionally followed by exclusions:
/// `balatro.> -balatro.*.aggregated` is every raw topic (subjects never contain
/// spaces, so the space-separated form cannot be mistaken for a subject).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    tokens: Vec<String>,
    except: Vec<Vec<String>>,
}

/// A pattern that is not well formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("the pattern is empty")]
    Empty,
    #[error("token {0} is empty")]
    EmptyToken(usize),
    #[error("`>` may only be the last token")]
    TailNotLast,
    #[error("token {0} mixes a wildcard with other characters")]
    MixedWildcard(usize),
    #[error("{0:?}: only exclusions (`-pattern`) may follow the pattern")]
    NotAnExclusion(String),
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let mut parts = text.split_whitespace();
        let tokens = parse_tokens(parts.next().ok_or(PatternError::Empty)?)?;
        let except = parts
            .map(|part| match part.strip_prefix('-') {
                Some(excluded) => parse_tokens(excluded),
                None => Err(PatternError::NotAnExclusion(part.to_string())),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { tokens, except })
    }

    pub fn matches(&self, topic: &str) -> bool {
        matches_tokens(&self.tokens, topic) && !self.except.iter().any(|e| matches_tokens(e, topic))
    }

    /// The pattern without its exclusions, for backends whose filters have none
    /// (they apply [`Pattern::matches`] to what the filter lets through).
    pub fn subject(&self) -> String {
        self.tokens.join(".")
    }
}

fn parse_tokens(text: &str) -> Result<Vec<String>, PatternError> {
    if text.is_empty() {
        return Err(PatternError::Empty);
    }
    let tokens: Vec<String> = text.split('.').map(str::to_string).collect();
    for (i, t) in tokens.iter().enumerate() {
        if t.is_empty() {
            return Err(PatternError::EmptyToken(i));
        }
        if (t.contains('*') || t.contains('>')) && t.len() > 1 {
            return Err(PatternError::MixedWildcard(i));
        }
        if t == ">" && i + 1 != tokens.len() {
            return Err(PatternError::TailNotLast);
        }
    }
    Ok(tokens)
}

fn matches_tokens(tokens: &[String], topic: &str) -> bool {
    let mut parts = topic.split('.');
    for pattern in tokens {
        match (pattern.as_str(), parts.next()) {
            (">", Some(_)) => return true,
            (_, None) => return false,
            ("*", Some(_)) => {}
            (literal, Some(part)) if literal == part => {}
            _ => return false,
        }
    }
    parts.next().is_none()
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.tokens.join("."))?;
        for excluded in &self.except {
            write!(f, " -{}", excluded.join("."))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wildcards_match_like_nats() {
        let p = |s| Pattern::parse(s).unwrap();
        assert!(p("balatro.*.SCORING").matches("balatro.s1.SCORING"));
        assert!(!p("balatro.*.SCORING").matches("balatro.s1.SCORING.x"));
        assert!(p("balatro.s1.>").matches("balatro.s1.aggregated"));
        assert!(!p("balatro.s1.>").matches("balatro.s1"));
        assert!(p(">").matches("deadletter"));
        assert!(!p("balatro.*").matches("balatro.s1.A"));
    }

    #[test]
    fn exclusions_remove_topics_and_survive_display() {
        let raw = Pattern::parse("balatro.> -balatro.*.aggregated").unwrap();
        assert!(raw.matches("balatro.s1.SCORING"));
        assert!(!raw.matches("balatro.s1.aggregated"));
        assert_eq!(raw.subject(), "balatro.>");
        assert_eq!(Pattern::parse(&raw.to_string()).unwrap(), raw);
        assert_eq!(Pattern::parse("a.> b"), Err(PatternError::NotAnExclusion("b".into())));
        assert_eq!(Pattern::parse("a.> -"), Err(PatternError::Empty));
    }

    #[test]
    fn malformed_patterns_are_refused() {
        assert_eq!(Pattern::parse("a.>.b"), Err(PatternError::TailNotLast));
        assert_eq!(Pattern::parse("a..b"), Err(PatternError::EmptyToken(1)));
        assert_eq!(Pattern::parse("a.b*"), Err(PatternError::MixedWildcard(1)));
    }

    #[test]
    fn tokens_never_split_a_topic() {
        assert_eq!(raw_topic("127.0.0.1-BalatroMCP", "SCORING"), "balatro.127_0_0_1-BalatroMCP.SCORING");
        assert_eq!(aggregated_topic("a b"), "balatro.a_b.aggregated");
    }

    proptest! {
        #[test]
        fn every_session_topic_matches_its_session_pattern(session in "\\PC{1,20}", kind in "[A-Za-z_.]{1,12}") {
            let topic = raw_topic(&session, &kind);
            let session_pattern = Pattern::parse(&format!("balatro.{}.>", token(&session))).unwrap();
            prop_assert!(session_pattern.matches(&topic));
            prop_assert!(Pattern::parse("balatro.*.*").unwrap().matches(&topic));
            prop_assert_eq!(topic.split('.').count(), 3);
        }

        /// A token is its value with every breaker made `_` (ASCII white space
        /// and white space outside ASCII included), and a topic is made of tokens.
        #[test]
        fn a_topic_is_written_as_its_tokens_read(
            session in "[\\PC\t\n\u{b}\u{c}\r \u{85}\u{a0}\u{2003}.*>]{0,24}",
            kind in "[\\PC\t\n\u{b}\u{c}\r \u{85}\u{a0}\u{2003}.*>]{0,12}",
        ) {
            let spelled = |v: &str| if v.is_empty() { "_".to_string() } else { v.replace(is_token_breaker, "_") };
            prop_assert_eq!(token(&session).into_owned(), spelled(&session));
            prop_assert_eq!(raw_topic(&session, &kind), format!("balatro.{}.{}", spelled(&session), spelled(&kind)));
        }

        /// The writer's reuse of a session's part never shows: each topic it
        /// writes is `raw_topic`'s, whatever sessions and types follow one another.
        #[test]
        fn the_topic_writer_writes_what_raw_topic_writes(
            pairs in proptest::collection::vec((proptest::sample::select(vec!["", "a.b", "s1", "s 2", "s1."]), "[A-Z_.]{0,6}"), 1..12),
        ) {
            let mut writer = TopicWriter::default();
            for (session, kind) in pairs {
                prop_assert_eq!(writer.write(session, &kind), raw_topic(session, &kind));
            }
        }

        #[test]
        fn shard_is_stable_and_in_range(session in ".*", shards in 1usize..64) {
            let s = shard_for(&session, shards);
            prop_assert!(s < shards);
            prop_assert_eq!(s, shard_for(&session, shards));
        }
    }
}
