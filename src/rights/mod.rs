//! The data subject's rights over what the stores hold: withdrawal's purge, erasure (and its
//! re-application after a backup is restored), access (export), and the audit that proves
//! the stores hold nothing they should not. Each works on every configured sink through
//! [`Store`]; the consent registry and the erasure ledger are [`crate::registry`].

mod audit;
mod store;

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};

use jiff::{SignedDuration, Timestamp};
use p1guard_conduct::{
    ConsentTable, Granularity, Identity, IdentityKey, Level, MAX_CLOCK_SKEW_SECONDS, PurposeId,
    normalise_equipment_id,
};
use serde::Serialize;

pub use self::audit::{Registered, Violation, audit};
pub use self::store::Store;
use crate::held::{Held, Purge, Purged};
use crate::registry::{EVERY_PURPOSE, NewEvent};
use crate::sinks::SinkConfig;

/// The latest record an erasure asked for at `requested_at` covers: one dated a day after it,
/// as far ahead as a meter's clock is trusted ([`MAX_CLOCK_SKEW_SECONDS`]). A clock running
/// ahead dates records after the request that were held when it was made.
pub fn erased_through(requested_at: Timestamp) -> Timestamp {
    let skew = SignedDuration::from_secs(MAX_CLOCK_SKEW_SECONDS);
    requested_at.checked_add(skew).unwrap_or(Timestamp::MAX)
}

/// Now, to the second: the instants the registry and the ledger keep.
pub fn now() -> Timestamp {
    Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// A purpose as the consent commands take it: a sink's purpose name, or `*` for all.
pub fn purpose_name(given: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        crate::sinks::is_purpose_name(given) || given == EVERY_PURPOSE,
        "purpose {given:?}: expected a name of a-z, 0-9, _ and -, or * for every purpose"
    );
    Ok(given.to_owned())
}

/// A meter as a person names it: its equipment id in each form the meter may send it
/// (normalised), the one shown first. A command on a meter applies to every form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterForms(Vec<String>);

impl MeterForms {
    /// The form shown.
    pub fn shown(&self) -> &str {
        &self.0[0]
    }

    /// Every form, the one shown first.
    pub fn all(&self) -> &[String] {
        &self.0
    }

    /// `event`, recorded for each form: a command on a meter applies to every form.
    pub fn each_form(&self, event: NewEvent) -> Vec<NewEvent> {
        (self.0.iter())
            .map(|meter| NewEvent {
                meter: meter.clone(),
                ..event.clone()
            })
            .collect()
    }
}

/// The forms of an id given as sent (any case) or as printed on the meter
/// (`E0054000012345678`, any case: meters send the printed id in capitals, hex-encoded):
/// - hex that decodes to printable text is the id as sent, alone;
/// - other hex of even length (`ADC3100000158491`) is an id some meter sends unencoded;
/// - decimal digits are either: some meters send digits unencoded (`09610`), others hex-encode
///   them, and the text cannot tell which, so both forms are kept, the one shown as above;
/// - anything else (`1SAG3100000292`, odd length) is as printed, and hex-encoded.
pub fn meter_forms(given: &str) -> anyhow::Result<MeterForms> {
    let mut normalised = Vec::new();
    let Some(id) = normalise_equipment_id(given.as_bytes(), &mut normalised) else {
        anyhow::bail!("{:?} is not a meter id", given.trim());
    };
    let as_sent = String::from_utf8_lossy(id).into_owned();
    let hex_encoded: String = id.iter().map(|b| format!("{b:02X}")).collect();
    let even_hex = id.len() % 2 == 0 && id.iter().all(u8::is_ascii_hexdigit);
    let decodes_to_text = even_hex
        && id.chunks(2).all(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .is_some_and(|byte| byte.is_ascii_graphic() || byte == b' ')
        });
    let forms = if decodes_to_text {
        vec![as_sent]
    } else if id.iter().all(u8::is_ascii_digit) {
        if even_hex {
            vec![as_sent, hex_encoded]
        } else {
            vec![hex_encoded, as_sent]
        }
    } else if even_hex {
        vec![as_sent]
    } else {
        vec![hex_encoded]
    };
    Ok(MeterForms(forms))
}

/// Names, in a command's answer, the pseudonym of the id's other form (`alias`), when the id
/// given has two: the command applied to both.
pub fn add_alias(answer: &mut serde_json::Value, subjects: &[Subject]) {
    if let Some(other) = subjects.get(1) {
        answer["alias"] = other.pseudonym.clone().into();
    }
}

/// One meter, named both ways.
#[derive(Debug, Clone)]
pub struct Subject {
    /// The equipment id as sent, normalised; unknown when only the ledger names the meter.
    pub id: Option<String>,
    /// Its pseudonym.
    pub pseudonym: String,
}

impl Subject {
    /// The meter `id` (normalised, as sent).
    pub fn new(id: String, key: &IdentityKey) -> Subject {
        let pseudonym = key.pseudonym(id.as_bytes()).to_string();
        Subject {
            id: Some(id),
            pseudonym,
        }
    }

    /// The meter in each form of its id, the one shown first.
    pub fn each(meter: &MeterForms, key: &IdentityKey) -> Vec<Subject> {
        (meter.all().iter())
            .map(|form| Subject::new(form.clone(), key))
            .collect()
    }

    /// The names the meter has in `store`: its pseudonym, or on a raw-identity store its
    /// id (found among the store's meters by pseudonym when only the ledger names it).
    pub async fn names_in(
        &self,
        store: &mut Store,
        key: &IdentityKey,
    ) -> anyhow::Result<Vec<String>> {
        match (store.identity(), &self.id) {
            (Identity::Pseudonym, _) => Ok(vec![self.pseudonym.clone()]),
            (Identity::Raw, Some(id)) => Ok(vec![id.clone()]),
            (Identity::Raw, None) => {
                let mut normalised = Vec::new();
                let meters = store.meters().await?;
                Ok(meters
                    .into_iter()
                    .filter(|name| {
                        normalise_equipment_id(name.as_bytes(), &mut normalised)
                            .is_some_and(|id| key.pseudonym(id).to_string() == self.pseudonym)
                    })
                    .collect())
            }
        }
    }
}

/// What one store did, as the answer to a privacy officer says it.
#[derive(Debug, Clone, Serialize)]
pub struct StoreAnswer {
    /// The sink's name.
    pub store: String,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// What was erased and kept.
    #[serde(flatten)]
    pub purged: Purged,
    /// Why records were kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept_because: Option<String>,
    /// Why the store could not be erased (unreachable, refused): nothing was erased there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

impl StoreAnswer {
    /// Adds what the same store did for another form of the meter's id.
    pub fn add(&mut self, other: StoreAnswer) {
        self.purged.add(other.purged);
        self.kept_because = self.kept_because.take().or(other.kept_because);
        self.failed = self.failed.take().or(other.failed);
    }

    /// The answer of a store that could not be opened or refused: nothing was erased there.
    fn failed(config: &SinkConfig, error: &anyhow::Error) -> StoreAnswer {
        StoreAnswer {
            store: config.name.clone(),
            kind: config.kind.type_name(),
            purged: Purged::default(),
            kept_because: None,
            failed: Some(format!("{error:#}")),
        }
    }
}

/// A lowered consent: the meter, the purpose (or `*`) and the level left.
#[derive(Debug, Clone)]
pub struct Withdrawal {
    /// Whose.
    pub subject: Subject,
    /// For which purpose; `*` for every purpose.
    pub purpose: String,
    /// The level left.
    pub level: Level,
    /// When it took effect: what it purges is dated up to then, as a later grant may allow
    /// what came after.
    pub from: Timestamp,
}

impl Withdrawal {
    /// The instant up to which it purges records of `granularity` for the stores serving
    /// `purpose`: the second before a later change in `table` allows them again; `None`
    /// (every record) if none does.
    fn purged_through(
        &self,
        table: &ConsentTable,
        purpose: Option<PurposeId>,
        granularity: Granularity,
    ) -> Option<Timestamp> {
        let id = self.subject.id.as_deref()?;
        let again = table.allowed_again(id.as_bytes(), purpose?, granularity, self.from)?;
        again.checked_sub(SignedDuration::from_secs(1)).ok()
    }

    /// Whether the level `table` gives at its own instant allows `granularity` after all: an
    /// event recorded later for the same instant corrected it, and it purges nothing of it.
    fn corrected(
        &self,
        table: &ConsentTable,
        purpose: Option<PurposeId>,
        granularity: Granularity,
    ) -> bool {
        let (Some(id), Some(purpose)) = (self.subject.id.as_deref(), purpose) else {
            return false;
        };
        table
            .level(id.as_bytes(), purpose, self.from)
            .allows(granularity)
    }

    /// Whether it concerns the stores serving `purpose`.
    pub fn covers(&self, purpose: &str) -> bool {
        self.purpose == EVERY_PURPOSE || self.purpose == purpose
    }

    /// The meter as `sink` names it, if the withdrawal leaves it no longer live there (and
    /// the sink knows its name: a raw-identity sink does not when only the ledger names it).
    pub fn ends_live_on(&self, sink: &SinkConfig) -> Option<String> {
        if !self.covers(&sink.purpose) || self.level.allows(Granularity::Live) {
            return None;
        }
        match sink.policy.identity() {
            Identity::Raw => self.subject.id.clone(),
            Identity::Pseudonym => Some(self.subject.pseudonym.clone()),
        }
    }

    /// Whether recording `level` for `purpose` at `from` lowers what `table` held for `meter`
    /// then (for `*`, for any purpose served): only then is there anything to purge.
    pub fn lowers(
        table: &ConsentTable,
        meter: &str,
        purpose: &str,
        level: Level,
        from: Timestamp,
    ) -> bool {
        let before = |purpose: PurposeId| table.level(meter.as_bytes(), purpose, from);
        if purpose == EVERY_PURPOSE {
            let served = table.purposes();
            served
                .iter()
                .filter_map(|name| table.purpose(name))
                .any(|p| before(p) > level)
        } else {
            table.purpose(purpose).is_some_and(|p| before(p) > level)
        }
    }
}

/// What lowered consent purged from the stores serving `purpose`: for each granularity (by
/// its index in [`Granularity::ALL`]), the latest of the meter's consent changes, up to
/// `now`, at which its consent for `purpose` stopped allowing it (allowed the second before,
/// not from then on). A withdrawal's purge erased every record of that granularity dated up
/// to then, so no store serving the purpose holds one (unless a backup brought it back: the
/// audit reports it, `reapply-erasures` erases it again). A change that lowers nothing
/// purged nothing: what consent never allowed is the ordinary consent check's to find.
/// `changes` are the meter's instants from
/// [`Registry::consent_instants`](crate::registry::Registry::consent_instants).
pub fn withdrawn_through(
    table: &ConsentTable,
    meter: &str,
    purpose: PurposeId,
    changes: &[Timestamp],
    now: Timestamp,
) -> [Option<Timestamp>; 4] {
    let mut through = [None; 4];
    for &at in changes.iter().filter(|&&at| at <= now) {
        let level = |at| table.level(meter.as_bytes(), purpose, at);
        let (before, after) = (level(at - SignedDuration::from_secs(1)), level(at));
        let lowered = |g: &Granularity| before.allows(*g) && !after.allows(*g);
        for granularity in Granularity::ALL.into_iter().filter(lowered) {
            let latest = &mut through[granularity as usize];
            *latest = (*latest).max(Some(at));
        }
    }
    through
}

/// Erases again what lowered consent purged ([`withdrawn_through`]) from every store that
/// keeps records, for every meter in `changes`: after a backup from before a withdrawal was
/// restored. A store that fails is said so in its answer, and the others are still erased.
pub async fn reapply_withdrawals(
    sinks: &[SinkConfig],
    key: &IdentityKey,
    table: &ConsentTable,
    changes: &HashMap<String, Vec<Timestamp>>,
    now: Timestamp,
) -> Vec<StoreAnswer> {
    let mut answers = Vec::new();
    for config in sinks {
        let reapplied = async {
            let mut store = Store::open(config).await?;
            let answer = match store.keeps_records() {
                true => Some(purge_withdrawn_again(&mut store, key, table, changes, now).await),
                false => None,
            };
            store.close().await;
            answer.transpose()
        };
        answers.extend(
            (reapplied.await).unwrap_or_else(|error| Some(StoreAnswer::failed(config, &error))),
        );
    }
    answers
}

async fn purge_withdrawn_again(
    store: &mut Store,
    key: &IdentityKey,
    table: &ConsentTable,
    changes: &HashMap<String, Vec<Timestamp>>,
    now: Timestamp,
) -> anyhow::Result<StoreAnswer> {
    let purpose = store.config.policy.purpose();
    let mut total = Purged::default();
    for (meter, instants) in changes {
        // The granularities purged through each instant.
        let mut purges: Vec<(Timestamp, Vec<Granularity>)> = Vec::new();
        let through = withdrawn_through(table, meter, purpose, instants, now);
        for (granularity, until) in Granularity::ALL.into_iter().zip(through) {
            let Some(until) = until else { continue };
            match purges.iter_mut().find(|(at, _)| *at == until) {
                Some((_, granularities)) => granularities.push(granularity),
                None => purges.push((until, vec![granularity])),
            }
        }
        if purges.is_empty() {
            continue;
        }
        let meters = Subject::new(meter.clone(), key)
            .names_in(store, key)
            .await?;
        for (until, granularities) in purges {
            let purge = Purge {
                meters: meters.clone(),
                granularities,
                dated_until: Some(until),
                keep_billing_from: Some(store.fiscal_cutoff(now)),
            };
            let purged = store_purge(store, &purge).await?;
            total.add(purged);
        }
    }
    Ok(answer(store, total))
}

/// Erases, in every store serving each withdrawal's purpose (every store for `*`), the
/// records of its meter that its level no longer allows, dated up to the next change in
/// `table` (which holds every event, the withdrawals' too) that allows them again; billing
/// records inside the fiscal retention are kept. Each store is opened once, and meters whose
/// purges cover the same granularity and instants are purged together.
pub async fn purge_withdrawn(
    sinks: &[SinkConfig],
    key: &IdentityKey,
    table: &ConsentTable,
    withdrawals: &[Withdrawal],
    now: Timestamp,
) -> anyhow::Result<Vec<StoreAnswer>> {
    let mut answers = Vec::new();
    for config in sinks {
        let mine: Vec<&Withdrawal> = withdrawals
            .iter()
            .filter(|w| w.covers(&config.purpose))
            .filter(|w| Granularity::ALL.iter().any(|g| !w.level.allows(*g)))
            .collect();
        if mine.is_empty() {
            continue;
        }
        let mut store = Store::open(config).await?;
        if store.keeps_records() {
            let mut total = Purged::default();
            let purpose = table.purpose(&config.purpose);
            // By granularity and how far back: an import's rows often share both.
            let mut groups: BTreeMap<(Granularity, Option<Timestamp>), Vec<String>> =
                BTreeMap::new();
            for withdrawal in mine {
                let names = withdrawal.subject.names_in(&mut store, key).await?;
                let level = withdrawal.level;
                for granularity in Granularity::ALL.into_iter().filter(|g| !level.allows(*g)) {
                    if withdrawal.corrected(table, purpose, granularity) {
                        continue;
                    }
                    let until = withdrawal.purged_through(table, purpose, granularity);
                    let group = groups.entry((granularity, until)).or_default();
                    group.extend(names.iter().cloned());
                }
            }
            for ((granularity, dated_until), meters) in groups {
                if meters.is_empty() {
                    continue;
                }
                let purge = Purge {
                    meters,
                    granularities: vec![granularity],
                    dated_until,
                    keep_billing_from: Some(store.fiscal_cutoff(now)),
                };
                let purged = store_purge(&mut store, &purge).await?;
                total.add(purged);
            }
            answers.push(answer(&store, total));
        }
        store.close().await;
    }
    Ok(answers)
}

/// Erases, in every store, every record of `subject` dated up to `requested_at` except the
/// billing records inside the fiscal retention at `now`.
pub async fn erase(
    sinks: &[SinkConfig],
    key: &IdentityKey,
    subject: &Subject,
    requested_at: Timestamp,
    now: Timestamp,
) -> Vec<StoreAnswer> {
    let mut answers = Vec::new();
    for config in sinks {
        // A store that fails is said so in the answer, and the others are still erased:
        // the ledger entry is written either way, for `reapply-erasures` to finish it.
        let erased = async {
            let mut store = Store::open(config).await?;
            let answer = erase_from(&mut store, key, subject, requested_at, now).await;
            store.close().await;
            answer
        };
        answers.push((erased.await).unwrap_or_else(|error| StoreAnswer::failed(config, &error)));
    }
    answers
}

async fn erase_from(
    store: &mut Store,
    key: &IdentityKey,
    subject: &Subject,
    requested_at: Timestamp,
    now: Timestamp,
) -> anyhow::Result<StoreAnswer> {
    if !store.keeps_records() {
        return Ok(StoreAnswer {
            store: store.name.clone(),
            kind: store.type_name(),
            purged: Purged {
                note: Some("keeps nothing: records were only printed".into()),
                ..Purged::default()
            },
            kept_because: None,
            failed: None,
        });
    }
    let purge = Purge {
        meters: subject.names_in(store, key).await?,
        granularities: Granularity::ALL.to_vec(),
        dated_until: Some(erased_through(requested_at)),
        keep_billing_from: Some(store.fiscal_cutoff(now)),
    };
    let purged = store_purge(store, &purge).await?;
    Ok(answer(store, purged))
}

async fn store_purge(store: &mut Store, purge: &Purge) -> anyhow::Result<Purged> {
    let name = store.name.clone();
    store
        .purge(purge)
        .await
        .map_err(|error| error.context(format!("sink {name}: erasing")))
}

fn answer(store: &Store, purged: Purged) -> StoreAnswer {
    let years = store.retention(Granularity::Billing).as_secs() / (365 * 86_400);
    let kept_because = (purged.kept > 0).then(|| {
        format!("billing readings inside the fiscal retention ({years} years) are kept for the tax authority")
    });
    StoreAnswer {
        store: store.name.clone(),
        kind: store.type_name(),
        purged,
        kept_because,
        failed: None,
    }
}

/// Everything the stores hold of `subjects` (one meter, in each form of its id),
/// de-duplicated (a record in two stores is one record), ordered by time.
pub async fn records_of(
    sinks: &[SinkConfig],
    key: &IdentityKey,
    subjects: &[Subject],
) -> anyhow::Result<Vec<serde_json::Value>> {
    // One reading per instant, granularity and kind, whatever each store names the meter;
    // of its copies, the one that kept the most of the record (VictoriaMetrics keeps no
    // `quality`).
    let mut records: BTreeMap<(Timestamp, Granularity, String), Held> = BTreeMap::new();
    for config in sinks {
        let mut store = Store::open(config).await?;
        let mut names = Vec::new();
        for subject in subjects {
            names.extend(subject.names_in(&mut store, key).await?);
        }
        if let Some(held) = store.read(Some(&names)).await? {
            for held in held {
                let kind = held.record["kind"].as_str().unwrap_or_default().to_owned();
                let fields = |held: &Held| held.record.as_object().map_or(0, |r| r.len());
                match records.entry((held.time, held.granularity, kind)) {
                    Entry::Vacant(entry) => {
                        entry.insert(held);
                    }
                    Entry::Occupied(mut entry) if fields(&held) > fields(entry.get()) => {
                        entry.insert(held);
                    }
                    Entry::Occupied(_) => {}
                }
            }
        }
        store.close().await;
    }
    Ok(records.into_values().map(|held| held.record).collect())
}

#[cfg(test)]
mod tests {
    use p1guard_conduct::{Change, Scope};

    use super::*;

    fn forms(given: &str) -> Vec<String> {
        meter_forms(given).unwrap().all().to_vec()
    }

    #[test]
    fn a_meter_is_named_alike_as_sent_and_as_printed_in_any_case() {
        let sent = "4530303534303030303132333435363738";
        for given in [
            sent,
            "4530303534303030303132333435363738 ",
            "E0054000012345678",
            "e0054000012345678",
            " E0054000012345678\t",
        ] {
            assert_eq!(forms(given), [sent], "{given:?}");
        }
        assert_eq!(
            forms("1sag3100000292"),
            ["3153414733313030303030323932"],
            "a Fluvius meter's printed id"
        );
        assert!(meter_forms(" ").is_err());
    }

    #[test]
    fn an_id_a_meter_sends_unencoded_is_taken_as_it_is_sent() {
        // Ids of recorded telegrams (../shared/captures) that do not decode to printable text:
        // the meter sends them as they are, and p1guard shows them so.
        for sent in ["ADC3100000158491", "621848012D2C0B0C"] {
            assert_eq!(forms(sent), [sent]);
            assert_eq!(forms(&sent.to_lowercase()), [sent]);
        }
    }

    #[test]
    fn an_id_of_digits_names_the_meter_that_sends_it_unencoded_and_the_one_that_encodes_it() {
        // Digits some recorded meters send as they are (../shared/captures), and which a
        // meter printed so would send hex-encoded: the id names both.
        for (given, shown, other) in [
            ("09610", "3039363130", "09610"),
            (
                "0272031312565",
                "30323732303331333132353635",
                "0272031312565",
            ),
            ("101209113020", "101209113020", "313031323039313133303230"),
            (
                "3960221976967177082151037881335713",
                "3960221976967177082151037881335713",
                "33393630323231393736393637313737303832313531303337383831333335373133",
            ),
        ] {
            assert_eq!(forms(given), [shown, other], "{given:?}");
            assert_eq!(meter_forms(given).unwrap().shown(), shown);
        }
    }

    #[test]
    fn a_lowered_consent_purged_each_granularity_it_stopped_allowing_through_that_change() {
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let table = ConsentTable::new(Level::Billing, ["insight"]);
        let insight = table.purpose("insight").unwrap();
        let meter = "4530303534";
        let changes = [
            (
                "2026-01-01T00:00:00Z",
                Level::QuarterHour,
                Scope::Purpose(insight),
            ),
            (
                "2026-03-01T00:00:00Z",
                Level::Daily,
                Scope::Purpose(insight),
            ),
            (
                "2026-05-01T00:00:00Z",
                Level::QuarterHour,
                Scope::Purpose(insight),
            ),
            ("2026-07-01T00:00:00Z", Level::Billing, Scope::Every),
        ];
        for (from, level, scope) in changes {
            let change = Change {
                from: t(from),
                level,
                scope,
            };
            table.add(meter.as_bytes(), change).unwrap();
        }
        let instants = changes.map(|(from, ..)| t(from));
        let through = |now: &str| withdrawn_through(&table, meter, insight, &instants, t(now));
        let [live, quarter_hour, daily, billing] = [
            Granularity::Live,
            Granularity::QuarterHour,
            Granularity::Daily,
            Granularity::Billing,
        ]
        .map(|g| g as usize);
        // The grant in January lowered nothing: live was never allowed, and is the ordinary
        // consent check's to find.
        assert_eq!(through("2026-02-01T00:00:00Z"), [None; 4]);
        // The withdrawal in March took the quarter hours, and only them.
        let april = through("2026-04-01T00:00:00Z");
        assert_eq!(april[quarter_hour], Some(t("2026-03-01T00:00:00Z")));
        assert_eq!(
            (april[live], april[daily], april[billing]),
            (None, None, None)
        );
        // Granted again in May: what was purged in March stays purged; then, for every
        // purpose, down to billing in July, which takes the daily readings too.
        let june = through("2026-06-01T00:00:00Z");
        assert_eq!(june[quarter_hour], Some(t("2026-03-01T00:00:00Z")));
        let august = through("2026-08-01T00:00:00Z");
        assert_eq!(august[quarter_hour], Some(t("2026-07-01T00:00:00Z")));
        assert_eq!(august[daily], Some(t("2026-07-01T00:00:00Z")));
        assert_eq!((august[live], august[billing]), (None, None));
    }
}
