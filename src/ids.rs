//! Opaque, prefixed ids (`hook_…`, `evt_…`, `dlv_…`, `key_…`) and random secrets.
//!
//! Ids are ULID-shaped: 48 bits of milliseconds then 80 random bits, Crockford base32,
//! monotonic within a process. Time order keeps SQLite's primary-key B-trees appending
//! instead of splitting pages at random, and makes "newest first" an index scan.

use std::sync::Mutex;

pub(crate) const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

static LAST: Mutex<(u64, u128)> = Mutex::new((0, 0));

/// Fills `buf` from the OS random source. A machine without one cannot run hookd safely.
pub fn random_bytes(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the OS random source failed");
}

/// A new id with `prefix` (without the underscore), e.g. `new_id("evt")`.
pub fn new_id(prefix: &str) -> String {
    let ms = crate::clock::now_ms().max(0) as u64;
    let value = {
        let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
        let rand = if ms <= last.0 {
            // Same (or an earlier, if the clock stepped back) millisecond: count up from
            // the last id so ids stay strictly increasing within this process.
            last.1 = last.1.wrapping_add(1) & ((1u128 << 80) - 1);
            last.1
        } else {
            let mut b = [0u8; 10];
            random_bytes(&mut b);
            // Keep the top bit clear so increments within one millisecond cannot overflow.
            b[0] &= 0x7f;
            last.0 = ms;
            last.1 = b.iter().fold(0u128, |acc, x| (acc << 8) | u128::from(*x));
            last.1
        };
        (u128::from(last.0) << 80) | rand
    };
    encode(prefix, value)
}

/// Makes every id this process makes from now on sort after `id` (an id made by
/// [`new_id`], e.g. the newest event in the database), even if the clock is behind the
/// time it was made at: ids then count up within that millisecond. Other strings are
/// ignored.
pub fn continue_after(id: &str) {
    let Some(value) = value_of(id) else {
        return;
    };
    let (ms, rand) = ((value >> 80) as u64, value & ((1u128 << 80) - 1));
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    if (ms, rand) > *last {
        *last = (ms, rand);
    }
}

/// The 128-bit value of an id made by [`new_id`] (any prefix): ids of one prefix sort
/// as their values do, so a value can stand for its id in a search.
pub fn value_of(id: &str) -> Option<u128> {
    id.split_once('_').and_then(|(_, body)| decode(body))
}

/// The 128-bit value of an id's 26 Crockford characters.
fn decode(body: &str) -> Option<u128> {
    if body.len() != 26 {
        return None;
    }
    body.bytes().try_fold(0u128, |acc, c| {
        let digit = CROCKFORD.iter().position(|x| *x == c)?;
        acc.checked_mul(32)?.checked_add(digit as u128)
    })
}

/// The smallest id with `prefix` made at `ms`: every id made earlier sorts below it,
/// which lets retention find old rows through the primary key alone.
pub fn id_at(prefix: &str, ms: i64) -> String {
    encode(prefix, u128::from(ms.max(0) as u64) << 80)
}

/// The millisecond an id was made at (its first 48 bits), or `None` when `id` is not
/// `prefix_` and 26 Crockford characters.
pub fn time_of(id: &str) -> Option<i64> {
    let (_, body) = id.split_once('_')?;
    if body.len() != 26 {
        return None;
    }
    let mut value: u64 = 0;
    for c in body.bytes().take(10) {
        let digit = CROCKFORD.iter().position(|x| *x == c)?;
        value = (value << 5) | digit as u64;
    }
    i64::try_from(value).ok()
}

/// The id of the delivery of event `event_id` to hook `hook_id`, as long as that row is
/// a delivery of its own (until a batch holds it; with `batch_max` 1, for good): `dlv_`,
/// the event's millisecond, then 80 bits of SHA-256 over both ids. Derived, not stored:
/// the outbox keeps no id column (nor its index) for it, the same row always has the
/// same id, and [`delivery_id_ms`] finds the events to look among.
pub fn delivery_id(event_id: &str, hook_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let ms = time_of(event_id).unwrap_or(0).max(0) as u64;
    let digest = Sha256::new()
        .chain_update(event_id)
        .chain_update([0])
        .chain_update(hook_id)
        .finalize();
    let bits = digest[..10]
        .iter()
        .fold(0u128, |acc, x| (acc << 8) | u128::from(*x));
    encode("dlv", (u128::from(ms) << 80) | bits)
}

/// The millisecond of the event a [`delivery_id`] was derived from.
pub fn delivery_id_ms(id: &str) -> Option<i64> {
    id.starts_with("dlv_").then(|| time_of(id)).flatten()
}

fn encode(prefix: &str, value: u128) -> String {
    let mut out = String::with_capacity(prefix.len() + 27);
    out.push_str(prefix);
    out.push('_');
    for i in (0..26).rev() {
        let idx = ((value >> (i * 5)) & 31) as usize;
        out.push(CROCKFORD[idx] as char);
    }
    out
}

/// An API token: `hkd_` and 32 random bytes, hex. Shown once, stored hashed.
pub fn new_token() -> String {
    let mut b = [0u8; 32];
    random_bytes(&mut b);
    let mut s = String::from("hkd_");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_id_is_derived_from_its_event_and_hook() {
        let event = new_id("evt");
        let id = delivery_id(&event, "hook_a");
        assert_eq!(
            id,
            delivery_id(&event, "hook_a"),
            "the same row, the same id"
        );
        assert_ne!(id, delivery_id(&event, "hook_b"));
        assert_ne!(id, delivery_id(&new_id("evt"), "hook_a"));
        assert!(id.starts_with("dlv_") && id.len() == 30, "{id}");
        assert_eq!(delivery_id_ms(&id), time_of(&event));
        assert_eq!(delivery_id_ms(&event), None);
    }

    #[test]
    fn ids_are_prefixed_and_increasing() {
        let before = crate::clock::now_ms();
        let a = new_id("evt");
        let b = new_id("evt");
        let after = crate::clock::now_ms();
        assert!(a.starts_with("evt_") && a.len() == 30, "{a}");
        assert!(b > a, "{b} should sort after {a}");
        assert!(id_at("evt", before) <= a && b < id_at("evt", after + 1));
        let t = time_of(&a).unwrap();
        assert!(
            before <= t && t <= after,
            "{t} is not in {before}..={after}"
        );
        assert_eq!(
            time_of(&id_at("dlv", 1_700_000_000_123)),
            Some(1_700_000_000_123)
        );
        assert_eq!(time_of("evt_short"), None);
    }

    #[test]
    fn ids_continue_after_a_given_one() {
        let a = new_id("evt");
        let value = decode(&a[4..]).unwrap();
        assert_eq!(encode("evt", value), a, "decode undoes encode");
        // Later in the same millisecond (a clock that is behind looks the same): the
        // next id counts up from it.
        let ahead = encode("evt", value + 1000);
        continue_after(&ahead);
        let next = new_id("evt");
        assert!(next > ahead, "{next} should sort after {ahead}");
        continue_after("evt_not-an-id");
        continue_after("");
        assert!(new_id("evt") > next);
    }
}
