//! The consent page of a SMART App Launch: what the candidate scopes mean in
//! plain language, and the user's narrowing of them.
//!
//! Implements the user-facing half of HL7 SMART App Launch 2.2, "Requested
//! scopes versus granted scopes": the server may grant less than the client
//! asked for, and here the user decides how much less. [`summarize`] turns the
//! candidate scopes (requested ∩ client allowance ∩ role ceilings) into groups
//! per resource type; [`apply`] drops the resource types the user un-ticked and,
//! for Observation and Condition, narrows scopes to the categories the user
//! picked, using the granular v2 form from "Finer-grained resource constraints
//! using search parameters" (`patient/Observation.rs?category=<system>|<code>`).
//!
//! The granted set is never wider than the candidate: every scope [`apply`]
//! builds is the candidate scope itself or that scope with one more
//! constraint, and the result is checked against the candidate before it is
//! returned.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use super::scopes::{
    IdentityScope, Permission, Permissions, ResourceScope, Scope, ScopeContext, ScopeSet, Syntax,
    MAX_SCOPE_TOKENS, MAX_SCOPE_TOKEN_BYTES,
};

/// The search parameter category restrictions use.
pub const CATEGORY_PARAMETER: &str = "category";
/// HL7 observation category code system.
pub const OBSERVATION_CATEGORY_SYSTEM: &str =
    "http://terminology.hl7.org/CodeSystem/observation-category";
/// HL7 condition category code system.
pub const CONDITION_CATEGORY_SYSTEM: &str =
    "http://terminology.hl7.org/CodeSystem/condition-category";
/// US Core condition category code system (for `health-concern`).
pub const US_CORE_CONDITION_CATEGORY_SYSTEM: &str =
    "http://hl7.org/fhir/us/core/CodeSystem/condition-category";

/// What the consent page shows for a candidate scope set.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ConsentSummary {
    /// One per resource type (or `*`, all resource types), sorted by label.
    pub groups: Vec<ResourceGroup>,
    /// Plain-language lines for openid, fhirUser, profile, launch,
    /// launch/patient and launch/encounter, in that order.
    pub identity: Vec<String>,
    /// `offline_access` is in the candidate: the page should say the app keeps
    /// access after the user leaves it.
    pub offline_access: bool,
    /// `online_access` is in the candidate.
    pub online_access: bool,
}

/// The candidate scopes for one resource type (or `*`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ResourceGroup {
    /// `Observation`, or `*` for every resource type; what [`Choices`] names.
    pub resource_type: String,
    /// Friendly name, such as "Observations (lab results, vital signs…)".
    pub label: String,
    /// Whose records: "the patient in context" (`patient/`), "any patient you
    /// can access" (`user/`), or several joined with "and".
    pub whose: String,
    /// Plain words such as "read and search" or "create, read, update, delete
    /// and search"; when contexts differ, one clause per context, such as
    /// "read for the patient in context; read and search for any patient you
    /// can access".
    pub access: String,
    /// Any scope of the group allows create, update or delete.
    pub writes: bool,
    /// The candidate scopes in this group, printed.
    pub scopes: Vec<String>,
    /// Categories the user may restrict to; non-empty only for Observation and
    /// Condition groups with at least one scope not already restricted by
    /// category.
    pub categories: Vec<CategoryOption>,
    /// When every scope of the group is already restricted (a granular scope
    /// such as `?category=…|laboratory`), what each restriction allows, in
    /// plain words ("Laboratory results"); empty when some scope is
    /// unrestricted.
    pub limited_to: Vec<String>,
}

/// A category the user may restrict a group to.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CategoryOption {
    /// The code the form sends back in [`Choices::categories`], e.g. `laboratory`.
    pub code: String,
    pub label: String,
}

/// The user's choices from the consent form.
#[derive(Debug, Clone, Default)]
pub struct Choices {
    /// Resource types the user un-ticked (`*` allowed); their scopes are dropped.
    pub deselected: Vec<String>,
    /// For Observation/Condition: the category codes the user restricted to.
    /// Absent or empty = no restriction.
    pub categories: BTreeMap<String, Vec<String>>,
}

/// Why the consent choices could not be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsentError {
    /// A category code not offered for this resource type.
    UnknownCategory { resource_type: String, code: String },
    /// Categories were chosen for a resource type other than Observation or
    /// Condition; ignoring them would grant more than the user chose.
    CategoriesNotOffered { resource_type: String },
    /// A restricted scope would be longer than a scope token may be, so it
    /// could not be printed and parsed back.
    ScopeTooLong { scope: String },
    /// The restriction would yield more scopes than one scope string may hold.
    TooManyScopes { count: usize },
    /// The result was not within the candidate. Cannot happen by construction;
    /// checked anyway so that a bug fails closed.
    WiderThanCandidate { scope: String },
}

impl fmt::Display for ConsentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConsentError::UnknownCategory {
                resource_type,
                code,
            } => write!(f, "`{code}` is not a category offered for {resource_type}"),
            ConsentError::CategoriesNotOffered { resource_type } => write!(
                f,
                "categories can only be chosen for Observation and Condition, not `{resource_type}`"
            ),
            ConsentError::ScopeTooLong { scope } => write!(
                f,
                "restricted scope `{scope}` would exceed {MAX_SCOPE_TOKEN_BYTES} bytes"
            ),
            ConsentError::TooManyScopes { count } => write!(
                f,
                "the chosen categories yield {count} scopes; at most {MAX_SCOPE_TOKENS} are allowed"
            ),
            ConsentError::WiderThanCandidate { scope } => {
                write!(f, "scope `{scope}` is not within the candidate scopes")
            }
        }
    }
}

impl std::error::Error for ConsentError {}

#[derive(Clone, Copy, Debug)]
struct Category {
    system: &'static str,
    code: &'static str,
    label: &'static str,
}

impl Category {
    /// The token search and scopes use: `system|code`.
    fn token(&self) -> String {
        format!("{}|{}", self.system, self.code)
    }
}

const fn observation(code: &'static str, label: &'static str) -> Category {
    Category {
        system: OBSERVATION_CATEGORY_SYSTEM,
        code,
        label,
    }
}

const OBSERVATION_CATEGORIES: [Category; 9] = [
    observation("laboratory", "Laboratory results"),
    observation("vital-signs", "Vital signs"),
    observation("social-history", "Social history (such as smoking)"),
    observation("imaging", "Imaging results"),
    observation("procedure", "Procedure results"),
    observation("survey", "Surveys and questionnaires"),
    observation("exam", "Physical exam findings"),
    observation("therapy", "Therapy notes and results"),
    observation("activity", "Physical activity"),
];

const CONDITION_CATEGORIES: [Category; 3] = [
    Category {
        system: CONDITION_CATEGORY_SYSTEM,
        code: "problem-list-item",
        label: "Problem list",
    },
    Category {
        system: CONDITION_CATEGORY_SYSTEM,
        code: "encounter-diagnosis",
        label: "Diagnoses made during visits",
    },
    Category {
        system: US_CORE_CONDITION_CATEGORY_SYSTEM,
        code: "health-concern",
        label: "Health concerns",
    },
];

fn categories_for(resource_type: &str) -> Option<&'static [Category]> {
    match resource_type {
        "Observation" => Some(&OBSERVATION_CATEGORIES),
        "Condition" => Some(&CONDITION_CATEGORIES),
        _ => None,
    }
}

/// The group key of a scope: its resource type name, or `*`.
fn group_key(scope: &ResourceScope) -> String {
    scope.resource.to_string()
}

fn category_values(scope: &ResourceScope) -> impl Iterator<Item = &str> {
    scope
        .constraints
        .iter()
        .filter(|(name, _)| name == CATEGORY_PARAMETER)
        .map(|(_, value)| value.as_str())
}

/// What the consent page shows for `candidate`.
pub fn summarize(candidate: &ScopeSet) -> ConsentSummary {
    let mut by_type: BTreeMap<String, Vec<&ResourceScope>> = BTreeMap::new();
    for scope in candidate.resource_scopes() {
        by_type.entry(group_key(scope)).or_default().push(scope);
    }
    let mut groups: Vec<ResourceGroup> = by_type
        .into_iter()
        .map(|(resource_type, scopes)| group(resource_type, &scopes))
        .collect();
    groups.sort_by(|a, b| {
        a.label
            .cmp(&b.label)
            .then_with(|| a.resource_type.cmp(&b.resource_type))
    });

    let present: BTreeSet<IdentityScope> = candidate.identity_scopes().collect();
    let identity = IdentityScope::ALL
        .into_iter()
        .filter(|scope| present.contains(scope))
        .filter_map(identity_line)
        .map(str::to_string)
        .collect();
    ConsentSummary {
        groups,
        identity,
        offline_access: present.contains(&IdentityScope::OfflineAccess),
        online_access: present.contains(&IdentityScope::OnlineAccess),
    }
}

fn group(resource_type: String, scopes: &[&ResourceScope]) -> ResourceGroup {
    let mut per_context: BTreeMap<ScopeContext, Permissions> = BTreeMap::new();
    for scope in scopes {
        let permissions = per_context.entry(scope.context).or_default();
        *permissions = permissions.union(scope.permissions);
    }
    let whose = per_context
        .keys()
        .map(|context| whose_words(*context))
        .collect::<Vec<_>>()
        .join(" and ");
    let mut distinct = per_context.values().copied().collect::<Vec<_>>();
    distinct.dedup();
    let access = match distinct.as_slice() {
        [single] => access_words(*single),
        _ => per_context
            .iter()
            .map(|(context, permissions)| {
                format!(
                    "{} for {}",
                    access_words(*permissions),
                    whose_words(*context)
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
    };
    let writes = per_context.values().any(|permissions| {
        [Permission::Create, Permission::Update, Permission::Delete]
            .into_iter()
            .any(|write| permissions.contains(write))
    });
    let offers_categories = scopes
        .iter()
        .any(|scope| category_values(scope).next().is_none());
    let categories = match categories_for(&resource_type) {
        Some(options) if offers_categories => options
            .iter()
            .map(|category| CategoryOption {
                code: category.code.to_string(),
                label: category.label.to_string(),
            })
            .collect(),
        _ => Vec::new(),
    };
    let limited_to = if scopes.iter().all(|scope| !scope.constraints.is_empty()) {
        let mut lines: Vec<String> = Vec::new();
        for line in scopes.iter().map(|scope| restriction_line(scope)) {
            if !lines.contains(&line) {
                lines.push(line);
            }
        }
        lines
    } else {
        Vec::new()
    };
    ResourceGroup {
        label: resource_label(&resource_type),
        resource_type,
        whose,
        access,
        writes,
        scopes: scopes.iter().map(|scope| scope.to_string()).collect(),
        categories,
        limited_to,
    }
}

fn whose_words(context: ScopeContext) -> &'static str {
    match context {
        ScopeContext::Patient => "the patient in context",
        ScopeContext::User => "any patient you can access",
        ScopeContext::System => "any record on the server",
    }
}

fn verb(permission: Permission) -> &'static str {
    match permission {
        Permission::Create => "create",
        Permission::Read => "read",
        Permission::Update => "update",
        Permission::Delete => "delete",
        Permission::Search => "search",
    }
}

/// "read", "read and search", "create, read, update, delete and search".
fn access_words(permissions: Permissions) -> String {
    let verbs: Vec<&str> = permissions.iter().map(verb).collect();
    match verbs.split_last() {
        None => "no access".to_string(),
        Some((last, [])) => (*last).to_string(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}

/// What one restricted scope still allows, e.g. "Laboratory results" or
/// "status = final and Vital signs".
fn restriction_line(scope: &ResourceScope) -> String {
    let resource_type = group_key(scope);
    let known = categories_for(&resource_type).unwrap_or(&[]);
    scope
        .constraints
        .iter()
        .map(|(name, value)| {
            known
                .iter()
                .find(|category| name == CATEGORY_PARAMETER && category.token() == *value)
                .map(|category| category.label.to_string())
                .unwrap_or_else(|| format!("{name} = {value}"))
        })
        .collect::<Vec<_>>()
        .join(" and ")
}

fn identity_line(scope: IdentityScope) -> Option<&'static str> {
    match scope {
        IdentityScope::OpenId => Some("Confirm who you are (your name and Ward account id)"),
        IdentityScope::FhirUser => {
            Some("Know which FHIR record describes you (Practitioner or Patient)")
        }
        IdentityScope::Profile => Some("See your basic profile (such as your name)"),
        IdentityScope::Launch => Some(
            "Receive the context you are working in (the patient or encounter open in your EHR)",
        ),
        IdentityScope::LaunchPatient => Some("Know which patient is selected"),
        IdentityScope::LaunchEncounter => Some("Know which encounter is open"),
        IdentityScope::OfflineAccess | IdentityScope::OnlineAccess => None,
    }
}

/// A friendly name for a resource type, or `*`.
fn resource_label(resource_type: &str) -> String {
    let known = match resource_type {
        "*" => "All health record data (every type of record)",
        "AllergyIntolerance" => "Allergies and intolerances",
        "Appointment" => "Appointments",
        "Binary" => "Attached files",
        "CarePlan" => "Care plans",
        "CareTeam" => "Care teams",
        "Claim" => "Insurance claims",
        "Communication" => "Messages",
        "Condition" => "Conditions (problems and diagnoses)",
        "Consent" => "Consents and privacy choices",
        "Coverage" => "Insurance coverage",
        "Device" => "Devices (implants and equipment)",
        "DiagnosticReport" => "Diagnostic reports (lab and imaging reports)",
        "DocumentReference" => "Documents (clinical notes and files)",
        "Encounter" => "Encounters (visits and hospital stays)",
        "ExplanationOfBenefit" => "Claims and explanations of benefit",
        "FamilyMemberHistory" => "Family health history",
        "Goal" => "Health goals",
        "ImagingStudy" => "Imaging studies (scans and X-rays)",
        "Immunization" => "Immunizations (vaccines)",
        "Location" => "Locations",
        "Medication" => "Medications (drug details)",
        "MedicationAdministration" => "Medications given",
        "MedicationDispense" => "Medications dispensed (pharmacy fills)",
        "MedicationRequest" => "Medication prescriptions and orders",
        "MedicationStatement" => "Medications being taken",
        "Observation" => "Observations (lab results, vital signs…)",
        "Organization" => "Organizations (clinics, hospitals, insurers)",
        "Patient" => "Patient details (name, birth date, contact information)",
        "Practitioner" => "Practitioners (doctors, nurses and other clinicians)",
        "PractitionerRole" => "Practitioner roles",
        "Procedure" => "Procedures (surgeries and treatments)",
        "Provenance" => "Record history (who created or changed records)",
        "Questionnaire" => "Questionnaires",
        "QuestionnaireResponse" => "Questionnaire answers",
        "RelatedPerson" => "Related people (family and caregivers)",
        "ServiceRequest" => "Orders and referrals",
        "Specimen" => "Specimens (samples for testing)",
        _ => return words_of(resource_type),
    };
    known.to_string()
}

/// `FamilyMemberHistory` → "Family member history".
fn words_of(type_name: &str) -> String {
    let mut out = String::with_capacity(type_name.len() + 8);
    for (index, c) in type_name.chars().enumerate() {
        if index == 0 {
            out.push(c);
        } else if c.is_uppercase() {
            out.push(' ');
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Applies the user's choices to `candidate`.
///
/// Resource types in [`Choices::deselected`] lose all their scopes (`*` drops
/// the wildcard scopes; types that are not groups of the candidate are
/// ignored). For Observation and Condition, chosen categories replace each
/// scope without a category restriction by one scope per chosen category (same
/// context and permissions, v2 syntax, `category=<system>|<code>` added); a
/// scope already restricted by category is kept only when one of its
/// categories is exactly a chosen `system|code`. Identity, launch and
/// refresh-token scopes are kept as they are.
///
/// # Errors
/// [`ConsentError::UnknownCategory`] for a code not offered for the type,
/// [`ConsentError::CategoriesNotOffered`] for categories on another type,
/// [`ConsentError::ScopeTooLong`] / [`ConsentError::TooManyScopes`] when the
/// result could not be printed and parsed back as a scope string, and
/// [`ConsentError::WiderThanCandidate`] should the result ever exceed the
/// candidate.
pub fn apply(candidate: &ScopeSet, choices: &Choices) -> Result<ScopeSet, ConsentError> {
    let restrictions = chosen_categories(choices)?;
    let deselected: BTreeSet<&str> = choices.deselected.iter().map(String::as_str).collect();
    let mut granted = ScopeSet::new();
    for scope in candidate.iter() {
        let Scope::Resource(resource) = scope else {
            granted.insert(scope.clone());
            continue;
        };
        let key = group_key(resource);
        if deselected.contains(key.as_str()) {
            continue;
        }
        match restrictions.get(key.as_str()) {
            None => {
                granted.insert(scope.clone());
            }
            Some(tokens) => {
                for narrowed in restrict(resource, tokens) {
                    granted.insert(Scope::Resource(narrowed));
                }
            }
        }
    }
    check_representable(&granted)?;
    check_within(candidate, &granted)?;
    Ok(granted)
}

/// The `system|code` tokens chosen per resource type, validated; types with no
/// chosen codes are left out (no restriction).
fn chosen_categories(choices: &Choices) -> Result<BTreeMap<&str, Vec<String>>, ConsentError> {
    let mut chosen = BTreeMap::new();
    for (resource_type, codes) in &choices.categories {
        if codes.is_empty() {
            continue;
        }
        let offered =
            categories_for(resource_type).ok_or_else(|| ConsentError::CategoriesNotOffered {
                resource_type: resource_type.clone(),
            })?;
        let mut tokens: Vec<String> = Vec::with_capacity(codes.len());
        for code in codes {
            let category = offered
                .iter()
                .find(|category| category.code == code)
                .ok_or_else(|| ConsentError::UnknownCategory {
                    resource_type: resource_type.clone(),
                    code: code.clone(),
                })?;
            let token = category.token();
            if !tokens.contains(&token) {
                tokens.push(token);
            }
        }
        chosen.insert(resource_type.as_str(), tokens);
    }
    Ok(chosen)
}

/// `scope` narrowed to the category `tokens`; each result is `scope` itself or
/// `scope` with one more constraint, so `scope` covers it.
fn restrict(scope: &ResourceScope, tokens: &[String]) -> Vec<ResourceScope> {
    let existing: Vec<&str> = category_values(scope).collect();
    if existing.is_empty() {
        return tokens
            .iter()
            .map(|token| {
                let mut constraints = scope.constraints.clone();
                constraints.push((CATEGORY_PARAMETER.to_string(), token.clone()));
                ResourceScope::new(
                    scope.context,
                    scope.resource.clone(),
                    scope.permissions,
                    constraints,
                    Syntax::V2,
                )
            })
            .collect();
    }
    if existing
        .iter()
        .any(|value| tokens.iter().any(|token| token == value))
    {
        vec![scope.clone()]
    } else {
        Vec::new()
    }
}

/// The granted scopes will be printed into a token response and parsed back;
/// refuse what `ScopeSet::parse_strict` would reject.
fn check_representable(granted: &ScopeSet) -> Result<(), ConsentError> {
    if granted.len() > MAX_SCOPE_TOKENS {
        return Err(ConsentError::TooManyScopes {
            count: granted.len(),
        });
    }
    for scope in granted.resource_scopes() {
        let printed = scope.to_string();
        if printed.len() > MAX_SCOPE_TOKEN_BYTES {
            return Err(ConsentError::ScopeTooLong { scope: printed });
        }
    }
    Ok(())
}

fn check_within(candidate: &ScopeSet, granted: &ScopeSet) -> Result<(), ConsentError> {
    let outside = granted.iter().find(|scope| match scope {
        Scope::Resource(resource) => !candidate.covers_scope(resource),
        Scope::Identity(_) | Scope::Admin(_) | Scope::BreakGlass => !candidate.contains(scope),
    });
    match outside {
        Some(scope) => Err(ConsentError::WiderThanCandidate {
            scope: scope.to_string(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::scopes::strategies::{scope_set, RESOURCE_TYPES};
    use super::*;
    use proptest::prelude::*;

    const LAB: &str = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory";
    const VITALS: &str = "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs";

    fn set(text: &str) -> ScopeSet {
        match ScopeSet::parse_strict(text) {
            Ok(set) => set,
            Err(errors) => panic!("{text}: {errors:?}"),
        }
    }

    fn group_for<'a>(summary: &'a ConsentSummary, resource_type: &str) -> &'a ResourceGroup {
        match summary
            .groups
            .iter()
            .find(|g| g.resource_type == resource_type)
        {
            Some(group) => group,
            None => panic!("no {resource_type} group in {summary:?}"),
        }
    }

    fn applied(candidate: &str, choices: &Choices) -> String {
        match apply(&set(candidate), choices) {
            Ok(granted) => granted.to_string(),
            Err(error) => panic!("{candidate}: {error}"),
        }
    }

    fn categories(resource_type: &str, codes: &[&str]) -> Choices {
        Choices {
            deselected: Vec::new(),
            categories: BTreeMap::from([(
                resource_type.to_string(),
                codes.iter().map(|c| c.to_string()).collect(),
            )]),
        }
    }

    #[test]
    fn groups_v1_and_v2_scopes_by_resource_type() {
        let summary = summarize(&set(
            "openid patient/Observation.read patient/Observation.c patient/Condition.rs user/*.rs",
        ));
        let types: Vec<&str> = summary
            .groups
            .iter()
            .map(|g| g.resource_type.as_str())
            .collect();
        // Sorted by label: "All health…", "Conditions…", "Observations…".
        assert_eq!(types, vec!["*", "Condition", "Observation"]);
        let observation = group_for(&summary, "Observation");
        assert_eq!(
            observation.scopes,
            vec!["patient/Observation.c", "patient/Observation.read"]
        );
        assert_eq!(observation.access, "create, read and search");
        assert!(observation.writes);
        assert_eq!(
            observation.label,
            "Observations (lab results, vital signs…)"
        );
        assert_eq!(
            group_for(&summary, "*").label,
            "All health record data (every type of record)"
        );
    }

    #[test]
    fn read_and_write_wording() {
        let summary = summarize(&set(
            "patient/Patient.r patient/Condition.read patient/Encounter.cruds patient/Procedure.write",
        ));
        let patient = group_for(&summary, "Patient");
        assert_eq!(patient.access, "read");
        assert!(!patient.writes);
        let condition = group_for(&summary, "Condition");
        assert_eq!(condition.access, "read and search");
        assert!(!condition.writes);
        let encounter = group_for(&summary, "Encounter");
        assert_eq!(encounter.access, "create, read, update, delete and search");
        assert!(encounter.writes);
        let procedure = group_for(&summary, "Procedure");
        assert_eq!(procedure.access, "create, update and delete");
        assert!(procedure.writes);
    }

    #[test]
    fn patient_and_user_wording() {
        let summary = summarize(&set("patient/Observation.rs user/Condition.rs"));
        assert_eq!(
            group_for(&summary, "Observation").whose,
            "the patient in context"
        );
        assert_eq!(
            group_for(&summary, "Condition").whose,
            "any patient you can access"
        );
        let mixed = summarize(&set("patient/Observation.rs user/Observation.r"));
        let group = group_for(&mixed, "Observation");
        assert_eq!(
            group.whose,
            "the patient in context and any patient you can access"
        );
        assert_eq!(
            group.access,
            "read and search for the patient in context; read for any patient you can access"
        );
        let same = summarize(&set("patient/Observation.rs user/Observation.rs"));
        assert_eq!(group_for(&same, "Observation").access, "read and search");
    }

    #[test]
    fn categories_offered_only_for_unrestricted_observation_and_condition() {
        let summary = summarize(&set(
            "patient/Observation.rs patient/Condition.read patient/Encounter.rs patient/*.rs",
        ));
        let observation = group_for(&summary, "Observation");
        assert_eq!(observation.categories.len(), 9);
        assert!(observation
            .categories
            .iter()
            .any(|c| c.code == "laboratory" && c.label == "Laboratory results"));
        let condition_codes: Vec<&str> = group_for(&summary, "Condition")
            .categories
            .iter()
            .map(|c| c.code.as_str())
            .collect();
        assert_eq!(
            condition_codes,
            vec!["problem-list-item", "encounter-diagnosis", "health-concern"]
        );
        assert!(group_for(&summary, "Encounter").categories.is_empty());
        assert!(group_for(&summary, "*").categories.is_empty());

        let granular = summarize(&set(&format!(
            "patient/Observation.rs?category={LAB} patient/Observation.rs?category={VITALS}"
        )));
        let observation = group_for(&granular, "Observation");
        assert!(observation.categories.is_empty());
        assert_eq!(
            observation.limited_to,
            vec!["Laboratory results", "Vital signs"]
        );
        assert!(group_for(&summary, "Observation").limited_to.is_empty());
    }

    #[test]
    fn identity_lines_and_refresh_flags() {
        let summary = summarize(&set(
            "launch/encounter offline_access openid fhirUser launch launch/patient profile",
        ));
        assert_eq!(
            summary.identity,
            vec![
                "Confirm who you are (your name and Ward account id)",
                "Know which FHIR record describes you (Practitioner or Patient)",
                "See your basic profile (such as your name)",
                "Receive the context you are working in (the patient or encounter open in your EHR)",
                "Know which patient is selected",
                "Know which encounter is open",
            ]
        );
        assert!(summary.offline_access);
        assert!(!summary.online_access);
        assert!(summary.groups.is_empty());
        let online = summarize(&set("online_access"));
        assert!(online.online_access && !online.offline_access && online.identity.is_empty());
    }

    #[test]
    fn labels_fall_back_to_words() {
        assert_eq!(resource_label("EpisodeOfCare"), "Episode of care");
        assert_eq!(resource_label("Basic"), "Basic");
        assert_eq!(resource_label("Coverage"), "Insurance coverage");
    }

    #[test]
    fn no_choices_grants_the_candidate() {
        let candidate = set("openid launch patient/Observation.read user/*.rs offline_access");
        assert_eq!(apply(&candidate, &Choices::default()), Ok(candidate));
    }

    #[test]
    fn deselection_drops_exactly_that_type() {
        let choices = Choices {
            deselected: vec!["Observation".into(), "Nonexistent".into()],
            ..Choices::default()
        };
        assert_eq!(
            applied(
                "openid patient/Observation.read patient/Observation.c patient/Condition.rs patient/*.r",
                &choices
            ),
            "openid patient/*.r patient/Condition.rs"
        );
        let wildcard = Choices {
            deselected: vec!["*".into()],
            ..Choices::default()
        };
        assert_eq!(
            applied("launch patient/*.rs patient/Condition.rs", &wildcard),
            "launch patient/Condition.rs"
        );
    }

    #[test]
    fn observation_laboratory_yields_the_granular_v2_scope() {
        assert_eq!(
            applied(
                "openid patient/Observation.read",
                &categories("Observation", &["laboratory"])
            ),
            format!("openid patient/Observation.rs?category={LAB}")
        );
        assert_eq!(
            applied(
                "user/Observation.cruds",
                &categories("Observation", &["vital-signs", "laboratory", "laboratory"])
            ),
            format!(
                "user/Observation.cruds?category={LAB} user/Observation.cruds?category={VITALS}"
            )
        );
    }

    #[test]
    fn condition_categories_use_their_own_systems() {
        assert_eq!(
            applied(
                "patient/Condition.rs",
                &categories("Condition", &["health-concern", "problem-list-item"])
            ),
            "patient/Condition.rs?category=http://hl7.org/fhir/us/core/CodeSystem/condition-category|health-concern \
             patient/Condition.rs?category=http://terminology.hl7.org/CodeSystem/condition-category|problem-list-item"
        );
    }

    #[test]
    fn category_restriction_keeps_other_constraints_and_filters_granular_scopes() {
        assert_eq!(
            applied(
                &format!(
                    "patient/Observation.rs?status=final patient/Observation.r?category={VITALS} patient/Observation.s?category={LAB}"
                ),
                &categories("Observation", &["laboratory"])
            ),
            format!(
                "patient/Observation.s?category={LAB} patient/Observation.rs?category={LAB}&status=final"
            )
        );
    }

    #[test]
    fn empty_category_list_means_no_restriction_and_other_types_are_untouched() {
        let choices = Choices {
            deselected: Vec::new(),
            categories: BTreeMap::from([
                ("Observation".to_string(), Vec::new()),
                ("Condition".to_string(), vec!["encounter-diagnosis".into()]),
            ]),
        };
        assert_eq!(
            applied("patient/Observation.read patient/*.rs", &choices),
            "patient/*.rs patient/Observation.read"
        );
    }

    #[test]
    fn deselection_wins_over_categories() {
        let mut choices = categories("Observation", &["laboratory"]);
        choices.deselected.push("Observation".into());
        assert_eq!(applied("openid patient/Observation.rs", &choices), "openid");
    }

    #[test]
    fn unknown_category_is_an_error() {
        assert_eq!(
            apply(
                &set("patient/Observation.rs"),
                &categories("Observation", &["laboratory", "genomics"])
            ),
            Err(ConsentError::UnknownCategory {
                resource_type: "Observation".into(),
                code: "genomics".into()
            })
        );
        // A Condition code is not an Observation code, nor a full token.
        assert!(apply(
            &set("patient/Observation.rs"),
            &categories("Observation", &["problem-list-item"])
        )
        .is_err());
        assert!(apply(
            &set("patient/Observation.rs"),
            &categories("Observation", &[LAB])
        )
        .is_err());
        assert_eq!(
            apply(&set("patient/*.rs"), &categories("*", &["laboratory"])),
            Err(ConsentError::CategoriesNotOffered {
                resource_type: "*".into()
            })
        );
    }

    #[test]
    fn refuses_results_that_could_not_be_parsed_back() {
        let long_code = format!("http://loinc.org|{}", "9".repeat(420));
        let candidate = set(&format!("patient/Observation.rs?code={long_code}"));
        assert!(matches!(
            apply(&candidate, &categories("Observation", &["laboratory"])),
            Err(ConsentError::ScopeTooLong { .. })
        ));
        let many: Vec<String> = (0..12)
            .map(|i| format!("patient/Observation.rs?status=s{i}"))
            .collect();
        let all_codes: Vec<&str> = OBSERVATION_CATEGORIES.iter().map(|c| c.code).collect();
        assert_eq!(
            apply(
                &set(&many.join(" ")),
                &categories("Observation", &all_codes)
            ),
            Err(ConsentError::TooManyScopes { count: 108 })
        );
    }

    #[test]
    fn check_within_fails_closed() {
        let candidate = set("openid patient/Observation.rs");
        assert!(check_within(&candidate, &set("openid patient/Observation.r")).is_ok());
        assert!(check_within(&candidate, &set("patient/Observation.rs?category=x")).is_ok());
        assert!(check_within(&candidate, &set("user/Observation.rs")).is_err());
        assert!(check_within(&candidate, &set("fhirUser")).is_err());
    }

    fn type_name() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => proptest::sample::select(RESOURCE_TYPES.as_slice()).prop_map(str::to_string),
            1 => Just("*".to_string()),
            1 => Just("Unknown".to_string()),
        ]
    }

    fn codes(offered: &'static [Category]) -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec(
            proptest::sample::select(offered).prop_map(|c| c.code.to_string()),
            0..4,
        )
    }

    fn choices() -> impl Strategy<Value = Choices> {
        (
            proptest::collection::vec(type_name(), 0..3),
            proptest::option::of(codes(&OBSERVATION_CATEGORIES)),
            proptest::option::of(codes(&CONDITION_CATEGORIES)),
        )
            .prop_map(|(deselected, observation, condition)| {
                let mut categories = BTreeMap::new();
                if let Some(codes) = observation {
                    categories.insert("Observation".to_string(), codes);
                }
                if let Some(codes) = condition {
                    categories.insert("Condition".to_string(), codes);
                }
                Choices {
                    deselected,
                    categories,
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn apply_never_widens(candidate in scope_set(), choices in choices()) {
            let granted = apply(&candidate, &choices);
            prop_assert!(granted.is_ok(), "{:?}", granted);
            let granted = granted.unwrap_or_default();
            prop_assert!(candidate.covers_all(&granted), "{} not within {}", granted, candidate);
            let identity = |s: &ScopeSet| s.identity_scopes().collect::<Vec<_>>();
            prop_assert_eq!(identity(&granted), identity(&candidate));
            prop_assert_eq!(ScopeSet::parse_strict(&granted.to_string()), Ok(granted.clone()));
            for scope in granted.resource_scopes() {
                let key = group_key(scope);
                prop_assert!(!choices.deselected.contains(&key), "{} kept", scope);
                if let Some(codes) = choices.categories.get(&key).filter(|c| !c.is_empty()) {
                    let offered = categories_for(&key).unwrap_or(&[]);
                    let tokens: Vec<String> = offered
                        .iter()
                        .filter(|c| codes.iter().any(|code| code == c.code))
                        .map(Category::token)
                        .collect();
                    prop_assert!(category_values(scope).any(|v| tokens.iter().any(|t| t == v)), "{} unrestricted", scope);
                }
            }
        }

        #[test]
        fn apply_without_choices_is_the_identity(candidate in scope_set()) {
            prop_assert_eq!(apply(&candidate, &Choices::default()), Ok(candidate));
        }

        #[test]
        fn unknown_category_is_always_an_error(candidate in scope_set(), code in "[a-z-]{1,12}") {
            prop_assume!(OBSERVATION_CATEGORIES.iter().all(|c| c.code != code));
            let result = apply(&candidate, &categories("Observation", &["laboratory", &code]));
            prop_assert_eq!(result, Err(ConsentError::UnknownCategory { resource_type: "Observation".into(), code }));
        }

        #[test]
        fn summary_groups_partition_the_candidate(candidate in scope_set()) {
            let summary = summarize(&candidate);
            let mut printed: Vec<String> = summary.groups.iter().flat_map(|g| g.scopes.clone()).collect();
            let mut expected: Vec<String> = candidate.resource_scopes().map(|s| s.to_string()).collect();
            printed.sort();
            expected.sort();
            prop_assert_eq!(printed, expected);
            let labels: Vec<&String> = summary.groups.iter().map(|g| &g.label).collect();
            let mut sorted = labels.clone();
            sorted.sort();
            prop_assert_eq!(labels, sorted);
            for group in &summary.groups {
                prop_assert!(group.categories.is_empty() || categories_for(&group.resource_type).is_some());
                prop_assert!(!group.access.is_empty() && !group.whose.is_empty());
            }
        }
    }
}
