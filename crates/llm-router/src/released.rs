//! What of a provider's reply leaves the router: a body built afresh from an allow-list of
//! OpenAI's chat-completion fields, never the provider's body passed on, with every text a
//! person or a program could read collected (each choice's content, refusal and reasoning, each
//! tool call's arguments, each logprob token), so that the gate redacts them all, together.
//!
//! Anything not on the list (a provider's extensions, logprobs' raw `bytes`) is dropped: a
//! field nobody listed is a field nobody redacts.

use serde_json::{Map, Value};

/// Separates the texts of one reply when they go to policy as one text (see [`join`]).
/// Record Separator: no secret or personal-data pattern spans it, and a reply's own are
/// replaced before joining.
pub(crate) const SEPARATOR: char = '\u{1e}';

/// A reply's allow-listed body and its texts, which go back where they came from by
/// [`Released::fill`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Released {
    body: Value,
    /// JSON pointers of the texts in `body`, in the order of `texts`.
    slots: Vec<String>,
    /// The texts, as the provider sent them.
    pub(crate) texts: Vec<String>,
}

impl Released {
    /// The body with `texts` (as many as [`Released::texts`], redacted) in their places.
    pub(crate) fn fill(mut self, texts: Vec<String>) -> Value {
        debug_assert_eq!(texts.len(), self.slots.len());
        for (slot, text) in self.slots.iter().zip(texts) {
            if let Some(place) = self.body.pointer_mut(slot) {
                *place = Value::String(text);
            }
        }
        self.body
    }
}

/// A whole chat completion (`choices[].message`).
pub(crate) fn completion(provider: &Value) -> Released {
    released(provider, "message")
}

/// A streamed chunk (`choices[].delta`).
pub(crate) fn chunk(provider: &Value) -> Released {
    released(provider, "delta")
}

/// A chunk with the top-level fields of `provider`'s and one empty choice 0: the shell the
/// gate's redacted pieces are sent in.
pub(crate) fn chunk_shell(provider: &Value) -> Value {
    let mut body = top_level(provider);
    body.insert(
        "choices".to_owned(),
        serde_json::json!([{ "index": 0, "delta": {}, "finish_reason": null }]),
    );
    Value::Object(body)
}

/// `texts` as one text for policy: each text's own separators replaced (by U+FFFD), then
/// joined by [`SEPARATOR`].
pub(crate) fn join(texts: &[String]) -> String {
    texts
        .iter()
        .map(|text| text.replace(SEPARATOR, "\u{fffd}"))
        .collect::<Vec<_>>()
        .join(&SEPARATOR.to_string())
}

/// The `count` texts of what [`join`] made (after redaction); `None` when redaction changed
/// how many there are (a pattern that swallowed a separator), so the reply must be withheld.
pub(crate) fn split(joined: &str, count: usize) -> Option<Vec<String>> {
    if count == 0 {
        return joined.is_empty().then(Vec::new);
    }
    let texts: Vec<String> = joined.split(SEPARATOR).map(str::to_owned).collect();
    (texts.len() == count).then_some(texts)
}

fn top_level(provider: &Value) -> Map<String, Value> {
    let mut body = Map::new();
    for (key, wanted) in [
        ("id", Kind::String),
        ("object", Kind::String),
        ("created", Kind::Number),
        ("model", Kind::String),
        ("system_fingerprint", Kind::String),
        ("service_tier", Kind::String),
    ] {
        if let Some(value) = provider.get(key).filter(|value| wanted.matches(value)) {
            body.insert(key.to_owned(), value.clone());
        }
    }
    if let Some(usage) = provider.get("usage").and_then(numbers_only) {
        body.insert("usage".to_owned(), usage);
    }
    body
}

#[derive(Clone, Copy)]
enum Kind {
    String,
    Number,
}

impl Kind {
    fn matches(self, value: &Value) -> bool {
        match self {
            Self::String => value.is_string(),
            Self::Number => value.is_number(),
        }
    }
}

/// An object of numbers (and objects of numbers, like `prompt_tokens_details`); `None` for
/// anything else.
fn numbers_only(value: &Value) -> Option<Value> {
    let object = value.as_object()?;
    let kept: Map<String, Value> = object
        .iter()
        .filter_map(|(key, value)| match value {
            Value::Number(_) => Some((key.clone(), value.clone())),
            Value::Object(_) => numbers_only(value).map(|nested| (key.clone(), nested)),
            _ => None,
        })
        .collect();
    Some(Value::Object(kept))
}

/// Collects texts and the pointers they go back to.
struct Texts {
    slots: Vec<String>,
    texts: Vec<String>,
}

impl Texts {
    /// Puts `value[key]`, when it is a string, into `into[key]` as a slot at `path/key`.
    fn text(&mut self, value: &Value, key: &str, into: &mut Map<String, Value>, path: &str) {
        if let Some(text) = value.get(key).and_then(Value::as_str) {
            self.slots.push(format!("{path}/{key}"));
            self.texts.push(text.to_owned());
            into.insert(key.to_owned(), Value::Null);
        }
    }
}

fn copy(value: &Value, key: &str, wanted: Kind, into: &mut Map<String, Value>) {
    if let Some(found) = value.get(key).filter(|found| wanted.matches(found)) {
        into.insert(key.to_owned(), found.clone());
    }
}

fn released(provider: &Value, message_key: &str) -> Released {
    let mut body = top_level(provider);
    let mut texts = Texts {
        slots: Vec::new(),
        texts: Vec::new(),
    };
    if let Some(choices) = provider.get("choices").and_then(Value::as_array) {
        let mut kept = Vec::with_capacity(choices.len());
        for (position, choice) in choices.iter().enumerate() {
            let path = format!("/choices/{position}");
            let mut out = Map::new();
            copy(choice, "index", Kind::Number, &mut out);
            if let Some(reason @ (Value::String(_) | Value::Null)) = choice.get("finish_reason") {
                out.insert("finish_reason".to_owned(), reason.clone());
            }
            if let Some(message) = choice.get(message_key).filter(|found| found.is_object()) {
                let message_path = format!("{path}/{message_key}");
                out.insert(
                    message_key.to_owned(),
                    Value::Object(released_message(message, &message_path, &mut texts)),
                );
            }
            match choice.get("logprobs") {
                Some(Value::Null) => {
                    out.insert("logprobs".to_owned(), Value::Null);
                }
                Some(logprobs @ Value::Object(_)) => {
                    let logprobs_path = format!("{path}/logprobs");
                    out.insert(
                        "logprobs".to_owned(),
                        Value::Object(released_logprobs(logprobs, &logprobs_path, &mut texts)),
                    );
                }
                _ => {}
            }
            kept.push(Value::Object(out));
        }
        body.insert("choices".to_owned(), Value::Array(kept));
    }
    Released {
        body: Value::Object(body),
        slots: texts.slots,
        texts: texts.texts,
    }
}

fn released_message(message: &Value, path: &str, texts: &mut Texts) -> Map<String, Value> {
    let mut out = Map::new();
    copy(message, "role", Kind::String, &mut out);
    for key in ["content", "refusal"] {
        if message.get(key).is_some_and(Value::is_null) {
            out.insert(key.to_owned(), Value::Null);
        }
    }
    for key in ["content", "refusal", "reasoning_content", "reasoning"] {
        texts.text(message, key, &mut out, path);
    }
    if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
        let mut kept = Vec::with_capacity(calls.len());
        for (position, call) in calls.iter().enumerate() {
            let call_path = format!("{path}/tool_calls/{position}");
            let mut out_call = Map::new();
            copy(call, "index", Kind::Number, &mut out_call);
            copy(call, "id", Kind::String, &mut out_call);
            copy(call, "type", Kind::String, &mut out_call);
            if let Some(function) = call.get("function").filter(|found| found.is_object()) {
                let mut out_function = Map::new();
                copy(function, "name", Kind::String, &mut out_function);
                texts.text(
                    function,
                    "arguments",
                    &mut out_function,
                    &format!("{call_path}/function"),
                );
                out_call.insert("function".to_owned(), Value::Object(out_function));
            }
            kept.push(Value::Object(out_call));
        }
        out.insert("tool_calls".to_owned(), Value::Array(kept));
    }
    out
}

fn released_logprobs(logprobs: &Value, path: &str, texts: &mut Texts) -> Map<String, Value> {
    let mut out = Map::new();
    for key in ["content", "refusal"] {
        let Some(entries) = logprobs.get(key).and_then(Value::as_array) else {
            continue;
        };
        let mut kept = Vec::with_capacity(entries.len());
        for (position, entry) in entries.iter().enumerate() {
            let entry_path = format!("{path}/{key}/{position}");
            let mut out_entry = Map::new();
            texts.text(entry, "token", &mut out_entry, &entry_path);
            copy(entry, "logprob", Kind::Number, &mut out_entry);
            if let Some(top) = entry.get("top_logprobs").and_then(Value::as_array) {
                let mut kept_top = Vec::with_capacity(top.len());
                for (rank, alternative) in top.iter().enumerate() {
                    let mut out_alternative = Map::new();
                    texts.text(
                        alternative,
                        "token",
                        &mut out_alternative,
                        &format!("{entry_path}/top_logprobs/{rank}"),
                    );
                    copy(alternative, "logprob", Kind::Number, &mut out_alternative);
                    kept_top.push(Value::Object(out_alternative));
                }
                out_entry.insert("top_logprobs".to_owned(), Value::Array(kept_top));
            }
            kept.push(Value::Object(out_entry));
        }
        out.insert(key.to_owned(), Value::Array(kept));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_text_is_collected_and_nothing_unlisted_survives() {
        let provider = json!({
            "id": "c1", "object": "chat.completion", "created": 1, "model": "m",
            "usage": { "prompt_tokens": 3, "completion_tokens": 4, "secret": "sk-x",
                       "details": { "cached": 1, "note": "x" } },
            "x_provider_debug": "internal prompt: …",
            "choices": [
                { "index": 0, "finish_reason": "tool_calls",
                  "message": { "role": "assistant", "content": "mail a@b.example",
                               "reasoning_content": "key AKIA…",
                               "tool_calls": [{ "id": "t1", "type": "function",
                                                "function": { "name": "send",
                                                              "arguments": "{\"to\":\"a@b.example\"}" },
                                                "extra": "dropped" }],
                               "audio": { "data": "…" } },
                  "logprobs": { "content": [{ "token": "a@b", "logprob": -0.1, "bytes": [97],
                                              "top_logprobs": [{ "token": "x@y", "logprob": -2.0 }] }] } },
                { "index": 1, "finish_reason": "stop",
                  "message": { "role": "assistant", "content": "second choice" } }
            ]
        });
        let released = completion(&provider);
        assert_eq!(
            released.texts,
            [
                "mail a@b.example",
                "key AKIA…",
                "{\"to\":\"a@b.example\"}",
                "a@b",
                "x@y",
                "second choice"
            ]
        );
        let count = released.texts.len();
        let body = released.fill(vec!["R".to_owned(); count]);
        assert_eq!(
            body,
            json!({
                "id": "c1", "object": "chat.completion", "created": 1, "model": "m",
                "usage": { "prompt_tokens": 3, "completion_tokens": 4, "details": { "cached": 1 } },
                "choices": [
                    { "index": 0, "finish_reason": "tool_calls",
                      "message": { "role": "assistant", "content": "R", "reasoning_content": "R",
                                   "tool_calls": [{ "id": "t1", "type": "function",
                                                    "function": { "name": "send", "arguments": "R" } }] },
                      "logprobs": { "content": [{ "token": "R", "logprob": -0.1,
                                                  "top_logprobs": [{ "token": "R", "logprob": -2.0 }] }] } },
                    { "index": 1, "finish_reason": "stop",
                      "message": { "role": "assistant", "content": "R" } }
                ]
            })
        );
    }

    #[test]
    fn a_null_content_stays_null_and_a_chunk_keeps_its_deltas() {
        let provider = json!({
            "id": "c", "object": "chat.completion.chunk", "created": 2, "model": "m",
            "choices": [{ "index": 0, "finish_reason": null,
                          "delta": { "content": null,
                                     "tool_calls": [{ "index": 0, "function": { "arguments": "{\"a\":" } }] } }]
        });
        let released = chunk(&provider);
        assert_eq!(released.texts, ["{\"a\":"]);
        let body = released.fill(vec!["{\"a\":".to_owned()]);
        assert_eq!(body["choices"][0]["delta"]["content"], Value::Null);
        assert_eq!(
            body["choices"][0]["delta"]["tool_calls"][0],
            json!({ "index": 0, "function": { "arguments": "{\"a\":" } })
        );
        assert_eq!(
            chunk_shell(&provider),
            json!({ "id": "c", "object": "chat.completion.chunk", "created": 2, "model": "m",
                    "choices": [{ "index": 0, "delta": {}, "finish_reason": null }] })
        );
    }

    #[test]
    fn joined_texts_split_back_unless_redaction_swallowed_a_separator() {
        let texts = vec![
            "one".to_owned(),
            String::new(),
            format!("has its own {SEPARATOR} separator"),
        ];
        let joined = join(&texts);
        let back = split(&joined, 3).unwrap();
        assert_eq!(back[0], "one");
        assert_eq!(back[1], "");
        assert_eq!(back[2], "has its own \u{fffd} separator");
        assert_eq!(split("one", 3), None);
        assert_eq!(split("", 0), Some(Vec::new()));
        assert_eq!(split("x", 0), None);
    }
}
