//! `grantable`: the one function that decides which scopes a token may carry (DESIGN.md §6).
//!
//! granted = requested ∩ the client's allowed scopes ∩ the union of the user's role ceilings
//! (consent narrows further, later). `∩` is the SMART scope algebra, so wildcards narrow to what
//! a ceiling allows and the result is never wider than any input. Identity and context scopes
//! (`openid fhirUser profile launch launch/* offline_access online_access`) are decided by the
//! client's settings alone; `system/` scopes only ever go to backend services.
//!
//! Each requested scope gets an explanation, so the admin console can show "why".

use serde::Serialize;

use crate::clients::ClientSettings;
use crate::smart::scopes::{
    intersect, IdentityScope, ResourceScope, Scope, ScopeContext, ScopeSet,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Explanation {
    Granted {
        scope: String,
    },
    Narrowed {
        scope: String,
        granted: Vec<String>,
        reason: String,
    },
    Refused {
        scope: String,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantDecision {
    pub granted: ScopeSet,
    pub explanations: Vec<Explanation>,
}

fn union(sets: &[ScopeSet]) -> ScopeSet {
    sets.iter().flat_map(|s| s.iter().cloned()).collect()
}

fn single(scope: &Scope) -> ScopeSet {
    std::iter::once(scope.clone()).collect()
}

/// What a user acting through a client may be granted (authorization-code flows).
pub fn grantable(
    role_ceilings: &[ScopeSet],
    client: &ClientSettings,
    requested: &str,
) -> GrantDecision {
    let roles = union(role_ceilings);
    decide(client, requested, false, |scope, client_allowed| {
        if scope.context == ScopeContext::System {
            return Err(
                "system/ scopes are only granted to backend services (client_credentials)".into(),
            );
        }
        let by_roles = intersect(client_allowed, &roles);
        if by_roles.is_empty() {
            return Err("outside what the user's roles allow".into());
        }
        Ok((
            by_roles,
            "narrowed to what the client and the user's roles allow",
        ))
    })
}

/// What emergency access (break-glass) grants a user through a client: requested ∩ the
/// client's allowed scopes, *not* cut by the user's role ceilings, bound to one patient
/// (`user/` scopes become `patient/` scopes, so only the patient in context is reached), no
/// refresh (`offline_access`, `online_access` dropped), never `system/` or admin scopes, and
/// the [`Scope::BreakGlass`] marking. Never wider than the client's allowance: `patient/X` is
/// covered by the `user/X` it came from.
pub fn grantable_in_emergency(client: &ClientSettings, requested: &str) -> GrantDecision {
    let mut decision = decide(client, requested, false, |scope, client_allowed| {
        if scope.context == ScopeContext::System {
            return Err(
                "system/ scopes are only granted to backend services (client_credentials)".into(),
            );
        }
        let for_one_patient: Vec<ResourceScope> = client_allowed
            .resource_scopes()
            .map(|r| {
                ResourceScope::new(
                    ScopeContext::Patient,
                    r.resource.clone(),
                    r.permissions,
                    r.constraints.clone(),
                    r.syntax,
                )
            })
            .collect();
        Ok((
            for_one_patient.into_iter().map(Scope::Resource).collect(),
            "emergency access: the client's allowed scopes, for the one patient in context",
        ))
    });
    decision.granted = decision
        .granted
        .iter()
        .filter(|s| {
            !matches!(
                s,
                Scope::Identity(IdentityScope::OfflineAccess | IdentityScope::OnlineAccess)
            )
        })
        .cloned()
        .collect();
    decision.granted.insert(Scope::BreakGlass);
    decision
}

/// What a backend service may be granted (`client_credentials`): requested ∩ its allowance,
/// `system/` scopes and Ward's own admin-API scopes only.
pub fn grantable_for_service(client: &ClientSettings, requested: &str) -> GrantDecision {
    decide(client, requested, true, |scope, client_allowed| {
        if scope.context != ScopeContext::System {
            return Err("backend services are granted system/ scopes only".into());
        }
        Ok((
            client_allowed.clone(),
            "narrowed to the client's allowed scopes",
        ))
    })
}

/// Shared walk over the requested scopes: identity scopes by client settings, resource scopes
/// through the client ceiling and then `resource_rule`.
fn decide(
    client: &ClientSettings,
    requested: &str,
    service: bool,
    resource_rule: impl Fn(
        &crate::smart::scopes::ResourceScope,
        &ScopeSet,
    ) -> Result<(ScopeSet, &'static str), String>,
) -> GrantDecision {
    let (requested_set, errors) = ScopeSet::parse(requested);
    let ceiling = client.scope_set();
    let mut granted = ScopeSet::new();
    let mut explanations: Vec<Explanation> = errors
        .iter()
        .map(|e| Explanation::Refused {
            scope: e.scope.clone(),
            reason: e.reason.to_string(),
        })
        .collect();
    for scope in requested_set.iter() {
        let text = scope.to_string();
        let refuse = |reason: String| Explanation::Refused {
            scope: text.clone(),
            reason,
        };
        let explanation = match scope {
            Scope::Identity(_) if ceiling.contains(scope) => {
                granted.insert(scope.clone());
                Explanation::Granted {
                    scope: text.clone(),
                }
            }
            Scope::Identity(_) => refuse("not allowed for this client".into()),
            Scope::Admin(_) if !service => refuse(
                "admin API scopes are granted only to backend services (client_credentials)".into(),
            ),
            Scope::Admin(_) if ceiling.contains(scope) => {
                granted.insert(scope.clone());
                Explanation::Granted {
                    scope: text.clone(),
                }
            }
            Scope::Admin(_) => refuse("outside the client's allowed scopes".into()),
            Scope::BreakGlass => refuse(
                "the break-glass marking is set by Ward on emergency access; it cannot be requested"
                    .into(),
            ),
            Scope::Resource(resource) => {
                let client_allowed = intersect(&single(scope), &ceiling);
                if client_allowed.is_empty() {
                    refuse("outside the client's allowed scopes".into())
                } else {
                    match resource_rule(resource, &client_allowed) {
                        Err(reason) => refuse(reason),
                        Ok((result, narrowed_reason)) => {
                            let exact = result.len() == 1 && result.covers_all(&single(scope));
                            for s in result.iter() {
                                granted.insert(s.clone());
                            }
                            if exact {
                                Explanation::Granted {
                                    scope: text.clone(),
                                }
                            } else {
                                Explanation::Narrowed {
                                    scope: text.clone(),
                                    granted: result.iter().map(ToString::to_string).collect(),
                                    reason: narrowed_reason.into(),
                                }
                            }
                        }
                    }
                }
            }
        };
        explanations.push(explanation);
    }
    GrantDecision {
        granted,
        explanations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::model::{validate, ClientSpec};
    use crate::smart::scopes::strategies;
    use proptest::prelude::*;

    fn client(scope: &str) -> ClientSettings {
        validate(&ClientSpec {
            name: "App".into(),
            kind: Some("public".into()),
            redirect_uris: vec!["https://app.example.com/cb".into()],
            scope: scope.into(),
            ..ClientSpec::default()
        })
        .unwrap()
    }

    fn backend(scope: &str) -> ClientSettings {
        validate(&ClientSpec {
            name: "Backend".into(),
            kind: Some("confidential-asymmetric".into()),
            jwks_uri: Some("https://keys.example.com/jwks".into()),
            scope: scope.into(),
            ..ClientSpec::default()
        })
        .unwrap()
    }

    fn ceilings(texts: &[&str]) -> Vec<ScopeSet> {
        texts.iter().map(|t| ScopeSet::parse(t).0).collect()
    }

    #[test]
    fn wildcards_narrow_to_the_role_ceiling() {
        let c = client("launch openid fhirUser user/*.cruds");
        let d = grantable(
            &ceilings(&["user/Observation.rs user/Condition.rs"]),
            &c,
            "openid fhirUser user/*.cruds",
        );
        assert_eq!(d.granted.to_string().split(' ').count(), 4);
        let text = d.granted.to_string();
        assert!(
            text.contains("user/Observation.rs") && text.contains("user/Condition.rs"),
            "{text}"
        );
        assert!(d
            .explanations
            .iter()
            .any(|e| matches!(e, Explanation::Narrowed { scope, .. } if scope == "user/*.cruds")));
    }

    #[test]
    fn the_client_ceiling_applies_before_roles() {
        let c = client("launch/patient patient/Observation.rs");
        let d = grantable(
            &ceilings(&["user/*.cruds"]),
            &c,
            "launch/patient patient/*.rs",
        );
        assert_eq!(
            d.granted.to_string(),
            "launch/patient patient/Observation.rs"
        );
    }

    #[test]
    fn a_user_ceiling_covers_patient_scopes() {
        let c = client("patient/*.rs");
        let d = grantable(
            &ceilings(&["user/Observation.rs"]),
            &c,
            "patient/Observation.rs",
        );
        assert_eq!(d.granted.to_string(), "patient/Observation.rs");
    }

    #[test]
    fn identity_scopes_follow_client_settings_not_roles() {
        let c = client("openid fhirUser offline_access patient/Observation.rs");
        let d = grantable(
            &ceilings(&[""]),
            &c,
            "openid fhirUser offline_access profile patient/Observation.rs",
        );
        assert_eq!(d.granted.to_string(), "openid fhirUser offline_access");
        let refused: Vec<_> = d
            .explanations
            .iter()
            .filter_map(|e| match e {
                Explanation::Refused { scope, reason } => Some((scope.as_str(), reason.as_str())),
                _ => None,
            })
            .collect();
        assert!(refused.contains(&("profile", "not allowed for this client")));
        assert!(refused.contains(&(
            "patient/Observation.rs",
            "outside what the user's roles allow"
        )));
    }

    #[test]
    fn granular_ceilings_keep_their_constraints() {
        let lab = "user/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory";
        let c = client("user/*.rs");
        let d = grantable(&ceilings(&[lab]), &c, "user/Observation.rs");
        assert_eq!(d.granted.to_string(), lab);
    }

    #[test]
    fn system_scopes_only_for_backend_services() {
        let c = client("patient/*.rs");
        let d = grantable(&ceilings(&["user/*.cruds"]), &c, "system/Observation.rs");
        assert!(d.granted.is_empty());
        let b = backend("system/Observation.rs system/Patient.r");
        let d = grantable_for_service(&b, "system/*.rs patient/Observation.rs openid");
        assert_eq!(
            d.granted.to_string(),
            "system/Observation.rs system/Patient.r"
        );
        assert_eq!(
            d.explanations
                .iter()
                .filter(|e| matches!(e, Explanation::Refused { .. }))
                .count(),
            2
        );
    }

    #[test]
    fn malformed_scopes_are_refused_and_reported() {
        let c = client("patient/*.rs");
        let d = grantable(
            &ceilings(&["patient/*.rs"]),
            &c,
            "patient/Observation.rx patient/Patient.rs",
        );
        assert_eq!(d.granted.to_string(), "patient/Patient.rs");
        assert!(d.explanations.iter().any(
            |e| matches!(e, Explanation::Refused { scope, .. } if scope == "patient/Observation.rx")
        ));
    }

    proptest! {
        #[test]
        fn a_grant_is_never_wider_than_any_input(
            requested in strategies::scope_set(),
            allowed in strategies::scope_set(),
            roles in proptest::collection::vec(strategies::scope_set(), 0..3),
        ) {
            let mut settings = client("");
            settings.allowed_scopes = allowed.to_string();
            let d = grantable(&roles, &settings, &requested.to_string());
            let role_union = union(&roles);
            for scope in d.granted.iter() {
                match scope {
                    Scope::Resource(r) => {
                        prop_assert!(requested.covers_scope(r), "{r} not requested");
                        prop_assert!(allowed.covers_scope(r), "{r} not allowed for client");
                        prop_assert!(role_union.covers_scope(r), "{r} not allowed by roles");
                        prop_assert!(r.context != ScopeContext::System);
                    }
                    identity => {
                        prop_assert!(requested.contains(identity));
                        prop_assert!(allowed.contains(identity));
                    }
                }
            }
        }
    }
}
