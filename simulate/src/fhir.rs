//! FHIR R4 Bundles for the practices whose systems export FHIR: one
//! `collection` Bundle per practice and week holding Slot, Appointment,
//! Patient and (for attended appointments) Encounter resources. The NHS
//! number sits under the identifier system `https://fhir.nhs.uk/Id/nhs-number`;
//! GPAD's mode, HCP type and category use the code systems named below.

use std::io::{self, Write};
use std::path::Path;

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime};
use pathflow_schemas::Week;
use pathflow_schemas::codes::Sex;
use serde_json::{Value, json};

use crate::gp::{GpAppointment, GpStatus, appointment_prefix, local_id, slot_prefix};
use crate::population::Icb;

/// Identifier system of NHS numbers.
pub const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
/// Code system for GPAD appointment modes (codes as GPAD publishes them).
pub const GPAD_MODE_SYSTEM: &str = "https://pathflow.dev/fhir/CodeSystem/gpad-appointment-mode";
/// Code system for GPAD HCP types.
pub const GPAD_HCP_SYSTEM: &str = "https://pathflow.dev/fhir/CodeSystem/gpad-hcp-type";
/// Code system for GPAD national categories.
pub const GPAD_CATEGORY_SYSTEM: &str =
    "https://pathflow.dev/fhir/CodeSystem/gpad-national-category";

/// The UK civil time offset on `date`: BST from the last Sunday of March to
/// the last Sunday of October (the hour of the change itself is not modelled).
pub fn uk_offset(date: NaiveDate) -> &'static str {
    let last_sunday = |month: u32| {
        let last = NaiveDate::from_ymd_opt(date.year(), month + 1, 1).expect("valid month")
            - Duration::days(1);
        last - Duration::days(i64::from(last.weekday().num_days_from_sunday()))
    };
    if date >= last_sunday(3) && date < last_sunday(10) {
        "+01:00"
    } else {
        "+00:00"
    }
}

fn instant(t: NaiveDateTime) -> String {
    format!("{}{}", t.format("%Y-%m-%dT%H:%M:%S"), uk_offset(t.date()))
}

fn coding(system: &str, code: &str) -> Value {
    json!({"coding": [{"system": system, "code": code}]})
}

/// Writes the Bundle of one practice-week to `path`.
pub fn write_gp_bundle(
    path: &Path,
    icb: &Icb,
    practice: usize,
    week: Week,
    rows: &[GpAppointment],
) -> io::Result<()> {
    let p = &icb.practices[practice];
    let (appointment_prefix, slot_prefix) = (appointment_prefix(&p.code), slot_prefix(&p.code));
    let encounter_prefix = format!("{}-E", p.code);
    let mut patients_written = std::collections::HashSet::new();
    let mut entries = Vec::with_capacity(rows.len() * 3);
    let mut add = |resource: Value| {
        let url = format!(
            "urn:pathflow:{}/{}",
            resource["resourceType"].as_str().unwrap_or(""),
            resource["id"].as_str().unwrap_or("")
        );
        entries.push(json!({"fullUrl": url, "resource": resource}));
    };
    for r in rows {
        let slot_id = local_id(&slot_prefix, r.seq);
        let appointment_id = local_id(&appointment_prefix, r.seq);
        let end = r.start + Duration::minutes(i64::from(r.duration));
        let category = vec![coding(GPAD_CATEGORY_SYSTEM, r.category.code())];
        let mode = coding(GPAD_MODE_SYSTEM, r.mode.code());
        add(json!({
            "resourceType": "Slot",
            "id": slot_id,
            "schedule": {"reference": format!("Schedule/{}-{}", p.code, r.hcp.wire_name())},
            "status": if r.status == GpStatus::Available { "free" } else { "busy" },
            "start": instant(r.start),
            "end": instant(end),
            "serviceCategory": category,
            "appointmentType": mode,
        }));
        let Some(index) = r.patient else { continue };
        let patient_id = format!("{}-P{}", p.code, index - p.first_patient);
        // Each patient appears once per Bundle, however many appointments they have.
        if patients_written.insert(index) {
            let patient = icb.patient(index);
            add(json!({
            "resourceType": "Patient",
            "id": patient_id,
            "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": patient.nhs_number.expose_digits()}],
            "birthDate": patient.date_of_birth.to_string(),
            "gender": match patient.sex { Sex::Male => "male", Sex::Female => "female", _ => "unknown" },
            "address": [{"postalCode": patient.postcode}],
            "generalPractitioner": [{"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": p.code}}],
            }));
        }
        let status = match r.status {
            GpStatus::Attended => "fulfilled",
            GpStatus::Dna => "noshow",
            GpStatus::CancelledByPatient | GpStatus::CancelledByPractice => "cancelled",
            GpStatus::Available => "proposed",
        };
        let mut appointment = json!({
            "resourceType": "Appointment",
            "id": appointment_id,
            "status": status,
            "serviceCategory": [coding(GPAD_CATEGORY_SYSTEM, r.category.code())],
            "appointmentType": coding(GPAD_MODE_SYSTEM, r.mode.code()),
            "start": instant(r.start),
            "end": instant(end),
            "minutesDuration": r.duration,
            "created": r.booked_at.map(instant),
            "slot": [{"reference": format!("Slot/{slot_id}")}],
            "participant": [
                {"actor": {"reference": format!("Patient/{patient_id}")}, "status": "accepted"},
                {"type": [coding(GPAD_HCP_SYSTEM, r.hcp.code())], "status": "accepted"},
            ],
        });
        if let Some(at) = r.cancelled_at {
            let reason = if r.status == GpStatus::CancelledByPatient {
                "pat"
            } else {
                "prov"
            };
            appointment["cancelationReason"] = coding(
                "http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason",
                reason,
            );
            appointment["extension"] = json!([{"url": "https://pathflow.dev/fhir/StructureDefinition/cancelled-at", "valueDateTime": instant(at)}]);
        }
        add(appointment);
        if r.status == GpStatus::Attended {
            add(json!({
                "resourceType": "Encounter",
                "id": local_id(&encounter_prefix, r.seq),
                "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "subject": {"reference": format!("Patient/{patient_id}")},
                "appointment": [{"reference": format!("Appointment/{appointment_id}")}],
                "period": {"start": instant(r.start), "end": instant(end)},
            }));
        }
    }
    let bundle = json!({
        "resourceType": "Bundle",
        "id": format!("{}-{}", p.code, week),
        "type": "collection",
        "timestamp": instant((week.sunday() + Duration::days(1)).and_hms_opt(2, 0, 0).unwrap_or_default()),
        "meta": {"source": format!("urn:ods:{}", p.code)},
        "entry": entries,
    });
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut out = io::BufWriter::new(std::fs::File::create(path)?);
    serde_json::to_writer(&mut out, &bundle)?;
    out.write_all(b"\n")?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn british_summer_time_boundaries() {
        let d = |y, m, day| NaiveDate::from_ymd_opt(y, m, day).unwrap();
        assert_eq!(uk_offset(d(2025, 3, 29)), "+00:00");
        assert_eq!(uk_offset(d(2025, 3, 30)), "+01:00");
        assert_eq!(uk_offset(d(2025, 10, 25)), "+01:00");
        assert_eq!(uk_offset(d(2025, 10, 26)), "+00:00");
    }
}
