//! "May this token do this FHIR request?": parses a FHIR REST request and
//! judges it against granted SMART scopes.
//!
//! Implements:
//! - HL7 SMART App Launch 2.2, "Scopes and Launch Context": "Scopes for
//!   requesting clinical data" (v2 letters: read and vread need `r`, search `s`,
//!   create `c`, update and patch `u`, delete `d`), "Patient-specific scopes",
//!   "User-level scopes", "System-level scopes" and "Finer-grained resource
//!   constraints using search parameters";
//! - FHIR R4 (4.0.1) RESTful API "Resource interactions" (read, vread, update,
//!   patch, delete, history, create, search, compartment search);
//! - FHIR R4 CompartmentDefinition `patient` (the table in this file).
//!
//! Choices made where the specifications leave room:
//! - `GET T/id/_history` needs `r` (it returns versions of one resource, like
//!   vread); `GET T/_history` needs `s` and is treated as an unfiltered search,
//!   since `_history` ignores search parameters: `patient/` scopes and scopes
//!   with search-parameter constraints cannot use it. Conditional update and
//!   delete (`PUT T?query`), operations (`$everything`), whole-system requests
//!   and compartments other than Patient are rejected as unsupported.
//! - `patient/` scopes reach only the patient in context, and only through
//!   links that say whom a resource is *about*: `subject`, `patient`,
//!   `beneficiary` and `individual` where R4 defines them for the type, and
//!   `_id` on Patient. The other R4 compartment links (`performer`, `author`,
//!   `recipient`, `actor`, `payor`, `attester`, `asserter`, Patient `link`,
//!   ...) do not confine a search: an Observation performed by the patient can
//!   be about someone else, and `Patient?link=Patient/123` returns *other*
//!   patients. A search is confined by the compartment URL
//!   (`Patient/123/Encounter`, only for types whose R4 compartment links are
//!   all about-links) or by an about-parameter naming the patient as
//!   `Patient/123` or `param:Patient=123`; a bare `123` only where the
//!   parameter's one R4 target type is Patient (`patient`, `beneficiary`,
//!   `individual`, and Patient `_id`), because elsewhere it can match
//!   Group/123 or Practitioner/123. Every occurrence of an about-parameter,
//!   with any modifier or chain, must name only that patient (a server that
//!   keeps the last of repeated parameters would otherwise answer for another
//!   patient), and no parameter may name another patient (`Patient/456`, or a
//!   bare id on a compartment link or with `:Patient`).
//! - Under `patient/` scopes and scopes with constraints, search parameters
//!   starting with `_` are limited to result controls and filters on the
//!   result itself (`_count`, `_sort`, `_elements`, `_summary`, `_total`,
//!   `_lastUpdated`, `_tag`, `_profile`, `_security`, `_format`, `_pretty`,
//!   `_id`, `_include`, `_revinclude`). `_has` (also inside a chain) matches
//!   on resources of other patients and answers questions about them; `_query`,
//!   `_filter`, `_list`, `_text`, `_content`, `_contained` and the like select
//!   results in ways the policy cannot see. Every occurrence of a constrained
//!   parameter must carry only allowed values, for the same last-value reason.
//! - Reads, updates, patches and deletes by id of compartment types cannot be
//!   judged without the stored resource, so they are `Conditional`:
//!   [`Condition::InPatientCompartment`] for reads and deletes, and
//!   [`Condition::StoredAndResultInPatientCompartment`] for updates and
//!   patches, because a write must neither touch another patient's resource
//!   nor leave one that reaches another patient. The `Patient` resource itself
//!   is judged directly by id.
//! - Create and update bodies are scanned for every `reference` string
//!   (contained resources included, at most [`MAX_BODY_DEPTH`] levels deep and
//!   [`MAX_BODY_REFERENCES`] references). Any reference to another patient,
//!   relative or absolute, with or without `/_history`, refuses the write. A
//!   create is permitted outright only when its `subject`/`patient`/
//!   `beneficiary`/`individual` name the patient in context; otherwise it is
//!   conditional on compartment membership.
//! - Group is treated as outside the Patient compartment under `patient/`
//!   scopes although R4 lists it there: a Group lists all of its members.
//! - Types outside the Patient compartment under `patient/` scopes: only
//!   patient-independent reference data (Medication, Practitioner,
//!   Organization, Location, terminology and definitional resources; see
//!   [`is_patient_independent`]) may be read and searched, because apps need
//!   them to display the patient's own records and they hold nothing about
//!   any patient. They may not be changed, as that would alter data every
//!   patient shares. Every other such type (Binary, Task, Device, Bundle, ...)
//!   is denied: it can carry patient data that no compartment rule confines.
//! - `_include` and `_revinclude` can pull in resources the scope does not
//!   name, so they add a condition unless the scope is a `user/*` or
//!   `system/*` wildcard.
//! - Query strings are decoded as HTML forms (`+` is a space), as servlet
//!   containers do. The HTTP layer passes a form-encoded `POST _search` body as
//!   a JSON string; its parameters are judged together with the query's.

use std::fmt;

use serde_json::{json, Value};

use super::scopes::{
    is_resource_type_name, is_search_parameter_name, Permission, ResourceScope, ResourceType,
    ScopeContext, ScopeSet,
};

/// Longest relative URL accepted; FHIR servers commonly cap URLs near 8 KiB.
pub const MAX_URL_BYTES: usize = 8192;

/// Most query parameters accepted in one request.
pub const MAX_PARAMETERS: usize = 100;

/// FHIR R4 Patient compartment: each member type, the search parameters the
/// CompartmentDefinition names for it, and further R4 `patient`/`subject`
/// parameters of that type that also link it to a patient.
const PATIENT_COMPARTMENT: &[(&str, &[&str], &[&str])] = &[
    ("Account", &["subject"], &["patient"]),
    ("AdverseEvent", &["subject"], &[]),
    (
        "AllergyIntolerance",
        &["patient", "recorder", "asserter"],
        &[],
    ),
    ("Appointment", &["actor"], &["patient"]),
    ("AppointmentResponse", &["actor"], &["patient"]),
    ("AuditEvent", &["patient"], &[]),
    ("Basic", &["patient", "author"], &["subject"]),
    ("BodyStructure", &["patient"], &[]),
    ("CarePlan", &["patient", "performer"], &["subject"]),
    ("CareTeam", &["patient", "participant"], &["subject"]),
    ("ChargeItem", &["subject"], &["patient"]),
    ("Claim", &["patient", "payee"], &[]),
    ("ClaimResponse", &["patient"], &[]),
    ("ClinicalImpression", &["subject"], &["patient"]),
    (
        "Communication",
        &["subject", "sender", "recipient"],
        &["patient"],
    ),
    (
        "CommunicationRequest",
        &["subject", "sender", "recipient", "requester"],
        &["patient"],
    ),
    (
        "Composition",
        &["subject", "author", "attester"],
        &["patient"],
    ),
    ("Condition", &["patient", "asserter"], &["subject"]),
    ("Consent", &["patient"], &[]),
    (
        "Coverage",
        &["policy-holder", "subscriber", "beneficiary", "payor"],
        &["patient"],
    ),
    ("CoverageEligibilityRequest", &["patient"], &[]),
    ("CoverageEligibilityResponse", &["patient"], &[]),
    ("DetectedIssue", &["patient"], &[]),
    ("DeviceRequest", &["subject", "performer"], &["patient"]),
    ("DeviceUseStatement", &["subject"], &["patient"]),
    ("DiagnosticReport", &["subject"], &["patient"]),
    (
        "DocumentManifest",
        &["subject", "author", "recipient"],
        &["patient"],
    ),
    ("DocumentReference", &["subject", "author"], &["patient"]),
    ("Encounter", &["patient"], &["subject"]),
    ("EnrollmentRequest", &["subject"], &["patient"]),
    ("EpisodeOfCare", &["patient"], &[]),
    ("ExplanationOfBenefit", &["patient", "payee"], &[]),
    ("FamilyMemberHistory", &["patient"], &[]),
    ("Flag", &["patient"], &["subject"]),
    ("Goal", &["patient"], &["subject"]),
    ("Group", &["member"], &[]),
    ("ImagingStudy", &["patient"], &["subject"]),
    ("Immunization", &["patient"], &[]),
    ("ImmunizationEvaluation", &["patient"], &[]),
    ("ImmunizationRecommendation", &["patient"], &[]),
    ("Invoice", &["subject", "patient", "recipient"], &[]),
    ("List", &["subject", "source"], &["patient"]),
    ("MeasureReport", &["patient"], &["subject"]),
    ("Media", &["subject"], &["patient"]),
    (
        "MedicationAdministration",
        &["patient", "performer", "subject"],
        &[],
    ),
    (
        "MedicationDispense",
        &["subject", "patient", "receiver"],
        &[],
    ),
    ("MedicationRequest", &["subject"], &["patient"]),
    ("MedicationStatement", &["subject"], &["patient"]),
    ("MolecularSequence", &["patient"], &[]),
    ("NutritionOrder", &["patient"], &[]),
    ("Observation", &["subject", "performer"], &["patient"]),
    ("Patient", &["link"], &[]),
    ("Person", &["patient"], &[]),
    ("Procedure", &["patient", "performer"], &["subject"]),
    ("Provenance", &["patient"], &[]),
    (
        "QuestionnaireResponse",
        &["subject", "author"],
        &["patient"],
    ),
    ("RelatedPerson", &["patient"], &[]),
    ("RequestGroup", &["subject", "participant"], &["patient"]),
    ("ResearchSubject", &["individual"], &["patient"]),
    ("RiskAssessment", &["subject"], &["patient"]),
    ("Schedule", &["actor"], &[]),
    ("ServiceRequest", &["subject", "performer"], &["patient"]),
    ("Specimen", &["subject"], &["patient"]),
    ("SupplyDelivery", &["patient"], &[]),
    ("SupplyRequest", &["subject"], &[]),
    ("VisionPrescription", &["patient"], &[]),
];

/// R4 types outside the Patient compartment that describe no patient; see the
/// module doc for why `patient/` scopes may read these and nothing else.
const PATIENT_INDEPENDENT_TYPES: &[&str] = &[
    "ActivityDefinition",
    "CapabilityStatement",
    "CodeSystem",
    "ConceptMap",
    "DeviceDefinition",
    "Endpoint",
    "HealthcareService",
    "ImplementationGuide",
    "InsurancePlan",
    "Library",
    "Location",
    "Measure",
    "Medication",
    "MedicationKnowledge",
    "NamingSystem",
    "ObservationDefinition",
    "OperationDefinition",
    "Organization",
    "OrganizationAffiliation",
    "PlanDefinition",
    "Practitioner",
    "PractitionerRole",
    "Questionnaire",
    "SearchParameter",
    "SpecimenDefinition",
    "StructureDefinition",
    "Substance",
    "TerminologyCapabilities",
    "ValueSet",
];

/// Body elements that name the patient a new or updated resource is about.
const PATIENT_LINK_ELEMENTS: [&str; 4] = ["subject", "patient", "beneficiary", "individual"];

/// Search parameters that say whom a resource is about; under `patient/`
/// scopes only these confine a search (see the module doc for why the other
/// compartment links do not).
const ABOUT_PATIENT_PARAMETERS: [&str; 4] = ["subject", "patient", "beneficiary", "individual"];

/// About-parameters whose only R4 target type is Patient, so a bare id can
/// mean nothing but `Patient/[id]`. `subject` also targets Group, Device,
/// Location and more, so it needs `Patient/[id]` or `subject:Patient=[id]`.
const PATIENT_ONLY_PARAMETERS: [&str; 3] = ["patient", "beneficiary", "individual"];

/// `_`-parameters that `patient/` and constrained scopes accept: they shape
/// the result or filter on the result's own metadata, never on other
/// resources. `_include`/`_revinclude` do add other resources, which
/// [`Condition::IncludedResourcesAuthorized`] leaves to the server.
const ALLOWED_SPECIAL_PARAMETERS: [&str; 14] = [
    "_count",
    "_sort",
    "_elements",
    "_summary",
    "_total",
    "_lastUpdated",
    "_tag",
    "_profile",
    "_security",
    "_format",
    "_pretty",
    "_id",
    "_include",
    "_revinclude",
];

/// Deepest nesting of a create or update body that is scanned for references;
/// real resources stay far below it, and deeper bodies are refused under
/// `patient/` scopes rather than judged on a partial scan.
pub const MAX_BODY_DEPTH: usize = 32;

/// Most `reference` strings read from one body, for the same reason.
pub const MAX_BODY_REFERENCES: usize = 1000;

/// Whether `resource_type` is in the FHIR R4 Patient compartment.
pub fn is_in_patient_compartment(resource_type: &str) -> bool {
    compartment_entry(resource_type).is_some()
}

/// The R4 CompartmentDefinition parameters linking `resource_type` to a
/// patient, or `None` when the type is not in the Patient compartment.
pub fn patient_compartment_parameters(resource_type: &str) -> Option<&'static [&'static str]> {
    compartment_entry(resource_type).map(|(_, compartment, _)| *compartment)
}

/// Whether `resource_type` is patient-independent reference data that
/// `patient/` scopes may read.
pub fn is_patient_independent(resource_type: &str) -> bool {
    PATIENT_INDEPENDENT_TYPES.contains(&resource_type)
}

fn compartment_entry(
    resource_type: &str,
) -> Option<&'static (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
)> {
    PATIENT_COMPARTMENT
        .iter()
        .find(|(name, _, _)| *name == resource_type)
}

/// Every R4 parameter linking `resource_type` to a patient: the
/// CompartmentDefinition's (Patient `link` among them) and the further
/// `patient`/`subject` aliases. A bare id on any of them may mean a Patient.
fn compartment_link_parameters(resource_type: &str) -> Vec<&'static str> {
    compartment_entry(resource_type)
        .map(|(_, compartment, aliases)| {
            compartment.iter().chain(aliases.iter()).copied().collect()
        })
        .unwrap_or_default()
}

/// The parameters that confine a `patient/` search of `resource_type` to the
/// patient the results are about.
fn about_patient_parameters(resource_type: &str) -> Vec<&'static str> {
    if resource_type == "Patient" {
        return vec!["_id"];
    }
    compartment_link_parameters(resource_type)
        .into_iter()
        .filter(|name| ABOUT_PATIENT_PARAMETERS.contains(name))
        .collect()
}

/// The first R4 compartment link of `resource_type` that does not say whom
/// the resource is about, which makes a `Patient/[id]/[type]` search reach
/// resources about other patients.
fn non_about_compartment_link(resource_type: &str) -> Option<&'static str> {
    patient_compartment_parameters(resource_type)?
        .iter()
        .find(|name| !ABOUT_PATIENT_PARAMETERS.contains(name))
        .copied()
}

/// A FHIR RESTful interaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Interaction {
    Read,
    VRead,
    /// `GET T/id/_history`.
    InstanceHistory,
    /// `GET T/_history`.
    TypeHistory,
    Search,
    Create,
    Update,
    Patch,
    Delete,
}

impl Interaction {
    /// The SMART v2 letter a scope must grant for this interaction.
    pub fn required_permission(self) -> Permission {
        match self {
            Interaction::Read | Interaction::VRead | Interaction::InstanceHistory => {
                Permission::Read
            }
            Interaction::Search | Interaction::TypeHistory => Permission::Search,
            Interaction::Create => Permission::Create,
            Interaction::Update | Interaction::Patch => Permission::Update,
            Interaction::Delete => Permission::Delete,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Interaction::Read => "read",
            Interaction::VRead => "vread",
            Interaction::InstanceHistory => "history",
            Interaction::TypeHistory => "type history",
            Interaction::Search => "search",
            Interaction::Create => "create",
            Interaction::Update => "update",
            Interaction::Patch => "patch",
            Interaction::Delete => "delete",
        }
    }
}

impl fmt::Display for Interaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a request could not be understood well enough to judge it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyError {
    UnsupportedMethod { method: String },
    UrlTooLong { bytes: usize },
    AbsoluteUrl,
    Fragment,
    PathTraversal,
    EmptyPathSegment,
    EmptyResourceType,
    InvalidResourceType { segment: String },
    InvalidId { segment: String },
    InvalidPercentEncoding { text: String },
    TooManyParameters,
    UnsupportedOperation { operation: String },
    ConditionalInteraction { method: String },
    MethodNotAllowed { method: String, path: String },
    UnsupportedCompartment { compartment: String },
    NotInPatientCompartment { resource_type: String },
    UnsupportedUrl { path: String },
    InvalidBody { reason: String },
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::UnsupportedMethod { method } => write!(
                f,
                "HTTP method `{method}` is not a FHIR interaction; expected GET, POST, PUT, PATCH or DELETE"
            ),
            PolicyError::UrlTooLong { bytes } => {
                write!(f, "URL is {bytes} bytes long; at most {MAX_URL_BYTES} are accepted")
            }
            PolicyError::AbsoluteUrl => {
                f.write_str("URL must be relative to the FHIR base, such as Observation/123")
            }
            PolicyError::Fragment => f.write_str("URL must not contain a `#` fragment"),
            PolicyError::PathTraversal => f.write_str("URL path must not contain `.` or `..` segments"),
            PolicyError::EmptyPathSegment => f.write_str("URL path has an empty segment (`//` or a trailing `/`)"),
            PolicyError::EmptyResourceType => f.write_str("URL names no resource type"),
            PolicyError::InvalidResourceType { segment } => {
                write!(f, "`{segment}` is not a FHIR resource type")
            }
            PolicyError::InvalidId { segment } => write!(
                f,
                "`{segment}` is not a FHIR id (1 to 64 of A-Z, a-z, 0-9, `-` and `.`)"
            ),
            PolicyError::InvalidPercentEncoding { text } => {
                write!(f, "`{text}` has invalid percent-encoding or is not UTF-8")
            }
            PolicyError::TooManyParameters => {
                write!(f, "more than {MAX_PARAMETERS} query parameters")
            }
            PolicyError::UnsupportedOperation { operation } => {
                write!(f, "operation `{operation}` cannot be judged by scope policy")
            }
            PolicyError::ConditionalInteraction { method } => write!(
                f,
                "conditional {method} (with search parameters instead of an id) is not supported"
            ),
            PolicyError::MethodNotAllowed { method, path } => {
                write!(f, "{method} is not a FHIR interaction on `{path}`")
            }
            PolicyError::UnsupportedCompartment { compartment } => write!(
                f,
                "compartment searches are supported for Patient only, not {compartment}"
            ),
            PolicyError::NotInPatientCompartment { resource_type } => {
                write!(f, "{resource_type} is not in the Patient compartment")
            }
            PolicyError::UnsupportedUrl { path } => {
                write!(f, "`{path}` is not a supported FHIR REST URL")
            }
            PolicyError::InvalidBody { reason } => write!(f, "request body: {reason}"),
        }
    }
}

impl std::error::Error for PolicyError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    /// HTTP methods are case-sensitive (RFC 9110 §9.1), so `get` is rejected.
    fn parse(method: &str) -> Result<Method, PolicyError> {
        match method {
            "GET" => Ok(Method::Get),
            "POST" => Ok(Method::Post),
            "PUT" => Ok(Method::Put),
            "PATCH" => Ok(Method::Patch),
            "DELETE" => Ok(Method::Delete),
            other => Err(PolicyError::UnsupportedMethod {
                method: other.chars().take(16).collect(),
            }),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

/// A FHIR REST request reduced to what scope policy needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FhirRequest {
    interaction: Interaction,
    resource_type: String,
    id: Option<String>,
    version_id: Option<String>,
    compartment_patient: Option<String>,
    parameters: Vec<(String, String)>,
    body_references: Option<BodyReferences>,
}

/// The references of a create or update body, as the policy reads them.
#[derive(Clone, Debug, PartialEq, Eq)]
struct BodyReferences {
    /// The `reference` of each top-level patient-link element, `""` where
    /// unreadable.
    links: Vec<String>,
    /// Every `reference` string anywhere in the body, contained resources
    /// included.
    all: Vec<String>,
    /// False when the scan stopped at [`MAX_BODY_DEPTH`] or
    /// [`MAX_BODY_REFERENCES`], so `all` may miss some.
    complete: bool,
}

/// The request target named by the URL path alone.
struct Route {
    interaction: Interaction,
    resource_type: String,
    id: Option<String>,
    version_id: Option<String>,
    compartment_patient: Option<String>,
}

impl FhirRequest {
    /// Parses a request relative to the FHIR base, such as
    /// `GET Observation?patient=123`. One leading `/` is tolerated. `body` is
    /// the parsed JSON resource for create and update, or a form-encoded
    /// `POST _search` body passed as a JSON string.
    ///
    /// # Errors
    /// A [`PolicyError`] naming what makes the request unjudgeable: an unknown
    /// method, an absolute, over-long or traversing URL, an invalid type or
    /// id, an unsupported URL form, or a body contradicting the URL.
    pub fn parse(
        method: &str,
        relative_url: &str,
        body: Option<&Value>,
    ) -> Result<FhirRequest, PolicyError> {
        let method = Method::parse(method)?;
        if relative_url.len() > MAX_URL_BYTES {
            return Err(PolicyError::UrlTooLong {
                bytes: relative_url.len(),
            });
        }
        let (path, query) = split_url(relative_url)?;
        let segments = path_segments(path)?;
        let mut parameters = parse_query(query.unwrap_or_default())?;
        let route = route(method, path, &segments, query.is_some())?;
        if let Some(form) = search_form_body(method, &route, body)? {
            parameters.extend(parse_query(form)?);
            if parameters.len() > MAX_PARAMETERS {
                return Err(PolicyError::TooManyParameters);
            }
        }
        let body_references = resource_body_references(&route, body)?;
        Ok(FhirRequest {
            interaction: route.interaction,
            resource_type: route.resource_type,
            id: route.id,
            version_id: route.version_id,
            compartment_patient: route.compartment_patient,
            parameters,
            body_references,
        })
    }

    pub fn interaction(&self) -> Interaction {
        self.interaction
    }

    pub fn resource_type(&self) -> &str {
        &self.resource_type
    }

    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    pub fn version_id(&self) -> Option<&str> {
        self.version_id.as_deref()
    }

    /// The patient id of a compartment search such as `Patient/123/Observation`.
    pub fn compartment_patient(&self) -> Option<&str> {
        self.compartment_patient.as_deref()
    }

    /// Percent-decoded query (and form body) parameters in request order.
    pub fn parameters(&self) -> &[(String, String)] {
        &self.parameters
    }

    /// References found in the body's patient-linking elements; `None` when
    /// no resource body was given. Unreadable references appear as `""`.
    pub fn body_patient_references(&self) -> Option<&[String]> {
        self.body_references
            .as_ref()
            .map(|body| body.links.as_slice())
    }

    /// Every `reference` string found anywhere in the body, contained
    /// resources included; `None` when no resource body was given.
    pub fn body_references(&self) -> Option<&[String]> {
        self.body_references
            .as_ref()
            .map(|body| body.all.as_slice())
    }

    /// False when the body was too deep or held too many references to be
    /// read whole; true when it was, or when there is no body.
    pub fn body_fully_scanned(&self) -> bool {
        self.body_references
            .as_ref()
            .is_none_or(|body| body.complete)
    }

    fn has_includes(&self) -> bool {
        self.parameters.iter().any(|(name, _)| {
            let base = name.split(':').next().unwrap_or_default();
            base == "_include" || base == "_revinclude"
        })
    }
}

fn split_url(relative_url: &str) -> Result<(&str, Option<&str>), PolicyError> {
    let url = relative_url.strip_prefix('/').unwrap_or(relative_url);
    if url.contains('#') {
        return Err(PolicyError::Fragment);
    }
    let (path, query) = match url.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (url, None),
    };
    let first_segment = path.split('/').next().unwrap_or_default();
    if path.starts_with('/') || first_segment.contains(':') {
        return Err(PolicyError::AbsoluteUrl);
    }
    Ok((path, query))
}

fn path_segments(path: &str) -> Result<Vec<&str>, PolicyError> {
    if path.is_empty() {
        return Err(PolicyError::EmptyResourceType);
    }
    let segments: Vec<&str> = path.split('/').collect();
    if segments.iter().any(|s| *s == "." || *s == "..") {
        return Err(PolicyError::PathTraversal);
    }
    if segments.iter().any(|s| s.is_empty()) {
        return Err(PolicyError::EmptyPathSegment);
    }
    if let Some(operation) = segments.iter().find(|s| s.starts_with('$')) {
        return Err(PolicyError::UnsupportedOperation {
            operation: operation.chars().take(64).collect(),
        });
    }
    Ok(segments)
}

impl Route {
    fn on_type(interaction: Interaction, resource_type: &str) -> Result<Route, PolicyError> {
        Ok(Route {
            interaction,
            resource_type: fhir_resource_type(resource_type)?,
            id: None,
            version_id: None,
            compartment_patient: None,
        })
    }

    fn on_instance(
        interaction: Interaction,
        resource_type: &str,
        id: &str,
        version_id: Option<&str>,
    ) -> Result<Route, PolicyError> {
        Ok(Route {
            id: Some(fhir_id(id)?),
            version_id: version_id.map(fhir_id).transpose()?,
            ..Route::on_type(interaction, resource_type)?
        })
    }

    /// `Patient/[id]/[type]`: a search confined to one patient's compartment.
    fn in_patient_compartment(
        compartment: &str,
        patient: &str,
        resource_type: &str,
    ) -> Result<Route, PolicyError> {
        let compartment = fhir_resource_type(compartment)?;
        if compartment != "Patient" {
            return Err(PolicyError::UnsupportedCompartment { compartment });
        }
        let route = Route {
            compartment_patient: Some(fhir_id(patient)?),
            ..Route::on_type(Interaction::Search, resource_type)?
        };
        if !is_in_patient_compartment(&route.resource_type) {
            return Err(PolicyError::NotInPatientCompartment {
                resource_type: route.resource_type,
            });
        }
        Ok(route)
    }
}

fn route(
    method: Method,
    path: &str,
    segments: &[&str],
    has_query: bool,
) -> Result<Route, PolicyError> {
    let not_allowed = || PolicyError::MethodNotAllowed {
        method: method.as_str().to_string(),
        path: path.chars().take(128).collect(),
    };
    match (method, segments) {
        (Method::Get, [resource_type]) => Route::on_type(Interaction::Search, resource_type),
        (Method::Post, [resource_type]) => Route::on_type(Interaction::Create, resource_type),
        (_, [_]) if has_query => Err(PolicyError::ConditionalInteraction {
            method: method.as_str().to_string(),
        }),
        (Method::Post, [resource_type, "_search"]) => {
            Route::on_type(Interaction::Search, resource_type)
        }
        (Method::Get, [resource_type, "_history"]) => {
            Route::on_type(Interaction::TypeHistory, resource_type)
        }
        (_, [_] | [_, "_search" | "_history"]) => Err(not_allowed()),
        (Method::Get, [resource_type, id]) => {
            Route::on_instance(Interaction::Read, resource_type, id, None)
        }
        (Method::Put, [resource_type, id]) => {
            Route::on_instance(Interaction::Update, resource_type, id, None)
        }
        (Method::Patch, [resource_type, id]) => {
            Route::on_instance(Interaction::Patch, resource_type, id, None)
        }
        (Method::Delete, [resource_type, id]) => {
            Route::on_instance(Interaction::Delete, resource_type, id, None)
        }
        (Method::Post, [_, _]) => Err(not_allowed()),
        (Method::Get, [resource_type, id, "_history"]) => {
            Route::on_instance(Interaction::InstanceHistory, resource_type, id, None)
        }
        (Method::Get, [resource_type, id, "_history", version]) => {
            Route::on_instance(Interaction::VRead, resource_type, id, Some(version))
        }
        (Method::Get, [compartment, patient, resource_type])
        | (Method::Post, [compartment, patient, resource_type, "_search"]) => {
            Route::in_patient_compartment(compartment, patient, resource_type)
        }
        _ => Err(PolicyError::UnsupportedUrl {
            path: path.chars().take(128).collect(),
        }),
    }
}

fn fhir_resource_type(segment: &str) -> Result<String, PolicyError> {
    if is_resource_type_name(segment) {
        Ok(segment.to_string())
    } else {
        Err(PolicyError::InvalidResourceType {
            segment: segment.chars().take(64).collect(),
        })
    }
}

/// FHIR `id`: `[A-Za-z0-9\-\.]{1,64}`.
fn fhir_id(segment: &str) -> Result<String, PolicyError> {
    let valid = (1..=64).contains(&segment.len())
        && segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if valid {
        Ok(segment.to_string())
    } else {
        Err(PolicyError::InvalidId {
            segment: segment.chars().take(64).collect(),
        })
    }
}

fn parse_query(query: &str) -> Result<Vec<(String, String)>, PolicyError> {
    let pairs: Vec<&str> = query.split('&').filter(|pair| !pair.is_empty()).collect();
    if pairs.len() > MAX_PARAMETERS {
        return Err(PolicyError::TooManyParameters);
    }
    pairs
        .into_iter()
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(name)?, percent_decode(value)?))
        })
        .collect()
}

fn percent_decode(text: &str) -> Result<String, PolicyError> {
    let invalid = || PolicyError::InvalidPercentEncoding {
        text: text.chars().take(64).collect(),
    };
    let mut bytes = text.bytes();
    let mut decoded = Vec::with_capacity(text.len());
    while let Some(byte) = bytes.next() {
        match byte {
            b'%' => {
                let high = bytes.next().and_then(hex_digit).ok_or_else(invalid)?;
                let low = bytes.next().and_then(hex_digit).ok_or_else(invalid)?;
                decoded.push((high << 4) | low);
            }
            b'+' => decoded.push(b' '),
            other => decoded.push(other),
        }
    }
    String::from_utf8(decoded).map_err(|_| invalid())
}

fn hex_digit(byte: u8) -> Option<u8> {
    char::from(byte)
        .to_digit(16)
        .and_then(|digit| u8::try_from(digit).ok())
}

fn search_form_body<'a>(
    method: Method,
    route: &Route,
    body: Option<&'a Value>,
) -> Result<Option<&'a str>, PolicyError> {
    if method != Method::Post || route.interaction != Interaction::Search {
        return Ok(None);
    }
    match body {
        None => Ok(None),
        Some(Value::String(form)) => Ok(Some(form)),
        Some(_) => Err(PolicyError::InvalidBody {
            reason: "a _search body must be form-encoded parameters passed as a string".into(),
        }),
    }
}

fn resource_body_references(
    route: &Route,
    body: Option<&Value>,
) -> Result<Option<BodyReferences>, PolicyError> {
    if !matches!(route.interaction, Interaction::Create | Interaction::Update) {
        return Ok(None);
    }
    let Some(body) = body else {
        return Ok(None);
    };
    let Value::Object(resource) = body else {
        return Err(PolicyError::InvalidBody {
            reason: "expected a JSON resource object".into(),
        });
    };
    let body_type = resource.get("resourceType").and_then(Value::as_str);
    if body_type != Some(route.resource_type.as_str()) {
        return Err(PolicyError::InvalidBody {
            reason: format!(
                "resourceType is {}, but the URL names {}",
                body_type.unwrap_or("missing"),
                route.resource_type
            ),
        });
    }
    let body_id = resource.get("id").and_then(Value::as_str);
    if route.interaction == Interaction::Update
        && body_id.is_some()
        && body_id != route.id.as_deref()
    {
        return Err(PolicyError::InvalidBody {
            reason: "the resource id differs from the id in the URL".into(),
        });
    }
    let links = PATIENT_LINK_ELEMENTS
        .iter()
        .filter_map(|element| resource.get(*element))
        .flat_map(references_in)
        .collect();
    let mut all = Vec::new();
    let complete = collect_references(body, 0, &mut all);
    Ok(Some(BodyReferences {
        links,
        all,
        complete,
    }))
}

/// Pushes every `reference` string under `value` onto `found`, since a link to
/// another patient can sit in any element (`recipient`, `performer`,
/// extensions, contained resources). Returns false when it stopped at the
/// depth or count limit, which keeps a hostile body from costing unbounded
/// time or hiding a reference past the limit.
fn collect_references(value: &Value, depth: usize, found: &mut Vec<String>) -> bool {
    let container = matches!(value, Value::Object(_) | Value::Array(_));
    if container && depth >= MAX_BODY_DEPTH {
        return false;
    }
    match value {
        Value::Object(members) => members.iter().all(|(key, member)| match member {
            Value::String(reference) if key == "reference" => {
                if found.len() >= MAX_BODY_REFERENCES {
                    return false;
                }
                found.push(reference.clone());
                true
            }
            _ => collect_references(member, depth + 1, found),
        }),
        Value::Array(items) => items
            .iter()
            .all(|item| collect_references(item, depth + 1, found)),
        _ => true,
    }
}

fn references_in(element: &Value) -> Vec<String> {
    match element {
        Value::Array(items) => items.iter().map(reference_text).collect(),
        single => vec![reference_text(single)],
    }
}

/// The `reference` of a FHIR Reference, or `""` when it has none we can read
/// (identifier-only, malformed), which later counts as unresolvable.
fn reference_text(element: &Value) -> String {
    element
        .get("reference")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Something the resource server must check before acting on a conditional
/// permit, because the request alone does not show it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Condition {
    /// The resource read, deleted or created is about this patient: its
    /// subject, patient, beneficiary or individual reference names the
    /// patient, and it refers to no other patient. (Membership through a
    /// performer or author link is not enough: a patient-performed
    /// Observation can be about someone else.)
    InPatientCompartment { patient: String },
    /// For update and patch: both the stored version and the version the
    /// request would produce are in this patient's compartment and in no other
    /// patient's. The stored version alone would let a write move a resource
    /// to another patient; the result alone would let it overwrite another
    /// patient's resource.
    StoredAndResultInPatientCompartment { patient: String },
    /// The resource matches this search parameter, as a granular scope such as
    /// `patient/Observation.rs?category=...` requires.
    MatchesSearchParameter { name: String, value: String },
    /// Resources added by `_include`/`_revinclude` are each authorized on
    /// their own, since the scope that permitted the search may not name them.
    IncludedResourcesAuthorized,
}

impl Condition {
    pub fn to_json(&self) -> Value {
        let text = self.to_string();
        match self {
            Condition::InPatientCompartment { patient } => {
                json!({ "condition": "in_patient_compartment", "patient": patient, "text": text })
            }
            Condition::StoredAndResultInPatientCompartment { patient } => json!({
                "condition": "stored_and_result_in_patient_compartment",
                "patient": patient,
                "text": text
            }),
            Condition::MatchesSearchParameter { name, value } => json!({
                "condition": "matches_search_parameter",
                "name": name,
                "value": value,
                "text": text
            }),
            Condition::IncludedResourcesAuthorized => {
                json!({ "condition": "included_resources_authorized", "text": text })
            }
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::InPatientCompartment { patient } => {
                write!(f, "resource is about Patient/{patient} (its subject, patient, beneficiary or individual is Patient/{patient}) and refers to no other patient")
            }
            Condition::StoredAndResultInPatientCompartment { patient } => write!(
                f,
                "both the stored resource and the resource as this request would leave it are in the compartment of Patient/{patient} and of no other patient"
            ),
            Condition::MatchesSearchParameter { name, value } => {
                write!(f, "resource matches {name}={value}")
            }
            Condition::IncludedResourcesAuthorized => {
                f.write_str("each _include/_revinclude result is authorized separately")
            }
        }
    }
}

/// The answer to "may this token do this request?".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Permit {
        scope: String,
    },
    Deny {
        reason: String,
    },
    /// Permitted by `scope` once every condition is verified against the
    /// stored or returned resources.
    Conditional {
        scope: String,
        must_verify: Vec<Condition>,
    },
}

impl Decision {
    pub fn is_deny(&self) -> bool {
        matches!(self, Decision::Deny { .. })
    }

    /// `{decision, scope, reason, must_verify}`, with `null` and `[]` where a
    /// field does not apply, so consumers see one shape.
    pub fn to_json(&self) -> Value {
        let (decision, scope, reason, conditions): (
            &str,
            Option<&str>,
            Option<&str>,
            &[Condition],
        ) = match self {
            Decision::Permit { scope } => ("permit", Some(scope), None, &[]),
            Decision::Deny { reason } => ("deny", None, Some(reason), &[]),
            Decision::Conditional { scope, must_verify } => {
                ("conditional", Some(scope), None, must_verify)
            }
        };
        json!({
            "decision": decision,
            "scope": scope,
            "reason": reason,
            "must_verify": conditions.iter().map(Condition::to_json).collect::<Vec<_>>(),
        })
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Permit { scope } => write!(f, "permit by {scope}"),
            Decision::Deny { reason } => write!(f, "deny: {reason}"),
            Decision::Conditional { scope, must_verify } => {
                write!(f, "permit by {scope} if ")?;
                for (index, condition) in must_verify.iter().enumerate() {
                    if index > 0 {
                        f.write_str(" and ")?;
                    }
                    condition.fmt(f)?;
                }
                Ok(())
            }
        }
    }
}

/// One granted scope's view of the request.
enum Verdict {
    Permit,
    Conditional(Vec<Condition>),
    Deny(String),
}

/// Decides whether `granted` allows `request`, naming the scope that allows it
/// with the fewest conditions or, failing that, why every candidate refused.
pub fn check(
    granted: &ScopeSet,
    patient_in_context: Option<&str>,
    request: &FhirRequest,
) -> Decision {
    let verdicts: Vec<(&ResourceScope, Verdict)> = granted
        .resource_scopes()
        .filter(|scope| scope_applies(scope, request))
        .map(|scope| (scope, judge(scope, patient_in_context, request)))
        .collect();
    if let Some((scope, _)) = verdicts.iter().find(|(_, v)| matches!(v, Verdict::Permit)) {
        return Decision::Permit {
            scope: scope.to_string(),
        };
    }
    let fewest_conditions = verdicts
        .iter()
        .filter_map(|(scope, verdict)| match verdict {
            Verdict::Conditional(conditions) => Some((scope, conditions)),
            _ => None,
        })
        .min_by_key(|(_, conditions)| conditions.len());
    if let Some((scope, conditions)) = fewest_conditions {
        return Decision::Conditional {
            scope: scope.to_string(),
            must_verify: conditions.clone(),
        };
    }
    Decision::Deny {
        reason: denial_reason(&verdicts, request),
    }
}

fn scope_applies(scope: &ResourceScope, request: &FhirRequest) -> bool {
    scope.resource.matches(&request.resource_type)
        && scope
            .permissions
            .contains(request.interaction.required_permission())
}

fn denial_reason(verdicts: &[(&ResourceScope, Verdict)], request: &FhirRequest) -> String {
    let mut reasons: Vec<&str> = Vec::new();
    for (_, verdict) in verdicts {
        if let Verdict::Deny(reason) = verdict {
            if !reasons.contains(&reason.as_str()) {
                reasons.push(reason);
            }
        }
    }
    if reasons.is_empty() {
        let interaction = request.interaction;
        return format!(
            "no granted scope allows {interaction} ({}) on {}",
            interaction.required_permission().letter(),
            request.resource_type
        );
    }
    reasons.join("; ")
}

fn judge(
    scope: &ResourceScope,
    patient_in_context: Option<&str>,
    request: &FhirRequest,
) -> Verdict {
    let mut conditions = Vec::new();
    let patient = if scope.context == ScopeContext::Patient {
        match usable_patient(patient_in_context) {
            Ok(patient) => Some(patient),
            Err(reason) => return Verdict::Deny(reason),
        }
    } else {
        None
    };
    let restricted = patient.is_some() || !scope.constraints.is_empty();
    if restricted && request.interaction == Interaction::Search {
        if let Err(reason) = restrict_special_parameters(request) {
            return Verdict::Deny(reason);
        }
    }
    if let Some(patient) = patient {
        match confine_to_patient(patient, request) {
            Ok(found) => conditions.extend(found),
            Err(reason) => return Verdict::Deny(reason),
        }
    }
    match constraint_conditions(scope, request) {
        Ok(found) => conditions.extend(found),
        Err(reason) => return Verdict::Deny(reason),
    }
    if request.has_includes() && include_needs_check(scope) {
        conditions.push(Condition::IncludedResourcesAuthorized);
    }
    if conditions.is_empty() {
        Verdict::Permit
    } else {
        Verdict::Conditional(conditions)
    }
}

/// Only a `user/*` or `system/*` scope without constraints already allows
/// whatever an include could add.
fn include_needs_check(scope: &ResourceScope) -> bool {
    let reaches_everything = scope.context != ScopeContext::Patient
        && scope.resource == ResourceType::Any
        && scope.constraints.is_empty();
    !reaches_everything
}

/// The patient a `patient/` scope is limited to.
fn usable_patient(patient_in_context: Option<&str>) -> Result<&str, String> {
    let Some(patient) = patient_in_context else {
        return Err(
            "patient-level scopes need a patient in context, and this token has none".into(),
        );
    };
    // An empty or odd id could match empty or crafted filter values.
    if fhir_id(patient).is_err() {
        return Err("the patient in context is not a valid FHIR id".into());
    }
    Ok(patient)
}

/// `Observation?patient=123` becomes `("patient", "")`, `subject:Patient`
/// becomes `("subject", ":Patient")` and `subject.name` becomes
/// `("subject", ".name")`: servers file modifiers and chains under the base
/// name, so the policy treats them as occurrences of it.
fn split_parameter(name: &str) -> (&str, &str) {
    let end = name.find([':', '.']).unwrap_or(name.len());
    name.split_at(end)
}

/// Refuses parameters that `patient/` and constrained scopes cannot confine;
/// see the module doc.
fn restrict_special_parameters(request: &FhirRequest) -> Result<(), String> {
    for (name, _) in &request.parameters {
        // A server that trims or rewrites odd names could read them as a
        // parameter this check never saw.
        if !is_search_parameter_name(name) {
            return Err(format!(
                "search parameter {:?} is not a valid parameter name",
                shorten(name)
            ));
        }
        let special = name
            .split([':', '.'])
            .find(|part| part.starts_with('_') && !ALLOWED_SPECIAL_PARAMETERS.contains(part));
        if let Some(part) = special {
            return Err(format!(
                "search parameter {name} is not allowed under patient-level or constrained scopes, because {part} matches or selects resources in ways the scope cannot confine"
            ));
        }
    }
    Ok(())
}

/// What a `patient/` scope additionally requires: the request stays within
/// the patient in context.
fn confine_to_patient(patient: &str, request: &FhirRequest) -> Result<Vec<Condition>, String> {
    let resource_type = request.resource_type.as_str();
    if resource_type == "Patient" {
        confine_patient_resource(patient, request)
    } else if resource_type == "Group" {
        Err(format!(
            "Group lists all of its members, so patient-level scopes do not cover it even where Patient/{patient} is one"
        ))
    } else if is_in_patient_compartment(resource_type) {
        confine_compartment_member(patient, request)
    } else {
        shared_resource_access(patient, request)
    }
}

fn in_compartment(patient: &str) -> Vec<Condition> {
    vec![Condition::InPatientCompartment {
        patient: patient.to_string(),
    }]
}

fn stored_and_result_in_compartment(patient: &str) -> Vec<Condition> {
    vec![Condition::StoredAndResultInPatientCompartment {
        patient: patient.to_string(),
    }]
}

fn confine_patient_resource(
    patient: &str,
    request: &FhirRequest,
) -> Result<Vec<Condition>, String> {
    match request.interaction {
        Interaction::Create => Err("patient-level scopes cannot create Patient resources".into()),
        Interaction::Search => confine_search(patient, request),
        Interaction::TypeHistory => Err(unconfinable_history(request)),
        Interaction::Read
        | Interaction::VRead
        | Interaction::InstanceHistory
        | Interaction::Delete => own_patient(patient, request).map(|()| Vec::new()),
        // A changed Patient can gain a `link` to another patient, which puts
        // it in that patient's compartment; only a body read whole rules that
        // out.
        Interaction::Update | Interaction::Patch => {
            own_patient(patient, request)?;
            match body_patient_link(patient, request)? {
                BodyPatientLink::NoBody => Ok(stored_and_result_in_compartment(patient)),
                BodyPatientLink::ContextPatient | BodyPatientLink::Unconfirmed => Ok(Vec::new()),
            }
        }
    }
}

fn own_patient(patient: &str, request: &FhirRequest) -> Result<(), String> {
    match request.id.as_deref() {
        Some(id) if id == patient => Ok(()),
        other => Err(format!(
            "Patient/{} is not the patient in context (Patient/{patient})",
            other.unwrap_or_default()
        )),
    }
}

fn confine_compartment_member(
    patient: &str,
    request: &FhirRequest,
) -> Result<Vec<Condition>, String> {
    match request.interaction {
        Interaction::Search => confine_search(patient, request),
        Interaction::TypeHistory => Err(unconfinable_history(request)),
        Interaction::Read
        | Interaction::VRead
        | Interaction::InstanceHistory
        | Interaction::Delete => Ok(in_compartment(patient)),
        // The stored version decides too, so even a body about the patient
        // is not enough; a body naming another patient already refuses.
        Interaction::Update | Interaction::Patch => {
            body_patient_link(patient, request)?;
            Ok(stored_and_result_in_compartment(patient))
        }
        Interaction::Create => match body_patient_link(patient, request)? {
            BodyPatientLink::ContextPatient => Ok(Vec::new()),
            BodyPatientLink::NoBody | BodyPatientLink::Unconfirmed => Ok(in_compartment(patient)),
        },
    }
}

fn other_patient_body(reference: &str, patient: &str) -> String {
    format!(
        "the resource refers to {}, not the patient in context (Patient/{patient})",
        shorten(reference)
    )
}

fn unconfinable_history(request: &FhirRequest) -> String {
    format!(
        "history of all {} resources cannot be limited to the patient in context",
        request.resource_type
    )
}

fn shared_resource_access(patient: &str, request: &FhirRequest) -> Result<Vec<Condition>, String> {
    let resource_type = &request.resource_type;
    if !is_patient_independent(resource_type) {
        return Err(format!(
            "{resource_type} is outside the Patient compartment and may hold patient data, so patient-level scopes do not cover it"
        ));
    }
    match request.interaction.required_permission() {
        Permission::Read => Ok(Vec::new()),
        // Nothing confines these results, but no filter may name another
        // patient either.
        Permission::Search => check_search_parameters(patient, request, &[], &[]).map(|_| Vec::new()),
        _ => Err(format!(
            "{resource_type} is shared reference data; patient-level scopes may read it but not change it"
        )),
    }
}

/// A `patient/` search of a compartment type or Patient: confined by the
/// compartment URL or by an about-parameter, and by nothing that reaches
/// another patient.
fn confine_search(patient: &str, request: &FhirRequest) -> Result<Vec<Condition>, String> {
    let resource_type = request.resource_type.as_str();
    let about = about_patient_parameters(resource_type);
    if let Some(compartment) = request.compartment_patient.as_deref() {
        if compartment != patient {
            return Err(format!(
                "compartment Patient/{compartment} is not the patient in context (Patient/{patient})"
            ));
        }
        if let Some(link) = non_about_compartment_link(resource_type) {
            let instead = suggested_filter(patient, &about)
                .map(|filter| format!("; search {resource_type}?{filter} instead"))
                .unwrap_or_default();
            return Err(format!(
                "Patient/{patient}/{resource_type} also returns {resource_type} resources that name the patient only as {link}, which can be about other patients{instead}"
            ));
        }
    }
    let links = compartment_link_parameters(resource_type);
    let confined_by_parameter = check_search_parameters(patient, request, &about, &links)?;
    if confined_by_parameter || request.compartment_patient.is_some() {
        return Ok(Vec::new());
    }
    Err(match suggested_filter(patient, &about) {
        Some(filter) => format!(
            "search on {resource_type} is missing a filter for the patient in context, such as {filter}"
        ),
        None => format!(
            "{resource_type} has no search parameter that limits results to one patient, so patient-level scopes cannot search it"
        ),
    })
}

/// A filter that confines a search of a type with these about-parameters,
/// preferring the shortest form that is valid.
fn suggested_filter(patient: &str, about: &[&str]) -> Option<String> {
    match about
        .iter()
        .find(|name| **name == "_id" || PATIENT_ONLY_PARAMETERS.contains(name))
    {
        Some(name) => Some(format!("{name}={patient}")),
        None => about
            .first()
            .map(|name| format!("{name}=Patient/{patient}")),
    }
}

/// Checks every parameter of a `patient/` search: each occurrence of an
/// about-parameter must name only the patient in context, and no other
/// parameter may name another patient. Returns whether an about-parameter
/// confined the search. Parameters combine with AND in FHIR, but a server
/// that keeps only the last of repeated parameters must not be able to drop
/// the confining one, hence every occurrence.
fn check_search_parameters(
    patient: &str,
    request: &FhirRequest,
    about: &[&str],
    links: &[&str],
) -> Result<bool, String> {
    let mut confined = false;
    for (name, value) in &request.parameters {
        let (base, suffix) = split_parameter(name);
        if about.contains(&base) {
            if !about_filter_names_only(patient, base, suffix, value) {
                return Err(format!(
                    "search filter {name}={value} does not limit results to the patient in context (Patient/{patient})"
                ));
            }
            confined = true;
            continue;
        }
        // A bare id is taken as a Patient id wherever it may be one.
        let patient_typed = suffix == ":Patient" || (suffix.is_empty() && links.contains(&base));
        for item in value.split(',') {
            let bare_other =
                patient_typed && !item.is_empty() && !item.contains('/') && item != patient;
            if bare_other {
                return Err(format!(
                    "search filter {name}={value} may refer to Patient/{item}, which is not the patient in context (Patient/{patient}); name the target type, such as Practitioner/{item}"
                ));
            }
            if names_other_patient(item, patient) {
                return Err(format!(
                    "search filter {name}={value} refers to {item}, not the patient in context (Patient/{patient})"
                ));
            }
        }
    }
    Ok(confined)
}

/// Whether an about-parameter occurrence names only the patient in context:
/// `Patient/123` or, where the target can only be a Patient, `123`. Other
/// modifiers (`:missing`, `:not`, `:identifier`, `:Group`) and chains
/// (`subject.name`) do not name the patient, so they are refused.
fn about_filter_names_only(patient: &str, base: &str, suffix: &str, value: &str) -> bool {
    let (bare_allowed, typed_allowed) = match suffix {
        "" if base == "_id" => (true, false),
        "" => (PATIENT_ONLY_PARAMETERS.contains(&base), true),
        ":Patient" if base != "_id" => (true, true),
        _ => return false,
    };
    value.split(',').all(|item| {
        (bare_allowed && item == patient)
            || (typed_allowed && item.strip_prefix("Patient/") == Some(patient))
    })
}

/// Whether `reference` names a patient other than `patient`, relative or
/// absolute, with or without `/_history/..`, or names a patient only by a
/// conditional query (`Patient?identifier=...`), which may be anyone. The
/// percent-decoded form is checked too, in case the server decodes it.
fn names_other_patient(reference: &str, patient: &str) -> bool {
    let decoded = percent_decode(reference).ok();
    std::iter::once(reference)
        .chain(decoded.as_deref())
        .any(|form| {
            named_patients(form)
                .into_iter()
                .any(|named| named != Some(patient))
        })
}

/// The id after each `Patient/` path segment pair in `reference`, and `None`
/// for a conditional reference to a Patient.
fn named_patients(reference: &str) -> Vec<Option<&str>> {
    let without_fragment = reference.split('#').next().unwrap_or_default();
    let (path, query) = match without_fragment.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (without_fragment, None),
    };
    let segments: Vec<&str> = path.split('/').collect();
    let mut named: Vec<Option<&str>> = segments
        .windows(2)
        .filter(|pair| pair[0] == "Patient")
        .map(|pair| Some(pair[1]))
        .collect();
    if query.is_some() && segments.last() == Some(&"Patient") {
        named.push(None);
    }
    named
}

/// Attacker-supplied text kept short enough for a denial reason.
fn shorten(text: &str) -> String {
    text.chars().take(128).collect()
}

enum BodyPatientLink {
    /// Every reference was read; a patient link names the patient in
    /// context and none names another.
    ContextPatient,
    /// No other patient is named, but nothing shows the resource is about
    /// the patient in context either.
    Unconfirmed,
    /// No resource body was given (a patch, or the HTTP layer passed none).
    NoBody,
}

/// Reads the body's references: any other patient, or a body too large to
/// read whole, refuses; a patient link naming the patient in context, with
/// every link resolvable, confirms; anything else is left for the server to
/// verify.
fn body_patient_link(patient: &str, request: &FhirRequest) -> Result<BodyPatientLink, String> {
    let Some(body) = request.body_references.as_ref() else {
        return Ok(BodyPatientLink::NoBody);
    };
    if !body.complete {
        return Err(format!(
            "the resource is nested deeper than {MAX_BODY_DEPTH} levels or holds more than {MAX_BODY_REFERENCES} references, so it cannot be checked for references to other patients"
        ));
    }
    if let Some(reference) = body
        .all
        .iter()
        .find(|reference| names_other_patient(reference, patient))
    {
        return Err(other_patient_body(reference, patient));
    }
    let mut names_context_patient = false;
    let mut all_understood = true;
    for reference in &body.links {
        match reference_target(reference) {
            ReferenceTarget::Patient(id) if id == patient => names_context_patient = true,
            // Already refused above; kept so the match stays exhaustive.
            ReferenceTarget::Patient(_) => return Err(other_patient_body(reference, patient)),
            ReferenceTarget::OtherType => {}
            ReferenceTarget::Unresolvable => all_understood = false,
        }
    }
    Ok(if names_context_patient && all_understood {
        BodyPatientLink::ContextPatient
    } else {
        BodyPatientLink::Unconfirmed
    })
}

enum ReferenceTarget<'a> {
    Patient(&'a str),
    OtherType,
    /// Absolute, contained, `urn:` or missing references, which only the
    /// server can resolve.
    Unresolvable,
}

fn reference_target(reference: &str) -> ReferenceTarget<'_> {
    let mut parts = reference.split('/');
    let (Some(resource_type), Some(id)) = (parts.next(), parts.next()) else {
        return ReferenceTarget::Unresolvable;
    };
    let version_suffix_ok = match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => true,
        (Some("_history"), Some(version), None) => fhir_id(version).is_ok(),
        _ => false,
    };
    if !is_resource_type_name(resource_type) || fhir_id(id).is_err() || !version_suffix_ok {
        return ReferenceTarget::Unresolvable;
    }
    if resource_type == "Patient" {
        ReferenceTarget::Patient(id)
    } else {
        ReferenceTarget::OtherType
    }
}

/// What a granular scope additionally requires: searches must carry its
/// constraints; type history cannot, since `_history` ignores search
/// parameters; other interactions leave them for the server to verify.
fn constraint_conditions(
    scope: &ResourceScope,
    request: &FhirRequest,
) -> Result<Vec<Condition>, String> {
    match request.interaction {
        Interaction::TypeHistory if !scope.constraints.is_empty() => Err(format!(
            "scope {scope} covers only resources matching its search parameters, but type history ignores search parameters and returns every {}",
            request.resource_type
        )),
        Interaction::Search | Interaction::TypeHistory => {
            for (name, value) in &scope.constraints {
                search_keeps_constraint(scope, request, name, value)?;
            }
            Ok(Vec::new())
        }
        _ => Ok(scope
            .constraints
            .iter()
            .map(|(name, value)| Condition::MatchesSearchParameter {
                name: name.clone(),
                value: value.clone(),
            })
            .collect()),
    }
}

/// The request has the constrained parameter, and every occurrence of it
/// (under any modifier or chain) has only values the constraint allows; a
/// comma in either is FHIR's OR, and a server that keeps only the last of
/// repeated parameters must not be able to drop the constrained one.
fn search_keeps_constraint(
    scope: &ResourceScope,
    request: &FhirRequest,
    name: &str,
    allowed: &str,
) -> Result<(), String> {
    let allowed_values: Vec<&str> = allowed.split(',').collect();
    let base = split_parameter(name).0;
    let mut carried = false;
    for (parameter, value) in &request.parameters {
        if split_parameter(parameter).0 != base {
            continue;
        }
        let within = parameter == name && value.split(',').all(|v| allowed_values.contains(&v));
        if !within {
            return Err(format!(
                "scope {scope} requires {name}={allowed}, which {parameter}={value} goes beyond"
            ));
        }
        carried = true;
    }
    if carried {
        Ok(())
    } else {
        Err(format!("scope {scope} requires {name}={allowed}"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::scopes::{strategies, Scope, Syntax};
    use super::*;
    use proptest::prelude::*;

    enum Expect {
        Permit(&'static str),
        /// A part of the denial reason.
        Deny(&'static str),
        /// The scope, and the conditions' Display joined with " and ".
        Conditional(&'static str, &'static str),
    }

    struct Case {
        name: &'static str,
        granted: &'static str,
        patient: Option<&'static str>,
        method: &'static str,
        url: &'static str,
        body: Option<&'static str>,
        expect: Expect,
    }

    const IN_123: &str = "resource is about Patient/123 (its subject, patient, beneficiary or individual is Patient/123) and refers to no other patient";
    const STORED_AND_RESULT_123: &str = "both the stored resource and the resource as this request would leave it are in the compartment of Patient/123 and of no other patient";
    const MATCHES_LAB: &str = "resource matches category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory";
    const INCLUDES: &str = "each _include/_revinclude result is authorized separately";

    macro_rules! case {
        ($name:expr, $granted:expr, $patient:expr, $method:expr, $url:expr, $body:expr, $expect:expr) => {
            Case {
                name: $name,
                granted: $granted,
                patient: $patient,
                method: $method,
                url: $url,
                body: $body,
                expect: $expect,
            }
        };
    }

    use Expect::{Conditional, Deny, Permit};

    const P: Option<&str> = Some("123");
    const NO_PATIENT: Option<&str> = None;
    const NO_BODY: Option<&str> = None;

    static CASES: &[Case] = &[
        // SMART 2.x patient-specific scopes: search must stay with the patient in context.
        case!("patient search with context patient", "patient/Observation.rs", P, "GET", "Observation?patient=123", NO_BODY, Permit("patient/Observation.rs")),
        case!("patient search for another patient", "patient/Observation.rs", P, "GET", "Observation?patient=456", NO_BODY, Deny("patient=456 does not limit results to the patient in context (Patient/123)")),
        case!("patient search without patient filter", "patient/Observation.rs", P, "GET", "Observation", NO_BODY, Deny("missing a filter for the patient in context, such as patient=123")),
        case!("patient search with unrelated filter only", "patient/Observation.rs", P, "GET", "Observation?code=1234-5", NO_BODY, Deny("missing a filter")),
        case!("patient read by id needs compartment check", "patient/Observation.rs", P, "GET", "Observation/789", NO_BODY, Conditional("patient/Observation.rs", IN_123)),
        case!("subject=Patient/123", "patient/Observation.rs", P, "GET", "Observation?subject=Patient/123", NO_BODY, Permit("patient/Observation.rs")),
        case!("bare subject=123 may be a Group", "patient/Observation.rs", P, "GET", "Observation?subject=123", NO_BODY, Deny("subject=123 does not limit results")),
        case!("subject:Patient=123", "patient/Observation.rs", P, "GET", "Observation?subject:Patient=123", NO_BODY, Permit("patient/Observation.rs")),
        case!("performer=Patient/123 does not confine", "patient/Observation.rs", P, "GET", "Observation?performer=Patient/123", NO_BODY, Deny("missing a filter")),
        case!("chained subject does not confine", "patient/Observation.rs", P, "GET", "Observation?subject.name=smith", NO_BODY, Deny("subject.name=smith does not limit results")),
        case!("comma list with another patient", "patient/Observation.rs", P, "GET", "Observation?patient=123,456", NO_BODY, Deny("patient=123,456 does not limit")),
        case!("repeated patient filter naming another patient", "patient/Observation.rs", P, "GET", "Observation?patient=123&patient=456", NO_BODY, Deny("patient=456 does not limit results")),
        case!("percent-encoded patient reference", "patient/Observation.rs", P, "GET", "Observation?subject=Patient%2F123", NO_BODY, Permit("patient/Observation.rs")),
        case!("POST _search with query parameters", "patient/Observation.rs", P, "POST", "Observation/_search?patient=123", NO_BODY, Permit("patient/Observation.rs")),
        case!("POST _search with form body", "patient/Observation.rs", P, "POST", "Observation/_search", Some("\"patient=123&code=1234-5\""), Permit("patient/Observation.rs")),
        case!("POST _search without patient", "patient/Observation.rs", P, "POST", "Observation/_search", NO_BODY, Deny("missing a filter")),
        case!("compartment search for context patient", "patient/Encounter.rs", P, "GET", "Patient/123/Encounter", NO_BODY, Permit("patient/Encounter.rs")),
        case!("compartment search reaching performer links", "patient/Observation.rs", P, "GET", "Patient/123/Observation", NO_BODY, Deny("name the patient only as performer")),
        case!("compartment search for another patient", "patient/Observation.rs", P, "GET", "Patient/456/Observation?code=1", NO_BODY, Deny("compartment Patient/456 is not the patient in context")),
        case!("compartment search with POST _search", "patient/DiagnosticReport.rs", P, "POST", "Patient/123/DiagnosticReport/_search", NO_BODY, Permit("patient/DiagnosticReport.rs")),
        case!("vread needs compartment check", "patient/Observation.rs", P, "GET", "Observation/789/_history/2", NO_BODY, Conditional("patient/Observation.rs", IN_123)),
        case!("instance history is a read", "patient/Observation.r", P, "GET", "Observation/789/_history", NO_BODY, Conditional("patient/Observation.r", IN_123)),
        case!("type history cannot be confined", "patient/Observation.rs", P, "GET", "Observation/_history", NO_BODY, Deny("history of all Observation resources")),
        case!("patient scope without patient in context", "patient/Observation.rs", NO_PATIENT, "GET", "Observation?patient=123", NO_BODY, Deny("need a patient in context")),
        case!("empty patient in context matches nothing", "patient/Observation.rs", Some(""), "GET", "Observation?patient=", NO_BODY, Deny("not a valid FHIR id")),
        case!("patient read without patient in context", "patient/Observation.rs", NO_PATIENT, "GET", "Observation/789", NO_BODY, Deny("need a patient in context")),
        case!("rs does not allow delete", "patient/Observation.rs", P, "DELETE", "Observation/789", NO_BODY, Deny("no granted scope allows delete (d) on Observation")),
        case!("rs does not allow update", "patient/Observation.rs", P, "PUT", "Observation/789", Some(r#"{"resourceType":"Observation","id":"789"}"#), Deny("no granted scope allows update (u) on Observation")),
        case!("s alone does not allow read", "patient/Observation.s", P, "GET", "Observation/789", NO_BODY, Deny("no granted scope allows read (r) on Observation")),
        case!("r alone does not allow search", "patient/Observation.r", P, "GET", "Observation?patient=123", NO_BODY, Deny("no granted scope allows search (s) on Observation")),
        case!("scope for another type", "patient/Observation.rs", P, "GET", "Condition?patient=123", NO_BODY, Deny("no granted scope allows search (s) on Condition")),
        case!("subject alias on Condition", "patient/Condition.rs", P, "GET", "Condition?subject=Patient/123", NO_BODY, Permit("patient/Condition.rs")),
        case!("asserter does not confine Condition", "patient/Condition.rs", P, "GET", "Condition?asserter=Patient/123", NO_BODY, Deny("missing a filter")),
        case!("wildcard patient scope", "patient/*.rs", P, "GET", "Encounter?patient=123", NO_BODY, Permit("patient/*.rs")),
        case!("Group member link", "patient/Group.rs", P, "GET", "Group?member=Patient/123", NO_BODY, Deny("Group lists all of its members")),
        case!("compartment search with extra filters", "patient/Encounter.rs", P, "GET", "Patient/123/Encounter?status=finished", NO_BODY, Permit("patient/Encounter.rs")),
        // The Patient resource itself is judged by id.
        case!("read own Patient", "patient/Patient.r", P, "GET", "Patient/123", NO_BODY, Permit("patient/Patient.r")),
        case!("read another Patient", "patient/Patient.r", P, "GET", "Patient/456", NO_BODY, Deny("Patient/456 is not the patient in context (Patient/123)")),
        case!("search Patient by own _id", "patient/Patient.rs", P, "GET", "Patient?_id=123", NO_BODY, Permit("patient/Patient.rs")),
        case!("search Patient by other _id", "patient/Patient.rs", P, "GET", "Patient?_id=456", NO_BODY, Deny("_id=456 does not limit")),
        case!("search Patient without _id", "patient/Patient.rs", P, "GET", "Patient?name=smith", NO_BODY, Deny("missing a filter for the patient in context, such as _id=123")),
        case!("vread own Patient", "patient/Patient.read", P, "GET", "Patient/123/_history/1", NO_BODY, Permit("patient/Patient.read")),
        case!("update own Patient", "patient/Patient.u", P, "PUT", "Patient/123", Some(r#"{"resourceType":"Patient","id":"123"}"#), Permit("patient/Patient.u")),
        case!("create Patient under patient scope", "patient/Patient.c", P, "POST", "Patient", Some(r#"{"resourceType":"Patient"}"#), Deny("cannot create Patient resources")),
        case!("patient cruds deletes own Patient", "patient/*.cruds", P, "DELETE", "Patient/123", NO_BODY, Permit("patient/*.cruds")),
        // Writes under patient scopes.
        case!("patient cruds delete needs compartment check", "patient/*.cruds", P, "DELETE", "Observation/789", NO_BODY, Conditional("patient/*.cruds", IN_123)),
        case!("v1 read does not allow create", "patient/*.read", P, "POST", "Observation", Some(r#"{"resourceType":"Observation","subject":{"reference":"Patient/123"}}"#), Deny("no granted scope allows create (c) on Observation")),
        case!("v1 write creates for context patient", "patient/*.write", P, "POST", "Observation", Some(r#"{"resourceType":"Observation","subject":{"reference":"Patient/123"}}"#), Permit("patient/*.write")),
        case!("create for another patient", "patient/Observation.c", P, "POST", "Observation", Some(r#"{"resourceType":"Observation","subject":{"reference":"Patient/456"}}"#), Deny("refers to Patient/456")),
        case!("create without body", "patient/Observation.c", P, "POST", "Observation", NO_BODY, Conditional("patient/Observation.c", IN_123)),
        case!("create without subject", "patient/Observation.c", P, "POST", "Observation", Some(r#"{"resourceType":"Observation","status":"final"}"#), Conditional("patient/Observation.c", IN_123)),
        case!("create with absolute subject", "patient/Observation.c", P, "POST", "Observation", Some(r#"{"resourceType":"Observation","subject":{"reference":"https://other.example/fhir/Patient/123"}}"#), Conditional("patient/Observation.c", IN_123)),
        case!("create naming both patients", "patient/Observation.c", P, "POST", "Observation", Some(r#"{"resourceType":"Observation","subject":{"reference":"Patient/123"},"patient":[{"reference":"Patient/456"}]}"#), Deny("refers to Patient/456")),
        case!("create MedicationRequest for context patient", "patient/MedicationRequest.c", P, "POST", "MedicationRequest", Some(r#"{"resourceType":"MedicationRequest","subject":{"reference":"Patient/123/_history/3"}}"#), Permit("patient/MedicationRequest.c")),
        case!("create Coverage by beneficiary", "patient/Coverage.c", P, "POST", "Coverage", Some(r#"{"resourceType":"Coverage","beneficiary":{"reference":"Patient/123"}}"#), Permit("patient/Coverage.c")),
        case!("update still checks stored version", "patient/Observation.u", P, "PUT", "Observation/789", Some(r#"{"resourceType":"Observation","id":"789","subject":{"reference":"Patient/123"}}"#), Conditional("patient/Observation.u", STORED_AND_RESULT_123)),
        case!("update moving data to another patient", "patient/Observation.u", P, "PUT", "Observation/789", Some(r#"{"resourceType":"Observation","id":"789","subject":{"reference":"Patient/456"}}"#), Deny("refers to Patient/456")),
        case!("patch needs compartment check", "patient/Observation.u", P, "PATCH", "Observation/789", NO_BODY, Conditional("patient/Observation.u", STORED_AND_RESULT_123)),
        // Types outside the Patient compartment under patient scopes.
        case!("patient wildcard reads Medication", "patient/*.rs", P, "GET", "Medication/42", NO_BODY, Permit("patient/*.rs")),
        case!("patient scope searches Practitioner", "patient/Practitioner.rs", P, "GET", "Practitioner?name=smith", NO_BODY, Permit("patient/Practitioner.rs")),
        case!("patient scope cannot create Medication", "patient/*.cruds", P, "POST", "Medication", Some(r#"{"resourceType":"Medication"}"#), Deny("shared reference data")),
        case!("patient scope cannot read Binary", "patient/*.rs", P, "GET", "Binary/1", NO_BODY, Deny("Binary is outside the Patient compartment and may hold patient data")),
        case!("patient scope cannot search Task", "patient/*.rs", P, "GET", "Task?owner=Practitioner/1", NO_BODY, Deny("Task is outside the Patient compartment")),
        case!("user scope reads Medication", "user/Medication.rs", NO_PATIENT, "GET", "Medication/42", NO_BODY, Permit("user/Medication.rs")),
        // User and system scopes have no compartment restriction.
        case!("user search without filter", "user/Observation.rs", NO_PATIENT, "GET", "Observation", NO_BODY, Permit("user/Observation.rs")),
        case!("user read by id", "user/Observation.rs", P, "GET", "Observation/789", NO_BODY, Permit("user/Observation.rs")),
        case!("v1 user read prints v1", "user/*.read", NO_PATIENT, "GET", "Observation/1", NO_BODY, Permit("user/*.read")),
        case!("user cruds creates Patient", "user/*.cruds", NO_PATIENT, "POST", "Patient", Some(r#"{"resourceType":"Patient"}"#), Permit("user/*.cruds")),
        case!("user patch Encounter", "user/Encounter.cruds", NO_PATIENT, "PATCH", "Encounter/1", NO_BODY, Permit("user/Encounter.cruds")),
        case!("system search", "system/*.rs", NO_PATIENT, "GET", "Observation?date=ge2020", NO_BODY, Permit("system/*.rs")),
        case!("system rs cannot delete", "system/*.rs", NO_PATIENT, "DELETE", "Observation/1", NO_BODY, Deny("no granted scope allows delete (d) on Observation")),
        case!("system cruds update", "system/*.cruds", NO_PATIENT, "PUT", "Observation/1", Some(r#"{"resourceType":"Observation","id":"1"}"#), Permit("system/*.cruds")),
        case!("identity scopes grant no data", "openid fhirUser launch/patient offline_access", P, "GET", "Observation?patient=123", NO_BODY, Deny("no granted scope allows search (s) on Observation")),
        // Granular scopes.
        case!("granular search with category", "user/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory", NO_PATIENT, "GET", "Observation?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory", NO_BODY, Permit("user/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory")),
        case!("granular search with encoded category", "user/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory", NO_PATIENT, "GET", "Observation?category=http%3A%2F%2Fterminology.hl7.org%2FCodeSystem%2Fobservation-category%7Claboratory", NO_BODY, Permit("user/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory")),
        case!("granular search without category", "user/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory", NO_PATIENT, "GET", "Observation", NO_BODY, Deny("requires category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory")),
        case!("granular search with other category", "user/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory", NO_PATIENT, "GET", "Observation?category=vital-signs", NO_BODY, Deny("requires category=")),
        case!("granular search with code-only category", "user/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory", NO_PATIENT, "GET", "Observation?category=laboratory", NO_BODY, Deny("requires category=")),
        case!("granular search with mixed comma list", "user/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory", NO_PATIENT, "GET", "Observation?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory,vital-signs", NO_BODY, Deny("requires category=")),
        case!("granular search with all-matching comma list", "user/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory", NO_PATIENT, "GET", "Observation?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory,http://terminology.hl7.org/CodeSystem/observation-category|laboratory", NO_BODY, Permit("user/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory")),
        case!("granular read by id", "user/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory", NO_PATIENT, "GET", "Observation/789", NO_BODY, Conditional("user/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory", MATCHES_LAB)),
        case!("patient granular read by id", "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory", P, "GET", "Observation/789", NO_BODY, Conditional("patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory", "resource is about Patient/123 (its subject, patient, beneficiary or individual is Patient/123) and refers to no other patient and resource matches category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory")),
        case!("patient granular search with both filters", "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory", P, "GET", "Observation?patient=123&category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory", NO_BODY, Permit("patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory")),
        case!("patient granular search without category", "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory", P, "GET", "Observation?patient=123", NO_BODY, Deny("scope patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory requires category=")),
        case!("two granular scopes, one matches", "patient/Observation.rs?category=vital-signs patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory", P, "GET", "Observation?patient=123&category=vital-signs", NO_BODY, Permit("patient/Observation.rs?category=vital-signs")),
        // Choosing among several scopes.
        case!("unconditional permit preferred", "patient/Observation.rs user/Observation.rs", P, "GET", "Observation/789", NO_BODY, Permit("user/Observation.rs")),
        case!("fewest conditions preferred", "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory patient/Observation.rs", P, "GET", "Observation/789", NO_BODY, Conditional("patient/Observation.rs", IN_123)),
        case!("denials from every candidate are reported", "patient/Observation.rs patient/*.rs", Some("999"), "GET", "Observation?patient=123", NO_BODY, Deny("patient=123 does not limit results to the patient in context (Patient/999)")),
        // _include and _revinclude.
        case!("include under a named user scope", "user/Observation.rs", NO_PATIENT, "GET", "Observation?_include=Observation:performer", NO_BODY, Conditional("user/Observation.rs", INCLUDES)),
        case!("include under a user wildcard", "user/*.rs", NO_PATIENT, "GET", "Observation?_include=Observation:performer", NO_BODY, Permit("user/*.rs")),
        case!("revinclude under a patient scope", "patient/Observation.rs", P, "GET", "Observation?patient=123&_revinclude:iterate=Provenance:target", NO_BODY, Conditional("patient/Observation.rs", INCLUDES)),
    ];

    fn decide(case: &Case) -> Decision {
        let granted = ScopeSet::parse_strict(case.granted).expect("case scopes parse");
        let body: Option<Value> = case
            .body
            .map(|text| serde_json::from_str(text).expect("case body is JSON"));
        let request = FhirRequest::parse(case.method, case.url, body.as_ref())
            .unwrap_or_else(|error| panic!("{}: request did not parse: {error}", case.name));
        check(&granted, case.patient, &request)
    }

    fn joined(conditions: &[Condition]) -> String {
        conditions
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" and ")
    }

    #[test]
    fn policy_table() {
        assert!(CASES.len() >= 60, "only {} cases", CASES.len());
        assert_cases(CASES);
    }

    fn assert_cases(cases: &[Case]) {
        let mut failures = Vec::new();
        for case in cases {
            let decision = decide(case);
            let ok = match (&case.expect, &decision) {
                (Permit(want), Decision::Permit { scope }) => scope == want,
                (Deny(want), Decision::Deny { reason }) => reason.contains(want),
                (
                    Conditional(want_scope, want_conditions),
                    Decision::Conditional { scope, must_verify },
                ) => scope == want_scope && joined(must_verify) == *want_conditions,
                _ => false,
            };
            if !ok {
                failures.push(format!("{}: got {decision}", case.name));
            }
        }
        assert!(
            failures.is_empty(),
            "{} failing cases:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    /// Finding 1: a bare id can match Practitioner/123 or Group/123, and
    /// compartment links other than the about-links do not confine.
    static BARE_IDS: &[Case] = &[
        case!(
            "bare performer",
            "patient/*.rs",
            P,
            "GET",
            "Observation?performer=123",
            NO_BODY,
            Deny("missing a filter for the patient in context")
        ),
        case!(
            "bare actor",
            "patient/*.rs",
            P,
            "GET",
            "Appointment?actor=123",
            NO_BODY,
            Deny("missing a filter for the patient in context, such as patient=123")
        ),
        case!(
            "bare payor",
            "patient/*.rs",
            P,
            "GET",
            "Coverage?payor=123",
            NO_BODY,
            Deny("missing a filter for the patient in context, such as beneficiary=123")
        ),
        case!(
            "bare Basic subject",
            "patient/*.rs",
            P,
            "GET",
            "Basic?subject=123",
            NO_BODY,
            Deny("subject=123 does not limit results")
        ),
        case!(
            "bare Encounter subject",
            "patient/*.rs",
            P,
            "GET",
            "Encounter?subject=123",
            NO_BODY,
            Deny("subject=123 does not limit results")
        ),
        case!(
            "bare Patient link",
            "patient/*.rs",
            P,
            "GET",
            "Patient?link=123",
            NO_BODY,
            Deny("missing a filter for the patient in context, such as _id=123")
        ),
        case!(
            "subject with another type modifier",
            "patient/*.rs",
            P,
            "GET",
            "Encounter?subject:Group=123",
            NO_BODY,
            Deny("subject:Group=123 does not limit results")
        ),
        case!(
            "typed _id",
            "patient/*.rs",
            P,
            "GET",
            "Patient?_id=Patient/123",
            NO_BODY,
            Deny("_id=Patient/123 does not limit results")
        ),
        case!(
            "typed subject confines",
            "patient/*.rs",
            P,
            "GET",
            "Encounter?subject=Patient/123",
            NO_BODY,
            Permit("patient/*.rs")
        ),
        case!(
            "subject:Patient confines",
            "patient/*.rs",
            P,
            "GET",
            "Encounter?subject:Patient=123",
            NO_BODY,
            Permit("patient/*.rs")
        ),
        case!(
            "bare beneficiary confines",
            "patient/*.rs",
            P,
            "GET",
            "Coverage?beneficiary=123",
            NO_BODY,
            Permit("patient/*.rs")
        ),
        case!(
            "bare individual confines",
            "patient/*.rs",
            P,
            "GET",
            "ResearchSubject?individual=123",
            NO_BODY,
            Permit("patient/*.rs")
        ),
        case!(
            "bare Basic patient confines",
            "patient/*.rs",
            P,
            "GET",
            "Basic?patient=123",
            NO_BODY,
            Permit("patient/*.rs")
        ),
    ];

    #[test]
    fn rejects_bare_ids_and_non_patient_targets() {
        assert_cases(BARE_IDS);
    }

    const LAB_SCOPE: &str = "user/Observation.rs?category=laboratory";

    /// Finding 2: `_history` ignores search parameters.
    static HISTORY: &[Case] = &[
        case!(
            "constrained type history with the filter",
            LAB_SCOPE,
            NO_PATIENT,
            "GET",
            "Observation/_history?category=laboratory",
            NO_BODY,
            Deny("type history ignores search parameters")
        ),
        case!(
            "constrained type history without filter",
            LAB_SCOPE,
            NO_PATIENT,
            "GET",
            "Observation/_history",
            NO_BODY,
            Deny("type history ignores search parameters")
        ),
        case!(
            "constrained patient type history",
            "patient/Observation.rs?category=laboratory",
            P,
            "GET",
            "Observation/_history?patient=123&category=laboratory",
            NO_BODY,
            Deny("history of all Observation resources")
        ),
        case!(
            "unconstrained patient type history",
            "patient/*.rs",
            P,
            "GET",
            "Patient/_history",
            NO_BODY,
            Deny("history of all Patient resources")
        ),
        case!(
            "unconstrained user type history",
            "user/Observation.rs",
            NO_PATIENT,
            "GET",
            "Observation/_history",
            NO_BODY,
            Permit("user/Observation.rs")
        ),
        case!(
            "constrained instance history stays conditional",
            LAB_SCOPE,
            NO_PATIENT,
            "GET",
            "Observation/1/_history",
            NO_BODY,
            Conditional(LAB_SCOPE, "resource matches category=laboratory")
        ),
    ];

    #[test]
    fn rejects_type_history_under_constrained_scopes() {
        assert_cases(HISTORY);
    }

    /// Finding 3: `_has` answers questions about other patients, and other
    /// `_` parameters select results the policy cannot see.
    static SPECIAL_PARAMETERS: &[Case] = &[
        case!("_has on shared data", "patient/*.rs", P, "GET", "Medication?_has:MedicationRequest:medication:subject=Patient/456", NO_BODY, Deny("_has:MedicationRequest:medication:subject is not allowed")),
        case!("_has in a chain", "patient/*.rs", P, "GET", "Observation?patient=123&performer._has:Observation:performer:subject=Patient/456", NO_BODY, Deny("performer._has:Observation:performer:subject is not allowed")),
        case!("_has on Patient", "patient/Patient.rs", P, "GET", "Patient?_id=123&_has:Observation:patient:code=1234-5", NO_BODY, Deny("_has:Observation:patient:code is not allowed")),
        case!("_query", "patient/*.rs", P, "GET", "Observation?patient=123&_query=everything", NO_BODY, Deny("_query is not allowed")),
        case!("_filter", "patient/*.rs", P, "GET", "Observation?patient=123&_filter=subject+eq+Patient/456", NO_BODY, Deny("_filter is not allowed")),
        case!("_list", "patient/*.rs", P, "GET", "Observation?patient=123&_list=7", NO_BODY, Deny("_list is not allowed")),
        case!("_text", "patient/*.rs", P, "GET", "Observation?patient=123&_text=x", NO_BODY, Deny("_text is not allowed")),
        case!("_content", "patient/*.rs", P, "GET", "Observation?patient=123&_content=x", NO_BODY, Deny("_content is not allowed")),
        case!("_contained", "patient/*.rs", P, "GET", "Observation?patient=123&_contained=true", NO_BODY, Deny("_contained is not allowed")),
        case!("_containedType", "patient/*.rs", P, "GET", "Observation?patient=123&_containedType=contained", NO_BODY, Deny("_containedType is not allowed")),
        case!("_has in a form body", "patient/*.rs", P, "POST", "Observation/_search?patient=123", Some("\"_has:Observation:has-member:code=x\""), Deny("_has:Observation:has-member:code is not allowed")),
        case!("_has under a constrained user scope", LAB_SCOPE, NO_PATIENT, "GET", "Observation?category=laboratory&_has:Observation:has-member:code=x", NO_BODY, Deny("_has:Observation:has-member:code is not allowed")),
        case!("name padded to dodge checks", "patient/*.rs", P, "GET", "Observation?patient=123&%20patient=456", NO_BODY, Deny("is not a valid parameter name")),
        case!("allowed result controls", "patient/*.rs", P, "GET", "Observation?patient=123&_count=10&_sort=-date&_elements=code&_summary=true&_total=accurate&_lastUpdated=ge2020&_tag=a&_profile=b&_security=c&_format=json&_pretty=true&_id=5", NO_BODY, Permit("patient/*.rs")),
        case!("allowed include keeps its condition", "patient/*.rs", P, "GET", "Observation?patient=123&_include:iterate=Observation:performer", NO_BODY, Conditional("patient/*.rs", INCLUDES)),
        case!("_has under an unconstrained user scope", "user/Observation.rs", NO_PATIENT, "GET", "Observation?_has:Observation:has-member:code=x", NO_BODY, Permit("user/Observation.rs")),
    ];

    #[test]
    fn rejects_reverse_chains_and_unconfinable_special_parameters() {
        assert_cases(SPECIAL_PARAMETERS);
    }

    /// Finding 4: every reference in a written body counts, wherever it is.
    static BODIES: &[Case] = &[
        case!(
            "recipient is another patient",
            "patient/Communication.c",
            P,
            "POST",
            "Communication",
            Some(
                r#"{"resourceType":"Communication","subject":{"reference":"Patient/123"},"recipient":[{"reference":"Patient/456"}]}"#
            ),
            Deny("refers to Patient/456")
        ),
        case!(
            "absolute reference to another patient",
            "patient/Communication.c",
            P,
            "POST",
            "Communication",
            Some(
                r#"{"resourceType":"Communication","subject":{"reference":"Patient/123"},"recipient":[{"reference":"https://ehr.example/fhir/Patient/456"}]}"#
            ),
            Deny("refers to https://ehr.example/fhir/Patient/456")
        ),
        case!(
            "versioned reference to another patient",
            "patient/Communication.c",
            P,
            "POST",
            "Communication",
            Some(
                r#"{"resourceType":"Communication","subject":{"reference":"Patient/123"},"sender":{"reference":"Patient/456/_history/2"}}"#
            ),
            Deny("refers to Patient/456/_history/2")
        ),
        case!(
            "other patient inside an extension",
            "patient/Observation.c",
            P,
            "POST",
            "Observation",
            Some(
                r#"{"resourceType":"Observation","subject":{"reference":"Patient/123"},"extension":[{"url":"x","valueReference":{"reference":"Patient/456"}}]}"#
            ),
            Deny("refers to Patient/456")
        ),
        case!(
            "other patient inside a contained resource",
            "patient/Observation.c",
            P,
            "POST",
            "Observation",
            Some(
                r#"{"resourceType":"Observation","subject":{"reference":"Patient/123"},"contained":[{"resourceType":"Provenance","target":[{"reference":"Patient/456"}]}]}"#
            ),
            Deny("refers to Patient/456")
        ),
        case!(
            "conditional reference to a patient",
            "patient/Communication.c",
            P,
            "POST",
            "Communication",
            Some(
                r#"{"resourceType":"Communication","subject":{"reference":"Patient/123"},"recipient":[{"reference":"Patient?identifier=mrn|456"}]}"#
            ),
            Deny("refers to Patient?identifier=mrn|456")
        ),
        case!(
            "percent-encoded reference to a patient",
            "patient/Communication.c",
            P,
            "POST",
            "Communication",
            Some(
                r#"{"resourceType":"Communication","subject":{"reference":"Patient/123"},"recipient":[{"reference":"Patient%2F456"}]}"#
            ),
            Deny("refers to Patient%2F456")
        ),
        case!(
            "update adding another patient",
            "patient/Communication.u",
            P,
            "PUT",
            "Communication/9",
            Some(
                r#"{"resourceType":"Communication","id":"9","subject":{"reference":"Patient/123"},"recipient":[{"reference":"Patient/456"}]}"#
            ),
            Deny("refers to Patient/456")
        ),
        case!(
            "create with other references only to non-patients",
            "patient/Communication.c",
            P,
            "POST",
            "Communication",
            Some(
                r##"{"resourceType":"Communication","subject":{"reference":"Patient/123"},"sender":{"reference":"Patient/123"},"recipient":[{"reference":"Practitioner/1"},{"reference":"#contained"}]}"##
            ),
            Permit("patient/Communication.c")
        ),
        case!(
            "create naming the patient only as recipient",
            "patient/Communication.c",
            P,
            "POST",
            "Communication",
            Some(r#"{"resourceType":"Communication","recipient":[{"reference":"Patient/123"}]}"#),
            Conditional("patient/Communication.c", IN_123)
        ),
    ];

    #[test]
    fn rejects_bodies_referring_to_other_patients() {
        assert_cases(BODIES);
    }

    /// Finding 5: a server that keeps only the last value of a repeated
    /// parameter must not be able to answer for another patient.
    static REPEATS: &[Case] = &[
        case!(
            "second patient value",
            "patient/*.rs",
            P,
            "GET",
            "Observation?patient=123&patient=456",
            NO_BODY,
            Deny("patient=456 does not limit results")
        ),
        case!(
            "first patient value",
            "patient/*.rs",
            P,
            "GET",
            "Observation?patient=456&patient=123",
            NO_BODY,
            Deny("patient=456 does not limit results")
        ),
        case!(
            "repeated subject",
            "patient/*.rs",
            P,
            "GET",
            "Observation?subject=Patient/123&subject=Patient/456",
            NO_BODY,
            Deny("subject=Patient/456 does not limit results")
        ),
        case!(
            "patient then subject",
            "patient/*.rs",
            P,
            "GET",
            "Observation?patient=123&subject=Patient/456",
            NO_BODY,
            Deny("subject=Patient/456 does not limit results")
        ),
        case!(
            "patient then a modifier",
            "patient/*.rs",
            P,
            "GET",
            "Observation?patient=123&patient:missing=true",
            NO_BODY,
            Deny("patient:missing=true does not limit results")
        ),
        case!(
            "query then form body",
            "patient/*.rs",
            P,
            "POST",
            "Observation/_search?patient=123",
            Some("\"patient=456\""),
            Deny("patient=456 does not limit results")
        ),
        case!(
            "repeated _id",
            "patient/*.rs",
            P,
            "GET",
            "Patient?_id=123&_id=456",
            NO_BODY,
            Deny("_id=456 does not limit results")
        ),
        case!(
            "compartment URL and another patient",
            "patient/*.rs",
            P,
            "GET",
            "Patient/123/Encounter?patient=456",
            NO_BODY,
            Deny("patient=456 does not limit results")
        ),
        case!(
            "comma list",
            "patient/*.rs",
            P,
            "GET",
            "Observation?patient=123,456",
            NO_BODY,
            Deny("patient=123,456 does not limit results")
        ),
        case!(
            "same patient twice",
            "patient/*.rs",
            P,
            "GET",
            "Observation?patient=123&subject=Patient/123&patient=123",
            NO_BODY,
            Permit("patient/*.rs")
        ),
    ];

    #[test]
    fn rejects_repeated_linking_parameters_naming_others() {
        assert_cases(REPEATS);
    }

    /// Finding 6: a write is checked against both the stored and the
    /// resulting version.
    static WRITES: &[Case] = &[
        case!(
            "update",
            "patient/*.cruds",
            P,
            "PUT",
            "Observation/789",
            Some(
                r#"{"resourceType":"Observation","id":"789","subject":{"reference":"Patient/123"}}"#
            ),
            Conditional("patient/*.cruds", STORED_AND_RESULT_123)
        ),
        case!(
            "update without body",
            "patient/*.cruds",
            P,
            "PUT",
            "Observation/789",
            NO_BODY,
            Conditional("patient/*.cruds", STORED_AND_RESULT_123)
        ),
        case!(
            "patch",
            "patient/*.cruds",
            P,
            "PATCH",
            "Encounter/1",
            NO_BODY,
            Conditional("patient/*.cruds", STORED_AND_RESULT_123)
        ),
        case!(
            "patch own Patient",
            "patient/*.cruds",
            P,
            "PATCH",
            "Patient/123",
            NO_BODY,
            Conditional("patient/*.cruds", STORED_AND_RESULT_123)
        ),
        case!(
            "update own Patient linking another",
            "patient/*.cruds",
            P,
            "PUT",
            "Patient/123",
            Some(
                r#"{"resourceType":"Patient","id":"123","link":[{"other":{"reference":"Patient/456"},"type":"seealso"}]}"#
            ),
            Deny("refers to Patient/456")
        ),
        case!(
            "read keeps the plain condition",
            "patient/*.cruds",
            P,
            "GET",
            "Observation/789",
            NO_BODY,
            Conditional("patient/*.cruds", IN_123)
        ),
        case!(
            "delete keeps the plain condition",
            "patient/*.cruds",
            P,
            "DELETE",
            "Observation/789",
            NO_BODY,
            Conditional("patient/*.cruds", IN_123)
        ),
    ];

    #[test]
    fn requires_stored_and_resulting_versions_in_compartment() {
        assert_cases(WRITES);
    }

    /// Finding 7: only links saying whom a resource is about confine a
    /// search, and Group is outside the compartment.
    static NON_SUBJECT_LINKS: &[Case] = &[
        case!(
            "performer",
            "patient/*.rs",
            P,
            "GET",
            "Observation?performer=Patient/123",
            NO_BODY,
            Deny("missing a filter")
        ),
        case!(
            "author",
            "patient/*.rs",
            P,
            "GET",
            "DocumentReference?author=Patient/123",
            NO_BODY,
            Deny("missing a filter")
        ),
        case!(
            "recipient",
            "patient/*.rs",
            P,
            "GET",
            "Communication?recipient=Patient/123",
            NO_BODY,
            Deny("missing a filter")
        ),
        case!(
            "attester",
            "patient/*.rs",
            P,
            "GET",
            "Composition?attester=Patient/123",
            NO_BODY,
            Deny("missing a filter")
        ),
        case!(
            "actor",
            "patient/*.rs",
            P,
            "GET",
            "Appointment?actor=Patient/123",
            NO_BODY,
            Deny("missing a filter")
        ),
        case!(
            "payor",
            "patient/*.rs",
            P,
            "GET",
            "Coverage?payor=Patient/123",
            NO_BODY,
            Deny("missing a filter")
        ),
        case!(
            "Patient link",
            "patient/*.rs",
            P,
            "GET",
            "Patient?link=Patient/123",
            NO_BODY,
            Deny("missing a filter")
        ),
        case!(
            "Schedule has no about-link",
            "patient/*.rs",
            P,
            "GET",
            "Schedule?actor=Patient/123",
            NO_BODY,
            Deny("Schedule has no search parameter that limits results to one patient")
        ),
        case!(
            "compartment URL through performer",
            "patient/*.rs",
            P,
            "GET",
            "Patient/123/Observation",
            NO_BODY,
            Deny("name the patient only as performer")
        ),
        case!(
            "compartment URL of linked patients",
            "patient/*.rs",
            P,
            "GET",
            "Patient/123/Patient",
            NO_BODY,
            Deny("name the patient only as link")
        ),
        case!(
            "Group search",
            "patient/*.rs",
            P,
            "GET",
            "Group?member=Patient/123",
            NO_BODY,
            Deny("Group lists all of its members")
        ),
        case!(
            "Group read",
            "patient/*.rs",
            P,
            "GET",
            "Group/1",
            NO_BODY,
            Deny("Group lists all of its members")
        ),
        case!(
            "Group in the compartment URL",
            "patient/*.rs",
            P,
            "GET",
            "Patient/123/Group",
            NO_BODY,
            Deny("Group lists all of its members")
        ),
        case!(
            "performer naming another patient",
            "patient/*.rs",
            P,
            "GET",
            "Observation?patient=123&performer=Patient/456",
            NO_BODY,
            Deny("refers to Patient/456")
        ),
        case!(
            "bare performer naming maybe another patient",
            "patient/*.rs",
            P,
            "GET",
            "Observation?patient=123&performer=456",
            NO_BODY,
            Deny("may refer to Patient/456")
        ),
        case!(
            "performer as an extra filter",
            "patient/*.rs",
            P,
            "GET",
            "Observation?patient=123&performer=Practitioner/456",
            NO_BODY,
            Permit("patient/*.rs")
        ),
        case!(
            "compartment URL of about-links only",
            "patient/*.rs",
            P,
            "GET",
            "Patient/123/MedicationRequest",
            NO_BODY,
            Permit("patient/*.rs")
        ),
        case!(
            "Group under a user scope",
            "user/Group.rs",
            NO_PATIENT,
            "GET",
            "Group?member=Patient/123",
            NO_BODY,
            Permit("user/Group.rs")
        ),
    ];

    #[test]
    fn rejects_confinement_through_non_subject_links() {
        assert_cases(NON_SUBJECT_LINKS);
    }

    /// The last-value reasoning of finding 5 applied to granular constraints.
    static CONSTRAINT_REPEATS: &[Case] = &[
        case!(
            "constraint then another value",
            LAB_SCOPE,
            NO_PATIENT,
            "GET",
            "Observation?category=laboratory&category=vital-signs",
            NO_BODY,
            Deny("category=vital-signs goes beyond")
        ),
        case!(
            "constraint then a modifier",
            LAB_SCOPE,
            NO_PATIENT,
            "GET",
            "Observation?category=laboratory&category:not=laboratory",
            NO_BODY,
            Deny("category:not=laboratory goes beyond")
        ),
        case!(
            "constraint repeated",
            LAB_SCOPE,
            NO_PATIENT,
            "GET",
            "Observation?category=laboratory&category=laboratory",
            NO_BODY,
            Permit(LAB_SCOPE)
        ),
    ];

    #[test]
    fn rejects_repeated_constraint_parameters_with_other_values() {
        assert_cases(CONSTRAINT_REPEATS);
    }

    fn body_with(extra: Value) -> Value {
        let mut body = serde_json::json!({"resourceType": "Observation", "subject": {"reference": "Patient/123"}});
        body["note"] = extra;
        body
    }

    fn nested(levels: usize, leaf: Value) -> Value {
        (0..levels).fold(leaf, |inner, _| serde_json::json!([inner]))
    }

    #[test]
    fn rejects_bodies_too_large_to_scan() {
        let granted = ScopeSet::parse_strict("patient/Observation.c").expect("scopes parse");
        let decide_body = |body: Value| {
            let request = FhirRequest::parse("POST", "Observation", Some(&body)).expect("parses");
            check(&granted, Some("123"), &request)
        };
        let practitioner = serde_json::json!({"reference": "Practitioner/1"});
        let other = serde_json::json!({"reference": "Patient/456"});
        // The resource is level 0 and `note` level 1, so arrays fill the rest.
        let within = MAX_BODY_DEPTH - 3;
        assert_eq!(
            decide_body(body_with(nested(within, practitioner.clone()))),
            Decision::Permit {
                scope: "patient/Observation.c".into()
            }
        );
        let deep_other = decide_body(body_with(nested(within, other.clone())));
        assert!(
            deep_other.to_string().contains("refers to Patient/456"),
            "{deep_other}"
        );
        let too_deep = decide_body(body_with(nested(MAX_BODY_DEPTH, practitioner.clone())));
        assert!(
            too_deep
                .to_string()
                .contains("nested deeper than 32 levels"),
            "{too_deep}"
        );
        let many = Value::Array(vec![practitioner; MAX_BODY_REFERENCES]);
        let too_many = decide_body(body_with(many));
        assert!(
            too_many.to_string().contains("more than 1000 references"),
            "{too_many}"
        );

        let request = FhirRequest::parse("POST", "Observation", Some(&body_with(nested(2, other))))
            .expect("parses");
        assert_eq!(
            request.body_patient_references(),
            Some(&["Patient/123".to_string()][..])
        );
        // Member order depends on serde_json's `preserve_order` feature; compare as a set.
        let mut all = request
            .body_references()
            .map(<[String]>::to_vec)
            .unwrap_or_default();
        all.sort();
        assert_eq!(all, ["Patient/123".to_string(), "Patient/456".to_string()]);
        assert!(request.body_fully_scanned());
    }

    #[test]
    fn case_names_are_unique() {
        for table in [
            CASES,
            BARE_IDS,
            HISTORY,
            SPECIAL_PARAMETERS,
            BODIES,
            REPEATS,
            WRITES,
            NON_SUBJECT_LINKS,
            CONSTRAINT_REPEATS,
        ] {
            let mut names: Vec<&str> = table.iter().map(|case| case.name).collect();
            names.sort_unstable();
            let count = names.len();
            names.dedup();
            assert_eq!(names.len(), count);
        }
    }

    fn parsed(method: &str, url: &str) -> FhirRequest {
        FhirRequest::parse(method, url, None)
            .unwrap_or_else(|error| panic!("{method} {url}: {error}"))
    }

    fn parse_error(method: &str, url: &str, body: Option<Value>) -> PolicyError {
        match FhirRequest::parse(method, url, body.as_ref()) {
            Err(error) => error,
            Ok(request) => panic!("{method} {url} unexpectedly parsed: {request:?}"),
        }
    }

    #[test]
    fn parses_each_interaction() {
        let read = parsed("GET", "Observation/789");
        assert_eq!(
            (read.interaction(), read.resource_type(), read.id()),
            (Interaction::Read, "Observation", Some("789"))
        );
        let vread = parsed("GET", "Observation/789/_history/2");
        assert_eq!(
            (vread.interaction(), vread.version_id()),
            (Interaction::VRead, Some("2"))
        );
        assert_eq!(
            parsed("GET", "Observation/789/_history").interaction(),
            Interaction::InstanceHistory
        );
        assert_eq!(
            parsed("GET", "Observation/_history").interaction(),
            Interaction::TypeHistory
        );
        assert_eq!(
            parsed("POST", "Observation/_search").interaction(),
            Interaction::Search
        );
        assert_eq!(
            parsed("POST", "Observation").interaction(),
            Interaction::Create
        );
        assert_eq!(
            parsed("PUT", "Observation/789").interaction(),
            Interaction::Update
        );
        assert_eq!(
            parsed("PATCH", "Observation/789").interaction(),
            Interaction::Patch
        );
        assert_eq!(
            parsed("DELETE", "Observation/789").interaction(),
            Interaction::Delete
        );
        let compartment = parsed("GET", "Patient/123/Observation");
        assert_eq!(
            (
                compartment.interaction(),
                compartment.resource_type(),
                compartment.compartment_patient()
            ),
            (Interaction::Search, "Observation", Some("123"))
        );
        assert_eq!(parsed("GET", "/Observation/1.2-a").id(), Some("1.2-a"));
    }

    #[test]
    fn search_parameters_are_percent_decoded() {
        let search = parsed("GET", "Observation?patient=123&category=laboratory&code=a%7Cb&name=John+Smith&flag&&date=ge2020");
        let pairs: Vec<(&str, &str)> = search
            .parameters()
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("patient", "123"),
                ("category", "laboratory"),
                ("code", "a|b"),
                ("name", "John Smith"),
                ("flag", ""),
                ("date", "ge2020")
            ]
        );
    }

    #[test]
    fn form_body_of_post_search_is_merged() {
        let body = Value::String("patient=123&code=x%20y".into());
        let search = FhirRequest::parse("POST", "Observation/_search?_count=10", Some(&body))
            .expect("parses");
        assert_eq!(search.parameters().len(), 3);
        assert_eq!(
            search.parameters()[2],
            ("code".to_string(), "x y".to_string())
        );
    }

    #[test]
    fn maps_interactions_to_smart_letters() {
        let letters: String = [
            Interaction::Read,
            Interaction::VRead,
            Interaction::InstanceHistory,
            Interaction::TypeHistory,
            Interaction::Search,
            Interaction::Create,
            Interaction::Update,
            Interaction::Patch,
            Interaction::Delete,
        ]
        .iter()
        .map(|i| i.required_permission().letter())
        .collect();
        assert_eq!(letters, "rrrssc uud".replace(' ', ""));
    }

    #[test]
    fn rejects_malformed_requests() {
        let long = format!("Observation?code={}", "x".repeat(MAX_URL_BYTES));
        let many = format!("Observation?{}", vec!["a=1"; MAX_PARAMETERS + 1].join("&"));
        let long_id = format!("Observation/{}", "1".repeat(65));
        let cases: Vec<(&str, &str, PolicyError)> = vec![
            (
                "HEAD",
                "Observation",
                PolicyError::UnsupportedMethod {
                    method: "HEAD".into(),
                },
            ),
            (
                "get",
                "Observation",
                PolicyError::UnsupportedMethod {
                    method: "get".into(),
                },
            ),
            ("GET", &long, PolicyError::UrlTooLong { bytes: long.len() }),
            (
                "GET",
                "http://evil.example/fhir/Observation/1",
                PolicyError::AbsoluteUrl,
            ),
            (
                "GET",
                "//evil.example/Observation/1",
                PolicyError::AbsoluteUrl,
            ),
            ("GET", "urn:uuid:1234", PolicyError::AbsoluteUrl),
            ("GET", "Observation/1#frag", PolicyError::Fragment),
            (
                "GET",
                "Observation/../Patient/1",
                PolicyError::PathTraversal,
            ),
            ("GET", "Observation/..", PolicyError::PathTraversal),
            ("GET", "Observation/./1", PolicyError::PathTraversal),
            ("GET", "Observation/", PolicyError::EmptyPathSegment),
            ("GET", "", PolicyError::EmptyResourceType),
            ("GET", "?patient=123", PolicyError::EmptyResourceType),
            (
                "GET",
                "observation/1",
                PolicyError::InvalidResourceType {
                    segment: "observation".into(),
                },
            ),
            (
                "GET",
                "metadata",
                PolicyError::InvalidResourceType {
                    segment: "metadata".into(),
                },
            ),
            (
                "GET",
                "Observation/a_b",
                PolicyError::InvalidId {
                    segment: "a_b".into(),
                },
            ),
            (
                "GET",
                "Observation/%2e%2e",
                PolicyError::InvalidId {
                    segment: "%2e%2e".into(),
                },
            ),
            (
                "GET",
                &long_id,
                PolicyError::InvalidId {
                    segment: "1".repeat(64),
                },
            ),
            (
                "GET",
                "Observation/1/_history/v_2",
                PolicyError::InvalidId {
                    segment: "v_2".into(),
                },
            ),
            (
                "GET",
                "Observation?code=%zz",
                PolicyError::InvalidPercentEncoding { text: "%zz".into() },
            ),
            (
                "GET",
                "Observation?code=%ff",
                PolicyError::InvalidPercentEncoding { text: "%ff".into() },
            ),
            ("GET", &many, PolicyError::TooManyParameters),
            (
                "GET",
                "Patient/123/$everything",
                PolicyError::UnsupportedOperation {
                    operation: "$everything".into(),
                },
            ),
            (
                "PUT",
                "Observation?identifier=x",
                PolicyError::ConditionalInteraction {
                    method: "PUT".into(),
                },
            ),
            (
                "DELETE",
                "Observation?identifier=x",
                PolicyError::ConditionalInteraction {
                    method: "DELETE".into(),
                },
            ),
            (
                "POST",
                "Observation/1",
                PolicyError::MethodNotAllowed {
                    method: "POST".into(),
                    path: "Observation/1".into(),
                },
            ),
            (
                "GET",
                "Observation/_search",
                PolicyError::MethodNotAllowed {
                    method: "GET".into(),
                    path: "Observation/_search".into(),
                },
            ),
            (
                "DELETE",
                "Observation",
                PolicyError::MethodNotAllowed {
                    method: "DELETE".into(),
                    path: "Observation".into(),
                },
            ),
            (
                "GET",
                "Encounter/1/Observation",
                PolicyError::UnsupportedCompartment {
                    compartment: "Encounter".into(),
                },
            ),
            (
                "GET",
                "Patient/1/Medication",
                PolicyError::NotInPatientCompartment {
                    resource_type: "Medication".into(),
                },
            ),
            (
                "GET",
                "Observation/1/_history/2/x",
                PolicyError::UnsupportedUrl {
                    path: "Observation/1/_history/2/x".into(),
                },
            ),
        ];
        for (method, url, want) in cases {
            assert_eq!(parse_error(method, url, None), want, "{method} {url}");
        }
    }

    #[test]
    fn rejects_bodies_that_contradict_the_url() {
        let wrong_type = serde_json::json!({"resourceType": "Condition"});
        assert!(matches!(
            parse_error("POST", "Observation", Some(wrong_type)),
            PolicyError::InvalidBody { .. }
        ));
        let wrong_id = serde_json::json!({"resourceType": "Observation", "id": "2"});
        assert!(matches!(
            parse_error("PUT", "Observation/1", Some(wrong_id)),
            PolicyError::InvalidBody { .. }
        ));
        assert!(matches!(
            parse_error("POST", "Observation", Some(serde_json::json!([1]))),
            PolicyError::InvalidBody { .. }
        ));
        assert!(matches!(
            parse_error("POST", "Observation/_search", Some(serde_json::json!({}))),
            PolicyError::InvalidBody { .. }
        ));
        let error = parse_error("GET", "Observation/../x", None);
        assert_eq!(
            error.to_string(),
            "URL path must not contain `.` or `..` segments"
        );
    }

    #[test]
    fn compartment_table_matches_r4_examples() {
        assert_eq!(
            patient_compartment_parameters("Observation"),
            Some(&["subject", "performer"][..])
        );
        assert_eq!(
            patient_compartment_parameters("AllergyIntolerance"),
            Some(&["patient", "recorder", "asserter"][..])
        );
        assert_eq!(
            patient_compartment_parameters("Coverage"),
            Some(&["policy-holder", "subscriber", "beneficiary", "payor"][..])
        );
        assert_eq!(
            patient_compartment_parameters("Patient"),
            Some(&["link"][..])
        );
        assert_eq!(patient_compartment_parameters("Medication"), None);
        assert_eq!(PATIENT_COMPARTMENT.len(), 66);
        for (name, _, _) in PATIENT_COMPARTMENT {
            assert!(!is_patient_independent(name), "{name} is in both tables");
        }
        let mut names: Vec<&str> = PATIENT_COMPARTMENT
            .iter()
            .map(|(name, _, _)| *name)
            .collect();
        let unsorted = names.clone();
        names.sort_unstable();
        assert_eq!(names, unsorted);
    }

    #[test]
    fn decision_json_has_one_shape() {
        assert_eq!(
            Decision::Permit {
                scope: "user/*.rs".into()
            }
            .to_json(),
            serde_json::json!({"decision": "permit", "scope": "user/*.rs", "reason": null, "must_verify": []})
        );
        assert_eq!(
            Decision::Deny {
                reason: "no".into()
            }
            .to_json(),
            serde_json::json!({"decision": "deny", "scope": null, "reason": "no", "must_verify": []})
        );
        let conditional = Decision::Conditional {
            scope: "patient/Observation.rs".into(),
            must_verify: vec![Condition::InPatientCompartment {
                patient: "123".into(),
            }],
        };
        assert_eq!(
            conditional.to_json(),
            serde_json::json!({
                "decision": "conditional",
                "scope": "patient/Observation.rs",
                "reason": null,
                "must_verify": [{"condition": "in_patient_compartment", "patient": "123", "text": IN_123}]
            })
        );
        assert_eq!(
            conditional.to_string(),
            format!("permit by patient/Observation.rs if {IN_123}")
        );
        let write = Condition::StoredAndResultInPatientCompartment {
            patient: "123".into(),
        };
        assert_eq!(
            write.to_json(),
            serde_json::json!({
                "condition": "stored_and_result_in_patient_compartment",
                "patient": "123",
                "text": STORED_AND_RESULT_123
            })
        );
    }

    fn request_strategy() -> impl Strategy<Value = (String, String, Option<Value>)> {
        let types = prop_oneof![
            proptest::sample::select(strategies::RESOURCE_TYPES.as_slice()),
            Just("Binary"),
            Just("Practitioner"),
        ];
        let ids = proptest::sample::select(vec!["123", "456", "789"]);
        let shapes = proptest::sample::select(vec![
            "{t}",
            "{t}/{id}",
            "{t}/{id}/_history",
            "{t}/{id}/_history/1",
            "{t}/_history",
            "{t}/_search",
            "Patient/{id}/{t}",
        ]);
        let methods = proptest::sample::select(vec!["GET", "POST", "PUT", "PATCH", "DELETE"]);
        let params = proptest::collection::vec(
            proptest::sample::select(vec![
                "patient=123",
                "patient=456",
                "subject=Patient/123",
                "_id=123",
                "category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
                "category=vital-signs",
                "code=http://loinc.org|1234-5",
                "status=final",
                "_include=Observation:subject",
                "performer=Patient/456",
                "_has:Observation:patient:code=1",
            ]),
            0..3,
        );
        let subjects = proptest::sample::select(vec![
            None,
            Some("Patient/123"),
            Some("Patient/456"),
            Some("Group/1"),
        ]);
        (types, ids, shapes, methods, params, subjects).prop_map(
            |(t, id, shape, method, params, subject)| {
                let path = shape.replace("{t}", t).replace("{id}", id);
                let url = if params.is_empty() {
                    path
                } else {
                    format!("{path}?{}", params.join("&"))
                };
                let mut body = serde_json::json!({"resourceType": t, "id": id});
                if let Some(reference) = subject {
                    body["subject"] = serde_json::json!({"reference": reference});
                }
                let body = (matches!(method, "POST" | "PUT") && !shape.ends_with("_search"))
                    .then_some(body);
                (method.to_string(), url, body)
            },
        )
    }

    /// Types whose searches the second property exercises: compartment
    /// members with and without other links, Patient, Group and Schedule.
    const SEARCHED_TYPES: [&str; 15] = [
        "Observation",
        "DiagnosticReport",
        "MedicationRequest",
        "Immunization",
        "Condition",
        "Encounter",
        "Coverage",
        "Communication",
        "Appointment",
        "Basic",
        "ResearchSubject",
        "DocumentReference",
        "Schedule",
        "Patient",
        "Group",
    ];

    /// Every linking parameter of `resource_type`, with `:Patient` forms, and
    /// modifiers and chains on its about-parameters.
    fn linking_names(resource_type: &str) -> Vec<String> {
        let mut names: Vec<String> = compartment_link_parameters(resource_type)
            .into_iter()
            .chain(about_patient_parameters(resource_type))
            .map(String::from)
            .collect();
        let typed: Vec<String> = names.iter().map(|name| format!("{name}:Patient")).collect();
        names.extend(typed);
        for about in about_patient_parameters(resource_type) {
            for suffix in [":not", ":missing", ":identifier", ".identifier"] {
                names.push(format!("{about}{suffix}"));
            }
        }
        names
    }

    fn patient_search_strategy() -> impl Strategy<Value = (String, String, Option<Value>)> {
        proptest::sample::select(SEARCHED_TYPES.as_slice())
            .prop_flat_map(|resource_type| {
                // Mostly the context patient, so that many searches pass and
                // the property is not met by denying everything.
                let values = prop_oneof![
                    3 => proptest::sample::select(vec!["123", "Patient/123"]),
                    2 => proptest::sample::select(vec![
                    "456",
                    "Patient/456",
                    "123,456",
                    "Patient/123,Patient/456",
                    "Patient/456/_history/2",
                    "https://ehr.example/fhir/Patient/456",
                    "Patient?identifier=456",
                    "Practitioner/9",
                    "Group/9",
                ]),
                ];
                let linking = (
                    proptest::sample::select(linking_names(resource_type)),
                    values,
                )
                    .prop_map(|(name, value)| format!("{name}={value}"));
                let special = proptest::sample::select(vec![
                    "_has:MedicationRequest:medication:subject=Patient/456",
                    "_has:Observation:patient:code=1234-5",
                    "_has:Observation:subject:_id=456",
                    "performer._has:Observation:performer:subject=Patient/456",
                    "subject._has:Observation:subject:code=456",
                    "_query=for-456",
                    "_filter=subject%20eq%20Patient/456",
                    "_list=456",
                    "_text=456",
                    "_content=456",
                    "_containedType=456",
                ])
                .prop_map(String::from);
                let harmless = proptest::sample::select(vec![
                    "_count=10",
                    "_sort=-date",
                    "_lastUpdated=ge2020",
                    "_include=Observation:subject",
                    "code=http://loinc.org|1234-5",
                    "category=vital-signs",
                    "status=final",
                ])
                .prop_map(String::from);
                let parameters = proptest::collection::vec(
                    prop_oneof![6 => linking, 1 => special, 2 => harmless],
                    1..4,
                );
                let shapes = prop_oneof![
                    3 => Just("GET {t}"),
                    2 => Just("POST {t}/_search"),
                    1 => Just("GET Patient/123/{t}"),
                    1 => Just("POST Patient/123/{t}/_search"),
                    1 => Just("GET Patient/456/{t}"),
                ];
                (Just(resource_type), shapes, parameters, any::<bool>())
            })
            .prop_map(|(resource_type, shape, parameters, in_form_body)| {
                let (method, path) = shape.split_once(' ').unwrap_or(("GET", shape));
                let path = path.replace("{t}", resource_type);
                let query = parameters.join("&");
                if method == "POST" && in_form_body {
                    (method.to_string(), path, Some(Value::String(query)))
                } else {
                    (method.to_string(), format!("{path}?{query}"), None)
                }
            })
    }

    fn patient_scope_set() -> impl Strategy<Value = ScopeSet> {
        let resource = prop_oneof![
            2 => Just(ResourceType::Any),
            1 => proptest::sample::select(SEARCHED_TYPES.as_slice())
                .prop_map(|name| ResourceType::Named(name.to_string())),
        ];
        let scope = (
            resource,
            strategies::permissions(),
            strategies::constraints(),
        )
            .prop_map(|(resource, permissions, constraints)| {
                Scope::Resource(ResourceScope::new(
                    ScopeContext::Patient,
                    resource,
                    permissions.with(Permission::Search),
                    constraints,
                    Syntax::V2,
                ))
            });
        proptest::collection::vec(scope, 1..4).prop_map(|scopes| scopes.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn patient_searches_never_name_another_patient(
            granted in patient_scope_set(),
            (method, url, body) in patient_search_strategy(),
        ) {
            let request = match FhirRequest::parse(&method, &url, body.as_ref()) {
                Ok(request) => request,
                Err(error) => return Err(TestCaseError::fail(format!("{method} {url} did not parse: {error}"))),
            };
            let reaches_456 = url.contains("Patient/456/")
                || request
                    .parameters()
                    .iter()
                    .any(|(name, value)| name.contains("456") || value.contains("456") || name.contains("_has"));
            let decision = check(&granted, Some("123"), &request);
            if reaches_456 {
                prop_assert!(decision.is_deny(), "{method} {url} {body:?} under {granted}: {decision}");
            }
        }

        #[test]
        fn permits_only_within_a_granted_scope(
            granted in strategies::scope_set(),
            patient in proptest::sample::select(vec![None, Some("123"), Some("456")]),
            (method, url, body) in request_strategy(),
        ) {
            let Ok(request) = FhirRequest::parse(&method, &url, body.as_ref()) else {
                return Ok(());
            };
            let decision = check(&granted, patient, &request);
            let named = match &decision {
                Decision::Permit { scope } | Decision::Conditional { scope, .. } => scope,
                Decision::Deny { reason } => {
                    prop_assert!(!reason.is_empty());
                    return Ok(());
                }
            };
            let Ok(Scope::Resource(scope)) = named.parse::<Scope>() else {
                return Err(TestCaseError::fail(format!("{named} is not a resource scope")));
            };
            prop_assert!(granted.contains(&Scope::Resource(scope.clone())), "{} not granted in {}", scope, granted);
            prop_assert!(scope.resource.matches(request.resource_type()));
            prop_assert!(scope.permissions.contains(request.interaction().required_permission()));
            if scope.context == ScopeContext::Patient {
                prop_assert!(patient.is_some(), "patient scope used without a patient: {}", decision);
            }
        }

        #[test]
        fn parse_and_check_never_panic(method in "[A-Z]{0,7}", url in "\\PC{0,200}", body in proptest::option::of("\\PC{0,40}")) {
            let body = body.map(Value::String);
            if let Ok(request) = FhirRequest::parse(&method, &url, body.as_ref()) {
                let granted = ScopeSet::parse("patient/*.cruds user/Observation.rs?category=x").0;
                let _ = check(&granted, Some("123"), &request).to_json();
            }
        }

        #[test]
        fn parse_never_panics_on_url_like_text(url in "(/)?[A-Za-z$_.%/]{0,30}([?][a-z_:=&%,|./0-9+]{0,40})?") {
            for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
                let _ = FhirRequest::parse(method, &url, None);
            }
        }
    }
}
