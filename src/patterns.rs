//! Event-type patterns (`item.create`, `item.*`, `*`) and the in-memory index that
//! matches an event type against thousands of hooks without scanning them all.
//! Pure: the store keeps one [`TenantIndex`] per tenant and refreshes it on hook changes.

use std::collections::{HashMap, HashSet};

/// Longest event type or pattern accepted.
pub const MAX_LEN: usize = 200;

/// Checks an event type (`item.create`): 1..=200 chars of letters, digits, `_`, `-`,
/// `.`, `:`, `/`; no empty segments; no `*`.
pub fn validate_type(t: &str) -> Result<(), String> {
    if t.is_empty() || t.len() > MAX_LEN {
        return Err(format!("must be 1 to {MAX_LEN} characters"));
    }
    if !t
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/'))
    {
        return Err("may hold only letters, digits and `_ - . : /`".into());
    }
    if t.split('.').any(str::is_empty) {
        return Err("has an empty segment between dots".into());
    }
    Ok(())
}

/// Checks a pattern: an event type, `prefix.*`, or `*`.
pub fn validate_pattern(p: &str) -> Result<(), String> {
    if p == "*" {
        return Ok(());
    }
    match p.strip_suffix(".*") {
        Some(prefix) => validate_type(prefix),
        None => validate_type(p).map_err(|e| {
            if p.contains('*') {
                "a wildcard is only allowed as `*` or at the end as `prefix.*`".to_string()
            } else {
                e
            }
        }),
    }
}

/// Does `pattern` match `event_type`?
pub fn matches(pattern: &str, event_type: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix('*') {
        Some(prefix) => event_type.starts_with(prefix),
        None => pattern == event_type,
    }
}

/// The hooks of one tenant, indexed by pattern. `H` is whatever identifies a hook.
#[derive(Debug, Clone)]
pub struct TenantIndex<H> {
    exact: HashMap<String, Vec<H>>,
    /// Keyed by the prefix including its final dot (`item.` for `item.*`).
    prefix: HashMap<String, Vec<H>>,
    any: Vec<H>,
}

impl<H> Default for TenantIndex<H> {
    fn default() -> Self {
        TenantIndex {
            exact: HashMap::new(),
            prefix: HashMap::new(),
            any: Vec::new(),
        }
    }
}

impl<H: Clone + Eq + std::hash::Hash> TenantIndex<H> {
    pub fn insert(&mut self, hook: H, patterns: &[String]) {
        // A pattern given twice lists the hook once: each list then holds a hook at
        // most once, which `matching` relies on.
        let mut seen = HashSet::new();
        for p in patterns {
            if !seen.insert(p.as_str()) {
                continue;
            }
            if p == "*" {
                self.any.push(hook.clone());
            } else if let Some(prefix) = p.strip_suffix('*') {
                self.prefix
                    .entry(prefix.to_string())
                    .or_default()
                    .push(hook.clone());
            } else {
                self.exact.entry(p.clone()).or_default().push(hook.clone());
            }
        }
    }

    pub fn remove(&mut self, hook: &H) {
        self.any.retain(|h| h != hook);
        for list in self.exact.values_mut().chain(self.prefix.values_mut()) {
            list.retain(|h| h != hook);
        }
        self.exact.retain(|_, v| !v.is_empty());
        self.prefix.retain(|_, v| !v.is_empty());
    }

    pub fn is_empty(&self) -> bool {
        self.any.is_empty() && self.exact.is_empty() && self.prefix.is_empty()
    }

    /// Every hook with a pattern matching `event_type`, each once, in no set order.
    /// Costs one lookup per dot in the type, whatever the number of hooks.
    pub fn matching(&self, event_type: &str) -> Vec<H> {
        let mut lists: Vec<&Vec<H>> = Vec::new();
        if !self.any.is_empty() {
            lists.push(&self.any);
        }
        if let Some(list) = self.exact.get(event_type) {
            lists.push(list);
        }
        for (i, c) in event_type.char_indices() {
            if c == '.' {
                if let Some(list) = self.prefix.get(&event_type[..=i]) {
                    lists.push(list);
                }
            }
        }
        match lists.as_slice() {
            [] => Vec::new(),
            // The usual case (one pattern per hook, or all alike): a list holds each
            // hook once, so there is nothing to remove twice (a set of 10,000 ids was
            // most of a big fan-out's matching).
            [only] => only.to_vec(),
            _ => {
                let mut seen = HashSet::new();
                let mut out = Vec::new();
                for h in lists.into_iter().flatten() {
                    if seen.insert(h) {
                        out.push(h.clone());
                    }
                }
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_rules() {
        assert!(matches("*", "a.b"));
        assert!(matches("item.*", "item.create"));
        assert!(matches("item.*", "item.sub.create"));
        assert!(!matches("item.*", "items.create"));
        assert!(!matches("item.*", "item"));
        assert!(matches("item.create", "item.create"));
        assert!(!matches("item.create", "item.created"));
        for ok in ["*", "item.*", "a.b.c", "invoice:paid", "a_b-c"] {
            assert!(validate_pattern(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "item*", "*.create", "it*m.x", "a..b", ".a", "a b", "a.*.*",
        ] {
            assert!(validate_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn index_agrees_with_matches() {
        let hooks: Vec<(u32, Vec<String>)> = vec![
            (1, vec!["item.create".into()]),
            (2, vec!["item.*".into()]),
            (3, vec!["*".into()]),
            (4, vec!["item.sub.*".into(), "item.create".into()]),
            (5, vec!["order.*".into()]),
            (6, vec!["pay.done".into(), "pay.done".into()]),
        ];
        let mut idx = TenantIndex::default();
        for (h, p) in &hooks {
            idx.insert(*h, p);
        }
        for t in [
            "item.create",
            "item.sub.x",
            "order.paid",
            "other",
            "item",
            "pay.done",
        ] {
            let mut got = idx.matching(t);
            got.sort();
            let want: Vec<u32> = hooks
                .iter()
                .filter(|(_, ps)| ps.iter().any(|p| matches(p, t)))
                .map(|(h, _)| *h)
                .collect();
            assert_eq!(got, want, "type {t}");
        }
        idx.remove(&4);
        assert_eq!(idx.matching("item.sub.x"), vec![3, 2]);
        // A pattern given twice, matched through one list alone: the hook once.
        let mut one = TenantIndex::default();
        one.insert(6, &hooks[5].1);
        assert_eq!(one.matching("pay.done"), vec![6]);
    }
}
