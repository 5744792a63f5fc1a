//! The one diesel schema both backends share (DESIGN.md §4). Column types are limited to
//! `Text`, `BigInt` and `Bool` (plus `Nullable`) so the same code runs on SQLite and PostgreSQL.

diesel::table! {
    signing_keys (kid) {
        kid -> Text,
        alg -> Text,
        key_use -> Text,
        public_jwk -> Text,
        private_jwk_sealed -> Text,
        created_at -> BigInt,
        activates_at -> BigInt,
    }
}

diesel::table! {
    audit_events (id) {
        id -> BigInt,
        occurred_at -> BigInt,
        action -> Text,
        outcome -> Text,
        severity -> Text,
        actor_user -> Nullable<Text>,
        actor_client -> Nullable<Text>,
        source_ip -> Nullable<Text>,
        user_agent -> Nullable<Text>,
        request_id -> Nullable<Text>,
        target_patient -> Nullable<Text>,
        node -> Text,
        details -> Text,
        chain_seq -> Nullable<BigInt>,
        chain_hash -> Nullable<Text>,
        chain_key_id -> Nullable<Text>,
    }
}

diesel::table! {
    clients (client_id) {
        client_id -> Text,
        name -> Text,
        kind -> Text,
        auth_method -> Text,
        redirect_uris -> Text,
        fhir_bases -> Text,
        grant_types -> Text,
        launch_modes -> Text,
        allowed_scopes -> Text,
        ehr_launcher -> Bool,
        ai_tool -> Bool,
        access_token_lifetime -> BigInt,
        refresh_token_idle_lifetime -> BigInt,
        refresh_token_absolute_lifetime -> BigInt,
        logo_uri -> Nullable<Text>,
        contact -> Nullable<Text>,
        jwks -> Nullable<Text>,
        jwks_uri -> Nullable<Text>,
        enabled -> Bool,
        created_at -> BigInt,
        updated_at -> BigInt,
        version -> BigInt,
    }
}

diesel::table! {
    client_secrets (id) {
        id -> Text,
        client_id -> Text,
        secret_hash -> Text,
        created_at -> BigInt,
        expires_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    users (id) {
        id -> Text,
        username -> Text,
        display_name -> Text,
        fhir_user -> Nullable<Text>,
        enabled -> Bool,
        created_at -> BigInt,
        updated_at -> BigInt,
        version -> BigInt,
        password_hash -> Nullable<Text>,
        password_changed_at -> Nullable<BigInt>,
        failed_logins -> BigInt,
        locked_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    roles (name) {
        name -> Text,
        description -> Text,
        scope_ceiling -> Text,
        mfa_required -> Bool,
        break_glass -> Bool,
        created_at -> BigInt,
        updated_at -> BigInt,
        version -> BigInt,
        passwordless -> Bool,
    }
}

diesel::table! {
    user_roles (user_id, role_name) {
        user_id -> Text,
        role_name -> Text,
    }
}

diesel::table! {
    totp_credentials (id) {
        id -> Text,
        user_id -> Text,
        secret_sealed -> Text,
        confirmed -> Bool,
        last_step -> Nullable<BigInt>,
        pending_session -> Nullable<Text>,
        created_at -> BigInt,
    }
}

diesel::table! {
    recovery_codes (id) {
        id -> Text,
        user_id -> Text,
        code_hash -> Text,
        used_at -> Nullable<BigInt>,
        created_at -> BigInt,
    }
}

diesel::table! {
    sessions (id_hash) {
        id_hash -> Text,
        public_id -> Text,
        user_id -> Text,
        stage -> Text,
        amr -> Text,
        created_at -> BigInt,
        last_seen_at -> BigInt,
        expires_at -> BigInt,
        authenticated_at -> BigInt,
        mfa_at -> Nullable<BigInt>,
        source_ip -> Nullable<Text>,
        user_agent -> Nullable<Text>,
        ended_at -> Nullable<BigInt>,
        end_reason -> Nullable<Text>,
    }
}

diesel::table! {
    auth_throttle (key_hash) {
        key_hash -> Text,
        failures -> BigInt,
        last_failure_at -> BigInt,
    }
}

diesel::table! {
    webauthn_credentials (id) {
        id -> Text,
        user_id -> Text,
        user_handle -> Text,
        name -> Text,
        passkey -> Text,
        created_at -> BigInt,
        last_used_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    webauthn_challenges (id) {
        id -> Text,
        purpose -> Text,
        user_id -> Nullable<Text>,
        bound_to -> Text,
        state -> Text,
        expires_at -> BigInt,
    }
}

diesel::table! {
    patients (id) {
        id -> Text,
        family -> Text,
        given -> Text,
        birth_date -> Nullable<Text>,
        gender -> Nullable<Text>,
        identifiers -> Text,
        search_name -> Text,
        search_identifiers -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    launch_contexts (id_hash) {
        id_hash -> Text,
        client_id -> Text,
        created_by -> Text,
        user_id -> Nullable<Text>,
        context -> Text,
        created_at -> BigInt,
        expires_at -> BigInt,
        used_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    auth_requests (id_hash) {
        id_hash -> Text,
        client_id -> Text,
        user_id -> Nullable<Text>,
        request -> Text,
        offered -> Text,
        patient -> Nullable<Text>,
        created_at -> BigInt,
        expires_at -> BigInt,
        completed_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    token_families (id) {
        id -> Text,
        client_id -> Text,
        user_id -> Nullable<Text>,
        session_id -> Nullable<Text>,
        grant_kind -> Text,
        scope -> Text,
        aud -> Text,
        context -> Text,
        created_at -> BigInt,
        expires_at -> BigInt,
        revoked_at -> Nullable<BigInt>,
        revoked_reason -> Nullable<Text>,
    }
}

diesel::table! {
    authorization_codes (code_hash) {
        code_hash -> Text,
        client_id -> Text,
        user_id -> Text,
        redirect_uri -> Text,
        code_challenge -> Text,
        grant_details -> Text,
        family_id -> Text,
        created_at -> BigInt,
        expires_at -> BigInt,
        redeemed_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    refresh_tokens (token_hash) {
        token_hash -> Text,
        family_id -> Text,
        created_at -> BigInt,
        expires_at -> BigInt,
        used_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    access_tokens (jti) {
        jti -> Text,
        family_id -> Text,
        client_id -> Text,
        user_id -> Nullable<Text>,
        scope -> Text,
        aud -> Text,
        issued_at -> BigInt,
        expires_at -> BigInt,
        revoked_at -> Nullable<BigInt>,
        introspected_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    consents (user_id, client_id) {
        user_id -> Text,
        client_id -> Text,
        scope -> Text,
        aud -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    assertion_jtis (client_id, jti) {
        client_id -> Text,
        jti -> Text,
        expires_at -> BigInt,
    }
}

diesel::table! {
    audit_chain_state (id) {
        id -> BigInt,
        legacy_max_event_id -> BigInt,
    }
}

diesel::table! {
    enrolment_links (token_hash) {
        token_hash -> Text,
        user_id -> Text,
        created_at -> BigInt,
        expires_at -> BigInt,
        used_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    changes (id) {
        id -> BigInt,
        change -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    ward_meta (key) {
        key -> Text,
        value -> Text,
    }
}

diesel::joinable!(client_secrets -> clients (client_id));
diesel::joinable!(enrolment_links -> users (user_id));
diesel::joinable!(refresh_tokens -> token_families (family_id));
diesel::joinable!(access_tokens -> token_families (family_id));
diesel::joinable!(totp_credentials -> users (user_id));
diesel::joinable!(recovery_codes -> users (user_id));
diesel::joinable!(sessions -> users (user_id));
diesel::joinable!(user_roles -> users (user_id));
diesel::joinable!(user_roles -> roles (role_name));

diesel::allow_tables_to_appear_in_same_query!(
    signing_keys,
    audit_events,
    clients,
    client_secrets,
    users,
    roles,
    user_roles,
    totp_credentials,
    recovery_codes,
    sessions,
    auth_throttle,
    webauthn_credentials,
    webauthn_challenges,
    patients,
    launch_contexts,
    auth_requests,
    token_families,
    authorization_codes,
    refresh_tokens,
    access_tokens,
    consents,
    assertion_jtis,
    audit_chain_state,
    enrolment_links,
    changes,
    ward_meta,
);
