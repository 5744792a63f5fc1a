//! Keeps the OpenAPI document true to the routes (written next).
