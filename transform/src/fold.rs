//! The event-sourced state of each entity: referrals (RTT pathways),
//! appointments (both settings), slots, follow-ups and A&G requests, folded
//! from events by [`Fold::apply`]. The state tables are rows of these states;
//! the gold tables count them with [`crate::rules`].
//!
//! **Order does not matter.** Each entity's state is a function of the *set*
//! of its events, so out-of-order and late delivery ("attended before
//! booked", "a clock stop before its referral") and re-sent events give the
//! same state as ordered delivery:
//!
//! - Every fact of an entity (its booking, its start, its status, its clock
//!   start, …) is a [`Register`]: it keeps each contributing event's
//!   [`Fact`] keyed by event id, and its value is that of the winning fact,
//!   the greatest by (`occurred_at`, rank, first `recorded_at`, `event_id`).
//!   Inserting is a set union, so it commutes, and inserting an event id
//!   already held changes nothing (beyond keeping its earliest recording).
//! - The rank orders events of the same instant: the PAS extract gives a
//!   move of an appointment the booking's own time, and a cancellation on
//!   the day of booking may carry the booking time, so a reschedule beats the
//!   booking and an outcome beats both.
//! - `recorded_at` breaks the remaining ties: a corrected outcome (attended
//!   turned into did-not-attend in a later extract) has the same event time
//!   but a new event id and a later recording. A duplicate counts with its
//!   earliest recording, so re-sending an old file does not undo a correction.
//! - Status and dates are derived from the facts present on every read,
//!   never stored as the running result of a sequence of transitions.
//! - The one cross-entity fact, a pathway's first attendance, is written
//!   into the referral from the appointment's whole state each time the
//!   appointment changes, under the appointment's id, for every pathway the
//!   appointment has ever been booked under. After the appointment's last
//!   event the referral holds its final contribution whatever the order.
//!
//! An entity may exist with only late facts (an outcome without a booking,
//! a clock stop without its referral); every accessor then answers `None`
//! for what is not known yet. States serialise (serde), so a store can be
//! persisted and folded further.

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use pathflow_schemas::codes::BookingBand;
use pathflow_schemas::codes::{
    AdviceOutcome, AppointmentMode, AppointmentStatus, CancelledBy, ClockStartReason,
    ClockStopReason, ContactType, FollowupCancelReason, HcpType, NationalCategory, Priority,
    ReferralSource, Setting, SlotWithdrawReason, TreatmentFunction, TriageOutcome,
};
use pathflow_schemas::event::{AppointmentKind, Envelope, SlotKind};
use pathflow_schemas::{Event, EventId, OdsCode, Payload, PseudoId};
use serde::{Deserialize, Serialize};

use crate::rules;
use crate::spill::{SpillError, SpillKey, Spilled, Store};

// ---- registers ------------------------------------------------------------

/// One event's contribution to a [`Register`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fact<T> {
    /// The event it came from.
    pub event_id: EventId,
    /// When it happened (the event's `occurred_at`).
    #[serde(with = "chrono::serde::ts_microseconds")]
    pub occurred_at: DateTime<Utc>,
    /// The earliest recording of the event seen.
    #[serde(with = "chrono::serde::ts_microseconds")]
    pub recorded_at: DateTime<Utc>,
    /// Orders facts of the same instant (higher wins).
    pub rank: u8,
    /// What the event says.
    pub value: T,
}

impl<T> Fact<T> {
    fn new(event: &Event, rank: u8, value: T) -> Self {
        Fact {
            event_id: event.envelope.event_id.clone(),
            occurred_at: event.envelope.occurred_at,
            recorded_at: event.envelope.recorded_at,
            rank,
            value,
        }
    }

    fn key(&self) -> (DateTime<Utc>, u8, DateTime<Utc>, &EventId) {
        (
            self.occurred_at,
            self.rank,
            self.recorded_at,
            &self.event_id,
        )
    }

    /// The UK date the fact happened on.
    pub fn date(&self) -> NaiveDate {
        rules::uk_date(self.occurred_at)
    }
}

/// A fact of an entity as the set of events that stated it; its value is the
/// latest one's (see the module doc for the order).
///
/// Most registers hold one or two facts for the entity's whole life, and
/// the fold holds millions of them: the vector grows one fact at a time
/// (`insert_sorted_by`) rather than to `Vec`'s first capacity of four.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register<T> {
    /// Sorted by event id, one per event id.
    facts: Vec<Fact<T>>,
}

/// Inserts `value` into `v`, kept sorted by `key` with one element per key;
/// when the key is already held, `merge` decides what stays. The vector
/// grows by exactly one: the fold's small vectors stay small for good, so
/// the copy on each growth costs less than the three spare places `Vec`
/// would otherwise keep behind every entity.
fn insert_sorted_by<T, K: Ord + ?Sized>(
    v: &mut Vec<T>,
    value: T,
    key: impl Fn(&T) -> &K,
    merge: impl FnOnce(&mut T, T),
) {
    match v.binary_search_by(|held| key(held).cmp(key(&value))) {
        Ok(i) => merge(&mut v[i], value),
        Err(i) => {
            v.reserve_exact(1);
            v.insert(i, value);
        }
    }
}

impl<T> Default for Register<T> {
    fn default() -> Self {
        Register { facts: Vec::new() }
    }
}

impl<T> Register<T> {
    /// Adds a fact; an event id already present keeps its earliest recording.
    pub fn insert(&mut self, fact: Fact<T>) {
        insert_sorted_by(
            &mut self.facts,
            fact,
            |f| &f.event_id,
            |held, fact| {
                if fact.recorded_at < held.recorded_at {
                    *held = fact;
                }
            },
        );
    }

    /// Adds every fact of `other`, as [`insert`](Self::insert) does one.
    pub fn merge(&mut self, other: Register<T>) {
        for fact in other.facts {
            self.insert(fact);
        }
    }

    /// The winning (latest) fact.
    pub fn latest(&self) -> Option<&Fact<T>> {
        self.facts.iter().max_by(|a, b| a.key().cmp(&b.key()))
    }

    /// The first fact in event order.
    pub fn earliest(&self) -> Option<&Fact<T>> {
        self.facts.iter().min_by(|a, b| a.key().cmp(&b.key()))
    }

    /// The winning fact's value.
    pub fn value(&self) -> Option<&T> {
        self.latest().map(|f| &f.value)
    }

    /// Every fact, by event id.
    pub fn facts(&self) -> &[Fact<T>] {
        &self.facts
    }

    /// True when no event has stated the fact.
    pub fn is_empty(&self) -> bool {
        self.facts.is_empty()
    }
}

/// The organisations an event concerns (its envelope's codes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Orgs {
    /// GP practice.
    pub practice: Option<OdsCode>,
    /// Hospital provider.
    pub provider: Option<OdsCode>,
    /// Specialty.
    pub treatment_function: Option<TreatmentFunction>,
}

impl Orgs {
    fn of(envelope: &Envelope) -> Self {
        Orgs {
            practice: envelope.practice.clone(),
            provider: envelope.provider.clone(),
            treatment_function: envelope.treatment_function,
        }
    }
}

/// A code from the entity's defining event (referral, booking, request, …)
/// when it has arrived; until then from the latest event that carries one.
fn pick<'a, T>(
    defining: Option<&'a Orgs>,
    seen: &'a Register<Orgs>,
    code: impl Fn(&'a Orgs) -> Option<&'a T>,
) -> Option<&'a T> {
    if let Some(orgs) = defining {
        return code(orgs);
    }
    let mut facts: Vec<&Fact<Orgs>> = seen.facts.iter().collect();
    facts.sort_by(|a, b| b.key().cmp(&a.key()));
    facts.into_iter().find_map(|f| code(&f.value))
}

// ---- referrals ------------------------------------------------------------

/// What `referral.created` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Referral {
    /// The patient referred.
    pub patient_id: PseudoId,
    /// Routine, urgent or two-week wait.
    pub priority: Priority,
    /// Who referred.
    pub referral_source: ReferralSource,
    /// The A&G request it was converted from.
    pub from_advice: Option<PseudoId>,
    /// Practice, provider and the specialty referred to.
    pub orgs: Orgs,
}

/// What `referral.triaged` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Triage {
    /// The provider's decision.
    pub outcome: TriageOutcome,
    /// Where a redirected referral went.
    pub redirected_to: Option<TreatmentFunction>,
}

/// Where a pathway stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferralStatus {
    /// Received, clock running (or not started yet).
    Open,
    /// The current RTT clock stopped.
    Stopped,
    /// Discharged from the pathway (at or after the current clock start).
    Discharged,
}

impl ReferralStatus {
    /// The name in tables.
    pub fn name(self) -> &'static str {
        match self {
            ReferralStatus::Open => "open",
            ReferralStatus::Stopped => "stopped",
            ReferralStatus::Discharged => "discharged",
        }
    }
}

/// One pathway: the referral, its triage, its RTT clock and its first attendance.
///
/// The clock: the latest `referral.clock_started` is the clock in force
/// ([`rules::ends_current_clock`]: a restart after a first-appointment DNA
/// replaces the start); the latest stop and the latest discharge count only
/// when at or after it. The pathway leaves the waiting list at the earlier of
/// the two. No `clock_started` event, no clock: the pathway is not on the
/// RTT waiting list.
///
/// The first attendance is the earliest UK date on which an outpatient
/// appointment booked as a first attendance on this pathway was attended
/// (its `appointment.attended` time); follow-up attendances, DNAs and
/// cancellations do not count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferralState {
    pathway_id: PseudoId,
    created: Register<Referral>,
    triage: Register<Triage>,
    clock_starts: Register<ClockStartReason>,
    clock_stops: Register<ClockStopReason>,
    discharges: Register<()>,
    advice_conversions: Register<PseudoId>,
    orgs_seen: Register<Orgs>,
    /// Per appointment booked on the pathway (sorted by appointment, one
    /// each): its attended first-attendance date. A vector, not a map: most
    /// pathways have one or two, and a B-tree's first node has room for 11.
    first_attendances: Vec<(PseudoId, Option<NaiveDate>)>,
}

impl ReferralState {
    /// A pathway no event has said anything about yet.
    pub fn new(pathway_id: PseudoId) -> Self {
        ReferralState {
            pathway_id,
            created: Register::default(),
            triage: Register::default(),
            clock_starts: Register::default(),
            clock_stops: Register::default(),
            discharges: Register::default(),
            advice_conversions: Register::default(),
            orgs_seen: Register::default(),
            first_attendances: Vec::new(),
        }
    }

    /// Adds every fact of `other` (a state of the same pathway folded from
    /// other events). Registers are sets, so this is the state one fold of
    /// both sets of events would hold; a first attendance both know takes
    /// `other`'s date (the fold writes an appointment's whole contribution
    /// each time it changes, so the later writer is the complete one).
    fn merge(&mut self, other: ReferralState) {
        // Destructured so a new field cannot be left out of the merge.
        let ReferralState {
            pathway_id: _,
            created,
            triage,
            clock_starts,
            clock_stops,
            discharges,
            advice_conversions,
            orgs_seen,
            first_attendances,
        } = other;
        self.created.merge(created);
        self.triage.merge(triage);
        self.clock_starts.merge(clock_starts);
        self.clock_stops.merge(clock_stops);
        self.discharges.merge(discharges);
        self.advice_conversions.merge(advice_conversions);
        self.orgs_seen.merge(orgs_seen);
        for attendance in first_attendances {
            insert_sorted_by(
                &mut self.first_attendances,
                attendance,
                |(appointment, _)| appointment,
                |held, (_, date)| held.1 = date,
            );
        }
    }

    /// The pathway's pseudonym.
    pub fn pathway_id(&self) -> &PseudoId {
        &self.pathway_id
    }

    /// What `referral.created` said, once it has arrived.
    pub fn referral(&self) -> Option<&Referral> {
        self.created.value()
    }

    /// The patient.
    pub fn patient_id(&self) -> Option<&PseudoId> {
        self.referral().map(|r| &r.patient_id)
    }

    /// Priority.
    pub fn priority(&self) -> Option<Priority> {
        self.referral().map(|r| r.priority)
    }

    /// Who referred.
    pub fn referral_source(&self) -> Option<ReferralSource> {
        self.referral().map(|r| r.referral_source)
    }

    /// The referring practice (from the referral, else the latest referral event).
    pub fn practice(&self) -> Option<&OdsCode> {
        pick(self.referral().map(|r| &r.orgs), &self.orgs_seen, |o| {
            o.practice.as_ref()
        })
    }

    /// The provider referred to.
    pub fn provider(&self) -> Option<&OdsCode> {
        pick(self.referral().map(|r| &r.orgs), &self.orgs_seen, |o| {
            o.provider.as_ref()
        })
    }

    /// The specialty referred to.
    pub fn referred_treatment_function(&self) -> Option<TreatmentFunction> {
        pick(self.referral().map(|r| &r.orgs), &self.orgs_seen, |o| {
            o.treatment_function.as_ref()
        })
        .copied()
    }

    /// The specialty the pathway is in now: where triage redirected it, else
    /// the one referred to.
    pub fn treatment_function(&self) -> Option<TreatmentFunction> {
        match self.triage.value() {
            Some(Triage {
                outcome: TriageOutcome::Redirected,
                redirected_to: Some(tf),
            }) => Some(*tf),
            _ => self.referred_treatment_function(),
        }
    }

    /// The UK date the referral was received.
    pub fn received_date(&self) -> Option<NaiveDate> {
        self.created.latest().map(Fact::date)
    }

    /// The latest triage decision and its UK date.
    pub fn triage(&self) -> Option<(NaiveDate, &Triage)> {
        self.triage.latest().map(|f| (f.date(), &f.value))
    }

    /// The A&G request the pathway came from: named on the referral, else by
    /// `advice.converted`.
    pub fn advice_origin(&self) -> Option<&PseudoId> {
        self.referral()
            .and_then(|r| r.from_advice.as_ref())
            .or_else(|| self.advice_conversions.value())
    }

    fn current_start(&self) -> Option<&Fact<ClockStartReason>> {
        self.clock_starts.latest()
    }

    fn in_current_clock<T>(&self, fact: Option<&'_ Fact<T>>) -> bool {
        match (fact, self.current_start()) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(end), Some(start)) => {
                rules::ends_current_clock(start.occurred_at, end.occurred_at)
            }
        }
    }

    /// The clock in force: its UK start date and why it started.
    pub fn clock_start(&self) -> Option<(NaiveDate, ClockStartReason)> {
        self.current_start().map(|f| (f.date(), f.value))
    }

    /// The stop of the clock in force: UK date and reason.
    pub fn clock_stop(&self) -> Option<(NaiveDate, ClockStopReason)> {
        let stop = self.clock_stops.latest();
        self.in_current_clock(stop)
            .then(|| stop.map(|f| (f.date(), f.value)))
            .flatten()
    }

    /// The UK date of discharge, when at or after the clock in force started.
    pub fn discharged(&self) -> Option<NaiveDate> {
        let discharge = self.discharges.latest();
        self.in_current_clock(discharge)
            .then(|| discharge.map(Fact::date))
            .flatten()
    }

    /// The pathway's first outpatient attendance (UK date).
    pub fn first_attendance(&self) -> Option<NaiveDate> {
        self.first_attendances
            .iter()
            .filter_map(|(_, date)| *date)
            .min()
    }

    /// Open, stopped or discharged.
    pub fn status(&self) -> ReferralStatus {
        if self.discharged().is_some() {
            ReferralStatus::Discharged
        } else if self.clock_stop().is_some() {
            ReferralStatus::Stopped
        } else {
            ReferralStatus::Open
        }
    }

    /// The UK date the pathway left the waiting list: the earlier of the stop
    /// and the discharge of the clock in force.
    pub fn wait_end(&self) -> Option<NaiveDate> {
        match (self.clock_stop().map(|s| s.0), self.discharged()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// On the RTT waiting list (an incomplete pathway) on `date`.
    pub fn waiting_at(&self, date: NaiveDate) -> bool {
        self.clock_start()
            .is_some_and(|(start, _)| rules::is_incomplete_at(start, self.wait_end(), date))
    }

    /// Completed weeks waited so far on `date`, while waiting.
    pub fn wait_weeks_at(&self, date: NaiveDate) -> Option<u32> {
        let (start, _) = self.clock_start()?;
        self.waiting_at(date)
            .then(|| rules::weeks_waited(start, date))
            .flatten()
    }

    /// Completed weeks from clock start to clock stop, for a completed
    /// pathway (a nullified clock is no completed pathway).
    pub fn final_wait_weeks(&self) -> Option<u32> {
        let (start, _) = self.clock_start()?;
        let (stop, reason) = self.clock_stop()?;
        if rules::is_nullified(reason) {
            return None;
        }
        rules::weeks_waited(start, stop)
    }
}

// ---- appointments ---------------------------------------------------------

/// What `appointment.booked` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Booking {
    /// The patient.
    pub patient_id: PseudoId,
    /// The slot first booked, when known.
    pub slot_id: Option<PseudoId>,
    /// The start first booked (UTC).
    #[serde(with = "chrono::serde::ts_microseconds")]
    pub start: DateTime<Utc>,
    /// GP (with GPAD mapping) or outpatient (with pathway and contact).
    #[serde(with = "stored_kind::appointment")]
    pub kind: AppointmentKind,
    /// The booking event's orgs.
    pub orgs: Orgs,
}

/// When and where the appointment is, from its booking or latest move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// Start (UTC).
    #[serde(with = "chrono::serde::ts_microseconds")]
    pub start: DateTime<Utc>,
    /// Slot, when known.
    pub slot_id: Option<PseudoId>,
}

/// Ranks of the events of one instant (higher wins).
const RANK_BOOKED: u8 = 0;
const RANK_RESCHEDULED: u8 = 1;
const RANK_OUTCOME: u8 = 2;

/// One appointment, GP or outpatient.
///
/// Status is the latest of booked, rescheduled (both "booked"), attended,
/// did not attend and cancelled; an outcome of the same instant beats a
/// booking. The start is the latest of the booked and rescheduled starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppointmentState {
    appointment_id: PseudoId,
    booking: Register<Booking>,
    schedule: Register<Schedule>,
    status: Register<AppointmentStatus>,
    orgs_seen: Register<Orgs>,
    /// Every pathway a booking of it has named (sorted, one each; nearly
    /// always one).
    pathways: Vec<PseudoId>,
}

impl AppointmentState {
    /// An appointment no event has said anything about yet.
    pub fn new(appointment_id: PseudoId) -> Self {
        AppointmentState {
            appointment_id,
            booking: Register::default(),
            schedule: Register::default(),
            status: Register::default(),
            orgs_seen: Register::default(),
            pathways: Vec::new(),
        }
    }

    /// The appointment's pseudonym.
    pub fn appointment_id(&self) -> &PseudoId {
        &self.appointment_id
    }

    /// What the (latest) booking said.
    pub fn booking(&self) -> Option<&Booking> {
        self.booking.value()
    }

    /// When it was booked (UTC).
    pub fn booked_at(&self) -> Option<DateTime<Utc>> {
        self.booking.latest().map(|f| f.occurred_at)
    }

    /// The patient.
    pub fn patient_id(&self) -> Option<&PseudoId> {
        self.booking().map(|b| &b.patient_id)
    }

    /// What it is.
    pub fn kind(&self) -> Option<&AppointmentKind> {
        self.booking().map(|b| &b.kind)
    }

    /// GP or outpatient.
    pub fn setting(&self) -> Option<Setting> {
        self.kind().map(AppointmentKind::setting)
    }

    /// GPAD mode, HCP type and national category, for GP appointments.
    pub fn gpad(&self) -> Option<(AppointmentMode, HcpType, NationalCategory)> {
        match self.kind()? {
            AppointmentKind::Gp {
                mode,
                hcp_type,
                national_category,
            } => Some((*mode, *hcp_type, *national_category)),
            AppointmentKind::Outpatient { .. } => None,
        }
    }

    /// The pathway, for outpatient appointments.
    pub fn pathway_id(&self) -> Option<&PseudoId> {
        match self.kind()? {
            AppointmentKind::Outpatient { pathway_id, .. } => Some(pathway_id),
            AppointmentKind::Gp { .. } => None,
        }
    }

    /// First or follow-up, for outpatient appointments.
    pub fn contact(&self) -> Option<ContactType> {
        match self.kind()? {
            AppointmentKind::Outpatient { contact, .. } => Some(*contact),
            AppointmentKind::Gp { .. } => None,
        }
    }

    /// The follow-up requirement it meets.
    pub fn followup_id(&self) -> Option<&PseudoId> {
        match self.kind()? {
            AppointmentKind::Outpatient { followup_id, .. } => followup_id.as_ref(),
            AppointmentKind::Gp { .. } => None,
        }
    }

    /// The current start (UTC).
    pub fn start(&self) -> Option<DateTime<Utc>> {
        self.schedule.value().map(|s| s.start)
    }

    /// The current slot, when known.
    pub fn slot_id(&self) -> Option<&PseudoId> {
        self.schedule.value().and_then(|s| s.slot_id.as_ref())
    }

    /// Booked, attended, did not attend, or cancelled by whom. An appointment
    /// known only from a move is booked.
    pub fn status(&self) -> AppointmentStatus {
        self.status
            .value()
            .copied()
            .unwrap_or(AppointmentStatus::Booked)
    }

    /// The UK date of the outcome (attendance, DNA or cancellation).
    pub fn outcome_date(&self) -> Option<NaiveDate> {
        self.status
            .latest()
            .filter(|f| f.rank == RANK_OUTCOME)
            .map(Fact::date)
    }

    /// Who cancelled, for cancelled appointments.
    pub fn cancelled_by(&self) -> Option<CancelledBy> {
        match self.status() {
            AppointmentStatus::CancelledByPatient => Some(CancelledBy::Patient),
            AppointmentStatus::CancelledByProvider => Some(CancelledBy::Provider),
            _ => None,
        }
    }

    /// Booking lead time in UK calendar days, from booking to the current
    /// start ([`rules::booking_lead_days`]).
    pub fn booking_lead_days(&self) -> Option<i64> {
        Some(rules::booking_lead_days(self.booked_at()?, self.start()?))
    }

    /// The GPAD booking-to-appointment band ([`rules::booking_band`]).
    pub fn booking_band(&self) -> Option<BookingBand> {
        rules::booking_band(self.booked_at()?, self.start()?)
    }

    /// The practice (the booking's, else the latest event's).
    pub fn practice(&self) -> Option<&OdsCode> {
        pick(self.booking().map(|b| &b.orgs), &self.orgs_seen, |o| {
            o.practice.as_ref()
        })
    }

    /// The provider.
    pub fn provider(&self) -> Option<&OdsCode> {
        pick(self.booking().map(|b| &b.orgs), &self.orgs_seen, |o| {
            o.provider.as_ref()
        })
    }

    /// The specialty.
    pub fn treatment_function(&self) -> Option<TreatmentFunction> {
        pick(self.booking().map(|b| &b.orgs), &self.orgs_seen, |o| {
            o.treatment_function.as_ref()
        })
        .copied()
    }

    /// Its contribution to `pathway`'s first attendance: the UK date it was
    /// attended, if it is a first attendance currently booked on `pathway`.
    fn first_attendance_for(&self, pathway: &PseudoId) -> Option<NaiveDate> {
        let first =
            self.pathway_id() == Some(pathway) && self.contact() == Some(ContactType::First);
        let attended = self.status() == AppointmentStatus::Attended;
        (first && attended)
            .then(|| self.status.latest().map(Fact::date))
            .flatten()
    }
}

/// The appointment and slot kinds as stored states write them: the event
/// schema tags them with a field (`"setting": "gp"`), which only
/// self-describing formats read back; states are stored in postcard, so
/// they are written as plain enums.
mod stored_kind {
    use pathflow_schemas::PseudoId;
    use pathflow_schemas::codes::{AppointmentMode, ContactType, HcpType, NationalCategory};
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    enum Appointment {
        Gp(AppointmentMode, HcpType, NationalCategory),
        Outpatient(PseudoId, ContactType, Option<PseudoId>),
    }

    #[derive(Serialize, Deserialize)]
    enum Slot {
        Gp(AppointmentMode, HcpType, NationalCategory),
        Outpatient(ContactType),
    }

    pub mod appointment {
        use super::Appointment;
        use pathflow_schemas::event::AppointmentKind;
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        pub fn serialize<S: Serializer>(kind: &AppointmentKind, s: S) -> Result<S::Ok, S::Error> {
            match kind.clone() {
                AppointmentKind::Gp {
                    mode,
                    hcp_type,
                    national_category,
                } => Appointment::Gp(mode, hcp_type, national_category),
                AppointmentKind::Outpatient {
                    pathway_id,
                    contact,
                    followup_id,
                } => Appointment::Outpatient(pathway_id, contact, followup_id),
            }
            .serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<AppointmentKind, D::Error> {
            Ok(match Appointment::deserialize(d)? {
                Appointment::Gp(mode, hcp_type, national_category) => AppointmentKind::Gp {
                    mode,
                    hcp_type,
                    national_category,
                },
                Appointment::Outpatient(pathway_id, contact, followup_id) => {
                    AppointmentKind::Outpatient {
                        pathway_id,
                        contact,
                        followup_id,
                    }
                }
            })
        }
    }

    pub mod slot {
        use super::Slot;
        use pathflow_schemas::event::SlotKind;
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        pub fn serialize<S: Serializer>(kind: &SlotKind, s: S) -> Result<S::Ok, S::Error> {
            match kind.clone() {
                SlotKind::Gp {
                    mode,
                    hcp_type,
                    national_category,
                } => Slot::Gp(mode, hcp_type, national_category),
                SlotKind::Outpatient { contact } => Slot::Outpatient(contact),
            }
            .serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SlotKind, D::Error> {
            Ok(match Slot::deserialize(d)? {
                Slot::Gp(mode, hcp_type, national_category) => SlotKind::Gp {
                    mode,
                    hcp_type,
                    national_category,
                },
                Slot::Outpatient(contact) => SlotKind::Outpatient { contact },
            })
        }
    }
}

// ---- slots ----------------------------------------------------------------

/// What `appointment.slot_published` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// Start (UTC).
    #[serde(with = "chrono::serde::ts_microseconds")]
    pub start: DateTime<Utc>,
    /// Length in minutes.
    pub duration_minutes: u16,
    /// GP (with GPAD mapping) or outpatient (new or follow-up).
    #[serde(with = "stored_kind::slot")]
    pub kind: SlotKind,
    /// The publishing event's orgs.
    pub orgs: Orgs,
}

/// One slot of capacity. A slot is withdrawn once any withdrawal is known,
/// whatever the times: GP slots are published at their own start, so a
/// withdrawal would otherwise always look older than the publication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotState {
    slot_id: PseudoId,
    published: Register<Slot>,
    withdrawn: Register<SlotWithdrawReason>,
}

impl SlotState {
    /// A slot no event has said anything about yet.
    pub fn new(slot_id: PseudoId) -> Self {
        SlotState {
            slot_id,
            published: Register::default(),
            withdrawn: Register::default(),
        }
    }

    /// The slot's pseudonym.
    pub fn slot_id(&self) -> &PseudoId {
        &self.slot_id
    }

    /// What the (latest) publication said.
    pub fn slot(&self) -> Option<&Slot> {
        self.published.value()
    }

    /// Start (UTC).
    pub fn start(&self) -> Option<DateTime<Utc>> {
        self.slot().map(|s| s.start)
    }

    /// Length in minutes.
    pub fn duration_minutes(&self) -> Option<u16> {
        self.slot().map(|s| s.duration_minutes)
    }

    /// GP or outpatient.
    pub fn setting(&self) -> Option<Setting> {
        self.slot().map(|s| s.kind.setting())
    }

    /// True once published.
    pub fn is_published(&self) -> bool {
        !self.published.is_empty()
    }

    /// The UK date and reason of the (latest) withdrawal.
    pub fn withdrawn(&self) -> Option<(NaiveDate, SlotWithdrawReason)> {
        self.withdrawn.latest().map(|f| (f.date(), f.value))
    }
}

// ---- follow-ups -----------------------------------------------------------

/// What `followup.required` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirement {
    /// The pathway.
    pub pathway_id: PseudoId,
    /// The patient.
    pub patient_id: PseudoId,
    /// Due by.
    pub due_date: NaiveDate,
    /// Patient-initiated follow-up.
    pub pifu: bool,
    /// The event's orgs.
    pub orgs: Orgs,
}

/// How a follow-up ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Settlement {
    /// It took place.
    Completed,
    /// It will not happen.
    Cancelled(FollowupCancelReason),
}

/// Where a follow-up stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FollowupStatus {
    /// Required, not booked.
    Waiting,
    /// An appointment is booked for it.
    Booked,
    /// Took place.
    Completed,
    /// Will not happen.
    Cancelled,
}

impl FollowupStatus {
    /// The name in tables.
    pub fn name(self) -> &'static str {
        match self {
            FollowupStatus::Waiting => "waiting",
            FollowupStatus::Booked => "booked",
            FollowupStatus::Completed => "completed",
            FollowupStatus::Cancelled => "cancelled",
        }
    }
}

/// One follow-up requirement. Its outcome is the latest of completed and
/// cancelled; before either it is booked once any booking is known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowupState {
    followup_id: PseudoId,
    required: Register<Requirement>,
    pathways: Register<PseudoId>,
    bookings: Register<PseudoId>,
    settled: Register<Settlement>,
    orgs_seen: Register<Orgs>,
}

impl FollowupState {
    /// A follow-up no event has said anything about yet.
    pub fn new(followup_id: PseudoId) -> Self {
        FollowupState {
            followup_id,
            required: Register::default(),
            pathways: Register::default(),
            bookings: Register::default(),
            settled: Register::default(),
            orgs_seen: Register::default(),
        }
    }

    /// The follow-up's pseudonym.
    pub fn followup_id(&self) -> &PseudoId {
        &self.followup_id
    }

    /// What `followup.required` said.
    pub fn requirement(&self) -> Option<&Requirement> {
        self.required.value()
    }

    /// The UK date it became required.
    pub fn required_date(&self) -> Option<NaiveDate> {
        self.required.latest().map(Fact::date)
    }

    /// The pathway (from the requirement, else any follow-up event).
    pub fn pathway_id(&self) -> Option<&PseudoId> {
        self.requirement()
            .map(|r| &r.pathway_id)
            .or_else(|| self.pathways.value())
    }

    /// Due by.
    pub fn due_date(&self) -> Option<NaiveDate> {
        self.requirement().map(|r| r.due_date)
    }

    /// Patient-initiated.
    pub fn pifu(&self) -> Option<bool> {
        self.requirement().map(|r| r.pifu)
    }

    /// The appointment (latest) booked to meet it.
    pub fn booked_appointment(&self) -> Option<&PseudoId> {
        self.bookings.value()
    }

    /// Waiting, booked, completed or cancelled.
    pub fn status(&self) -> FollowupStatus {
        match self.settled.value() {
            Some(Settlement::Completed) => FollowupStatus::Completed,
            Some(Settlement::Cancelled(_)) => FollowupStatus::Cancelled,
            None if !self.bookings.is_empty() => FollowupStatus::Booked,
            None => FollowupStatus::Waiting,
        }
    }

    /// The UK date it was completed or cancelled, and how.
    pub fn settled(&self) -> Option<(NaiveDate, Settlement)> {
        self.settled.latest().map(|f| (f.date(), f.value))
    }

    /// Days overdue on `date` ([`rules::followup_overdue_days`]); `None`
    /// when not overdue or not yet known to be required.
    pub fn overdue_days_at(&self, date: NaiveDate) -> Option<i64> {
        let r = self.requirement()?;
        rules::followup_overdue_days(r.due_date, self.settled().map(|s| s.0), r.pifu, date)
    }

    /// The provider.
    pub fn provider(&self) -> Option<&OdsCode> {
        pick(self.requirement().map(|r| &r.orgs), &self.orgs_seen, |o| {
            o.provider.as_ref()
        })
    }

    /// The specialty.
    pub fn treatment_function(&self) -> Option<TreatmentFunction> {
        pick(self.requirement().map(|r| &r.orgs), &self.orgs_seen, |o| {
            o.treatment_function.as_ref()
        })
        .copied()
    }
}

// ---- advice & guidance ----------------------------------------------------

/// What `advice.requested` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdviceRequest {
    /// The patient.
    pub patient_id: PseudoId,
    /// The event's orgs (practice asking, provider and specialty asked).
    pub orgs: Orgs,
}

/// One A&G request. The response time runs to the first response; the
/// outcome is the latest response's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdviceState {
    advice_id: PseudoId,
    requested: Register<AdviceRequest>,
    responses: Register<AdviceOutcome>,
    conversions: Register<PseudoId>,
    orgs_seen: Register<Orgs>,
}

impl AdviceState {
    /// A request no event has said anything about yet.
    pub fn new(advice_id: PseudoId) -> Self {
        AdviceState {
            advice_id,
            requested: Register::default(),
            responses: Register::default(),
            conversions: Register::default(),
            orgs_seen: Register::default(),
        }
    }

    /// The request's pseudonym.
    pub fn advice_id(&self) -> &PseudoId {
        &self.advice_id
    }

    /// What the request said.
    pub fn request(&self) -> Option<&AdviceRequest> {
        self.requested.value()
    }

    /// When it was asked (UTC).
    pub fn requested_at(&self) -> Option<DateTime<Utc>> {
        self.requested.latest().map(|f| f.occurred_at)
    }

    /// When the specialist first answered (UTC).
    pub fn responded_at(&self) -> Option<DateTime<Utc>> {
        self.responses.earliest().map(|f| f.occurred_at)
    }

    /// The latest answer.
    pub fn outcome(&self) -> Option<AdviceOutcome> {
        self.responses.value().copied()
    }

    /// Request to first response ([`rules::advice_response_time`]).
    pub fn response_time(&self) -> Option<Duration> {
        rules::advice_response_time(self.requested_at()?, self.responded_at()?)
    }

    /// Request to first response in UK calendar days.
    pub fn response_days(&self) -> Option<i64> {
        rules::advice_response_days(self.requested_at()?, self.responded_at()?)
    }

    /// The pathway it was converted into.
    pub fn converted_to(&self) -> Option<&PseudoId> {
        self.conversions.value()
    }

    /// The practice that asked.
    pub fn practice(&self) -> Option<&OdsCode> {
        pick(self.request().map(|r| &r.orgs), &self.orgs_seen, |o| {
            o.practice.as_ref()
        })
    }

    /// The specialty asked.
    pub fn treatment_function(&self) -> Option<TreatmentFunction> {
        pick(self.request().map(|r| &r.orgs), &self.orgs_seen, |o| {
            o.treatment_function.as_ref()
        })
        .copied()
    }
}

// ---- the store ------------------------------------------------------------

/// The entity an event is folded into first ([`Fold::home`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Home<'a> {
    /// A pathway (referral events).
    Pathway(&'a PseudoId),
    /// An appointment, slot, follow-up or A&G request.
    Other(&'a PseudoId),
}

/// An entity an event changed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Touched {
    /// A pathway.
    Referral(PseudoId),
    /// An appointment.
    Appointment(PseudoId),
    /// A slot.
    Slot(PseudoId),
    /// A follow-up.
    Followup(PseudoId),
    /// An A&G request.
    Advice(PseudoId),
}

impl Touched {
    /// The kind's place in `Touched`'s order.
    pub fn kind(&self) -> u8 {
        match self {
            Touched::Referral(_) => 0,
            Touched::Appointment(_) => 1,
            Touched::Slot(_) => 2,
            Touched::Followup(_) => 3,
            Touched::Advice(_) => 4,
        }
    }

    /// The entity's id.
    pub fn id(&self) -> &PseudoId {
        match self {
            Touched::Referral(id)
            | Touched::Appointment(id)
            | Touched::Slot(id)
            | Touched::Followup(id)
            | Touched::Advice(id) => id,
        }
    }
}

impl SpillKey for Touched {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.kind());
        self.id().encode(out);
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        let (kind, id) = bytes.split_first()?;
        let id = PseudoId::decode(id)?;
        Some(match kind {
            0 => Touched::Referral(id),
            1 => Touched::Appointment(id),
            2 => Touched::Slot(id),
            3 => Touched::Followup(id),
            4 => Touched::Advice(id),
            _ => return None,
        })
    }
}

/// Every entity's state, by id: in memory ([`Fold::new`]) or in a
/// [`Store`] with only the entities in use in memory ([`Fold::on`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fold {
    referrals: Spilled<PseudoId, ReferralState>,
    appointments: Spilled<PseudoId, AppointmentState>,
    slots: Spilled<PseudoId, SlotState>,
    followups: Spilled<PseudoId, FollowupState>,
    advice: Spilled<PseudoId, AdviceState>,
}

fn entry<'a, S: Serialize + serde::de::DeserializeOwned + Clone>(
    map: &'a mut Spilled<PseudoId, S>,
    id: &PseudoId,
    new: fn(PseudoId) -> S,
) -> &'a mut S {
    map.get_or_insert_with(id, || new(id.clone()))
}

impl Fold {
    /// An empty fold, in memory.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty fold kept in `store`.
    pub fn on(store: &Arc<Store>) -> Self {
        Fold {
            referrals: Spilled::on(store, "fold_referrals"),
            appointments: Spilled::on(store, "fold_appointments"),
            slots: Spilled::on(store, "fold_slots"),
            followups: Spilled::on(store, "fold_followups"),
            advice: Spilled::on(store, "fold_advice"),
        }
    }

    /// Entities held in memory (all of them without a store).
    pub fn in_memory_len(&self) -> usize {
        self.referrals.in_memory_len()
            + self.appointments.in_memory_len()
            + self.slots.in_memory_len()
            + self.followups.in_memory_len()
            + self.advice.in_memory_len()
    }

    /// Writes the entities in memory to the store and forgets them.
    pub fn flush(&mut self) -> Result<(), SpillError> {
        self.referrals.flush()?;
        self.appointments.flush()?;
        self.slots.flush()?;
        self.followups.flush()?;
        self.advice.flush()
    }

    /// Folds one event in and names the entities it changed. Any order of
    /// the same set of events gives the same store; an event seen before
    /// changes nothing.
    pub fn apply(&mut self, event: &Event) -> Vec<Touched> {
        let e = event;
        let orgs = Orgs::of(&e.envelope);
        match &e.payload {
            Payload::ReferralCreated(d) => {
                let r = self.referral_entry(&d.pathway_id, e, orgs.clone());
                r.created.insert(Fact::new(
                    e,
                    0,
                    Referral {
                        patient_id: d.patient.id.clone(),
                        priority: d.priority,
                        referral_source: d.referral_source,
                        from_advice: d.from_advice.clone(),
                        orgs,
                    },
                ));
                vec![Touched::Referral(d.pathway_id.clone())]
            }
            Payload::ReferralTriaged(d) => {
                let r = self.referral_entry(&d.pathway_id, e, orgs);
                r.triage.insert(Fact::new(
                    e,
                    0,
                    Triage {
                        outcome: d.outcome,
                        redirected_to: d.redirected_to,
                    },
                ));
                vec![Touched::Referral(d.pathway_id.clone())]
            }
            Payload::ClockStarted(d) => {
                let r = self.referral_entry(&d.pathway_id, e, orgs);
                r.clock_starts.insert(Fact::new(e, 0, d.reason));
                vec![Touched::Referral(d.pathway_id.clone())]
            }
            Payload::ClockStopped(d) => {
                let r = self.referral_entry(&d.pathway_id, e, orgs);
                r.clock_stops.insert(Fact::new(e, 0, d.reason));
                vec![Touched::Referral(d.pathway_id.clone())]
            }
            Payload::ReferralDischarged(d) => {
                let r = self.referral_entry(&d.pathway_id, e, orgs);
                r.discharges.insert(Fact::new(e, 0, ()));
                vec![Touched::Referral(d.pathway_id.clone())]
            }
            Payload::AdviceRequested(d) => {
                let a = self.advice_entry(&d.advice_id, e, orgs.clone());
                a.requested.insert(Fact::new(
                    e,
                    0,
                    AdviceRequest {
                        patient_id: d.patient.id.clone(),
                        orgs,
                    },
                ));
                vec![Touched::Advice(d.advice_id.clone())]
            }
            Payload::AdviceResponded(d) => {
                let a = self.advice_entry(&d.advice_id, e, orgs);
                a.responses.insert(Fact::new(e, 0, d.outcome));
                vec![Touched::Advice(d.advice_id.clone())]
            }
            Payload::AdviceConverted(d) => {
                let a = self.advice_entry(&d.advice_id, e, orgs);
                a.conversions.insert(Fact::new(e, 0, d.pathway_id.clone()));
                // The advice event's orgs are the request's, not the pathway's.
                let r = entry(&mut self.referrals, &d.pathway_id, ReferralState::new);
                r.advice_conversions
                    .insert(Fact::new(e, 0, d.advice_id.clone()));
                vec![
                    Touched::Advice(d.advice_id.clone()),
                    Touched::Referral(d.pathway_id.clone()),
                ]
            }
            Payload::SlotPublished(d) => {
                let s = entry(&mut self.slots, &d.slot_id, SlotState::new);
                s.published.insert(Fact::new(
                    e,
                    0,
                    Slot {
                        start: d.start,
                        duration_minutes: d.duration_minutes,
                        kind: d.kind.clone(),
                        orgs,
                    },
                ));
                vec![Touched::Slot(d.slot_id.clone())]
            }
            Payload::SlotWithdrawn(d) => {
                let s = entry(&mut self.slots, &d.slot_id, SlotState::new);
                s.withdrawn.insert(Fact::new(e, 0, d.reason));
                vec![Touched::Slot(d.slot_id.clone())]
            }
            Payload::AppointmentBooked(d) => {
                let a = self.appointment_entry(&d.appointment_id, e, orgs.clone());
                a.booking.insert(Fact::new(
                    e,
                    RANK_BOOKED,
                    Booking {
                        patient_id: d.patient.id.clone(),
                        slot_id: d.slot_id.clone(),
                        start: d.start,
                        kind: d.kind.clone(),
                        orgs,
                    },
                ));
                a.schedule.insert(Fact::new(
                    e,
                    RANK_BOOKED,
                    Schedule {
                        start: d.start,
                        slot_id: d.slot_id.clone(),
                    },
                ));
                a.status
                    .insert(Fact::new(e, RANK_BOOKED, AppointmentStatus::Booked));
                if let AppointmentKind::Outpatient { pathway_id, .. } = &d.kind {
                    insert_sorted_by(&mut a.pathways, pathway_id.clone(), |p| p, |_, _| ());
                }
                self.link_appointment(&d.appointment_id)
            }
            Payload::AppointmentRescheduled(d) => {
                let a = self.appointment_entry(&d.appointment_id, e, orgs);
                a.schedule.insert(Fact::new(
                    e,
                    RANK_RESCHEDULED,
                    Schedule {
                        start: d.start,
                        slot_id: d.slot_id.clone(),
                    },
                ));
                a.status
                    .insert(Fact::new(e, RANK_RESCHEDULED, AppointmentStatus::Booked));
                self.link_appointment(&d.appointment_id)
            }
            Payload::AppointmentCancelled(d) => {
                let status = match d.by {
                    CancelledBy::Patient => AppointmentStatus::CancelledByPatient,
                    CancelledBy::Provider => AppointmentStatus::CancelledByProvider,
                };
                self.appointment_outcome(&d.appointment_id, e, orgs, status)
            }
            Payload::AppointmentAttended(d) => {
                self.appointment_outcome(&d.appointment_id, e, orgs, AppointmentStatus::Attended)
            }
            Payload::AppointmentDidNotAttend(d) => self.appointment_outcome(
                &d.appointment_id,
                e,
                orgs,
                AppointmentStatus::DidNotAttend,
            ),
            Payload::FollowupRequired(d) => {
                let f = self.followup_entry(&d.followup_id, &d.pathway_id, e, orgs.clone());
                f.required.insert(Fact::new(
                    e,
                    0,
                    Requirement {
                        pathway_id: d.pathway_id.clone(),
                        patient_id: d.patient.id.clone(),
                        due_date: d.due_date,
                        pifu: d.pifu,
                        orgs,
                    },
                ));
                vec![Touched::Followup(d.followup_id.clone())]
            }
            Payload::FollowupBooked(d) => {
                let f = self.followup_entry(&d.followup_id, &d.pathway_id, e, orgs);
                f.bookings.insert(Fact::new(e, 0, d.appointment_id.clone()));
                vec![Touched::Followup(d.followup_id.clone())]
            }
            Payload::FollowupCompleted(d) => {
                let f = self.followup_entry(&d.followup_id, &d.pathway_id, e, orgs);
                f.settled.insert(Fact::new(e, 0, Settlement::Completed));
                vec![Touched::Followup(d.followup_id.clone())]
            }
            Payload::FollowupCancelled(d) => {
                let f = self.followup_entry(&d.followup_id, &d.pathway_id, e, orgs);
                f.settled
                    .insert(Fact::new(e, 0, Settlement::Cancelled(d.reason)));
                vec![Touched::Followup(d.followup_id.clone())]
            }
        }
    }

    fn referral_entry(&mut self, id: &PseudoId, e: &Event, orgs: Orgs) -> &mut ReferralState {
        let r = entry(&mut self.referrals, id, ReferralState::new);
        r.orgs_seen.insert(Fact::new(e, 0, orgs));
        r
    }

    fn appointment_entry(&mut self, id: &PseudoId, e: &Event, orgs: Orgs) -> &mut AppointmentState {
        let a = entry(&mut self.appointments, id, AppointmentState::new);
        a.orgs_seen.insert(Fact::new(e, 0, orgs));
        a
    }

    fn followup_entry(
        &mut self,
        id: &PseudoId,
        pathway: &PseudoId,
        e: &Event,
        orgs: Orgs,
    ) -> &mut FollowupState {
        let f = entry(&mut self.followups, id, FollowupState::new);
        f.orgs_seen.insert(Fact::new(e, 0, orgs));
        f.pathways.insert(Fact::new(e, 0, pathway.clone()));
        f
    }

    fn advice_entry(&mut self, id: &PseudoId, e: &Event, orgs: Orgs) -> &mut AdviceState {
        let a = entry(&mut self.advice, id, AdviceState::new);
        a.orgs_seen.insert(Fact::new(e, 0, orgs));
        a
    }

    fn appointment_outcome(
        &mut self,
        id: &PseudoId,
        e: &Event,
        orgs: Orgs,
        status: AppointmentStatus,
    ) -> Vec<Touched> {
        let a = self.appointment_entry(id, e, orgs);
        a.status.insert(Fact::new(e, RANK_OUTCOME, status));
        self.link_appointment(id)
    }

    /// Writes the appointment's contribution into every pathway it was booked on.
    fn link_appointment(&mut self, id: &PseudoId) -> Vec<Touched> {
        let mut touched = vec![Touched::Appointment(id.clone())];
        let Some(a) = self.appointments.get(id) else {
            return touched;
        };
        for pathway in &a.pathways {
            let r = entry(&mut self.referrals, pathway, ReferralState::new);
            let date = a.first_attendance_for(pathway);
            insert_sorted_by(
                &mut r.first_attendances,
                (id.clone(), date),
                |(appointment, _)| appointment,
                |held, (_, date)| held.1 = date,
            );
            touched.push(Touched::Referral(pathway.clone()));
        }
        touched
    }

    /// The entity whose own state `event` is folded into, the key the
    /// bucketed first fold ([`crate::first_fold`]) groups events by. An
    /// event homed on an appointment, slot, follow-up or A&G request writes
    /// only that entity, except for what it adds to a referral (a first
    /// attendance, an A&G conversion); one homed on a pathway writes only
    /// that referral.
    pub fn home(event: &Event) -> Home<'_> {
        match &event.payload {
            Payload::ReferralCreated(d) => Home::Pathway(&d.pathway_id),
            Payload::ReferralTriaged(d) => Home::Pathway(&d.pathway_id),
            Payload::ClockStarted(d) => Home::Pathway(&d.pathway_id),
            Payload::ClockStopped(d) => Home::Pathway(&d.pathway_id),
            Payload::ReferralDischarged(d) => Home::Pathway(&d.pathway_id),
            Payload::AdviceRequested(d) => Home::Other(&d.advice_id),
            Payload::AdviceResponded(d) => Home::Other(&d.advice_id),
            Payload::AdviceConverted(d) => Home::Other(&d.advice_id),
            Payload::SlotPublished(d) => Home::Other(&d.slot_id),
            Payload::SlotWithdrawn(d) => Home::Other(&d.slot_id),
            Payload::AppointmentBooked(d) => Home::Other(&d.appointment_id),
            Payload::AppointmentRescheduled(d) => Home::Other(&d.appointment_id),
            Payload::AppointmentCancelled(d) => Home::Other(&d.appointment_id),
            Payload::AppointmentAttended(d) => Home::Other(&d.appointment_id),
            Payload::AppointmentDidNotAttend(d) => Home::Other(&d.appointment_id),
            Payload::FollowupRequired(d) => Home::Other(&d.followup_id),
            Payload::FollowupBooked(d) => Home::Other(&d.followup_id),
            Payload::FollowupCompleted(d) => Home::Other(&d.followup_id),
            Payload::FollowupCancelled(d) => Home::Other(&d.followup_id),
        }
    }

    /// Takes the referral states held in memory (all of them, for a fold
    /// without a store), leaving none.
    pub fn take_referrals(&mut self) -> Vec<ReferralState> {
        self.referrals.take_in_memory().map(|(_, r)| r).collect()
    }

    /// Merges what another fold of other events knows of a pathway into its
    /// state: the union of both sets of facts, as if one fold had seen both
    /// sets of events.
    pub fn merge_referral(&mut self, other: ReferralState) {
        let r = entry(&mut self.referrals, &other.pathway_id, ReferralState::new);
        r.merge(other);
    }

    /// Moves every state held in memory into `into` (which keeps them in
    /// its store from its next flush), leaving this fold empty. Entities
    /// already in `into` are replaced, not merged.
    pub fn move_into(&mut self, into: &mut Fold) {
        for (k, v) in self.referrals.take_in_memory() {
            into.referrals.insert(k, v);
        }
        for (k, v) in self.appointments.take_in_memory() {
            into.appointments.insert(k, v);
        }
        for (k, v) in self.slots.take_in_memory() {
            into.slots.insert(k, v);
        }
        for (k, v) in self.followups.take_in_memory() {
            into.followups.insert(k, v);
        }
        for (k, v) in self.advice.take_in_memory() {
            into.advice.insert(k, v);
        }
    }

    /// A pathway's state.
    pub fn referral(&self, pathway_id: &PseudoId) -> Option<Cow<'_, ReferralState>> {
        self.referrals.get(pathway_id)
    }

    /// An appointment's state.
    pub fn appointment(&self, appointment_id: &PseudoId) -> Option<Cow<'_, AppointmentState>> {
        self.appointments.get(appointment_id)
    }

    /// A slot's state.
    pub fn slot(&self, slot_id: &PseudoId) -> Option<Cow<'_, SlotState>> {
        self.slots.get(slot_id)
    }

    /// A follow-up's state.
    pub fn followup(&self, followup_id: &PseudoId) -> Option<Cow<'_, FollowupState>> {
        self.followups.get(followup_id)
    }

    /// An A&G request's state.
    pub fn advice(&self, advice_id: &PseudoId) -> Option<Cow<'_, AdviceState>> {
        self.advice.get(advice_id)
    }

    /// The states of `ids` that exist, in order, read in one go.
    pub fn referrals_of(&self, ids: &[PseudoId]) -> Vec<Cow<'_, ReferralState>> {
        self.referrals.get_many(ids).into_iter().flatten().collect()
    }

    /// The states of `ids` that exist, in order, read in one go.
    pub fn appointments_of(&self, ids: &[PseudoId]) -> Vec<Cow<'_, AppointmentState>> {
        self.appointments
            .get_many(ids)
            .into_iter()
            .flatten()
            .collect()
    }

    /// The states of `ids` that exist, in order, read in one go.
    pub fn followups_of(&self, ids: &[PseudoId]) -> Vec<Cow<'_, FollowupState>> {
        self.followups.get_many(ids).into_iter().flatten().collect()
    }

    /// The states of `ids` that exist, in order, read in one go.
    pub fn advice_of(&self, ids: &[PseudoId]) -> Vec<Cow<'_, AdviceState>> {
        self.advice.get_many(ids).into_iter().flatten().collect()
    }

    /// Every pathway, by id.
    pub fn referrals(&self) -> Vec<ReferralState> {
        self.referrals.values()
    }

    /// Every appointment, by id.
    pub fn appointments(&self) -> Vec<AppointmentState> {
        self.appointments.values()
    }

    /// Every slot, by id.
    pub fn slots(&self) -> Vec<SlotState> {
        self.slots.values()
    }

    /// Every follow-up, by id.
    pub fn followups(&self) -> Vec<FollowupState> {
        self.followups.values()
    }

    /// Every A&G request, by id.
    pub fn advice_requests(&self) -> Vec<AdviceState> {
        self.advice.values()
    }

    /// Every entity, named as [`Fold::apply`] names the ones it changes.
    pub fn entities(&self) -> Vec<Touched> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = self.entities_after(after.as_ref(), 100_000);
            let Some(last) = page.last().cloned() else {
                return all;
            };
            all.extend(page);
            after = Some(last);
        }
    }

    /// Up to `n` entities after `after` (from the first when `None`), in
    /// [`Touched`]'s order: a whole store listed a page at a time.
    pub fn entities_after(&self, after: Option<&Touched>, n: usize) -> Vec<Touched> {
        let mut out = Vec::new();
        // Touched orders by kind, then id.
        for kind in 0..5u8 {
            if out.len() >= n {
                break;
            }
            let from = match after {
                Some(a) if a.kind() > kind => continue,
                Some(a) if a.kind() == kind => Some(a.id()),
                _ => None,
            };
            let left = n - out.len();
            match kind {
                0 => out.extend(
                    self.referrals
                        .keys_after(from, left)
                        .into_iter()
                        .map(Touched::Referral),
                ),
                1 => out.extend(
                    self.appointments
                        .keys_after(from, left)
                        .into_iter()
                        .map(Touched::Appointment),
                ),
                2 => out.extend(
                    self.slots
                        .keys_after(from, left)
                        .into_iter()
                        .map(Touched::Slot),
                ),
                3 => out.extend(
                    self.followups
                        .keys_after(from, left)
                        .into_iter()
                        .map(Touched::Followup),
                ),
                _ => out.extend(
                    self.advice
                        .keys_after(from, left)
                        .into_iter()
                        .map(Touched::Advice),
                ),
            }
        }
        out
    }

    /// Puts back a pathway's state (e.g. read from storage) to fold further events into.
    pub fn insert_referral(&mut self, state: ReferralState) {
        self.referrals.insert(state.pathway_id.clone(), state);
    }

    /// Puts back an appointment's state.
    pub fn insert_appointment(&mut self, state: AppointmentState) {
        self.appointments
            .insert(state.appointment_id.clone(), state);
    }

    /// Puts back a slot's state.
    pub fn insert_slot(&mut self, state: SlotState) {
        self.slots.insert(state.slot_id.clone(), state);
    }

    /// Puts back a follow-up's state.
    pub fn insert_followup(&mut self, state: FollowupState) {
        self.followups.insert(state.followup_id.clone(), state);
    }

    /// Puts back an A&G request's state.
    pub fn insert_advice(&mut self, state: AdviceState) {
        self.advice.insert(state.advice_id.clone(), state);
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use pathflow_schemas::event::*;
    use proptest::prelude::*;

    fn fold(events: &[Event]) -> Fold {
        let mut f = Fold::new();
        for e in events {
            f.apply(e);
        }
        f
    }

    #[test]
    fn referral_state_comes_from_its_events() {
        let p = id(1, 1);
        let mut log = Log::default();
        log.at(day(0), created(&p, 1, None));
        log.at(day(2), triaged(&p, TriageOutcome::Redirected));
        log.at(day(0), started(&p));
        log.at(
            day(60),
            stopped(&p, ClockStopReason::FirstDefinitiveTreatment),
        );
        log.at(day(61), discharged(&p));
        let f = fold(&log.events);
        let r = f.referral(&p).unwrap();
        assert_eq!(r.patient_id(), Some(&patient(1).id));
        assert_eq!(r.priority(), Some(Priority::Routine));
        assert_eq!(r.practice(), Some(&ods("Y01234")));
        assert_eq!(r.provider(), Some(&ods("RX1")));
        assert_eq!(
            r.referred_treatment_function(),
            Some(TreatmentFunction::TraumaAndOrthopaedics)
        );
        assert_eq!(
            r.treatment_function(),
            Some(TreatmentFunction::Rheumatology)
        );
        // Local midnight in BST is 23:00 UTC the day before: the UK date counts.
        assert_eq!(r.received_date(), Some(date(0)));
        assert_eq!(
            r.triage().map(|t| (t.0, t.1.outcome)),
            Some((date(2), TriageOutcome::Redirected))
        );
        assert_eq!(
            r.clock_start(),
            Some((date(0), ClockStartReason::FirstActivity))
        );
        assert_eq!(
            r.clock_stop(),
            Some((date(60), ClockStopReason::FirstDefinitiveTreatment))
        );
        assert_eq!(r.discharged(), Some(date(61)));
        assert_eq!(r.status(), ReferralStatus::Discharged);
        assert_eq!(r.wait_end(), Some(date(60)));
        assert_eq!(r.final_wait_weeks(), Some(8));
        assert!(r.waiting_at(date(59)));
        assert_eq!(r.wait_weeks_at(date(59)), Some(8));
        assert_eq!(r.wait_weeks_at(date(13)), Some(1));
        assert!(!r.waiting_at(date(60)));
        assert_eq!(r.wait_weeks_at(date(60)), None);
        assert!(!r.waiting_at(date(-1)));
    }

    #[test]
    fn a_clock_restarted_after_a_first_dna_replaces_the_start() {
        let p = id(1, 2);
        let a = id(2, 2);
        let mut log = Log::default();
        log.at(day(0), created(&p, 2, None));
        log.at(day(0), started(&p));
        log.at(
            day(1),
            op_booked_for(&a, &p, 2, time(30, 10), ContactType::First, None),
        );
        log.at(time(30, 10), dna(&a));
        // The DNA nullifies the first clock; the patient rebooks on day 33.
        log.at(day(30), stopped(&p, ClockStopReason::DidNotAttendFirst));
        log.at(day(33), started(&p));
        let f = fold(&log.events);
        let r = f.referral(&p).unwrap();
        assert_eq!(r.clock_start().map(|c| c.0), Some(date(33)));
        assert_eq!(r.clock_stop(), None);
        assert_eq!(r.status(), ReferralStatus::Open);
        assert_eq!(r.first_attendance(), None);
        assert_eq!(r.wait_weeks_at(date(33 + 20)), Some(2));
        assert!(!r.waiting_at(date(32)));

        // Without the restart, the nullified clock is neither waiting nor completed.
        let without: Vec<Event> = log.events[..5].to_vec();
        let f = fold(&without);
        let r = f.referral(&p).unwrap();
        assert_eq!(r.status(), ReferralStatus::Stopped);
        assert_eq!(r.final_wait_weeks(), None);
        assert!(!r.waiting_at(date(40)));
    }

    #[test]
    fn a_clock_stop_delivered_before_its_referral_gives_the_ordered_state() {
        let p = id(1, 3);
        let mut log = Log::default();
        log.at(day(0), created(&p, 3, None));
        log.at(day(0), started(&p));
        log.at(day(100), stopped(&p, ClockStopReason::DecisionNotToTreat));
        let ordered = fold(&log.events);
        let reversed: Vec<Event> = log.events.iter().rev().cloned().collect();
        assert_eq!(fold(&reversed), ordered);
        // Halfway, with only the stop: a state of late facts, no panic.
        let f = fold(&reversed[..1]);
        let r = f.referral(&p).unwrap();
        assert_eq!(r.status(), ReferralStatus::Stopped);
        assert_eq!(r.received_date(), None);
        assert_eq!(r.patient_id(), None);
        assert_eq!(r.final_wait_weeks(), None);
        assert!(!r.waiting_at(date(50)));
        // The practice is known from the stop's own envelope.
        assert_eq!(r.practice(), Some(&ods("Y01234")));
        assert_eq!(ordered.referral(&p).unwrap().final_wait_weeks(), Some(14));
    }

    #[test]
    fn a_referral_rejected_at_triage_leaves_the_list_at_discharge() {
        let p = id(1, 4);
        let mut log = Log::default();
        log.at(day(0), created(&p, 4, None));
        log.at(day(0), started(&p));
        log.at(day(3), triaged(&p, TriageOutcome::Rejected));
        log.at(day(3), discharged(&p));
        let f = fold(&log.events);
        let r = f.referral(&p).unwrap();
        assert_eq!(r.status(), ReferralStatus::Discharged);
        assert!(r.waiting_at(date(2)));
        assert!(!r.waiting_at(date(3)));
        assert_eq!(r.final_wait_weeks(), None);
        assert_eq!(
            r.treatment_function(),
            Some(TreatmentFunction::TraumaAndOrthopaedics)
        );
    }

    #[test]
    fn first_attendance_is_the_earliest_attended_first_appointment() {
        let p = id(1, 5);
        let (a1, a2, a3) = (id(2, 51), id(2, 52), id(2, 53));
        let mut log = Log::default();
        // Attended before booked; a DNA'd first; a follow-up attended earlier than it all.
        log.at(time(40, 9), attended(&a2));
        log.at(time(30, 9), dna(&a1));
        log.at(time(20, 9), attended(&a3));
        log.at(
            day(1),
            op_booked_for(&a1, &p, 5, time(30, 9), ContactType::First, None),
        );
        log.at(
            day(31),
            op_booked_for(&a2, &p, 5, time(40, 9), ContactType::First, None),
        );
        log.at(
            day(2),
            op_booked_for(&a3, &p, 5, time(20, 9), ContactType::FollowUp, None),
        );
        let f = fold(&log.events);
        let r = f.referral(&p).unwrap();
        assert_eq!(r.first_attendance(), Some(date(40)));
        // The referral itself has not arrived: it exists from the appointments alone.
        assert_eq!(r.received_date(), None);
        let mut sorted = log.events.clone();
        sorted.sort_by_key(|e| e.envelope.occurred_at);
        assert_eq!(fold(&sorted), f);
        assert_eq!(
            f.appointment(&a2).unwrap().status(),
            AppointmentStatus::Attended
        );
        assert_eq!(f.appointment(&a2).unwrap().booking_lead_days(), Some(9));
    }

    #[test]
    fn a_move_and_an_outcome_beat_a_booking_of_the_same_instant() {
        let (p, a) = (id(1, 6), id(2, 6));
        let booked_at = time(0, 15);
        let mut log = Log::default();
        log.at(
            booked_at,
            op_booked_for(&a, &p, 6, time(14, 9), ContactType::First, None),
        );
        log.at(
            booked_at,
            Payload::AppointmentRescheduled(AppointmentRescheduled {
                appointment_id: a.clone(),
                start: time(21, 9),
                slot_id: Some(id(3, 6)),
            }),
        );
        let f = fold(&log.events);
        let s = f.appointment(&a).unwrap();
        assert_eq!(s.start(), Some(time(21, 9)));
        assert_eq!(s.slot_id(), Some(&id(3, 6)));
        assert_eq!(s.status(), AppointmentStatus::Booked);
        assert_eq!(s.booking_lead_days(), Some(21));
        assert_eq!(s.contact(), Some(ContactType::First));
        assert_eq!(s.pathway_id(), Some(&p));

        log.at(
            booked_at,
            Payload::AppointmentCancelled(AppointmentCancelled {
                appointment_id: a.clone(),
                by: CancelledBy::Patient,
            }),
        );
        let reversed: Vec<Event> = log.events.iter().rev().cloned().collect();
        let f = fold(&reversed);
        let s = f.appointment(&a).unwrap();
        assert_eq!(s.status(), AppointmentStatus::CancelledByPatient);
        assert_eq!(s.cancelled_by(), Some(CancelledBy::Patient));
        assert_eq!(s.outcome_date(), Some(date(0)));
        assert_eq!(fold(&log.events), f);
    }

    #[test]
    fn a_corrected_outcome_wins_and_a_resent_file_does_not_undo_it() {
        let (p, a) = (id(1, 7), id(2, 7));
        let start = time(14, 9);
        let mut log = Log::default();
        log.at(
            day(0),
            op_booked_for(&a, &p, 7, start, ContactType::First, None),
        );
        let first = log.recorded(start, day(15), attended(&a)).clone();
        // A later extract says the patient did not attend: same time, later recording.
        log.recorded(start, day(22), dna(&a));
        let mut resent = first.clone();
        resent.envelope.recorded_at = day(30);
        for events in [log.events.clone(), {
            let mut v = log.events.clone();
            v.insert(0, resent.clone());
            v.push(resent.clone());
            v
        }] {
            let f = fold(&events);
            let s = f.appointment(&a).unwrap();
            assert_eq!(s.status(), AppointmentStatus::DidNotAttend);
            assert_eq!(f.referral(&p).unwrap().first_attendance(), None);
        }
        let with_resent = {
            let mut v = log.events.clone();
            v.push(resent);
            v
        };
        assert_eq!(fold(&with_resent), fold(&log.events));
    }

    #[test]
    fn gp_appointments_carry_gpad_fields_and_booking_band() {
        let (a, slot) = (id(2, 8), id(3, 8));
        let mut log = Log::default();
        let kind = SlotKind::Gp {
            mode: AppointmentMode::Telephone,
            hcp_type: HcpType::Gp,
            national_category: NationalCategory::GeneralConsultationAcute,
        };
        log.at(
            time(2, 8),
            Payload::SlotPublished(SlotPublished {
                slot_id: slot.clone(),
                start: time(2, 8),
                duration_minutes: 10,
                kind,
            }),
        );
        // Booked at 00:30 BST (23:30 UTC the day before) for 08:00 the same day.
        let booked_at = time(2, 0) + Duration::minutes(30);
        log.at(
            booked_at,
            Payload::AppointmentBooked(AppointmentBooked {
                appointment_id: a.clone(),
                slot_id: Some(slot.clone()),
                patient: patient(8),
                start: time(2, 8),
                kind: AppointmentKind::Gp {
                    mode: AppointmentMode::Telephone,
                    hcp_type: HcpType::Gp,
                    national_category: NationalCategory::GeneralConsultationAcute,
                },
            }),
        );
        log.at(time(2, 8), attended(&a));
        let f = fold(&log.events);
        let s = f.appointment(&a).unwrap();
        assert_eq!(s.setting(), Some(Setting::Gp));
        assert_eq!(
            s.gpad(),
            Some((
                AppointmentMode::Telephone,
                HcpType::Gp,
                NationalCategory::GeneralConsultationAcute
            ))
        );
        assert_eq!(s.booking_band(), Some(BookingBand::SameDay));
        assert_eq!(s.booked_at(), Some(booked_at));
        assert_eq!(s.slot_id(), Some(&slot));
        assert_eq!(s.practice(), Some(&ods("Y01234")));
        assert_eq!(s.provider(), None);
        assert_eq!(s.pathway_id(), None);
        assert_eq!(f.slot(&slot).unwrap().setting(), Some(Setting::Gp));
        assert!(f.referrals().is_empty());
    }

    #[test]
    fn an_outcome_without_its_booking_is_a_state_of_late_facts() {
        let a = id(2, 9);
        let mut log = Log::default();
        log.at(time(5, 9), attended(&a));
        let f = fold(&log.events);
        let s = f.appointment(&a).unwrap();
        assert_eq!(s.status(), AppointmentStatus::Attended);
        assert_eq!(s.start(), None);
        assert_eq!(s.booked_at(), None);
        assert_eq!(s.booking_lead_days(), None);
        assert_eq!(s.booking_band(), None);
        assert_eq!(s.setting(), None);
        assert_eq!(s.provider(), Some(&ods("RX1")));
    }

    #[test]
    fn a_slot_is_withdrawn_whatever_the_order() {
        let slot = id(3, 10);
        let mut log = Log::default();
        let first = SlotKind::Outpatient {
            contact: ContactType::First,
        };
        log.at(time(10, 9), testing::slot(&slot, time(10, 9), first));
        log.at(day(3), withdrawn(&slot));
        let f = fold(&log.events);
        let s = f.slot(&slot).unwrap();
        assert!(s.is_published());
        assert_eq!(
            s.withdrawn(),
            Some((date(3), SlotWithdrawReason::ClinicCancelled))
        );
        assert_eq!(s.duration_minutes(), Some(15));
        assert_eq!(s.start(), Some(time(10, 9)));
        let reversed: Vec<Event> = log.events.iter().rev().cloned().collect();
        assert_eq!(fold(&reversed), f);
        let only_withdrawn = fold(&log.events[1..]);
        let s = only_withdrawn.slot(&slot).unwrap();
        assert!(!s.is_published());
        assert_eq!(s.start(), None);
    }

    #[test]
    fn followups_are_waiting_booked_then_settled_and_overdue_until_then() {
        let (p, fu, a) = (id(1, 11), id(4, 11), id(2, 11));
        let mut log = Log::default();
        log.at(
            day(0),
            Payload::FollowupRequired(FollowupRequired {
                followup_id: fu.clone(),
                pathway_id: p.clone(),
                patient: patient(11),
                due_date: date(42),
                pifu: false,
            }),
        );
        let required = fold(&log.events);
        let s = required.followup(&fu).unwrap();
        assert_eq!(s.status(), FollowupStatus::Waiting);
        assert_eq!(s.due_date(), Some(date(42)));
        assert_eq!(s.required_date(), Some(date(0)));
        assert_eq!(s.overdue_days_at(date(42)), None);
        assert_eq!(s.overdue_days_at(date(90)), Some(48));

        log.at(
            day(50),
            Payload::FollowupBooked(FollowupBooked {
                followup_id: fu.clone(),
                pathway_id: p.clone(),
                appointment_id: a.clone(),
            }),
        );
        let booked = fold(&log.events);
        let s = booked.followup(&fu).unwrap();
        assert_eq!(s.status(), FollowupStatus::Booked);
        assert_eq!(s.booked_appointment(), Some(&a));
        assert_eq!(s.overdue_days_at(date(56)), Some(14));

        log.at(day(60), completed(&fu, &p));
        let f = fold(&log.events);
        let s = f.followup(&fu).unwrap();
        assert_eq!(s.status(), FollowupStatus::Completed);
        assert_eq!(s.settled(), Some((date(60), Settlement::Completed)));
        assert_eq!(s.overdue_days_at(date(59)), Some(17));
        assert_eq!(s.overdue_days_at(date(60)), None);
        assert_eq!(s.pathway_id(), Some(&p));
        assert_eq!(s.pifu(), Some(false));
        let reversed: Vec<Event> = log.events.iter().rev().cloned().collect();
        assert_eq!(fold(&reversed), f);

        // Completion known before the requirement: settled, due date unknown, not overdue.
        let late = fold(&log.events[2..]);
        let s = late.followup(&fu).unwrap();
        assert_eq!(s.status(), FollowupStatus::Completed);
        assert_eq!(s.pathway_id(), Some(&p));
        assert_eq!(s.overdue_days_at(date(59)), None);
    }

    #[test]
    fn advice_response_time_runs_to_the_first_answer_and_conversion_links_the_pathway() {
        let (adv, p) = (id(5, 12), id(1, 12));
        let mut log = Log::default();
        log.at(
            time(0, 16),
            Payload::AdviceRequested(AdviceRequested {
                advice_id: adv.clone(),
                patient: patient(12),
            }),
        );
        log.at(
            time(2, 10),
            Payload::AdviceResponded(AdviceResponded {
                advice_id: adv.clone(),
                outcome: AdviceOutcome::MoreInformationRequested,
            }),
        );
        log.at(time(4, 11), advice_responded(&adv));
        log.at(time(5, 9), advice_converted(&adv, &p));
        log.at(day(5), created(&p, 12, None));
        let f = fold(&log.events);
        let s = f.advice(&adv).unwrap();
        assert_eq!(s.requested_at(), Some(time(0, 16)));
        assert_eq!(s.responded_at(), Some(time(2, 10)));
        assert_eq!(s.response_time(), Some(Duration::hours(42)));
        assert_eq!(s.response_days(), Some(2));
        assert_eq!(s.outcome(), Some(AdviceOutcome::ReferralAdvised));
        assert_eq!(s.converted_to(), Some(&p));
        assert_eq!(s.practice(), Some(&ods("Y01234")));
        assert_eq!(f.referral(&p).unwrap().advice_origin(), Some(&adv));
        let reversed: Vec<Event> = log.events.iter().rev().cloned().collect();
        assert_eq!(fold(&reversed), f);
    }

    #[test]
    fn the_same_event_twice_counts_once() {
        let p = id(1, 13);
        let mut log = Log::default();
        log.at(day(0), created(&p, 13, None));
        log.at(day(0), started(&p));
        let once = fold(&log.events);
        let mut twice = once.clone();
        for e in &log.events {
            twice.apply(e);
        }
        assert_eq!(twice, once);
        let r = twice.referral(&p).unwrap();
        assert_eq!(r.created.facts().len(), 1);
    }

    #[test]
    fn a_stored_fold_reads_back_and_folds_on() {
        let p = id(1, 14);
        let mut log = Log::default();
        log.at(day(0), created(&p, 14, Some(id(5, 14))));
        log.at(day(0), started(&p));
        let first = fold(&log.events);
        let json = serde_json::to_string(&first).unwrap();
        let mut back: Fold = serde_json::from_str(&json).unwrap();
        assert_eq!(back, first);
        let stop = log.at(
            day(20),
            stopped(&p, ClockStopReason::FirstDefinitiveTreatment),
        );
        let touched = back.apply(stop);
        assert_eq!(touched, vec![Touched::Referral(p.clone())]);
        assert_eq!(back, fold(&log.events));
        assert_eq!(back.referral(&p).unwrap().final_wait_weeks(), Some(2));
        assert_eq!(back.referral(&p).unwrap().advice_origin(), Some(&id(5, 14)));
    }

    // ---- order independence over realistic event logs ---------------------

    /// How one pathway goes.
    #[derive(Debug, Clone)]
    struct Story {
        triage: TriageOutcome,
        from_advice: bool,
        moved: bool,
        dna_first: bool,
        rebook_after_dna: bool,
        corrected_outcome: bool,
        stop_at_first: bool,
        followups: u8,
        pifu: bool,
        gp_cancelled: bool,
    }

    fn story() -> impl Strategy<Value = Story> {
        (
            prop::sample::select(vec![
                TriageOutcome::Accepted,
                TriageOutcome::Accepted,
                TriageOutcome::Rejected,
                TriageOutcome::Redirected,
            ]),
            any::<[bool; 8]>(),
            0u8..3,
        )
            .prop_map(|(triage, b, followups)| Story {
                triage,
                from_advice: b[0],
                moved: b[1],
                dna_first: b[2],
                rebook_after_dna: b[3],
                corrected_outcome: b[4],
                stop_at_first: b[5],
                followups,
                pifu: b[6],
                gp_cancelled: b[7],
            })
    }

    /// Every event of pathway `i`, as the connectors would write them.
    fn tell(log: &mut Log, i: u32, s: &Story) {
        let b = i64::from(i) * 3;
        let p = id(1, i);
        let advice = s.from_advice.then(|| id(5, i));
        if let Some(adv) = &advice {
            log.at(
                time(b - 5, 11),
                Payload::AdviceRequested(AdviceRequested {
                    advice_id: adv.clone(),
                    patient: patient(i),
                }),
            );
            log.at(time(b - 3, 14), advice_responded(adv));
            log.at(day(b), advice_converted(adv, &p));
        }
        log.at(day(b), created(&p, i, advice));
        log.at(day(b), started(&p));
        log.at(day(b + 2), triaged(&p, s.triage));
        // A GP appointment and its slot, before the referral.
        let (gp, gp_slot) = (id(6, i), id(7, i));
        let gp_kind = (
            AppointmentMode::FaceToFace,
            HcpType::OtherPracticeStaff,
            NationalCategory::GeneralConsultationRoutine,
        );
        log.at(
            time(b - 7, 9),
            Payload::SlotPublished(SlotPublished {
                slot_id: gp_slot.clone(),
                start: time(b - 7, 9),
                duration_minutes: 10,
                kind: SlotKind::Gp {
                    mode: gp_kind.0,
                    hcp_type: gp_kind.1,
                    national_category: gp_kind.2,
                },
            }),
        );
        log.at(
            time(b - 9, 17),
            Payload::AppointmentBooked(AppointmentBooked {
                appointment_id: gp.clone(),
                slot_id: Some(gp_slot.clone()),
                patient: patient(i),
                start: time(b - 7, 9),
                kind: AppointmentKind::Gp {
                    mode: gp_kind.0,
                    hcp_type: gp_kind.1,
                    national_category: gp_kind.2,
                },
            }),
        );
        if s.gp_cancelled {
            log.at(
                time(b - 8, 12),
                Payload::AppointmentCancelled(AppointmentCancelled {
                    appointment_id: gp.clone(),
                    by: CancelledBy::Provider,
                }),
            );
            log.at(
                time(b - 8, 12),
                Payload::SlotWithdrawn(SlotWithdrawn {
                    slot_id: gp_slot,
                    reason: SlotWithdrawReason::StaffUnavailable,
                }),
            );
        } else {
            log.at(time(b - 7, 9), attended(&gp));
        }
        if s.triage == TriageOutcome::Rejected {
            log.at(day(b + 2), discharged(&p));
            return;
        }

        // The first appointment, perhaps moved at booking time.
        let first = id(2, i * 10);
        let booked_at = time(b + 3, 10);
        let mut start = time(b + 20, 10);
        log.at(
            booked_at,
            op_booked_for(&first, &p, i, start, ContactType::First, None),
        );
        if s.moved {
            start = time(b + 24, 10);
            log.at(
                booked_at,
                Payload::AppointmentRescheduled(AppointmentRescheduled {
                    appointment_id: first.clone(),
                    start,
                    slot_id: Some(id(3, i)),
                }),
            );
        }
        let mut seen = b + if s.moved { 24 } else { 20 };
        if s.dna_first {
            log.at(start, dna(&first));
            if !s.rebook_after_dna {
                log.at(day(seen), stopped(&p, ClockStopReason::DidNotAttendFirst));
                log.at(day(seen), discharged(&p));
                return;
            }
            log.at(day(seen + 3), started(&p));
            let second = id(2, i * 10 + 1);
            log.at(
                time(seen + 3, 11),
                op_booked_for(&second, &p, i, time(seen + 17, 9), ContactType::First, None),
            );
            seen += 17;
            log.at(time(seen, 9), attended(&second));
        } else {
            let recorded = log.at(start, attended(&first)).envelope.recorded_at;
            if s.corrected_outcome {
                log.recorded(start, recorded + Duration::days(7), dna(&first));
            }
        }
        if s.stop_at_first {
            log.at(
                day(seen),
                stopped(&p, ClockStopReason::FirstDefinitiveTreatment),
            );
        }
        for k in 0..u32::from(s.followups) {
            let fu = id(4, i * 10 + k);
            let appt = id(2, i * 10 + 5 + k);
            log.at(
                day(seen),
                Payload::FollowupRequired(FollowupRequired {
                    followup_id: fu.clone(),
                    pathway_id: p.clone(),
                    patient: patient(i),
                    due_date: date(seen + 42),
                    pifu: s.pifu,
                }),
            );
            let booked = time(seen + 30, 12);
            let fu_start = time(seen + 40, 9);
            log.at(
                booked,
                op_booked_for(
                    &appt,
                    &p,
                    i,
                    fu_start,
                    ContactType::FollowUp,
                    Some(fu.clone()),
                ),
            );
            log.at(
                booked,
                Payload::FollowupBooked(FollowupBooked {
                    followup_id: fu.clone(),
                    pathway_id: p.clone(),
                    appointment_id: appt.clone(),
                }),
            );
            seen += 40;
            if k == 1 {
                log.at(
                    day(seen),
                    Payload::FollowupCancelled(FollowupCancelled {
                        followup_id: fu,
                        pathway_id: p.clone(),
                        reason: FollowupCancelReason::NoLongerRequired,
                    }),
                );
            } else {
                log.at(fu_start, attended(&appt));
                log.at(day(seen), completed(&fu, &p));
            }
        }
        if !s.stop_at_first {
            log.at(
                day(seen + 10),
                stopped(&p, ClockStopReason::FirstDefinitiveTreatment),
            );
        }
        log.at(day(seen + 10), discharged(&p));
    }

    /// An ordered log, a shuffle of it, and re-sends (which event, where, how many days later).
    type Delivery = (Vec<Event>, Vec<Event>, Vec<(usize, usize, i64)>);

    fn logs() -> impl Strategy<Value = Delivery> {
        prop::collection::vec(story(), 1..6).prop_flat_map(|stories| {
            let mut log = Log::default();
            for (i, s) in stories.iter().enumerate() {
                tell(&mut log, i as u32 + 1, s);
            }
            let events = log.events;
            let n = events.len();
            (
                Just(events.clone()),
                Just(events).prop_shuffle(),
                prop::collection::vec((0..n, 0..n, 0i64..30), 0..12),
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn any_order_with_any_duplicates_folds_to_the_same_state((ordered, shuffled, dups) in logs()) {
            let expected = fold(&ordered);
            let mut delivered = shuffled;
            for (which, at, later) in dups {
                // A re-sent event: same id, recorded again later.
                let mut copy = ordered[which].clone();
                copy.envelope.recorded_at += Duration::days(later);
                delivered.insert(at.min(delivered.len()), copy);
            }
            let got = fold(&delivered);
            prop_assert_eq!(&got, &expected);
            // The fold saw every pathway whatever the order.
            let referrals = got.referrals().len();
            prop_assert!(referrals >= 1);
            for r in got.referrals() {
                prop_assert!(r.referral().is_some());
                prop_assert!(r.clock_start().is_some());
            }
        }
    }
}

/// Events for the transform's unit tests: ids, UK days and times from Monday
/// 5 May 2025, an event builder whose GP events carry a practice only, a
/// [`testing::Log`] of events and one builder per payload the tests use, so
/// the fold, gold and SQL tests describe their data the same way.
#[cfg(test)]
pub(crate) mod testing {
    use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, Utc};
    use pathflow_schemas::codes::{
        AdviceOutcome, AppointmentMode, AppointmentStatus, CancelledBy, ClockStartReason,
        ClockStopReason, ContactType, HcpType, NationalCategory, Priority, ReferralSource, Sex,
        SlotWithdrawReason, TreatmentFunction, TriageOutcome,
    };
    use pathflow_schemas::event::*;
    use pathflow_schemas::{
        AgeBand, Event, EventId, OdsCode, Patient, PseudoId, SCHEMA_VERSION, SourceName, uk_time,
    };

    use super::Fold;

    pub fn id(tag: u8, n: u32) -> PseudoId {
        let mut b = [tag; 16];
        b[12..].copy_from_slice(&n.to_be_bytes());
        PseudoId::from_digest(&b)
    }

    /// Day `n` after Monday 5 May 2025 (BST), as UK local date.
    pub fn date(n: i64) -> NaiveDate {
        NaiveDate::from_ymd_opt(2025, 5, 5).unwrap() + Duration::days(n)
    }

    /// UK local midnight of day `n`, in UTC (how date-only source fields arrive).
    pub fn day(n: i64) -> DateTime<Utc> {
        uk_time::start_of_day_utc(date(n))
    }

    /// UK local `hour`:00 on day `n`, in UTC.
    pub fn time(n: i64, hour: u32) -> DateTime<Utc> {
        let local: NaiveDateTime = date(n).and_hms_opt(hour, 0, 0).unwrap();
        uk_time::to_utc(local)
    }

    pub fn patient(n: u32) -> Patient {
        Patient {
            id: id(0xa0, n),
            age_band: AgeBand::from_age(60),
            sex: Sex::Female,
            deprivation_decile: None,
        }
    }

    pub fn ods(code: &str) -> OdsCode {
        OdsCode::parse(code).unwrap()
    }

    /// The `n`th test event: occurred `at`, recorded `recorded_at`, from `source`.
    pub fn event(
        n: u32,
        at: DateTime<Utc>,
        recorded_at: DateTime<Utc>,
        source: &str,
        payload: Payload,
    ) -> Event {
        let mut b = [0xee; 16];
        b[12..].copy_from_slice(&n.to_be_bytes());
        let gp = matches!(
            &payload,
            Payload::AppointmentBooked(AppointmentBooked {
                kind: AppointmentKind::Gp { .. },
                ..
            }) | Payload::SlotPublished(SlotPublished {
                kind: SlotKind::Gp { .. },
                ..
            })
        );
        Event {
            envelope: Envelope {
                event_id: EventId::from_digest(&b),
                occurred_at: at,
                recorded_at,
                source: SourceName::parse(source).unwrap(),
                schema_version: SCHEMA_VERSION,
                key_id: None,
                practice: Some(ods("Y01234")),
                provider: (!gp).then(|| ods("RX1")),
                treatment_function: (!gp).then_some(TreatmentFunction::TraumaAndOrthopaedics),
            },
            payload,
        }
    }

    // ---- a log of events ----------------------------------------------------

    /// Events with fresh ids (practice Y01234; provider RX1 and specialty 110
    /// unless GP), recorded a day after they happened unless told otherwise.
    #[derive(Default)]
    pub struct Log {
        n: u32,
        /// Every event made, in order.
        pub events: Vec<Event>,
    }

    impl Log {
        /// Adds an event that happened `at` and was recorded `recorded_at`;
        /// the returned event can still be changed (its envelope's orgs).
        pub fn recorded(
            &mut self,
            at: DateTime<Utc>,
            recorded_at: DateTime<Utc>,
            payload: Payload,
        ) -> &mut Event {
            self.n += 1;
            let e = event(self.n, at, recorded_at, "test:log", payload);
            self.events.push(e);
            let last = self.events.len() - 1;
            &mut self.events[last]
        }

        /// Adds an event that happened `at`, recorded a day later.
        pub fn at(&mut self, at: DateTime<Utc>, payload: Payload) -> &mut Event {
            self.recorded(at, at + Duration::days(1), payload)
        }

        /// Every event folded, in order.
        pub fn fold(&self) -> Fold {
            let mut f = Fold::new();
            for e in &self.events {
                f.apply(e);
            }
            f
        }

        /// A routine GP referral received and its clock started on `start`.
        pub fn pathway(&mut self, p: &PseudoId, n: u32, start: i64, from_advice: Option<PseudoId>) {
            self.at(day(start), created(p, n, from_advice));
            self.at(day(start), started(p));
        }
    }

    // ---- payloads -------------------------------------------------------------

    /// A routine GP referral of patient `n`.
    pub fn created(p: &PseudoId, n: u32, from_advice: Option<PseudoId>) -> Payload {
        referred(p, n, Priority::Routine, from_advice)
    }

    /// A GP referral of patient `n` with `priority`.
    pub fn referred(
        p: &PseudoId,
        n: u32,
        priority: Priority,
        from_advice: Option<PseudoId>,
    ) -> Payload {
        Payload::ReferralCreated(ReferralCreated {
            pathway_id: p.clone(),
            patient: patient(n),
            priority,
            referral_source: ReferralSource::Gp,
            from_advice,
        })
    }

    /// The triage decision `outcome` (a redirection goes to rheumatology).
    pub fn triaged(p: &PseudoId, outcome: TriageOutcome) -> Payload {
        Payload::ReferralTriaged(ReferralTriaged {
            pathway_id: p.clone(),
            outcome,
            redirected_to: (outcome == TriageOutcome::Redirected)
                .then_some(TreatmentFunction::Rheumatology),
        })
    }

    /// The RTT clock starts (first activity).
    pub fn started(p: &PseudoId) -> Payload {
        Payload::ClockStarted(ClockStarted {
            pathway_id: p.clone(),
            reason: ClockStartReason::FirstActivity,
        })
    }

    /// The RTT clock stops for `reason`.
    pub fn stopped(p: &PseudoId, reason: ClockStopReason) -> Payload {
        Payload::ClockStopped(ClockStopped {
            pathway_id: p.clone(),
            reason,
        })
    }

    /// The pathway is discharged.
    pub fn discharged(p: &PseudoId) -> Payload {
        Payload::ReferralDischarged(ReferralDischarged {
            pathway_id: p.clone(),
        })
    }

    /// An outpatient appointment of patient 1 on pathway `p`, no slot or follow-up.
    pub fn op_booked(
        a: &PseudoId,
        p: &PseudoId,
        start: DateTime<Utc>,
        contact: ContactType,
    ) -> Payload {
        op_booked_for(a, p, 1, start, contact, None)
    }

    /// An outpatient appointment of patient `n` on pathway `p`, no slot.
    pub fn op_booked_for(
        a: &PseudoId,
        p: &PseudoId,
        n: u32,
        start: DateTime<Utc>,
        contact: ContactType,
        followup_id: Option<PseudoId>,
    ) -> Payload {
        Payload::AppointmentBooked(AppointmentBooked {
            appointment_id: a.clone(),
            slot_id: None,
            patient: patient(n),
            start,
            kind: AppointmentKind::Outpatient {
                pathway_id: p.clone(),
                contact,
                followup_id,
            },
        })
    }

    /// A routine GP consultation of patient 1, no slot.
    pub fn gp_booked(
        a: &PseudoId,
        start: DateTime<Utc>,
        mode: AppointmentMode,
        hcp: HcpType,
    ) -> Payload {
        Payload::AppointmentBooked(AppointmentBooked {
            appointment_id: a.clone(),
            slot_id: None,
            patient: patient(1),
            start,
            kind: AppointmentKind::Gp {
                mode,
                hcp_type: hcp,
                national_category: NationalCategory::GeneralConsultationRoutine,
            },
        })
    }

    /// The patient attended appointment `a`.
    pub fn attended(a: &PseudoId) -> Payload {
        Payload::AppointmentAttended(AppointmentAttended {
            appointment_id: a.clone(),
        })
    }

    /// The patient did not attend appointment `a`.
    pub fn dna(a: &PseudoId) -> Payload {
        Payload::AppointmentDidNotAttend(AppointmentDidNotAttend {
            appointment_id: a.clone(),
        })
    }

    /// The event that gives appointment `a` the outcome `status` (none for booked).
    pub fn outcome(a: &PseudoId, status: AppointmentStatus) -> Option<Payload> {
        let appointment_id = a.clone();
        let by = match status {
            AppointmentStatus::Booked => return None,
            AppointmentStatus::Attended => return Some(attended(a)),
            AppointmentStatus::DidNotAttend => return Some(dna(a)),
            AppointmentStatus::CancelledByPatient => CancelledBy::Patient,
            AppointmentStatus::CancelledByProvider => CancelledBy::Provider,
        };
        Some(Payload::AppointmentCancelled(AppointmentCancelled {
            appointment_id,
            by,
        }))
    }

    /// A 15-minute slot of `kind` starting `start`.
    pub fn slot(s: &PseudoId, start: DateTime<Utc>, kind: SlotKind) -> Payload {
        Payload::SlotPublished(SlotPublished {
            slot_id: s.clone(),
            start,
            duration_minutes: 15,
            kind,
        })
    }

    /// A routine face-to-face GP slot.
    pub fn gp_slot_kind() -> SlotKind {
        SlotKind::Gp {
            mode: AppointmentMode::FaceToFace,
            hcp_type: HcpType::Gp,
            national_category: NationalCategory::GeneralConsultationRoutine,
        }
    }

    /// Slot `s` withdrawn: the clinic was cancelled.
    pub fn withdrawn(s: &PseudoId) -> Payload {
        Payload::SlotWithdrawn(SlotWithdrawn {
            slot_id: s.clone(),
            reason: SlotWithdrawReason::ClinicCancelled,
        })
    }

    /// A follow-up of patient 1 on pathway `p`, due on day `due`.
    pub fn required(f: &PseudoId, p: &PseudoId, due: i64, pifu: bool) -> Payload {
        Payload::FollowupRequired(FollowupRequired {
            followup_id: f.clone(),
            pathway_id: p.clone(),
            patient: patient(1),
            due_date: date(due),
            pifu,
        })
    }

    /// Follow-up `f` completed.
    pub fn completed(f: &PseudoId, p: &PseudoId) -> Payload {
        Payload::FollowupCompleted(FollowupCompleted {
            followup_id: f.clone(),
            pathway_id: p.clone(),
        })
    }

    /// An A&G request about patient 1.
    pub fn advice_requested(a: &PseudoId) -> Payload {
        Payload::AdviceRequested(AdviceRequested {
            advice_id: a.clone(),
            patient: patient(1),
        })
    }

    /// The specialist answers A&G request `a`, advising a referral.
    pub fn advice_responded(a: &PseudoId) -> Payload {
        Payload::AdviceResponded(AdviceResponded {
            advice_id: a.clone(),
            outcome: AdviceOutcome::ReferralAdvised,
        })
    }

    /// A&G request `a` becomes pathway `p`.
    pub fn advice_converted(a: &PseudoId, p: &PseudoId) -> Payload {
        Payload::AdviceConverted(AdviceConverted {
            advice_id: a.clone(),
            pathway_id: p.clone(),
        })
    }
}
