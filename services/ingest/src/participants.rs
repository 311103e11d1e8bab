//! BIDS participants tables, keyed by subject pseudonym, filtered by the tenant's policy.

use gbrain_catalog::Participant;
use gbrain_common::tenant::{DeidPolicy, TenantId};
use gbrain_formats::bids::parse_participants_tsv;
use gbrain_proto::ingest::v1::PutParticipantsRequest;

use crate::deid::{AGE_CAP, Identity, pseudonym};
use crate::{Error, Ingest, Result};

/// Columns that are direct identifiers whatever the policy; BIDS does not define them, but
/// exports from hospital systems carry them.
const DROPPED: &[&str] = &[
    "name",
    "first_name",
    "last_name",
    "surname",
    "birthdate",
    "birth_date",
    "date_of_birth",
    "dob",
    "mrn",
    "patient_id",
    "address",
    "email",
    "phone",
];

/// Applies the policy to one participant's attributes.
pub fn filter_attributes(
    attributes: &[(String, Option<String>)],
    policy: &DeidPolicy,
) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    for (k, v) in attributes {
        let key = k.to_ascii_lowercase();
        if DROPPED.contains(&key.as_str()) {
            continue;
        }
        if matches!(key.as_str(), "sex" | "gender") && !policy.keep_sex {
            continue;
        }
        let value = if key == "age" {
            if !policy.keep_age {
                continue;
            }
            v.as_ref().map(|a| match a.parse::<f64>() {
                Ok(n) if n > f64::from(AGE_CAP) => AGE_CAP.to_string(),
                _ => a.clone(),
            })
        } else {
            v.clone()
        };
        out.insert(
            k.clone(),
            value
                .map(serde_json::Value::String)
                .unwrap_or(serde_json::Value::Null),
        );
    }
    out
}

impl Ingest {
    pub async fn put_participants(
        &self,
        tenant: &TenantId,
        req: PutParticipantsRequest,
    ) -> Result<u64> {
        let tsv = req
            .participants_tsv
            .ok_or_else(|| Error::invalid("participants_tsv", "is required"))?;
        let name = if tsv.name.is_empty() {
            "participants.tsv".to_string()
        } else {
            tsv.name
        };
        let rows = parse_participants_tsv(&tsv.content, &name)?;
        let key = self.tenant_key(tenant.as_str()).await?;
        let policy = self.auth.policy(tenant).deid;
        let participants: Vec<Participant> = rows
            .iter()
            .map(|p| Participant {
                subject_pseudonym: pseudonym(
                    &key,
                    &Identity::Subject {
                        dataset: req.dataset.clone(),
                        subject: p.participant_id.clone(),
                    },
                ),
                dataset: req.dataset.clone(),
                attributes_json: serde_json::Value::Object(filter_attributes(
                    &p.attributes,
                    &policy,
                ))
                .to_string(),
            })
            .collect();
        self.catalog
            .put_participants(tenant.as_str(), &participants, self.clock.now_ns())
            .await?;
        Ok(participants.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_by_policy() {
        let attrs = vec![
            ("age".to_string(), Some("93".to_string())),
            ("sex".to_string(), Some("F".to_string())),
            ("name".to_string(), Some("Jansen".to_string())),
            ("handedness".to_string(), None),
        ];
        let kept = filter_attributes(&attrs, &DeidPolicy::default());
        assert_eq!(kept["age"], "90");
        assert_eq!(kept["sex"], "F");
        assert!(!kept.contains_key("name"));
        assert!(kept["handedness"].is_null());
        let strict = DeidPolicy {
            keep_age: false,
            keep_sex: false,
            ..DeidPolicy::default()
        };
        let kept = filter_attributes(&attrs, &strict);
        assert!(!kept.contains_key("age") && !kept.contains_key("sex"));
    }
}
