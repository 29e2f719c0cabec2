//! FHIR R4 Bundles (see `simulate/FORMATS.md`, GP): the appointment books of
//! practices whose systems export FHIR, and e-RS / GP referrals. There is no
//! second mapping here: each booked or free Slot becomes the row the CSV GP
//! appointment book has and goes through [`GpAppointments`], and each
//! ServiceRequest becomes a PAS referral row and goes through [`PasReferrals`],
//! so both routes give the same events, ids and checks (opt-out first,
//! Modulus 11, age band, deprivation decile, postcode dropped).
//!
//! Choices:
//!
//! - Locations: `line` is the 1-based index of the entry in `Bundle.entry`: the
//!   Appointment's for a booked slot, the Slot's for a free one, the
//!   ServiceRequest's for a referral. A whole-bundle problem (not JSON, not a
//!   Bundle, no `entry` array) is one rejection at line 0, field `(bundle)`.
//!   Field errors name FHIR elements (`Appointment.status`,
//!   `Patient.identifier(nhs-number)`); errors of the CSV mappings are renamed
//!   to them. No message repeats a value of the record.
//! - Any Bundle type is read. Patient, Encounter and Organization entries give
//!   no outcome of their own (they are read through the references to them);
//!   entries of any other resource type, or without a resource, are ignored,
//!   not rejected. A reference to a Patient or Slot that is not in the bundle
//!   (by `fullUrl` or `Type/id`) rejects the entry that makes it.
//! - The practice is the book's owner: `Bundle.meta.source` as
//!   `urn:ods:<code>`; failing that the Patient's `generalPractitioner` (an ODS
//!   identifier, or a reference to an Organization in the bundle with one);
//!   failing that the practice half of the Slot's `Schedule/<practice>-<hcp type>`
//!   reference, the generator's convention.
//! - GPAD mode, HCP type and category are the codings under the
//!   `…/gpad-appointment-mode`, `…/gpad-hcp-type` and `…/gpad-national-category`
//!   systems: the Appointment's (`appointmentType`, `participant.type`,
//!   `serviceCategory`) for a booked slot, the Slot's (`appointmentType`,
//!   `serviceType`, `serviceCategory`) for a free one, falling back to the
//!   Slot's for an Appointment that lacks one. A free Slot without an HCP type
//!   coding takes it from its Schedule reference (`<practice>-<hcp type>`).
//! - Times: the Slot's `start` and `end` (its length in minutes), the
//!   Appointment's `created` (booked) and the
//!   `https://pathflow.dev/fhir/StructureDefinition/cancelled-at` extension.
//!   Instants must carry an offset or `Z` (FHIR requires one with a time);
//!   they are rewritten in UK time with the offset in force, so the exact
//!   instant is kept and the date of an age band is the UK date.
//! - Appointment status: `fulfilled` is attended, `noshow` did not attend,
//!   `cancelled` is by the patient when a `cancelationReason` code starts
//!   `pat` and by the practice for any other code (`prov…`, `maint`,
//!   `oth-…`: the practice called it off); a cancellation without a reason is
//!   rejected. A `booked`, `arrived` or `checked-in` Appointment that a
//!   `finished` Encounter points at is attended (the consultation happened and
//!   the book was not updated); without one it is a booking with no outcome
//!   yet (the CSV book's `Booked`), and any other status is rejected. Otherwise an
//!   Encounter adds nothing beyond its Appointment's status: a `finished`
//!   Encounter of a `noshow` or `cancelled` Appointment leaves it as it is.
//! - A Slot that an Appointment books gives no outcome of its own (the
//!   Appointment's row publishes it, as the CSV row does); any other Slot is an
//!   `Available` row, whatever its free/busy status, except `busy-unavailable`
//!   and `entered-in-error`, which offer no capacity and are accepted with no
//!   events. An Appointment booking several Slots books its first; the others
//!   are published as unbooked (the CSV book has one slot per appointment).
//! - A ServiceRequest is a PAS referral row: the UBRN from the identifier
//!   under `https://fhir.nhs.uk/Id/ubr-number`, the patient from `subject`, the
//!   practice from `requester` and the provider from the first `performer`
//!   that names one (ODS identifiers, or references to Organizations in the
//!   bundle with one), the treatment function from the first coding under
//!   `https://fhir.nhs.uk/CodeSystem/Specialty` or
//!   `https://fhir.nhs.uk/CodeSystem/NHSDataModelAndDictionary-treatment-function`
//!   in `category`, then `code`, then `performerType` (its code a treatment
//!   function code), and `authoredOn` (its UK date) as the received date.
//!   Priority: `routine` is routine, `urgent` and `asap` urgent, and `stat`
//!   two week wait; a `category` coded `two-week-wait` (any system) makes it
//!   a two week wait whatever the priority. FHIR's request priorities have no
//!   two week wait, so a suspected-cancer referral says so by category or by
//!   `stat`, the only priority above `asap`. A `draft` or `entered-in-error`
//!   ServiceRequest was never a referral: accepted, with no events. Like any
//!   record, its event ids are of the source that reads it.
//! - Event ids come from the source name and the resource ids and practice
//!   (through the CSV mappings' keys), never from `file`, which the HTTP
//!   connector fills with a request id.
//!
//! Bundles are read into typed, lenient structs (unknown members ignored, a
//! member of the wrong JSON type kept as such and reported only if it is
//! used) rather than `serde_json::Value` trees: a big run's bundles total
//! gigabytes.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::marker::PhantomData;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use pathflow_schemas::{NhsNumber, uk_time};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::gp_appointments::GpAppointments;
use super::pas_referrals::PasReferrals;
use super::{Context, CsvFormat, Mapped, Outcome, rejection};
use crate::record::{Columns, FieldError, Location, Row};

const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
const UBRN_SYSTEM: &str = "https://fhir.nhs.uk/Id/ubr-number";
const ODS_SYSTEMS: &[&str] = &[
    "https://fhir.nhs.uk/Id/ods-organization-code",
    "https://fhir.nhs.uk/Id/ods-site-code",
];
const GPAD_MODE_SYSTEM: &str = "https://pathflow.dev/fhir/CodeSystem/gpad-appointment-mode";
const GPAD_HCP_SYSTEM: &str = "https://pathflow.dev/fhir/CodeSystem/gpad-hcp-type";
const GPAD_CATEGORY_SYSTEM: &str = "https://pathflow.dev/fhir/CodeSystem/gpad-national-category";
const CANCELLED_AT_URL: &str = "https://pathflow.dev/fhir/StructureDefinition/cancelled-at";
const SPECIALTY_SYSTEMS: &[&str] = &[
    "https://fhir.nhs.uk/CodeSystem/Specialty",
    "https://fhir.nhs.uk/CodeSystem/NHSDataModelAndDictionary-treatment-function",
];
const TWO_WEEK_WAIT_CODE: &str = "two-week-wait";

/// What to send instead of something that is not a Bundle.
const BUNDLE_RULE: &str = "a FHIR R4 Bundle as UTF-8 JSON: an object with \"resourceType\": \"Bundle\" and an \"entry\" array of {\"resource\": …}";

/// Reads one FHIR R4 Bundle: each entry's location (its 1-based index) and outcome.
pub fn read_bundle(bytes: &[u8], file: &str, cx: &Context<'_>) -> Vec<(Location, Outcome)> {
    let bundle = match parse(bytes) {
        Ok(b) => b,
        Err(problem) => {
            return vec![rejection(
                cx,
                file,
                0,
                FieldError::new("(bundle)", problem, BUNDLE_RULE),
            )];
        }
    };
    let book = Book::new(&bundle);
    let mut out = Vec::new();
    for (i, entry) in book.entries.iter().enumerate() {
        let mapped = match entry.kind {
            Kind::Appointment => book.appointment(i, entry.resource, cx),
            Kind::Slot if !book.booked_slots.contains(&i) => book.unbooked_slot(entry.resource, cx),
            Kind::ServiceRequest => book.referral(entry.resource, cx),
            _ => continue,
        };
        let line = i as u64 + 1;
        let location = Location {
            file: file.to_string(),
            line,
        };
        out.push(match mapped {
            Ok(Mapped::Events(events)) => (location, Outcome::Events(events)),
            Ok(Mapped::OptedOut) => (location, Outcome::OptedOut),
            Err(e) => rejection(cx, file, line, e),
        });
    }
    out
}

/// The Bundle's members, or what is wrong with it as a whole.
fn parse(bytes: &[u8]) -> Result<BundleJson, String> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let json: Json<BundleJson> = serde_json::from_slice(bytes).map_err(|e| {
        // serde_json's messages can quote the input; its position cannot.
        format!(
            "is not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    let Json::Given(bundle) = json else {
        return Err("is not a JSON object".to_string());
    };
    if bundle.resource_type.text() != Some("Bundle") {
        return Err("is not a Bundle (resourceType is not \"Bundle\")".to_string());
    }
    match &bundle.entry {
        Json::Given(_) => Ok(bundle),
        Json::Absent => Err("has no entry array".to_string()),
        Json::Wrong => Err("has an entry member that is not an array".to_string()),
    }
}

// ---------------------------------------------------------------------------
// Lenient JSON: every member is read as absent, of the wrong type, or given,
// so one odd member costs the entry that uses it, not the whole bundle.

/// One JSON member as read.
#[derive(Debug, Default)]
enum Json<T> {
    /// Missing or `null`.
    #[default]
    Absent,
    /// Present, but not the JSON type the element has.
    Wrong,
    /// Present and of the right type.
    Given(T),
}

/// A JSON shape a member may have.
trait FromJson: Sized {
    /// What the member must be, for messages: "a string", "an object", "an array".
    const EXPECTED: &'static str;

    fn from_str(_text: &str) -> Option<Self> {
        None
    }

    fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn from_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Option<Self>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

impl FromJson for String {
    const EXPECTED: &'static str = "a string";

    fn from_str(text: &str) -> Option<Self> {
        Some(text.to_string())
    }
}

impl<T: FromJson> FromJson for Vec<Json<T>> {
    const EXPECTED: &'static str = "an array";

    fn from_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Option<Self>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element::<Json<T>>()? {
            items.push(item);
        }
        Ok(Some(items))
    }
}

/// Structs read from JSON objects (all their members being [`Json`], they
/// cannot fail on a member's type).
macro_rules! objects {
    ($($t:ty),+) => {$(
        impl FromJson for $t {
            const EXPECTED: &'static str = "an object";

            fn from_map<'de, A: MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
                <$t>::deserialize(de::value::MapAccessDeserializer::new(map)).map(Some)
            }
        }
    )+};
}

impl<'de, T: FromJson> Deserialize<'de> for Json<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor(PhantomData))
    }
}

struct JsonVisitor<T>(PhantomData<T>);

impl<T> JsonVisitor<T> {
    fn given(value: Option<T>) -> Json<T> {
        value.map_or(Json::Wrong, Json::Given)
    }
}

impl<'de, T: FromJson> Visitor<'de> for JsonVisitor<T> {
    type Value = Json<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::EXPECTED)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Json<T>, E> {
        Ok(Json::Wrong)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Json<T>, E> {
        Ok(Json::Wrong)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Json<T>, E> {
        Ok(Json::Wrong)
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Json<T>, E> {
        Ok(Json::Wrong)
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Json<T>, E> {
        Ok(Json::Wrong)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Json<T>, E> {
        Ok(Json::Wrong)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Json<T>, E> {
        Ok(Self::given(T::from_str(v)))
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Json<T>, E> {
        Ok(Json::Wrong)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Json<T>, E> {
        Ok(Json::Absent)
    }

    fn visit_none<E: de::Error>(self) -> Result<Json<T>, E> {
        Ok(Json::Absent)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Json<T>, D::Error> {
        Json::deserialize(d)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Json<T>, A::Error> {
        T::from_map(map).map(Self::given)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Json<T>, A::Error> {
        T::from_seq(seq).map(Self::given)
    }
}

impl<T> Json<T> {
    fn get(&self) -> Option<&T> {
        match self {
            Json::Given(v) => Some(v),
            _ => None,
        }
    }
}

impl Json<String> {
    /// The text, when given and not blank.
    fn text(&self) -> Option<&str> {
        self.get().map(|s| s.trim()).filter(|s| !s.is_empty())
    }

    /// The text, `None` when absent or blank, an error naming `element` when not a string.
    fn read(&self, element: &str) -> Result<Option<&str>, FieldError> {
        match self {
            Json::Wrong => Err(FieldError::new(
                element,
                "is not a string",
                format!("{element} is a JSON string"),
            )),
            _ => Ok(self.text()),
        }
    }
}

impl<T> Json<Vec<Json<T>>> {
    /// The array's items that are of the right type.
    fn items(&self) -> impl Iterator<Item = &T> {
        self.get().into_iter().flatten().filter_map(Json::get)
    }
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct BundleJson {
    resource_type: Json<String>,
    meta: Json<Meta>,
    entry: Json<Vec<Json<Entry>>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Meta {
    source: Json<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Entry {
    full_url: Json<String>,
    resource: Json<Resource>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Coding {
    system: Json<String>,
    code: Json<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Concept {
    coding: Json<Vec<Json<Coding>>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Identifier {
    system: Json<String>,
    value: Json<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Reference {
    reference: Json<String>,
    identifier: Json<Identifier>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Participant {
    actor: Json<Reference>,
    #[serde(rename = "type")]
    kind: Json<Vec<Json<Concept>>>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Extension {
    url: Json<String>,
    value_date_time: Json<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Address {
    postal_code: Json<String>,
}

/// The members pathflow reads of every resource type it maps, in one struct:
/// `resourceType` may come after them in the object.
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Resource {
    resource_type: Json<String>,
    id: Json<String>,
    status: Json<String>,
    // Slot, Appointment
    start: Json<String>,
    end: Json<String>,
    schedule: Json<Reference>,
    service_category: Json<Vec<Json<Concept>>>,
    service_type: Json<Vec<Json<Concept>>>,
    appointment_type: Json<Concept>,
    // Appointment
    created: Json<String>,
    slot: Json<Vec<Json<Reference>>>,
    participant: Json<Vec<Json<Participant>>>,
    cancelation_reason: Json<Concept>,
    extension: Json<Vec<Json<Extension>>>,
    // Patient, Organization, ServiceRequest
    identifier: Json<Vec<Json<Identifier>>>,
    birth_date: Json<String>,
    gender: Json<String>,
    address: Json<Vec<Json<Address>>>,
    general_practitioner: Json<Vec<Json<Reference>>>,
    // Encounter, ServiceRequest
    subject: Json<Reference>,
    appointment: Json<Vec<Json<Reference>>>,
    requester: Json<Reference>,
    performer: Json<Vec<Json<Reference>>>,
    performer_type: Json<Concept>,
    category: Json<Vec<Json<Concept>>>,
    code: Json<Concept>,
    priority: Json<String>,
    authored_on: Json<String>,
}

objects!(
    BundleJson,
    Meta,
    Entry,
    Coding,
    Concept,
    Identifier,
    Reference,
    Participant,
    Extension,
    Address,
    Resource
);

impl Concept {
    /// The codes of its codings under `system`.
    fn codes<'r>(&'r self, system: &'r str) -> impl Iterator<Item = &'r str> {
        self.coding
            .items()
            .filter(move |c| c.system.text() == Some(system))
            .filter_map(|c| c.code.text())
    }

    /// Every code of its codings, whatever their system.
    fn any_codes(&self) -> impl Iterator<Item = &str> {
        self.coding.items().filter_map(|c| c.code.text())
    }
}

/// The first code under `system` of any of `concepts`.
fn first_code<'r>(
    concepts: impl IntoIterator<Item = &'r Concept>,
    system: &'r str,
) -> Option<&'r str> {
    concepts.into_iter().find_map(|c| c.codes(system).next())
}

/// The first code under one of the specialty systems of any of `concepts`.
fn specialty<'r>(concepts: impl IntoIterator<Item = &'r Concept>) -> Option<&'r str> {
    concepts
        .into_iter()
        .find_map(|c| SPECIALTY_SYSTEMS.iter().find_map(|s| c.codes(s).next()))
}

/// The value of the first identifier under `system`.
fn identifier<'r>(ids: &'r Json<Vec<Json<Identifier>>>, system: &str) -> Option<&'r str> {
    ids.items()
        .find(|i| i.system.text() == Some(system))
        .and_then(|i| i.value.text())
}

// ---------------------------------------------------------------------------
// The bundle as an index of its resources.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Slot,
    Appointment,
    Patient,
    Encounter,
    ServiceRequest,
    Organization,
    Other,
}

impl Kind {
    fn of(resource_type: Option<&str>) -> Kind {
        match resource_type {
            Some("Slot") => Kind::Slot,
            Some("Appointment") => Kind::Appointment,
            Some("Patient") => Kind::Patient,
            Some("Encounter") => Kind::Encounter,
            Some("ServiceRequest") => Kind::ServiceRequest,
            Some("Organization") => Kind::Organization,
            _ => Kind::Other,
        }
    }
}

struct Indexed<'b> {
    kind: Kind,
    resource: &'b Resource,
}

/// A bundle's resources, and what the references between them say.
struct Book<'b> {
    /// One per entry, in order (entries without a resource as `Other`).
    entries: Vec<Indexed<'b>>,
    /// Entry index by `fullUrl` and by `Type/id`.
    by_reference: HashMap<String, usize>,
    /// The practice of `meta.source`.
    practice: Option<&'b str>,
    /// Slots an Appointment books (as its first slot).
    booked_slots: HashSet<usize>,
    /// Appointments a `finished` Encounter points at.
    finished: HashSet<usize>,
    /// The CSV headers the rows are built against.
    gp_columns: Result<Columns, FieldError>,
    referral_columns: Result<Columns, FieldError>,
}

static NO_RESOURCE: Resource = Resource {
    resource_type: Json::Absent,
    id: Json::Absent,
    status: Json::Absent,
    start: Json::Absent,
    end: Json::Absent,
    schedule: Json::Absent,
    service_category: Json::Absent,
    service_type: Json::Absent,
    appointment_type: Json::Absent,
    created: Json::Absent,
    slot: Json::Absent,
    participant: Json::Absent,
    cancelation_reason: Json::Absent,
    extension: Json::Absent,
    identifier: Json::Absent,
    birth_date: Json::Absent,
    gender: Json::Absent,
    address: Json::Absent,
    general_practitioner: Json::Absent,
    subject: Json::Absent,
    appointment: Json::Absent,
    requester: Json::Absent,
    performer: Json::Absent,
    performer_type: Json::Absent,
    category: Json::Absent,
    code: Json::Absent,
    priority: Json::Absent,
    authored_on: Json::Absent,
};

/// The CSV GP appointment-book columns, in the order [`GpRow::values`] gives them.
const GP_COLUMNS: [&str; 15] = [
    "practice_code",
    "appointment_id",
    "slot_id",
    "slot_start",
    "duration_minutes",
    "booked_at",
    "status",
    "appointment_mode",
    "hcp_type",
    "national_category",
    "nhs_number",
    "date_of_birth",
    "sex",
    "postcode",
    "cancelled_at",
];

/// The PAS referral columns, in the order [`Book::referral`] gives them.
const REFERRAL_COLUMNS: [&str; 10] = [
    "ubrn",
    "nhs_number",
    "date_of_birth",
    "sex",
    "postcode",
    "practice_code",
    "provider_code",
    "treatment_function_code",
    "priority",
    "received_date",
];

/// A GP appointment-book row.
#[derive(Default)]
struct GpRow<'a> {
    practice: &'a str,
    appointment: &'a str,
    slot: &'a str,
    start: String,
    duration: String,
    booked_at: String,
    status: &'a str,
    mode: &'a str,
    hcp: &'a str,
    category: &'a str,
    patient: PatientFields<'a>,
    cancelled_at: String,
}

impl GpRow<'_> {
    fn values(&self) -> [&str; 15] {
        let p = &self.patient;
        [
            self.practice,
            self.appointment,
            self.slot,
            &self.start,
            &self.duration,
            &self.booked_at,
            self.status,
            self.mode,
            self.hcp,
            self.category,
            p.nhs_number,
            p.birth_date,
            p.sex,
            p.postcode,
            &self.cancelled_at,
        ]
    }
}

/// A Patient's fields as the CSV formats have them (empty when missing).
#[derive(Default, Clone, Copy)]
struct PatientFields<'a> {
    nhs_number: &'a str,
    birth_date: &'a str,
    sex: &'a str,
    postcode: &'a str,
}

/// Whether a Patient's NHS number (when valid) is on the opt-out list: asked
/// before anything else of their record is read, so nothing else can reject it.
fn opted_out(patient: &Resource, cx: &Context<'_>) -> bool {
    identifier(&patient.identifier, NHS_NUMBER_SYSTEM)
        .and_then(|nhs| NhsNumber::parse(nhs).ok())
        .is_some_and(|nhs| cx.opt_out.contains(&nhs))
}

/// The FHIR elements the patient columns come from.
const PATIENT_NAMES: [(&str, &str); 4] = [
    ("nhs_number", "Patient.identifier(nhs-number)"),
    ("date_of_birth", "Patient.birthDate"),
    ("sex", "Patient.gender"),
    ("postcode", "Patient.address.postalCode"),
];

impl<'b> Book<'b> {
    fn new(bundle: &'b BundleJson) -> Self {
        let array = bundle.entry.get().map_or(&[][..], Vec::as_slice);
        // One per element of the array, objects or not, so locations count every entry.
        let entries: Vec<Indexed<'b>> = array
            .iter()
            .map(|e| {
                let resource = e
                    .get()
                    .and_then(|e| e.resource.get())
                    .unwrap_or(&NO_RESOURCE);
                Indexed {
                    kind: Kind::of(resource.resource_type.text()),
                    resource,
                }
            })
            .collect();
        let mut by_reference = HashMap::with_capacity(entries.len() * 2);
        for (i, (entry, indexed)) in array.iter().zip(&entries).enumerate() {
            if indexed.kind == Kind::Other {
                continue;
            }
            if let Some(url) = entry.get().and_then(|e| e.full_url.text()) {
                by_reference.entry(url.to_string()).or_insert(i);
            }
            if let (Some(t), Some(id)) = (
                indexed.resource.resource_type.text(),
                indexed.resource.id.text(),
            ) {
                by_reference.entry(format!("{t}/{id}")).or_insert(i);
            }
        }
        let practice = bundle
            .meta
            .get()
            .and_then(|m| m.source.text())
            .and_then(|s| s.strip_prefix("urn:ods:"))
            .map(str::trim)
            .filter(|s| !s.is_empty());
        let columns = |names: &[&str], required: &[&str]| {
            Columns::new(&csv::StringRecord::from(names.to_vec()), required)
        };
        let mut book = Book {
            entries,
            by_reference,
            practice,
            booked_slots: HashSet::new(),
            finished: HashSet::new(),
            gp_columns: columns(&GP_COLUMNS, GpAppointments::REQUIRED),
            referral_columns: columns(&REFERRAL_COLUMNS, PasReferrals::REQUIRED),
        };
        for e in &book.entries {
            match e.kind {
                Kind::Appointment => {
                    if let Some(slot) = e
                        .resource
                        .slot
                        .items()
                        .next()
                        .and_then(|r| book.resolve(r, Kind::Slot))
                    {
                        book.booked_slots.insert(slot);
                    }
                }
                Kind::Encounter if e.resource.status.text() == Some("finished") => {
                    for r in e.resource.appointment.items() {
                        if let Some(a) = book.resolve(r, Kind::Appointment) {
                            book.finished.insert(a);
                        }
                    }
                }
                _ => {}
            }
        }
        book
    }

    /// The entry a reference points at, when it is in the bundle and of `kind`.
    fn resolve(&self, reference: &Reference, kind: Kind) -> Option<usize> {
        let text = reference.reference.text()?;
        let i = self.by_reference.get(text).copied().or_else(|| {
            // An absolute or versioned reference: `…/Type/id[/_history/v]`.
            let path = text.split("/_history/").next().unwrap_or(text);
            let mut parts = path.rsplit('/');
            let id = parts.next()?;
            let resource_type = parts.next()?;
            self.by_reference
                .get(&format!("{resource_type}/{id}"))
                .copied()
        })?;
        (self.entries[i].kind == kind).then_some(i)
    }

    /// The resource a reference points at, or an error naming `element` when
    /// it is missing or points outside the bundle.
    fn target(
        &self,
        reference: Option<&Reference>,
        kind: Kind,
        element: &str,
        what: &str,
    ) -> Result<&'b Resource, FieldError> {
        let Some(reference) = reference.filter(|r| r.reference.text().is_some()) else {
            return Err(FieldError::new(
                element,
                format!("names no {what}"),
                format!("{element} is a reference to a {what} in the bundle"),
            ));
        };
        self.resolve(reference, kind)
            .map(|i| self.entries[i].resource)
            .ok_or_else(|| {
                FieldError::new(
                    element,
                    format!("refers to a {what} that is not in the bundle"),
                    format!(
                        "the {what} {element} refers to is an entry of the same bundle (by fullUrl or {what}/id)"
                    ),
                )
            })
    }

    /// The ODS code an organisation reference names: its identifier, or the
    /// identifier of the Organization it points at.
    fn ods(&self, reference: &'b Reference) -> Option<&'b str> {
        reference
            .identifier
            .get()
            .filter(|i| i.system.text().is_some_and(|s| ODS_SYSTEMS.contains(&s)))
            .and_then(|i| i.value.text())
            .or_else(|| {
                let org = self.entries[self.resolve(reference, Kind::Organization)?].resource;
                ODS_SYSTEMS
                    .iter()
                    .find_map(|system| identifier(&org.identifier, system))
            })
    }

    /// A Patient's fields.
    fn patient(&self, p: &'b Resource) -> Result<PatientFields<'b>, FieldError> {
        let sex = match p.gender.read("Patient.gender")? {
            None => "",
            Some("male") => "male",
            Some("female") => "female",
            Some("other") => "indeterminate",
            Some("unknown") => "not_known",
            Some(_) => {
                return Err(FieldError::new(
                    "Patient.gender",
                    "is not a FHIR administrative gender",
                    "one of male, female, other, unknown",
                ));
            }
        };
        Ok(PatientFields {
            nhs_number: identifier(&p.identifier, NHS_NUMBER_SYSTEM).unwrap_or(""),
            birth_date: p.birth_date.read("Patient.birthDate")?.unwrap_or(""),
            sex,
            postcode: p
                .address
                .items()
                .find_map(|a| a.postal_code.text())
                .unwrap_or(""),
        })
    }

    /// A booked slot: the Appointment at entry `i` with its Slot and Patient.
    fn appointment(
        &self,
        i: usize,
        a: &'b Resource,
        cx: &Context<'_>,
    ) -> Result<Mapped, FieldError> {
        // The opt-out first: nothing else of an opted-out patient's record is read.
        let actors: Vec<&Reference> = a
            .participant
            .items()
            .filter_map(|p| p.actor.get())
            .collect();
        let patient_ref = actors
            .iter()
            .copied()
            .find(|r| self.resolve(r, Kind::Patient).is_some())
            .or_else(|| actors.iter().copied().find(|r| names_type(r, "Patient")));
        let patient = self.target(
            patient_ref,
            Kind::Patient,
            "Appointment.participant.actor",
            "Patient",
        )?;
        if opted_out(patient, cx) {
            return Ok(Mapped::OptedOut);
        }
        let patient_fields = self.patient(patient)?;

        let slot = self.target(
            a.slot.items().next(),
            Kind::Slot,
            "Appointment.slot",
            "Slot",
        )?;
        let status = match a.status.read("Appointment.status")? {
            None => {
                return Err(FieldError::new(
                    "Appointment.status",
                    "is empty",
                    "required",
                ));
            }
            Some("fulfilled") => "Attended",
            Some("noshow") => "DNA",
            Some("cancelled") => {
                let reason = a
                    .cancelation_reason
                    .get()
                    .and_then(|c| c.any_codes().next())
                    .ok_or_else(|| {
                        FieldError::new(
                            "Appointment.cancelationReason",
                            "is empty while the appointment is cancelled",
                            "a cancelled appointment has a cancelationReason coding: pat… when the patient cancelled, another code when the practice did",
                        )
                    })?;
                if reason.starts_with("pat") {
                    "Cancelled by Patient"
                } else {
                    "Cancelled by Practice"
                }
            }
            Some("booked" | "arrived" | "checked-in") if self.finished.contains(&i) => "Attended",
            // Booked, no outcome yet: the booking's events; a later bundle adds the outcome.
            Some("booked" | "arrived" | "checked-in") => "Booked",
            Some(_) => {
                return Err(FieldError::new(
                    "Appointment.status",
                    "is not a status the appointment book maps",
                    "one of booked, arrived, checked-in, fulfilled, noshow, cancelled",
                ));
            }
        };
        let (practice, practice_element) = match self.practice {
            Some(p) => (p, "Bundle.meta.source"),
            None => match patient
                .general_practitioner
                .items()
                .find_map(|r| self.ods(r))
            {
                Some(p) => (p, "Patient.generalPractitioner"),
                None => self.schedule_practice(slot)?,
            },
        };
        let (mode, mode_element) = own_or_slot(
            (
                first_code(a.appointment_type.get(), GPAD_MODE_SYSTEM),
                "Appointment.appointmentType",
            ),
            (
                first_code(slot.appointment_type.get(), GPAD_MODE_SYSTEM),
                "Slot.appointmentType",
            ),
        );
        let (category, category_element) = own_or_slot(
            (
                first_code(a.service_category.items(), GPAD_CATEGORY_SYSTEM),
                "Appointment.serviceCategory",
            ),
            (
                first_code(slot.service_category.items(), GPAD_CATEGORY_SYSTEM),
                "Slot.serviceCategory",
            ),
        );
        let participant_types = a.participant.items().flat_map(|p| p.kind.items());
        let (hcp, hcp_element) = own_or_slot(
            (
                first_code(participant_types, GPAD_HCP_SYSTEM),
                "Appointment.participant.type",
            ),
            (
                first_code(slot.service_type.items(), GPAD_HCP_SYSTEM),
                "Slot.serviceType",
            ),
        );
        let (start, duration) = slot_times(slot)?;
        let row = GpRow {
            practice,
            appointment: a.id.read("Appointment.id")?.unwrap_or(""),
            slot: slot_id(slot)?,
            start,
            duration,
            booked_at: instant(&a.created, "Appointment.created")?,
            status,
            mode,
            hcp,
            category,
            patient: patient_fields,
            cancelled_at: cancelled_at(a)?,
        };
        let names = [
            ("practice_code", practice_element),
            ("appointment_id", "Appointment.id"),
            ("slot_id", "Slot.id"),
            ("slot_start", "Slot.start"),
            ("duration_minutes", "Slot.end"),
            ("booked_at", "Appointment.created"),
            ("status", "Appointment.status"),
            ("appointment_mode", mode_element),
            ("hcp_type", hcp_element),
            ("national_category", category_element),
            ("cancelled_at", "Appointment.extension(cancelled-at)"),
        ];
        self.gp(&row, &names, cx)
    }

    /// A Slot no Appointment books: capacity offered, or none.
    fn unbooked_slot(&self, slot: &'b Resource, cx: &Context<'_>) -> Result<Mapped, FieldError> {
        match slot.status.read("Slot.status")? {
            Some("free" | "busy" | "busy-tentative") => {}
            Some("busy-unavailable" | "entered-in-error") => return Ok(Mapped::Events(Vec::new())),
            None => return Err(FieldError::new("Slot.status", "is empty", "required")),
            Some(_) => {
                return Err(FieldError::new(
                    "Slot.status",
                    "is not a FHIR slot status",
                    "one of free, busy, busy-tentative, busy-unavailable, entered-in-error",
                ));
            }
        }
        let (practice, practice_element) = match self.practice {
            Some(p) => (p, "Bundle.meta.source"),
            None => self.schedule_practice(slot)?,
        };
        let (hcp, hcp_element) = match first_code(slot.service_type.items(), GPAD_HCP_SYSTEM) {
            Some(h) => (h, "Slot.serviceType"),
            None => (
                schedule_parts(slot).map_or("", |(_, hcp)| hcp),
                "Slot.schedule",
            ),
        };
        let (start, duration) = slot_times(slot)?;
        let row = GpRow {
            practice,
            slot: slot_id(slot)?,
            start,
            duration,
            status: "Available",
            mode: first_code(slot.appointment_type.get(), GPAD_MODE_SYSTEM).unwrap_or(""),
            hcp,
            category: first_code(slot.service_category.items(), GPAD_CATEGORY_SYSTEM).unwrap_or(""),
            ..GpRow::default()
        };
        let names = [
            ("practice_code", practice_element),
            ("slot_id", "Slot.id"),
            ("slot_start", "Slot.start"),
            ("duration_minutes", "Slot.end"),
            ("appointment_mode", "Slot.appointmentType"),
            ("hcp_type", hcp_element),
            ("national_category", "Slot.serviceCategory"),
        ];
        self.gp(&row, &names, cx)
    }

    /// The practice of a Slot's `Schedule/<practice>-<hcp type>` reference.
    fn schedule_practice(&self, slot: &'b Resource) -> Result<(&'b str, &'static str), FieldError> {
        schedule_parts(slot)
            .map(|(practice, _)| (practice, "Slot.schedule"))
            .ok_or_else(|| {
                FieldError::new(
                    "Bundle.meta.source",
                    "names no practice",
                    "Bundle.meta.source is urn:ods:<practice ODS code> (or the Patient's generalPractitioner names it)",
                )
            })
    }

    /// Maps a GP row, naming FHIR elements in its errors.
    fn gp(
        &self,
        row: &GpRow<'_>,
        names: &[(&str, &str)],
        cx: &Context<'_>,
    ) -> Result<Mapped, FieldError> {
        let columns = self.gp_columns.as_ref().map_err(Clone::clone)?;
        let record = csv::StringRecord::from(row.values().to_vec());
        let row = Row::new(columns, &record)?;
        GpAppointments::map(&row, cx).map_err(|e| {
            let e = rename(e, names);
            // Two CSV rules speak of the CSV's own columns and statuses.
            let rule = match e.field.as_str() {
                "Appointment.extension(cancelled-at)" if e.rule.contains("exactly when") => {
                    "the cancelled-at extension is given exactly when Appointment.status is cancelled"
                }
                "Slot.end" if e.problem != "is empty" => {
                    "Slot.end is 1 to 1440 whole minutes after Slot.start"
                }
                _ => return e,
            };
            FieldError {
                rule: rule.to_string(),
                ..e
            }
        })
    }

    /// A ServiceRequest as a PAS referral row.
    fn referral(&self, sr: &'b Resource, cx: &Context<'_>) -> Result<Mapped, FieldError> {
        let patient = self.target(
            sr.subject.get(),
            Kind::Patient,
            "ServiceRequest.subject",
            "Patient",
        )?;
        if opted_out(patient, cx) {
            return Ok(Mapped::OptedOut);
        }
        let patient = self.patient(patient)?;
        if matches!(
            sr.status.read("ServiceRequest.status")?,
            Some("draft" | "entered-in-error")
        ) {
            return Ok(Mapped::Events(Vec::new()));
        }
        let categories = || sr.category.items();
        let two_week_wait = categories()
            .flat_map(Concept::any_codes)
            .any(|c| c == TWO_WEEK_WAIT_CODE);
        let priority = match sr.priority.read("ServiceRequest.priority")? {
            _ if two_week_wait => "Two Week Wait",
            None => "",
            Some("routine") => "Routine",
            Some("urgent" | "asap") => "Urgent",
            Some("stat") => "Two Week Wait",
            Some(_) => {
                return Err(FieldError::new(
                    "ServiceRequest.priority",
                    "is not a FHIR request priority",
                    "one of routine, urgent, asap, stat",
                ));
            }
        };
        let (tf, tf_element) = [
            (
                specialty(categories()),
                "ServiceRequest.category(specialty)",
            ),
            (specialty(sr.code.get()), "ServiceRequest.code(specialty)"),
            (
                specialty(sr.performer_type.get()),
                "ServiceRequest.performerType(specialty)",
            ),
        ]
        .into_iter()
        .find_map(|(code, element)| code.map(|c| (c, element)))
        .unwrap_or(("", "ServiceRequest.category(specialty)"));
        let received = match sr.authored_on.read("ServiceRequest.authoredOn")? {
            None => String::new(),
            Some(d) if d.len() == 10 => d.to_string(),
            Some(_) => instant_of(&sr.authored_on, "ServiceRequest.authoredOn")?
                .map(|i| i.date.to_string())
                .unwrap_or_default(),
        };
        let values = [
            identifier(&sr.identifier, UBRN_SYSTEM).unwrap_or(""),
            patient.nhs_number,
            patient.birth_date,
            patient.sex,
            patient.postcode,
            sr.requester.get().and_then(|r| self.ods(r)).unwrap_or(""),
            sr.performer.items().find_map(|r| self.ods(r)).unwrap_or(""),
            tf,
            priority,
            &received,
        ];
        let names = [
            ("ubrn", "ServiceRequest.identifier(ubr-number)"),
            ("practice_code", "ServiceRequest.requester"),
            ("provider_code", "ServiceRequest.performer"),
            ("treatment_function_code", tf_element),
            ("priority", "ServiceRequest.priority"),
            ("received_date", "ServiceRequest.authoredOn"),
        ];
        let columns = self.referral_columns.as_ref().map_err(Clone::clone)?;
        let record = csv::StringRecord::from(values.to_vec());
        let row = Row::new(columns, &record)?;
        PasReferrals::map(&row, cx).map_err(|e| rename(e, &names))
    }
}

/// The Appointment's code when it has one, else its Slot's, with the element
/// it came from (the Appointment's when neither has one).
fn own_or_slot<'r>(
    own: (Option<&'r str>, &'static str),
    slot: (Option<&'r str>, &'static str),
) -> (&'r str, &'static str) {
    match (own, slot) {
        ((Some(code), element), _) | (_, (Some(code), element)) => (code, element),
        ((None, element), (None, _)) => ("", element),
    }
}

/// Whether a reference's text names a resource of `resource_type` (`…/Type/id`).
fn names_type(reference: &Reference, resource_type: &str) -> bool {
    reference.reference.text().is_some_and(|t| {
        let path = t.split("/_history/").next().unwrap_or(t);
        path.rsplit('/').nth(1) == Some(resource_type)
    })
}

/// The practice and HCP type of a Slot's `Schedule/<practice>-<hcp type>` reference.
fn schedule_parts(slot: &Resource) -> Option<(&str, &str)> {
    let text = slot.schedule.get()?.reference.text()?;
    let id = text.rsplit('/').next()?;
    id.split_once('-')
        .filter(|(practice, hcp)| !practice.is_empty() && !hcp.is_empty())
}

fn slot_id(slot: &Resource) -> Result<&str, FieldError> {
    slot.id
        .read("Slot.id")?
        .ok_or_else(|| FieldError::new("Slot.id", "is empty", "required"))
}

/// The Slot's start (as the row's text) and its length in minutes (as text;
/// the GP mapping checks its range). Missing members give empty text.
fn slot_times(slot: &Resource) -> Result<(String, String), FieldError> {
    let start = instant_of(&slot.start, "Slot.start")?;
    let end = instant_of(&slot.end, "Slot.end")?;
    let duration = match (&start, &end) {
        (Some(s), Some(e)) => {
            let d = e.utc - s.utc;
            if d.subsec_nanos() == 0 && d.num_seconds() % 60 == 0 {
                d.num_minutes().to_string()
            } else {
                // Not whole minutes: no number, and the GP mapping says so.
                "-".to_string()
            }
        }
        _ => String::new(),
    };
    Ok((start.map(|s| s.text).unwrap_or_default(), duration))
}

/// An instant member as the row's text (empty when absent).
fn instant(member: &Json<String>, element: &str) -> Result<String, FieldError> {
    Ok(instant_of(member, element)?
        .map(|i| i.text)
        .unwrap_or_default())
}

/// An instant member, `None` when absent.
fn instant_of(member: &Json<String>, element: &str) -> Result<Option<Instant>, FieldError> {
    member
        .read(element)?
        .map(|t| {
            Instant::parse(t).ok_or_else(|| {
                FieldError::new(
                    element,
                    "is not an instant with an offset",
                    "an RFC 3339 date-time with its offset or Z, e.g. 2025-04-07T09:10:00+01:00",
                )
            })
        })
        .transpose()
}

/// The Appointment's cancelled-at extension, as the row's text.
fn cancelled_at(a: &Resource) -> Result<String, FieldError> {
    match a
        .extension
        .items()
        .find(|e| e.url.text() == Some(CANCELLED_AT_URL))
    {
        None => Ok(String::new()),
        Some(e) => instant(&e.value_date_time, "Appointment.extension(cancelled-at)"),
    }
}

/// A FHIR instant, re-written in UK time.
struct Instant {
    /// UK local time with the offset in force then, e.g. `2025-04-07T09:10:00+01:00`.
    /// The offset is written out, so the instant stays exact even in the hour
    /// the clocks repeat.
    text: String,
    /// The UK date.
    date: NaiveDate,
    utc: DateTime<Utc>,
}

impl Instant {
    /// An RFC 3339 date-time with an offset or `Z`.
    fn parse(text: &str) -> Option<Instant> {
        let utc = DateTime::parse_from_rfc3339(text).ok()?.with_timezone(&Utc);
        let summer = utc.naive_utc() + Duration::hours(1);
        let (local, offset) = if uk_time::is_bst(summer) {
            (summer, "+01:00")
        } else {
            (utc.naive_utc(), "+00:00")
        };
        Some(Instant {
            text: format!("{}{offset}", local.format("%Y-%m-%dT%H:%M:%S%.f")),
            date: local.date(),
            utc,
        })
    }
}

/// A CSV mapping's error with its columns renamed to the FHIR elements of
/// `names` (column, element), in the field and wherever the problem and rule
/// mention them.
fn rename(e: FieldError, names: &[(&str, &str)]) -> FieldError {
    let lookup = |word: &str| {
        names
            .iter()
            .chain(PATIENT_NAMES.iter())
            .find(|(column, _)| *column == word)
            .map(|(_, element)| *element)
    };
    let words = |text: &str| {
        let mut out = String::with_capacity(text.len() + 16);
        let mut rest = text;
        while let Some(start) = rest.find(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            out.push_str(&rest[..start]);
            rest = &rest[start..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let word = &rest[..end];
            out.push_str(lookup(word).unwrap_or(word));
            rest = &rest[end..];
        }
        out.push_str(rest);
        out
    };
    FieldError {
        field: lookup(&e.field).map_or(e.field.clone(), str::to_string),
        problem: words(&e.problem),
        rule: words(&e.rule),
    }
}

#[cfg(test)]
mod tests {
    use pathflow_schemas::event::{Event, Payload};
    use pathflow_schemas::{Decile, EventType};
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::sources::testing::{OPTED_OUT, events, read_rows, with_context};

    const KEY: &str = "fhir-unit";
    const GP_SOURCE: &str = "gp:y90001:appointments";
    const REFERRAL_SOURCE: &str = "ers:referrals";
    const NHS: &str = "9990000018";

    /// `bytes` read as a Bundle under the fixture of `sources::testing`.
    fn read_as(source: &str, file: &str, bytes: &[u8]) -> Vec<(Location, Outcome)> {
        with_context(KEY, source, |cx| read_bundle(bytes, file, cx))
    }

    fn read(entries: Vec<Value>) -> Vec<(Location, Outcome)> {
        read_as(GP_SOURCE, "request-1", &bundle(entries))
    }

    /// Outcomes by entry line.
    fn lines(out: &[(Location, Outcome)]) -> Vec<u64> {
        out.iter().map(|(l, _)| l.line).collect()
    }

    fn bundle(entries: Vec<Value>) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "resourceType": "Bundle",
            "id": "Y90001-2025-W15",
            "type": "collection",
            "meta": {"source": "urn:ods:Y90001"},
            "entry": entries,
        }))
        .unwrap()
    }

    fn entry(resource: Value) -> Value {
        let url = format!(
            "urn:pathflow:{}/{}",
            resource["resourceType"].as_str().unwrap(),
            resource["id"].as_str().unwrap()
        );
        json!({"fullUrl": url, "resource": resource})
    }

    fn concept(system: &str, code: &str) -> Value {
        json!({"coding": [{"system": system, "code": code}]})
    }

    fn slot(id: &str, start: &str, end: &str, status: &str, mode: &str) -> Value {
        entry(json!({
            "resourceType": "Slot",
            "id": id,
            "schedule": {"reference": "Schedule/Y90001-gp"},
            "status": status,
            "start": start,
            "end": end,
            "serviceCategory": [concept(GPAD_CATEGORY_SYSTEM, "General Consultation Acute")],
            "appointmentType": concept(GPAD_MODE_SYSTEM, mode),
        }))
    }

    fn patient(id: &str, nhs: &str) -> Value {
        entry(json!({
            "resourceType": "Patient",
            "id": id,
            "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": nhs}],
            "birthDate": "1977-09-24",
            "gender": "male",
            "address": [{"postalCode": "QX1 0AA"}],
            "generalPractitioner": [{"identifier": {"system": ODS_SYSTEMS[0], "value": "Y90001"}}],
        }))
    }

    /// The Appointment of the CSV tests' booked row, with `status` and extra members.
    fn appointment(status: &str, extra: Value) -> Value {
        let mut a = json!({
            "resourceType": "Appointment",
            "id": "Y90001-A0000375",
            "status": status,
            "serviceCategory": [concept(GPAD_CATEGORY_SYSTEM, "General Consultation Acute")],
            "appointmentType": concept(GPAD_MODE_SYSTEM, "Face-to-Face"),
            "start": "2025-04-07T08:30:00+01:00",
            "end": "2025-04-07T08:40:00+01:00",
            "minutesDuration": 10,
            "created": "2025-04-04T16:46:00+01:00",
            "slot": [{"reference": "Slot/Y90001-S0000375"}],
            "participant": [
                {"actor": {"reference": "Patient/Y90001-P1"}, "status": "accepted"},
                {"type": [concept(GPAD_HCP_SYSTEM, "GP")], "status": "accepted"},
            ],
        });
        for (k, v) in extra.as_object().unwrap() {
            a[k] = v.clone();
        }
        entry(a)
    }

    fn cancelled(reason: &str, at: &str) -> Value {
        json!({
            "cancelationReason": concept("http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason", reason),
            "extension": [{"url": CANCELLED_AT_URL, "valueDateTime": at}],
        })
    }

    /// The booked slot of the CSV tests: Slot, Patient and `appointment`.
    fn booked(nhs: &str, appointment: Value) -> Vec<Value> {
        vec![
            slot(
                "Y90001-S0000375",
                "2025-04-07T08:30:00+01:00",
                "2025-04-07T08:40:00+01:00",
                "busy",
                "Face-to-Face",
            ),
            patient("Y90001-P1", nhs),
            appointment,
        ]
    }

    const GP_HEADER: &str = "practice_code,appointment_id,slot_id,slot_start,duration_minutes,booked_at,status,appointment_mode,hcp_type,national_category,nhs_number,date_of_birth,sex,postcode,cancelled_at";

    /// The CSV book's outcome of `row` under the same key and source.
    fn csv_gp(row: &str) -> Outcome {
        read_rows::<GpAppointments>(KEY, GP_SOURCE, "gp/appointments.csv", GP_HEADER, &[row])
            .remove(0)
    }

    fn csv_booked(status: &str, cancelled_at: &str) -> String {
        format!(
            "Y90001,Y90001-A0000375,Y90001-S0000375,2025-04-07T08:30:00,10,2025-04-04T16:46:00,{status},Face-to-Face,GP,General Consultation Acute,{NHS},1977-09-24,Male,QX1 0AA,{cancelled_at}"
        )
    }

    fn rejected(outcome: &Outcome) -> &FieldError {
        match outcome {
            Outcome::Rejected(r) => &r.error,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    fn types(events: &[Event]) -> Vec<EventType> {
        events.iter().map(Event::event_type).collect()
    }

    #[test]
    fn booked_slots_give_the_events_of_the_csv_row() {
        let cases = [
            (
                appointment("fulfilled", json!({})),
                csv_booked("Attended", ""),
            ),
            (appointment("noshow", json!({})), csv_booked("DNA", "")),
            (
                appointment("cancelled", cancelled("pat", "2025-04-06T00:38:00+01:00")),
                csv_booked("Cancelled by Patient", "2025-04-06T00:38:00"),
            ),
            (
                appointment(
                    "cancelled",
                    cancelled("prov-dch", "2025-04-06T00:38:00+01:00"),
                ),
                csv_booked("Cancelled by Practice", "2025-04-06T00:38:00"),
            ),
        ];
        for (a, row) in cases {
            let out = read(booked(NHS, a));
            // One outcome, at the Appointment's entry: the Slot and Patient give none of their own.
            assert_eq!(lines(&out), [3]);
            assert_eq!(out[0].0.file, "request-1");
            let expected = csv_gp(&row);
            assert_eq!(events(&expected).len(), 3);
            assert_eq!(out[0].1, expected, "{row}");
        }
    }

    #[test]
    fn a_free_slot_gives_the_events_of_an_available_row() {
        let out = read(vec![slot(
            "Y90001-S0000409",
            "2025-04-07T08:00:00+01:00",
            "2025-04-07T08:10:00+01:00",
            "free",
            "Telephone",
        )]);
        assert_eq!(lines(&out), [1]);
        let expected = csv_gp(
            "Y90001,,Y90001-S0000409,2025-04-07T08:00:00,10,,Available,Telephone,GP,General Consultation Acute,,,,,",
        );
        assert_eq!(types(events(&expected)), [EventType::SlotPublished]);
        assert_eq!(out[0].1, expected);
    }

    #[test]
    fn instants_in_other_offsets_give_the_same_events() {
        let a = appointment("cancelled", cancelled("pat", "2025-04-05T23:38:00Z"));
        let mut entries = booked(NHS, a);
        entries[0]["resource"]["start"] = json!("2025-04-07T07:30:00Z");
        entries[0]["resource"]["end"] = json!("2025-04-07T09:40:00+02:00");
        entries[2]["resource"]["created"] = json!("2025-04-04T15:46:00.000Z");
        let out = read(entries);
        assert_eq!(
            out[0].1,
            csv_gp(&csv_booked("Cancelled by Patient", "2025-04-06T00:38:00"))
        );
    }

    #[test]
    fn a_wrong_check_digit_rejects_the_entry_naming_the_element_not_the_digits() {
        let bad = "9990000019";
        let out = read(booked(bad, appointment("fulfilled", json!({}))));
        assert_eq!(lines(&out), [3]);
        let e = rejected(&out[0].1);
        assert_eq!(e.field, "Patient.identifier(nhs-number)");
        let Outcome::Rejected(r) = &out[0].1 else {
            unreachable!()
        };
        let text = format!("{r:?} {r}");
        assert!(!text.contains(bad), "{text}");
        // No run of digits that could be part of the number ("Modulus 11" aside).
        for t in [&e.problem, &e.rule] {
            let digits: String = t.chars().filter(char::is_ascii_digit).collect();
            assert!(digits.len() <= 4, "{t}");
        }
        assert!(e.problem.contains("check digit"), "{e:?}");
    }

    #[test]
    fn an_opted_out_patient_leaves_nothing_not_even_a_broken_entry() {
        let broken = appointment("entered-in-error", json!({"created": "yesterday"}));
        for a in [appointment("fulfilled", json!({})), broken] {
            let out = read(booked(OPTED_OUT, a));
            assert_eq!(out, [(out[0].0.clone(), Outcome::OptedOut)]);
            assert_eq!(out[0].0.line, 3);
        }
        let mut broken_patient = booked(OPTED_OUT, appointment("fulfilled", json!({})));
        broken_patient[1]["resource"]["gender"] = json!("x");
        broken_patient[1]["resource"]["birthDate"] = json!(19770924);
        assert_eq!(read(broken_patient)[0].1, Outcome::OptedOut);
    }

    #[test]
    fn a_finished_encounter_makes_a_booked_appointment_attended_and_adds_nothing_else() {
        let encounter = |status: &str| {
            entry(json!({
                "resourceType": "Encounter",
                "id": "Y90001-E0000375",
                "status": status,
                "subject": {"reference": "Patient/Y90001-P1"},
                "appointment": [{"reference": "Appointment/Y90001-A0000375"}],
            }))
        };
        let mut entries = booked(NHS, appointment("booked", json!({})));
        entries.push(encounter("finished"));
        let out = read(entries);
        assert_eq!(lines(&out), [3]);
        assert_eq!(out[0].1, csv_gp(&csv_booked("Attended", "")));

        // The Appointment's own outcome stands; without an Encounter, "booked" has none.
        let mut entries = booked(NHS, appointment("noshow", json!({})));
        entries.push(encounter("finished"));
        assert_eq!(read(entries)[0].1, csv_gp(&csv_booked("DNA", "")));
        // Without an Encounter, "booked" is a booking whose outcome is still to come.
        let out = read(booked(NHS, appointment("booked", json!({}))));
        assert_eq!(out[0].1, csv_gp(&csv_booked("Booked", "")));
        let out = read(booked(NHS, appointment("proposed", json!({}))));
        assert_eq!(rejected(&out[0].1).field, "Appointment.status");
    }

    #[test]
    fn unknown_resources_are_ignored_and_locations_count_every_entry() {
        let mut entries = vec![
            json!({"resource": {"resourceType": "Observation", "id": "o1", "status": "final"}}),
            json!("not an entry"),
            json!({"fullUrl": "urn:uuid:1"}),
        ];
        entries.extend(booked(NHS, appointment("fulfilled", json!({}))));
        let out = read(entries);
        assert_eq!(lines(&out), [6]);
        assert_eq!(out[0].1, csv_gp(&csv_booked("Attended", "")));
    }

    #[test]
    fn references_outside_the_bundle_reject_the_entry() {
        let mut no_slot = booked(NHS, appointment("fulfilled", json!({})));
        no_slot.remove(0);
        let mut no_patient = booked(NHS, appointment("fulfilled", json!({})));
        no_patient.remove(1);
        let no_actor = booked(
            NHS,
            appointment(
                "fulfilled",
                json!({"participant": [{"status": "accepted"}]}),
            ),
        );
        for (entries, field) in [
            (no_slot, "Appointment.slot"),
            (no_patient, "Appointment.participant.actor"),
            (no_actor, "Appointment.participant.actor"),
        ] {
            let out = read(entries);
            assert_eq!(out.len(), 1, "{out:?}");
            let e = rejected(&out[0].1);
            assert_eq!(e.field, field, "{e:?}");
        }
    }

    #[test]
    fn references_by_full_url_and_absolute_url_resolve() {
        let a = appointment(
            "fulfilled",
            json!({
                "slot": [{"reference": "urn:pathflow:Slot/Y90001-S0000375"}],
                "participant": [
                    {"actor": {"reference": "https://gp.example/fhir/Patient/Y90001-P1/_history/2"}},
                    {"type": [concept(GPAD_HCP_SYSTEM, "GP")]},
                ],
            }),
        );
        let out = read(booked(NHS, a));
        assert_eq!(out[0].1, csv_gp(&csv_booked("Attended", "")));
    }

    #[test]
    fn errors_of_the_csv_mapping_name_fhir_elements() {
        let cases = [
            (
                appointment("fulfilled", json!({"created": "2025-04-07T09:00:00+01:00"})),
                "Appointment.created",
            ),
            (
                appointment(
                    "cancelled",
                    json!({"cancelationReason": concept("x", "pat")}),
                ),
                "Appointment.extension(cancelled-at)",
            ),
            (
                appointment("cancelled", json!({})),
                "Appointment.cancelationReason",
            ),
            (
                appointment("fulfilled", json!({"status": 3})),
                "Appointment.status",
            ),
            (
                appointment(
                    "fulfilled",
                    json!({"appointmentType": concept(GPAD_MODE_SYSTEM, "Carrier Pigeon")}),
                ),
                "Appointment.appointmentType",
            ),
            (
                appointment("fulfilled", json!({"created": "2025-04-04"})),
                "Appointment.created",
            ),
            (
                appointment("fulfilled", json!({"id": ""})),
                "Appointment.id",
            ),
        ];
        for (a, field) in cases {
            let out = read(booked(NHS, a));
            let e = rejected(&out[0].1);
            assert_eq!(e.field, field, "{e:?}");
            // No CSV column is named (as a word of its own).
            let text = format!("{} {}", e.problem, e.rule);
            let mut words = text
                .split_whitespace()
                .map(|w| w.trim_matches(|c: char| ",;:()".contains(c)));
            assert!(!words.any(|w| GP_COLUMNS.contains(&w)), "{e:?}");
        }
        let out = read(booked(
            NHS,
            appointment("fulfilled", json!({"created": "2025-04-07T09:00:00+01:00"})),
        ));
        let e = rejected(&out[0].1);
        assert_eq!(e.problem, "is after Slot.start");
        assert_eq!(e.rule, "Appointment.created is on or before Slot.start");

        let mut short = booked(NHS, appointment("fulfilled", json!({})));
        short[0]["resource"]["end"] = json!("2025-04-07T08:30:00+01:00");
        assert_eq!(rejected(&read(short)[0].1).field, "Slot.end");
        let mut patient = booked(NHS, appointment("fulfilled", json!({})));
        patient[1]["resource"]["birthDate"] = json!("2026-01-01");
        assert_eq!(rejected(&read(patient)[0].1).field, "Patient.birthDate");
    }

    #[test]
    fn event_ids_depend_on_the_records_not_the_file_name() {
        let entries = booked(NHS, appointment("fulfilled", json!({})));
        let a = read_as(GP_SOURCE, "request-1", &bundle(entries.clone()));
        let b = read_as(GP_SOURCE, "gp/fhir/Y90001/2025-W15.json", &bundle(entries));
        assert_eq!(a[0].1, b[0].1);
    }

    const REFERRAL_HEADER: &str = "ubrn,nhs_number,date_of_birth,sex,postcode,practice_code,provider_code,treatment_function_code,priority,received_date";

    fn service_request(extra: Value) -> Vec<Value> {
        let mut sr = json!({
            "resourceType": "ServiceRequest",
            "id": "sr-1",
            "status": "active",
            "intent": "order",
            "identifier": [{"system": UBRN_SYSTEM, "value": "000123456789"}],
            "subject": {"reference": "Patient/Y90001-P1"},
            "requester": {"identifier": {"system": ODS_SYSTEMS[0], "value": "Y90001"}},
            "performer": [{"reference": "Organization/R9A"}],
            "category": [concept(SPECIALTY_SYSTEMS[0], "110")],
            "priority": "routine",
            "authoredOn": "2025-04-06T23:30:00Z",
        });
        for (k, v) in extra.as_object().unwrap() {
            sr[k] = v.clone();
        }
        vec![
            patient("Y90001-P1", NHS),
            entry(json!({
                "resourceType": "Organization",
                "id": "R9A",
                "identifier": [{"system": ODS_SYSTEMS[0], "value": "R9A"}],
            })),
            entry(sr),
        ]
    }

    fn read_referral(entries: Vec<Value>) -> Vec<(Location, Outcome)> {
        read_as(REFERRAL_SOURCE, "request-2", &bundle(entries))
    }

    fn csv_referral(priority: &str) -> Outcome {
        let row = format!(
            "000123456789,{NHS},1977-09-24,Male,QX1 0AA,Y90001,R9A,110,{priority},2025-04-07"
        );
        read_rows::<PasReferrals>(
            KEY,
            REFERRAL_SOURCE,
            "pas/R9A/referrals.csv",
            REFERRAL_HEADER,
            &[&row],
        )
        .remove(0)
    }

    #[test]
    fn a_service_request_gives_the_referral_created_of_the_pas_row() {
        let out = read_referral(service_request(json!({})));
        assert_eq!(lines(&out), [3]);
        let expected = csv_referral("Routine");
        assert_eq!(types(events(&expected)), [EventType::ReferralCreated]);
        assert_eq!(out[0].1, expected);
        let Payload::ReferralCreated(created) = &events(&out[0].1)[0].payload else {
            panic!()
        };
        assert_eq!(created.patient.deprivation_decile, Decile::new(3).ok());
    }

    #[test]
    fn service_request_priorities_and_the_two_week_wait_category() {
        let two_week_wait = json!([
            concept(SPECIALTY_SYSTEMS[1], "110"),
            concept("https://example.org/referral-category", TWO_WEEK_WAIT_CODE),
        ]);
        let cases = [
            (json!({"priority": "urgent"}), "Urgent"),
            (json!({"priority": "asap"}), "Urgent"),
            (json!({"priority": "stat"}), "Two Week Wait"),
            (json!({"category": two_week_wait}), "Two Week Wait"),
        ];
        for (extra, priority) in cases {
            let out = read_referral(service_request(extra));
            assert_eq!(out[0].1, csv_referral(priority), "{priority}");
        }
        // The treatment function may sit in `code`, and the date may come alone.
        let out = read_referral(service_request(json!({
            "category": [],
            "code": concept(SPECIALTY_SYSTEMS[0], "110"),
            "authoredOn": "2025-04-07",
        })));
        assert_eq!(out[0].1, csv_referral("Routine"));
    }

    #[test]
    fn broken_service_requests_are_rejected_naming_fhir_elements() {
        let cases = [
            (json!({"priority": "whenever"}), "ServiceRequest.priority"),
            (
                json!({"identifier": []}),
                "ServiceRequest.identifier(ubr-number)",
            ),
            (
                json!({"identifier": [{"system": UBRN_SYSTEM, "value": "12345"}]}),
                "ServiceRequest.identifier(ubr-number)",
            ),
            (json!({"performer": []}), "ServiceRequest.performer"),
            (
                json!({"requester": {"reference": "Practitioner/x"}}),
                "ServiceRequest.requester",
            ),
            (
                json!({"category": []}),
                "ServiceRequest.category(specialty)",
            ),
            (json!({"authoredOn": "soon"}), "ServiceRequest.authoredOn"),
            (
                json!({"subject": {"reference": "Patient/nobody"}}),
                "ServiceRequest.subject",
            ),
        ];
        for (extra, field) in cases {
            let out = read_referral(service_request(extra));
            let e = rejected(&out[0].1);
            assert_eq!(e.field, field, "{e:?}");
            let text = format!("{} {}", e.problem, e.rule);
            assert!(!text.contains("12345") && !text.contains(NHS), "{e:?}");
        }
        let mut opted_out = service_request(json!({"priority": "whenever"}));
        opted_out[0] = patient("Y90001-P1", OPTED_OUT);
        assert_eq!(read_referral(opted_out)[0].1, Outcome::OptedOut);
        let draft = read_referral(service_request(json!({"status": "draft"})));
        assert_eq!(draft[0].1, Outcome::Events(Vec::new()));
    }

    #[test]
    fn what_is_not_a_bundle_is_one_rejection_saying_what_to_send() {
        let inputs: [&[u8]; 7] = [
            b"not json",
            b"\xff\xfe{",
            b"[]",
            br#"{"resourceType":"Patient","entry":[]}"#,
            br#"{"resourceType":"Bundle"}"#,
            br#"{"resourceType":"Bundle","entry":{"resource":{}}}"#,
            br#"{"resourceType":"Bundle","entry":[]} trailing"#,
        ];
        for input in inputs {
            let out = read_as(GP_SOURCE, "request-3", input);
            assert_eq!(out.len(), 1, "{out:?}");
            assert_eq!(out[0].0.line, 0);
            let e = rejected(&out[0].1);
            assert_eq!(e.field, "(bundle)");
            assert!(e.rule.contains("Bundle"), "{e:?}");
        }
        // Nesting too deep for a reader's stack is refused, not followed.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let out = read_as(GP_SOURCE, "request-3", deep.as_bytes());
        assert_eq!(rejected(&out[0].1).field, "(bundle)");
        let deep_member = format!(
            r#"{{"resourceType":"Bundle","entry":[{{"resource":{{"text":{}{}}}}}]}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let out = read_as(GP_SOURCE, "request-3", deep_member.as_bytes());
        assert!(out.len() <= 1, "{out:?}");
        let bom = read_as(
            GP_SOURCE,
            "request-3",
            b"\xEF\xBB\xBF{\"resourceType\":\"Bundle\",\"entry\":[]}",
        );
        assert!(bom.is_empty(), "{bom:?}");
        let empty = read_as(
            GP_SOURCE,
            "request-3",
            br#"{"resourceType":"Bundle","entry":[]}"#,
        );
        assert!(empty.is_empty());
    }

    #[test]
    fn the_gp_columns_are_the_csv_books() {
        for column in GpAppointments::REQUIRED {
            assert!(GP_COLUMNS.contains(column), "{column}");
        }
        for column in PasReferrals::REQUIRED {
            assert!(REFERRAL_COLUMNS.contains(column), "{column}");
        }
    }

    // Property tests: whatever arrives, `read_bundle` answers without
    // panicking, and its rejections never carry the identifiers it was sent.

    /// Identifiers the generated bundles hold, which no rejection may repeat.
    const IDENTIFIERS: &[&str] = &[
        "9990000018",
        "9434765919",
        "9990000019",
        "1977-09-24",
        "QX1 0AA",
        "000123456789",
    ];

    /// Words bundles are made of, right and wrong.
    const WORDS: &[&str] = &[
        "Bundle",
        "Slot",
        "Appointment",
        "Patient",
        "Encounter",
        "ServiceRequest",
        "Organization",
        "Observation",
        "Slot/s1",
        "Slot/s2",
        "Patient/p1",
        "Appointment/a1",
        "Organization/o1",
        "urn:pathflow:Slot/s1",
        "s1",
        "s2",
        "p1",
        "a1",
        "o1",
        "Schedule/Y90001-gp",
        "Schedule/-",
        "fulfilled",
        "noshow",
        "cancelled",
        "booked",
        "finished",
        "free",
        "busy",
        "busy-unavailable",
        "pat",
        "prov",
        "routine",
        "urgent",
        "asap",
        "stat",
        "draft",
        "two-week-wait",
        "male",
        "other",
        "2025-04-07T08:30:00+01:00",
        "2025-04-07T08:40:00Z",
        "2025-04-07",
        "2025-02-30",
        "9999-12-31T23:59:60Z",
        "0000-01-01T00:00:00+23:59",
        "urn:ods:Y90001",
        "urn:ods:",
        "Y90001",
        "110",
        "Face-to-Face",
        "GP",
        "General Consultation Acute",
        "",
        " ",
        NHS_NUMBER_SYSTEM,
        UBRN_SYSTEM,
        "https://fhir.nhs.uk/Id/ods-organization-code",
        GPAD_MODE_SYSTEM,
        GPAD_HCP_SYSTEM,
        GPAD_CATEGORY_SYSTEM,
        CANCELLED_AT_URL,
        "https://fhir.nhs.uk/CodeSystem/Specialty",
        "9990000018",
        "9434765919",
        "9990000019",
        "1977-09-24",
        "QX1 0AA",
        "000123456789",
    ];

    /// Members of the resources pathflow reads, and some it does not.
    const MEMBERS: &[&str] = &[
        "resourceType",
        "id",
        "status",
        "start",
        "end",
        "schedule",
        "serviceCategory",
        "serviceType",
        "appointmentType",
        "created",
        "slot",
        "participant",
        "cancelationReason",
        "extension",
        "identifier",
        "birthDate",
        "gender",
        "address",
        "generalPractitioner",
        "subject",
        "appointment",
        "requester",
        "performer",
        "performerType",
        "category",
        "code",
        "priority",
        "authoredOn",
        "reference",
        "coding",
        "system",
        "value",
        "url",
        "valueDateTime",
        "actor",
        "type",
        "postalCode",
        "fullUrl",
        "resource",
        "meta",
        "source",
        "entry",
        "text",
    ];

    fn word() -> impl Strategy<Value = Value> {
        prop_oneof![
            4 => prop::sample::select(WORDS).prop_map(Value::from),
            1 => "\\PC{0,12}".prop_map(Value::from),
        ]
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            6 => word(),
            1 => Just(Value::Null),
            1 => any::<bool>().prop_map(Value::from),
            1 => any::<i64>().prop_map(Value::from),
            1 => any::<f64>().prop_map(Value::from),
        ]
    }

    /// Any JSON, with FHIR-ish keys and words.
    fn any_json() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(4, 48, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop::sample::select(MEMBERS).prop_map(String::from),
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// The shapes FHIR members have (codings, references, identifiers), or anything.
    fn member() -> impl Strategy<Value = Value> {
        let coding =
            (word(), word()).prop_map(|(system, code)| json!({"system": system, "code": code}));
        let concept = prop::collection::vec(coding, 0..3)
            .prop_map(|c| json!({"coding": c}))
            .boxed();
        let identifier = (word(), word())
            .prop_map(|(system, value)| json!({"system": system, "value": value}))
            .boxed();
        let reference = (word(), prop::option::of(identifier.clone()))
            .prop_map(|(r, i)| match i {
                Some(i) => json!({"reference": r, "identifier": i}),
                None => json!({"reference": r}),
            })
            .boxed();
        prop_oneof![
            3 => word(),
            1 => concept.clone(),
            1 => prop::collection::vec(concept.clone(), 0..3).prop_map(Value::from),
            1 => reference.clone(),
            1 => prop::collection::vec(reference.clone(), 0..3).prop_map(Value::from),
            1 => prop::collection::vec(identifier, 0..3).prop_map(Value::from),
            1 => (reference, prop::collection::vec(concept, 0..2))
                .prop_map(|(actor, kind)| json!([{"actor": actor, "type": kind}])),
            1 => (word(), word()).prop_map(|(url, at)| json!([{"url": url, "valueDateTime": at}])),
            1 => any_json(),
        ]
    }

    fn resource() -> impl Strategy<Value = Value> {
        (
            prop::sample::select(WORDS),
            prop::sample::select(&["s1", "s2", "p1", "a1", "o1", "", "Y90001-gp"][..]),
            prop::collection::btree_map(prop::sample::select(MEMBERS), member(), 0..12),
        )
            .prop_map(|(kind, id, members)| {
                let mut r: serde_json::Map<String, Value> = members
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect();
                r.entry("resourceType").or_insert_with(|| kind.into());
                r.entry("id").or_insert_with(|| id.into());
                Value::Object(r)
            })
    }

    fn bundle_json() -> impl Strategy<Value = Value> {
        let entry = prop_oneof![
            6 => (prop::option::of(word()), resource()).prop_map(|(url, r)| match url {
                Some(url) => json!({"fullUrl": url, "resource": r}),
                None => json!({"resource": r}),
            }),
            1 => any_json(),
        ];
        (
            prop::sample::select(&["Bundle", "Bundle", "Bundle", "Patient", ""][..]),
            prop::option::of(member()),
            prop_oneof![
                8 => prop::collection::vec(entry, 0..10).prop_map(Value::from),
                1 => any_json(),
            ],
        )
            .prop_map(|(kind, source, entries)| {
                let mut b = json!({"resourceType": kind, "type": "collection", "entry": entries});
                if let Some(source) = source {
                    b["meta"] = json!({"source": source});
                }
                b
            })
    }

    fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
        let out = read_as(GP_SOURCE, "request-p", bytes);
        for (location, outcome) in &out {
            if let Outcome::Rejected(r) = outcome {
                prop_assert_eq!(location, &r.location);
                for id in IDENTIFIERS {
                    let text = format!("{} {} {}", r.error.field, r.error.problem, r.error.rule);
                    prop_assert!(!text.contains(id), "{} in {}", id, text);
                }
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            check(&bytes)?;
        }

        #[test]
        fn arbitrary_bundle_like_json_never_panics(bundle in bundle_json()) {
            let bytes = serde_json::to_vec(&bundle).unwrap();
            check(&bytes)?;
            // Every outcome is at an entry of the array.
            let entries = bundle["entry"].as_array().map_or(0, Vec::len) as u64;
            for (location, _) in read_as(GP_SOURCE, "request-p", &bytes) {
                prop_assert!(location.line <= entries);
            }
        }

        #[test]
        fn arbitrary_json_never_panics(value in any_json()) {
            check(&serde_json::to_vec(&value).unwrap())?;
        }
    }
}
