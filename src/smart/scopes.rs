//! The SMART on FHIR scope algebra: parsing, printing, covering and intersecting
//! scopes.
//!
//! Implements HL7 SMART App Launch 2.2, "Scopes and Launch Context":
//! - "Scopes for requesting clinical data" and "Clinical Scope Syntax": the
//!   `patient/`, `user/` and `system/` contexts, resource types or `*`, v2
//!   permission letters (`cruds`) and the v1 forms `read`, `write` and `*`;
//! - "Scope Equivalence": v1 `read` is v2 `rs`, `write` is `cud`, `*` is `cruds`;
//! - "Finer-grained resource constraints using search parameters": granular
//!   `?name=value` constraints, only on v2 syntax;
//! - "Scopes for requesting context data", "Scopes for requesting identity
//!   data" and "Scopes for requesting a refresh token": `launch`,
//!   `launch/patient`, `launch/encounter`, `openid`, `fhirUser`, `profile`,
//!   `offline_access` and `online_access`;
//! - "Requested scopes versus granted scopes": [`intersect`] narrows what a
//!   client asked for to what a ceiling (client registration, user consent)
//!   allows.
//!
//! Covering rule (a design choice the spec leaves to servers): a `user/`
//! scope also covers the same `patient/` scope, because the patient in context
//! is one of the patients the user may see; a `patient/` scope never covers a
//! `user/` one; `system/` covers only `system/` and is covered only by
//! `system/`. [`covers`] and [`intersect`] both apply this rule.
//!
//! Granted scopes are printed in the syntax the client used where they can be
//! expressed in it: a v1 scope stays v1 while its permissions are exactly `rs`,
//! `cud` or `cruds` and it has no constraints, and is printed as v2 otherwise.

use std::fmt;
use std::str::FromStr;

/// Longest scope token accepted, in bytes; longer ones are rejected rather than
/// truncated so that a client never gets a silently different grant.
pub const MAX_SCOPE_TOKEN_BYTES: usize = 512;

/// Most scope tokens accepted in one space-separated string; bounds the work
/// done by [`intersect`], which is quadratic in the number of scopes.
pub const MAX_SCOPE_TOKENS: usize = 100;

/// How much of an over-long token is echoed back in an error, so that errors
/// stay readable in logs and responses.
const ERROR_ECHO_BYTES: usize = 64;

/// One SMART v2 permission letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Permission {
    /// In the order the spec requires letters to appear: `c r u d s`.
    pub const ALL: [Permission; 5] = [
        Permission::Create,
        Permission::Read,
        Permission::Update,
        Permission::Delete,
        Permission::Search,
    ];

    pub fn letter(self) -> char {
        match self {
            Permission::Create => 'c',
            Permission::Read => 'r',
            Permission::Update => 'u',
            Permission::Delete => 'd',
            Permission::Search => 's',
        }
    }

    fn bit(self) -> u8 {
        match self {
            Permission::Create => 1,
            Permission::Read => 2,
            Permission::Update => 4,
            Permission::Delete => 8,
            Permission::Search => 16,
        }
    }
}

/// A set of [`Permission`]s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Permissions(u8);

impl Permissions {
    pub const NONE: Permissions = Permissions(0);
    /// `cruds`, what v1 `*` means.
    pub const ALL: Permissions = Permissions(31);
    /// `rs`, what v1 `read` means.
    pub const V1_READ: Permissions = Permissions(2 | 16);
    /// `cud`, what v1 `write` means.
    pub const V1_WRITE: Permissions = Permissions(1 | 4 | 8);

    /// Parses v2 letters; `None` unless they are a non-empty subsequence of
    /// `cruds`, so `sr` and `rr` are rejected as the spec requires.
    pub fn from_letters(letters: &str) -> Option<Permissions> {
        let mut remaining = Permission::ALL.iter();
        let mut permissions = Permissions::NONE;
        for letter in letters.chars() {
            let permission = remaining.find(|p| p.letter() == letter)?;
            permissions = permissions.with(*permission);
        }
        (!permissions.is_empty()).then_some(permissions)
    }

    pub fn letters(self) -> String {
        self.iter().map(Permission::letter).collect()
    }

    pub fn with(self, permission: Permission) -> Permissions {
        Permissions(self.0 | permission.bit())
    }

    pub fn contains(self, permission: Permission) -> bool {
        self.0 & permission.bit() != 0
    }

    /// Whether every permission in `other` is also in `self`.
    pub fn includes(self, other: Permissions) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn intersection(self, other: Permissions) -> Permissions {
        Permissions(self.0 & other.0)
    }

    pub fn union(self, other: Permissions) -> Permissions {
        Permissions(self.0 | other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL
            .into_iter()
            .filter(move |p| self.contains(*p))
    }

    /// The v1 word for this set, if v1 can express it.
    fn v1_word(self) -> Option<&'static str> {
        if self == Permissions::V1_READ {
            Some("read")
        } else if self == Permissions::V1_WRITE {
            Some("write")
        } else if self == Permissions::ALL {
            Some("*")
        } else {
            None
        }
    }

    fn from_v1_word(word: &str) -> Option<Permissions> {
        match word {
            "read" => Some(Permissions::V1_READ),
            "write" => Some(Permissions::V1_WRITE),
            "*" => Some(Permissions::ALL),
            _ => None,
        }
    }
}

/// Whose data a resource scope reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScopeContext {
    Patient,
    User,
    System,
}

impl ScopeContext {
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeContext::Patient => "patient",
            ScopeContext::User => "user",
            ScopeContext::System => "system",
        }
    }

    fn from_prefix(prefix: &str) -> Option<ScopeContext> {
        match prefix {
            "patient" => Some(ScopeContext::Patient),
            "user" => Some(ScopeContext::User),
            "system" => Some(ScopeContext::System),
            _ => None,
        }
    }
}

impl fmt::Display for ScopeContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The resource type part of a resource scope.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    /// `*`: every resource type.
    Any,
    Named(String),
}

impl ResourceType {
    pub fn matches(&self, resource_type: &str) -> bool {
        match self {
            ResourceType::Any => true,
            ResourceType::Named(name) => name == resource_type,
        }
    }

    fn includes(&self, other: &ResourceType) -> bool {
        match (self, other) {
            (ResourceType::Any, _) => true,
            (ResourceType::Named(_), ResourceType::Any) => false,
            (ResourceType::Named(a), ResourceType::Named(b)) => a == b,
        }
    }

    /// The type both allow, if any: a wildcard yields to a named type.
    fn narrowest_shared(&self, other: &ResourceType) -> Option<ResourceType> {
        match (self, other) {
            (ResourceType::Any, narrower) | (narrower, ResourceType::Any) => Some(narrower.clone()),
            (ResourceType::Named(a), ResourceType::Named(b)) => {
                (a == b).then(|| ResourceType::Named(a.clone()))
            }
        }
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResourceType::Any => f.write_str("*"),
            ResourceType::Named(name) => f.write_str(name),
        }
    }
}

/// Whether FHIR would accept `name` as a resource type name; used for both
/// scopes and request URLs so that the two always agree.
pub fn is_resource_type_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(first) if first.is_ascii_uppercase())
        && chars.all(|c| c.is_ascii_alphabetic())
        && name.len() <= 64
}

/// Which SMART version's permission syntax a scope was written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Syntax {
    V1,
    V2,
}

/// A clinical-data scope such as `patient/Observation.rs?category=laboratory`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceScope {
    pub context: ScopeContext,
    pub resource: ResourceType,
    /// Sorted and deduplicated so that equal meanings compare and print equal;
    /// each pair narrows the scope further (they are combined with AND).
    pub constraints: Vec<(String, String)>,
    pub permissions: Permissions,
    /// How the scope is printed; [`ResourceScope::new`] keeps it `V1` only
    /// where v1 can express the scope.
    pub syntax: Syntax,
}

impl ResourceScope {
    /// Builds a scope in canonical form: constraints sorted and deduplicated,
    /// and the preferred syntax kept only where it can express the scope.
    pub fn new(
        context: ScopeContext,
        resource: ResourceType,
        permissions: Permissions,
        mut constraints: Vec<(String, String)>,
        preferred_syntax: Syntax,
    ) -> ResourceScope {
        constraints.sort();
        constraints.dedup();
        let syntax = expressible_syntax(preferred_syntax, permissions, &constraints);
        ResourceScope {
            context,
            resource,
            constraints,
            permissions,
            syntax,
        }
    }

    /// Equal apart from syntax: `patient/X.read` and `patient/X.rs` mean the same.
    pub fn same_meaning(&self, other: &ResourceScope) -> bool {
        self.context == other.context
            && self.resource == other.resource
            && self.permissions == other.permissions
            && self.constraints == other.constraints
    }

    /// The values a constraint allows for `name`, used to spot conflicts.
    fn constraint_values(&self, name: &str) -> Vec<&str> {
        self.constraints
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

fn expressible_syntax(
    preferred: Syntax,
    permissions: Permissions,
    constraints: &[(String, String)],
) -> Syntax {
    let v1_can_express = permissions.v1_word().is_some() && constraints.is_empty();
    if preferred == Syntax::V1 && v1_can_express {
        Syntax::V1
    } else {
        Syntax::V2
    }
}

impl fmt::Display for ResourceScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}.", self.context, self.resource)?;
        match self.permissions.v1_word() {
            Some(word) if self.syntax == Syntax::V1 && self.constraints.is_empty() => {
                f.write_str(word)?;
            }
            _ => f.write_str(&self.permissions.letters())?,
        }
        for (index, (name, value)) in self.constraints.iter().enumerate() {
            let separator = if index == 0 { '?' } else { '&' };
            write!(f, "{separator}{name}={value}")?;
        }
        Ok(())
    }
}

/// Scopes that ask for identity, launch context or refresh tokens rather than
/// clinical data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdentityScope {
    OpenId,
    FhirUser,
    Profile,
    Launch,
    LaunchPatient,
    LaunchEncounter,
    OfflineAccess,
    OnlineAccess,
}

impl IdentityScope {
    pub const ALL: [IdentityScope; 8] = [
        IdentityScope::OpenId,
        IdentityScope::FhirUser,
        IdentityScope::Profile,
        IdentityScope::Launch,
        IdentityScope::LaunchPatient,
        IdentityScope::LaunchEncounter,
        IdentityScope::OfflineAccess,
        IdentityScope::OnlineAccess,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            IdentityScope::OpenId => "openid",
            IdentityScope::FhirUser => "fhirUser",
            IdentityScope::Profile => "profile",
            IdentityScope::Launch => "launch",
            IdentityScope::LaunchPatient => "launch/patient",
            IdentityScope::LaunchEncounter => "launch/encounter",
            IdentityScope::OfflineAccess => "offline_access",
            IdentityScope::OnlineAccess => "online_access",
        }
    }

    fn from_token(token: &str) -> Option<IdentityScope> {
        IdentityScope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == token)
    }
}

impl fmt::Display for IdentityScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Access to Ward's own admin API (not FHIR data). Named per SMART's rule for scopes outside
/// HL7's grammar: a `__` prefix. Granted only through `client_credentials` to a
/// confidential-asymmetric client, in a token whose audience is the admin API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AdminScope {
    /// Read every admin resource.
    Read,
    /// Read and change admin resources (never: create admins, change admin roles, rotate keys).
    Write,
}

impl AdminScope {
    pub const ALL: [AdminScope; 2] = [AdminScope::Read, AdminScope::Write];

    pub fn as_str(self) -> &'static str {
        match self {
            AdminScope::Read => "__ward.admin.read",
            AdminScope::Write => "__ward.admin.write",
        }
    }

    fn from_token(token: &str) -> Option<AdminScope> {
        AdminScope::ALL.into_iter().find(|s| s.as_str() == token)
    }
}

/// The marking of an emergency-access (break-glass) grant. Named per SMART's `__` rule for
/// scopes outside HL7's grammar. Ward alone puts it in a token's scope: no client may request
/// it or be registered for it, and it grants nothing by itself; it tells resource servers (in
/// the token and its introspection) that the user's role ceiling was bypassed for one patient.
pub const BREAK_GLASS_SCOPE: &str = "__ward.break_glass";

/// Any scope Ward understands.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Identity(IdentityScope),
    Resource(ResourceScope),
    Admin(AdminScope),
    /// [`BREAK_GLASS_SCOPE`]: set by Ward on emergency-access grants only.
    BreakGlass,
}

impl Scope {
    pub fn as_resource(&self) -> Option<&ResourceScope> {
        match self {
            Scope::Resource(scope) => Some(scope),
            Scope::Identity(_) | Scope::Admin(_) | Scope::BreakGlass => None,
        }
    }

    pub fn as_admin(&self) -> Option<AdminScope> {
        match self {
            Scope::Admin(scope) => Some(*scope),
            Scope::Identity(_) | Scope::Resource(_) | Scope::BreakGlass => None,
        }
    }

    fn same_meaning(&self, other: &Scope) -> bool {
        match (self, other) {
            (Scope::Resource(a), Scope::Resource(b)) => a.same_meaning(b),
            _ => self == other,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Identity(scope) => scope.fmt(f),
            Scope::Resource(scope) => scope.fmt(f),
            Scope::Admin(scope) => f.write_str(scope.as_str()),
            Scope::BreakGlass => f.write_str(BREAK_GLASS_SCOPE),
        }
    }
}

impl FromStr for Scope {
    type Err = ScopeError;

    fn from_str(token: &str) -> Result<Scope, ScopeError> {
        parse_token(token).map_err(|reason| ScopeError::new(token, reason))
    }
}

/// Why a scope token was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScopeErrorReason {
    TooLong {
        bytes: usize,
    },
    TooManyScopes,
    /// Outside the characters RFC 6749 §3.3 allows in a scope token.
    InvalidCharacter {
        character: char,
    },
    Unknown,
    UnknownLaunchContext,
    UnknownContext {
        context: String,
    },
    MissingPermissions,
    InvalidResourceType {
        resource: String,
    },
    InvalidPermissions,
    ConstraintsNeedV2Syntax,
    EmptyConstraints,
    InvalidConstraint {
        constraint: String,
    },
}

impl fmt::Display for ScopeErrorReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScopeErrorReason::TooLong { bytes } => write!(
                f,
                "scope is {bytes} bytes long; at most {MAX_SCOPE_TOKEN_BYTES} are accepted"
            ),
            ScopeErrorReason::TooManyScopes => write!(
                f,
                "more than {MAX_SCOPE_TOKENS} scopes in one request; this and later scopes were ignored"
            ),
            ScopeErrorReason::InvalidCharacter { character } => write!(
                f,
                "character {character:?} is not allowed in a scope (printable ASCII except '\"' and '\\')"
            ),
            ScopeErrorReason::Unknown => f.write_str(
                "unknown scope; expected context/Type.permissions or one of openid, fhirUser, profile, launch, launch/patient, launch/encounter, offline_access, online_access",
            ),
            ScopeErrorReason::UnknownLaunchContext => {
                f.write_str("unknown launch context; expected launch/patient or launch/encounter")
            }
            ScopeErrorReason::UnknownContext { context } => write!(
                f,
                "unknown context `{context}`; expected patient, user or system"
            ),
            ScopeErrorReason::MissingPermissions => f.write_str(
                "missing permissions; expected Type.read, Type.write, Type.* or Type.<cruds letters>",
            ),
            ScopeErrorReason::InvalidResourceType { resource } => write!(
                f,
                "`{resource}` is not a resource type; expected * or a FHIR type name such as Observation"
            ),
            ScopeErrorReason::InvalidPermissions => {
                f.write_str("permission letters must be a subsequence of cruds")
            }
            ScopeErrorReason::ConstraintsNeedV2Syntax => f.write_str(
                "search-parameter constraints need v2 permission letters (such as rs), not read, write or *",
            ),
            ScopeErrorReason::EmptyConstraints => {
                f.write_str("`?` must be followed by at least one name=value constraint")
            }
            ScopeErrorReason::InvalidConstraint { constraint } => write!(
                f,
                "constraint `{constraint}` is not a name=value pair with a search parameter name"
            ),
        }
    }
}

/// A rejected scope token and why it was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopeError {
    /// The token as received, shortened when it is too long to echo.
    pub scope: String,
    pub reason: ScopeErrorReason,
}

impl ScopeError {
    fn new(token: &str, reason: ScopeErrorReason) -> ScopeError {
        ScopeError {
            scope: echoable(token),
            reason,
        }
    }
}

fn echoable(token: &str) -> String {
    if token.len() <= MAX_SCOPE_TOKEN_BYTES {
        return token.to_string();
    }
    let end = (0..=ERROR_ECHO_BYTES)
        .rev()
        .find(|index| token.is_char_boundary(*index))
        .unwrap_or_default();
    format!("{}…", token.get(..end).unwrap_or_default())
}

impl fmt::Display for ScopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "scope `{}`: {}", self.scope, self.reason)
    }
}

impl std::error::Error for ScopeError {}

fn parse_token(token: &str) -> Result<Scope, ScopeErrorReason> {
    if token.len() > MAX_SCOPE_TOKEN_BYTES {
        return Err(ScopeErrorReason::TooLong { bytes: token.len() });
    }
    if let Some(character) = token.chars().find(|c| !is_scope_token_char(*c)) {
        return Err(ScopeErrorReason::InvalidCharacter { character });
    }
    if let Some(identity) = IdentityScope::from_token(token) {
        return Ok(Scope::Identity(identity));
    }
    if let Some(admin) = AdminScope::from_token(token) {
        return Ok(Scope::Admin(admin));
    }
    if token == BREAK_GLASS_SCOPE {
        return Ok(Scope::BreakGlass);
    }
    let Some((prefix, rest)) = token.split_once('/') else {
        return Err(ScopeErrorReason::Unknown);
    };
    if prefix == "launch" {
        return Err(ScopeErrorReason::UnknownLaunchContext);
    }
    let context =
        ScopeContext::from_prefix(prefix).ok_or_else(|| ScopeErrorReason::UnknownContext {
            context: prefix.to_string(),
        })?;
    parse_resource_part(context, rest).map(Scope::Resource)
}

/// RFC 6749 §3.3: `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
fn is_scope_token_char(c: char) -> bool {
    matches!(c, '\x21' | '\x23'..='\x5B' | '\x5D'..='\x7E')
}

fn parse_resource_part(
    context: ScopeContext,
    rest: &str,
) -> Result<ResourceScope, ScopeErrorReason> {
    let (type_and_permissions, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let (type_name, permission_text) = type_and_permissions
        .split_once('.')
        .ok_or(ScopeErrorReason::MissingPermissions)?;
    let resource = parse_resource_type(type_name)?;
    let (permissions, syntax) = parse_permissions(permission_text)?;
    let constraints = match query {
        None => Vec::new(),
        Some(_) if syntax == Syntax::V1 => return Err(ScopeErrorReason::ConstraintsNeedV2Syntax),
        Some(query) => parse_constraints(query)?,
    };
    Ok(ResourceScope::new(
        context,
        resource,
        permissions,
        constraints,
        syntax,
    ))
}

fn parse_resource_type(name: &str) -> Result<ResourceType, ScopeErrorReason> {
    if name == "*" {
        Ok(ResourceType::Any)
    } else if is_resource_type_name(name) {
        Ok(ResourceType::Named(name.to_string()))
    } else {
        Err(ScopeErrorReason::InvalidResourceType {
            resource: name.to_string(),
        })
    }
}

fn parse_permissions(text: &str) -> Result<(Permissions, Syntax), ScopeErrorReason> {
    if let Some(permissions) = Permissions::from_v1_word(text) {
        return Ok((permissions, Syntax::V1));
    }
    Permissions::from_letters(text)
        .map(|permissions| (permissions, Syntax::V2))
        .ok_or(ScopeErrorReason::InvalidPermissions)
}

fn parse_constraints(query: &str) -> Result<Vec<(String, String)>, ScopeErrorReason> {
    if query.is_empty() {
        return Err(ScopeErrorReason::EmptyConstraints);
    }
    query.split('&').map(parse_constraint).collect()
}

fn parse_constraint(pair: &str) -> Result<(String, String), ScopeErrorReason> {
    let invalid = || ScopeErrorReason::InvalidConstraint {
        constraint: pair.to_string(),
    };
    let (name, value) = pair.split_once('=').ok_or_else(invalid)?;
    if !is_search_parameter_name(name) || value.is_empty() {
        return Err(invalid());
    }
    Ok((name.to_string(), value.to_string()))
}

/// Search parameter names (and their `:modifier` or `.chain` forms) use only
/// these characters; anything else is more likely a typo than a parameter.
pub fn is_search_parameter_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':' | '.'))
}

/// An ordered, deduplicated set of scopes.
///
/// Scopes that mean the same thing in different syntax (`patient/X.read` and
/// `patient/X.rs`) count as duplicates; the first one seen is kept.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ScopeSet {
    /// Sorted by `Scope`'s `Ord`, which puts same-meaning scopes next to each
    /// other because syntax is compared last.
    scopes: Vec<Scope>,
}

impl ScopeSet {
    pub fn new() -> ScopeSet {
        ScopeSet::default()
    }

    /// Parses a space-separated scope string (RFC 6749 §3.3), keeping the
    /// valid scopes and reporting every invalid one.
    pub fn parse(text: &str) -> (ScopeSet, Vec<ScopeError>) {
        let mut set = ScopeSet::new();
        let mut errors = Vec::new();
        for (index, token) in text.split(' ').filter(|t| !t.is_empty()).enumerate() {
            if index >= MAX_SCOPE_TOKENS {
                errors.push(ScopeError::new(token, ScopeErrorReason::TooManyScopes));
                break;
            }
            match token.parse::<Scope>() {
                Ok(scope) => {
                    set.insert(scope);
                }
                Err(error) => errors.push(error),
            }
        }
        (set, errors)
    }

    /// Like [`ScopeSet::parse`], but any invalid scope rejects the whole string.
    ///
    /// # Errors
    /// Every invalid scope, as [`ScopeSet::parse`] reports them.
    pub fn parse_strict(text: &str) -> Result<ScopeSet, Vec<ScopeError>> {
        let (set, errors) = ScopeSet::parse(text);
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(errors)
        }
    }

    /// Adds a scope unless one with the same meaning is already present;
    /// returns whether it was added.
    pub fn insert(&mut self, scope: Scope) -> bool {
        let Err(position) = self.scopes.binary_search(&scope) else {
            return false;
        };
        let neighbours = [position.checked_sub(1), Some(position)];
        let duplicate = neighbours
            .into_iter()
            .flatten()
            .filter_map(|index| self.scopes.get(index))
            .any(|existing| existing.same_meaning(&scope));
        if duplicate {
            return false;
        }
        self.scopes.insert(position, scope);
        true
    }

    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.scopes.iter()
    }

    pub fn resource_scopes(&self) -> impl Iterator<Item = &ResourceScope> {
        self.scopes.iter().filter_map(Scope::as_resource)
    }

    pub fn identity_scopes(&self) -> impl Iterator<Item = IdentityScope> + '_ {
        self.scopes.iter().filter_map(|scope| match scope {
            Scope::Identity(identity) => Some(*identity),
            Scope::Resource(_) | Scope::Admin(_) | Scope::BreakGlass => None,
        })
    }

    pub fn admin_scopes(&self) -> impl Iterator<Item = AdminScope> + '_ {
        self.scopes.iter().filter_map(Scope::as_admin)
    }

    pub fn contains(&self, scope: &Scope) -> bool {
        self.scopes.iter().any(|member| member.same_meaning(scope))
    }

    /// Whether the set carries the break-glass marking ([`BREAK_GLASS_SCOPE`]).
    pub fn is_break_glass(&self) -> bool {
        self.scopes.contains(&Scope::BreakGlass)
    }

    /// Whether an identity or context scope (`openid`, `launch/patient`, …) is present.
    pub fn has(&self, identity: IdentityScope) -> bool {
        self.contains(&Scope::Identity(identity))
    }

    pub fn len(&self) -> usize {
        self.scopes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
    }

    /// Whether some member grants everything `wanted` asks for.
    pub fn covers_scope(&self, wanted: &ResourceScope) -> bool {
        self.resource_scopes().any(|member| covers(member, wanted))
    }

    /// Whether every resource scope of `other` is covered by some member of
    /// `self`; identity scopes are ignored.
    pub fn covers_all(&self, other: &ScopeSet) -> bool {
        other
            .resource_scopes()
            .all(|wanted| self.covers_scope(wanted))
    }
}

impl FromIterator<Scope> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = Scope>>(scopes: I) -> ScopeSet {
        let mut set = ScopeSet::new();
        for scope in scopes {
            set.insert(scope);
        }
        set
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, scope) in self.scopes.iter().enumerate() {
            if index > 0 {
                f.write_str(" ")?;
            }
            scope.fmt(f)?;
        }
        Ok(())
    }
}

impl FromStr for ScopeSet {
    type Err = Vec<ScopeError>;

    fn from_str(text: &str) -> Result<ScopeSet, Vec<ScopeError>> {
        ScopeSet::parse_strict(text)
    }
}

/// Whether a scope granted in context `granted` reaches data requested in
/// context `requested` (see the module doc for the rule).
pub fn context_covers(granted: ScopeContext, requested: ScopeContext) -> bool {
    granted == requested || (granted == ScopeContext::User && requested == ScopeContext::Patient)
}

/// Whether `a` grants everything `b` asks for: a compatible context, the same
/// resource type or `*`, at least `b`'s permissions, and no constraint that `b`
/// lacks (a constraint narrows, so an unconstrained scope covers a constrained
/// one but not the reverse).
pub fn covers(a: &ResourceScope, b: &ResourceScope) -> bool {
    context_covers(a.context, b.context)
        && a.resource.includes(&b.resource)
        && a.permissions.includes(b.permissions)
        && a.constraints
            .iter()
            .all(|pair| b.constraints.contains(pair))
}

/// The resource scopes of `requested` narrowed to what `ceiling` allows.
///
/// Each requested scope is paired with each ceiling scope whose context covers
/// it; the pair yields the requested context, the more specific resource type,
/// the shared permissions and the union of both constraint lists. When both
/// constrain the same parameter with different values the pair yields nothing:
/// this is deliberately conservative, as the combination would need both values
/// at once, which rarely matches what either side meant and is hard for a client
/// to read. Results covered by other results are dropped, so the set is minimal.
///
/// Identity and launch scopes are not returned: whether to grant them depends
/// on client settings and consent, which the caller decides.
pub fn intersect(requested: &ScopeSet, ceiling: &ScopeSet) -> ScopeSet {
    let candidates: Vec<ResourceScope> = requested
        .resource_scopes()
        .flat_map(|wanted| {
            ceiling
                .resource_scopes()
                .filter_map(move |limit| narrow(wanted, limit))
        })
        .collect();
    without_covered(candidates)
        .into_iter()
        .map(Scope::Resource)
        .collect()
}

/// `wanted` cut down to what `limit` allows, keeping `wanted`'s context and,
/// where it can, its syntax.
fn narrow(wanted: &ResourceScope, limit: &ResourceScope) -> Option<ResourceScope> {
    if !context_covers(limit.context, wanted.context) {
        return None;
    }
    let resource = wanted.resource.narrowest_shared(&limit.resource)?;
    let permissions = wanted.permissions.intersection(limit.permissions);
    if permissions.is_empty() {
        return None;
    }
    let constraints = combined_constraints(wanted, limit)?;
    Some(ResourceScope::new(
        wanted.context,
        resource,
        permissions,
        constraints,
        wanted.syntax,
    ))
}

fn combined_constraints(a: &ResourceScope, b: &ResourceScope) -> Option<Vec<(String, String)>> {
    let conflicting = a.constraints.iter().any(|(name, _)| {
        let theirs = b.constraint_values(name);
        !theirs.is_empty() && theirs != a.constraint_values(name)
    });
    if conflicting {
        return None;
    }
    Some(
        a.constraints
            .iter()
            .chain(&b.constraints)
            .cloned()
            .collect(),
    )
}

/// Drops every scope covered by another one; of two scopes that cover each
/// other the one sorting first is kept, so the result is deterministic.
fn without_covered(mut scopes: Vec<ResourceScope>) -> Vec<ResourceScope> {
    scopes.sort();
    scopes.dedup();
    let is_redundant = |index: usize, scope: &ResourceScope| {
        scopes.iter().enumerate().any(|(other_index, other)| {
            other_index != index
                && covers(other, scope)
                && (other_index < index || !covers(scope, other))
        })
    };
    scopes
        .iter()
        .enumerate()
        .filter(|(index, scope)| !is_redundant(*index, scope))
        .map(|(_, scope)| scope.clone())
        .collect()
}

#[cfg(test)]
pub(crate) mod strategies {
    //! Generators of valid scopes, shared with the policy tests.

    use super::*;
    use proptest::prelude::*;

    pub const RESOURCE_TYPES: [&str; 5] = [
        "Observation",
        "Condition",
        "Patient",
        "Encounter",
        "Medication",
    ];
    const CONSTRAINT_NAMES: [&str; 3] = ["category", "code", "status"];
    const CONSTRAINT_VALUES: [&str; 4] = [
        "http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
        "vital-signs",
        "http://loinc.org|1234-5",
        "final",
    ];

    pub fn context() -> impl Strategy<Value = ScopeContext> {
        prop_oneof![
            Just(ScopeContext::Patient),
            Just(ScopeContext::User),
            Just(ScopeContext::System),
        ]
    }

    pub fn resource_type() -> impl Strategy<Value = ResourceType> {
        prop_oneof![
            1 => Just(ResourceType::Any),
            3 => proptest::sample::select(RESOURCE_TYPES.as_slice())
                .prop_map(|name| ResourceType::Named(name.to_string())),
        ]
    }

    pub fn permissions() -> impl Strategy<Value = Permissions> {
        (1u8..32).prop_map(Permissions)
    }

    pub fn constraints() -> impl Strategy<Value = Vec<(String, String)>> {
        let pair = (
            proptest::sample::select(CONSTRAINT_NAMES.as_slice()),
            proptest::sample::select(CONSTRAINT_VALUES.as_slice()),
        )
            .prop_map(|(name, value)| (name.to_string(), value.to_string()));
        prop_oneof![
            2 => Just(Vec::new()),
            1 => proptest::collection::vec(pair, 1..3),
        ]
    }

    pub fn resource_scope() -> impl Strategy<Value = ResourceScope> {
        (
            context(),
            resource_type(),
            permissions(),
            constraints(),
            prop_oneof![Just(Syntax::V1), Just(Syntax::V2)],
        )
            .prop_map(|(context, resource, permissions, constraints, syntax)| {
                ResourceScope::new(context, resource, permissions, constraints, syntax)
            })
    }

    pub fn scope() -> impl Strategy<Value = Scope> {
        prop_oneof![
            1 => proptest::sample::select(IdentityScope::ALL.as_slice()).prop_map(Scope::Identity),
            1 => proptest::sample::select(AdminScope::ALL.as_slice()).prop_map(Scope::Admin),
            4 => resource_scope().prop_map(Scope::Resource),
        ]
    }

    pub fn scope_set() -> impl Strategy<Value = ScopeSet> {
        proptest::collection::vec(scope(), 0..6).prop_map(|scopes| scopes.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::strategies::*;
    use super::*;
    use proptest::prelude::*;

    const LAB: &str = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory";

    fn resource(text: &str) -> ResourceScope {
        match text.parse::<Scope>() {
            Ok(Scope::Resource(scope)) => scope,
            other => panic!("{text} is not a resource scope: {other:?}"),
        }
    }

    fn set(text: &str) -> ScopeSet {
        match ScopeSet::parse_strict(text) {
            Ok(set) => set,
            Err(errors) => panic!("{text}: {errors:?}"),
        }
    }

    fn reason(text: &str) -> ScopeErrorReason {
        match text.parse::<Scope>() {
            Err(error) => error.reason,
            Ok(scope) => panic!("{text} unexpectedly parsed as {scope:?}"),
        }
    }

    #[test]
    fn parses_v1_scopes_as_their_v2_equivalents() {
        let read = resource("patient/Observation.read");
        assert_eq!(read.context, ScopeContext::Patient);
        assert_eq!(read.resource, ResourceType::Named("Observation".into()));
        assert_eq!(read.permissions.letters(), "rs");
        assert_eq!(read.syntax, Syntax::V1);
        assert_eq!(resource("user/*.write").permissions.letters(), "cud");
        assert_eq!(resource("user/*.write").resource, ResourceType::Any);
        assert_eq!(resource("system/*.*").permissions, Permissions::ALL);
        assert_eq!(resource("patient/*.read").permissions, Permissions::V1_READ);
    }

    #[test]
    fn parses_v2_scopes() {
        let scope = resource("patient/Observation.rs");
        assert_eq!(scope.permissions.letters(), "rs");
        assert_eq!(scope.syntax, Syntax::V2);
        let all = resource("user/Encounter.cruds");
        assert_eq!(all.context, ScopeContext::User);
        assert_eq!(all.permissions, Permissions::ALL);
        assert_eq!(resource("system/*.c").permissions.letters(), "c");
        assert_eq!(resource("patient/Patient.rd").permissions.letters(), "rd");
    }

    #[test]
    fn parses_granular_constraints_keeping_values_exact() {
        let text = format!("patient/Observation.rs?category={LAB}");
        let scope = resource(&text);
        assert_eq!(
            scope.constraints,
            vec![("category".to_string(), LAB.to_string())]
        );
        let two = resource("user/Observation.rs?status=final&category=vital-signs");
        assert_eq!(
            two.constraints,
            vec![
                ("category".to_string(), "vital-signs".to_string()),
                ("status".to_string(), "final".to_string()),
            ]
        );
    }

    #[test]
    fn parses_wards_admin_scopes_and_nothing_near_them() {
        assert_eq!(
            "__ward.admin.read".parse::<Scope>(),
            Ok(Scope::Admin(AdminScope::Read))
        );
        assert_eq!(
            "__ward.admin.write".parse::<Scope>(),
            Ok(Scope::Admin(AdminScope::Write))
        );
        for near in [
            "__ward.admin",
            "__ward.admin.READ",
            "ward.admin.read",
            "__ward.admin.*",
        ] {
            assert!(near.parse::<Scope>().is_err(), "{near}");
        }
        let set = ScopeSet::parse_strict("__ward.admin.read system/Patient.rs").unwrap();
        assert_eq!(
            set.admin_scopes().collect::<Vec<_>>(),
            vec![AdminScope::Read]
        );
        assert_eq!(set.resource_scopes().count(), 1);
        assert_eq!(set.identity_scopes().count(), 0);
    }

    #[test]
    fn the_break_glass_marking_round_trips_and_is_no_other_kind_of_scope() {
        assert_eq!("__ward.break_glass".parse::<Scope>(), Ok(Scope::BreakGlass));
        for near in [
            "__ward.break-glass",
            "__ward.BREAK_GLASS",
            "ward.break_glass",
        ] {
            assert!(near.parse::<Scope>().is_err(), "{near}");
        }
        let set =
            ScopeSet::parse_strict("openid patient/Observation.rs __ward.break_glass").unwrap();
        assert!(set.is_break_glass());
        assert!(set.to_string().contains("__ward.break_glass"));
        assert_eq!(set.resource_scopes().count(), 1);
        assert_eq!(set.admin_scopes().count(), 0);
        assert_eq!(set.identity_scopes().count(), 1);
        assert!(!ScopeSet::parse_strict("openid").unwrap().is_break_glass());
    }

    #[test]
    fn parses_identity_and_context_scopes() {
        for identity in IdentityScope::ALL {
            assert_eq!(
                identity.as_str().parse::<Scope>(),
                Ok(Scope::Identity(identity))
            );
        }
        assert_eq!(
            "fhirUser".parse::<Scope>(),
            Ok(Scope::Identity(IdentityScope::FhirUser))
        );
        assert_eq!(
            "launch/encounter".parse::<Scope>(),
            Ok(Scope::Identity(IdentityScope::LaunchEncounter))
        );
    }

    #[test]
    fn rejects_permission_letters_out_of_order_or_repeated() {
        assert_eq!(
            reason("patient/Observation.sr"),
            ScopeErrorReason::InvalidPermissions
        );
        assert_eq!(
            reason("patient/Observation.rr"),
            ScopeErrorReason::InvalidPermissions
        );
        assert_eq!(
            reason("patient/Observation."),
            ScopeErrorReason::InvalidPermissions
        );
        assert_eq!(
            reason("patient/Observation.xyz"),
            ScopeErrorReason::InvalidPermissions
        );
        assert_eq!(
            reason("patient/Observation.READ"),
            ScopeErrorReason::InvalidPermissions
        );
    }

    #[test]
    fn error_display_names_the_scope_and_the_reason() {
        let error = "patient/Observation.xyz".parse::<Scope>().err();
        assert_eq!(
            error.map(|e| e.to_string()).as_deref(),
            Some("scope `patient/Observation.xyz`: permission letters must be a subsequence of cruds")
        );
    }

    #[test]
    fn rejects_each_malformed_form_with_a_precise_reason() {
        assert_eq!(reason("email"), ScopeErrorReason::Unknown);
        assert_eq!(reason("OpenID"), ScopeErrorReason::Unknown);
        assert_eq!(
            reason("launch/practitioner"),
            ScopeErrorReason::UnknownLaunchContext
        );
        assert_eq!(
            reason("admin/Observation.read"),
            ScopeErrorReason::UnknownContext {
                context: "admin".into()
            }
        );
        assert_eq!(
            reason("patient/Observation"),
            ScopeErrorReason::MissingPermissions
        );
        assert_eq!(
            reason("patient/observation.read"),
            ScopeErrorReason::InvalidResourceType {
                resource: "observation".into()
            }
        );
        assert_eq!(
            reason("patient/Obs3rvation.rs"),
            ScopeErrorReason::InvalidResourceType {
                resource: "Obs3rvation".into()
            }
        );
        assert_eq!(
            reason("patient/.rs"),
            ScopeErrorReason::InvalidResourceType {
                resource: String::new()
            }
        );
        assert_eq!(
            reason("patient/Observation.read?category=laboratory"),
            ScopeErrorReason::ConstraintsNeedV2Syntax
        );
        assert_eq!(
            reason("patient/Observation.rs?"),
            ScopeErrorReason::EmptyConstraints
        );
        assert_eq!(
            reason("patient/Observation.rs?category"),
            ScopeErrorReason::InvalidConstraint {
                constraint: "category".into()
            }
        );
        assert_eq!(
            reason("patient/Observation.rs?category="),
            ScopeErrorReason::InvalidConstraint {
                constraint: "category=".into()
            }
        );
        assert_eq!(
            reason("patient/Observation.rs?a=b&&c=d"),
            ScopeErrorReason::InvalidConstraint {
                constraint: String::new()
            }
        );
        assert_eq!(
            reason("patient/Observation.rs?c\"t=1"),
            ScopeErrorReason::InvalidCharacter { character: '"' }
        );
        assert_eq!(
            reason("patient/Observation.rsé"),
            ScopeErrorReason::InvalidCharacter { character: 'é' }
        );
    }

    #[test]
    fn rejects_over_long_tokens_and_echoes_them_shortened() {
        let token = format!("patient/Observation.rs?code={}", "x".repeat(600));
        let Err(error) = token.parse::<Scope>() else {
            panic!("accepted an over-long scope");
        };
        assert_eq!(
            error.reason,
            ScopeErrorReason::TooLong { bytes: token.len() }
        );
        assert!(error.scope.len() < 80, "{}", error.scope);
        assert!(error.to_string().contains("at most 512"));
    }

    #[test]
    fn rejects_more_than_a_hundred_tokens_but_keeps_the_first_hundred() {
        let text = (0..105).map(|_| "openid").collect::<Vec<_>>().join(" ");
        let (set, errors) = ScopeSet::parse(&text);
        assert_eq!(set.len(), 1);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].reason, ScopeErrorReason::TooManyScopes);
        assert!(ScopeSet::parse_strict(&text).is_err());
    }

    #[test]
    fn set_parse_keeps_valid_scopes_and_reports_invalid_ones() {
        let (set, errors) = ScopeSet::parse("openid  patient/Observation.sr fhirUser bogus");
        assert_eq!(set.to_string(), "openid fhirUser");
        let bad: Vec<&str> = errors.iter().map(|e| e.scope.as_str()).collect();
        assert_eq!(bad, vec!["patient/Observation.sr", "bogus"]);
    }

    #[test]
    fn set_deduplicates_scopes_with_the_same_meaning() {
        let scopes = set("patient/Observation.read patient/Observation.rs openid openid");
        assert_eq!(scopes.len(), 2);
        assert_eq!(scopes.to_string(), "openid patient/Observation.read");
    }

    #[test]
    fn prints_in_the_syntax_the_client_used() {
        for text in [
            "patient/Observation.read",
            "user/*.write",
            "system/*.*",
            "patient/*.read",
            "patient/Observation.rs",
            "user/Encounter.cruds",
            "launch/patient",
        ] {
            assert_eq!(
                text.parse::<Scope>().map(|s| s.to_string()).as_deref(),
                Ok(text)
            );
        }
        let granular = format!("patient/Observation.rs?category={LAB}");
        assert_eq!(resource(&granular).to_string(), granular);
    }

    #[test]
    fn v1_scope_that_v1_cannot_express_prints_as_v2() {
        let narrowed = ResourceScope::new(
            ScopeContext::Patient,
            ResourceType::Any,
            Permissions::from_letters("r").unwrap_or_default(),
            Vec::new(),
            Syntax::V1,
        );
        assert_eq!(narrowed.to_string(), "patient/*.r");
        assert_eq!(narrowed.syntax, Syntax::V2);
    }

    #[test]
    fn constraints_print_in_canonical_order() {
        assert_eq!(
            resource("user/Observation.rs?status=final&category=vital-signs").to_string(),
            "user/Observation.rs?category=vital-signs&status=final"
        );
    }

    #[test]
    fn covers_follows_type_permission_and_constraint_rules() {
        let lab = format!("patient/Observation.rs?category={LAB}");
        assert!(covers(
            &resource("patient/*.cruds"),
            &resource("patient/Observation.rs")
        ));
        assert!(covers(
            &resource("patient/Observation.read"),
            &resource("patient/Observation.s")
        ));
        assert!(!covers(
            &resource("patient/Observation.r"),
            &resource("patient/Observation.rs")
        ));
        assert!(!covers(
            &resource("patient/Observation.rs"),
            &resource("patient/*.rs")
        ));
        assert!(!covers(
            &resource("patient/Condition.rs"),
            &resource("patient/Observation.rs")
        ));
        assert!(covers(&resource("patient/Observation.rs"), &resource(&lab)));
        assert!(!covers(
            &resource(&lab),
            &resource("patient/Observation.rs")
        ));
        assert!(covers(&resource(&lab), &resource(&lab)));
    }

    #[test]
    fn covers_applies_the_context_rule() {
        let user = resource("user/Observation.rs");
        let patient = resource("patient/Observation.rs");
        let system = resource("system/Observation.rs");
        assert!(covers(&user, &patient));
        assert!(!covers(&patient, &user));
        assert!(!covers(&system, &user));
        assert!(!covers(&system, &patient));
        assert!(!covers(&user, &system));
        assert!(!covers(&patient, &system));
        assert!(covers(&system, &system));
    }

    #[test]
    fn set_level_covering() {
        let granted = set("openid user/Observation.rs patient/Condition.read");
        assert!(granted.covers_scope(&resource("patient/Observation.r")));
        assert!(!granted.covers_scope(&resource("user/Condition.r")));
        assert!(granted.covers_all(&set("fhirUser patient/Condition.s user/Observation.s")));
        assert!(!granted.covers_all(&set("patient/Condition.c")));
    }

    #[test]
    fn intersect_narrows_a_wildcard_to_the_ceiling_types() {
        let granted = intersect(
            &set("user/*.cruds"),
            &set("user/Observation.rs user/Condition.rs"),
        );
        assert_eq!(granted, set("user/Observation.rs user/Condition.rs"));
    }

    #[test]
    fn intersect_drops_different_types_and_empty_permissions() {
        assert!(intersect(&set("user/Observation.rs"), &set("user/Condition.rs")).is_empty());
        assert!(intersect(&set("user/Observation.c"), &set("user/Observation.rs")).is_empty());
    }

    #[test]
    fn intersect_keeps_the_requested_context_under_a_user_ceiling() {
        let granted = intersect(&set("patient/Observation.read"), &set("user/*.rs"));
        assert_eq!(granted.to_string(), "patient/Observation.read");
        assert!(intersect(&set("user/Observation.rs"), &set("patient/*.rs")).is_empty());
        assert!(intersect(&set("system/Observation.rs"), &set("user/*.rs")).is_empty());
        assert!(intersect(&set("user/Observation.rs"), &set("system/*.rs")).is_empty());
    }

    #[test]
    fn intersect_keeps_ceiling_constraints_and_the_requested_syntax_where_possible() {
        let granular = format!("patient/Observation.rs?category={LAB}");
        assert_eq!(
            intersect(&set("patient/Observation.rs"), &set(&granular)),
            set(&granular)
        );
        // v1 request with a granular ceiling cannot stay v1.
        assert_eq!(
            intersect(&set("patient/Observation.read"), &set(&granular)).to_string(),
            granular
        );
        // v1 request narrowed to `r` cannot stay v1 either.
        assert_eq!(
            intersect(&set("patient/*.read"), &set("patient/Observation.r")).to_string(),
            "patient/Observation.r"
        );
        assert_eq!(
            intersect(&set("patient/*.write"), &set("patient/*.cruds")).to_string(),
            "patient/*.write"
        );
    }

    #[test]
    fn intersect_conflicting_constraints_yield_nothing() {
        let requested = set("user/Observation.rs?category=vital-signs");
        let ceiling = set(&format!("user/Observation.rs?category={LAB}"));
        assert!(intersect(&requested, &ceiling).is_empty());
        let merged = intersect(
            &set("user/Observation.rs?status=final"),
            &set("user/Observation.rs?category=vital-signs"),
        );
        assert_eq!(
            merged.to_string(),
            "user/Observation.rs?category=vital-signs&status=final"
        );
    }

    #[test]
    fn intersect_returns_a_minimal_set_without_identity_scopes() {
        let granted = intersect(
            &set("openid fhirUser launch patient/Observation.rs patient/Observation.r user/Observation.rs"),
            &set("openid user/*.cruds"),
        );
        assert_eq!(granted.to_string(), "user/Observation.rs");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn printing_then_parsing_is_identity(scope in scope()) {
            let printed = scope.to_string();
            prop_assert_eq!(printed.parse::<Scope>(), Ok(scope.clone()));
            prop_assert_eq!(printed.parse::<Scope>().map(|s| s.to_string()), Ok(printed));
        }

        #[test]
        fn set_printing_then_parsing_is_identity(scopes in scope_set()) {
            prop_assert_eq!(ScopeSet::parse_strict(&scopes.to_string()), Ok(scopes));
        }

        #[test]
        fn parsing_never_panics_on_arbitrary_text(text in "\\PC*") {
            let _ = ScopeSet::parse(&text);
            let _ = text.parse::<Scope>();
        }

        #[test]
        fn parsing_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = ScopeSet::parse(&text);
            let _ = text.parse::<Scope>();
        }

        #[test]
        fn parsing_never_panics_on_scope_like_text(text in "(patient|user|system|launch)/[A-Za-z*]{0,12}[.][a-z*]{0,6}([?][a-z=&|:/.]{0,20})?") {
            let _ = text.parse::<Scope>();
        }

        #[test]
        fn covering_is_reflexive(scope in resource_scope()) {
            prop_assert!(covers(&scope, &scope));
        }

        #[test]
        fn covering_is_transitive(a in resource_scope(), b in resource_scope(), c in resource_scope()) {
            if covers(&a, &b) && covers(&b, &c) {
                prop_assert!(covers(&a, &c));
            }
        }

        #[test]
        fn covering_is_transitive_along_built_chains(
            scope in resource_scope(),
            extra in permissions(),
            widen_context in any::<bool>(),
            widen_type in any::<bool>(),
            keep in 0usize..3,
        ) {
            let narrower = scope.clone();
            let middle = ResourceScope::new(
                narrower.context,
                narrower.resource.clone(),
                narrower.permissions.union(extra),
                narrower.constraints.iter().take(keep).cloned().collect(),
                Syntax::V2,
            );
            let wider_context = if widen_context && middle.context == ScopeContext::Patient {
                ScopeContext::User
            } else {
                middle.context
            };
            let wider = ResourceScope::new(
                wider_context,
                if widen_type { ResourceType::Any } else { middle.resource.clone() },
                Permissions::ALL,
                Vec::new(),
                Syntax::V2,
            );
            prop_assert!(covers(&middle, &narrower));
            prop_assert!(covers(&wider, &middle));
            prop_assert!(covers(&wider, &narrower));
        }

        #[test]
        fn every_intersection_result_is_covered_by_both_inputs(requested in scope_set(), ceiling in scope_set()) {
            let granted = intersect(&requested, &ceiling);
            for scope in granted.resource_scopes() {
                prop_assert!(requested.covers_scope(scope), "{} not covered by request {}", scope, requested);
                prop_assert!(ceiling.covers_scope(scope), "{} not covered by ceiling {}", scope, ceiling);
            }
            prop_assert_eq!(granted.identity_scopes().count(), 0);
        }

        #[test]
        fn intersecting_a_set_with_itself_keeps_its_meaning(scopes in scope_set()) {
            let granted = intersect(&scopes, &scopes);
            prop_assert!(granted.covers_all(&scopes));
            prop_assert!(scopes.covers_all(&granted));
        }

        #[test]
        fn intersecting_again_with_the_same_ceiling_changes_nothing(requested in scope_set(), ceiling in scope_set()) {
            let once = intersect(&requested, &ceiling);
            prop_assert_eq!(intersect(&once, &ceiling), once);
        }

        #[test]
        fn intersection_is_minimal(requested in scope_set(), ceiling in scope_set()) {
            let granted: Vec<ResourceScope> = intersect(&requested, &ceiling).resource_scopes().cloned().collect();
            for (i, a) in granted.iter().enumerate() {
                for (j, b) in granted.iter().enumerate() {
                    prop_assert!(i == j || !covers(a, b), "{} covers {}", a, b);
                }
            }
        }
    }
}
