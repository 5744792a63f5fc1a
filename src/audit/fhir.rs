//! Ward's audit trail as FHIR R4 `AuditEvent` resources, after the IHE Basic Audit Log Patterns
//! (BALP, <https://profiles.ihe.net/ITI/BALP/>), for `ward audit export --format fhir` and
//! `GET /admin/api/v1/audit?_format=fhir`. Pure: rows in, JSON out; no database, no clock.
//!
//! What each event becomes:
//!
//! - `type`: a DICOM event id (`http://dicom.nema.org/resources/ontology/DCM`), `subtype`: the
//!   matching standard event type where one exists, then always `urn:ward:audit-action#<action>`,
//!   so Ward's own name survives. `action` follows DICOM PS3.15 A.5.3: `E` for Security Alert,
//!   User Authentication, Application Activity and Query; CRUD only for Patient Record, Import
//!   and Export. Ward's finer verb (created, deleted, …) is in the Ward subtype.
//! - `outcome`: `0` for success; for a failure, `8` (serious) when Ward rated the event `high`
//!   (token reuse, a cloned passkey, a foreign revocation, an admin refusal), else `4` (minor: a
//!   refused login, token or authorization). `12` (major) is never used: Ward records no failure
//!   of its own. `outcomeDesc` is the failure's `error` and/or `reason` from the details.
//! - `agent`: the signed-in person (`urn:ward:user`), the OAuth client
//!   (`urn:ietf:params:oauth:client-id`), or, for a request nobody was authenticated on, an
//!   anonymous requester; the one who asked has `requestor: true` and the source IP. Ward itself
//!   is always an agent too (the authorization server, `who` equal to `source.observer`), and the
//!   requestor when the event had no actor (start-up, migrations).
//! - `source`: this Ward (`observer`, identified by its issuer URL), `site` = the node that wrote
//!   the event, type 4 (Application Server).
//! - `entity`: the patient(s) (`Patient/<id>`, Person/Patient); the thing acted on (a client,
//!   role, user, signing key, token family or session), carrying every field of the event's
//!   details as `detail` (type = field name, `valueString` = text, or compact JSON for lists and
//!   objects); and the HTTP request (BALP `XrequestId`, the response's `X-Request-Id`) with the
//!   user agent (at most 256 characters).
//!
//! Nothing beyond the row (and the observer's issuer) is emitted. Strings are made valid FHIR
//! strings: control characters become U+FFFD, other Unicode white space a plain space, and
//! empty values are left out rather than written empty. Timestamps outside FHIR's years
//! 0001–9999 are clamped into them.
//!
//! BALP profile claims (`meta.profile`) are made only where the resource meets the profile:
//! `token.introspected` with a patient, a client and its IP is a disclosure at source
//! (`IHE.BasicAudit.PrivacyDisclosure.Source`). BALP 1.1.x has no login, logout or generic
//! profile, and its IUA token (`IHE.IUA.71`), REST (`Read`, `Query`, `Update`, …) and
//! authorization (`AuthZconsent`) profiles need data Ward does not record (the raw token request,
//! the FHIR interaction, a Consent resource), so other events claim none.

use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use crate::store::audit_events::AuditEventRow;

/// Who observed (this Ward instance): used for `AuditEvent.source`.
pub struct Observer<'a> {
    /// Ward's issuer URL: identifies the observer (and Ward as an agent).
    pub issuer: &'a str,
    /// The site used when a row names no node (rows written by Ward always do).
    pub node_hint: Option<&'a str>,
}

/// The system of the Ward-specific subtype coding, whose code is the audit action.
pub const WARD_ACTION_SYSTEM: &str = "urn:ward:audit-action";

/// BALP profile for a disclosure recorded by the party that disclosed.
pub const PROFILE_DISCLOSURE_SOURCE: &str =
    "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PrivacyDisclosure.Source";

const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const SECURITY_ROLE_TYPE: &str = "http://terminology.hl7.org/CodeSystem/extra-security-role-type";
const SECURITY_SOURCE_TYPE: &str = "http://terminology.hl7.org/CodeSystem/security-source-type";
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
const LIFECYCLE: &str = "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle";
const IHE_EVENT_TYPE: &str = "urn:ihe:event-type-code";
const BALP_AUTHZ: &str = "https://profiles.ihe.net/ITI/BALP/CodeSystem/AuthZsubType";
const BALP_ENTITY_TYPE: &str = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType";
const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";

const CLIENT_ID_SYSTEM: &str = "urn:ietf:params:oauth:client-id";
const USER_SYSTEM: &str = "urn:ward:user";
const ROLE_SYSTEM: &str = "urn:ward:role";
const KEY_SYSTEM: &str = "urn:ward:signing-key";
const FAMILY_SYSTEM: &str = "urn:ward:token-family";
const SESSION_SYSTEM: &str = "urn:ward:session";
const PATIENT_SYSTEM: &str = "urn:ward:patient";
const REQUEST_ID_SYSTEM: &str = "urn:ward:request-id";
const URI_SYSTEM: &str = "urn:ietf:rfc:3986";

/// Longest user agent exported, in characters.
const MAX_USER_AGENT_CHARS: usize = 256;
/// 0001-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z: FHIR `instant`'s range.
const MIN_INSTANT_MS: i64 = -62_135_596_800_000;
const MAX_INSTANT_MS: i64 = 253_402_300_799_999;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Code {
    system: &'static str,
    code: &'static str,
    display: &'static str,
}

const fn code(system: &'static str, code: &'static str, display: &'static str) -> Code {
    Code {
        system,
        code,
        display,
    }
}

// Event ids (AuditEvent.type).
const APPLICATION_ACTIVITY: Code = code(DCM, "110100", "Application Activity");
const EXPORT: Code = code(DCM, "110106", "Export");
const IMPORT: Code = code(DCM, "110107", "Import");
const PATIENT_RECORD: Code = code(DCM, "110110", "Patient Record");
const QUERY: Code = code(DCM, "110112", "Query");
const SECURITY_ALERT: Code = code(DCM, "110113", "Security Alert");
const USER_AUTHENTICATION: Code = code(DCM, "110114", "User Authentication");

// Event types (AuditEvent.subtype).
const APPLICATION_START: Code = code(DCM, "110120", "Application Start");
const LOGIN: Code = code(DCM, "110122", "Login");
const LOGOUT: Code = code(DCM, "110123", "Logout");
const SECURITY_CONFIGURATION: Code = code(DCM, "110129", "Security Configuration");
const SOFTWARE_CONFIGURATION: Code = code(DCM, "110131", "Software Configuration");
const RESTRICTED_FUNCTION: Code = code(DCM, "110132", "Use of Restricted Function");
const SECURITY_ROLES_CHANGED: Code = code(DCM, "110136", "Security Roles Changed");
const USER_ATTRIBUTES_CHANGED: Code = code(DCM, "110137", "User security Attributes Changed");
const GET_ACCESS_TOKEN: Code = code(IHE_EVENT_TYPE, "ITI-71", "Get Access Token");
const AUTHZ_CONSENT: Code = code(
    BALP_AUTHZ,
    "AuthZ-Consent",
    "Authorization Decision using Roles and Consent",
);
const DISCLOSE: Code = code(LIFECYCLE, "disclose", "Disclose Record Lifecycle Event");

// Purposes of use (AuditEvent.purposeOfEvent): emergency access.
const EMERGENCY_TREATMENT: Code = code(ACT_REASON, "ETREAT", "Emergency Treatment");
const BREAK_THE_GLASS: Code = code(ACT_REASON, "BTG", "break the glass");

// Agent types.
const HUMAN_USER: Code = code(SECURITY_ROLE_TYPE, "humanuser", "human user");
const AUTH_SERVER: Code = code(SECURITY_ROLE_TYPE, "authserver", "authorization server");
const APPLICATION: Code = code(DCM, "110150", "Application");
const DESTINATION_ROLE: Code = code(DCM, "110152", "Destination Role ID");
const SOURCE_ROLE: Code = code(DCM, "110153", "Source Role ID");

// Entity types and roles (Coding in R4).
const PERSON: Code = code(ENTITY_TYPE, "1", "Person");
const SYSTEM_OBJECT: Code = code(ENTITY_TYPE, "2", "System Object");
const ROLE_PATIENT: Code = code(OBJECT_ROLE, "1", "Patient");
const ROLE_SECURITY_USER: Code = code(OBJECT_ROLE, "11", "Security User Entity");
const ROLE_SECURITY_GROUP: Code = code(OBJECT_ROLE, "12", "Security Group Entity");
const ROLE_SECURITY_RESOURCE: Code = code(OBJECT_ROLE, "13", "Security Resource");
const REQUEST_ID: Code = code(
    BALP_ENTITY_TYPE,
    "XrequestId",
    "transport specific unique identifier where http X-Request-Id is used",
);

const APPLICATION_SERVER: Code = code(SECURITY_SOURCE_TYPE, "4", "Application Server");

/// What an event acted on, and so where its details go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Object {
    /// A client registration, named by `client_id`.
    Client,
    /// A role, named by `role`.
    Role,
    /// A user account, named by `user_id`.
    User,
    /// A signing key, named by `kid`.
    SigningKey,
    /// A grant / token family, named by `family` when the event has one.
    Grant,
    /// A sign-in session, named by `session`.
    Session,
    /// The (first) patient entity carries the details.
    Patient,
    /// Nothing in particular: the details stand alone.
    Other,
}

#[derive(Debug, Clone, Copy)]
struct Mapping {
    kind: Code,
    subtype: Option<Code>,
    action: &'static str,
    object: Object,
    /// Ward discloses to the requesting client: Ward is the source, the client the destination.
    disclosure: bool,
    /// Emergency access: `purposeOfEvent` is emergency treatment, by breaking the glass.
    emergency: bool,
}

const fn map(kind: Code, subtype: Option<Code>, action: &'static str, object: Object) -> Mapping {
    Mapping {
        kind,
        subtype,
        action,
        object,
        disclosure: false,
        emergency: false,
    }
}

/// Actions Ward does not know yet (a newer Ward's rows read by an older one).
const FALLBACK: Mapping = map(APPLICATION_ACTIVITY, None, "E", Object::Other);

/// The FHIR coding of each of Ward's audit actions (`AuditEvent::ACTIONS`).
fn mapping(action: &str) -> Option<Mapping> {
    use Object as O;
    let alert = |subtype: Option<Code>, object| map(SECURITY_ALERT, subtype, "E", object);
    Some(match action {
        "server.started" => map(APPLICATION_ACTIVITY, Some(APPLICATION_START), "E", O::Other),
        "database.migrated" => alert(Some(SOFTWARE_CONFIGURATION), O::Other),
        "key.created" => alert(Some(SECURITY_CONFIGURATION), O::SigningKey),
        "client.registered"
        | "client.updated"
        | "client.status_changed"
        | "client.secret_rotated" => alert(Some(SECURITY_CONFIGURATION), O::Client),
        "role.created" | "role.updated" | "role.deleted" => {
            alert(Some(SECURITY_ROLES_CHANGED), O::Role)
        }
        "user.created"
        | "user.updated"
        | "user.status_changed"
        | "user.role_added"
        | "user.role_removed"
        | "user.enrolment_link_created"
        | "account.unlocked"
        | "password.changed"
        | "mfa.reset" => alert(Some(USER_ATTRIBUTES_CHANGED), O::User),
        // The signed-in person's own account (the actor): no separate user entity.
        "account.locked" | "mfa.enrolled" | "mfa.removed" => {
            alert(Some(USER_ATTRIBUTES_CHANGED), O::Other)
        }
        "login.succeeded" | "login.failed" | "mfa.used" | "mfa.failed" => {
            map(USER_AUTHENTICATION, Some(LOGIN), "E", O::Other)
        }
        // A client proving its identity at a protocol endpoint: a process logging in.
        "client.authentication_failed" => map(USER_AUTHENTICATION, Some(LOGIN), "E", O::Other),
        "session.ended" => map(USER_AUTHENTICATION, Some(LOGOUT), "E", O::Session),
        "webauthn.counter_regression" => alert(None, O::Other),
        "launch.created" => map(APPLICATION_ACTIVITY, None, "E", O::Other),
        "authorization.granted" | "authorization.refused" => alert(Some(AUTHZ_CONSENT), O::Grant),
        "token.issued" | "token.refused" => {
            map(USER_AUTHENTICATION, Some(GET_ACCESS_TOKEN), "E", O::Grant)
        }
        "token.reuse_detected" => alert(Some(GET_ACCESS_TOKEN), O::Grant),
        "token.revoked" | "token.revocation_refused" | "token.revoked_all" => alert(None, O::Grant),
        "token.introspected" => Mapping {
            disclosure: true,
            ..map(EXPORT, Some(DISCLOSE), "R", O::Grant)
        },
        "policy.checked" => alert(None, O::Grant),
        "patient.imported" => map(IMPORT, None, "C", O::Other),
        "patient.searched" => map(QUERY, Some(DISCLOSE), "E", O::Other),
        "patient.selected" => map(PATIENT_RECORD, None, "R", O::Patient),
        "patient.updated" => map(PATIENT_RECORD, None, "U", O::Patient),
        "patient.removed" => map(PATIENT_RECORD, None, "D", O::Patient),
        "admin.access_denied" => alert(Some(RESTRICTED_FUNCTION), O::Other),
        // Emergency access: the use of a restricted function, for emergency treatment.
        "break_glass.invoked" | "break_glass.refused" => Mapping {
            emergency: true,
            ..alert(Some(RESTRICTED_FUNCTION), O::Grant)
        },
        // The audit trail failed its integrity check: a security alert about Ward itself.
        "audit.verification_failed" => alert(None, O::Other),
        _ => return None,
    })
}

/// One audit event as a FHIR R4 `AuditEvent`.
pub fn to_audit_event(row: &AuditEventRow, observer: &Observer<'_>) -> Value {
    let mapping = mapping(&row.action).unwrap_or(FALLBACK);
    let details = parse_details(&row.details);
    let success = row.outcome == "success";
    let issuer = fhir_string(observer.issuer);
    let user = row.actor_user.as_deref().and_then(fhir_string);
    let client = row.actor_client.as_deref().and_then(fhir_string);
    let ip = row.source_ip.as_deref().and_then(fhir_string);
    let patients = patients(row, &details);
    let observer_ref = observer_reference(issuer.as_deref());

    let mut event = Map::new();
    event.insert("resourceType".into(), json!("AuditEvent"));
    event.insert("id".into(), json!(format!("ward-{}", row.id)));
    // PrivacyDisclosure.Source: Ward (with a network address) discloses one patient to a
    // client whose address is known.
    let disclosure_profile = mapping.disclosure
        && success
        && patients.len() == 1
        && user.is_none()
        && client.is_some()
        && ip.is_some()
        && issuer.is_some();
    if disclosure_profile {
        event.insert(
            "meta".into(),
            json!({ "profile": [PROFILE_DISCLOSURE_SOURCE] }),
        );
    }
    event.insert("type".into(), coding(mapping.kind));
    let mut subtypes: Vec<Value> = mapping.subtype.into_iter().map(coding).collect();
    if let Some(action) = fhir_code(&row.action) {
        subtypes.push(json!({ "system": WARD_ACTION_SYSTEM, "code": action }));
    }
    if !subtypes.is_empty() {
        event.insert("subtype".into(), Value::Array(subtypes));
    }
    event.insert("action".into(), json!(mapping.action));
    event.insert("recorded".into(), json!(instant(row.occurred_at)));
    event.insert(
        "outcome".into(),
        json!(outcome_code(success, &row.severity)),
    );
    if !success {
        if let Some(desc) = outcome_desc(&details) {
            event.insert("outcomeDesc".into(), json!(desc));
        }
    }
    let parties = Parties {
        user: user.as_deref(),
        client: client.as_deref(),
        ip: ip.as_deref(),
        issuer: issuer.as_deref(),
        observer: &observer_ref,
        disclosure: mapping.disclosure,
    };
    event.insert("agent".into(), Value::Array(agents(&parties)));
    if mapping.emergency {
        // BALP/IHE: the purpose the person claimed (v3-ActReason ETREAT), and how (BTG).
        event.insert(
            "purposeOfEvent".into(),
            json!([concept(EMERGENCY_TREATMENT), concept(BREAK_THE_GLASS)]),
        );
    }
    let mut source = Map::new();
    let site = fhir_string(&row.node).or_else(|| observer.node_hint.and_then(fhir_string));
    if let Some(site) = site {
        source.insert("site".into(), json!(site));
    }
    source.insert("observer".into(), observer_ref.clone());
    source.insert("type".into(), json!([coding(APPLICATION_SERVER)]));
    event.insert("source".into(), Value::Object(source));
    let entities = entities(row, &mapping, &details, &patients);
    if !entities.is_empty() {
        event.insert("entity".into(), Value::Array(entities));
    }
    Value::Object(event)
}

/// Events as NDJSON: one compact `AuditEvent` per line, each line ending in a newline.
pub fn to_ndjson(rows: &[AuditEventRow], observer: &Observer<'_>) -> String {
    let mut out = String::new();
    for row in rows {
        // Compact JSON escapes every newline inside strings, so a line is a resource.
        out.push_str(&to_audit_event(row, observer).to_string());
        out.push('\n');
    }
    out
}

/// Events as a `collection` Bundle. Each entry's `fullUrl` is a `urn:uuid` derived from the
/// issuer and the event id (UUID v5), so exporting the same event twice gives the same URL.
pub fn to_bundle(rows: &[AuditEventRow], observer: &Observer<'_>) -> Value {
    let mut bundle = Map::new();
    bundle.insert("resourceType".into(), json!("Bundle"));
    bundle.insert("type".into(), json!("collection"));
    let entries: Vec<Value> = rows
        .iter()
        .map(|row| {
            json!({
                "fullUrl": full_url(row, observer),
                "resource": to_audit_event(row, observer),
            })
        })
        .collect();
    if !entries.is_empty() {
        bundle.insert("entry".into(), Value::Array(entries));
    }
    Value::Object(bundle)
}

fn full_url(row: &AuditEventRow, observer: &Observer<'_>) -> String {
    let name = format!("{}#ward-audit-event-{}", observer.issuer, row.id);
    let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, name.as_bytes());
    format!("urn:uuid:{id}")
}

/// `0` success; a failure is `8` (serious) when Ward rated it `high`, else `4` (minor).
fn outcome_code(success: bool, severity: &str) -> &'static str {
    match (success, severity) {
        (true, _) => "0",
        (false, "high") => "8",
        (false, _) => "4",
    }
}

/// `error: reason`, or whichever of the two the details have.
fn outcome_desc(details: &Map<String, Value>) -> Option<String> {
    let text = |key: &str| {
        details
            .get(key)
            .and_then(Value::as_str)
            .and_then(fhir_string)
    };
    match (text("error"), text("reason")) {
        (Some(error), Some(reason)) => Some(format!("{error}: {reason}")),
        (error, reason) => error.or(reason),
    }
}

/// Unix milliseconds as a FHIR `instant`: UTC, always with milliseconds.
fn instant(ms: i64) -> String {
    let ms = ms.clamp(MIN_INSTANT_MS, MAX_INSTANT_MS);
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

struct Parties<'a> {
    user: Option<&'a str>,
    client: Option<&'a str>,
    ip: Option<&'a str>,
    issuer: Option<&'a str>,
    observer: &'a Value,
    disclosure: bool,
}

/// The requester first (person, else client, else an anonymous caller), then the client when a
/// person asked, then Ward. The source IP belongs to whoever made the request: a person's
/// browser at `/authorize` and the admin console, the client at `/token` and `/introspect`.
fn agents(p: &Parties<'_>) -> Vec<Value> {
    let network = |address: &str, kind: &str| json!({ "address": address, "type": kind });
    let mut agents = Vec::new();
    if let Some(user) = p.user {
        let mut agent = agent(HUMAN_USER, identified(USER_SYSTEM, user), true);
        if let Some(ip) = p.ip {
            agent.insert("network".into(), network(ip, "2"));
        }
        agents.push(Value::Object(agent));
    }
    if let Some(client) = p.client {
        let kind = if p.disclosure {
            DESTINATION_ROLE
        } else {
            APPLICATION
        };
        let requestor = p.user.is_none();
        let mut agent = agent(kind, identified(CLIENT_ID_SYSTEM, client), requestor);
        if let (true, Some(ip)) = (requestor, p.ip) {
            agent.insert("network".into(), network(ip, "2"));
        }
        agents.push(Value::Object(agent));
    }
    if let (None, None, Some(ip)) = (p.user, p.client, p.ip) {
        // A request no one was authenticated on (a failed sign-in of an unknown name, a client
        // that failed to authenticate): the caller is known only by its address.
        let mut agent = Map::new();
        agent.insert("type".into(), concept(SOURCE_ROLE));
        agent.insert("requestor".into(), json!(true));
        agent.insert("network".into(), network(ip, "2"));
        agents.push(Value::Object(agent));
    }
    let kind = if p.disclosure {
        SOURCE_ROLE
    } else {
        AUTH_SERVER
    };
    let mut ward = agent(kind, p.observer.clone(), agents.is_empty());
    if let Some(issuer) = p.issuer {
        ward.insert("network".into(), network(issuer, "5"));
    }
    agents.push(Value::Object(ward));
    agents
}

fn agent(kind: Code, who: Value, requestor: bool) -> Map<String, Value> {
    let mut agent = Map::new();
    agent.insert("type".into(), concept(kind));
    agent.insert("who".into(), who);
    agent.insert("requestor".into(), json!(requestor));
    agent
}

/// This Ward: `source.observer`, and `who` of Ward's own agent (BALP wants them equal).
fn observer_reference(issuer: Option<&str>) -> Value {
    match issuer {
        Some(issuer) => json!({
            "type": "Device",
            "identifier": { "system": URI_SYSTEM, "value": issuer },
            "display": "Ward",
        }),
        None => json!({ "type": "Device", "display": "Ward" }),
    }
}

fn identified(system: &str, value: &str) -> Value {
    json!({ "identifier": { "system": system, "value": value } })
}

/// The event's patients: the row's target, and for the picker every patient it showed.
fn patients(row: &AuditEventRow, details: &Map<String, Value>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let offered = details
        .get("offered")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str);
    for id in row.target_patient.as_deref().into_iter().chain(offered) {
        if let Some(id) = fhir_string(id) {
            if !out.contains(&id) {
                out.push(id);
            }
        }
    }
    out
}

/// Details fields that become entities of their own rather than `detail` entries.
const FIELDS_AS_ENTITIES: &[&str] = &["patient", "offered"];

fn entities(
    row: &AuditEventRow,
    mapping: &Mapping,
    details: &Map<String, Value>,
    patients: &[String],
) -> Vec<Value> {
    let mut entities = Vec::new();
    let mut detail = Some(detail_entries(details)).filter(|d| !d.is_empty());
    for id in patients {
        let mut entity = Map::new();
        entity.insert("what".into(), patient_reference(id));
        entity.insert("type".into(), coding(PERSON));
        entity.insert("role".into(), coding(ROLE_PATIENT));
        if mapping.object == Object::Patient {
            if let Some(detail) = detail.take() {
                entity.insert("detail".into(), Value::Array(detail));
            }
        }
        entities.push(Value::Object(entity));
    }
    let named = |field: &str, system: &str| {
        details
            .get(field)
            .and_then(Value::as_str)
            .and_then(fhir_string)
            .map(|value| identified(system, &value))
    };
    let (kind, role, what) = match mapping.object {
        Object::Client => (
            SYSTEM_OBJECT,
            Some(ROLE_SECURITY_RESOURCE),
            named("client_id", CLIENT_ID_SYSTEM),
        ),
        Object::Role => (
            SYSTEM_OBJECT,
            Some(ROLE_SECURITY_GROUP),
            named("role", ROLE_SYSTEM),
        ),
        Object::User => (
            PERSON,
            Some(ROLE_SECURITY_USER),
            named("user_id", USER_SYSTEM),
        ),
        Object::SigningKey => (
            SYSTEM_OBJECT,
            Some(ROLE_SECURITY_RESOURCE),
            named("kid", KEY_SYSTEM),
        ),
        Object::Grant => (
            SYSTEM_OBJECT,
            Some(ROLE_SECURITY_RESOURCE),
            named("family", FAMILY_SYSTEM),
        ),
        Object::Session => (
            SYSTEM_OBJECT,
            Some(ROLE_SECURITY_RESOURCE),
            named("session", SESSION_SYSTEM),
        ),
        Object::Patient | Object::Other => (SYSTEM_OBJECT, None, None),
    };
    // Typed objects are always listed (a refused token has no family, but is still about a
    // grant); an untyped one only to carry details.
    if role.is_some() || detail.is_some() {
        let mut entity = Map::new();
        if let Some(what) = what {
            entity.insert("what".into(), what);
        }
        entity.insert("type".into(), coding(kind));
        if let Some(role) = role {
            entity.insert("role".into(), coding(role));
        }
        if let Some(detail) = detail.take() {
            entity.insert("detail".into(), Value::Array(detail));
        }
        entities.push(Value::Object(entity));
    }
    if let Some(request) = request_entity(row) {
        entities.push(request);
    }
    entities
}

/// BALP's transaction entity: the request id Ward returned as `X-Request-Id`, and the caller's
/// user agent.
fn request_entity(row: &AuditEventRow) -> Option<Value> {
    let request_id = row.request_id.as_deref().and_then(fhir_string);
    let user_agent = row
        .user_agent
        .as_deref()
        .map(|ua| ua.chars().take(MAX_USER_AGENT_CHARS).collect::<String>())
        .and_then(|ua| fhir_string(&ua));
    if request_id.is_none() && user_agent.is_none() {
        return None;
    }
    let mut entity = Map::new();
    if let Some(id) = request_id {
        entity.insert("what".into(), identified(REQUEST_ID_SYSTEM, &id));
    }
    entity.insert("type".into(), coding(REQUEST_ID));
    if let Some(ua) = user_agent {
        entity.insert(
            "detail".into(),
            json!([{ "type": "user-agent", "valueString": ua }]),
        );
    }
    Some(Value::Object(entity))
}

fn patient_reference(id: &str) -> Value {
    if is_fhir_id(id) {
        json!({ "reference": format!("Patient/{id}") })
    } else {
        // Not a FHIR id (an EHR's launch context can hold anything): keep it as an identifier.
        json!({
            "type": "Patient",
            "identifier": { "system": PATIENT_SYSTEM, "value": id },
        })
    }
}

/// FHIR R4 `id`: `[A-Za-z0-9\-\.]{1,64}`, and not only dots (`Patient/..` is no reference).
fn is_fhir_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !id.bytes().all(|b| b == b'.')
}

/// The details column as fields. Not an object (never written by Ward): kept whole, as text.
fn parse_details(text: &str) -> Map<String, Value> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(fields)) => fields,
        Ok(Value::Null) => Map::new(),
        Ok(other) => Map::from_iter([("details".to_owned(), other)]),
        Err(_) => Map::from_iter([("details".to_owned(), Value::String(text.to_owned()))]),
    }
}

/// Each field as `{type: name, valueString: text}`: strings as they are, numbers and booleans
/// as written in JSON, lists and objects as compact JSON. Nulls are left out.
fn detail_entries(details: &Map<String, Value>) -> Vec<Value> {
    details
        .iter()
        .filter(|(name, _)| !FIELDS_AS_ENTITIES.contains(&name.as_str()))
        .filter_map(|(name, value)| {
            let text = match value {
                Value::Null => return None,
                Value::String(s) => fhir_string(s)?,
                other => fhir_string(&other.to_string())?,
            };
            Some(json!({ "type": fhir_string(name)?, "valueString": text }))
        })
        .collect()
}

/// A valid FHIR `string`, or `None` for one that would be empty: control characters (bar tab,
/// CR, LF) become U+FFFD and other Unicode white space a space.
fn fhir_string(s: &str) -> Option<String> {
    let cleaned: String = s
        .chars()
        .map(|c| match c {
            ' ' | '\t' | '\r' | '\n' => c,
            c if c.is_control() => '\u{FFFD}',
            c if c.is_whitespace() => ' ',
            c => c,
        })
        .collect();
    (!cleaned.trim().is_empty()).then_some(cleaned)
}

/// A valid FHIR `code`: no control characters, single spaces between words, none at the ends.
fn fhir_code(s: &str) -> Option<String> {
    let cleaned: String = s.chars().filter(|c| !c.is_control()).collect();
    let words: Vec<&str> = cleaned.split_whitespace().collect();
    (!words.is_empty()).then(|| words.join(" "))
}

fn coding(c: Code) -> Value {
    json!({ "system": c.system, "code": c.code, "display": c.display })
}

fn concept(c: Code) -> Value {
    json!({ "coding": [coding(c)] })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WARD_ACTIONS: &[&str] = crate::audit::AuditEvent::ACTIONS;

    const ISSUER: &str = "https://ward.example";
    const OBSERVER: Observer<'static> = Observer {
        issuer: ISSUER,
        node_hint: None,
    };

    fn row(action: &str, outcome: &str, severity: &str, details: Value) -> AuditEventRow {
        AuditEventRow {
            id: 42,
            occurred_at: 1_700_000_000_123,
            action: action.into(),
            outcome: outcome.into(),
            severity: severity.into(),
            actor_user: None,
            actor_client: None,
            source_ip: Some("192.0.2.7".into()),
            user_agent: Some("Mozilla/5.0".into()),
            request_id: Some("req-1".into()),
            target_patient: None,
            node: "ward-1:1234".into(),
            details: details.to_string(),
            chain_seq: Some(7),
            chain_hash: Some("abc".into()),
            chain_key_id: None,
        }
    }

    fn has_coding(codings: &Value, system: &str, code: &str) -> bool {
        codings
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["system"] == system && c["code"] == code)
    }

    fn agent_with<'a>(event: &'a Value, system: &str) -> &'a Value {
        event["agent"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["who"]["identifier"]["system"] == system)
            .unwrap_or_else(|| panic!("no agent identified in {system}: {event:#}"))
    }

    fn entity_with_role<'a>(event: &'a Value, role: &str) -> &'a Value {
        event["entity"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["role"]["code"] == role)
            .unwrap_or_else(|| panic!("no entity with role {role}: {event:#}"))
    }

    fn detail<'a>(entity: &'a Value, name: &str) -> &'a Value {
        &entity["detail"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["type"] == name)
            .unwrap_or_else(|| panic!("no detail {name}: {entity:#}"))["valueString"]
    }

    /// What R4 requires of every AuditEvent, plus ele-1 (no empty values) and Ward's own
    /// guarantees (an instant with milliseconds, exactly the first agent requesting).
    fn assert_valid_r4(event: &Value) {
        assert_eq!(event["resourceType"], "AuditEvent");
        let id = event["id"].as_str().unwrap();
        assert!(is_fhir_id(id), "{id}");
        assert!(event["type"]["system"]
            .as_str()
            .is_some_and(|s| !s.is_empty()));
        assert!(event["type"]["code"]
            .as_str()
            .is_some_and(|s| !s.is_empty()));
        assert!(matches!(
            event["action"].as_str(),
            Some("C" | "R" | "U" | "D" | "E")
        ));
        assert!(matches!(
            event["outcome"].as_str(),
            Some("0" | "4" | "8" | "12")
        ));
        let recorded = event["recorded"].as_str().unwrap();
        assert_eq!(recorded.len(), 24, "{recorded}");
        assert!(recorded.ends_with('Z') && recorded.as_bytes()[19] == b'.');
        let agents = event["agent"].as_array().unwrap();
        assert!(!agents.is_empty());
        for agent in agents {
            assert!(agent["requestor"].is_boolean(), "{agent:#}");
            assert!(agent["type"]["coding"][0]["code"].is_string(), "{agent:#}");
        }
        let requestors = agents.iter().filter(|a| a["requestor"] == true).count();
        assert_eq!(requestors, 1, "{event:#}");
        assert_eq!(agents[0]["requestor"], true);
        assert!(event["source"]["observer"].is_object());
        assert_eq!(event["source"]["type"][0]["code"], "4");
        assert_no_empty_values(event);
    }

    fn assert_no_empty_values(value: &Value) {
        match value {
            Value::Null => panic!("null in a FHIR resource"),
            Value::String(s) => {
                assert!(!s.trim().is_empty(), "empty string");
                assert!(
                    !s.chars().any(|c| c.is_control() && !"\t\r\n".contains(c)),
                    "control character in {s:?}"
                );
            }
            Value::Array(items) => {
                assert!(!items.is_empty(), "empty array");
                items.iter().for_each(assert_no_empty_values);
            }
            Value::Object(fields) => {
                assert!(!fields.is_empty(), "empty object");
                fields.values().for_each(assert_no_empty_values);
            }
            Value::Bool(_) | Value::Number(_) => {}
        }
    }

    #[test]
    fn login_succeeded_is_a_user_authentication_by_the_person() {
        let mut r = row(
            "login.succeeded",
            "success",
            "info",
            json!({"methods": ["pwd", "otp"]}),
        );
        r.actor_user = Some("u-1".into());
        let e = to_audit_event(&r, &OBSERVER);
        assert_valid_r4(&e);
        assert_eq!(e["id"], "ward-42");
        assert_eq!(e["type"]["code"], "110114");
        assert_eq!(e["type"]["system"], DCM);
        assert!(has_coding(&e["subtype"], DCM, "110122"));
        assert!(has_coding(
            &e["subtype"],
            WARD_ACTION_SYSTEM,
            "login.succeeded"
        ));
        assert_eq!(e["action"], "E");
        assert_eq!(e["outcome"], "0");
        assert!(e.get("outcomeDesc").is_none());
        assert_eq!(e["recorded"], "2023-11-14T22:13:20.123Z");
        let user = agent_with(&e, USER_SYSTEM);
        assert_eq!(user["who"]["identifier"]["value"], "u-1");
        assert_eq!(user["requestor"], true);
        assert_eq!(user["type"]["coding"][0]["code"], "humanuser");
        assert_eq!(user["network"]["address"], "192.0.2.7");
        assert_eq!(user["network"]["type"], "2");
        let ward = agent_with(&e, URI_SYSTEM);
        assert_eq!(ward["requestor"], false);
        assert_eq!(ward["who"], e["source"]["observer"]);
        assert_eq!(e["source"]["observer"]["display"], "Ward");
        assert_eq!(e["source"]["observer"]["identifier"]["value"], ISSUER);
        assert_eq!(e["source"]["site"], "ward-1:1234");
        assert!(e.get("meta").is_none());
    }

    #[test]
    fn failed_login_of_an_unknown_name_is_a_minor_failure_by_an_anonymous_caller() {
        let r = row(
            "login.failed",
            "failure",
            "notice",
            json!({"reason": "unknown_user"}),
        );
        let e = to_audit_event(&r, &OBSERVER);
        assert_valid_r4(&e);
        assert_eq!(e["type"]["code"], "110114");
        assert!(has_coding(&e["subtype"], DCM, "110122"));
        assert_eq!(e["outcome"], "4");
        assert_eq!(e["outcomeDesc"], "unknown_user");
        let caller = &e["agent"][0];
        assert_eq!(caller["requestor"], true);
        assert!(caller.get("who").is_none());
        assert_eq!(caller["network"]["address"], "192.0.2.7");
        assert_eq!(caller["type"]["coding"][0]["code"], "110153");
    }

    #[test]
    fn token_issued_names_client_patient_and_grant() {
        let mut r = row(
            "token.issued",
            "success",
            "notice",
            json!({
                "client_id": "app-1",
                "grant": "authorization_code",
                "family": "fam-9",
                "scope": "openid patient/*.rs",
                "patient": "pat-1",
            }),
        );
        r.actor_client = Some("app-1".into());
        r.target_patient = Some("pat-1".into());
        let e = to_audit_event(&r, &OBSERVER);
        assert_valid_r4(&e);
        assert_eq!(e["type"]["code"], "110114");
        assert!(has_coding(&e["subtype"], IHE_EVENT_TYPE, "ITI-71"));
        assert_eq!(e["action"], "E");
        assert_eq!(e["outcome"], "0");
        let client = agent_with(&e, CLIENT_ID_SYSTEM);
        assert_eq!(client["who"]["identifier"]["value"], "app-1");
        assert_eq!(client["requestor"], true);
        assert_eq!(client["type"]["coding"][0]["code"], "110150");
        assert_eq!(client["network"]["address"], "192.0.2.7");
        let patient = entity_with_role(&e, "1");
        assert_eq!(patient["what"]["reference"], "Patient/pat-1");
        assert_eq!(patient["type"]["system"], ENTITY_TYPE);
        assert_eq!(patient["type"]["code"], "1");
        assert_eq!(patient["role"]["system"], OBJECT_ROLE);
        let grant = entity_with_role(&e, "13");
        assert_eq!(grant["type"]["code"], "2");
        assert_eq!(grant["what"]["identifier"]["system"], FAMILY_SYSTEM);
        assert_eq!(grant["what"]["identifier"]["value"], "fam-9");
        assert_eq!(detail(grant, "client_id"), "app-1");
        assert_eq!(detail(grant, "family"), "fam-9");
        assert_eq!(detail(grant, "scope"), "openid patient/*.rs");
        assert_eq!(detail(grant, "grant"), "authorization_code");
        assert!(!grant["detail"].to_string().contains("pat-1"));
        // Token issuance is not claimed as any BALP profile (IUA.71 needs the raw request).
        assert!(e.get("meta").is_none());
    }

    #[test]
    fn token_introspected_is_a_disclosure_at_source() {
        let mut r = row(
            "token.introspected",
            "success",
            "notice",
            json!({"client_id": "app-1", "family": "fam-9", "patient": "pat-1"}),
        );
        r.actor_client = Some("fhir-server".into());
        r.target_patient = Some("pat-1".into());
        let e = to_audit_event(&r, &OBSERVER);
        assert_valid_r4(&e);
        assert_eq!(e["meta"]["profile"][0], PROFILE_DISCLOSURE_SOURCE);
        assert_eq!(e["type"]["code"], "110106");
        assert_eq!(e["action"], "R");
        assert!(has_coding(&e["subtype"], LIFECYCLE, "disclose"));
        // BALP's slices: Ward is the source (who = source.observer, with a network address),
        // the resource server the recipient.
        let ward = agent_with(&e, URI_SYSTEM);
        assert_eq!(ward["type"]["coding"][0]["code"], "110153");
        assert_eq!(ward["who"], e["source"]["observer"]);
        assert_eq!(ward["network"]["type"], "5");
        let rs = agent_with(&e, CLIENT_ID_SYSTEM);
        assert_eq!(rs["type"]["coding"][0]["code"], "110152");
        assert_eq!(rs["who"]["identifier"]["value"], "fhir-server");
        assert_eq!(rs["network"]["address"], "192.0.2.7");
        assert_eq!(
            entity_with_role(&e, "1")["what"]["reference"],
            "Patient/pat-1"
        );
        assert_eq!(detail(entity_with_role(&e, "13"), "client_id"), "app-1");

        // Without the recipient's address the profile is not met, so not claimed.
        r.source_ip = None;
        let e = to_audit_event(&r, &OBSERVER);
        assert_valid_r4(&e);
        assert!(e.get("meta").is_none());
        // Nor without a patient.
        let mut r = row(
            "token.introspected",
            "success",
            "notice",
            json!({"client_id": "svc", "family": null, "patient": null}),
        );
        r.actor_client = Some("fhir-server".into());
        let e = to_audit_event(&r, &OBSERVER);
        assert_valid_r4(&e);
        assert!(e.get("meta").is_none());
        assert!(e["entity"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["role"]["code"] != "1"));
    }

    #[test]
    fn token_reuse_is_a_serious_failure() {
        let mut r = row(
            "token.reuse_detected",
            "failure",
            "high",
            json!({"client_id": "app-1", "family": "fam-9", "kind": "refresh_token"}),
        );
        r.actor_client = Some("app-1".into());
        let e = to_audit_event(&r, &OBSERVER);
        assert_valid_r4(&e);
        assert_eq!(e["type"]["code"], "110113");
        assert_eq!(e["outcome"], "8");
        assert!(e.get("outcomeDesc").is_none());
        let grant = entity_with_role(&e, "13");
        assert_eq!(grant["what"]["identifier"]["value"], "fam-9");
        assert_eq!(detail(grant, "kind"), "refresh_token");
    }

    #[test]
    fn refused_token_is_a_minor_failure_with_error_and_reason() {
        let r = row(
            "token.refused",
            "failure",
            "notice",
            json!({"client_id": null, "grant": "authorization_code",
                   "error": "invalid_grant", "reason": "code expired"}),
        );
        let e = to_audit_event(&r, &OBSERVER);
        assert_valid_r4(&e);
        assert_eq!(e["outcome"], "4");
        assert_eq!(e["outcomeDesc"], "invalid_grant: code expired");
        let grant = entity_with_role(&e, "13");
        assert!(grant.get("what").is_none());
        assert_eq!(detail(grant, "grant"), "authorization_code");
    }

    #[test]
    fn admin_access_denied_is_a_serious_use_of_a_restricted_function() {
        let mut r = row(
            "admin.access_denied",
            "failure",
            "high",
            json!({"path": "/admin/api/v1/users", "reason": "not_admin"}),
        );
        r.actor_user = Some("u-2".into());
        let e = to_audit_event(&r, &OBSERVER);
        assert_valid_r4(&e);
        assert_eq!(e["type"]["code"], "110113");
        assert!(has_coding(&e["subtype"], DCM, "110132"));
        assert_eq!(e["action"], "E");
        assert_eq!(e["outcome"], "8");
        assert_eq!(e["outcomeDesc"], "not_admin");
        assert_eq!(agent_with(&e, USER_SYSTEM)["requestor"], true);
        let entity = e["entity"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x.get("detail").is_some() && x["type"]["code"] == "2")
            .unwrap();
        assert_eq!(detail(entity, "path"), "/admin/api/v1/users");
    }

    #[test]
    fn client_updated_by_an_admin_names_the_client_as_the_object() {
        let mut r = row(
            "client.updated",
            "success",
            "notice",
            json!({"client_id": "app-1",
                   "before": {"name": "Old"}, "after": {"name": "New"}}),
        );
        r.actor_user = Some("admin-1".into());
        let e = to_audit_event(&r, &OBSERVER);
        assert_valid_r4(&e);
        assert_eq!(e["type"]["code"], "110113");
        assert!(has_coding(&e["subtype"], DCM, "110129"));
        assert!(has_coding(
            &e["subtype"],
            WARD_ACTION_SYSTEM,
            "client.updated"
        ));
        assert_eq!(e["action"], "E");
        assert_eq!(e["outcome"], "0");
        // The admin asked; the client is what was changed, not an agent.
        assert_eq!(
            agent_with(&e, USER_SYSTEM)["who"]["identifier"]["value"],
            "admin-1"
        );
        assert!(e["agent"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["who"]["identifier"]["system"] != CLIENT_ID_SYSTEM));
        let client = entity_with_role(&e, "13");
        assert_eq!(client["what"]["identifier"]["system"], CLIENT_ID_SYSTEM);
        assert_eq!(client["what"]["identifier"]["value"], "app-1");
        assert_eq!(detail(client, "before"), r#"{"name":"Old"}"#);
        assert_eq!(detail(client, "after"), r#"{"name":"New"}"#);
    }

    #[test]
    fn a_person_and_a_client_the_person_requests_and_owns_the_address() {
        let mut r = row(
            "authorization.granted",
            "success",
            "notice",
            json!({"client_id": "app-1", "scope": "openid", "patient": null, "remembered": false}),
        );
        r.actor_user = Some("u-1".into());
        r.actor_client = Some("app-1".into());
        let e = to_audit_event(&r, &OBSERVER);
        assert_valid_r4(&e);
        let user = agent_with(&e, USER_SYSTEM);
        let client = agent_with(&e, CLIENT_ID_SYSTEM);
        assert_eq!(user["requestor"], true);
        assert_eq!(client["requestor"], false);
        assert!(user.get("network").is_some());
        assert!(client.get("network").is_none());
        assert_eq!(detail(entity_with_role(&e, "13"), "remembered"), "false");
    }

    #[test]
    fn system_events_have_ward_as_the_requestor() {
        let mut r = row(
            "server.started",
            "success",
            "info",
            json!({"version": "0.1.0", "tls": true, "danger_switches": []}),
        );
        r.source_ip = None;
        r.user_agent = None;
        r.request_id = None;
        let e = to_audit_event(&r, &OBSERVER);
        assert_valid_r4(&e);
        assert_eq!(e["agent"].as_array().unwrap().len(), 1);
        assert_eq!(e["agent"][0]["who"], e["source"]["observer"]);
        assert_eq!(e["agent"][0]["type"]["coding"][0]["code"], "authserver");
        assert!(has_coding(&e["subtype"], DCM, "110120"));
    }

    #[test]
    fn patient_search_lists_every_patient_shown() {
        let mut r = row(
            "patient.searched",
            "success",
            "notice",
            json!({"client_id": "app-1", "offered": ["p1", "p2", "p1"]}),
        );
        r.actor_user = Some("u-1".into());
        let e = to_audit_event(&r, &OBSERVER);
        assert_valid_r4(&e);
        let refs: Vec<&Value> = e["entity"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["role"]["code"] == "1")
            .map(|x| &x["what"]["reference"])
            .collect();
        assert_eq!(refs, [&json!("Patient/p1"), &json!("Patient/p2")]);
    }

    #[test]
    fn break_glass_is_a_restricted_function_used_for_emergency_treatment() {
        let mut r = row(
            "break_glass.invoked",
            "success",
            "high",
            json!({
                "client_id": "app",
                "family": "fam-1",
                "patient": "p-9",
                "reason": "unconscious patient, allergies unknown",
                "scope": "patient/*.rs __ward.break_glass",
            }),
        );
        r.actor_user = Some("u-1".into());
        r.actor_client = Some("app".into());
        r.target_patient = Some("p-9".into());
        let e = to_audit_event(&r, &OBSERVER);
        assert_valid_r4(&e);
        assert_eq!(e["type"]["code"], "110113");
        assert!(has_coding(&e["subtype"], DCM, "110132"));
        assert!(has_coding(
            &e["subtype"],
            WARD_ACTION_SYSTEM,
            "break_glass.invoked"
        ));
        assert_eq!(e["outcome"], "0");
        let purposes = &e["purposeOfEvent"];
        assert_eq!(purposes[0]["coding"][0]["system"], ACT_REASON);
        assert_eq!(purposes[0]["coding"][0]["code"], "ETREAT");
        assert_eq!(purposes[1]["coding"][0]["code"], "BTG");
        let patient = entity_with_role(&e, "1");
        assert_eq!(patient["what"]["reference"], "Patient/p-9");
        let grant = e["entity"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x.get("detail").is_some())
            .unwrap();
        assert_eq!(
            detail(grant, "reason"),
            "unconscious patient, allergies unknown"
        );
        let refused = to_audit_event(
            &row(
                "break_glass.refused",
                "failure",
                "high",
                json!({"client_id": "app", "error": "not_permitted", "reason": "no role allows it"}),
            ),
            &OBSERVER,
        );
        assert_valid_r4(&refused);
        assert_eq!(refused["outcome"], "8");
        assert_eq!(refused["purposeOfEvent"][1]["coding"][0]["code"], "BTG");
        assert!(row_has_no_purpose("token.issued"));
    }

    fn row_has_no_purpose(action: &str) -> bool {
        to_audit_event(&row(action, "success", "notice", json!({})), &OBSERVER)
            .get("purposeOfEvent")
            .is_none()
    }

    #[test]
    fn every_ward_action_maps_to_a_valid_resource() {
        for (i, action) in WARD_ACTIONS.iter().enumerate() {
            let m = mapping(action).unwrap_or_else(|| panic!("{action} has no mapping"));
            assert!(m.kind.system == DCM, "{action}");
            for outcome in ["success", "failure"] {
                let mut r = row(action, outcome, "notice", json!({}));
                r.id = i as i64;
                let e = to_audit_event(&r, &OBSERVER);
                assert_valid_r4(&e);
                assert_eq!(e["type"], coding(m.kind), "{action}");
                assert!(has_coding(&e["subtype"], WARD_ACTION_SYSTEM, action));
                assert_eq!(e["action"], m.action);
            }
        }
    }

    #[test]
    fn unknown_actions_and_odd_rows_still_make_valid_resources() {
        let mut r = row("future.thing", "weird", "", json!(null));
        r.details = "not json {".into();
        r.actor_user = Some("".into());
        r.actor_client = Some("   ".into());
        r.source_ip = Some("".into());
        r.request_id = Some("".into());
        r.user_agent = Some("".into());
        r.node = "".into();
        r.target_patient = Some("not a fhir id/with slash".into());
        r.occurred_at = i64::MIN;
        let e = to_audit_event(&r, &OBSERVER);
        assert_valid_r4(&e);
        assert_eq!(e["type"], coding(APPLICATION_ACTIVITY));
        assert!(has_coding(
            &e["subtype"],
            WARD_ACTION_SYSTEM,
            "future.thing"
        ));
        assert_eq!(e["outcome"], "4");
        assert_eq!(e["recorded"], "0001-01-01T00:00:00.000Z");
        assert!(e["source"].get("site").is_none());
        let patient = entity_with_role(&e, "1");
        assert_eq!(
            patient["what"]["identifier"]["value"],
            "not a fhir id/with slash"
        );
        assert!(e.to_string().contains("not json {"));

        let observer = Observer {
            issuer: "",
            node_hint: Some("exporter"),
        };
        let mut r = row("webauthn.counter_regression", "failure", "high", json!({}));
        r.node = "".into();
        r.actor_user = Some("u\u{0}1".into());
        r.user_agent = Some("é".repeat(300));
        r.request_id = None;
        r.occurred_at = i64::MAX;
        let e = to_audit_event(&r, &observer);
        assert_valid_r4(&e);
        assert_eq!(e["outcome"], "8");
        assert_eq!(e["recorded"], "9999-12-31T23:59:59.999Z");
        assert_eq!(e["source"]["site"], "exporter");
        assert_eq!(
            agent_with(&e, USER_SYSTEM)["who"]["identifier"]["value"],
            "u\u{FFFD}1"
        );
        let ua = e["entity"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["type"]["code"] == "XrequestId")
            .unwrap();
        assert!(ua.get("what").is_none());
        assert_eq!(
            detail(ua, "user-agent").as_str().unwrap().chars().count(),
            256
        );
    }

    #[test]
    fn instants_are_utc_with_milliseconds() {
        assert_eq!(instant(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(instant(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(instant(1_709_251_199_999), "2024-02-29T23:59:59.999Z");
        assert_eq!(instant(MIN_INSTANT_MS - 1), "0001-01-01T00:00:00.000Z");
    }

    #[test]
    fn outcome_rule() {
        assert_eq!(outcome_code(true, "high"), "0");
        assert_eq!(outcome_code(false, "high"), "8");
        assert_eq!(outcome_code(false, "notice"), "4");
        assert_eq!(outcome_code(false, "info"), "4");
    }

    #[test]
    fn ndjson_is_one_object_per_line() {
        let rows: Vec<AuditEventRow> = WARD_ACTIONS
            .iter()
            .enumerate()
            .map(|(i, action)| {
                let mut r = row(action, "success", "info", json!({"reason": "a\nb"}));
                r.id = i as i64;
                r
            })
            .collect();
        let out = to_ndjson(&rows, &OBSERVER);
        assert!(out.ends_with('\n'));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), rows.len());
        for (line, r) in lines.iter().zip(&rows) {
            let v: Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["resourceType"], "AuditEvent");
            assert_eq!(v["id"], format!("ward-{}", r.id));
        }
        assert_eq!(to_ndjson(&[], &OBSERVER), "");
    }

    #[test]
    fn bundle_is_a_collection_with_stable_unique_full_urls() {
        let rows: Vec<AuditEventRow> = (0..3)
            .map(|i| {
                let mut r = row("login.succeeded", "success", "info", json!({}));
                r.id = i;
                r
            })
            .collect();
        let b = to_bundle(&rows, &OBSERVER);
        assert_eq!(b["resourceType"], "Bundle");
        assert_eq!(b["type"], "collection");
        let entries = b["entry"].as_array().unwrap();
        assert_eq!(entries.len(), 3);
        let urls: Vec<&str> = entries
            .iter()
            .map(|e| e["fullUrl"].as_str().unwrap())
            .collect();
        assert!(urls
            .iter()
            .all(|u| u.starts_with("urn:uuid:") && u.len() == 45));
        assert!(urls[0] != urls[1] && urls[1] != urls[2]);
        assert_eq!(to_bundle(&rows, &OBSERVER), b);
        assert_eq!(entries[1]["resource"]["id"], "ward-1");
        let empty = to_bundle(&[], &OBSERVER);
        assert!(empty.get("entry").is_none());
    }
}
