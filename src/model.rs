//! Domain types shared by the API, the store and the dispatcher. Closed enums with their
//! wire spelling in one place; no I/O here.

use crate::clock::Millis;

macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }
        }
    };
}

wire_enum!(
    /// What an API key may do (SPEC §3).
    Role { Admin = "admin", Publisher = "publisher", Subscriber = "subscriber" }
);

wire_enum!(
    /// `pending`: not verified, receives nothing. `active`: receives. `inactive`:
    /// disabled after failures; its deliveries are held.
    HookStatus { Pending = "pending", Active = "active", Inactive = "inactive" }
);

impl HookStatus {
    /// A publish queues deliveries for it (held while inactive); a pending hook gets none.
    pub fn receives_events(self) -> bool {
        self != HookStatus::Pending
    }
}

wire_enum!(
    /// `skinny` bodies carry no `data`; `full` ones do.
    PayloadKind { Skinny = "skinny", Full = "full" }
);

wire_enum!(
    /// A delivery's state. `pending`: waiting for its first attempt (or in flight);
    /// `failed`: the last attempt failed and another is scheduled; `delivered`; `dead`:
    /// every attempt failed; `cancelled`: its hook was deleted.
    DeliveryStatus {
        Pending = "pending",
        Failed = "failed",
        Delivered = "delivered",
        Dead = "dead",
        Cancelled = "cancelled",
    }
);

/// An API key as stored (never the token itself).
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub id: String,
    pub role: Role,
    /// Set for subscribers only: the one tenant the key may touch.
    pub tenant: Option<String>,
    pub created_at: Millis,
}

#[derive(Debug, Clone)]
pub struct Hook {
    pub id: String,
    pub tenant: String,
    pub target_url: String,
    pub events: Vec<String>,
    pub payload: PayloadKind,
    pub batch_max: u32,
    pub status: HookStatus,
    /// `whsec_…`; needed in the clear to sign (sealed at rest).
    pub secret: String,
    /// The secret before the last rotation, and until when it still signs.
    pub previous_secret: Option<(String, Millis)>,
    /// A new target URL waiting for its handshake; the old one receives meanwhile.
    pub pending_target_url: Option<String>,
    pub consecutive_failures: u32,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl Hook {
    /// The secrets that sign a delivery at `now`: the current one, and the previous
    /// one during the 24 hours after a rotation.
    pub fn signing_secrets(&self, now: Millis) -> Vec<&str> {
        let mut out = vec![self.secret.as_str()];
        if let Some((previous, until)) = &self.previous_secret {
            if *until > now {
                out.push(previous);
            }
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    pub tenant: String,
    pub event_type: String,
    pub resource_id: Option<String>,
    /// The published `data`, as JSON text.
    pub data: String,
    pub created_at: Millis,
}

/// One attempt to send a delivery, as logged.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub at: Millis,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: i64,
    pub response_snippet: Option<String>,
}

/// A delivery as the log shows it: one request's worth of a hook's events.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub hook_id: String,
    pub event_ids: Vec<String>,
    pub sequence: i64,
    pub status: DeliveryStatus,
    pub attempts: Vec<Attempt>,
    pub next_attempt_at: Option<Millis>,
    pub created_at: Millis,
}
