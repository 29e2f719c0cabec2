//! FHIR R4 Bundles for the practices whose systems export FHIR: one
//! `collection` Bundle per practice and week holding Slot, Appointment,
//! Patient and (for attended appointments) Encounter resources. The NHS
//! number sits under the identifier system `https://fhir.nhs.uk/Id/nhs-number`;
//! GPAD's mode, HCP type and category use the code systems named below.

use std::io::{self, Write};
use std::path::Path;

use chrono::{Duration, NaiveDateTime, Timelike};
use pathflow_schemas::Week;
use pathflow_schemas::codes::Sex;
use serde::Serialize;

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

/// An instant with its UK offset, e.g. `2025-04-07T09:10:00+01:00`.
fn instant(t: NaiveDateTime) -> String {
    let mut buf = Vec::with_capacity(25);
    crate::csv::push_date(&mut buf, t.date());
    let (h, m, sec) = (t.hour(), t.minute(), t.second());
    for (sep, n) in [(b'T', h), (b':', m), (b':', sec)] {
        buf.push(sep);
        buf.push(b'0' + (n / 10) as u8);
        buf.push(b'0' + (n % 10) as u8);
    }
    buf.extend_from_slice(pathflow_schemas::uk_time::offset_text(t).as_bytes());
    String::from_utf8(buf).unwrap_or_default()
}

// The resources are borrowed, typed structs streamed one entry at a time:
// building `serde_json::Value` trees for millions of resources cost most of
// a large run's time in allocation.

#[derive(Serialize)]
struct Coding<'a> {
    system: &'a str,
    code: &'a str,
}

#[derive(Serialize)]
struct Concept<'a> {
    coding: [Coding<'a>; 1],
}

fn concept<'a>(system: &'a str, code: &'a str) -> Concept<'a> {
    Concept {
        coding: [Coding { system, code }],
    }
}

#[derive(Serialize)]
struct Reference {
    reference: String,
}

#[derive(Serialize)]
struct Identifier<'a> {
    system: &'a str,
    value: &'a str,
}

#[derive(Serialize)]
struct Entry<R> {
    #[serde(rename = "fullUrl")]
    full_url: String,
    resource: R,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SlotResource<'a> {
    resource_type: &'static str,
    id: &'a str,
    schedule: Reference,
    status: &'static str,
    start: &'a str,
    end: &'a str,
    service_category: [Concept<'a>; 1],
    appointment_type: Concept<'a>,
}

#[derive(Serialize)]
struct PostalAddress<'a> {
    #[serde(rename = "postalCode")]
    postal_code: &'a str,
}

#[derive(Serialize)]
struct OrgIdentifier<'a> {
    identifier: Identifier<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PatientResource<'a> {
    resource_type: &'static str,
    id: &'a str,
    identifier: [Identifier<'a>; 1],
    birth_date: &'a str,
    gender: &'static str,
    address: [PostalAddress<'a>; 1],
    general_practitioner: [OrgIdentifier<'a>; 1],
}

#[derive(Serialize)]
struct Participant<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<Reference>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<[Concept<'a>; 1]>,
    status: &'static str,
}

#[derive(Serialize)]
struct Extension {
    url: &'static str,
    #[serde(rename = "valueDateTime")]
    value_date_time: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AppointmentResource<'a> {
    resource_type: &'static str,
    id: &'a str,
    status: &'static str,
    service_category: [Concept<'a>; 1],
    appointment_type: Concept<'a>,
    start: &'a str,
    end: &'a str,
    minutes_duration: u16,
    created: Option<String>,
    slot: [Reference; 1],
    participant: [Participant<'a>; 2],
    #[serde(skip_serializing_if = "Option::is_none")]
    cancelation_reason: Option<Concept<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    extension: Option<[Extension; 1]>,
}

#[derive(Serialize)]
struct Period<'a> {
    start: &'a str,
    end: &'a str,
}

#[derive(Serialize)]
struct ActCode {
    system: &'static str,
    code: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EncounterResource<'a> {
    resource_type: &'static str,
    id: &'a str,
    status: &'static str,
    class: ActCode,
    subject: Reference,
    appointment: [Reference; 1],
    period: Period<'a>,
}

/// Writes bundle entries separated by commas.
struct Entries<W: Write> {
    out: W,
    first: bool,
}

impl<W: Write> Entries<W> {
    fn add<R: Serialize>(&mut self, kind: &str, id: &str, resource: R) -> io::Result<()> {
        if !self.first {
            self.out.write_all(b",")?;
        }
        self.first = false;
        let entry = Entry {
            full_url: format!("urn:pathflow:{kind}/{id}"),
            resource,
        };
        serde_json::to_writer(&mut self.out, &entry).map_err(io::Error::other)
    }
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
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut out = io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let timestamp = instant(
        (week.sunday() + Duration::days(1))
            .and_hms_opt(2, 0, 0)
            .unwrap_or_default(),
    );
    write!(
        out,
        r#"{{"resourceType":"Bundle","id":"{code}-{week}","type":"collection","timestamp":"{timestamp}","meta":{{"source":"urn:ods:{code}"}},"entry":["#,
        code = p.code
    )?;
    let mut entries = Entries { out, first: true };
    let (appointment_prefix, slot_prefix) = (appointment_prefix(&p.code), slot_prefix(&p.code));
    let encounter_prefix = format!("{}-E", p.code);
    let mut patients_written = std::collections::HashSet::new();
    for r in rows {
        let slot_id = local_id(&slot_prefix, r.seq);
        let (start, end) = (
            instant(r.start),
            instant(r.start + Duration::minutes(i64::from(r.duration))),
        );
        entries.add(
            "Slot",
            &slot_id,
            SlotResource {
                resource_type: "Slot",
                id: &slot_id,
                schedule: Reference {
                    reference: format!("Schedule/{}-{}", p.code, r.hcp.wire_name()),
                },
                status: if r.status == GpStatus::Available {
                    "free"
                } else {
                    "busy"
                },
                start: &start,
                end: &end,
                service_category: [concept(GPAD_CATEGORY_SYSTEM, r.category.code())],
                appointment_type: concept(GPAD_MODE_SYSTEM, r.mode.code()),
            },
        )?;
        let Some(index) = r.patient else { continue };
        let patient_id = format!("{}-P{}", p.code, index - p.first_patient);
        // Each patient appears once per Bundle, however many appointments they have.
        if patients_written.insert(index) {
            let patient = icb.patient(index);
            let (nhs, dob) = (
                patient.nhs_number.expose_digits(),
                patient.date_of_birth.to_string(),
            );
            entries.add(
                "Patient",
                &patient_id,
                PatientResource {
                    resource_type: "Patient",
                    id: &patient_id,
                    identifier: [Identifier {
                        system: NHS_NUMBER_SYSTEM,
                        value: &nhs,
                    }],
                    birth_date: &dob,
                    gender: match patient.sex {
                        Sex::Male => "male",
                        Sex::Female => "female",
                        _ => "unknown",
                    },
                    address: [PostalAddress {
                        postal_code: &patient.postcode,
                    }],
                    general_practitioner: [OrgIdentifier {
                        identifier: Identifier {
                            system: "https://fhir.nhs.uk/Id/ods-organization-code",
                            value: &p.code,
                        },
                    }],
                },
            )?;
        }
        let appointment_id = local_id(&appointment_prefix, r.seq);
        let status = match r.status {
            GpStatus::Attended => "fulfilled",
            GpStatus::Dna => "noshow",
            GpStatus::CancelledByPatient | GpStatus::CancelledByPractice => "cancelled",
            GpStatus::Available => "proposed",
        };
        let reason = if r.status == GpStatus::CancelledByPatient {
            "pat"
        } else {
            "prov"
        };
        entries.add(
            "Appointment",
            &appointment_id,
            AppointmentResource {
                resource_type: "Appointment",
                id: &appointment_id,
                status,
                service_category: [concept(GPAD_CATEGORY_SYSTEM, r.category.code())],
                appointment_type: concept(GPAD_MODE_SYSTEM, r.mode.code()),
                start: &start,
                end: &end,
                minutes_duration: r.duration,
                created: r.booked_at.map(instant),
                slot: [Reference {
                    reference: format!("Slot/{slot_id}"),
                }],
                participant: [
                    Participant {
                        actor: Some(Reference {
                            reference: format!("Patient/{patient_id}"),
                        }),
                        kind: None,
                        status: "accepted",
                    },
                    Participant {
                        actor: None,
                        kind: Some([concept(GPAD_HCP_SYSTEM, r.hcp.code())]),
                        status: "accepted",
                    },
                ],
                cancelation_reason: r.cancelled_at.map(|_| {
                    concept(
                        "http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason",
                        reason,
                    )
                }),
                extension: r.cancelled_at.map(|at| {
                    [Extension {
                        url: "https://pathflow.dev/fhir/StructureDefinition/cancelled-at",
                        value_date_time: instant(at),
                    }]
                }),
            },
        )?;
        if r.status == GpStatus::Attended {
            let encounter_id = local_id(&encounter_prefix, r.seq);
            entries.add(
                "Encounter",
                &encounter_id,
                EncounterResource {
                    resource_type: "Encounter",
                    id: &encounter_id,
                    status: "finished",
                    class: ActCode {
                        system: "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                        code: "AMB",
                    },
                    subject: Reference {
                        reference: format!("Patient/{patient_id}"),
                    },
                    appointment: [Reference {
                        reference: format!("Appointment/{appointment_id}"),
                    }],
                    period: Period {
                        start: &start,
                        end: &end,
                    },
                },
            )?;
        }
    }
    let mut out = entries.out;
    out.write_all(b"]}\n")?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    #[test]
    fn instants_carry_the_uk_offset() {
        let t = |m, d| {
            NaiveDate::from_ymd_opt(2025, m, d)
                .unwrap()
                .and_hms_opt(9, 5, 7)
                .unwrap()
        };
        assert_eq!(instant(t(1, 6)), "2025-01-06T09:05:07+00:00");
        assert_eq!(instant(t(7, 1)), "2025-07-01T09:05:07+01:00");
    }
}
