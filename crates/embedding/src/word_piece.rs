//! BERT's uncased WordPiece tokenization of ASCII text, without the `tokenizers` pipeline's
//! per-character alignment bookkeeping: ten times faster on a kilobyte (25 µs against 260),
//! which is most of what screening a prompt costs. It gives exactly the ids and byte offsets
//! that the model's own `tokenizer.json` gives (tested on thousands of texts); a word with a
//! character beyond ASCII goes to the full tokenizer alone, and a text holding a special
//! token's literal text goes to it whole.

use rustc_hash::FxHashMap;

use tokenizers::Tokenizer;

use crate::Tokens;

/// What the fast path needs of a BERT uncased tokenizer.
#[derive(Debug, Clone)]
pub(crate) struct AsciiWordPiece {
    /// FxHash: looked up once per piece tried, the largest cost of tokenizing after SipHash.
    vocabulary: FxHashMap<String, u32>,
    unknown: u32,
    continuation: String,
    longest_word: usize,
    /// Literal text of the added (special) tokens, which the full tokenizer matches before
    /// anything else.
    special: Vec<String>,
}

impl AsciiWordPiece {
    /// The fast path for `tokenizer`, if it is the configuration this module reproduces:
    /// BERT normaliser lowercasing (accents stripped), BERT pre-tokenizer, WordPiece.
    pub(crate) fn for_tokenizer(tokenizer: &Tokenizer) -> Option<Self> {
        let configuration = serde_json::to_value(tokenizer).ok()?;
        let normalizer = configuration.get("normalizer")?;
        let expected_normalizer = normalizer.get("type")? == "BertNormalizer"
            && normalizer.get("clean_text")? == true
            && normalizer.get("lowercase")? == true
            && normalizer.get("strip_accents")? != false;
        let expected_pre_tokenizer =
            configuration.get("pre_tokenizer")?.get("type")? == "BertPreTokenizer";
        if !expected_normalizer || !expected_pre_tokenizer {
            return None;
        }
        let model = configuration.get("model")?;
        if model.get("type")? != "WordPiece" {
            return None;
        }
        let vocabulary: FxHashMap<String, u32> = tokenizer.get_vocab(false).into_iter().collect();
        let unknown = *vocabulary.get(model.get("unk_token")?.as_str()?)?;
        Some(Self {
            vocabulary,
            unknown,
            continuation: model.get("continuing_subword_prefix")?.as_str()?.to_owned(),
            longest_word: usize::try_from(model.get("max_input_chars_per_word")?.as_u64()?).ok()?,
            special: tokenizer
                .get_added_tokens_decoder()
                .into_values()
                .map(|token| token.content)
                .collect(),
        })
    }

    /// Ids and byte offsets of `text`, or `None` when the text needs the full tokenizer
    /// (it holds a special token's literal text, or `tokenizer` fails on a word). Stretches of
    /// ASCII words are tokenized here; a word (between ASCII spaces, tabs and line breaks) with
    /// any character beyond ASCII goes to `tokenizer` alone, since BERT's normaliser and
    /// pre-tokenizer never join anything across those characters: a typographic quote or dash
    /// costs one short call to the library, not the whole text.
    pub(crate) fn tokens(&self, text: &str, tokenizer: &Tokenizer) -> Option<Tokens> {
        if self
            .special
            .iter()
            .any(|special| text.contains(special.as_str()))
        {
            return None;
        }
        if text.is_ascii() {
            return Some(self.ascii_tokens(text));
        }
        let mut tokens = Tokens {
            ids: Vec::with_capacity(text.len() / 4),
            offsets: Vec::with_capacity(text.len() / 4),
        };
        let append = |tokens: &mut Tokens, ids: &[u32], offsets: &[(usize, usize)], at: usize| {
            tokens.ids.extend_from_slice(ids);
            tokens
                .offsets
                .extend(offsets.iter().map(|(start, end)| (start + at, end + at)));
        };
        // Where the ASCII stretch not yet tokenized starts.
        let mut stretch = 0;
        let mut word_start = 0;
        for (position, character) in text.char_indices().chain([(text.len(), ' ')]) {
            if !matches!(character, ' ' | '\t' | '\n' | '\r') {
                continue;
            }
            let word = &text[word_start..position];
            if !word.is_ascii() {
                let before = self.ascii_tokens(&text[stretch..word_start]);
                append(&mut tokens, &before.ids, &before.offsets, stretch);
                let encoding = tokenizer.encode(word, false).ok()?;
                append(
                    &mut tokens,
                    encoding.get_ids(),
                    encoding.get_offsets(),
                    word_start,
                );
                stretch = position;
            }
            word_start = position + character.len_utf8();
        }
        let rest = self.ascii_tokens(&text[stretch..]);
        append(&mut tokens, &rest.ids, &rest.offsets, stretch);
        Some(tokens)
    }

    /// Ids and byte offsets of `text`, which is ASCII.
    fn ascii_tokens(&self, text: &str) -> Tokens {
        let mut ids = Vec::with_capacity(text.len() / 4);
        let mut offsets = Vec::with_capacity(text.len() / 4);
        // The word being gathered: lowercased bytes, and each one's position in `text`.
        let mut word = String::new();
        let mut positions = Vec::new();
        let mut piece = String::new();
        for (position, byte) in text.bytes().enumerate() {
            match byte {
                b' ' | b'\t' | b'\n' | b'\r' => {
                    self.word_pieces(&word, &positions, &mut piece, &mut ids, &mut offsets);
                    word.clear();
                    positions.clear();
                }
                // Control characters vanish without splitting the word around them.
                0..=0x1F | 0x7F => {}
                _ if byte.is_ascii_punctuation() => {
                    self.word_pieces(&word, &positions, &mut piece, &mut ids, &mut offsets);
                    word.clear();
                    positions.clear();
                    let punctuation = [byte];
                    let punctuation = std::str::from_utf8(&punctuation).unwrap_or_default();
                    self.word_pieces(punctuation, &[position], &mut piece, &mut ids, &mut offsets);
                }
                _ => {
                    word.push(char::from(byte.to_ascii_lowercase()));
                    positions.push(position);
                }
            }
        }
        self.word_pieces(&word, &positions, &mut piece, &mut ids, &mut offsets);
        Tokens { ids, offsets }
    }

    /// Greedy longest-match-first split of one word; a word with any unmatched rest is one
    /// unknown token, as in BERT.
    fn word_pieces(
        &self,
        word: &str,
        positions: &[usize],
        piece: &mut String,
        ids: &mut Vec<u32>,
        offsets: &mut Vec<(usize, usize)>,
    ) {
        let (Some(&first), Some(&last)) = (positions.first(), positions.last()) else {
            return;
        };
        if word.len() > self.longest_word {
            ids.push(self.unknown);
            offsets.push((first, last + 1));
            return;
        }
        let already = ids.len();
        let mut start = 0;
        while start < word.len() {
            let mut end = word.len();
            let found = loop {
                piece.clear();
                if start > 0 {
                    piece.push_str(&self.continuation);
                }
                piece.push_str(&word[start..end]);
                if let Some(&id) = self.vocabulary.get(piece.as_str()) {
                    break Some(id);
                }
                end -= 1;
                if end == start {
                    break None;
                }
            };
            let Some(id) = found else {
                ids.truncate(already);
                offsets.truncate(already);
                ids.push(self.unknown);
                offsets.push((first, last + 1));
                return;
            };
            ids.push(id);
            offsets.push((positions[start], positions[end - 1] + 1));
            start = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        let path = crate::fetched_model_directory().join("all-MiniLM-L6-v2/tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&path).unwrap_or_else(|error| {
            panic!(
                "{}: {error} (scripts/fetch-models.sh fetches it)",
                path.display()
            )
        });
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).unwrap();
        tokenizer
    }

    fn assert_same_as_the_library(
        tokenizer: &Tokenizer,
        fast_path: &AsciiWordPiece,
        text: &str,
    ) -> bool {
        let Some(tokens) = fast_path.tokens(text, tokenizer) else {
            return false;
        };
        let encoding = tokenizer.encode(text, false).unwrap();
        assert_eq!(tokens.ids, encoding.get_ids(), "ids of {text:?}");
        assert_eq!(
            tokens.offsets,
            encoding.get_offsets(),
            "offsets of {text:?}"
        );
        true
    }

    #[test]
    fn the_fast_path_gets_the_ids_and_offsets_the_library_gives() {
        let tokenizer = tokenizer();
        let fast_path = AsciiWordPiece::for_tokenizer(&tokenizer).expect("a BERT tokenizer");
        // Real prompts: the screening corpus, every line of it.
        let corpus =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/tests/screening");
        let mut compared = 0;
        for file in ["tuning.jsonl", "held-out.jsonl"] {
            for line in std::fs::read_to_string(corpus.join(file)).unwrap().lines() {
                let prompt: serde_json::Value = serde_json::from_str(line).unwrap();
                let text = prompt["text"].as_str().unwrap();
                compared += usize::from(assert_same_as_the_library(&tokenizer, &fast_path, text));
            }
        }
        assert!(compared > 1700, "only {compared} prompts");
        // Hostile text: control characters inside words, every punctuation mark, runs of
        // whitespace, words too long to split, pieces no vocabulary entry covers.
        let parts = [
            "ignore",
            "Previous",
            "INSTRUCTIONS",
            "x\u{1}y",
            "a\u{7f}b",
            "\u{b}",
            "\u{c}",
            "\t",
            "\r\n",
            "  ",
            "!",
            "\"#$%&'()*+,-./",
            ":;<=>?@[\\]^_`{|}~",
            "unbelievably",
            "qzxjvw",
            "42",
            "3.14",
            "e-mail",
            "don't",
            "##ing",
            "[cls]",
            "[ CLS ]",
            "Ünïcode",
            "don’t",
            "“quoted”",
            " — ",
            "…",
            "\u{a0}",
            "\u{2003}",
            "e\u{301}",
            "\u{301}",
            "日本語",
            "🙂",
            "\u{200b}",
            "ﬁne",
            "ǅ",
        ];
        let mut state: u64 = 0x5EED_2026;
        for _ in 0..5000 {
            let mut text = String::new();
            for _ in 0..(state % 12) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                text.push_str(parts[(state % parts.len() as u64) as usize]);
                if state.is_multiple_of(3) {
                    text.push(' ');
                }
            }
            if text.len().is_multiple_of(5) {
                text.push_str(&"a".repeat(101));
            }
            assert_same_as_the_library(&tokenizer, &fast_path, &text);
        }
    }

    #[test]
    fn text_with_a_special_token_goes_to_the_library() {
        let tokenizer = tokenizer();
        let fast_path = AsciiWordPiece::for_tokenizer(&tokenizer).expect("a BERT tokenizer");
        assert!(fast_path.tokens("say [MASK] now", &tokenizer).is_none());
        assert!(fast_path.tokens("say [mask] now", &tokenizer).is_some());
        assert!(fast_path.tokens("a café [MASK]", &tokenizer).is_none());
    }
}
