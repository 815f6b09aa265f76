//! What the classifier sees of a request: the structural features (sizes, conversation depth,
//! cue counts, tools, requested effort and output format) and the text window whose hashed word
//! and byte n-grams the linear model weighs. Pure: no I/O, no global state but the cue
//! matcher; one buffer allocation per request for the case-folded window.

use std::collections::BTreeMap;

use crate::routing::cues;
use crate::wire::ChatRequest;

/// The explainable structural features of a request, recorded in `RequestRouted`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Features {
    /// Estimated prompt tokens.
    pub prompt_tokens: f64,
    /// Estimated tokens of the last user message.
    pub last_user_tokens: f64,
    /// Lines of the last user message.
    pub lines: f64,
    /// Number of messages.
    pub messages: f64,
    /// User turns.
    pub user_turns: f64,
    /// Code evidence, 0..1.
    pub code: f64,
    /// Math evidence, 0..1.
    pub math: f64,
    /// Multi-step and planning cues, 0..1.
    pub multi_step: f64,
    /// Greeting or small talk, 0 or 1.
    pub greeting: f64,
    /// Tools offered.
    pub tools: f64,
    /// Requested reasoning effort: 0 (none or minimal) to 1 (high).
    pub reasoning_effort: f64,
    /// Structured output requested (`json_schema` or `json_object`), 0 or 1.
    pub structured_output: f64,
}

impl Features {
    /// The features by name, for `RequestRouted`.
    pub fn to_map(&self) -> BTreeMap<String, f64> {
        [
            ("prompt_tokens", self.prompt_tokens),
            ("last_user_tokens", self.last_user_tokens),
            ("lines", self.lines),
            ("messages", self.messages),
            ("user_turns", self.user_turns),
            ("code", self.code),
            ("math", self.math),
            ("multi_step", self.multi_step),
            ("greeting", self.greeting),
            ("tools", self.tools),
            ("reasoning_effort", self.reasoning_effort),
            ("structured_output", self.structured_output),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The linear model's structural inputs, in [`STRUCTURAL`] order, each scaled to about 0..1.
    pub fn inputs(&self) -> [f64; STRUCTURAL.len()] {
        let t = self.prompt_tokens;
        let bucket = |lo: f64, hi: f64| f64::from(u8::from(t >= lo && t < hi));
        [
            (1.0 + t).log2() / 12.0,
            bucket(0.0, 16.0),
            bucket(16.0, 64.0),
            bucket(64.0, 256.0),
            bucket(256.0, 1024.0),
            bucket(1024.0, f64::INFINITY),
            (1.0 + self.last_user_tokens).log2() / 12.0,
            (1.0 + self.lines).log2() / 6.0,
            (1.0 + self.messages).log2() / 5.0,
            self.user_turns.min(10.0) / 10.0,
            f64::from(u8::from(self.user_turns > 1.0)),
            self.code,
            self.math,
            self.multi_step,
            self.greeting,
            f64::from(u8::from(self.tools > 0.0)),
            self.reasoning_effort,
            self.structured_output,
        ]
    }
}

/// Names of the linear model's structural inputs, as the policy document keys their weights.
pub const STRUCTURAL: [&str; 18] = [
    "tokens",
    "tokens<16",
    "tokens<64",
    "tokens<256",
    "tokens<1024",
    "tokens>=1024",
    "last_user_tokens",
    "lines",
    "messages",
    "user_turns",
    "multi_turn",
    "code",
    "math",
    "multi_step",
    "greeting",
    "tools",
    "reasoning_effort",
    "structured_output",
];

/// Features that do not depend on the text window, and the characters of text in the request.
fn request_shape(request: &ChatRequest<'_>) -> (Features, usize) {
    let mut chars = 0usize;
    let mut user_turns = 0usize;
    let mut last_user: Option<(usize, usize)> = None;
    for m in request.messages.iter().rev() {
        let len = m.text_len();
        chars += len;
        if m.role.as_str() == "user" {
            user_turns += 1;
            if last_user.is_none() {
                let mut lines = 0usize;
                if let Some(c) = &m.content {
                    c.for_each_text(|t| {
                        lines += 1 + memchr::memchr_iter(b'\n', t.as_bytes()).count()
                    });
                }
                last_user = Some((len, lines));
            }
        }
    }
    let (last_len, lines) = last_user.unwrap_or((0, 0));
    let f = Features {
        prompt_tokens: (chars as f64 / 4.0).ceil(),
        last_user_tokens: (last_len as f64 / 4.0).ceil(),
        lines: lines as f64,
        messages: request.messages.len() as f64,
        user_turns: user_turns as f64,
        tools: request.tools.len() as f64,
        reasoning_effort: match request.reasoning_effort.as_ref().map(|e| e.as_str()) {
            Some("high") => 1.0,
            Some("medium") => 0.5,
            Some("low") => 0.25,
            _ => 0.0,
        },
        structured_output: match request.response_format.as_ref().map(|f| f.as_str()) {
            Some("json_schema") | Some("json_object") => 1.0,
            _ => 0.0,
        },
        ..Features::default()
    };
    (f, chars)
}

/// Sets the cue features from cue counts over a text of `chars` characters.
fn apply_cues(f: &mut Features, counts: [u32; 4], chars: usize) {
    let [code, math, multi_step, greeting] = counts.map(f64::from);
    f.code = (code / 3.0).min(1.0);
    f.math = (math / 2.0).min(1.0);
    f.multi_step = (multi_step / 2.0).min(1.0);
    f.greeting = if greeting > 0.0 && chars < 80 {
        1.0
    } else {
        0.0
    };
}

/// The hand-written classifier's features: cues counted over the last [`cues::SCAN_BUDGET`]
/// bytes of the whole conversation, as before the learned classifier.
pub fn cue_features(request: &ChatRequest<'_>) -> Features {
    let (mut f, chars) = request_shape(request);
    let mut counts = [0u32; 4];
    let mut budget = cues::SCAN_BUDGET;
    for m in request.messages.iter().rev() {
        if budget > 0
            && let Some(c) = &m.content
        {
            c.for_each_text(|t| {
                let part = tail(t, budget);
                budget -= part.len();
                cues::scan(part, &mut counts);
            });
        }
    }
    apply_cues(&mut f, counts, chars);
    f
}

/// Bytes of user text the learned classifier reads: the user turns from the most recent back,
/// each by its head and tail, so an instruction before or after a long paste is seen and
/// classification stays in microseconds for any prompt size.
pub const WINDOW_BUDGET: usize = 512;

/// The case-folded user text a linear model reads, and the structural features with cues
/// counted over that text.
pub fn window(request: &ChatRequest<'_>, budget: usize) -> (Features, String) {
    let (mut f, chars) = request_shape(request);
    let mut text = Vec::with_capacity(budget + budget / 8 + 8);
    let mut left = budget;
    for m in request.messages.iter().rev() {
        if left == 0 {
            break;
        }
        if m.role.as_str() != "user" {
            continue;
        }
        if let Some(c) = &m.content {
            c.for_each_text(|t| {
                let (head, rest) = head_tail(t, left);
                left -= head.len() + rest.len();
                fold_into(&mut text, head);
                if !rest.is_empty() {
                    fold_into(&mut text, rest);
                }
            });
        }
    }
    // Folding appends whole characters only, so the bytes are UTF-8.
    let text = String::from_utf8(text)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    let mut counts = [0u32; 4];
    cues::scan(&text, &mut counts);
    apply_cues(&mut f, counts, chars);
    (f, text)
}

/// `t` whole when it fits in `max` bytes, else its first third and last two thirds of `max`.
fn head_tail(t: &str, max: usize) -> (&str, &str) {
    if t.len() <= max {
        return (t, "");
    }
    let head = floor_boundary(t, max / 3);
    (&t[..head], tail(t, max - head))
}

fn floor_boundary(t: &str, mut i: usize) -> usize {
    while !t.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The last `max` bytes of `text`, cut at a character boundary.
pub fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// What folding does to each ASCII byte: its lower case, [`SPACE`] for whitespace (as
/// `char::is_whitespace` has it: tab, line feed, vertical tab, form feed, carriage return,
/// space); [`OTHER`] for the bytes of other characters.
static FOLD: [u8; 256] = {
    let mut table = [OTHER; 256];
    let mut b = 0;
    while b < 128 {
        table[b] = (b as u8).to_ascii_lowercase();
        b += 1;
    }
    let mut i = 0;
    let spaces = [b'\t', b'\n', 0x0b, 0x0c, b'\r', b' '];
    while i < spaces.len() {
        table[spaces[i] as usize] = SPACE;
        i += 1;
    }
    table
};

/// [`FOLD`]'s mark of whitespace (folded ASCII is below 0x80, so the marks are not bytes of it).
const SPACE: u8 = 0x81;
/// [`FOLD`]'s mark of a byte of a character beyond ASCII.
const OTHER: u8 = 0x80;

/// Appends `t` lower-cased with whitespace runs as one space, after a separating space. ASCII
/// goes through [`FOLD`] byte by byte (without a branch, for an all-ASCII `t`); other
/// characters are folded as `char::to_lowercase` does.
fn fold_into(out: &mut Vec<u8>, t: &str) {
    let mut space = out.last() == Some(&b' ');
    if !out.is_empty() && !space {
        out.push(b' ');
        space = true;
    }
    let bytes = t.as_bytes();
    if t.is_ascii() {
        // Folding ASCII never lengthens it: write into the space it needs, then cut to size.
        let at = out.len();
        out.resize(at + bytes.len(), 0);
        let mut w = at;
        for &b in bytes {
            let f = FOLD[usize::from(b)];
            let white = f == SPACE;
            if let Some(slot) = out.get_mut(w) {
                *slot = if white { b' ' } else { f };
            }
            w += usize::from(!(white && space));
            space = white;
        }
        out.truncate(w);
        return;
    }
    out.reserve(t.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match FOLD[usize::from(b)] {
            SPACE => {
                i += 1;
                if !space {
                    out.push(b' ');
                    space = true;
                }
            }
            OTHER => {
                let Some(c) = t.get(i..).and_then(|r| r.chars().next()) else {
                    break;
                };
                i += c.len_utf8();
                if c.is_whitespace() {
                    if !space {
                        out.push(b' ');
                        space = true;
                    }
                } else {
                    let mut buf = [0u8; 4];
                    for l in c.to_lowercase() {
                        out.extend_from_slice(l.encode_utf8(&mut buf).as_bytes());
                    }
                    space = false;
                }
            }
            folded => {
                i += 1;
                out.push(folded);
                space = false;
            }
        }
    }
}

/// The kind of a hashed n-gram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gram {
    /// A word.
    Word,
    /// Two adjacent words.
    Bigram,
    /// A run of bytes of the UTF-8 text (of characters, for ASCII).
    Bytes,
}

impl Gram {
    /// Prefix of the n-gram's name in explanations.
    pub fn prefix(self) -> &'static str {
        match self {
            Gram::Word => "word:",
            Gram::Bigram => "bigram:",
            Gram::Bytes => "bytes:",
        }
    }

    fn seed(self) -> u64 {
        match self {
            Gram::Word => 0x9e37_79b9_7f4a_7c15,
            Gram::Bigram => 0xc2b2_ae3d_27d4_eb4f,
            Gram::Bytes => 0x1656_67b1_9e37_79f9,
        }
    }
}

/// Which n-grams a linear model reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NgramSpec {
    /// Word unigrams.
    pub words: bool,
    /// Word bigrams.
    pub bigrams: bool,
    /// Byte n-gram lengths, ascending, each 1 to [`MAX_BYTE_NGRAM`].
    pub bytes: Vec<usize>,
}

/// The longest byte n-gram.
pub const MAX_BYTE_NGRAM: usize = 8;

/// FNV-1a over `bytes` from `seed`, then a finalizing mix: stable across builds and platforms,
/// since the policy's weights are keyed by it.
pub fn hash_bytes(seed: u64, bytes: &[u8]) -> u64 {
    mix(fnv(FNV_START ^ seed, bytes))
}

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a's state after `bytes`, from `h`.
#[inline]
fn fnv(h: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(h, |h, &b| fnv_byte(h, b))
}

/// FNV-1a's state after one byte.
#[inline]
fn fnv_byte(h: u64, b: u8) -> u64 {
    (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
}

fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Han, kana and hangul: each character is a word of its own, since these scripts do not put
/// spaces between words.
fn is_ideographic(c: char) -> bool {
    matches!(u32::from(c), 0x3040..=0x30ff | 0x3400..=0x4dbf | 0x4e00..=0x9fff | 0xac00..=0xd7af | 0xf900..=0xfaff)
}

/// Calls `visit(kind, hash, start, end)` for every n-gram of `text` that `spec` asks for, the
/// words and bigrams first and then the byte n-grams; `text[start..end]` is the n-gram's text.
#[inline]
pub fn for_each_ngram(
    text: &str,
    spec: &NgramSpec,
    mut visit: impl FnMut(Gram, u64, usize, usize),
) {
    for_each_word_ngram(text, spec, &mut visit);
    for_each_byte_ngram(text, spec, |hash, start, end| {
        visit(Gram::Bytes, hash, start, end)
    });
}

/// The word and bigram half of [`for_each_ngram`].
#[inline]
pub fn for_each_word_ngram(
    text: &str,
    spec: &NgramSpec,
    mut visit: impl FnMut(Gram, u64, usize, usize),
) {
    if spec.words || spec.bigrams {
        let bytes = text.as_bytes();
        let mut previous: Option<(u64, usize)> = None;
        // The word being read: its start and its FNV state, folded byte by byte.
        let mut word: Option<(usize, u64)> = None;
        let mut emit =
            |start: usize, end: usize, state: u64, previous: &mut Option<(u64, usize)>| {
                let h = mix(state);
                if spec.words {
                    visit(Gram::Word, h, start, end);
                }
                if spec.bigrams
                    && let Some((ph, ps)) = *previous
                {
                    visit(
                        Gram::Bigram,
                        mix(ph.rotate_left(23) ^ h ^ Gram::Bigram.seed()),
                        ps,
                        end,
                    );
                }
                *previous = Some((h, start));
            };
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b < 0x80 {
                // ASCII, the common case: a word byte extends the word, any other ends it.
                if b.is_ascii_alphanumeric() || b == b'_' {
                    let (_, state) = word.get_or_insert((i, FNV_START ^ Gram::Word.seed()));
                    *state = fnv_byte(*state, b);
                } else if let Some((start, state)) = word.take() {
                    emit(start, i, state, &mut previous);
                }
                i += 1;
                continue;
            }
            let c = text.get(i..).and_then(|t| t.chars().next()).unwrap_or(' ');
            let (len, is_word, alone) = (c.len_utf8(), is_word_char(c), is_ideographic(c));
            let end = (i + len).min(bytes.len());
            if alone || !is_word {
                if let Some((start, state)) = word.take() {
                    emit(start, i, state, &mut previous);
                }
                if alone {
                    emit(
                        i,
                        end,
                        fnv(FNV_START ^ Gram::Word.seed(), &bytes[i..end]),
                        &mut previous,
                    );
                }
            } else {
                let (_, state) = word.get_or_insert((i, FNV_START ^ Gram::Word.seed()));
                *state = fnv(*state, &bytes[i..end]);
            }
            i = end;
        }
        if let Some((start, state)) = word {
            emit(start, bytes.len(), state, &mut previous);
        }
    }
}

/// The byte n-gram half of [`for_each_ngram`]: `visit(hash, start, end)` for each byte n-gram,
/// by end position and then by length.
#[inline]
pub fn for_each_byte_ngram(text: &str, spec: &NgramSpec, mut visit: impl FnMut(u64, usize, usize)) {
    // A rolling key of the last eight bytes: an n-gram's key is its low n bytes, and its hash
    // is one multiply, so every byte of the window costs a few instructions.
    let mut lengths = [(0usize, 0u64, 0u64); MAX_BYTE_NGRAM];
    let mut count = 0;
    for (slot, &n) in lengths.iter_mut().zip(spec.bytes.iter()) {
        let mask = if n >= 8 {
            u64::MAX
        } else {
            (1u64 << (8 * n)) - 1
        };
        *slot = (n, mask, byte_gram_seed(n));
        count += 1;
    }
    let lengths = &lengths[..count];
    let mut key = 0u64;
    for (i, &b) in text.as_bytes().iter().enumerate() {
        key = key << 8 | u64::from(b);
        for &(n, mask, seed) in lengths {
            if n > i + 1 {
                break;
            }
            visit(hash_byte_key(key & mask, seed), i + 1 - n, i + 1);
        }
    }
}

/// The seed of byte n-grams of length `n`.
fn byte_gram_seed(n: usize) -> u64 {
    Gram::Bytes.seed().rotate_left(8 * n as u32)
}

/// The hash of a byte n-gram from its bytes packed into an integer and its length's seed.
#[inline]
fn hash_byte_key(key: u64, seed: u64) -> u64 {
    let h = (key ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^ (h >> 29)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> NgramSpec {
        NgramSpec {
            words: true,
            bigrams: true,
            bytes: vec![3],
        }
    }

    fn grams(text: &str) -> Vec<(Gram, String)> {
        let mut out = Vec::new();
        for_each_ngram(text, &spec(), |g, _, s, e| {
            out.push((
                g,
                String::from_utf8_lossy(&text.as_bytes()[s..e]).into_owned(),
            ))
        });
        out
    }

    #[test]
    fn hashing_is_stable_across_builds() {
        // Pinned values (also computed by an independent implementation): the shipped weights
        // are keyed by these hashes, so they must never change.
        assert_eq!(hash_bytes(0, b""), 0xecba_3df2_c338_3c52);
        assert_eq!(
            hash_bytes(Gram::Word.seed(), b"prove"),
            0x7afb_0a0b_df84_a0a6
        );
        assert_eq!(
            hash_byte_key(u64::from_be_bytes(*b"\0\0\0\0\0abc"), byte_gram_seed(3)),
            0x0474_5bfe_1a83_eba5
        );
        assert_ne!(
            hash_bytes(Gram::Word.seed(), b"prove"),
            hash_bytes(Gram::Bytes.seed(), b"prove")
        );
    }

    #[test]
    fn words_bigrams_and_byte_runs_are_read_with_their_text() {
        let g = grams("lock-free q");
        let words: Vec<_> = g
            .iter()
            .filter(|(k, _)| *k == Gram::Word)
            .map(|(_, t)| t.as_str())
            .collect();
        assert_eq!(words, ["lock", "free", "q"]);
        assert!(g.contains(&(Gram::Bigram, "lock-free".into())));
        assert!(g.contains(&(Gram::Bytes, "k-f".into())));
        assert_eq!(
            g.iter().filter(|(k, _)| *k == Gram::Bytes).count(),
            "lock-free q".len() - 2
        );
    }

    #[test]
    fn ideographs_are_words_of_one_character() {
        let g = grams("水的化学式");
        let words: Vec<_> = g
            .iter()
            .filter(|(k, _)| *k == Gram::Word)
            .map(|(_, t)| t.as_str())
            .collect();
        assert_eq!(words, ["水", "的", "化", "学", "式"]);
        assert!(g.contains(&(Gram::Bytes, "学".into())));
    }

    /// Folding as first written, character by character: the fast fold must match it.
    fn fold_by_chars(out: &mut String, t: &str) {
        if !out.is_empty() && !out.ends_with(' ') {
            out.push(' ');
        }
        for c in t.chars() {
            if c.is_whitespace() {
                if !out.ends_with(' ') {
                    out.push(' ');
                }
            } else {
                out.extend(c.to_lowercase());
            }
        }
    }

    #[test]
    fn folding_matches_folding_by_characters() {
        let texts = [
            "",
            " ",
            "Hello  World",
            "\tLeading and trailing\n\n",
            "Vertical\x0btab\x0cform\rfeed",
            "nul\0byte \u{1f}unit \u{7f}del",
            "ÀÉÎ Ünïcödé\u{a0}NBSP\u{2003}em İstanbul ΣΊΣΥΦΟΣ",
            "水的化学式 是 H₂O",
            "mixed ASCII→arrow  and CAPS",
            "Straße ǅ ﬃ",
        ];
        for a in texts {
            for b in texts {
                let mut fast = Vec::new();
                fold_into(&mut fast, a);
                fold_into(&mut fast, b);
                let mut slow = String::new();
                fold_by_chars(&mut slow, a);
                fold_by_chars(&mut slow, b);
                assert_eq!(String::from_utf8(fast).unwrap(), slow, "{a:?} + {b:?}");
            }
        }
    }

    #[test]
    fn the_window_is_case_folded_user_text_with_head_and_tail_of_long_turns() {
        let paste = "word ".repeat(2000);
        let body = serde_json::json!({"model": "m", "messages": [
            {"role": "system", "content": "SYSTEM PROMPT"},
            {"role": "user", "content": format!("Fix The Typos:\n\n{paste} END")},
        ]})
        .to_string();
        let request = ChatRequest::parse(body.as_bytes()).unwrap();
        let (f, text) = window(&request, 300);
        assert!(text.starts_with("fix the typos: word"), "{text}");
        assert!(text.ends_with("word end"), "{text}");
        assert!(!text.contains("system"));
        assert!(text.len() <= 302);
        assert_eq!(f.user_turns, 1.0);
        assert_eq!(f.lines, 3.0);
    }
}
