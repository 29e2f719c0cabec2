//! The pathflow event model: what every stage of the pipeline speaks.
//!
//! - [`event`]: the [`Envelope`](event::Envelope) and the payload of every
//!   event type, grouped in families with a Kafka topic each; JSON on the wire.
//! - [`codes`]: NHS reference codes (treatment functions, priorities, GPAD
//!   modes, HCP types and categories, RTT clock reasons, …) as enums.
//! - [`ids`]: validated identifiers that may appear on events: pseudonyms,
//!   event ids, ODS codes.
//! - [`nhs_number`]: the [`NhsNumber`], which may be checked and pseudonymised
//!   at a connector but never printed or serialised.
//! - [`patient`]: the only patient attributes an event may carry.
//! - [`week`]: ISO weeks, the grain of the gold tables.
//! - [`uk_time`]: UK local time (as source systems write it) to UTC.
//! - [`bronze`]: the Arrow schema of the bronze `events` table.
//! - [`json_schema`]: JSON Schema files generated from these types (checked
//!   in under `schemas/json/`).
//! - [`sample`]: one synthetic event of every type, for tests.

pub mod bronze;
pub mod codes;
pub mod event;
pub mod ids;
pub mod json_schema;
pub mod nhs_number;
pub mod patient;
pub mod sample;
pub mod uk_time;
pub mod week;

pub use event::{DEAD_LETTER_TOPIC, Envelope, Event, EventType, Family, Payload, SCHEMA_VERSION};
pub use ids::{EventId, KeyId, OdsCode, PseudoId, SourceName};
pub use nhs_number::NhsNumber;
pub use patient::{AgeBand, Decile, Patient};
pub use week::Week;
