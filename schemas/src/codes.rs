//! NHS reference codes as enums. Each variant has a stable wire name (what
//! goes in JSON), the NHS code it stands for (Data Dictionary, RTT guidance or
//! GPAD), and the label people read. `from_text` accepts any of the three, so
//! connectors can map source values without a table of their own.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What every code enum offers, so parsers can read any of them generically.
pub trait Code: Sized + Copy + 'static {
    /// What the code is called in messages, e.g. "treatment function".
    const KIND: &'static str;
    /// Every value.
    fn all() -> &'static [Self];
    /// The value for a wire name, NHS code or label.
    fn parse_text(text: &str) -> Option<Self>;
    /// The NHS code.
    fn nhs_code(self) -> &'static str;
}

/// Defines a code enum: `Variant => ("wire_name", "nhs code", "label")`.
macro_rules! code_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => ($wire:literal, $code:literal, $label:literal)),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $wire)] $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name used on the wire (JSON events).
            pub fn wire_name(self) -> &'static str {
                match self { $($name::$variant => $wire),+ }
            }

            /// The NHS code this value stands for.
            pub fn code(self) -> &'static str {
                match self { $($name::$variant => $code),+ }
            }

            /// The label people read (dashboards, extracts).
            pub fn label(self) -> &'static str {
                match self { $($name::$variant => $label),+ }
            }

            /// Accepts the wire name, the NHS code or the label, ignoring case and surrounding space.
            pub fn from_text(text: &str) -> Option<Self> {
                let t = text.trim();
                Self::ALL.iter().copied().find(|v| {
                    v.wire_name().eq_ignore_ascii_case(t) || v.code().eq_ignore_ascii_case(t) || v.label().eq_ignore_ascii_case(t)
                })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.wire_name())
            }
        }

        impl Code for $name {
            const KIND: &'static str = stringify!($name);
            fn all() -> &'static [Self] {
                Self::ALL
            }
            fn parse_text(text: &str) -> Option<Self> {
                Self::from_text(text)
            }
            fn nhs_code(self) -> &'static str {
                self.code()
            }
        }
    };
}

code_enum!(
    /// Treatment function codes (NHS Data Dictionary) of the specialties that
    /// carry most RTT and outpatient activity. On the wire as the code itself.
    TreatmentFunction {
        GeneralSurgery => ("100", "100", "General Surgery"),
        Urology => ("101", "101", "Urology"),
        BreastSurgery => ("103", "103", "Breast Surgery"),
        ColorectalSurgery => ("104", "104", "Colorectal Surgery"),
        HepatobiliaryPancreaticSurgery => ("105", "105", "Hepatobiliary and Pancreatic Surgery"),
        UpperGastrointestinalSurgery => ("106", "106", "Upper Gastrointestinal Surgery"),
        VascularSurgery => ("107", "107", "Vascular Surgery"),
        SpinalSurgery => ("108", "108", "Spinal Surgery"),
        TraumaAndOrthopaedics => ("110", "110", "Trauma and Orthopaedics"),
        EarNoseAndThroat => ("120", "120", "Ear, Nose and Throat"),
        Ophthalmology => ("130", "130", "Ophthalmology"),
        OralSurgery => ("140", "140", "Oral Surgery"),
        MaxillofacialSurgery => ("144", "144", "Maxillofacial Surgery"),
        Neurosurgery => ("150", "150", "Neurosurgery"),
        PlasticSurgery => ("160", "160", "Plastic Surgery"),
        CardiothoracicSurgery => ("170", "170", "Cardiothoracic Surgery"),
        PaediatricSurgery => ("171", "171", "Paediatric Surgery"),
        PainManagement => ("191", "191", "Pain Management"),
        GeneralInternalMedicine => ("300", "300", "General Internal Medicine"),
        Gastroenterology => ("301", "301", "Gastroenterology"),
        Endocrinology => ("302", "302", "Endocrinology"),
        ClinicalHaematology => ("303", "303", "Clinical Haematology"),
        Diabetes => ("307", "307", "Diabetes Medicine"),
        Cardiology => ("320", "320", "Cardiology"),
        Dermatology => ("330", "330", "Dermatology"),
        RespiratoryMedicine => ("340", "340", "Respiratory Medicine"),
        InfectiousDiseases => ("350", "350", "Infectious Diseases"),
        Nephrology => ("361", "361", "Nephrology"),
        MedicalOncology => ("370", "370", "Medical Oncology"),
        Neurology => ("400", "400", "Neurology"),
        Rheumatology => ("410", "410", "Rheumatology"),
        Paediatrics => ("420", "420", "Paediatrics"),
        ElderlyMedicine => ("430", "430", "Elderly Medicine"),
        Gynaecology => ("502", "502", "Gynaecology"),
        GynaecologicalOncology => ("503", "503", "Gynaecological Oncology"),
        ClinicalOncology => ("800", "800", "Clinical Oncology"),
    }
);

code_enum!(
    /// Referral priority (e-RS / Data Dictionary priority type).
    Priority {
        Routine => ("routine", "1", "Routine"),
        Urgent => ("urgent", "2", "Urgent"),
        TwoWeekWait => ("two_week_wait", "3", "Two Week Wait"),
    }
);

code_enum!(
    /// Who referred the patient (Data Dictionary: source of referral for outpatients).
    ReferralSource {
        Gp => ("gp", "03", "GP"),
        AccidentAndEmergency => ("accident_and_emergency", "04", "A&E department"),
        Consultant => ("consultant", "05", "Consultant"),
        SelfReferral => ("self", "06", "Self-referral"),
        Dentist => ("dentist", "92", "General dental practitioner"),
    }
);

code_enum!(
    /// The provider's decision on a referral after clinical triage (e-RS).
    TriageOutcome {
        Accepted => ("accepted", "A", "Accepted"),
        ReturnedWithAdvice => ("returned_with_advice", "RA", "Returned to referrer with advice"),
        Rejected => ("rejected", "R", "Rejected"),
        Redirected => ("redirected", "RD", "Redirected to another service"),
    }
);

code_enum!(
    /// Why an RTT clock started (RTT period status codes).
    ClockStartReason {
        FirstActivity => ("first_activity", "10", "First activity of a new RTT period"),
        ActiveMonitoringEnded => ("active_monitoring_ended", "11", "Active monitoring ended; new RTT period"),
    }
);

code_enum!(
    /// Why an RTT clock stopped (RTT period status codes 30 to 36).
    ClockStopReason {
        FirstDefinitiveTreatment => ("first_definitive_treatment", "30", "First definitive treatment started"),
        ActiveMonitoringByPatient => ("active_monitoring_by_patient", "31", "Active monitoring initiated by the patient"),
        ActiveMonitoringByClinician => ("active_monitoring_by_clinician", "32", "Active monitoring initiated by the care professional"),
        DidNotAttendFirst => ("did_not_attend_first", "33", "Did not attend first appointment"),
        DecisionNotToTreat => ("decision_not_to_treat", "34", "Decision not to treat"),
        PatientDeclinedTreatment => ("patient_declined_treatment", "35", "Patient declined offered treatment"),
        PatientDied => ("patient_died", "36", "Patient died before treatment"),
    }
);

code_enum!(
    /// The specialist's answer to an Advice & Guidance request.
    AdviceOutcome {
        AdviceGiven => ("advice_given", "AG", "Advice given, manage in primary care"),
        ReferralAdvised => ("referral_advised", "RF", "Referral advised"),
        MoreInformationRequested => ("more_information_requested", "MI", "More information requested"),
    }
);

code_enum!(
    /// Where an appointment or slot happens.
    Setting {
        Gp => ("gp", "GP", "General practice"),
        Outpatient => ("outpatient", "OP", "Hospital outpatients"),
    }
);

code_enum!(
    /// GPAD appointment mode (APPT_MODE).
    AppointmentMode {
        FaceToFace => ("face_to_face", "Face-to-Face", "Face-to-face"),
        Telephone => ("telephone", "Telephone", "Telephone"),
        VideoOnline => ("video_online", "Video Conference/Online", "Video or online"),
        HomeVisit => ("home_visit", "Home Visit", "Home visit"),
        Unknown => ("unknown", "Unknown", "Unknown"),
    }
);

code_enum!(
    /// GPAD health care professional type (HCP_TYPE).
    HcpType {
        Gp => ("gp", "GP", "GP"),
        OtherPracticeStaff => ("other_practice_staff", "Other Practice staff", "Other practice staff"),
        Unknown => ("unknown", "Unknown", "Unknown"),
    }
);

code_enum!(
    /// GPAD national appointment categories (mapped from practices' slot types).
    NationalCategory {
        GeneralConsultationAcute => ("general_consultation_acute", "General Consultation Acute", "General consultation (acute)"),
        GeneralConsultationRoutine => ("general_consultation_routine", "General Consultation Routine", "General consultation (routine)"),
        ClinicalTriage => ("clinical_triage", "Clinical Triage", "Clinical triage"),
        PlannedClinics => ("planned_clinics", "Planned Clinics", "Planned clinics"),
        PlannedClinicalProcedure => ("planned_clinical_procedure", "Planned Clinical Procedure", "Planned clinical procedure"),
        UnplannedClinicalActivity => ("unplanned_clinical_activity", "Unplanned Clinical Activity", "Unplanned clinical activity"),
        StructuredMedicationReview => ("structured_medication_review", "Structured Medication Review", "Structured medication review"),
        HomeVisit => ("home_visit", "Home Visit", "Home visit"),
        CareHomeVisit => ("care_home_visit", "Care Home Visit", "Care home visit"),
        CareHomeNeedsAssessment => ("care_home_needs_assessment", "Care Home Needs Assessment & Personalised Care and Support Planning", "Care home needs assessment"),
        SocialPrescribing => ("social_prescribing", "Social Prescribing Service", "Social prescribing"),
        GroupConsultation => ("group_consultation", "Group Consultation and Group Education", "Group consultation and education"),
        WalkIn => ("walk_in", "Walk-in", "Walk-in"),
        ExternalService => ("external_service", "Service provided by organisation external to the practice", "Service external to the practice"),
        NonContractualWork => ("non_contractual_work", "Non-contractual chargeable work", "Non-contractual chargeable work"),
        InconsistentMapping => ("inconsistent_mapping", "Inconsistent Mapping", "Inconsistent mapping"),
        Unmapped => ("unmapped", "Unmapped", "Unmapped"),
    }
);

code_enum!(
    /// GPAD bands of time from booking to appointment (TIME_BETWEEN_BOOK_AND_APPT).
    BookingBand {
        SameDay => ("same_day", "Same Day", "Same day"),
        OneDay => ("one_day", "1 Day", "1 day"),
        TwoToSevenDays => ("two_to_seven_days", "2 to 7 Days", "2 to 7 days"),
        EightToFourteenDays => ("eight_to_fourteen_days", "8  to 14 Days", "8 to 14 days"),
        FifteenToTwentyOneDays => ("fifteen_to_twenty_one_days", "15  to 21 Days", "15 to 21 days"),
        TwentyTwoToTwentyEightDays => ("twenty_two_to_twenty_eight_days", "22  to 28 Days", "22 to 28 days"),
        MoreThanTwentyEightDays => ("more_than_twenty_eight_days", "More than 28 Days", "More than 28 days"),
    }
);

impl BookingBand {
    /// The band for a lead time in whole days, or `None` when negative
    /// (GPAD files those under "Unknown / Data Quality").
    pub fn from_days(days: i64) -> Option<Self> {
        Some(match days {
            ..0 => return None,
            0 => BookingBand::SameDay,
            1 => BookingBand::OneDay,
            2..=7 => BookingBand::TwoToSevenDays,
            8..=14 => BookingBand::EightToFourteenDays,
            15..=21 => BookingBand::FifteenToTwentyOneDays,
            22..=28 => BookingBand::TwentyTwoToTwentyEightDays,
            _ => BookingBand::MoreThanTwentyEightDays,
        })
    }
}

code_enum!(
    /// First or follow-up outpatient attendance (Data Dictionary: first attendance).
    ContactType {
        First => ("first", "1", "First attendance"),
        FollowUp => ("follow_up", "2", "Follow-up attendance"),
    }
);

code_enum!(
    /// The state of an appointment (Data Dictionary: attended or did not attend).
    AppointmentStatus {
        Booked => ("booked", "0", "Booked, in the future"),
        Attended => ("attended", "5", "Attended"),
        DidNotAttend => ("did_not_attend", "3", "Did not attend"),
        CancelledByPatient => ("cancelled_by_patient", "2", "Cancelled by the patient"),
        CancelledByProvider => ("cancelled_by_provider", "4", "Cancelled by the provider"),
    }
);

code_enum!(
    /// Who cancelled an appointment.
    CancelledBy {
        Patient => ("patient", "2", "Patient"),
        Provider => ("provider", "4", "Provider"),
    }
);

code_enum!(
    /// Why a published slot was withdrawn.
    SlotWithdrawReason {
        ClinicCancelled => ("clinic_cancelled", "CC", "Clinic cancelled"),
        StaffUnavailable => ("staff_unavailable", "SU", "Staff unavailable"),
        Other => ("other", "OT", "Other"),
    }
);

code_enum!(
    /// Why a follow-up that was required will not happen.
    FollowupCancelReason {
        NoLongerRequired => ("no_longer_required", "NR", "No longer clinically required"),
        PatientDeclined => ("patient_declined", "PD", "Declined by the patient"),
        PifuPeriodEnded => ("pifu_period_ended", "PE", "Patient-initiated follow-up period ended unused"),
    }
);

code_enum!(
    /// Person stated gender (Data Dictionary codes).
    Sex {
        Male => ("male", "1", "Male"),
        Female => ("female", "2", "Female"),
        Indeterminate => ("indeterminate", "9", "Indeterminate"),
        NotKnown => ("not_known", "X", "Not known"),
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_least_25_treatment_functions_with_unique_codes() {
        let all = TreatmentFunction::ALL;
        assert!(all.len() >= 25);
        let mut codes: Vec<_> = all.iter().map(|t| t.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
    }

    #[test]
    fn text_in_any_form_maps_to_the_code() {
        assert_eq!(
            TreatmentFunction::from_text("110"),
            Some(TreatmentFunction::TraumaAndOrthopaedics)
        );
        assert_eq!(
            TreatmentFunction::from_text("trauma and orthopaedics"),
            Some(TreatmentFunction::TraumaAndOrthopaedics)
        );
        assert_eq!(
            Priority::from_text("Two Week Wait"),
            Some(Priority::TwoWeekWait)
        );
        assert_eq!(Priority::from_text("3"), Some(Priority::TwoWeekWait));
        assert_eq!(
            AppointmentMode::from_text("Video Conference/Online"),
            Some(AppointmentMode::VideoOnline)
        );
        assert_eq!(
            ClockStopReason::from_text("30"),
            Some(ClockStopReason::FirstDefinitiveTreatment)
        );
        assert_eq!(Priority::from_text("soon"), None);
    }

    #[test]
    fn wire_names_are_the_json_form() {
        let json = serde_json::to_string(&TreatmentFunction::Dermatology).unwrap();
        assert_eq!(json, "\"330\"");
        let json = serde_json::to_string(&Priority::TwoWeekWait).unwrap();
        assert_eq!(json, "\"two_week_wait\"");
    }

    #[test]
    fn booking_bands_follow_gpad() {
        let band = |d| BookingBand::from_days(d).map(BookingBand::code);
        assert_eq!(band(0), Some("Same Day"));
        assert_eq!(band(1), Some("1 Day"));
        assert_eq!(band(7), Some("2 to 7 Days"));
        assert_eq!(band(8), Some("8  to 14 Days"));
        assert_eq!(band(28), Some("22  to 28 Days"));
        assert_eq!(band(29), Some("More than 28 Days"));
        assert_eq!(band(-1), None);
    }
}
