-- The canonical dashboard queries of the query benchmark (issue 5): what a
-- clinical lead, a clinical pair or a commissioner's analyst asks of the gold
-- and state tables. `benches/query.rs` runs each through pathflow and the same
-- text through DuckDB (`benches/duckdb_bench.py`), so every query is written
-- in SQL both accept unchanged: ANSI date literals, CASE rather than FILTER,
-- CAST(... AS DOUBLE), NULLIF for rates, no engine-specific functions.
--
-- A query starts at a `-- name: <name>` line and runs to the next one; a
-- trailing `;` is dropped. Dates are the simulated ICB's year (the
-- generator's default period starts on Monday 2025-04-07: 52 ISO weeks up to
-- Sunday 2026-04-05). Every query ends in an ORDER BY that fixes its row
-- order, so both engines' answers can be compared row by row.

-- name: waiting_list_by_specialty
-- The RTT waiting list of each specialty at every week end of the year:
-- size, median and 92nd percentile wait, long waiters.
SELECT week, treatment_function, waiting_list, median_wait_weeks, p92_wait_weeks,
       over_18_weeks, over_52_weeks, pct_within_18_weeks
FROM waits_weekly
WHERE scope = 'specialty'
  AND week BETWEEN DATE '2025-04-07' AND DATE '2026-03-30'
ORDER BY treatment_function, week;

-- name: waiting_list_latest_by_provider
-- This week's waiting list by provider and specialty, largest first (the
-- newest week that has one).
SELECT provider, treatment_function, waiting_list, over_18_weeks, over_52_weeks,
       pct_within_18_weeks, p92_wait_weeks
FROM waits_weekly
WHERE scope = 'provider_specialty'
  AND week = (SELECT max(week) FROM waits_weekly WHERE scope = 'all' AND waiting_list > 0)
ORDER BY waiting_list DESC, provider, treatment_function;

-- name: referral_demand_by_practice
-- Referral demand of each practice over the year, by priority, with returned
-- referrals and A&G use.
SELECT practice,
       SUM(referrals_received) AS referrals,
       SUM(CASE WHEN priority = 'routine' THEN referrals_received ELSE 0 END) AS routine,
       SUM(CASE WHEN priority = 'urgent' THEN referrals_received ELSE 0 END) AS urgent,
       SUM(CASE WHEN priority = 'two_week_wait' THEN referrals_received ELSE 0 END) AS two_week_wait,
       SUM(referrals_returned) AS returned,
       SUM(advice_requests) AS advice_requests,
       SUM(advice_converted) AS advice_converted
FROM demand_weekly
WHERE practice IS NOT NULL
  AND week BETWEEN DATE '2025-04-07' AND DATE '2026-03-30'
GROUP BY practice
ORDER BY referrals DESC, practice;

-- name: referrals_weekly_by_specialty
-- Referrals received each week in each specialty (the demand trend chart).
SELECT week, treatment_function, SUM(referrals_received) AS referrals,
       SUM(referrals_from_advice) AS from_advice
FROM demand_weekly
WHERE treatment_function IS NOT NULL
  AND week BETWEEN DATE '2025-04-07' AND DATE '2026-03-30'
GROUP BY week, treatment_function
ORDER BY treatment_function, week;

-- name: gp_appointments_by_mode
-- GP appointments across the ICB each week, by mode and by who saw the patient.
SELECT week,
       SUM(gp_appointments) AS appointments,
       SUM(gp_face_to_face) AS face_to_face,
       SUM(gp_telephone) AS telephone,
       SUM(gp_video_online) AS video_online,
       SUM(gp_home_visit) AS home_visit,
       SUM(gp_by_gp) AS by_gp,
       SUM(gp_by_other_staff) AS by_other_staff
FROM demand_weekly
WHERE gp_appointments > 0
  AND week BETWEEN DATE '2025-04-07' AND DATE '2026-03-30'
GROUP BY week
ORDER BY week;

-- name: outpatient_dna_rate_by_specialty
-- Outpatient did-not-attend rate by specialty, first and follow-up, over the year.
SELECT treatment_function, contact,
       SUM(attended) AS attended,
       SUM(did_not_attend) AS did_not_attend,
       CAST(SUM(did_not_attend) AS DOUBLE) / NULLIF(SUM(attended + did_not_attend), 0) AS dna_rate
FROM capacity_weekly
WHERE setting = 'outpatient'
  AND week BETWEEN DATE '2025-04-07' AND DATE '2026-03-30'
GROUP BY treatment_function, contact
ORDER BY treatment_function, contact;

-- name: gp_dna_rate_by_practice
-- GP did-not-attend rate of each practice over the last quarter, from the
-- appointment state table (one row per appointment).
SELECT practice,
       COUNT(*) AS appointments,
       SUM(CASE WHEN status = 'attended' THEN 1 ELSE 0 END) AS attended,
       SUM(CASE WHEN status = 'did_not_attend' THEN 1 ELSE 0 END) AS did_not_attend,
       CAST(SUM(CASE WHEN status = 'did_not_attend' THEN 1 ELSE 0 END) AS DOUBLE)
         / NULLIF(SUM(CASE WHEN status IN ('attended', 'did_not_attend') THEN 1 ELSE 0 END), 0) AS dna_rate
FROM appointments
WHERE setting = 'gp'
  AND anchor_week BETWEEN DATE '2026-01-05' AND DATE '2026-03-30'
GROUP BY practice
ORDER BY dna_rate DESC, practice;

-- name: capacity_utilisation_by_provider
-- Outpatient slots offered, booked and unused by provider and specialty over
-- the last 12 weeks.
SELECT provider, treatment_function,
       SUM(slots_offered) AS offered,
       SUM(appointments_booked) AS booked,
       SUM(slots_unused) AS unused,
       SUM(cancelled_by_provider) AS cancelled_by_provider,
       CAST(SUM(appointments_booked) AS DOUBLE) / NULLIF(SUM(slots_offered), 0) AS utilisation
FROM capacity_weekly
WHERE setting = 'outpatient'
  AND week BETWEEN DATE '2026-01-12' AND DATE '2026-03-30'
GROUP BY provider, treatment_function
ORDER BY provider, treatment_function;

-- name: demand_vs_capacity_by_specialty
-- Each week and specialty: referrals received against first outpatient
-- slots offered and first attendances (is capacity keeping up with demand?).
SELECT d.week, d.treatment_function, d.referrals, c.first_slots, c.first_attended
FROM (SELECT week, treatment_function, SUM(referrals_received) AS referrals
      FROM demand_weekly
      WHERE treatment_function IS NOT NULL
        AND week BETWEEN DATE '2025-04-07' AND DATE '2026-03-30'
      GROUP BY week, treatment_function) d
LEFT JOIN (SELECT week, treatment_function, SUM(slots_offered) AS first_slots,
                  SUM(attended) AS first_attended
           FROM capacity_weekly
           WHERE setting = 'outpatient' AND contact = 'first'
             AND week BETWEEN DATE '2025-04-07' AND DATE '2026-03-30'
           GROUP BY week, treatment_function) c
  ON c.week = d.week AND c.treatment_function = d.treatment_function
ORDER BY d.treatment_function, d.week;

-- name: followup_backlog_by_specialty
-- The follow-up backlog at each week end of the last quarter: overdue, and
-- overdue by more than 6 weeks, by provider and specialty.
SELECT week, provider, treatment_function,
       SUM(due) AS due,
       SUM(overdue) AS overdue,
       SUM(overdue_more_than_6_weeks) AS overdue_6_weeks,
       SUM(completed) AS completed
FROM followups_weekly
WHERE week BETWEEN DATE '2026-01-05' AND DATE '2026-03-30'
GROUP BY week, provider, treatment_function
ORDER BY provider, treatment_function, week;

-- name: new_to_followup_ratio_by_specialty
-- Follow-up attendances per first attendance, by specialty, over the year.
SELECT treatment_function,
       SUM(first_attendances) AS first_attendances,
       SUM(followup_attendances) AS followup_attendances,
       CAST(SUM(followup_attendances) AS DOUBLE) / NULLIF(SUM(first_attendances), 0) AS new_to_followup
FROM followups_weekly
WHERE week BETWEEN DATE '2025-04-07' AND DATE '2026-03-30'
GROUP BY treatment_function
ORDER BY treatment_function;

-- name: overdue_followups_now
-- Follow-ups overdue now, by provider and specialty, from the follow-up
-- state table: how many, how many by more than 6 weeks, the longest.
SELECT provider, treatment_function,
       COUNT(*) AS overdue,
       SUM(CASE WHEN overdue_days > 42 THEN 1 ELSE 0 END) AS overdue_6_weeks,
       MAX(overdue_days) AS longest_days
FROM followups
WHERE overdue_days IS NOT NULL
GROUP BY provider, treatment_function
ORDER BY overdue DESC, provider, treatment_function;

-- name: long_waiters_by_specialty
-- Pathways on the waiting list now by provider and specialty, banded by
-- weeks waited, from the referrals state table.
SELECT provider, treatment_function,
       COUNT(*) AS waiting,
       SUM(CASE WHEN wait_weeks >= 18 THEN 1 ELSE 0 END) AS over_18_weeks,
       SUM(CASE WHEN wait_weeks >= 40 THEN 1 ELSE 0 END) AS over_40_weeks,
       SUM(CASE WHEN wait_weeks >= 52 THEN 1 ELSE 0 END) AS over_52_weeks,
       MAX(wait_weeks) AS longest_weeks
FROM referrals
WHERE waiting
GROUP BY provider, treatment_function
ORDER BY provider, treatment_function;

-- name: patient_tracking_list
-- The 100 longest-waiting open pathways (the patient tracking list a
-- provider's validation team works down).
SELECT pathway_id, provider, treatment_function, priority, clock_start_date,
       wait_days, wait_weeks
FROM referrals
WHERE waiting
ORDER BY wait_days DESC, pathway_id
LIMIT 100;

-- name: gp_booking_lead_time_by_practice
-- GP appointments by GPAD booking-to-appointment band, per practice, over the year.
SELECT practice,
       SUM(gp_same_day) AS same_day,
       SUM(gp_one_day) AS one_day,
       SUM(gp_two_to_seven_days) AS two_to_seven_days,
       SUM(gp_eight_to_fourteen_days) AS eight_to_fourteen_days,
       SUM(gp_fifteen_to_twenty_one_days + gp_twenty_two_to_twenty_eight_days
           + gp_more_than_twenty_eight_days) AS over_fourteen_days
FROM waits_weekly
WHERE scope = 'practice'
  AND week BETWEEN DATE '2025-04-07' AND DATE '2026-03-30'
GROUP BY practice
ORDER BY practice;

-- name: advice_and_guidance_by_specialty
-- A&G requests by specialty over the year: answered, median days to answer,
-- converted to a referral.
SELECT treatment_function,
       COUNT(*) AS requests,
       COUNT(responded_at) AS responded,
       median(CAST(response_days AS DOUBLE)) AS median_response_days,
       SUM(CASE WHEN converted THEN 1 ELSE 0 END) AS converted
FROM advice
WHERE requested_date BETWEEN DATE '2025-04-07' AND DATE '2026-04-05'
GROUP BY treatment_function
ORDER BY treatment_function;
