//! The hospital side: a queue model per provider and specialty, from which
//! waiting lists and waits emerge. Each week referrals and Advice & Guidance
//! requests arrive from practices; the provider triages them; accepted
//! referrals wait for a first-appointment slot (two-week waits first, then
//! urgent, then routine, mostly in referral order); first and follow-up
//! clinics have a fixed weekly capacity set against expected demand. A
//! specialty given less capacity than demand therefore shows a list that grows
//! week on week and waits that lengthen; a well-resourced one stays flat.
//!
//! Everything is written as the provider's PAS and the e-RS would extract it
//! at the end of the period (`pas/<provider>/*.csv`, `ers/advice_and_guidance.csv`):
//! one row per referral, appointment, clinic slot, follow-up and A&G request,
//! showing its state at the extract date. Nothing after that date appears.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io;

use chrono::{Duration, NaiveDate, NaiveDateTime, NaiveTime};
use pathflow_schemas::codes::{
    AdviceOutcome, AppointmentStatus, ClockStopReason, ContactType, FollowupCancelReason, Priority,
    ReferralSource, TriageOutcome,
};

use crate::config::{SimConfig, targets};
use crate::csv::{CsvFile, Faults, FileSummary};
use crate::population::Icb;
use crate::rng::Rng;

/// Weeks between booking and the clinic.
const LEAD_WEEKS: usize = 2;
/// Triage outcomes: accepted, returned with advice, rejected, redirected.
const TRIAGE: [(TriageOutcome, f64); 4] = [
    (TriageOutcome::Accepted, 0.91),
    (TriageOutcome::ReturnedWithAdvice, 0.04),
    (TriageOutcome::Rejected, 0.02),
    (TriageOutcome::Redirected, 0.03),
];
const URGENT_SHARE: f64 = 0.2;
const PATIENT_CANCEL: f64 = 0.06;
const SLOT_WITHDRAWN: f64 = 0.03;
const RESCHEDULED: f64 = 0.04;
/// Share of first-appointment DNAs rebooked (with a new clock); the rest are discharged.
const DNA_REBOOKED: f64 = 0.6;
/// Share of pathways whose clock stops at the first attendance.
const STOP_AT_FIRST: f64 = 0.45;
/// Share of PIFU follow-ups the patient asks for.
const PIFU_TRIGGERED: f64 = 0.4;
/// Share of routine first slots given out of referral order (clinical prioritisation, patient choice).
const OUT_OF_ORDER: f64 = 0.15;
/// Most follow-ups one pathway has (the count is binomial, so chains are
/// bounded and reach steady state within the run-in).
const MAX_FOLLOWUPS: u32 = 4;
/// Follow-up capacity as a multiple of expected follow-up demand.
const FOLLOWUP_CAPACITY: f64 = 1.03;

const REASONS: [&str; 10] = [
    "Persistent symptoms despite treatment in primary care",
    "Worsening pain, affecting sleep and work",
    "Abnormal result on routine bloods, please assess",
    "Patient request for specialist opinion",
    "Recurrent episodes, \"not settling\" per patient",
    "Suspected diagnosis needing specialist confirmation",
    "Failed conservative management, considering surgery",
    "New lump, patient anxious",
    "Review of long-term condition, medication not effective",
    "Unexplained weight loss; see attached history",
];

/// Expected follow-ups per first attendance, so that attended follow-ups per
/// first attendance hit the target once PIFU not taken up is allowed for.
fn mean_followups() -> f64 {
    targets::FOLLOWUPS_PER_FIRST / (1.0 - targets::PIFU_SHARE * (1.0 - PIFU_TRIGGERED))
}

struct Pathway {
    seq: u64,
    provider: usize,
    spec: usize,
    original_spec: usize,
    patient: u32,
    practice: usize,
    priority: Priority,
    received: NaiveDate,
    triage: NaiveDate,
    outcome: TriageOutcome,
    advice: Option<u64>,
    clock_start: NaiveDate,
    clock_stop: Option<(NaiveDate, ClockStopReason)>,
    first_attended: Option<NaiveDate>,
    discharged: Option<NaiveDate>,
    followups_left: u32,
    reason: &'static str,
}

struct Followup {
    seq: u64,
    pathway: u64,
    requested: NaiveDate,
    due: NaiveDate,
    pifu: bool,
    appointment: Option<u64>,
}

#[derive(Clone)]
struct Slot {
    seq: u64,
    contact: ContactType,
    start: NaiveDateTime,
    published: NaiveDate,
    withdrawn: Option<NaiveDate>,
    booked: bool,
}

struct Appointment {
    seq: u64,
    pathway: u64,
    followup: Option<u64>,
    contact: ContactType,
    slot: u64,
    withdrawn: Option<NaiveDate>,
    booked_at: NaiveDateTime,
    start: NaiveDateTime,
    original_start: Option<NaiveDateTime>,
}

/// A referral converted from A&G, created in the week it is received.
struct Converted {
    advice: u64,
    seq: u64,
    received: NaiveDate,
    practice: usize,
    provider: usize,
    spec: usize,
    patient: u32,
}

#[derive(Clone, Copy)]
struct Waiting {
    pathway: u64,
    ready: NaiveDate,
}

struct Queue {
    provider: usize,
    spec: usize,
    /// Waiting for a first appointment: two-week wait, urgent, routine.
    waiting: [VecDeque<Waiting>; 3],
    /// Follow-ups not yet booked, by due date.
    due: BinaryHeap<Reverse<(NaiveDate, u64)>>,
    first_slots: u32,
    followup_slots: u32,
}

/// Weekly waiting-list size per queue, for the run summary.
#[derive(Debug, Clone, Default)]
pub struct QueueStats {
    /// Provider code.
    pub provider: String,
    /// Treatment function code.
    pub treatment_function: &'static str,
    /// First-appointment capacity as configured (multiple of demand).
    pub capacity: f64,
    /// Patients waiting for a first appointment at each period week's end.
    pub waiting_first: Vec<usize>,
}

/// The hospital simulation and its writers.
pub struct Hospital<'a> {
    cfg: &'a SimConfig,
    icb: &'a Icb,
    rng: Rng,
    origin: NaiveDate,
    extract: NaiveDate,
    queues: Vec<Queue>,
    pathways: HashMap<u64, Pathway>,
    followups: HashMap<u64, Followup>,
    booked: Vec<Vec<Appointment>>,
    slots: Vec<Vec<(usize, Slot)>>,
    future_referrals: Vec<Vec<Converted>>,
    next_seq: u64,
    referrals: Vec<CsvFile>,
    appointments: Vec<CsvFile>,
    clinic_slots: Vec<CsvFile>,
    followup_file: Vec<CsvFile>,
    advice_file: CsvFile,
    spec_weights: Vec<f64>,
    /// Waiting-list sizes per queue.
    pub stats: Vec<QueueStats>,
}

const REFERRAL_HEADER: [&str; 22] = [
    "ubrn",
    "hospital_number",
    "nhs_number",
    "date_of_birth",
    "sex",
    "postcode",
    "practice_code",
    "provider_code",
    "treatment_function_code",
    "priority",
    "referral_source",
    "received_date",
    "triage_date",
    "triage_outcome",
    "redirected_to",
    "ag_request_id",
    "clock_start_date",
    "clock_stop_date",
    "clock_stop_reason",
    "first_attendance_date",
    "discharge_date",
    "referral_reason",
];
const APPOINTMENT_HEADER: [&str; 18] = [
    "appointment_id",
    "ubrn",
    "hospital_number",
    "nhs_number",
    "date_of_birth",
    "sex",
    "postcode",
    "provider_code",
    "treatment_function_code",
    "clinic_code",
    "slot_id",
    "contact_type",
    "followup_id",
    "booked_at",
    "appointment_start",
    "original_start",
    "attendance_status",
    "cancelled_at",
];
const SLOT_HEADER: [&str; 11] = [
    "slot_id",
    "provider_code",
    "treatment_function_code",
    "clinic_code",
    "slot_start",
    "duration_minutes",
    "contact_type",
    "published_at",
    "status",
    "withdrawn_at",
    "withdraw_reason",
];
const FOLLOWUP_HEADER: [&str; 16] = [
    "followup_id",
    "ubrn",
    "hospital_number",
    "nhs_number",
    "date_of_birth",
    "sex",
    "postcode",
    "provider_code",
    "treatment_function_code",
    "requested_date",
    "due_date",
    "pifu",
    "status",
    "appointment_id",
    "outcome_date",
    "cancel_reason",
];
const ADVICE_HEADER: [&str; 13] = [
    "ag_request_id",
    "nhs_number",
    "date_of_birth",
    "sex",
    "postcode",
    "practice_code",
    "provider_code",
    "treatment_function_code",
    "requested_at",
    "responded_at",
    "outcome",
    "converted_ubrn",
    "clinical_question",
];

/// The clinic a slot or appointment belongs to, e.g. `R9A-110-NEW`.
fn clinic_code(provider: &str, tf: &str, contact: ContactType) -> String {
    let kind = if contact == ContactType::First {
        "NEW"
    } else {
        "FU"
    };
    format!("{provider}-{tf}-{kind}")
}

/// A 12-digit UBRN-like booking reference for sequence number `seq` (unique per run).
fn ubrn(seed: u64, seq: u64) -> String {
    const SPACE: u128 = 1_000_000_000_000;
    let n =
        (u128::from(seq) * 314_159_265_359 + u128::from(seed % 1_000_003) * 7 + 100_000_000_000)
            % SPACE;
    format!("{n:012}")
}

impl<'a> Hospital<'a> {
    /// Sets up queues (with their starting backlogs) and opens the files.
    pub fn new(cfg: &'a SimConfig, icb: &'a Icb) -> io::Result<Self> {
        let root = &cfg.out;
        let bad = cfg.bad_record_rate;
        let n_prov = icb.providers.len();
        let mut referrals = Vec::new();
        let mut appointments = Vec::new();
        let mut clinic_slots = Vec::new();
        let mut followup_file = Vec::new();
        for (i, p) in icb.providers.iter().enumerate() {
            let dir = format!("pas/{}", p.code);
            let stream = |k: u64| Rng::new(cfg.seed, 0x1000 + 16 * i as u64 + k);
            let tf_fault = |nhs, required, date, text| Faults {
                nhs_number: nhs,
                code: (8, "999"),
                required,
                date,
                text,
            };
            referrals.push(
                CsvFile::create(root, &format!("{dir}/referrals.csv"), &REFERRAL_HEADER)?
                    .with_faults(tf_fault(Some(2), 0, 11, 5), bad, stream(1)),
            );
            appointments.push(
                CsvFile::create(
                    root,
                    &format!("{dir}/outpatient_appointments.csv"),
                    &APPOINTMENT_HEADER,
                )?
                .with_faults(
                    Faults {
                        nhs_number: Some(3),
                        code: (16, "8"),
                        required: 0,
                        date: 14,
                        text: 9,
                    },
                    bad,
                    stream(2),
                ),
            );
            clinic_slots.push(
                CsvFile::create(root, &format!("{dir}/clinic_slots.csv"), &SLOT_HEADER)?
                    .with_faults(
                        Faults {
                            nhs_number: None,
                            code: (2, "999"),
                            required: 0,
                            date: 4,
                            text: 3,
                        },
                        bad,
                        stream(3),
                    ),
            );
            followup_file.push(
                CsvFile::create(root, &format!("{dir}/followups.csv"), &FOLLOWUP_HEADER)?
                    .with_faults(tf_fault(Some(3), 0, 10, 12), bad, stream(4)),
            );
        }
        let advice_file = CsvFile::create(root, "ers/advice_and_guidance.csv", &ADVICE_HEADER)?
            .with_faults(
                Faults {
                    nhs_number: Some(1),
                    code: (7, "999"),
                    required: 0,
                    date: 8,
                    text: 12,
                },
                bad,
                Rng::new(cfg.seed, 0x2000),
            );
        let origin = cfg.start - Duration::weeks(i64::from(cfg.run_in_weeks));
        let total_weeks = (cfg.run_in_weeks + cfg.weeks) as usize;
        let extract = cfg.start + Duration::weeks(i64::from(cfg.weeks)) - Duration::days(1);
        let mut h = Hospital {
            cfg,
            icb,
            rng: Rng::new(cfg.seed, 0x3000),
            origin,
            extract,
            queues: Vec::new(),
            pathways: HashMap::new(),
            followups: HashMap::new(),
            booked: (0..total_weeks + LEAD_WEEKS + 1)
                .map(|_| Vec::new())
                .collect(),
            slots: (0..total_weeks + LEAD_WEEKS + 1)
                .map(|_| Vec::new())
                .collect(),
            future_referrals: (0..total_weeks + 2).map(|_| Vec::new()).collect(),
            next_seq: 1,
            referrals,
            appointments,
            clinic_slots,
            followup_file,
            advice_file,
            spec_weights: cfg.specialties.iter().map(|s| s.share).collect(),
            stats: Vec::new(),
        };
        let share_total: f64 = h.spec_weights.iter().sum();
        let per_week = h.referrals_per_week();
        let accepted = TRIAGE[0].1 + TRIAGE[3].1;
        // Slots a first appointment uses on average, given cancellations, withdrawn clinics and rebooked DNAs.
        let first_slot_use =
            1.0 / (1.0 - PATIENT_CANCEL - SLOT_WITHDRAWN - targets::OP_DNA_RATE * DNA_REBOOKED);
        let followup_slot_use =
            1.0 / (1.0 - PATIENT_CANCEL - SLOT_WITHDRAWN - targets::OP_DNA_RATE);
        for p in 0..n_prov {
            let provider_share = h.provider_share(p);
            for (s, spec) in cfg.specialties.iter().enumerate() {
                let demand = per_week * spec.share / share_total * provider_share * accepted;
                let first_attendances =
                    demand * (1.0 - targets::OP_DNA_RATE * (1.0 - DNA_REBOOKED));
                let fu_demand = first_attendances
                    * mean_followups()
                    * (1.0 - targets::PIFU_SHARE * (1.0 - PIFU_TRIGGERED));
                h.queues.push(Queue {
                    provider: p,
                    spec: s,
                    waiting: Default::default(),
                    due: BinaryHeap::new(),
                    first_slots: (demand * first_slot_use * spec.capacity).round().max(1.0) as u32,
                    followup_slots: (fu_demand * followup_slot_use * FOLLOWUP_CAPACITY)
                        .round()
                        .max(1.0) as u32,
                });
                h.stats.push(QueueStats {
                    provider: icb.providers[p].code.clone(),
                    treatment_function: spec.tf.code(),
                    capacity: spec.capacity,
                    waiting_first: Vec::new(),
                });
                let backlog = (demand * spec.backlog_weeks).round() as u32;
                let span = (spec.backlog_weeks * 7.0).max(1.0) as i64;
                for _ in 0..backlog {
                    let received = origin - Duration::days(h.rng.range(1, span));
                    let practice = h.practice_for(p);
                    h.new_referral(received, practice, p, s, None, true)?;
                }
            }
        }
        Ok(h)
    }

    /// Referrals received per week across the ICB (direct and converted A&G).
    fn referrals_per_week(&self) -> f64 {
        f64::from(self.cfg.population) / 1000.0 * targets::CLOCK_STARTS_PER_1000_MONTH * 7.0
            / targets::DAYS_PER_MONTH
    }

    /// Share of the ICB's referrals that go to provider `p`.
    fn provider_share(&self, p: usize) -> f64 {
        let n = self.icb.providers.len() as f64;
        let pop = f64::from(self.icb.population);
        self.icb
            .practices
            .iter()
            .map(|pr| {
                f64::from(pr.list_size) / pop
                    * if pr.home_provider == p {
                        0.9 + 0.1 / n
                    } else {
                        0.1 / n
                    }
            })
            .sum()
    }

    /// A practice referring to provider `p`, in proportion to referrals it sends there.
    fn practice_for(&mut self, p: usize) -> usize {
        loop {
            let practice = self.icb.draw_practice(&mut self.rng);
            let to = self.provider_of(practice);
            if to == p {
                return practice;
            }
        }
    }

    fn provider_of(&mut self, practice: usize) -> usize {
        let n = self.icb.providers.len();
        if n == 1 || self.rng.chance(0.9) {
            self.icb.practices[practice].home_provider
        } else {
            self.rng.below(n)
        }
    }

    fn queue_index(&self, provider: usize, spec: usize) -> usize {
        provider * self.cfg.specialties.len() + spec
    }

    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn day_in_week(&mut self, monday: NaiveDate) -> NaiveDate {
        monday + Duration::days(self.rng.range(0, 4))
    }

    fn time_on(&mut self, day: NaiveDate) -> NaiveDateTime {
        day.and_time(NaiveTime::MIN) + Duration::minutes(self.rng.range(8 * 60, 18 * 60 - 1))
    }

    /// A patient of `practice` already born on `day`: the population is aged at
    /// the period start, and hospital history reaches back before it.
    fn patient_born_by(&mut self, practice: usize, day: NaiveDate) -> u32 {
        loop {
            let index = self.icb.draw_patient(practice, &mut self.rng, true);
            if self.icb.patient(index).date_of_birth <= day {
                return index;
            }
        }
    }

    /// Creates a referral; `backlog` ones are triaged and waiting already.
    fn new_referral(
        &mut self,
        received: NaiveDate,
        practice: usize,
        provider: usize,
        spec: usize,
        from: Option<&Converted>,
        backlog: bool,
    ) -> io::Result<()> {
        let seq = match from {
            Some(c) => c.seq,
            None => self.seq(),
        };
        let advice = from.map(|c| c.advice);
        let spec_cfg = &self.cfg.specialties[spec];
        let priority = if self.rng.chance(spec_cfg.two_week_wait) {
            Priority::TwoWeekWait
        } else if self.rng.chance(URGENT_SHARE) {
            Priority::Urgent
        } else {
            Priority::Routine
        };
        let outcome = if backlog || priority == Priority::TwoWeekWait {
            TriageOutcome::Accepted
        } else {
            TRIAGE[self.rng.weighted(&TRIAGE.map(|t| t.1))].0
        };
        let mut target = spec;
        if outcome == TriageOutcome::Redirected {
            while target == spec && self.cfg.specialties.len() > 1 {
                target = self.rng.weighted(&self.spec_weights);
            }
        }
        let triage = received + Duration::days(self.rng.range(1, 5));
        let patient = match from {
            Some(c) => c.patient,
            None => self.patient_born_by(practice, received),
        };
        let reason = REASONS[self.rng.below(REASONS.len())];
        let pathway = Pathway {
            seq,
            provider,
            spec: target,
            original_spec: spec,
            patient,
            practice,
            priority,
            received,
            triage,
            outcome,
            advice,
            clock_start: received,
            clock_stop: None,
            first_attended: None,
            discharged: None,
            followups_left: 0,
            reason,
        };
        let accepted = matches!(outcome, TriageOutcome::Accepted | TriageOutcome::Redirected);
        if accepted {
            let q = self.queue_index(provider, target);
            let lane = match priority {
                Priority::TwoWeekWait => 0,
                Priority::Urgent => 1,
                Priority::Routine => 2,
            };
            self.queues[q].waiting[lane].push_back(Waiting {
                pathway: seq,
                ready: triage,
            });
            self.pathways.insert(seq, pathway);
            Ok(())
        } else {
            let mut pathway = pathway;
            pathway.discharged = Some(triage);
            self.pathways.insert(seq, pathway);
            self.close_pathway(seq)
        }
    }

    /// Runs absolute week `k` (0 is the first run-in week).
    pub fn week(&mut self, k: usize) -> io::Result<()> {
        let monday = self.origin + Duration::weeks(k as i64);
        self.arrivals(k, monday)?;
        self.clinics(k)?;
        self.book(k + LEAD_WEEKS, monday)?;
        self.write_slots(k)?;
        if monday >= self.cfg.start {
            for (q, stats) in self.queues.iter().zip(self.stats.iter_mut()) {
                stats
                    .waiting_first
                    .push(q.waiting.iter().map(VecDeque::len).sum());
            }
        }
        Ok(())
    }

    fn arrivals(&mut self, k: usize, monday: NaiveDate) -> io::Result<()> {
        let per_week = self.referrals_per_week();
        let advice_per_week = per_week * targets::AG_SHARE / (1.0 - targets::AG_SHARE);
        let direct = per_week - advice_per_week * targets::AG_CONVERSION;
        for _ in 0..self.rng.poisson(advice_per_week) {
            self.advice_request(k, monday)?;
        }
        let converted = std::mem::take(&mut self.future_referrals[k]);
        for c in converted {
            self.new_referral(c.received, c.practice, c.provider, c.spec, Some(&c), false)?;
        }
        for _ in 0..self.rng.poisson(direct) {
            let practice = self.icb.draw_practice(&mut self.rng);
            let provider = self.provider_of(practice);
            let spec = self.rng.weighted(&self.spec_weights);
            let received = self.day_in_week(monday);
            self.new_referral(received, practice, provider, spec, None, false)?;
        }
        Ok(())
    }

    fn advice_request(&mut self, k: usize, monday: NaiveDate) -> io::Result<()> {
        let seq = self.seq();
        let practice = self.icb.draw_practice(&mut self.rng);
        let provider = self.provider_of(practice);
        let spec = self.rng.weighted(&self.spec_weights);
        let day = self.day_in_week(monday);
        let patient = self.patient_born_by(practice, day);
        let requested = self.time_on(day);
        let response_days = self.rng.range(1, 7);
        let responded = self.time_on(day + Duration::days(response_days));
        let convert = self.rng.chance(targets::AG_CONVERSION);
        let outcome = if convert {
            AdviceOutcome::ReferralAdvised
        } else if self.rng.chance(0.12) {
            AdviceOutcome::MoreInformationRequested
        } else {
            AdviceOutcome::AdviceGiven
        };
        let responded = (responded.date() <= self.extract).then_some(responded);
        let mut converted_ubrn = None;
        if let (true, Some(at)) = (convert, responded) {
            let received = at.date() + Duration::days(self.rng.range(0, 6));
            let week = ((received - self.origin).num_days() / 7) as usize;
            if received <= self.extract && week < self.future_referrals.len() {
                // The referral is created in its own week; its number (and UBRN) is fixed now.
                let ref_seq = self.seq();
                self.future_referrals[week.max(k)].push(Converted {
                    advice: seq,
                    seq: ref_seq,
                    received,
                    practice,
                    provider,
                    spec,
                    patient,
                });
                converted_ubrn = Some(ubrn(self.cfg.seed, ref_seq));
            }
        }
        let icb = self.icb;
        let pr = icb.patient(patient);
        let f = &mut self.advice_file;
        f.text(&ubrn(self.cfg.seed, seq))
            .patient(&pr)
            .text(&icb.practices[practice].code)
            .text(&icb.providers[provider].code)
            .text(self.cfg.specialties[spec].tf.code());
        f.datetime(requested);
        match responded {
            Some(t) => f.datetime(t).text(outcome.code()),
            None => f.opt_text(None).opt_text(None),
        };
        f.opt_text(converted_ubrn.as_deref());
        f.text("Advice requested on management; history and results attached");
        f.finish()
    }

    fn clinics(&mut self, k: usize) -> io::Result<()> {
        let mut appts = std::mem::take(&mut self.booked[k]);
        appts.sort_by_key(|a| (a.start, a.seq));
        for a in appts {
            self.resolve(a)?;
        }
        Ok(())
    }

    fn resolve(&mut self, a: Appointment) -> io::Result<()> {
        let day = a.start.date();
        let (status, cancelled_at) = if let Some(w) = a.withdrawn {
            (AppointmentStatus::CancelledByProvider, Some(w))
        } else if self.rng.chance(PATIENT_CANCEL) {
            let notice = Duration::days(self.rng.range(1, 10));
            (
                AppointmentStatus::CancelledByPatient,
                Some((day - notice).max(a.booked_at.date())),
            )
        } else if self.rng.chance(targets::OP_DNA_RATE) {
            (AppointmentStatus::DidNotAttend, None)
        } else {
            (AppointmentStatus::Attended, None)
        };
        self.write_appointment(&a, status, cancelled_at)?;
        let Some(pw) = self.pathways.get(&a.pathway) else {
            return Ok(());
        };
        let q = self.queue_index(pw.provider, pw.spec);
        let lane = match pw.priority {
            Priority::TwoWeekWait => 0,
            Priority::Urgent => 1,
            Priority::Routine => 2,
        };
        match (a.followup, status) {
            (
                None,
                AppointmentStatus::CancelledByPatient | AppointmentStatus::CancelledByProvider,
            ) => {
                let ready = cancelled_at.unwrap_or(day);
                self.queues[q].waiting[lane].push_front(Waiting {
                    pathway: a.pathway,
                    ready,
                });
            }
            (None, AppointmentStatus::DidNotAttend) => {
                if self.rng.chance(DNA_REBOOKED) {
                    // RTT rule: the clock is nullified and a new one starts when the patient rebooks.
                    let rebooked = day + Duration::days(self.rng.range(1, 7));
                    if let Some(pw) = self.pathways.get_mut(&a.pathway) {
                        pw.clock_start = rebooked;
                    }
                    self.queues[q].waiting[lane].push_back(Waiting {
                        pathway: a.pathway,
                        ready: rebooked,
                    });
                } else {
                    self.stop_clock(a.pathway, day, ClockStopReason::DidNotAttendFirst);
                    self.discharge(a.pathway, day)?;
                }
            }
            (None, _) => {
                let followups = (0..MAX_FOLLOWUPS)
                    .filter(|_| self.rng.chance(mean_followups() / f64::from(MAX_FOLLOWUPS)))
                    .count() as u32;
                let stop_now = self.rng.chance(STOP_AT_FIRST);
                if stop_now {
                    let r = self.rng.f64();
                    let reason = if r < 0.6 {
                        ClockStopReason::FirstDefinitiveTreatment
                    } else if r < 0.85 {
                        ClockStopReason::DecisionNotToTreat
                    } else {
                        ClockStopReason::ActiveMonitoringByClinician
                    };
                    self.stop_clock(a.pathway, day, reason);
                }
                if let Some(pw) = self.pathways.get_mut(&a.pathway) {
                    pw.first_attended = Some(day);
                    pw.followups_left = followups;
                }
                self.next_step(a.pathway, day)?;
            }
            (Some(fu), AppointmentStatus::Attended) => {
                if let Some(f) = self.followups.remove(&fu) {
                    self.write_followup(&f, "Completed", Some(day), None)?;
                }
                if let Some(pw) = self.pathways.get_mut(&a.pathway) {
                    pw.followups_left = pw.followups_left.saturating_sub(1);
                }
                self.next_step(a.pathway, day)?;
            }
            (Some(fu), _) => {
                // Cancelled or missed follow-ups go back on the list, a DNA two weeks on.
                let due = if status == AppointmentStatus::DidNotAttend {
                    day + Duration::weeks(2)
                } else {
                    day
                };
                if let Some(f) = self.followups.get_mut(&fu) {
                    f.appointment = None;
                    f.due = due.max(f.due);
                    let key = (f.due, fu);
                    self.queues[q].due.push(Reverse(key));
                }
            }
        }
        Ok(())
    }

    /// After an attendance: the next follow-up, or the end of the pathway.
    fn next_step(&mut self, pathway: u64, day: NaiveDate) -> io::Result<()> {
        let Some(pw) = self.pathways.get(&pathway) else {
            return Ok(());
        };
        let q = self.queue_index(pw.provider, pw.spec);
        if pw.followups_left > 0 {
            let seq = self.seq();
            let due = day + Duration::weeks(self.rng.range(4, 12));
            let pifu = self.rng.chance(targets::PIFU_SHARE);
            self.followups.insert(
                seq,
                Followup {
                    seq,
                    pathway,
                    requested: day,
                    due,
                    pifu,
                    appointment: None,
                },
            );
            self.queues[q].due.push(Reverse((due, seq)));
            return Ok(());
        }
        let clock_running = pw.clock_stop.is_none();
        let end = if clock_running {
            // Admitted treatment after a wait for theatre (drawn, not queued).
            let treated = day + Duration::weeks(self.rng.range(2, 16));
            self.stop_clock(pathway, treated, ClockStopReason::FirstDefinitiveTreatment);
            treated
        } else {
            day
        };
        self.discharge(pathway, end)
    }

    fn stop_clock(&mut self, pathway: u64, day: NaiveDate, reason: ClockStopReason) {
        if let Some(pw) = self.pathways.get_mut(&pathway)
            && day <= self.extract
            && pw.clock_stop.is_none()
        {
            pw.clock_stop = Some((day, reason));
        }
    }

    fn discharge(&mut self, pathway: u64, day: NaiveDate) -> io::Result<()> {
        // A discharge after the extract date is not yet known to the extract.
        if let Some(pw) = self.pathways.get_mut(&pathway)
            && day <= self.extract
        {
            pw.discharged = Some(day);
        }
        self.close_pathway(pathway)
    }

    fn close_pathway(&mut self, seq: u64) -> io::Result<()> {
        if let Some(pw) = self.pathways.remove(&seq) {
            self.write_referral(&pw)?;
        }
        Ok(())
    }

    /// Publishes the clinics of week `w` and books patients into them during week `monday`.
    fn book(&mut self, w: usize, monday: NaiveDate) -> io::Result<()> {
        if w >= self.slots.len() {
            return Ok(());
        }
        let clinic_monday = self.origin + Duration::weeks(w as i64);
        let booking_end = monday + Duration::days(6);
        for q in 0..self.queues.len() {
            let (firsts, fus) = (self.queues[q].first_slots, self.queues[q].followup_slots);
            let mut slots: Vec<Slot> = Vec::with_capacity((firsts + fus) as usize);
            for (contact, n, minutes) in [
                (ContactType::First, firsts, 20),
                (ContactType::FollowUp, fus, 15),
            ] {
                for i in 0..n {
                    let day = clinic_monday + Duration::days(i64::from(i % 5));
                    let start = day.and_time(NaiveTime::MIN)
                        + Duration::minutes(9 * 60 + i64::from(i / 5 * minutes) % (8 * 60));
                    let seq = self.seq();
                    // Withdrawn in the week or so before the clinic: always after this
                    // week's bookings, so a patient is never booked into a withdrawn slot.
                    let withdrawn = self
                        .rng
                        .chance(SLOT_WITHDRAWN)
                        .then(|| day - Duration::days(self.rng.range(1, 6)));
                    slots.push(Slot {
                        seq,
                        contact,
                        start,
                        published: clinic_monday - Duration::weeks(6),
                        withdrawn,
                        booked: false,
                    });
                }
            }
            let mut next_first = 0;
            let mut next_fu = firsts as usize;
            // First appointments: two-week waits, then urgent, then routine.
            'first: for lane in 0..3 {
                while next_first < firsts as usize {
                    let take = {
                        let list = &self.queues[q].waiting[lane];
                        if list.is_empty() {
                            continue 'first;
                        }
                        if lane == 2 && self.rng.chance(OUT_OF_ORDER) {
                            self.rng.below(list.len())
                        } else {
                            0
                        }
                    };
                    let entry = self.queues[q].waiting[lane][take];
                    if entry.ready > booking_end {
                        if take == 0 {
                            continue 'first;
                        }
                        continue;
                    }
                    self.queues[q].waiting[lane].remove(take);
                    self.book_slot(
                        w,
                        &mut slots[next_first],
                        entry.pathway,
                        None,
                        entry.ready.max(monday),
                        booking_end,
                    );
                    next_first += 1;
                }
            }
            // Follow-ups: in due order, up to two weeks early.
            let horizon = clinic_monday + Duration::days(13);
            while next_fu < slots.len() {
                let Some(Reverse((due, fu))) = self.queues[q].due.peek().copied() else {
                    break;
                };
                if due > horizon {
                    break;
                }
                self.queues[q].due.pop();
                let Some(f) = self.followups.get(&fu) else {
                    continue;
                };
                let (pathway, pifu, requested) = (f.pathway, f.pifu, f.requested);
                if pifu && !self.rng.chance(PIFU_TRIGGERED) {
                    if let Some(f) = self.followups.remove(&fu) {
                        let ended = f.due.min(booking_end);
                        self.write_followup(
                            &f,
                            "Cancelled",
                            Some(ended),
                            Some(FollowupCancelReason::PifuPeriodEnded),
                        )?;
                    }
                    if let Some(pw) = self.pathways.get_mut(&pathway) {
                        pw.followups_left = pw.followups_left.saturating_sub(1);
                    }
                    self.next_step(pathway, due.min(booking_end))?;
                    continue;
                }
                self.book_slot(
                    w,
                    &mut slots[next_fu],
                    pathway,
                    Some(fu),
                    requested.max(monday),
                    booking_end,
                );
                next_fu += 1;
            }
            self.slots[w].extend(slots.into_iter().map(|s| (q, s)));
        }
        Ok(())
    }

    fn book_slot(
        &mut self,
        w: usize,
        slot: &mut Slot,
        pathway: u64,
        followup: Option<u64>,
        from: NaiveDate,
        until: NaiveDate,
    ) {
        slot.booked = true;
        let seq = self.seq();
        let span = (until - from).num_days().max(0);
        let offset = self.rng.range(0, span);
        let booked_at = self.time_on(from + Duration::days(offset));
        let original_start = self
            .rng
            .chance(RESCHEDULED)
            .then(|| slot.start - Duration::days(self.rng.range(2, 6)))
            .filter(|o| *o > booked_at);
        if let Some(f) = followup.and_then(|fu| self.followups.get_mut(&fu)) {
            f.appointment = Some(seq);
        }
        self.booked[w].push(Appointment {
            seq,
            pathway,
            followup,
            contact: slot.contact,
            slot: slot.seq,
            withdrawn: slot.withdrawn,
            booked_at,
            start: slot.start,
            original_start,
        });
    }

    fn write_slots(&mut self, k: usize) -> io::Result<()> {
        let slots = std::mem::take(&mut self.slots[k]);
        for (q, s) in slots {
            self.write_slot(q, &s)?;
        }
        Ok(())
    }

    fn write_slot(&mut self, q: usize, s: &Slot) -> io::Result<()> {
        let (provider, spec) = (self.queues[q].provider, self.queues[q].spec);
        let withdrawn = s.withdrawn.filter(|d| *d <= self.extract);
        let status = if withdrawn.is_some() {
            "Withdrawn"
        } else if s.booked {
            "Booked"
        } else {
            "Available"
        };
        let tf = self.cfg.specialties[spec].tf.code();
        let f = &mut self.clinic_slots[provider];
        f.text(&format!("S{}", s.seq))
            .text(&self.icb.providers[provider].code)
            .text(tf)
            .text(&clinic_code(
                &self.icb.providers[provider].code,
                tf,
                s.contact,
            ))
            .datetime(s.start)
            .int(if s.contact == ContactType::First {
                20
            } else {
                15
            })
            .text(s.contact.code())
            .date(s.published.min(self.extract))
            .text(status)
            .opt_date(withdrawn)
            .opt_text(withdrawn.map(|_| "Clinic cancelled"));
        f.finish()
    }

    fn write_appointment(
        &mut self,
        a: &Appointment,
        status: AppointmentStatus,
        cancelled_at: Option<NaiveDate>,
    ) -> io::Result<()> {
        let Some(pw) = self.pathways.get(&a.pathway) else {
            return Ok(());
        };
        let icb = self.icb;
        let pr = icb.patient(pw.patient);
        let (provider, spec) = (pw.provider, pw.spec);
        let tf = self.cfg.specialties[spec].tf.code();
        let f = &mut self.appointments[provider];
        f.text(&format!("OPA{}", a.seq))
            .text(&ubrn(self.cfg.seed, pw.seq))
            .text(&icb.hospital_number(provider, pw.patient))
            .patient(&pr)
            .text(&icb.providers[provider].code)
            .text(tf)
            .text(&clinic_code(&icb.providers[provider].code, tf, a.contact))
            .text(&format!("S{}", a.slot))
            .text(a.contact.code())
            .opt_text(a.followup.map(|fu| format!("FU{fu}")).as_deref())
            .datetime(a.booked_at)
            .datetime(a.start);
        match a.original_start {
            Some(t) => f.datetime(t),
            None => f.opt_text(None),
        };
        f.text(status.code()).opt_date(cancelled_at);
        f.finish()
    }

    fn write_followup(
        &mut self,
        fu: &Followup,
        status: &str,
        outcome: Option<NaiveDate>,
        reason: Option<FollowupCancelReason>,
    ) -> io::Result<()> {
        let Some(pw) = self.pathways.get(&fu.pathway) else {
            return Ok(());
        };
        let icb = self.icb;
        let pr = icb.patient(pw.patient);
        let provider = pw.provider;
        let outcome = outcome.filter(|d| *d <= self.extract);
        let status = if outcome.is_none() && status != "Booked" {
            "Waiting"
        } else {
            status
        };
        let f = &mut self.followup_file[provider];
        f.text(&format!("FU{}", fu.seq))
            .text(&ubrn(self.cfg.seed, pw.seq))
            .text(&icb.hospital_number(provider, pw.patient))
            .patient(&pr)
            .text(&icb.providers[provider].code)
            .text(self.cfg.specialties[pw.spec].tf.code())
            .date(fu.requested)
            .date(fu.due)
            .text(if fu.pifu { "Y" } else { "N" })
            .text(status)
            .opt_text(fu.appointment.map(|a| format!("OPA{a}")).as_deref())
            .opt_date(outcome)
            .opt_text(reason.map(FollowupCancelReason::code));
        f.finish()
    }

    fn write_referral(&mut self, pw: &Pathway) -> io::Result<()> {
        let icb = self.icb;
        let pr = icb.patient(pw.patient);
        let redirected = pw.outcome == TriageOutcome::Redirected;
        let f = &mut self.referrals[pw.provider];
        f.text(&ubrn(self.cfg.seed, pw.seq))
            .text(&icb.hospital_number(pw.provider, pw.patient))
            .patient(&pr)
            .text(&icb.practices[pw.practice].code)
            .text(&icb.providers[pw.provider].code)
            .text(self.cfg.specialties[pw.original_spec].tf.code())
            .text(pw.priority.label())
            .text(ReferralSource::Gp.code())
            .date(pw.received)
            .opt_date((pw.triage <= self.extract).then_some(pw.triage))
            .opt_text((pw.triage <= self.extract).then(|| pw.outcome.label()))
            .opt_text(redirected.then(|| self.cfg.specialties[pw.spec].tf.code()))
            .opt_text(pw.advice.map(|a| ubrn(self.cfg.seed, a)).as_deref())
            .date(pw.clock_start)
            .opt_date(pw.clock_stop.map(|c| c.0))
            .opt_text(pw.clock_stop.map(|c| c.1.code()))
            .opt_date(pw.first_attended)
            .opt_date(pw.discharged)
            .text(pw.reason);
        f.finish()
    }

    /// Writes everything still open at the extract date and closes the files.
    pub fn finish(mut self) -> io::Result<(Vec<FileSummary>, Vec<QueueStats>)> {
        let total = (self.cfg.run_in_weeks + self.cfg.weeks) as usize;
        for w in total..self.booked.len() {
            let mut appts = std::mem::take(&mut self.booked[w]);
            appts.sort_by_key(|a| (a.start, a.seq));
            for a in appts {
                let withdrawn = a.withdrawn.filter(|d| *d <= self.extract);
                let status = if withdrawn.is_some() {
                    AppointmentStatus::CancelledByProvider
                } else {
                    AppointmentStatus::Booked
                };
                self.write_appointment(&a, status, withdrawn)?;
            }
            self.write_slots(w)?;
        }
        let mut open: Vec<u64> = self.followups.keys().copied().collect();
        open.sort_unstable();
        for seq in open {
            if let Some(f) = self.followups.remove(&seq) {
                let status = if f.appointment.is_some() {
                    "Booked"
                } else {
                    "Waiting"
                };
                self.write_followup(&f, status, None, None)?;
            }
        }
        let mut open: Vec<u64> = self.pathways.keys().copied().collect();
        open.sort_unstable();
        for seq in open {
            self.close_pathway(seq)?;
        }
        let mut files = Vec::new();
        for f in self
            .referrals
            .into_iter()
            .chain(self.appointments)
            .chain(self.clinic_slots)
            .chain(self.followup_file)
        {
            files.push(f.close()?);
        }
        files.push(self.advice_file.close()?);
        Ok((files, self.stats))
    }
}
