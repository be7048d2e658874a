//! The rules-file loader on arbitrary text: the bytes before the first NUL
//! are the rules file, the rest is the text of every domain list it names
//! (a path starting with `missing` cannot be read). No panic; every error
//! has a message and a path or a line. The stable target
//! (`crates/engine/tests/fuzz_config.rs`) mutates the JSON tree and runs
//! the configs that load.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_engine::config::{Config, ListLoader};

struct Lists<'a>(&'a str);

impl ListLoader for Lists<'_> {
    fn load(&self, path: &str) -> Result<String, String> {
        if path.starts_with("missing") {
            Err("no such file".into())
        } else {
            Ok(self.0.to_string())
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (rules, list) = text.split_once('\0').unwrap_or((&text, ""));
    match Config::from_json_str(rules, &Lists(list)) {
        Ok(cfg) => {
            let _ = cfg.rules.stats();
        }
        Err(errs) => {
            assert!(!errs.is_empty());
            for e in &errs {
                assert!(!e.message.is_empty());
                assert!(!e.path.is_empty() || e.line.is_some(), "{e:?}");
            }
        }
    }
});
