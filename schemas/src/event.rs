//! The event model: an [`Envelope`] common to every event and a [`Payload`]
//! per event type, grouped in four [`Family`]s with one Kafka topic each.
//!
//! On the wire an event is one JSON object: the envelope's fields, then
//! `event_type` (e.g. `"referral.created"`) and `data` (the payload):
//!
//! ```json
//! {"event_id":"…","occurred_at":"2025-04-07T09:00:00Z","recorded_at":"…","source":"pas:rx1:referrals",
//!  "schema_version":1,"key_id":"k2025a","practice":"Y01234","provider":"RX1","treatment_function":"110",
//!  "event_type":"referral.created","data":{"pathway_id":"…","patient":{…},"priority":"routine",…}}
//! ```
//!
//! No field anywhere can hold a raw identifier: ids are [`PseudoId`]s,
//! organisations [`OdsCode`]s, and patients only [`Patient`] attributes.

use chrono::{DateTime, NaiveDate, Utc};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

use crate::codes::*;
use crate::ids::{EventId, KeyId, OdsCode, PseudoId, SourceName};
use crate::patient::Patient;

/// The version of the wire format this crate writes. Readers accept events of
/// this version and older; a field is only ever added as optional.
pub const SCHEMA_VERSION: u16 = 1;

/// One event: envelope plus typed payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    /// Fields common to every event.
    #[serde(flatten)]
    pub envelope: Envelope,
    /// The event type and its data.
    #[serde(flatten)]
    pub payload: Payload,
}

/// Fields common to every event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Envelope {
    /// Deterministic id from the source and source record: re-sending a file gives the same ids.
    pub event_id: EventId,
    /// When it happened in the source system (UTC).
    #[serde(serialize_with = "crate::uk_time::serialize_utc")]
    pub occurred_at: DateTime<Utc>,
    /// When the connector recorded it (UTC).
    #[serde(serialize_with = "crate::uk_time::serialize_utc")]
    pub recorded_at: DateTime<Utc>,
    /// The connector and feed it came from.
    pub source: SourceName,
    /// Wire format version, see [`SCHEMA_VERSION`].
    pub schema_version: u16,
    /// The pseudonymisation key the event's pseudonyms were made with.
    pub key_id: Option<KeyId>,
    /// The GP practice concerned, when there is one.
    pub practice: Option<OdsCode>,
    /// The hospital provider concerned, when there is one.
    pub provider: Option<OdsCode>,
    /// The specialty concerned, when there is one.
    pub treatment_function: Option<TreatmentFunction>,
}

/// The four event families; each has its own Kafka topic.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// Referrals and their RTT clock.
    Referral,
    /// Advice & Guidance requests.
    Advice,
    /// Slots and appointments in both settings.
    Appointment,
    /// Outpatient follow-ups.
    Followup,
}

impl Family {
    /// Every family.
    pub const ALL: &'static [Family] = &[
        Family::Referral,
        Family::Advice,
        Family::Appointment,
        Family::Followup,
    ];

    /// The family's name, as in topic names and the bronze table.
    pub fn name(self) -> &'static str {
        match self {
            Family::Referral => "referral",
            Family::Advice => "advice",
            Family::Appointment => "appointment",
            Family::Followup => "followup",
        }
    }

    /// The default Kafka topic of the family (`pathflow.<family>`).
    pub fn default_topic(self) -> String {
        format!("pathflow.{}", self.name())
    }
}

/// The default dead-letter topic: rejections with reason and location, no identifiers.
pub const DEAD_LETTER_TOPIC: &str = "pathflow.dead_letter";

/// What each payload type can say about itself.
pub trait EventData {
    /// The Kafka message key: the pathway (or appointment, slot, advice request)
    /// the event belongs to, so one entity's events stay in order.
    fn key(&self) -> &PseudoId;
    /// The patient attributes the event carries, if any.
    fn patient(&self) -> Option<&Patient> {
        None
    }
}

/// Declares every event type once: its payload struct, wire name and family.
macro_rules! events {
    ($($variant:ident => ($name:literal, $family:ident)),+ $(,)?) => {
        /// The event type and its data, tagged by `event_type` with the data under `data`.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[serde(tag = "event_type", content = "data")]
        pub enum Payload {
            $(#[doc = $name] #[serde(rename = $name)] $variant($variant)),+
        }

        /// Every event type, without data.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventType {
            $(#[doc = $name] $variant),+
        }

        impl EventType {
            /// Every event type, family by family.
            pub const ALL: &'static [EventType] = &[$(EventType::$variant),+];

            /// The wire name, `family.verb`.
            pub fn name(self) -> &'static str {
                match self { $(EventType::$variant => $name),+ }
            }

            /// The family (and so the topic) of the event type.
            pub fn family(self) -> Family {
                match self { $(EventType::$variant => Family::$family),+ }
            }

            /// The event type with this wire name.
            pub fn from_name(name: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|t| t.name() == name)
            }

            /// The JSON Schema of the type's `data`, registered in `generator`.
            pub fn data_schema(self, generator: &mut SchemaGenerator) -> Schema {
                match self { $(EventType::$variant => generator.subschema_for::<$variant>()),+ }
            }
        }

        impl Payload {
            /// The payload's event type.
            pub fn event_type(&self) -> EventType {
                match self { $(Payload::$variant(_) => EventType::$variant),+ }
            }

            fn data(&self) -> &dyn EventData {
                match self { $(Payload::$variant(d) => d),+ }
            }
        }
    };
}

events! {
    ReferralCreated => ("referral.created", Referral),
    ReferralTriaged => ("referral.triaged", Referral),
    ClockStarted => ("referral.clock_started", Referral),
    ClockStopped => ("referral.clock_stopped", Referral),
    ReferralDischarged => ("referral.discharged", Referral),
    AdviceRequested => ("advice.requested", Advice),
    AdviceResponded => ("advice.responded", Advice),
    AdviceConverted => ("advice.converted", Advice),
    SlotPublished => ("appointment.slot_published", Appointment),
    SlotWithdrawn => ("appointment.slot_withdrawn", Appointment),
    AppointmentBooked => ("appointment.booked", Appointment),
    AppointmentRescheduled => ("appointment.rescheduled", Appointment),
    AppointmentCancelled => ("appointment.cancelled", Appointment),
    AppointmentAttended => ("appointment.attended", Appointment),
    AppointmentDidNotAttend => ("appointment.did_not_attend", Appointment),
    FollowupRequired => ("followup.required", Followup),
    FollowupBooked => ("followup.booked", Followup),
    FollowupCompleted => ("followup.completed", Followup),
    FollowupCancelled => ("followup.cancelled", Followup),
}

impl Payload {
    /// The Kafka message key (see [`EventData::key`]).
    pub fn key(&self) -> &PseudoId {
        self.data().key()
    }

    /// The patient attributes the event carries, if any.
    pub fn patient(&self) -> Option<&Patient> {
        self.data().patient()
    }
}

impl Event {
    /// The event's type.
    pub fn event_type(&self) -> EventType {
        self.payload.event_type()
    }

    /// The event's family, which names its topic.
    pub fn family(&self) -> Family {
        self.event_type().family()
    }

    /// The date the event belongs to (UTC), which partitions the bronze table.
    pub fn event_date(&self) -> NaiveDate {
        self.envelope.occurred_at.date_naive()
    }
}

/// Implements [`EventData`] for payloads keyed by `$key`, optionally carrying `patient`.
macro_rules! keyed {
    ($($ty:ident by $key:ident $(, patient $p:ident)?;)+) => {
        $(impl EventData for $ty {
            fn key(&self) -> &PseudoId { &self.$key }
            $(fn patient(&self) -> Option<&Patient> { Some(&self.$p) })?
        })+
    };
}

keyed! {
    ReferralCreated by pathway_id, patient patient;
    ReferralTriaged by pathway_id;
    ClockStarted by pathway_id;
    ClockStopped by pathway_id;
    ReferralDischarged by pathway_id;
    AdviceRequested by advice_id, patient patient;
    AdviceResponded by advice_id;
    AdviceConverted by advice_id;
    SlotPublished by slot_id;
    SlotWithdrawn by slot_id;
    AppointmentBooked by appointment_id, patient patient;
    AppointmentRescheduled by appointment_id;
    AppointmentCancelled by appointment_id;
    AppointmentAttended by appointment_id;
    AppointmentDidNotAttend by appointment_id;
    FollowupRequired by pathway_id, patient patient;
    FollowupBooked by pathway_id;
    FollowupCompleted by pathway_id;
    FollowupCancelled by pathway_id;
}

// ---- referral -------------------------------------------------------------

/// A referral was received by the provider (from `practice` to `treatment_function`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReferralCreated {
    /// Pseudonym of the pathway (from the UBRN or PAS pathway id).
    pub pathway_id: PseudoId,
    /// The patient referred.
    pub patient: Patient,
    /// Routine, urgent or two-week wait.
    pub priority: Priority,
    /// Who referred.
    pub referral_source: ReferralSource,
    /// The Advice & Guidance request this referral was converted from, if any.
    pub from_advice: Option<PseudoId>,
}

/// The provider triaged the referral.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReferralTriaged {
    /// The pathway.
    pub pathway_id: PseudoId,
    /// Accepted, returned with advice, rejected or redirected.
    pub outcome: TriageOutcome,
    /// Where a redirected referral was sent.
    pub redirected_to: Option<TreatmentFunction>,
}

/// An RTT clock started (at referral receipt, or anew, e.g. after a first-appointment DNA).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ClockStarted {
    /// The pathway.
    pub pathway_id: PseudoId,
    /// RTT status of the start.
    pub reason: ClockStartReason,
}

/// The RTT clock stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ClockStopped {
    /// The pathway.
    pub pathway_id: PseudoId,
    /// RTT status of the stop.
    pub reason: ClockStopReason,
}

/// The patient was discharged from the pathway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReferralDischarged {
    /// The pathway.
    pub pathway_id: PseudoId,
}

// ---- advice & guidance ----------------------------------------------------

/// A GP asked a specialty for Advice & Guidance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AdviceRequested {
    /// Pseudonym of the A&G request.
    pub advice_id: PseudoId,
    /// The patient the request is about.
    pub patient: Patient,
}

/// The specialist answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AdviceResponded {
    /// The A&G request.
    pub advice_id: PseudoId,
    /// What the specialist advised.
    pub outcome: AdviceOutcome,
}

/// The request was converted into a referral.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AdviceConverted {
    /// The A&G request.
    pub advice_id: PseudoId,
    /// The pathway the referral started.
    pub pathway_id: PseudoId,
}

// ---- appointments and slots -----------------------------------------------

/// What a slot offers, by setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "setting", rename_all = "snake_case")]
pub enum SlotKind {
    /// A GP appointment-book slot, with its GPAD mapping.
    Gp {
        /// GPAD mode.
        mode: AppointmentMode,
        /// GPAD HCP type.
        hcp_type: HcpType,
        /// GPAD national category.
        national_category: NationalCategory,
    },
    /// An outpatient clinic slot.
    Outpatient {
        /// New or follow-up slot.
        contact: ContactType,
    },
}

/// What an appointment is, by setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "setting", rename_all = "snake_case")]
pub enum AppointmentKind {
    /// A GP appointment, with its GPAD mapping.
    Gp {
        /// GPAD mode.
        mode: AppointmentMode,
        /// GPAD HCP type.
        hcp_type: HcpType,
        /// GPAD national category.
        national_category: NationalCategory,
    },
    /// An outpatient appointment on a pathway.
    Outpatient {
        /// The pathway the appointment belongs to.
        pathway_id: PseudoId,
        /// First or follow-up attendance.
        contact: ContactType,
        /// The follow-up requirement it meets, for follow-ups.
        followup_id: Option<PseudoId>,
    },
}

impl SlotKind {
    /// The setting of the slot.
    pub fn setting(&self) -> Setting {
        match self {
            SlotKind::Gp { .. } => Setting::Gp,
            SlotKind::Outpatient { .. } => Setting::Outpatient,
        }
    }
}

impl AppointmentKind {
    /// The setting of the appointment.
    pub fn setting(&self) -> Setting {
        match self {
            AppointmentKind::Gp { .. } => Setting::Gp,
            AppointmentKind::Outpatient { .. } => Setting::Outpatient,
        }
    }
}

/// A slot was published: capacity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SlotPublished {
    /// Pseudonym of the slot.
    pub slot_id: PseudoId,
    /// When the slot starts (UTC).
    #[serde(serialize_with = "crate::uk_time::serialize_utc")]
    pub start: DateTime<Utc>,
    /// Length of the slot in minutes.
    pub duration_minutes: u16,
    /// What the slot offers.
    #[serde(flatten)]
    pub kind: SlotKind,
}

/// A published slot was withdrawn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SlotWithdrawn {
    /// The slot.
    pub slot_id: PseudoId,
    /// Why.
    pub reason: SlotWithdrawReason,
}

/// An appointment was booked (`occurred_at` is the booking time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppointmentBooked {
    /// Pseudonym of the appointment.
    pub appointment_id: PseudoId,
    /// The slot it takes, when known.
    pub slot_id: Option<PseudoId>,
    /// The patient.
    pub patient: Patient,
    /// When the appointment starts (UTC).
    #[serde(serialize_with = "crate::uk_time::serialize_utc")]
    pub start: DateTime<Utc>,
    /// What the appointment is.
    #[serde(flatten)]
    pub kind: AppointmentKind,
}

/// The appointment was moved to another time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppointmentRescheduled {
    /// The appointment.
    pub appointment_id: PseudoId,
    /// The new start (UTC).
    #[serde(serialize_with = "crate::uk_time::serialize_utc")]
    pub start: DateTime<Utc>,
    /// The new slot, when known.
    pub slot_id: Option<PseudoId>,
}

/// The appointment was cancelled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppointmentCancelled {
    /// The appointment.
    pub appointment_id: PseudoId,
    /// Who cancelled.
    pub by: CancelledBy,
}

/// The patient attended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppointmentAttended {
    /// The appointment.
    pub appointment_id: PseudoId,
}

/// The patient did not attend and gave no warning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppointmentDidNotAttend {
    /// The appointment.
    pub appointment_id: PseudoId,
}

// ---- follow-ups -----------------------------------------------------------

/// A follow-up became required.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FollowupRequired {
    /// Pseudonym of the follow-up requirement.
    pub followup_id: PseudoId,
    /// The pathway it belongs to.
    pub pathway_id: PseudoId,
    /// The patient.
    pub patient: Patient,
    /// When it should happen by.
    pub due_date: NaiveDate,
    /// Patient-initiated follow-up: booked only if the patient asks.
    pub pifu: bool,
}

/// The follow-up was booked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FollowupBooked {
    /// The follow-up.
    pub followup_id: PseudoId,
    /// The pathway it belongs to.
    pub pathway_id: PseudoId,
    /// The appointment that meets it.
    pub appointment_id: PseudoId,
}

/// The follow-up took place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FollowupCompleted {
    /// The follow-up.
    pub followup_id: PseudoId,
    /// The pathway it belongs to.
    pub pathway_id: PseudoId,
}

/// The follow-up will not happen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FollowupCancelled {
    /// The follow-up.
    pub followup_id: PseudoId,
    /// The pathway it belongs to.
    pub pathway_id: PseudoId,
    /// Why.
    pub reason: FollowupCancelReason,
}
