//! The weekly gold tables (`demand_weekly`, `capacity_weekly`,
//! `waits_weekly`, `followups_weekly`), kept up to date incrementally from the
//! entity states of [`crate::fold`] and counted with [`crate::rules`]; the
//! commit loop writes [`Gold::batch`] of the weeks a commit [`Changed`].
//!
//! **Differential aggregation.** Each entity is reduced to a small owned
//! summary (its org codes, dates, kinds and statuses: only what the tables
//! need). A summary's *contribution* is a set of cells (table, week, row key,
//! counter) with a value; a row's counters are the sums of every entity's
//! contributions. [`Gold::update`] subtracts the stored summary's
//! contribution of each touched entity, adds the new one and stores it, so a
//! commit costs in proportion to the entities it touches, never to the
//! length of history. Rows whose counters all return to zero are removed,
//! so an incremental run and a rebuild ([`Gold::rebuild`]) hold the same rows.
//!
//! **As of.** Flow measures (referrals received, appointments, slots, …)
//! count things on the date they happen, including future ones already
//! booked. Snapshot measures (a pathway on the waiting list, an overdue
//! follow-up, at each week end) are open-ended: an entity counts at every
//! week end from its start until it ends, but never in weeks after the week
//! of `as_of` (the newest event date the caller has seen; it only moves
//! forward, see [`Gold::set_as_of`]). An index of the entities still open
//! at `as_of` makes advancing it cost O(open entities × weeks advanced).
//!
//! The rows are a pure function of the final fold and the final `as_of`,
//! whatever the order and batching of events and `as_of` steps: contributions
//! are sums, and a week's snapshot depends only on the summary and the week.
//!
//! Every table starts with `week` (`Date32`, the ISO week's Monday: the Delta
//! partition column, never null) and `week_id` (`2026-W05`). Dimensions are
//! nullable text (wire names; ODS codes; the treatment function's NHS code);
//! counts are `Int64` and never null; rates and percentiles are `Float64`,
//! null when their denominator is 0. The specialty of a pathway is the one it
//! is in now (where triage redirected it, else the one referred to), as in
//! the `referrals` state table. The columns of each table are documented on
//! its [`GoldTable`] variant.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{ArrayRef, Date32Array, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use chrono::{Duration, NaiveDate};
use pathflow_schemas::codes::{
    AppointmentMode, AppointmentStatus, BookingBand, ContactType, HcpType, Priority, Setting,
    TreatmentFunction, TriageOutcome,
};
use pathflow_schemas::event::SlotKind;
use pathflow_schemas::{OdsCode, Week};

use crate::fold::{
    AdviceState, AppointmentState, Fold, FollowupState, Orgs, ReferralState, Settlement, SlotState,
    Touched,
};
use crate::rules;
use crate::spill::{SpillError, Spilled, Store};
use serde::{Deserialize, Serialize};

// ---- tables ---------------------------------------------------------------

/// A weekly gold table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GoldTable {
    /// `demand_weekly`: what was asked of the system each week. Key: `week`,
    /// `practice`, `provider`, `treatment_function`, `priority`; a row mixes
    /// whatever applies to its key (counts that do not apply are 0).
    ///
    /// - `referrals_received`: referrals whose UK received date is in the
    ///   week; `priority` is the referral's.
    /// - `referrals_returned`: referrals whose (latest) triage decision,
    ///   dated in the week, returned them with advice or rejected them
    ///   ([`returns_referral`]).
    /// - `referrals_from_advice`: of those received in the week, the ones
    ///   that came from an A&G request.
    /// - `advice_requests`: A&G requests made in the week (`priority` null).
    /// - `advice_responded`: A&G requests first answered in the week, of
    ///   those whose response time is known (request known and not answered
    ///   before it), so that `advice_response_days_total / advice_responded`
    ///   is their mean response time in UK calendar days.
    /// - `advice_converted`: of those, the ones converted into a referral.
    /// - `advice_response_days_total`: their summed response days
    ///   ([`rules::advice_response_days`]); medians are not additive.
    /// - `gp_appointments`: GP appointments starting in the week, not
    ///   cancelled (practice only: `provider`, `treatment_function` and
    ///   `priority` null); split by GPAD mode (`gp_face_to_face`,
    ///   `gp_telephone`, `gp_video_online`, `gp_home_visit`,
    ///   `gp_mode_unknown`) and by HCP type (`gp_by_gp`, `gp_by_other_staff`,
    ///   `gp_hcp_unknown`).
    Demand,
    /// `capacity_weekly`: capacity offered and how it was used. Key: `week`,
    /// `setting` (`gp` or `outpatient`), `practice`, `provider`,
    /// `treatment_function`, `contact` (`first` or `follow_up` for
    /// outpatients, null for GP). The week is that of the slot's or the
    /// appointment's (current) start.
    ///
    /// - `slots_offered`: published slots, not withdrawn; `slots_withdrawn`:
    ///   published slots withdrawn (whenever the withdrawal happened).
    /// - `appointments_booked`: appointments in the week in any status but
    ///   cancelled; `attended`, `did_not_attend`, `cancelled_by_patient`,
    ///   `cancelled_by_provider`: by their latest status. An appointment
    ///   counts once its booking has arrived (the booking says its setting).
    /// - `slots_unused`: `max(slots_offered − appointments_booked, 0)` on the
    ///   row ([`slots_unused`]): appointments are not matched to slots, so
    ///   this is the row's spare capacity, not a count of empty slots.
    /// - `dna_rate`: [`rules::dna_rate`] of the row's `attended` and
    ///   `did_not_attend`.
    Capacity,
    /// `waits_weekly`: the RTT waiting list at each week end, clock stops,
    /// and GPAD booking-to-appointment times. Key: `week`, `scope`,
    /// `practice`, `provider`, `treatment_function`.
    ///
    /// `scope` (never null) names the grouping set the row belongs to
    /// ([`Scope`]): `provider_specialty`, `practice_specialty`, `specialty`,
    /// `practice`, `all`. Every pathway counts in all five, because medians
    /// and percentiles cannot be summed: filter on one scope, never sum
    /// across scopes.
    ///
    /// - `waiting_list`: pathways on the RTT waiting list at the week end
    ///   (Sunday): clock started on or before it and not ended (stop or
    ///   discharge) on or before it, exactly [`ReferralState::waiting_at`].
    ///   A pathway with no clock start is not on the list. Counted only up to
    ///   the week of `as_of`.
    /// - `over_18_weeks`: of those, waits of 18 completed weeks or more (not
    ///   [`rules::within_18_weeks`]); `over_52_weeks`: 52 or more
    ///   ([`rules::over_52_weeks`]).
    /// - `median_wait_weeks`, `p92_wait_weeks`, `pct_within_18_weeks`: from
    ///   the weekly band counts of completed weeks waited at the week end
    ///   ([`rules::median_wait_weeks`], [`rules::p92_wait_weeks`],
    ///   [`rules::percent_within_18_weeks`]).
    /// - `clock_stops`: completed pathways whose clock stopped in the week
    ///   (nullified stops excluded, [`ReferralState::final_wait_weeks`]);
    ///   `median_completed_wait_weeks`: the median of their final waits.
    /// - `gp_same_day`, `gp_one_day`, `gp_two_to_seven_days`,
    ///   `gp_eight_to_fourteen_days`, `gp_fifteen_to_twenty_one_days`,
    ///   `gp_twenty_two_to_twenty_eight_days`,
    ///   `gp_more_than_twenty_eight_days`: GP appointments starting in the
    ///   week, not cancelled, by GPAD booking band
    ///   ([`AppointmentState::booking_band`]; a start before the booking is
    ///   in no band). Only the `practice` and `all` scopes hold them; null in
    ///   the others ([`scope_has_gp_bands`]).
    Waits,
    /// `followups_weekly`: outpatient follow-ups. Key: `week`, `practice`,
    /// `provider`, `treatment_function` (the follow-up requirement's; the
    /// appointment's for attendances).
    ///
    /// - `due`: follow-ups due in the week; `due_pifu`: of those,
    ///   patient-initiated.
    /// - `overdue`: follow-ups overdue at the week end
    ///   ([`rules::followup_overdue_days`]: past due and not completed or
    ///   cancelled on or before the week end); PIFU follow-ups are never
    ///   overdue (the rule: they are booked only when the patient asks).
    ///   Counted only up to the week of `as_of`. `overdue_more_than_6_weeks`:
    ///   of those, overdue by more than 42 days
    ///   ([`rules::overdue_more_than_6_weeks`]).
    /// - `completed`: follow-ups completed in the week.
    /// - `first_attendances`, `followup_attendances`: outpatient appointments
    ///   starting in the week and attended, by contact type.
    /// - `new_to_followup_ratio`: [`rules::new_to_followup_ratio`] of the row.
    Followups,
}

impl GoldTable {
    /// Every gold table.
    pub const ALL: [GoldTable; 4] = [
        GoldTable::Demand,
        GoldTable::Capacity,
        GoldTable::Waits,
        GoldTable::Followups,
    ];

    /// The table's name.
    pub fn name(self) -> &'static str {
        match self {
            GoldTable::Demand => "demand_weekly",
            GoldTable::Capacity => "capacity_weekly",
            GoldTable::Waits => "waits_weekly",
            GoldTable::Followups => "followups_weekly",
        }
    }

    /// How many counters a row holds.
    fn width(self) -> usize {
        match self {
            GoldTable::Demand => DEMAND_WIDTH,
            GoldTable::Capacity => CAPACITY_WIDTH,
            GoldTable::Waits => WAITS_WIDTH,
            GoldTable::Followups => FOLLOWUPS_WIDTH,
        }
    }
}

/// The grouping set of a `waits_weekly` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// By provider and specialty (practice null).
    ProviderSpecialty,
    /// By practice and specialty (provider null).
    PracticeSpecialty,
    /// By specialty only.
    Specialty,
    /// By practice only.
    Practice,
    /// Everything (all dimensions null).
    All,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 5] = [
        Scope::ProviderSpecialty,
        Scope::PracticeSpecialty,
        Scope::Specialty,
        Scope::Practice,
        Scope::All,
    ];

    /// The name in the `scope` column.
    pub fn name(self) -> &'static str {
        match self {
            Scope::ProviderSpecialty => "provider_specialty",
            Scope::PracticeSpecialty => "practice_specialty",
            Scope::Specialty => "specialty",
            Scope::Practice => "practice",
            Scope::All => "all",
        }
    }

    /// The row key of something with `orgs` in this scope.
    fn key(self, orgs: &Orgs) -> RowKey {
        let (practice, provider, tf) = match self {
            Scope::ProviderSpecialty => (false, true, true),
            Scope::PracticeSpecialty => (true, false, true),
            Scope::Specialty => (false, false, true),
            Scope::Practice => (true, false, false),
            Scope::All => (false, false, false),
        };
        RowKey {
            scope: Some(self),
            practice: orgs.practice.clone().filter(|_| practice),
            provider: orgs.provider.clone().filter(|_| provider),
            treatment_function: orgs.treatment_function.filter(|_| tf),
            ..RowKey::default()
        }
    }
}

/// The weeks each table's rows changed in, by table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changed(BTreeMap<GoldTable, BTreeSet<Week>>);

static NO_WEEKS: BTreeSet<Week> = BTreeSet::new();

impl Changed {
    /// Adds `other`'s weeks.
    pub fn merge(&mut self, other: Changed) {
        for (table, weeks) in other.0 {
            self.0.entry(table).or_default().extend(weeks);
        }
    }

    /// True when no row changed.
    pub fn is_empty(&self) -> bool {
        self.0.values().all(BTreeSet::is_empty)
    }

    /// The weeks `table` changed in.
    pub fn weeks(&self, table: GoldTable) -> &BTreeSet<Week> {
        self.0.get(&table).unwrap_or(&NO_WEEKS)
    }

    /// The tables that changed.
    pub fn tables(&self) -> impl Iterator<Item = GoldTable> + '_ {
        self.0
            .iter()
            .filter(|(_, w)| !w.is_empty())
            .map(|(t, _)| *t)
    }

    fn insert(&mut self, table: GoldTable, week: Week) {
        self.0.entry(table).or_default().insert(week);
    }
}

// ---- the rules that are choices of these tables ---------------------------

/// A triage decision that sends the referral back: returned with advice or
/// rejected (a redirection moves demand, it does not return it).
pub fn returns_referral(outcome: TriageOutcome) -> bool {
    matches!(
        outcome,
        TriageOutcome::ReturnedWithAdvice | TriageOutcome::Rejected
    )
}

/// An appointment that uses capacity: any status but cancelled.
pub fn uses_capacity(status: AppointmentStatus) -> bool {
    !matches!(
        status,
        AppointmentStatus::CancelledByPatient | AppointmentStatus::CancelledByProvider
    )
}

/// Spare capacity of a row: offered slots less appointments, never negative
/// (appointments booked outside published slots are not negative capacity).
pub fn slots_unused(offered: i64, booked: i64) -> i64 {
    (offered - booked).max(0)
}

/// The scopes of `waits_weekly` that hold the GPAD booking bands: GP
/// appointments have a practice and no provider or specialty, so only the
/// `practice` and `all` rows can count them.
pub fn scope_has_gp_bands(scope: Scope) -> bool {
    matches!(scope, Scope::Practice | Scope::All)
}

/// The weeks whose end (Sunday) falls on or after `from` and before `until`:
/// the week ends a snapshot measure counts at. A pathway waits at the week
/// ends from its clock start (`from`) to before it ended
/// ([`rules::is_incomplete_at_week_end`]); a follow-up is overdue from the day
/// after it is due to before it was settled. `(first, last)`, `last` `None`
/// while it has not ended; `None` when there is no such week.
pub fn snapshot_weeks(from: NaiveDate, until: Option<NaiveDate>) -> Option<(Week, Option<Week>)> {
    let first = Week::of(from);
    match until {
        None => Some((first, None)),
        Some(end) => {
            // The last Sunday before `end` ends the week before `end`'s week.
            let last = Week::of(end).plus(-1);
            (last >= first && end > from).then_some((first, Some(last)))
        }
    }
}

// ---- counters ---------------------------------------------------------------

const REFERRALS_RECEIVED: usize = 0;
const REFERRALS_RETURNED: usize = 1;
const REFERRALS_FROM_ADVICE: usize = 2;
const ADVICE_REQUESTS: usize = 3;
const ADVICE_RESPONDED: usize = 4;
const ADVICE_CONVERTED: usize = 5;
const ADVICE_RESPONSE_DAYS_TOTAL: usize = 6;
const GP_APPOINTMENTS: usize = 7;
/// Plus [`mode_index`].
const GP_MODE: usize = 8;
/// Plus [`hcp_index`].
const GP_HCP: usize = 13;
const DEMAND_WIDTH: usize = 16;

const SLOTS_OFFERED: usize = 0;
const SLOTS_WITHDRAWN: usize = 1;
const APPOINTMENTS_BOOKED: usize = 2;
const ATTENDED: usize = 3;
const DID_NOT_ATTEND: usize = 4;
const CANCELLED_BY_PATIENT: usize = 5;
const CANCELLED_BY_PROVIDER: usize = 6;
const CAPACITY_WIDTH: usize = 7;

const WAITING_LIST: usize = 0;
const OVER_18_WEEKS: usize = 1;
const OVER_52_WEEKS: usize = 2;
const CLOCK_STOPS: usize = 3;
/// Plus [`band_index`].
const GP_BAND: usize = 4;
const WAITS_WIDTH: usize = 11;
/// Histograms of completed weeks waited.
const WAITING_HIST: usize = 0;
const COMPLETED_HIST: usize = 1;

const DUE: usize = 0;
const DUE_PIFU: usize = 1;
const OVERDUE: usize = 2;
const OVERDUE_6_WEEKS: usize = 3;
const COMPLETED: usize = 4;
const FIRST_ATTENDANCES: usize = 5;
const FOLLOWUP_ATTENDANCES: usize = 6;
const FOLLOWUPS_WIDTH: usize = 7;

fn mode_index(mode: AppointmentMode) -> usize {
    match mode {
        AppointmentMode::FaceToFace => 0,
        AppointmentMode::Telephone => 1,
        AppointmentMode::VideoOnline => 2,
        AppointmentMode::HomeVisit => 3,
        AppointmentMode::Unknown => 4,
    }
}

fn hcp_index(hcp: HcpType) -> usize {
    match hcp {
        HcpType::Gp => 0,
        HcpType::OtherPracticeStaff => 1,
        HcpType::Unknown => 2,
    }
}

fn band_index(band: BookingBand) -> usize {
    match band {
        BookingBand::SameDay => 0,
        BookingBand::OneDay => 1,
        BookingBand::TwoToSevenDays => 2,
        BookingBand::EightToFourteenDays => 3,
        BookingBand::FifteenToTwentyOneDays => 4,
        BookingBand::TwentyTwoToTwentyEightDays => 5,
        BookingBand::MoreThanTwentyEightDays => 6,
    }
}

/// The dimensions of a row; each table uses its own subset, the rest `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct RowKey {
    scope: Option<Scope>,
    setting: Option<Setting>,
    practice: Option<OdsCode>,
    provider: Option<OdsCode>,
    treatment_function: Option<TreatmentFunction>,
    priority: Option<Priority>,
    contact: Option<ContactType>,
}

impl RowKey {
    fn orgs(orgs: &Orgs) -> Self {
        RowKey {
            practice: orgs.practice.clone(),
            provider: orgs.provider.clone(),
            treatment_function: orgs.treatment_function,
            ..RowKey::default()
        }
    }
}

/// Where in a row a cell adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Measure {
    /// A counter.
    Count(usize),
    /// A band (completed weeks) of a histogram.
    Band(usize, u32),
}

/// A row's sums, in one allocation: the table's counters, then histogram 0,
/// then histogram 1 (counts per completed week, each without trailing
/// zeros). The deriver holds every week's rows in memory (about 200,000 at
/// 300,000 patients, a million at 1.5 million); three `i64` vectors per
/// row, with their spare capacity, took 6% more of a rebuild's peak RSS at
/// 300,000 patients (BENCHMARKS.md).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Counters {
    cells: Vec<i32>,
    /// Counters at the front.
    width: u32,
    /// Bands of histogram 0, after the counters.
    first: u32,
}

/// Adds `value` to a cell. A cell counts entities of one ICB (or their
/// weeks in a band): far inside `i32`, even for the largest ICB.
fn bump(cell: &mut i32, value: i64) {
    let sum = i64::from(*cell) + value;
    *cell = i32::try_from(sum).unwrap_or(if sum > 0 { i32::MAX } else { i32::MIN });
}

impl Counters {
    fn new(table: GoldTable) -> Self {
        let width = table.width();
        Counters {
            cells: vec![0; width],
            width: width as u32,
            first: 0,
        }
    }

    /// Where histogram `h` lies in `cells` (start, length).
    fn hist(&self, h: usize) -> Option<(usize, usize)> {
        let (width, first) = (self.width as usize, self.first as usize);
        match h {
            0 => Some((width, first)),
            1 => Some((width + first, self.cells.len() - width - first)),
            _ => None,
        }
    }

    fn add(&mut self, measure: Measure, value: i64) {
        match measure {
            Measure::Count(i) => {
                if i < self.width as usize {
                    bump(&mut self.cells[i], value);
                }
            }
            Measure::Band(h, band) => {
                let Some((start, len)) = self.hist(h) else {
                    return;
                };
                let k = band as usize;
                if k >= len {
                    let grow = k + 1 - len;
                    // Exactly: a histogram grows a week at a time, and
                    // doubling would leave most rows half empty.
                    self.cells.reserve_exact(grow);
                    let at = start + len;
                    self.cells.splice(at..at, std::iter::repeat_n(0, grow));
                    if h == 0 {
                        self.first += grow as u32;
                    }
                }
                bump(&mut self.cells[start + k], value);
                let len = len.max(k + 1);
                let kept = self.cells[start..start + len]
                    .iter()
                    .rposition(|&n| n != 0)
                    .map_or(0, |i| i + 1);
                if kept < len {
                    self.cells.drain(start + kept..start + len);
                    if h == 0 {
                        self.first = kept as u32;
                    }
                }
            }
        }
    }

    fn is_zero(&self) -> bool {
        self.cells.len() == self.width as usize && self.cells.iter().all(|&c| c == 0)
    }

    fn count(&self, i: usize) -> i64 {
        if i < self.width as usize {
            i64::from(self.cells[i])
        } else {
            0
        }
    }

    fn bands(&self, h: usize) -> Vec<u64> {
        self.hist(h)
            .map(|(start, len)| {
                self.cells[start..start + len]
                    .iter()
                    .map(|&n| u64::try_from(n).unwrap_or(0))
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn unsigned(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Net changes to cells, summed before they are applied.
#[derive(Default)]
struct Delta {
    sign: i64,
    cells: HashMap<(GoldTable, Week, RowKey, Measure), i64>,
}

impl Delta {
    fn add(&mut self, table: GoldTable, week: Week, key: &RowKey, measure: Measure, value: i64) {
        *self
            .cells
            .entry((table, week, key.clone(), measure))
            .or_default() += self.sign * value;
    }

    fn count(&mut self, table: GoldTable, week: Week, key: &RowKey, i: usize) {
        self.add(table, week, key, Measure::Count(i), 1);
    }
}

// ---- summaries --------------------------------------------------------------

/// What a pathway contributes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ReferralSummary {
    orgs: Orgs,
    priority: Option<Priority>,
    received: Option<NaiveDate>,
    from_advice: bool,
    /// The date of a triage that returned or rejected it.
    returned: Option<NaiveDate>,
    clock_start: Option<NaiveDate>,
    wait_end: Option<NaiveDate>,
    /// Stop date and final wait of a completed pathway.
    completed: Option<(NaiveDate, u32)>,
}

impl ReferralSummary {
    fn of(r: &ReferralState) -> Self {
        ReferralSummary {
            orgs: Orgs {
                practice: r.practice().cloned(),
                provider: r.provider().cloned(),
                treatment_function: r.treatment_function(),
            },
            priority: r.priority(),
            received: r.received_date(),
            from_advice: r.advice_origin().is_some(),
            returned: r
                .triage()
                .filter(|(_, t)| returns_referral(t.outcome))
                .map(|(d, _)| d),
            clock_start: r.clock_start().map(|c| c.0),
            wait_end: r.wait_end(),
            completed: r
                .clock_stop()
                .zip(r.final_wait_weeks())
                .map(|((d, _), w)| (d, w)),
        }
    }

    fn flow(&self, d: &mut Delta) {
        let key = RowKey {
            priority: self.priority,
            ..RowKey::orgs(&self.orgs)
        };
        if let Some(day) = self.received {
            let week = Week::of(day);
            d.count(GoldTable::Demand, week, &key, REFERRALS_RECEIVED);
            if self.from_advice {
                d.count(GoldTable::Demand, week, &key, REFERRALS_FROM_ADVICE);
            }
        }
        if let Some(day) = self.returned {
            d.count(GoldTable::Demand, Week::of(day), &key, REFERRALS_RETURNED);
        }
        if let Some((stop, weeks)) = self.completed {
            let week = Week::of(stop);
            for scope in Scope::ALL {
                let key = scope.key(&self.orgs);
                d.count(GoldTable::Waits, week, &key, CLOCK_STOPS);
                d.add(
                    GoldTable::Waits,
                    week,
                    &key,
                    Measure::Band(COMPLETED_HIST, weeks),
                    1,
                );
            }
        }
    }

    fn span(&self) -> Option<(Week, Option<Week>)> {
        snapshot_weeks(self.clock_start?, self.wait_end)
    }

    fn at_week_end(&self, week: Week, d: &mut Delta) {
        let Some(start) = self.clock_start else {
            return;
        };
        if !rules::is_incomplete_at_week_end(start, self.wait_end, week) {
            return;
        }
        let Some(weeks) = rules::weeks_waited(start, rules::week_end(week)) else {
            return;
        };
        for scope in Scope::ALL {
            let key = scope.key(&self.orgs);
            d.count(GoldTable::Waits, week, &key, WAITING_LIST);
            if !rules::within_18_weeks(weeks) {
                d.count(GoldTable::Waits, week, &key, OVER_18_WEEKS);
            }
            if rules::over_52_weeks(weeks) {
                d.count(GoldTable::Waits, week, &key, OVER_52_WEEKS);
            }
            d.add(
                GoldTable::Waits,
                week,
                &key,
                Measure::Band(WAITING_HIST, weeks),
                1,
            );
        }
    }
}

/// What an appointment contributes (once its booking says its setting).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct AppointmentSummary {
    setting: Setting,
    orgs: Orgs,
    contact: Option<ContactType>,
    start: NaiveDate,
    status: AppointmentStatus,
    gpad: Option<(AppointmentMode, HcpType)>,
    band: Option<BookingBand>,
}

impl AppointmentSummary {
    fn of(a: &AppointmentState) -> Option<Self> {
        Some(AppointmentSummary {
            setting: a.setting()?,
            orgs: Orgs {
                practice: a.practice().cloned(),
                provider: a.provider().cloned(),
                treatment_function: a.treatment_function(),
            },
            contact: a.contact(),
            start: rules::uk_date(a.start()?),
            status: a.status(),
            gpad: a.gpad().map(|g| (g.0, g.1)),
            band: a.booking_band(),
        })
    }

    fn flow(&self, d: &mut Delta) {
        let week = Week::of(self.start);
        let key = RowKey {
            setting: Some(self.setting),
            contact: self.contact,
            ..RowKey::orgs(&self.orgs)
        };
        let status = match self.status {
            AppointmentStatus::Booked => None,
            AppointmentStatus::Attended => Some(ATTENDED),
            AppointmentStatus::DidNotAttend => Some(DID_NOT_ATTEND),
            AppointmentStatus::CancelledByPatient => Some(CANCELLED_BY_PATIENT),
            AppointmentStatus::CancelledByProvider => Some(CANCELLED_BY_PROVIDER),
        };
        if let Some(i) = status {
            d.count(GoldTable::Capacity, week, &key, i);
        }
        let used = uses_capacity(self.status);
        if used {
            d.count(GoldTable::Capacity, week, &key, APPOINTMENTS_BOOKED);
        }
        match self.setting {
            Setting::Gp if used => {
                let key = RowKey {
                    practice: self.orgs.practice.clone(),
                    ..RowKey::default()
                };
                d.count(GoldTable::Demand, week, &key, GP_APPOINTMENTS);
                if let Some((mode, hcp)) = self.gpad {
                    d.count(GoldTable::Demand, week, &key, GP_MODE + mode_index(mode));
                    d.count(GoldTable::Demand, week, &key, GP_HCP + hcp_index(hcp));
                }
                if let Some(band) = self.band {
                    for scope in [Scope::Practice, Scope::All] {
                        let key = scope.key(&self.orgs);
                        d.count(GoldTable::Waits, week, &key, GP_BAND + band_index(band));
                    }
                }
            }
            Setting::Gp => {}
            Setting::Outpatient => {
                let counter = match self.contact {
                    _ if self.status != AppointmentStatus::Attended => None,
                    Some(ContactType::First) => Some(FIRST_ATTENDANCES),
                    Some(ContactType::FollowUp) => Some(FOLLOWUP_ATTENDANCES),
                    None => None,
                };
                if let Some(i) = counter {
                    d.count(GoldTable::Followups, week, &RowKey::orgs(&self.orgs), i);
                }
            }
        }
    }
}

/// What a published slot contributes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SlotSummary {
    setting: Setting,
    orgs: Orgs,
    contact: Option<ContactType>,
    start: NaiveDate,
    withdrawn: bool,
}

impl SlotSummary {
    fn of(s: &SlotState) -> Option<Self> {
        let slot = s.slot()?;
        Some(SlotSummary {
            setting: slot.kind.setting(),
            orgs: slot.orgs.clone(),
            contact: match &slot.kind {
                SlotKind::Outpatient { contact } => Some(*contact),
                SlotKind::Gp { .. } => None,
            },
            start: rules::uk_date(slot.start),
            withdrawn: s.withdrawn().is_some(),
        })
    }

    fn flow(&self, d: &mut Delta) {
        let key = RowKey {
            setting: Some(self.setting),
            contact: self.contact,
            ..RowKey::orgs(&self.orgs)
        };
        let i = if self.withdrawn {
            SLOTS_WITHDRAWN
        } else {
            SLOTS_OFFERED
        };
        d.count(GoldTable::Capacity, Week::of(self.start), &key, i);
    }
}

/// What a follow-up contributes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FollowupSummary {
    orgs: Orgs,
    due: Option<NaiveDate>,
    pifu: bool,
    settled: Option<NaiveDate>,
    completed: Option<NaiveDate>,
}

impl FollowupSummary {
    fn of(f: &FollowupState) -> Self {
        FollowupSummary {
            orgs: Orgs {
                practice: f.requirement().and_then(|r| r.orgs.practice.clone()),
                provider: f.provider().cloned(),
                treatment_function: f.treatment_function(),
            },
            due: f.due_date(),
            pifu: f.pifu().unwrap_or(false),
            settled: f.settled().map(|s| s.0),
            completed: f
                .settled()
                .filter(|s| s.1 == Settlement::Completed)
                .map(|s| s.0),
        }
    }

    fn flow(&self, d: &mut Delta) {
        let key = RowKey::orgs(&self.orgs);
        if let Some(due) = self.due {
            let week = Week::of(due);
            d.count(GoldTable::Followups, week, &key, DUE);
            if self.pifu {
                d.count(GoldTable::Followups, week, &key, DUE_PIFU);
            }
        }
        if let Some(day) = self.completed {
            d.count(GoldTable::Followups, Week::of(day), &key, COMPLETED);
        }
    }

    fn span(&self) -> Option<(Week, Option<Week>)> {
        if self.pifu {
            return None;
        }
        snapshot_weeks(self.due? + Duration::days(1), self.settled)
    }

    fn at_week_end(&self, week: Week, d: &mut Delta) {
        let Some(due) = self.due else {
            return;
        };
        let end = rules::week_end(week);
        let Some(days) = rules::followup_overdue_days(due, self.settled, self.pifu, end) else {
            return;
        };
        let key = RowKey::orgs(&self.orgs);
        d.count(GoldTable::Followups, week, &key, OVERDUE);
        if rules::overdue_more_than_6_weeks(days) {
            d.count(GoldTable::Followups, week, &key, OVERDUE_6_WEEKS);
        }
    }
}

/// What an A&G request contributes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct AdviceSummary {
    orgs: Orgs,
    requested: Option<NaiveDate>,
    /// The UK date of the first response and the response days, when known.
    responded: Option<(NaiveDate, i64)>,
    converted: bool,
}

impl AdviceSummary {
    fn of(a: &AdviceState) -> Self {
        AdviceSummary {
            orgs: Orgs {
                practice: a.practice().cloned(),
                provider: a.request().and_then(|r| r.orgs.provider.clone()),
                treatment_function: a.treatment_function(),
            },
            requested: a.requested_at().map(rules::uk_date),
            responded: a
                .responded_at()
                .zip(a.response_days())
                .map(|(at, days)| (rules::uk_date(at), days)),
            converted: a.converted_to().is_some(),
        }
    }

    fn flow(&self, d: &mut Delta) {
        let key = RowKey::orgs(&self.orgs);
        if let Some(day) = self.requested {
            d.count(GoldTable::Demand, Week::of(day), &key, ADVICE_REQUESTS);
        }
        if let Some((day, days)) = self.responded {
            let week = Week::of(day);
            d.count(GoldTable::Demand, week, &key, ADVICE_RESPONDED);
            let total = Measure::Count(ADVICE_RESPONSE_DAYS_TOTAL);
            d.add(GoldTable::Demand, week, &key, total, days);
            if self.converted {
                d.count(GoldTable::Demand, week, &key, ADVICE_CONVERTED);
            }
        }
    }
}

/// One entity's summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Summary {
    Referral(ReferralSummary),
    Appointment(AppointmentSummary),
    Slot(SlotSummary),
    Followup(FollowupSummary),
    Advice(AdviceSummary),
}

impl Summary {
    /// The summary of `entity` in `fold`; `None` when it contributes nothing.
    fn of(fold: &Fold, entity: &Touched) -> Option<Self> {
        match entity {
            Touched::Referral(id) => fold
                .referral(id)
                .map(|r| Summary::Referral(ReferralSummary::of(&r))),
            Touched::Appointment(id) => fold
                .appointment(id)
                .and_then(|a| AppointmentSummary::of(&a))
                .map(Summary::Appointment),
            Touched::Slot(id) => fold
                .slot(id)
                .and_then(|s| SlotSummary::of(&s))
                .map(Summary::Slot),
            Touched::Followup(id) => fold
                .followup(id)
                .map(|f| Summary::Followup(FollowupSummary::of(&f))),
            Touched::Advice(id) => fold
                .advice(id)
                .map(|a| Summary::Advice(AdviceSummary::of(&a))),
        }
    }

    fn flow(&self, d: &mut Delta) {
        match self {
            Summary::Referral(s) => s.flow(d),
            Summary::Appointment(s) => s.flow(d),
            Summary::Slot(s) => s.flow(d),
            Summary::Followup(s) => s.flow(d),
            Summary::Advice(s) => s.flow(d),
        }
    }

    /// The weeks its snapshot measures may count in, regardless of `as_of`.
    fn span(&self) -> Option<(Week, Option<Week>)> {
        match self {
            Summary::Referral(s) => s.span(),
            Summary::Followup(s) => s.span(),
            _ => None,
        }
    }

    fn at_week_end(&self, week: Week, d: &mut Delta) {
        match self {
            Summary::Referral(s) => s.at_week_end(week, d),
            Summary::Followup(s) => s.at_week_end(week, d),
            _ => {}
        }
    }

    /// Snapshot contributions of the weeks after `after` through `through`.
    fn snapshots(&self, after: Option<Week>, through: Week, d: &mut Delta) {
        let Some((first, last)) = self.span() else {
            return;
        };
        let from = match after {
            Some(a) if a >= first => a.plus(1),
            _ => first,
        };
        let to = last.map_or(through, |l| l.min(through));
        let mut week = from;
        while week <= to {
            self.at_week_end(week, d);
            week = week.plus(1);
        }
    }

    /// Everything it contributes with `as_of` in week `as_of`.
    fn contribute(&self, as_of: Option<Week>, d: &mut Delta) {
        self.flow(d);
        if let Some(a) = as_of {
            self.snapshots(None, a, d);
        }
    }

    /// True when advancing `as_of` past `as_of` can still add snapshots.
    fn open_after(&self, as_of: Option<Week>) -> bool {
        match (self.span(), as_of) {
            (None, _) => false,
            (Some(_), None) | (Some((_, None)), _) => true,
            (Some((_, Some(last))), Some(a)) => last > a,
        }
    }
}

// ---- the aggregate ----------------------------------------------------------

/// The gold tables' rows, kept up to date from the fold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gold {
    rows: BTreeMap<GoldTable, BTreeMap<Week, HashMap<RowKey, Counters>>>,
    /// Every entity's summary: what it counts in now, to take out when it changes.
    summaries: Spilled<Touched, Summary>,
    /// Entities whose snapshots can still grow when `as_of` advances.
    open: HashSet<Touched>,
    as_of: Option<Week>,
}

impl Gold {
    /// No rows, no `as_of` (no snapshot measures until [`Gold::set_as_of`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// The same, with the entities' summaries kept in `store`.
    pub fn on(store: &Arc<Store>) -> Self {
        Gold {
            summaries: Spilled::on(store, "gold_summaries"),
            ..Gold::default()
        }
    }

    /// Summaries held in memory.
    pub fn in_memory_len(&self) -> usize {
        self.summaries.in_memory_len()
    }

    /// Writes the summaries in memory to the store and forgets them.
    pub fn flush(&mut self) -> Result<(), SpillError> {
        self.summaries.flush()
    }

    /// Every entity of `fold` counted, with `as_of` set.
    pub fn rebuild(fold: &Fold, as_of: Option<NaiveDate>) -> Self {
        let mut gold = Gold::new();
        if let Some(date) = as_of {
            gold.set_as_of(date);
        }
        let entities = fold.entities();
        gold.update(fold, &entities);
        gold
    }

    /// The week of `as_of`: snapshot measures count up to its end.
    pub fn as_of(&self) -> Option<Week> {
        self.as_of
    }

    /// Recounts the `touched` entities from their state in `fold`.
    pub fn update(&mut self, fold: &Fold, touched: &[Touched]) -> Changed {
        let mut delta = Delta::default();
        let mut seen: HashSet<&Touched> = HashSet::new();
        for entity in touched {
            if !seen.insert(entity) {
                continue;
            }
            let new = Summary::of(fold, entity);
            if self.summaries.get(entity).as_deref() == new.as_ref() {
                continue;
            }
            if let Some(old) = self.summaries.remove(entity) {
                delta.sign = -1;
                old.contribute(self.as_of, &mut delta);
            }
            self.open.remove(entity);
            if let Some(new) = new {
                delta.sign = 1;
                new.contribute(self.as_of, &mut delta);
                if new.open_after(self.as_of) {
                    self.open.insert(entity.clone());
                }
                self.summaries.insert(entity.clone(), new);
            }
        }
        self.apply(delta)
    }

    /// Moves `as_of` to `date` when that is in a later week: adds the open
    /// entities' snapshots of the weeks in between. An earlier `date` is
    /// ignored (`as_of` only moves forward).
    pub fn set_as_of(&mut self, date: NaiveDate) -> Changed {
        let to = Week::of(date);
        let from = self.as_of;
        if from.is_some_and(|a| to <= a) {
            return Changed::default();
        }
        self.as_of = Some(to);
        let mut delta = Delta {
            sign: 1,
            ..Delta::default()
        };
        let mut closed = Vec::new();
        for entity in &self.open {
            let Some(summary) = self.summaries.get(entity) else {
                closed.push(entity.clone());
                continue;
            };
            summary.snapshots(from, to, &mut delta);
            if !summary.open_after(Some(to)) {
                closed.push(entity.clone());
            }
        }
        for entity in closed {
            self.open.remove(&entity);
        }
        self.apply(delta)
    }

    fn apply(&mut self, delta: Delta) -> Changed {
        let mut changed = Changed::default();
        for ((table, week, key, measure), value) in delta.cells {
            if value == 0 {
                continue;
            }
            let weeks = self.rows.entry(table).or_default();
            let rows = weeks.entry(week).or_default();
            let counters = rows
                .entry(key.clone())
                .or_insert_with(|| Counters::new(table));
            counters.add(measure, value);
            if counters.is_zero() {
                rows.remove(&key);
                if rows.is_empty() {
                    weeks.remove(&week);
                    if weeks.is_empty() {
                        self.rows.remove(&table);
                    }
                }
            }
            changed.insert(table, week);
        }
        changed
    }

    /// Every week `table` has rows in.
    pub fn weeks(&self, table: GoldTable) -> BTreeSet<Week> {
        self.rows
            .get(&table)
            .map(|w| w.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Every row of `table` in `weeks`, by week then key.
    pub fn batch(
        &self,
        table: GoldTable,
        weeks: &BTreeSet<Week>,
    ) -> Result<RecordBatch, ArrowError> {
        let mut rows: Vec<Row<'_>> = Vec::new();
        if let Some(by_week) = self.rows.get(&table) {
            for week in weeks {
                let Some(keyed) = by_week.get(week) else {
                    continue;
                };
                let mut keyed: Vec<(&RowKey, &Counters)> = keyed.iter().collect();
                keyed.sort_by(|a, b| a.0.cmp(b.0));
                rows.extend(keyed.into_iter().map(|(key, counters)| Row {
                    week: *week,
                    key,
                    counters,
                }));
            }
        }
        let columns: Vec<ArrayRef> = columns(table)
            .iter()
            .map(|(_, value)| value.array(&rows))
            .collect();
        RecordBatch::try_new(schema(table), columns)
    }
}

// ---- batches ----------------------------------------------------------------

struct Row<'a> {
    week: Week,
    key: &'a RowKey,
    counters: &'a Counters,
}

/// What a column holds.
#[derive(Debug, Clone, Copy)]
enum Value {
    Week,
    WeekId,
    Scope,
    Setting,
    Practice,
    Provider,
    TreatmentFunction,
    Priority,
    Contact,
    Count(usize),
    /// A count null outside the scopes that hold GP bands.
    GpBand(usize),
    SlotsUnused,
    DnaRate,
    /// A percentile (0 < p ≤ 1) of a histogram.
    Percentile(usize, f64),
    PctWithin18,
    NewToFollowup,
}

/// Days from 1970-01-01, as Arrow's `Date32` counts them.
fn date32(d: NaiveDate) -> i32 {
    // Every NaiveDate is within ±262143 years of the epoch: well inside i32 days.
    (d - NaiveDate::default()).num_days() as i32
}

fn strings<'a, I: Iterator<Item = Option<&'a str>>>(it: I) -> ArrayRef {
    Arc::new(StringArray::from_iter(it))
}

fn floats<I: Iterator<Item = Option<f64>>>(it: I) -> ArrayRef {
    Arc::new(Float64Array::from_iter(it))
}

impl Value {
    fn data_type(self) -> (DataType, bool) {
        match self {
            Value::Week => (DataType::Date32, false),
            Value::WeekId | Value::Scope => (DataType::Utf8, false),
            Value::Setting
            | Value::Practice
            | Value::Provider
            | Value::TreatmentFunction
            | Value::Priority
            | Value::Contact => (DataType::Utf8, true),
            Value::Count(_) | Value::SlotsUnused => (DataType::Int64, false),
            Value::GpBand(_) => (DataType::Int64, true),
            Value::DnaRate | Value::Percentile(..) | Value::PctWithin18 | Value::NewToFollowup => {
                (DataType::Float64, true)
            }
        }
    }

    fn array(self, rows: &[Row<'_>]) -> ArrayRef {
        let r = rows.iter();
        match self {
            Value::Week => Arc::new(Date32Array::from_iter_values(
                r.map(|r| date32(r.week.monday())),
            )),
            Value::WeekId => Arc::new(StringArray::from_iter_values(r.map(|r| r.week.to_string()))),
            Value::Scope => strings(r.map(|r| r.key.scope.map(Scope::name))),
            Value::Setting => strings(r.map(|r| r.key.setting.map(|s| s.wire_name()))),
            Value::Practice => strings(r.map(|r| r.key.practice.as_ref().map(|o| o.as_str()))),
            Value::Provider => strings(r.map(|r| r.key.provider.as_ref().map(|o| o.as_str()))),
            Value::TreatmentFunction => {
                strings(r.map(|r| r.key.treatment_function.map(|t| t.wire_name())))
            }
            Value::Priority => strings(r.map(|r| r.key.priority.map(|p| p.wire_name()))),
            Value::Contact => strings(r.map(|r| r.key.contact.map(|c| c.wire_name()))),
            Value::Count(i) => {
                Arc::new(Int64Array::from_iter_values(r.map(|r| r.counters.count(i))))
            }
            Value::GpBand(i) => Arc::new(Int64Array::from_iter(r.map(|r| {
                r.key
                    .scope
                    .is_some_and(scope_has_gp_bands)
                    .then(|| r.counters.count(GP_BAND + i))
            }))),
            Value::SlotsUnused => Arc::new(Int64Array::from_iter_values(r.map(|r| {
                slots_unused(
                    r.counters.count(SLOTS_OFFERED),
                    r.counters.count(APPOINTMENTS_BOOKED),
                )
            }))),
            Value::DnaRate => floats(r.map(|r| {
                rules::dna_rate(
                    unsigned(r.counters.count(ATTENDED)),
                    unsigned(r.counters.count(DID_NOT_ATTEND)),
                )
            })),
            Value::Percentile(h, p) => {
                floats(r.map(|r| rules::percentile_wait_weeks(&r.counters.bands(h), p)))
            }
            Value::PctWithin18 => {
                floats(r.map(|r| rules::percent_within_18_weeks(&r.counters.bands(WAITING_HIST))))
            }
            Value::NewToFollowup => floats(r.map(|r| {
                rules::new_to_followup_ratio(
                    unsigned(r.counters.count(FIRST_ATTENDANCES)),
                    unsigned(r.counters.count(FOLLOWUP_ATTENDANCES)),
                )
            })),
        }
    }
}

/// The columns of `table`, in order.
fn columns(table: GoldTable) -> Vec<(&'static str, Value)> {
    let mut c = vec![("week", Value::Week), ("week_id", Value::WeekId)];
    match table {
        GoldTable::Demand => c.extend([
            ("practice", Value::Practice),
            ("provider", Value::Provider),
            ("treatment_function", Value::TreatmentFunction),
            ("priority", Value::Priority),
            ("referrals_received", Value::Count(REFERRALS_RECEIVED)),
            ("referrals_returned", Value::Count(REFERRALS_RETURNED)),
            ("referrals_from_advice", Value::Count(REFERRALS_FROM_ADVICE)),
            ("advice_requests", Value::Count(ADVICE_REQUESTS)),
            ("advice_responded", Value::Count(ADVICE_RESPONDED)),
            ("advice_converted", Value::Count(ADVICE_CONVERTED)),
            (
                "advice_response_days_total",
                Value::Count(ADVICE_RESPONSE_DAYS_TOTAL),
            ),
            ("gp_appointments", Value::Count(GP_APPOINTMENTS)),
            (
                "gp_face_to_face",
                Value::Count(GP_MODE + mode_index(AppointmentMode::FaceToFace)),
            ),
            (
                "gp_telephone",
                Value::Count(GP_MODE + mode_index(AppointmentMode::Telephone)),
            ),
            (
                "gp_video_online",
                Value::Count(GP_MODE + mode_index(AppointmentMode::VideoOnline)),
            ),
            (
                "gp_home_visit",
                Value::Count(GP_MODE + mode_index(AppointmentMode::HomeVisit)),
            ),
            (
                "gp_mode_unknown",
                Value::Count(GP_MODE + mode_index(AppointmentMode::Unknown)),
            ),
            ("gp_by_gp", Value::Count(GP_HCP + hcp_index(HcpType::Gp))),
            (
                "gp_by_other_staff",
                Value::Count(GP_HCP + hcp_index(HcpType::OtherPracticeStaff)),
            ),
            (
                "gp_hcp_unknown",
                Value::Count(GP_HCP + hcp_index(HcpType::Unknown)),
            ),
        ]),
        GoldTable::Capacity => c.extend([
            ("setting", Value::Setting),
            ("practice", Value::Practice),
            ("provider", Value::Provider),
            ("treatment_function", Value::TreatmentFunction),
            ("contact", Value::Contact),
            ("slots_offered", Value::Count(SLOTS_OFFERED)),
            ("slots_withdrawn", Value::Count(SLOTS_WITHDRAWN)),
            ("appointments_booked", Value::Count(APPOINTMENTS_BOOKED)),
            ("attended", Value::Count(ATTENDED)),
            ("did_not_attend", Value::Count(DID_NOT_ATTEND)),
            ("cancelled_by_patient", Value::Count(CANCELLED_BY_PATIENT)),
            ("cancelled_by_provider", Value::Count(CANCELLED_BY_PROVIDER)),
            ("slots_unused", Value::SlotsUnused),
            ("dna_rate", Value::DnaRate),
        ]),
        GoldTable::Waits => {
            c.extend([
                ("scope", Value::Scope),
                ("practice", Value::Practice),
                ("provider", Value::Provider),
                ("treatment_function", Value::TreatmentFunction),
                ("waiting_list", Value::Count(WAITING_LIST)),
                ("over_18_weeks", Value::Count(OVER_18_WEEKS)),
                ("over_52_weeks", Value::Count(OVER_52_WEEKS)),
                ("median_wait_weeks", Value::Percentile(WAITING_HIST, 0.5)),
                ("p92_wait_weeks", Value::Percentile(WAITING_HIST, 0.92)),
                ("pct_within_18_weeks", Value::PctWithin18),
                ("clock_stops", Value::Count(CLOCK_STOPS)),
                (
                    "median_completed_wait_weeks",
                    Value::Percentile(COMPLETED_HIST, 0.5),
                ),
            ]);
            let bands = [
                ("gp_same_day", BookingBand::SameDay),
                ("gp_one_day", BookingBand::OneDay),
                ("gp_two_to_seven_days", BookingBand::TwoToSevenDays),
                (
                    "gp_eight_to_fourteen_days",
                    BookingBand::EightToFourteenDays,
                ),
                (
                    "gp_fifteen_to_twenty_one_days",
                    BookingBand::FifteenToTwentyOneDays,
                ),
                (
                    "gp_twenty_two_to_twenty_eight_days",
                    BookingBand::TwentyTwoToTwentyEightDays,
                ),
                (
                    "gp_more_than_twenty_eight_days",
                    BookingBand::MoreThanTwentyEightDays,
                ),
            ];
            c.extend(
                bands
                    .into_iter()
                    .map(|(name, band)| (name, Value::GpBand(band_index(band)))),
            );
        }
        GoldTable::Followups => c.extend([
            ("practice", Value::Practice),
            ("provider", Value::Provider),
            ("treatment_function", Value::TreatmentFunction),
            ("due", Value::Count(DUE)),
            ("due_pifu", Value::Count(DUE_PIFU)),
            ("overdue", Value::Count(OVERDUE)),
            ("overdue_more_than_6_weeks", Value::Count(OVERDUE_6_WEEKS)),
            ("completed", Value::Count(COMPLETED)),
            ("first_attendances", Value::Count(FIRST_ATTENDANCES)),
            ("followup_attendances", Value::Count(FOLLOWUP_ATTENDANCES)),
            ("new_to_followup_ratio", Value::NewToFollowup),
        ]),
    }
    c
}

/// The Arrow schema of `table` (columns documented on [`GoldTable`]).
pub fn schema(table: GoldTable) -> SchemaRef {
    let fields: Vec<Field> = columns(table)
        .into_iter()
        .map(|(name, value)| {
            let (t, nullable) = value.data_type();
            Field::new(name, t, nullable)
        })
        .collect();
    Arc::new(Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fold::testing::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, Int64Type};
    use pathflow_schemas::codes::{ClockStopReason, FollowupCancelReason};
    use pathflow_schemas::event::*;
    use pathflow_schemas::{Event, Payload};
    use proptest::prelude::*;

    proptest! {
        /// A row's sums in one vector answer as separate counters and
        /// histograms would, whatever the order of the additions.
        #[test]
        fn a_rows_sums_in_one_vector_answer_as_separate_vectors_would(
            ops in prop::collection::vec((0usize..4, 0u32..12, -3i64..4), 0..200)
        ) {
            let width = GoldTable::Waits.width();
            let mut row = Counters::new(GoldTable::Waits);
            let mut counts = vec![0i64; width];
            let mut hists: [Vec<i64>; 2] = [Vec::new(), Vec::new()];
            for (kind, at, value) in ops {
                match kind {
                    0 | 1 => {
                        let h = kind;
                        row.add(Measure::Band(h, at), value);
                        let hist = &mut hists[h];
                        if hist.len() <= at as usize {
                            hist.resize(at as usize + 1, 0);
                        }
                        hist[at as usize] += value;
                        while hist.last() == Some(&0) {
                            hist.pop();
                        }
                    }
                    _ => {
                        let i = at as usize % (width + 1);
                        row.add(Measure::Count(i), value);
                        if let Some(c) = counts.get_mut(i) {
                            *c += value;
                        }
                    }
                }
                for (i, c) in counts.iter().enumerate() {
                    prop_assert_eq!(row.count(i), *c);
                }
                for (h, hist) in hists.iter().enumerate() {
                    let expected: Vec<u64> = hist.iter().map(|&n| u64::try_from(n).unwrap_or(0)).collect();
                    prop_assert_eq!(row.bands(h), expected);
                }
                let zero = counts.iter().all(|&c| c == 0) && hists.iter().all(Vec::is_empty);
                prop_assert_eq!(row.is_zero(), zero);
            }
        }
    }

    /// The gold rows of a log's events, as of `as_of`.
    trait GoldOf {
        fn gold(&self, as_of: NaiveDate) -> Gold;
    }

    impl GoldOf for Log {
        fn gold(&self, as_of: NaiveDate) -> Gold {
            Gold::rebuild(&self.fold(), Some(as_of))
        }
    }

    // ---- reading rows -------------------------------------------------------

    /// The ISO week of day `n`, as in `week_id`.
    fn wk(n: i64) -> String {
        Week::of(date(n)).to_string()
    }

    /// Every row of a table.
    struct Rows(RecordBatch);

    impl Rows {
        fn of(gold: &Gold, table: GoldTable) -> Self {
            Rows(gold.batch(table, &gold.weeks(table)).unwrap())
        }

        fn text(&self, col: &str, i: usize) -> Option<&str> {
            let c = self.0.column_by_name(col).unwrap().as_string::<i32>();
            c.is_valid(i).then(|| c.value(i))
        }

        fn int(&self, col: &str, i: usize) -> Option<i64> {
            let c = self
                .0
                .column_by_name(col)
                .unwrap_or_else(|| panic!("no column {col}"))
                .as_primitive::<Int64Type>();
            c.is_valid(i).then(|| c.value(i))
        }

        fn float(&self, col: &str, i: usize) -> Option<f64> {
            let c = self
                .0
                .column_by_name(col)
                .unwrap()
                .as_primitive::<Float64Type>();
            c.is_valid(i).then(|| c.value(i))
        }

        /// The rows where each named text column has the given value.
        fn find(&self, conds: &[(&str, Option<&str>)]) -> Vec<usize> {
            (0..self.0.num_rows())
                .filter(|&i| conds.iter().all(|(c, v)| self.text(c, i) == *v))
                .collect()
        }

        /// The one row matching `conds`.
        fn row(&self, conds: &[(&str, Option<&str>)]) -> usize {
            let found = self.find(conds);
            assert_eq!(found.len(), 1, "rows matching {conds:?}");
            found[0]
        }

        /// The `scope` = `all` row of waits in week `week`.
        fn all(&self, week: &str) -> usize {
            self.row(&[("week_id", Some(week)), ("scope", Some("all"))])
        }
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    // ---- waits --------------------------------------------------------------

    /// p1 starts day 0 (Monday of 2025-W19), p2 day 3 and stops day 40
    /// (2025-W24), p3 day 9; days 7k to 7k+6 are week W19+k.
    fn three_pathways() -> Log {
        let mut log = Log::default();
        let (p1, p2, p3) = (id(1, 1), id(1, 2), id(1, 3));
        log.pathway(&p1, 1, 0, None);
        log.pathway(&p2, 2, 3, None);
        log.pathway(&p3, 3, 9, None);
        log.at(
            day(40),
            stopped(&p2, ClockStopReason::FirstDefinitiveTreatment),
        );
        log
    }

    #[test]
    fn waiting_list_and_percentiles_at_each_week_end() {
        let log = three_pathways();
        let gold = log.gold(date(41));
        let w = Rows::of(&gold, GoldTable::Waits);

        // W19 ends day 6: p1 6 days, p2 3 days: bands [2]. Median P = 1:
        // 0 + 1/2 = 0.5; 92nd P = 1.84: 0 + 1.84/2 = 0.92.
        let r = w.all(&wk(0));
        assert_eq!(w.int("waiting_list", r), Some(2));
        assert!(close(w.float("median_wait_weeks", r), 0.5));
        assert!(close(w.float("p92_wait_weeks", r), 0.92));
        assert!(close(w.float("pct_within_18_weeks", r), 100.0));
        assert_eq!(w.int("clock_stops", r), Some(0));
        assert_eq!(w.float("median_completed_wait_weeks", r), None);

        // W20 ends day 13: p1 13 d (1 wk), p2 10 d (1 wk), p3 4 d (0 wk):
        // bands [1, 2]. Median P = 1.5: 1 + 0.5/2 = 1.25; 92nd P = 2.76: 1 + 1.76/2 = 1.88.
        let r = w.all(&wk(7));
        assert_eq!(w.int("waiting_list", r), Some(3));
        assert!(close(w.float("median_wait_weeks", r), 1.25));
        assert!(close(w.float("p92_wait_weeks", r), 1.88));

        // W23 ends day 34: p2 (stops day 40) is still waiting.
        assert_eq!(w.int("waiting_list", w.all(&wk(28))), Some(3));

        // W24 ends day 41: p2 stopped on day 40. p1 41 d (5 wk), p3 32 d
        // (4 wk): bands [0,0,0,0,1,1]. Median P = 1: 4 + 1/1 = 5; 92nd P = 1.84: 5 + 0.84.
        let r = w.all(&wk(35));
        assert_eq!(w.int("waiting_list", r), Some(2));
        assert!(close(w.float("median_wait_weeks", r), 5.0));
        assert!(close(w.float("p92_wait_weeks", r), 5.84));
        // p2's clock stop: 37 days = 5 completed weeks; median of [.., 1 at 5] = 5.5.
        assert_eq!(w.int("clock_stops", r), Some(1));
        assert!(close(w.float("median_completed_wait_weeks", r), 5.5));

        // Each pathway is in every scope; the narrow scopes carry their keys.
        assert_eq!(w.find(&[("week_id", Some(&wk(35)))]).len(), 5);
        let r = w.row(&[
            ("week_id", Some(&wk(35))),
            ("scope", Some("provider_specialty")),
        ]);
        assert_eq!(w.text("practice", r), None);
        assert_eq!(w.text("provider", r), Some("RX1"));
        assert_eq!(w.text("treatment_function", r), Some("110"));
        assert_eq!(w.int("waiting_list", r), Some(2));
        let r = w.row(&[("week_id", Some(&wk(35))), ("scope", Some("practice"))]);
        assert_eq!(w.text("practice", r), Some("Y01234"));
        assert_eq!(w.text("treatment_function", r), None);
        // GP bands exist only in the practice and all scopes.
        assert_eq!(w.int("gp_same_day", r), Some(0));
        let r = w.row(&[("week_id", Some(&wk(35))), ("scope", Some("specialty"))]);
        assert_eq!(w.int("gp_same_day", r), None);

        // Nothing after the as_of week.
        assert_eq!(
            gold.weeks(GoldTable::Waits).last(),
            Some(&Week::of(date(41)))
        );

        // The state table's definition, week by week.
        let fold = log.fold();
        for n in 0..6 {
            let week = Week::of(date(7 * n));
            let waiting = fold
                .referrals()
                .iter()
                .filter(|r| r.waiting_at(rules::week_end(week)))
                .count() as i64;
            assert_eq!(
                w.int("waiting_list", w.all(&week.to_string())),
                Some(waiting)
            );
        }
    }

    #[test]
    fn waits_over_18_and_52_weeks_count_completed_weeks() {
        let mut log = Log::default();
        // At the W19 week end (day 6): 126 days = 18 weeks, 125 days = 17
        // weeks, 364 days = 52 weeks.
        log.pathway(&id(1, 1), 1, -120, None);
        log.pathway(&id(1, 2), 2, -119, None);
        log.pathway(&id(1, 3), 3, -358, None);
        let gold = log.gold(date(6));
        let w = Rows::of(&gold, GoldTable::Waits);
        let r = w.all(&wk(0));
        assert_eq!(w.int("waiting_list", r), Some(3));
        assert_eq!(w.int("over_18_weeks", r), Some(2));
        assert_eq!(w.int("over_52_weeks", r), Some(1));
        assert!(close(w.float("pct_within_18_weeks", r), 100.0 / 3.0));
    }

    #[test]
    fn a_clock_stop_removes_the_pathway_from_later_weeks_only() {
        let mut log = three_pathways();
        let stop = log.events.pop().unwrap();
        let mut fold = log.fold();
        let mut gold = Gold::rebuild(&fold, Some(date(41)));
        let before = Rows::of(&gold, GoldTable::Waits);
        assert_eq!(before.int("waiting_list", before.all(&wk(35))), Some(3));

        let touched = fold.apply(&stop);
        let changed = gold.update(&fold, &touched);
        // Stopped on day 40: gone from the W24 list, still on W23's; the
        // stop itself counts in W24.
        assert_eq!(
            changed.weeks(GoldTable::Waits),
            &BTreeSet::from([Week::of(date(40))])
        );
        assert!(changed.weeks(GoldTable::Demand).is_empty());
        let after = Rows::of(&gold, GoldTable::Waits);
        assert_eq!(after.int("waiting_list", after.all(&wk(35))), Some(2));
        assert_eq!(after.int("clock_stops", after.all(&wk(35))), Some(1));
        assert_eq!(after.int("waiting_list", after.all(&wk(28))), Some(3));
        assert_eq!(gold, Gold::rebuild(&fold, Some(date(41))));
    }

    #[test]
    fn as_of_truncates_snapshots_and_advancing_it_adds_the_weeks_between() {
        let log = three_pathways();
        let fold = log.fold();
        let mut gold = Gold::rebuild(&fold, Some(date(20)));
        // Snapshots through W21 (days 14 to 20); the W24 clock stop is a flow.
        let weeks = [0, 7, 14, 35].map(|n| Week::of(date(n)));
        assert_eq!(gold.weeks(GoldTable::Waits), BTreeSet::from(weeks));
        let w = Rows::of(&gold, GoldTable::Waits);
        assert_eq!(w.int("waiting_list", w.all(&wk(35))), Some(0));
        assert_eq!(w.int("clock_stops", w.all(&wk(35))), Some(1));

        let changed = gold.set_as_of(date(41));
        let added = [21, 28, 35].map(|n| Week::of(date(n)));
        assert_eq!(changed.weeks(GoldTable::Waits), &BTreeSet::from(added));
        assert_eq!(gold.as_of(), Some(Week::of(date(41))));
        assert_eq!(gold, Gold::rebuild(&fold, Some(date(41))));

        // Backwards, or within the same week: nothing changes.
        assert!(gold.set_as_of(date(30)).is_empty());
        assert!(gold.set_as_of(date(36)).is_empty());
        assert_eq!(gold.as_of(), Some(Week::of(date(41))));
        // No as_of, no snapshots.
        let none = Gold::rebuild(&fold, None);
        assert_eq!(
            none.weeks(GoldTable::Waits),
            BTreeSet::from([Week::of(date(35))])
        );
    }

    // ---- capacity and demand ------------------------------------------------

    #[test]
    fn capacity_counts_slots_and_appointments_and_the_dna_rate() {
        let mut log = Log::default();
        let p = id(1, 1);
        let first = SlotKind::Outpatient {
            contact: ContactType::First,
        };
        for k in 0..6 {
            log.at(time(-10, 9), slot(&id(7, k), time(2, 9 + k), first.clone()));
        }
        log.at(time(-5, 9), withdrawn(&id(7, 5)));
        let statuses = [
            AppointmentStatus::Attended,
            AppointmentStatus::Attended,
            AppointmentStatus::Attended,
            AppointmentStatus::DidNotAttend,
            AppointmentStatus::CancelledByPatient,
        ];
        for (k, status) in (0u32..).zip(statuses) {
            let a = id(2, k);
            log.at(
                time(-3, 9),
                op_booked(&a, &p, time(2, 9 + k), ContactType::First),
            );
            log.at(time(2, 9 + k), outcome(&a, status).unwrap());
        }
        let gold = log.gold(date(6));
        let c = Rows::of(&gold, GoldTable::Capacity);
        let r = c.row(&[
            ("week_id", Some(&wk(0))),
            ("setting", Some("outpatient")),
            ("contact", Some("first")),
        ]);
        assert_eq!(c.text("provider", r), Some("RX1"));
        assert_eq!(c.int("slots_offered", r), Some(5));
        assert_eq!(c.int("slots_withdrawn", r), Some(1));
        assert_eq!(c.int("appointments_booked", r), Some(4));
        assert_eq!(c.int("attended", r), Some(3));
        assert_eq!(c.int("did_not_attend", r), Some(1));
        assert_eq!(c.int("cancelled_by_patient", r), Some(1));
        assert_eq!(c.int("cancelled_by_provider", r), Some(0));
        // 5 offered − 4 booked; DNA rate 1 / (3 + 1).
        assert_eq!(c.int("slots_unused", r), Some(1));
        assert!(close(c.float("dna_rate", r), 0.25));
        assert_eq!(c.0.num_rows(), 1);
    }

    #[test]
    fn gp_appointments_count_by_mode_hcp_type_and_booking_band() {
        let mut log = Log::default();
        let (a1, a2, a3) = (id(6, 1), id(6, 2), id(6, 3));
        // Booked the same morning, face to face with a GP.
        log.at(
            time(2, 8),
            gp_booked(&a1, time(2, 11), AppointmentMode::FaceToFace, HcpType::Gp),
        );
        log.at(
            time(2, 11),
            outcome(&a1, AppointmentStatus::Attended).unwrap(),
        );
        // Booked 3 days ahead, by telephone with other staff, not yet held.
        log.at(
            time(0, 8),
            gp_booked(
                &a2,
                time(3, 11),
                AppointmentMode::Telephone,
                HcpType::OtherPracticeStaff,
            ),
        );
        // Cancelled: in no count but its own.
        log.at(
            time(0, 8),
            gp_booked(&a3, time(4, 11), AppointmentMode::VideoOnline, HcpType::Gp),
        );
        log.at(
            time(1, 8),
            outcome(&a3, AppointmentStatus::CancelledByProvider).unwrap(),
        );
        log.at(time(-7, 8), slot(&id(7, 1), time(2, 11), gp_slot_kind()));
        let gold = log.gold(date(6));

        let d = Rows::of(&gold, GoldTable::Demand);
        let r = d.row(&[("week_id", Some(&wk(0)))]);
        assert_eq!(d.text("practice", r), Some("Y01234"));
        assert_eq!(d.text("provider", r), None);
        assert_eq!(d.text("priority", r), None);
        assert_eq!(d.int("gp_appointments", r), Some(2));
        assert_eq!(d.int("gp_face_to_face", r), Some(1));
        assert_eq!(d.int("gp_telephone", r), Some(1));
        assert_eq!(d.int("gp_video_online", r), Some(0));
        assert_eq!(d.int("gp_by_gp", r), Some(1));
        assert_eq!(d.int("gp_by_other_staff", r), Some(1));
        assert_eq!(d.int("referrals_received", r), Some(0));

        let w = Rows::of(&gold, GoldTable::Waits);
        for scope in ["practice", "all"] {
            let r = w.row(&[("week_id", Some(&wk(0))), ("scope", Some(scope))]);
            assert_eq!(w.int("gp_same_day", r), Some(1));
            assert_eq!(w.int("gp_two_to_seven_days", r), Some(1));
            assert_eq!(w.int("gp_one_day", r), Some(0));
            assert_eq!(w.int("waiting_list", r), Some(0));
            assert_eq!(w.float("median_wait_weeks", r), None);
        }
        assert_eq!(w.0.num_rows(), 2);

        let c = Rows::of(&gold, GoldTable::Capacity);
        let r = c.row(&[("week_id", Some(&wk(0))), ("setting", Some("gp"))]);
        assert_eq!(c.text("contact", r), None);
        assert_eq!(c.int("slots_offered", r), Some(1));
        assert_eq!(c.int("appointments_booked", r), Some(2));
        assert_eq!(c.int("cancelled_by_provider", r), Some(1));
        // One attended, none missed.
        assert!(close(c.float("dna_rate", r), 0.0));
    }

    #[test]
    fn advice_and_referrals_count_requests_responses_and_conversions() {
        let mut log = Log::default();
        let (a1, a2, a3) = (id(5, 1), id(5, 2), id(5, 3));
        let (p1, p2, p3) = (id(1, 1), id(1, 2), id(1, 3));
        for (k, a) in (0..).zip([&a1, &a2, &a3]) {
            log.at(time(k, 9), advice_requested(a));
        }
        // Answered after 2, 3 (W19) and 7 UK calendar days (W20).
        log.at(time(2, 15), advice_responded(&a1));
        log.at(time(4, 15), advice_responded(&a2));
        log.at(time(9, 15), advice_responded(&a3));
        log.at(day(5), advice_converted(&a1, &p1));
        log.at(day(10), advice_converted(&a3, &p3));
        log.pathway(&p1, 1, 5, Some(a1.clone()));
        log.pathway(&p2, 2, 1, None);
        log.at(day(3), triaged(&p2, TriageOutcome::Rejected));
        let gold = log.gold(date(13));
        let d = Rows::of(&gold, GoldTable::Demand);

        let r = d.row(&[("week_id", Some(&wk(0))), ("priority", None)]);
        assert_eq!(d.text("provider", r), Some("RX1"));
        assert_eq!(d.int("advice_requests", r), Some(3));
        assert_eq!(d.int("advice_responded", r), Some(2));
        assert_eq!(d.int("advice_converted", r), Some(1));
        assert_eq!(d.int("advice_response_days_total", r), Some(5));
        let r = d.row(&[("week_id", Some(&wk(7))), ("priority", None)]);
        assert_eq!(d.int("advice_requests", r), Some(0));
        assert_eq!(d.int("advice_responded", r), Some(1));
        assert_eq!(d.int("advice_converted", r), Some(1));
        assert_eq!(d.int("advice_response_days_total", r), Some(7));

        let r = d.row(&[("week_id", Some(&wk(0))), ("priority", Some("routine"))]);
        assert_eq!(d.int("referrals_received", r), Some(2));
        assert_eq!(d.int("referrals_from_advice", r), Some(1));
        assert_eq!(d.int("referrals_returned", r), Some(1));
        assert_eq!(d.int("advice_requests", r), Some(0));
    }

    // ---- follow-ups ---------------------------------------------------------

    #[test]
    fn new_to_followup_ratio_counts_attended_outpatient_contacts() {
        let mut log = Log::default();
        let p = id(1, 1);
        let contacts = [
            (ContactType::First, AppointmentStatus::Attended),
            (ContactType::First, AppointmentStatus::Attended),
            (ContactType::FollowUp, AppointmentStatus::Attended),
            (ContactType::FollowUp, AppointmentStatus::Attended),
            (ContactType::FollowUp, AppointmentStatus::Attended),
            (ContactType::FollowUp, AppointmentStatus::DidNotAttend),
        ];
        for (k, (contact, status)) in (0u32..).zip(contacts) {
            let a = id(2, k);
            log.at(time(-20, 9), op_booked(&a, &p, time(3, 9 + k), contact));
            log.at(time(3, 9 + k), outcome(&a, status).unwrap());
        }
        let gold = log.gold(date(6));
        let f = Rows::of(&gold, GoldTable::Followups);
        let r = f.row(&[("week_id", Some(&wk(0)))]);
        assert_eq!(f.int("first_attendances", r), Some(2));
        assert_eq!(f.int("followup_attendances", r), Some(3));
        // 3 follow-ups per 2 firsts.
        assert!(close(f.float("new_to_followup_ratio", r), 1.5));
        assert_eq!(f.int("due", r), Some(0));
    }

    #[test]
    fn overdue_followups_at_week_ends_and_more_than_6_weeks() {
        let mut log = Log::default();
        let p = id(1, 1);
        let (f1, f2, f3, f4) = (id(4, 1), id(4, 2), id(4, 3), id(4, 4));
        log.at(day(-60), required(&f1, &p, 3, false));
        log.at(day(-60), required(&f2, &p, 3, false));
        log.at(day(-60), required(&f3, &p, 3, true));
        log.at(day(-60), required(&f4, &p, -40, false));
        log.at(day(10), completed(&f2, &p));
        let gold = log.gold(date(13));
        let f = Rows::of(&gold, GoldTable::Followups);

        // W19 ends day 6: f1 and f2 3 days overdue, f4 46 days (> 42); PIFU f3 never.
        let r = f.row(&[("week_id", Some(&wk(0)))]);
        assert_eq!(f.int("due", r), Some(3));
        assert_eq!(f.int("due_pifu", r), Some(1));
        assert_eq!(f.int("overdue", r), Some(3));
        assert_eq!(f.int("overdue_more_than_6_weeks", r), Some(1));
        // W20 ends day 13: f2 completed on day 10; f1 10 days, f4 53 days.
        let r = f.row(&[("week_id", Some(&wk(7)))]);
        assert_eq!(f.int("overdue", r), Some(2));
        assert_eq!(f.int("overdue_more_than_6_weeks", r), Some(1));
        assert_eq!(f.int("completed", r), Some(1));
        // f4 was due on day −40 (W13): overdue by 4 days at that week's end;
        // at the W18 end (day −1) 39 days, not yet more than 6 weeks.
        let r = f.row(&[("week_id", Some(&wk(-40)))]);
        assert_eq!(f.int("due", r), Some(1));
        assert_eq!(f.int("overdue", r), Some(1));
        let r = f.row(&[("week_id", Some(&wk(-1)))]);
        assert_eq!(f.int("overdue", r), Some(1));
        assert_eq!(f.int("overdue_more_than_6_weeks", r), Some(0));
        // Nothing after the as_of week.
        assert_eq!(
            gold.weeks(GoldTable::Followups).last(),
            Some(&Week::of(date(13)))
        );
        // The state's definition at each week end.
        let fold = log.fold();
        let ends = [-40, -1, 0, 7].map(|n| Week::of(date(n)));
        for week in ends {
            let overdue = fold
                .followups()
                .iter()
                .filter(|s| s.overdue_days_at(rules::week_end(week)).is_some())
                .count() as i64;
            let r = f.row(&[("week_id", Some(&week.to_string()))]);
            assert_eq!(f.int("overdue", r), Some(overdue));
        }
    }

    // ---- rules of these tables ---------------------------------------------

    #[test]
    fn triage_returns_only_returned_and_rejected_referrals() {
        assert!(returns_referral(TriageOutcome::ReturnedWithAdvice));
        assert!(returns_referral(TriageOutcome::Rejected));
        assert!(!returns_referral(TriageOutcome::Accepted));
        assert!(!returns_referral(TriageOutcome::Redirected));
    }

    #[test]
    fn cancelled_appointments_use_no_capacity() {
        assert!(uses_capacity(AppointmentStatus::Booked));
        assert!(uses_capacity(AppointmentStatus::DidNotAttend));
        assert!(!uses_capacity(AppointmentStatus::CancelledByPatient));
        assert!(!uses_capacity(AppointmentStatus::CancelledByProvider));
    }

    #[test]
    fn unused_slots_are_never_negative() {
        assert_eq!(slots_unused(10, 7), 3);
        assert_eq!(slots_unused(3, 5), 0);
    }

    #[test]
    fn gp_bands_only_in_the_practice_and_all_scopes() {
        let with: Vec<Scope> = Scope::ALL
            .into_iter()
            .filter(|s| scope_has_gp_bands(*s))
            .collect();
        assert_eq!(with, vec![Scope::Practice, Scope::All]);
    }

    #[test]
    fn snapshot_weeks_are_the_week_ends_while_incomplete() {
        // Against the RTT rule at every week end, for starts and ends over
        // five weeks (every weekday, same-day ends, ends on Sundays).
        for s in -3..32 {
            for e in (s - 2..s + 30).map(Some).chain([None]) {
                let (start, end) = (date(s), e.map(date));
                let got = snapshot_weeks(start, end);
                for n in -2..8 {
                    let week = Week::of(date(7 * n));
                    let counted = got.is_some_and(|(first, last)| {
                        week >= first && last.is_none_or(|l| week <= l)
                    });
                    assert_eq!(
                        counted,
                        rules::is_incomplete_at_week_end(start, end, week),
                        "start {s} end {e:?} {week}"
                    );
                }
            }
        }
    }

    #[test]
    fn schemas_start_with_the_week_and_hold_only_delta_types() {
        let names: Vec<&str> = GoldTable::ALL.iter().map(|t| t.name()).collect();
        assert_eq!(
            names,
            [
                "demand_weekly",
                "capacity_weekly",
                "waits_weekly",
                "followups_weekly"
            ]
        );
        for table in GoldTable::ALL {
            let s = schema(table);
            assert_eq!(s.field(0).name(), "week");
            assert_eq!(s.field(0).data_type(), &DataType::Date32);
            assert!(!s.field(0).is_nullable());
            assert_eq!(s.field(1).name(), "week_id");
            for f in s.fields() {
                assert!(
                    matches!(
                        f.data_type(),
                        DataType::Utf8 | DataType::Date32 | DataType::Int64 | DataType::Float64
                    ),
                    "{}",
                    f.name()
                );
            }
            let empty = Gold::new().batch(table, &BTreeSet::new()).unwrap();
            assert_eq!(empty.num_rows(), 0);
            assert_eq!(empty.schema(), s);
        }
    }

    // ---- order, batching and as_of independence -----------------------------

    /// One entity and its events.
    #[derive(Debug, Clone)]
    enum Spec {
        Pathway {
            start: i64,
            org: u8,
            stop: Option<(i64, bool)>,
            discharge: Option<i64>,
            triage: Option<usize>,
            advice: bool,
            restart: Option<i64>,
        },
        Appointment {
            gp: bool,
            booked: i64,
            lead: i64,
            status: usize,
            moved: Option<i64>,
            first: bool,
            org: u8,
        },
        Slot {
            gp: bool,
            start: i64,
            withdrawn: bool,
            org: u8,
        },
        Followup {
            due: i64,
            pifu: bool,
            settle: Option<(i64, bool)>,
            org: u8,
        },
    }

    fn spec() -> impl Strategy<Value = Spec> {
        prop_oneof![
            (
                -60i64..60,
                0u8..4,
                prop::option::of((0i64..150, any::<bool>())),
                prop::option::of(0i64..200),
                prop::option::of(0usize..4),
                any::<bool>(),
                prop::option::of(1i64..60),
            )
                .prop_map(|(start, org, stop, discharge, triage, advice, restart)| {
                    Spec::Pathway {
                        start,
                        org,
                        stop,
                        discharge,
                        triage,
                        advice,
                        restart,
                    }
                }),
            (
                any::<bool>(),
                -30i64..100,
                -2i64..40,
                0usize..5,
                prop::option::of(-5i64..10),
                any::<bool>(),
                0u8..4,
            )
                .prop_map(|(gp, booked, lead, status, moved, first, org)| {
                    Spec::Appointment {
                        gp,
                        booked,
                        lead,
                        status,
                        moved,
                        first,
                        org,
                    }
                }),
            (any::<bool>(), -30i64..100, any::<bool>(), 0u8..4).prop_map(
                |(gp, start, withdrawn, org)| Spec::Slot {
                    gp,
                    start,
                    withdrawn,
                    org,
                }
            ),
            (
                -60i64..100,
                any::<bool>(),
                prop::option::of((0i64..100, any::<bool>())),
                0u8..4,
            )
                .prop_map(|(due, pifu, settle, org)| Spec::Followup {
                    due,
                    pifu,
                    settle,
                    org,
                }),
        ]
    }

    /// Moves an event to another practice and/or specialty.
    fn reorg(e: &mut Event, org: u8) {
        if org & 1 == 1 {
            e.envelope.practice = Some(ods("Y05678"));
        }
        if org & 2 == 2 && e.envelope.treatment_function.is_some() {
            e.envelope.treatment_function = Some(TreatmentFunction::Rheumatology);
        }
    }

    /// Every event of entity `i`.
    fn tell(log: &mut Log, i: u32, spec: &Spec) {
        let statuses = [
            AppointmentStatus::Booked,
            AppointmentStatus::Attended,
            AppointmentStatus::DidNotAttend,
            AppointmentStatus::CancelledByPatient,
            AppointmentStatus::CancelledByProvider,
        ];
        match *spec {
            Spec::Pathway {
                start,
                org,
                stop,
                discharge,
                triage,
                advice,
                restart,
            } => {
                let p = id(1, i);
                let adv = advice.then(|| id(5, i));
                let at = |log: &mut Log, t, payload| reorg(log.at(t, payload), org);
                if let Some(a) = &adv {
                    at(log, time(start - 5, 10), advice_requested(a));
                    at(log, time(start - 3, 16), advice_responded(a));
                    at(log, day(start), advice_converted(a, &p));
                }
                at(log, day(start), created(&p, i, adv.clone()));
                at(log, day(start), started(&p));
                if let Some(k) = triage {
                    let outcomes = [
                        TriageOutcome::Accepted,
                        TriageOutcome::ReturnedWithAdvice,
                        TriageOutcome::Rejected,
                        TriageOutcome::Redirected,
                    ];
                    at(log, day(start + 2), triaged(&p, outcomes[k]));
                }
                if let Some(r) = restart {
                    at(
                        log,
                        day(start + r),
                        stopped(&p, ClockStopReason::DidNotAttendFirst),
                    );
                    at(log, day(start + r + 3), started(&p));
                }
                if let Some((off, nullified)) = stop {
                    let reason = if nullified {
                        ClockStopReason::DidNotAttendFirst
                    } else {
                        ClockStopReason::FirstDefinitiveTreatment
                    };
                    at(log, day(start + off), stopped(&p, reason));
                }
                if let Some(off) = discharge {
                    at(log, day(start + off), discharged(&p));
                }
            }
            Spec::Appointment {
                gp,
                booked,
                lead,
                status,
                moved,
                first,
                org,
            } => {
                let a = id(2, i);
                let start = time(booked + lead, 10);
                let booking = if gp {
                    let modes = AppointmentMode::ALL;
                    let hcps = HcpType::ALL;
                    let n = i as usize;
                    gp_booked(&a, start, modes[n % modes.len()], hcps[n % hcps.len()])
                } else {
                    let contact = if first {
                        ContactType::First
                    } else {
                        ContactType::FollowUp
                    };
                    op_booked(&a, &id(1, i), start, contact)
                };
                reorg(log.at(time(booked, 9), booking), org);
                let mut start = start;
                if let Some(m) = moved {
                    start = time(booked + lead + m, 11);
                    let moved = Payload::AppointmentRescheduled(AppointmentRescheduled {
                        appointment_id: a.clone(),
                        start,
                        slot_id: None,
                    });
                    reorg(log.at(time(booked + 1, 9), moved), org);
                }
                if let Some(payload) = outcome(&a, statuses[status]) {
                    reorg(log.at(start, payload), org);
                }
            }
            Spec::Slot {
                gp,
                start,
                withdrawn: w,
                org,
            } => {
                let s = id(7, i);
                let kind = if gp {
                    gp_slot_kind()
                } else {
                    SlotKind::Outpatient {
                        contact: if i.is_multiple_of(2) {
                            ContactType::First
                        } else {
                            ContactType::FollowUp
                        },
                    }
                };
                reorg(log.at(time(start, 8), slot(&s, time(start, 9), kind)), org);
                if w {
                    reorg(log.at(time(start - 1, 8), withdrawn(&s)), org);
                }
            }
            Spec::Followup {
                due,
                pifu,
                settle,
                org,
            } => {
                let (f, p) = (id(4, i), id(1, i));
                reorg(log.at(day(due - 30), required(&f, &p, due, pifu)), org);
                if let Some((off, done)) = settle {
                    let payload = if done {
                        completed(&f, &p)
                    } else {
                        Payload::FollowupCancelled(FollowupCancelled {
                            followup_id: f.clone(),
                            pathway_id: p.clone(),
                            reason: FollowupCancelReason::NoLongerRequired,
                        })
                    };
                    reorg(log.at(day(due - 10 + off), payload), org);
                }
            }
        }
    }

    /// Events in delivery order, batch sizes, as_of steps back from the
    /// final as_of, and the final as_of (days).
    type Run = (Vec<Event>, Vec<usize>, Vec<(bool, i64)>, i64);

    fn runs() -> impl Strategy<Value = Run> {
        (prop::collection::vec(spec(), 1..12), -20i64..220).prop_flat_map(|(specs, final_day)| {
            let mut log = Log::default();
            for (i, s) in (1u32..).zip(&specs) {
                tell(&mut log, i, s);
            }
            (
                Just(log.events).prop_shuffle(),
                prop::collection::vec(1usize..6, 1..6),
                prop::collection::vec((any::<bool>(), 0i64..120), 1..8),
                Just(final_day),
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn any_order_batching_and_as_of_steps_give_the_rebuilt_rows(
            (events, sizes, steps, final_day) in runs()
        ) {
            let mut fold = Fold::new();
            let mut gold = Gold::new();
            let mut changed = Changed::default();
            let mut rest = &events[..];
            let mut k = 0;
            while !rest.is_empty() {
                let (batch, tail) = rest.split_at(sizes[k % sizes.len()].min(rest.len()));
                rest = tail;
                let (before, back) = steps[k % steps.len()];
                let as_of = date(final_day - back);
                if before {
                    changed.merge(gold.set_as_of(as_of));
                }
                let mut touched = Vec::new();
                for e in batch {
                    touched.extend(fold.apply(e));
                }
                changed.merge(gold.update(&fold, &touched));
                if !before {
                    changed.merge(gold.set_as_of(as_of));
                }
                k += 1;
            }
            changed.merge(gold.set_as_of(date(final_day)));

            let expected = Gold::rebuild(&fold, Some(date(final_day)));
            for table in GoldTable::ALL {
                let weeks = expected.weeks(table);
                prop_assert_eq!(&gold.weeks(table), &weeks);
                prop_assert_eq!(gold.batch(table, &weeks)?, expected.batch(table, &weeks)?);
                // Every week with rows was reported changed at some point.
                prop_assert!(weeks.is_subset(changed.weeks(table)));
            }
            prop_assert_eq!(&gold, &expected);

            // The waiting list is the state's, at every week end up to as_of.
            let w = Rows::of(&gold, GoldTable::Waits);
            let mut week = Week::of(date(-70));
            while week <= Week::of(date(final_day)) {
                let waiting = fold
                    .referrals()
                    .iter()
                    .filter(|r| r.waiting_at(rules::week_end(week)))
                    .count() as i64;
                let rows = w.find(&[("week_id", Some(&week.to_string())), ("scope", Some("all"))]);
                let got = rows.first().and_then(|&r| w.int("waiting_list", r)).unwrap_or(0);
                prop_assert_eq!(got, waiting, "{}", week);
                week = week.plus(1);
            }
        }
    }
}
