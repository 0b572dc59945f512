//! The fake "model": a deterministic answer derived from the message, so that a reader (or a
//! test) knows what to expect. It writes a sentence about the message, calls a `word_count`
//! "tool" on it, and writes a sentence with the tool's output.

use serde_json::{Value, json};

/// The lines of the answer to `message`, in order: `{"type":"content","data":{"content","done":
/// false}}` for each word (every word but the first with its leading space, so that a client
/// joins the contents as they come), one `{"type":"tool","data":{"name","input","output"}}`
/// between the two sentences, and a last `{"type":"content","data":{"content":"","done":true}}`.
pub fn answer(message: &str) -> Vec<Value> {
    let words: Vec<&str> = message.split_whitespace().collect();
    let n = words.len();
    let before = format!("You wrote \"{}\". Let me count its words.", words.join(" "));
    let backwards: Vec<&str> = words.iter().rev().copied().collect();
    let plural = if n == 1 { "" } else { "s" };
    let after = format!("It has {n} word{plural}; backwards it reads: {}.", backwards.join(" "));
    let content = |text: &str, first: bool| -> Vec<Value> {
        text.split(' ')
            .enumerate()
            .map(|(i, w)| {
                let w = if first && i == 0 { w.to_string() } else { format!(" {w}") };
                json!({"type": "content", "data": {"content": w, "done": false}})
            })
            .collect()
    };
    let mut lines = content(&before, true);
    lines.push(json!({
        "type": "tool",
        "data": {"name": "word_count", "input": {"text": message}, "output": {"words": n}},
    }));
    lines.extend(content(&after, false));
    lines.push(json!({"type": "content", "data": {"content": "", "done": true}}));
    lines
}

/// The text of an answer's lines: their contents joined.
pub fn text(lines: &[Value]) -> String {
    lines.iter().filter(|l| l["type"] == "content").filter_map(|l| l["data"]["content"].as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_is_words_a_tool_call_and_done() {
        let lines = answer("hello  big world");
        assert_eq!(
            text(&lines),
            "You wrote \"hello big world\". Let me count its words. It has 3 words; backwards it reads: \
             world big hello."
        );
        let tool = lines.iter().position(|l| l["type"] == "tool").unwrap();
        assert!(tool > 0 && tool < lines.len() - 2, "the tool call is in the middle");
        assert_eq!(lines[tool]["data"]["output"], json!({"words": 3}));
        assert_eq!(lines.last().unwrap()["data"], json!({"content": "", "done": true}));
        assert!(lines[..lines.len() - 1].iter().all(|l| l["data"]["done"] != true));
        assert_eq!(lines[0]["data"]["content"], "You");
        assert_eq!(lines[1]["data"]["content"], " wrote");
    }
}
