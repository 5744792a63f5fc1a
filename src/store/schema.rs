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
    }
}

diesel::allow_tables_to_appear_in_same_query!(signing_keys, audit_events);
