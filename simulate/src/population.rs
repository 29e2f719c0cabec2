//! The fictional ICB: practices grouped in PCNs, acute providers, postcodes
//! with deprivation deciles, and registered patients. Patients are not
//! stored: patient `i`'s identifiers are a pure function of the seed and `i`,
//! which keeps memory flat however large the population.
//!
//! NHS numbers come from the 999 range the NHS reserves for testing. It holds
//! 909,091 valid numbers; in populations larger than that, patients `i` and
//! `i + 909,091` share a number (and so a pseudonym). Pathway-level measures
//! are unaffected; per-patient counts in such runs merge those pairs.

use chrono::{Duration, NaiveDate};
use pathflow_schemas::codes::Sex;
use pathflow_schemas::nhs_number::{NhsNumber, check_digit};

use crate::rng::{Cumulative, Rng, mix, unit};

/// A GP practice.
#[derive(Debug, Clone)]
pub struct Practice {
    /// ODS-style code (fictional `Y9nnnn`).
    pub code: String,
    /// Display name.
    pub name: String,
    /// The PCN it belongs to.
    pub pcn: String,
    /// Registered patients.
    pub list_size: u32,
    /// Index of its first patient.
    pub first_patient: u32,
    /// Deprivation decile of its catchment (1 most deprived).
    pub decile: u8,
    /// True when its appointment book is exported as FHIR Bundles.
    pub fhir: bool,
    /// The provider most of its patients are referred to.
    pub home_provider: usize,
    first_postcode: u32,
    postcodes: u32,
}

/// An acute hospital trust.
#[derive(Debug, Clone)]
pub struct Provider {
    /// ODS-style code (fictional `R9x`).
    pub code: String,
    /// Display name.
    pub name: String,
}

/// A registered patient's source-side record: raw identifiers included.
#[derive(Debug, Clone)]
pub struct PatientRecord {
    /// Index in the population.
    pub index: u32,
    /// NHS number (999 test range).
    pub nhs_number: NhsNumber,
    /// Date of birth.
    pub date_of_birth: NaiveDate,
    /// Person stated gender.
    pub sex: Sex,
    /// Home postcode.
    pub postcode: String,
    /// On the National Data Opt-out list.
    pub opted_out: bool,
}

/// Share of patients with a National Data Opt-out (about 5.5% nationally).
pub const OPT_OUT_SHARE: f64 = 0.055;
/// Share of postcodes missing from the deprivation lookup (new builds and the like).
const POSTCODE_UNKNOWN_SHARE: f64 = 0.01;
/// People per postcode unit, roughly.
const PEOPLE_PER_POSTCODE: u32 = 40;

/// England's population by 5-year age band (0-4 … 90+), in percent.
const AGE_SHARES: [f64; 19] = [
    5.4, 5.9, 6.1, 5.8, 6.0, 6.5, 7.0, 6.8, 6.5, 6.2, 6.7, 6.6, 5.8, 5.0, 4.8, 3.9, 2.6, 1.5, 0.9,
];

/// The whole fictional ICB.
pub struct Icb {
    seed: u64,
    /// Practices in code order; patients are numbered practice by practice.
    pub practices: Vec<Practice>,
    /// Acute providers.
    pub providers: Vec<Provider>,
    /// Registered patients.
    pub population: u32,
    reference: NaiveDate,
    valid_nhs: Vec<u32>,
    nhs_step: u64,
    age: Cumulative,
    list_sizes: Cumulative,
}

const FIRST_NAMES: [&str; 16] = [
    "Abbey",
    "Beacon",
    "Castle",
    "Dale",
    "Elm",
    "Fairfield",
    "Grange",
    "Holly",
    "Ivy",
    "Jubilee",
    "Kingsway",
    "Linden",
    "Meadow",
    "Northgate",
    "Orchard",
    "Park",
];
const SUFFIXES: [&str; 4] = [
    "Surgery",
    "Medical Centre",
    "Health Centre",
    "Medical Practice",
];

impl Icb {
    /// Builds the ICB for `population` patients with `providers` providers.
    pub fn new(
        seed: u64,
        population: u32,
        providers: u32,
        fhir_share: f64,
        reference: NaiveDate,
    ) -> Self {
        let mut rng = Rng::new(seed, 0x1CB);
        let mut practices = Vec::new();
        let mut remaining = population;
        let mut first_patient = 0;
        let mut first_postcode = 0;
        let mut pcn = 0u32;
        let mut pcn_size = 0u32;
        while remaining > 0 {
            let draw = (8_500.0 * (0.55 * rng.normal()).exp()).clamp(2_000.0, 25_000.0) as u32;
            let mut size = draw.min(remaining);
            if remaining - size < 2_000 {
                // Never leave a remainder too small to be a practice.
                size = if remaining <= 25_000 {
                    remaining
                } else {
                    remaining - 2_000
                };
            }
            if pcn_size >= 30_000 + (rng.f64() * 20_000.0) as u32 {
                pcn += 1;
                pcn_size = 0;
            }
            pcn_size += size;
            let i = practices.len();
            let postcodes = size.div_ceil(PEOPLE_PER_POSTCODE);
            practices.push(Practice {
                code: format!("Y9{:04}", i + 1),
                name: format!(
                    "{} {}",
                    FIRST_NAMES[i % FIRST_NAMES.len()],
                    SUFFIXES[(i / FIRST_NAMES.len()) % SUFFIXES.len()]
                ),
                pcn: format!("U9{:04}", pcn + 1),
                list_size: size,
                first_patient,
                decile: rng.range(1, 10) as u8,
                fhir: rng.chance(fhir_share),
                home_provider: 0,
                first_postcode,
                postcodes,
            });
            first_patient += size;
            first_postcode += postcodes;
            remaining -= size;
        }
        if fhir_share > 0.0 && !practices.iter().any(|p| p.fhir) {
            // Small runs still get one FHIR practice, so every format is exercised.
            if let Some(last) = practices.last_mut() {
                last.fhir = true;
            }
        }
        let n_providers = providers.max(1) as usize;
        let n_practices = practices.len();
        for (i, p) in practices.iter_mut().enumerate() {
            p.home_provider = i * n_providers / n_practices;
        }
        const TRUSTS: [&str; 6] = [
            "Northgate",
            "Riverside",
            "Eastfield",
            "Westmoor",
            "Southbay",
            "Highcross",
        ];
        let providers = (0..n_providers)
            .map(|i| Provider {
                code: format!("R9{}", (b'A' + i as u8) as char),
                name: format!(
                    "{} Hospitals NHS Foundation Trust",
                    TRUSTS[i % TRUSTS.len()]
                ),
            })
            .collect();
        let valid_nhs: Vec<u32> = (0..1_000_000u32)
            .filter(|m| {
                let n = 999_000_000 + m;
                let mut d = [0u8; 9];
                let mut r = n;
                for i in (0..9).rev() {
                    d[i] = (r % 10) as u8;
                    r /= 10;
                }
                check_digit(&d).is_some()
            })
            .collect();
        let len = valid_nhs.len() as u64;
        let mut nhs_step = 600_011u64;
        while gcd(nhs_step, len) != 1 {
            nhs_step += 2;
        }
        let list_sizes = Cumulative::new(practices.iter().map(|p| f64::from(p.list_size)));
        Icb {
            seed,
            practices,
            providers,
            population,
            reference,
            valid_nhs,
            nhs_step,
            age: Cumulative::new(AGE_SHARES),
            list_sizes,
        }
    }

    fn hash(&self, index: u32, what: u64) -> u64 {
        mix(self.seed ^ mix(u64::from(index) ^ (what << 40)))
    }

    /// The practice patient `index` is registered with.
    pub fn practice_of(&self, index: u32) -> usize {
        self.practices.partition_point(|p| p.first_patient <= index) - 1
    }

    /// Draws a practice in proportion to list size.
    pub fn draw_practice(&self, rng: &mut Rng) -> usize {
        self.list_sizes.draw(rng)
    }

    /// Draws a patient of `practice`, older patients more often (they are referred more).
    pub fn draw_patient(&self, practice: usize, rng: &mut Rng, weight_by_age: bool) -> u32 {
        let p = &self.practices[practice];
        loop {
            let index = p.first_patient + rng.below(p.list_size as usize) as u32;
            if !weight_by_age {
                return index;
            }
            let age = self.age_band(index) * 5;
            let weight = if age < 18 {
                0.35
            } else if age < 65 {
                0.55
            } else {
                1.0
            };
            if rng.chance(weight) {
                return index;
            }
        }
    }

    fn age_band(&self, index: u32) -> u32 {
        let mut r = Rng::new(self.hash(index, 2), 0);
        self.age.draw(&mut r) as u32
    }

    /// Patient `index`'s source-side record.
    pub fn patient(&self, index: u32) -> PatientRecord {
        let len = self.valid_nhs.len() as u64;
        let slot = (u64::from(index) * self.nhs_step + 12_345) % len;
        let nhs_number = NhsNumber::from_first_nine(999_000_000 + self.valid_nhs[slot as usize])
            .expect("only middles with a check digit are listed");
        let band = self.age_band(index);
        let days_in = unit(self.hash(index, 3)) * 5.0 * 365.25;
        let age_days = if band == 18 {
            90.0 * 365.25 + days_in * 1.2
        } else {
            f64::from(band) * 5.0 * 365.25 + days_in
        };
        let date_of_birth = self.reference - Duration::days(age_days as i64);
        let s = unit(self.hash(index, 4));
        let sex = if s < 0.495 {
            Sex::Male
        } else if s < 0.995 {
            Sex::Female
        } else {
            Sex::NotKnown
        };
        let p = &self.practices[self.practice_of(index)];
        let postcode_index =
            p.first_postcode + (self.hash(index, 5) % u64::from(p.postcodes)) as u32;
        PatientRecord {
            index,
            nhs_number,
            date_of_birth,
            sex,
            postcode: postcode_text(postcode_index),
            opted_out: unit(self.hash(index, 6)) < OPT_OUT_SHARE,
        }
    }

    /// The local hospital number of patient `index` at provider `provider`.
    pub fn hospital_number(&self, provider: usize, index: u32) -> String {
        let n = (u64::from(index) * 7_654_321 + 1_000_003 * provider as u64 + self.seed % 1_000)
            % 10_000_000;
        format!("{}{:07}", (b'K' + provider as u8) as char, n)
    }

    /// Every postcode and its deprivation decile (`None`: missing from the lookup).
    pub fn postcodes(&self) -> impl Iterator<Item = (String, Option<u8>)> + '_ {
        self.practices.iter().flat_map(move |p| {
            (p.first_postcode..p.first_postcode + p.postcodes).map(move |i| {
                let h = mix(self.seed ^ mix(u64::from(i) ^ (7 << 40)));
                let shift = (h % 5) as i32 - 2;
                let decile = (i32::from(p.decile) + shift).clamp(1, 10) as u8;
                let known = unit(mix(h)) >= POSTCODE_UNKNOWN_SHARE;
                (postcode_text(i), known.then_some(decile))
            })
        })
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// A well-formed but fictional postcode: area `QX` is never used in the UK.
pub fn postcode_text(i: u32) -> String {
    const UNIT: &[u8; 20] = b"ABDEFGHJLNPQRSTUWXYZ";
    let unit_a = UNIT[(i % 20) as usize] as char;
    let unit_b = UNIT[(i / 20 % 20) as usize] as char;
    let sector = i / 400 % 10;
    let district = i / 4_000 + 1;
    format!("QX{district} {sector}{unit_b}{unit_a}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn icb(pop: u32) -> Icb {
        Icb::new(1, pop, 2, 0.1, NaiveDate::from_ymd_opt(2025, 4, 7).unwrap())
    }

    #[test]
    fn practices_have_realistic_list_sizes_and_cover_everyone() {
        let icb = icb(300_000);
        assert!(
            icb.practices
                .iter()
                .all(|p| (2_000..=25_000).contains(&p.list_size))
        );
        assert_eq!(
            icb.practices.iter().map(|p| p.list_size).sum::<u32>(),
            300_000
        );
        let pcns: std::collections::BTreeSet<_> = icb.practices.iter().map(|p| &p.pcn).collect();
        assert!(pcns.len() >= 4 && pcns.len() < icb.practices.len());
    }

    #[test]
    fn every_nhs_number_is_valid_test_range_and_unique_below_the_range_size() {
        let icb = icb(200_000);
        let mut seen = std::collections::HashSet::new();
        for i in 0..200_000 {
            let n = icb.patient(i).nhs_number;
            assert!(n.is_test_range());
            assert!(NhsNumber::parse(&n.expose_digits()).is_ok());
            assert!(seen.insert(n), "duplicate NHS number for patient {i}");
        }
    }

    #[test]
    fn postcodes_are_unique_and_fictional() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..100_000 {
            let p = postcode_text(i);
            assert!(p.starts_with("QX"));
            assert!(seen.insert(p));
        }
    }
}
